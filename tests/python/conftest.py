"""pytest configuration: load the compiled ops library (torch.ops.fourierft.*) once.

The library comes from the CMake build (scripts/bootstrap.sh builds it into build/); set
FOURIERFT_LIBRARY to test another build.
"""
import os
import pathlib

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parents[2]
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _library_path() -> pathlib.Path:
    path = pathlib.Path(os.environ.get("FOURIERFT_LIBRARY", ROOT / "build" / "libfourierft.so"))
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: run scripts/bootstrap.sh first (it builds the library)")
    return path


torch.ops.load_library(str(_library_path()))


@pytest.fixture(scope="session")
def ops():
    return torch.ops.fourierft
