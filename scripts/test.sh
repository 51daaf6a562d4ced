#!/usr/bin/env bash
# Installs and builds everything (scripts/bootstrap.sh), then runs every test: the C++ suite and
# the examples through ctest, the Python suite (PEFT parity, gradcheck, opcheck) through pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/bootstrap.sh
ctest --test-dir build --output-on-failure -j2
# The tests must catch deliberate breakage of the library (scripts/mutation_check.py: every mutation, Python and
# C++, about 5 minutes of the ~20-minute run on 2 cores; the C++ ones rebuild build/'s library or tool per
# mutation and restore it).
.venv/bin/python scripts/mutation_check.py
HF_HUB_OFFLINE=1 .venv/bin/python -m pytest -q -p no:cacheprovider tests/python
