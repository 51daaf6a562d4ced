#!/usr/bin/env bash
# Installs the built library into a scratch prefix, configures examples/cpp as its own CMake
# project that only knows `find_package(fourierft)`, builds it and runs it.
set -euo pipefail
build_dir=$1
source_dir=$2
torch_dir=$3
work="$build_dir/example-against-install"
rm -rf "$work"
cmake --install "$build_dir" --prefix "$work/prefix" >/dev/null
cmake -S "$source_dir/examples/cpp" -B "$work/build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$work/prefix" -DTorch_DIR="$torch_dir" >/dev/null
cmake --build "$work/build"
"$work/build/fourierft_quickstart"
