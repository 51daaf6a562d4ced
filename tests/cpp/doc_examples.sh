#!/usr/bin/env bash
# The C++ programs the documentation shows, for tests/CMakeLists.txt to build and run:
#   doc_examples.sh extract <source dir> <out dir>
#       writes README.md's C++ block after the <!-- readme-example --> marker as readme.cpp and every ```cpp block
#       of docs/<page>.md as <page>_<n>.cpp (each a complete program); a file is rewritten only when its text
#       changed (no rebuild otherwise), and files of blocks that are gone are removed.
#   doc_examples.sh run <program> <its source>
#       runs the program; every `// trainable params: ...` comment of the source is a line it must print.
set -euo pipefail
case "$1" in
extract)
  source_dir=$2 out=$3
  fresh=$(mktemp -d)
  trap 'rm -rf "$fresh"' EXIT
  awk '/<!-- readme-example -->/{found=1; next} found && /^```cpp/{inside=1; next} inside && /^```/{exit} inside{print}' \
    "$source_dir/README.md" > "$fresh/readme.cpp"
  [ -s "$fresh/readme.cpp" ] || { echo "README.md has no C++ block after <!-- readme-example -->" >&2; exit 1; }
  for page in "$source_dir"/docs/*.md; do
    awk -v dir="$fresh" -v stem="$(basename "$page" .md)" '
      /^```cpp/ {inside=1; n++; file=sprintf("%s/%s_%d.cpp", dir, stem, n); next}
      inside && /^```/ {inside=0; next}
      inside {print > file}' "$page"
  done
  mkdir -p "$out"
  for file in "$fresh"/*.cpp; do
    cmp -s "$file" "$out/$(basename "$file")" || cp "$file" "$out/"
  done
  for file in "$out"/*.cpp; do
    [ -e "$fresh/$(basename "$file")" ] || rm -f "$file"
  done
  ;;
run)
  program=$2 source=$3
  output=$("$program")
  printf '%s\n' "$output"
  while IFS= read -r expected; do
    grep -qF -- "$expected" <<<"$output" ||
      { echo "$(basename "$source"): its comment promises '$expected'; it printed: $output" >&2; exit 1; }
  done < <(grep -o '// trainable params: .*' "$source" | sed 's|^// ||')
  ;;
*)
  echo "usage: doc_examples.sh extract <source dir> <out dir> | run <program> <source>" >&2
  exit 2
  ;;
esac
