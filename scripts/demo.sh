#!/usr/bin/env bash
# The main job: installs and builds everything (scripts/bootstrap.sh), then fine-tunes a pretrained
# LibTorch network with FourierFT on real data (examples/cpp/digits.cpp) and merges the adapter.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/bootstrap.sh
./build/examples/cpp/fourierft_digits build/data/digits.csv
