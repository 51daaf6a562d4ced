"""fourierft: FourierFT fine-tuning with PEFT's API on matrix-free C++ kernels.

Quick start (the same three lines as PEFT)::

    import fourierft
    config = fourierft.FourierFTConfig(n_frequency=1000, scaling=150.0, target_modules=["query", "value"])
    model = fourierft.get_peft_model(base_model, config)

PEFT users can keep peft and switch its FourierFT layers to our kernels with one line::

    peft_model = fourierft.accelerate(peft_model)
"""
import os as _os

import torch as _torch  # noqa: F401  (loads LibTorch before the extension that links it)

from . import _C
from . import ops
from . import optim
from .config import FourierFTConfig
from .layer import FourierFTLinear, ModulesToSaveWrapper
from .model import FourierFTModel, get_peft_model
from .peft_compat import accelerate, is_accelerated

__version__ = _C.__version__

#: Directory to add to CMAKE_PREFIX_PATH for ``find_package(fourierft)`` against this installation
#: (the C++ library, headers and CMake config ship inside the package).
cmake_prefix_path = _os.path.join(_os.path.dirname(__file__), "lib", "cmake")

__all__ = [
    "FourierFTConfig",
    "FourierFTLinear",
    "FourierFTModel",
    "ModulesToSaveWrapper",
    "accelerate",
    "cmake_prefix_path",
    "get_peft_model",
    "is_accelerated",
    "ops",
    "optim",
    "__version__",
]
