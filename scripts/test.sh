#!/usr/bin/env bash
# Installs and builds everything (scripts/bootstrap.sh), then runs every test: the C++ suite and
# the examples through ctest, the Python suite (PEFT parity, gradcheck, opcheck) through pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/bootstrap.sh
ctest --test-dir build --output-on-failure -j2
# The tests must catch deliberate breakage of the library (scripts/mutation_check.py; the Python mutations here, about
# a minute; the C++ ones rebuild the library per mutation: run `.venv/bin/python scripts/mutation_check.py`).
.venv/bin/python scripts/mutation_check.py --python
HF_HUB_OFFLINE=1 .venv/bin/python -m pytest -q -p no:cacheprovider tests/python
