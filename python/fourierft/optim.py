"""Optimizer parameter groups for FourierFT.

FourierFT's spectrum needs a much larger learning rate than the rest: the authors' GLUE runs train the
spectrum at 0.05-0.12 and the classifier head at 0.001-0.011 (scaling 29-151), and PEFT's own MetaMathQA
example at lr 1e-4 learned nothing. ``param_groups`` splits the trainable parameters accordingly.
"""
from __future__ import annotations

from typing import Iterable, Optional

from torch import nn

__all__ = ["param_groups"]


def param_groups(model: nn.Module, spectrum_lr: float = 0.05, head_lr: float = 0.01,
                 bias_lr: Optional[float] = None, weight_decay: float = 0.0,
                 head_weight_decay: float = 0.01) -> list[dict]:
    """Parameter groups for ``torch.optim`` from the trainable parameters of ``model``:

    - ``spectrum``: every ``fourierft_spectrum`` (lr ``spectrum_lr``, ``weight_decay``),
    - ``bias``: trainable biases of the base model (``bias="all"``/``"fourier_only"``; lr ``bias_lr``,
      default ``head_lr``),
    - ``head``: everything else that trains (``modules_to_save`` such as a classifier; lr ``head_lr``,
      ``head_weight_decay``).

    Empty groups are left out. The defaults are the paper's recipe (spectrum 0.05, head 0.01).

    >>> optimizer = torch.optim.AdamW(fourierft.optim.param_groups(model, spectrum_lr=5e-2, head_lr=1e-2))
    """
    groups: dict[str, list] = {"spectrum": [], "bias": [], "head": []}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if "fourierft_spectrum" in name:
            groups["spectrum"].append(param)
        elif name.endswith("bias") and ".modules_to_save." not in name:
            groups["bias"].append(param)
        else:
            groups["head"].append(param)
    settings = {
        "spectrum": dict(lr=spectrum_lr, weight_decay=weight_decay),
        "bias": dict(lr=head_lr if bias_lr is None else bias_lr, weight_decay=0.0),
        "head": dict(lr=head_lr, weight_decay=head_weight_decay),
    }
    out = [dict(params=params, name=name, **settings[name]) for name, params in groups.items() if params]
    if not out:
        raise ValueError("param_groups: the model has no trainable parameters")
    return out


def count(groups: Iterable[dict]) -> dict[str, int]:
    """Number of parameters per group name (for logs)."""
    return {g["name"]: sum(p.numel() for p in g["params"]) for g in groups}
