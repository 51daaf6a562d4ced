#!/usr/bin/env bash
# The main job: installs and builds everything (scripts/bootstrap.sh), then fine-tunes the pretrained
# all-MiniLM-L6-v2 with FourierFT on the BBC News topic corpus (python/fourierft/examples/finetune.py):
# accuracy before/after, the adapter saved in PEFT's format and reloaded with peft, merged, plot + summary
# in out/finetune. Extra arguments go to fourierft-finetune (e.g. --epochs 1 --n-frequency 2000).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/bootstrap.sh demo  # the Python package only: no C++ test builds
.venv/bin/fourierft-finetune --out out/finetune "$@"
