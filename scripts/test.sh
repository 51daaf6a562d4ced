#!/usr/bin/env bash
# Installs and builds everything (scripts/bootstrap.sh), then runs every test, fastest and most basic first:
#   1. ctest: the C++ unit tests (GoogleTest against the float64 dense formula and PEFT's generated tables), the
#      examples, the tools, the sanitizer runs;
#   2. pytest tests/python: the Python package against PEFT (parity, gradcheck, opcheck, the fake-CUDA path, PEFT's own
#      FourierFT suite, transformers.Trainer, DDP/FSDP, the docs);
#   3. the mutation check (scripts/mutation_check.py): the library broken on purpose, one mutation at a time; each
#      must make its tests fail. The C++ ones rebuild build/'s library or tool per mutation and restore it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/bootstrap.sh
ctest --test-dir build --output-on-failure -j2
HF_HUB_OFFLINE=1 .venv/bin/python -m pytest -q -p no:cacheprovider tests/python
.venv/bin/python scripts/mutation_check.py
