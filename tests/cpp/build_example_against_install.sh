#!/usr/bin/env bash
# Installs the built library into a scratch prefix, then builds as separate CMake projects that
# only know `find_package(fourierft)`: examples/cpp (run: quickstart) and the README's C++ example
# (the ```cpp block after the readme-example marker; run).
set -euo pipefail
build_dir=$1
source_dir=$2
torch_dir=$3
work="$build_dir/example-against-install"
rm -rf "$work"
cmake --install "$build_dir" --prefix "$work/prefix" >/dev/null
configure() {
  cmake -S "$1" -B "$2" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_PREFIX_PATH="$work/prefix" -DTorch_DIR="$torch_dir" >/dev/null
}

configure "$source_dir/examples/cpp" "$work/examples"
cmake --build "$work/examples"
"$work/examples/fourierft_quickstart"

mkdir -p "$work/readme"
awk '/<!-- readme-example -->/{found=1; next} found && /^```cpp/{inside=1; next} inside && /^```/{exit} inside{print}' \
  "$source_dir/README.md" > "$work/readme/readme_example.cpp"
[ -s "$work/readme/readme_example.cpp" ] || { echo "README has no readme-example C++ block" >&2; exit 1; }
cat > "$work/readme/CMakeLists.txt" <<'CMAKE'
cmake_minimum_required(VERSION 3.25)
project(readme_example LANGUAGES CXX)
find_package(fourierft REQUIRED)
add_executable(readme_example readme_example.cpp)
target_link_libraries(readme_example PRIVATE fourierft::fourierft)
CMAKE
configure "$work/readme" "$work/readme/build"
cmake --build "$work/readme/build"
"$work/readme/build/readme_example"
