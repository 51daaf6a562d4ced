"""fourierft: FourierFT fine-tuning on PEFT's own machinery, with matrix-free C++ kernels.

Importing ``fourierft`` makes PEFT build fourierft's FourierFT layers (``fourierft.register``): the
models are PEFT's own ``PeftModel`` objects, only the math runs on ``torch.ops.fourierft.*``::

    import fourierft
    config = fourierft.FourierFTConfig(n_frequency=1000, scaling=150.0, target_modules=["query", "value"])
    model = fourierft.get_peft_model(base_model, config)      # a peft.PeftModel

A PEFT model built before the import (or with ``fourierft.register(False)``) switches with one line::

    peft_model = fourierft.accelerate(peft_model)
"""
from ._build_info import check_torch as _check_torch
from .config import check_peft_version as _check_peft_version

_check_torch()
_check_peft_version()

import os as _os  # noqa: E402

import torch as _torch  # noqa: E402,F401  (loads LibTorch before the extension that links it)
from peft import FourierFTConfig  # noqa: E402

from . import _C  # noqa: E402
from . import distributed  # noqa: E402
from . import ops  # noqa: E402
from . import optim  # noqa: E402
from . import quantized  # noqa: E402
from . import serving  # noqa: E402
from .layer import BASE_ADAPTER, FourierFTLinear, clear_caches  # noqa: E402
from .serving import hotswap_adapter  # noqa: E402
from .model import (FourierFTModel, accelerate, check_checkpoint, get_peft_model, is_accelerated,  # noqa: E402
                    is_registered, load_adapter, register, registered)

__version__ = _C.__version__

#: Directory to add to CMAKE_PREFIX_PATH for ``find_package(fourierft)`` against this installation
#: (the C++ library, headers and CMake config ship inside the package).
cmake_prefix_path = _os.path.join(_os.path.dirname(__file__), "lib", "cmake")

register()

__all__ = [
    "BASE_ADAPTER",
    "FourierFTConfig",
    "FourierFTLinear",
    "FourierFTModel",
    "accelerate",
    "check_checkpoint",
    "clear_caches",
    "distributed",
    "cmake_prefix_path",
    "get_peft_model",
    "hotswap_adapter",
    "is_accelerated",
    "is_registered",
    "load_adapter",
    "ops",
    "optim",
    "quantized",
    "register",
    "registered",
    "serving",
    "__version__",
]
