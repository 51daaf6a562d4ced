#!/usr/bin/env bash
# Installs everything fourierft needs on a fresh Debian machine and builds it. Idempotent: on a
# ready machine it checks and returns in seconds.
#   - Debian packages: compiler, CMake, Ninja, GoogleTest, nlohmann-json (apt-get update first)
#   - .venv with the pinned Python dependencies of requirements.txt (torch==2.13.0 CPU wheel, ...)
#   - the Python package `fourierft` installed into .venv (pip install --no-build-isolation .;
#     scikit-build-core builds it incrementally in build/python: the library, the bindings, the tools)
#   - the CMake build in build/ (tests, tools, examples; LibTorch from the torch wheel in .venv), linking the
#     library build/python compiled
#   - for the tests: PEFT's own test suite (the pinned peft's sdist) and the lowest supported PEFT's wheel
#
# `bootstrap.sh demo` installs only what the demo needs (the Python package and its dependencies):
# no C++ test build, no sanitizer builds, no PEFT test suite.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
mode=${1:-all}

log() { printf '[bootstrap] %s\n' "$*" >&2; }

# --- Debian packages -------------------------------------------------------------------------
apt_packages=(g++ cmake ninja-build libgtest-dev nlohmann-json3-dev python3-venv python3-dev)
missing=()
for pkg in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  log "installing Debian packages: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# --- Python environment ----------------------------------------------------------------------
python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  log "creating .venv with $($python --version)"
  "$python" -m venv .venv
fi
stamp=.venv/.fourierft-requirements
want=$(sha256sum requirements.txt | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  log "installing pinned Python dependencies (requirements.txt)"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -r requirements.txt
  echo "$want" > "$stamp"
fi

# --- Python package: reinstalled whenever a file it is built from changed --------------------------
# scikit-build-core compiles the library, the bindings and the tools in build/python.
pkg_stamp=.venv/.fourierft-package
pkg_want=$(find pyproject.toml CMakeLists.txt cmake include src python tools -type f -not -path '*/__pycache__/*' \
  -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)
if [ "$(cat "$pkg_stamp" 2>/dev/null)" != "$pkg_want" ]; then
  log "installing the fourierft Python package into .venv"
  .venv/bin/python -m pip install -q --no-build-isolation --no-deps .
  echo "$pkg_want" > "$pkg_stamp"
fi

# --- C++ build (tools, tests, examples) ------------------------------------------------------------
# build/ links the library build/python compiled (FOURIERFT_PREBUILT_LIBRARY: compiled once, not twice), and its
# installed-package example test builds against the pip-installed package.
if [ "$mode" = all ] && [ ! -f build/build.ninja ]; then
  torch_prefix=$(.venv/bin/python -c 'import torch; print(torch.utils.cmake_prefix_path)')
  package_prefix=$(cd / && "$OLDPWD/.venv/bin/python" -c 'import fourierft; print(fourierft.cmake_prefix_path)')
  log "configuring build/ against LibTorch in $torch_prefix and the library in build/python"
  cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$torch_prefix" \
    -DFOURIERFT_PREBUILT_LIBRARY="$PWD/build/python/libfourierft.so" -DFOURIERFT_PREBUILT_PREFIX="$package_prefix" \
    >/dev/null
fi
if [ "$mode" = all ]; then cmake --build build; fi

# --- PEFT's own test suite: the tests/ folder of the pinned peft's sdist (PyPI) ------------------
if [ "$mode" != all ]; then exit 0; fi
peft_version=$(sed -n 's/^peft==//p' requirements.txt)
peft_src=build/peft-src/peft-$peft_version
if [ ! -f "$peft_src/tests/__init__.py" ]; then
  log "fetching PEFT $peft_version's test suite (sdist from PyPI)"
  mkdir -p build/peft-src
  .venv/bin/python -m pip download -q --no-deps --no-binary :all: "peft==$peft_version" -d build/peft-src
  tar xzf "build/peft-src/peft-$peft_version.tar.gz" -C build/peft-src
  # The sdist ships tests/ without __init__.py; its modules import each other relatively.
  touch "$peft_src/tests/__init__.py"
fi

# --- The lowest PEFT of the supported range (pyproject.toml), for the suite's run at that end ---------------------
peft_lowest=$(sed -n 's/.*"peft>=\([0-9.]*\),.*/\1/p' pyproject.toml)
if [ ! -f "build/peft-lowest/$peft_lowest/site/peft/__init__.py" ]; then
  log "fetching PEFT $peft_lowest (the lowest supported) for tests/python/integration/test_peft_versions.py"
  rm -rf build/peft-lowest
  mkdir -p "build/peft-lowest/$peft_lowest/site"
  .venv/bin/python -m pip download -q --no-deps --only-binary :all: "peft==$peft_lowest" -d build/peft-lowest
  .venv/bin/python -m zipfile -e build/peft-lowest/peft-*.whl "build/peft-lowest/$peft_lowest/site"
fi

# --- Data for the C++ examples: the digits data set scikit-learn ships (no download) ------------
[ -f build/data/digits.csv ] || .venv/bin/python scripts/export_digits.py build/data/digits.csv
