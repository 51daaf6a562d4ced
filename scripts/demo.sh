#!/usr/bin/env bash
# The main job: installs and builds everything (scripts/bootstrap.sh), then runs the C++ example
# (wrap a frozen layer with a FourierFT adapter, train it, merge it for deployment).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/bootstrap.sh
./build/examples/cpp/fourierft_quickstart
