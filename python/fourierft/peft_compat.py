"""``fourierft.accelerate``: PEFT's own FourierFT layers on our kernels, in place.

For users who keep ``peft``: the model built by ``peft.get_peft_model(model, peft.FourierFTConfig(...))``
or ``PeftModel.from_pretrained`` keeps every object, parameter, state-dict key and checkpoint; only
the class of each ``peft.tuners.fourierft.FourierFTLinear`` is switched to a subclass whose
``forward`` and ``get_delta_weight`` call the matrix-free ops (no d1 x d2 complex matrix per step).
"""
from __future__ import annotations

import functools

from torch import nn

from .layer import FourierFTKernels

__all__ = ["accelerate", "is_accelerated"]


@functools.lru_cache(maxsize=None)
def _accelerated_class(peft_class: type) -> type:
    # FourierFTKernels first in the MRO: its forward/get_delta_weight replace PEFT's; everything else
    # (merge, unmerge, update_layer, set_adapter, isinstance checks) stays PEFT's.
    return type(peft_class.__name__, (FourierFTKernels, peft_class),
                {"__module__": __name__, "_fourierft_original_class": peft_class,
                 "__doc__": f"{peft_class.__qualname__} running on fourierft's kernels."})


def _peft_layer_class() -> type:
    try:
        from peft.tuners.fourierft.layer import FourierFTLinear
    except ImportError as error:  # pragma: no cover - peft is a dependency of this function
        raise ImportError("fourierft.accelerate needs peft installed") from error
    return FourierFTLinear


def is_accelerated(module: nn.Module) -> bool:
    """True when ``module`` is a PEFT FourierFT layer switched to our kernels."""
    return "_fourierft_original_class" in type(module).__dict__


def accelerate(model: nn.Module, enabled: bool = True) -> nn.Module:
    """Makes every PEFT FourierFT layer inside ``model`` run on fourierft's kernels (``enabled=False``
    switches them back). Returns ``model``; outputs, gradients, merging and checkpoints are PEFT's.

    Layers added later (``add_adapter`` on new targets) need another call. Raises ``ValueError`` if
    ``model`` holds no PEFT FourierFT layer.

    >>> peft_model = fourierft.accelerate(peft.get_peft_model(base, peft.FourierFTConfig(...)))
    """
    peft_class = _peft_layer_class()
    found = 0
    for module in model.modules():
        if enabled and isinstance(module, peft_class) and not is_accelerated(module):
            module.__class__ = _accelerated_class(type(module))
            found += 1
        elif is_accelerated(module):
            if not enabled:
                module.__dict__.pop("_fourierft_cache", None)
                module.__class__ = type(module)._fourierft_original_class
            found += 1
    if not found:
        raise ValueError(
            f"fourierft.accelerate: no peft FourierFT layer in {type(model).__name__}; build the model with "
            "peft.get_peft_model(model, peft.FourierFTConfig(...)) first (or use fourierft.get_peft_model)"
        )
    return model
