"""Mixed-adapter batches: every row of a batch through its own adapter (inference only, as PEFT's
``adapter_names`` for LoRA)."""
from __future__ import annotations

import torch

__all__ = ["mixed_adapter_output"]


def mixed_adapter_output(layer, x: torch.Tensor, adapter_names) -> torch.Tensor:
    """``sum`` of nothing for ``"__base__"`` rows, ``x_i @ delta_W(adapter_names[i])^T`` for the others;
    rows are grouped by adapter so that each adapter runs once."""
    from .layer import BASE_ADAPTER

    if len(adapter_names) != x.shape[0]:
        raise ValueError(f"adapter_names has {len(adapter_names)} names for a batch of {x.shape[0]} rows "
                         f"({type(layer).__name__}, input shape {list(x.shape)})")
    out = x.new_zeros(*x.shape[:-1], layer.out_features)
    groups: dict[str, list[int]] = {}
    for row, name in enumerate(adapter_names):
        groups.setdefault(name, []).append(row)
    for name, rows in groups.items():
        if name == BASE_ADAPTER or name not in layer.fourierft_spectrum:
            continue
        spectrum = layer.fourierft_spectrum[name]
        index = torch.tensor(rows, device=x.device)
        part = layer._adapter_output(name, x.index_select(0, index).to(spectrum.dtype))
        out.index_copy_(0, index, part.to(out.dtype))
    return out
