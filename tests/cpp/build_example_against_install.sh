#!/usr/bin/env bash
# Installs the built library into a scratch prefix (or takes an installed package's prefix, the 4th argument:
# fourierft.cmake_prefix_path of the pip-installed package), then builds as separate CMake projects that
# only know `find_package(fourierft)`: examples/cpp (run: quickstart) and the README's C++ example
# (the ```cpp block after the readme-example marker; run), and every ```cpp block of docs/*.md (each a
# complete program; run).
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
configure() {
  cmake -S "$1" -B "$2" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_PREFIX_PATH="$prefix" -DTorch_DIR="$torch_dir" >/dev/null
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
readme_out=$("$work/readme/build/readme_example")
printf '%s\n' "$readme_out"
# What the block's comments say it prints ("// trainable params: ..."), it prints.
while IFS= read -r expected; do
  grep -qF -- "$expected" <<<"$readme_out" ||
    { echo "README C++ example: its comment promises '$expected', it printed: $readme_out" >&2; exit 1; }
done < <(grep -o '// trainable params: .*' "$work/readme/readme_example.cpp" | sed 's|^// ||')

# Every C++ block in docs/*.md: one complete program each.
mkdir -p "$work/docs"
count=0
for page in "$source_dir"/docs/*.md; do
  count=$(awk -v dir="$work/docs" -v stem="$(basename "$page" .md)" -v start="$count" '
    /^```cpp/ {inside=1; n++; file=sprintf("%s/%s_%d.cpp", dir, stem, n); next}
    inside && /^```/ {inside=0; next}
    inside {print > file}
    END {print start + n}' "$page")
done
if [ "$count" -gt 0 ]; then
  {
    echo 'cmake_minimum_required(VERSION 3.25)'
    echo 'project(docs_examples LANGUAGES CXX)'
    echo 'find_package(fourierft REQUIRED)'
    for src in "$work"/docs/*.cpp; do
      name=$(basename "$src" .cpp)
      echo "add_executable($name $(basename "$src"))"
      echo "target_link_libraries($name PRIVATE fourierft::fourierft)"
    done
  } > "$work/docs/CMakeLists.txt"
  configure "$work/docs" "$work/docs/build"
  cmake --build "$work/docs/build"
  for src in "$work"/docs/*.cpp; do
    echo "running docs example $(basename "$src" .cpp)"
    "$work/docs/build/$(basename "$src" .cpp)"
  done
fi
echo "built and ran examples/cpp, the README example and $count docs C++ block(s)"
