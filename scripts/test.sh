#!/usr/bin/env bash
# Installs and builds everything (scripts/bootstrap.sh), then runs every test, fast unit tests first:
#   1. unit tests: the C++ GoogleTest suite (ctest entries named Suite.Test, against the float64 dense formula and
#      PEFT's generated tables), then the Python package's (tests/python: ops, layers, routes, caches, the fake-CUDA
#      path, bad input, against PEFT and float64);
#   2. integration suites: the C++ tools, examples, sanitizer and fuzz runs (ctest's lower-case entries), then
#      tests/python/integration (PEFT's own FourierFT suite, transformers models and Trainer, DDP/FSDP with two gloo
#      processes, the merge CLI, the demo, the docs and README);
#   3. the mutation check's CI table (scripts/mutation_check.py --ci: every Python mutation and the C++ ones marked
#      for CI; `scripts/mutation_check.py` runs all of them): the library broken on purpose, one mutation at a time,
#      each of which must make its tests fail.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
stage() {  # prints how long the previous stage took, then runs this one
  printf '[test.sh] %4ds  %s\n' "$SECONDS" "$1" >&2
  shift
  "$@"
}
stage "bootstrap" bash scripts/bootstrap.sh
export HF_HUB_OFFLINE=1
stage "C++ unit tests" ctest --test-dir build --output-on-failure -j2 -R '^[A-Z]'
stage "Python unit tests" .venv/bin/python -m pytest -q -p no:cacheprovider tests/python --ignore=tests/python/integration
stage "C++ integration" ctest --test-dir build --output-on-failure -j2 -R '^[a-z]'
stage "Python integration" .venv/bin/python -m pytest -q -p no:cacheprovider --durations=8 tests/python/integration
stage "mutation check (CI table)" .venv/bin/python scripts/mutation_check.py --ci
printf '[test.sh] %4ds  done\n' "$SECONDS" >&2
