#!/usr/bin/env bash
# Builds examples/cpp's quickstart as a separate CMake project that only knows `find_package(fourierft)`, against
# the installed package, and runs it: the library installed into a scratch prefix, or an installed package's prefix
# (the 4th argument: fourierft.cmake_prefix_path of the pip-installed package). The README's and the docs' C++
# programs are built and run in the main tree (tests/CMakeLists.txt, doc_example_* tests).
set -euo pipefail
build_dir=$1
source_dir=$2
torch_dir=$3
installed=${4:-}
work="$build_dir/example-against-install"
rm -rf "$work"
prefix="$work/prefix"
if [ -n "$installed" ]; then
  prefix=$installed
else
  cmake --install "$build_dir" --prefix "$prefix" >/dev/null
fi
cmake -S "$source_dir/examples/cpp" -B "$work/examples" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$prefix" -DTorch_DIR="$torch_dir" >/dev/null
cmake --build "$work/examples" --target fourierft_quickstart
"$work/examples/fourierft_quickstart"
echo "built examples/cpp's quickstart against the installed package at $prefix and ran it"
