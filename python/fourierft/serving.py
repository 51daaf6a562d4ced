"""Serving FourierFT adapters: mixed-adapter batches, many adapters resident with shared entry matrices, and
hot-swapping an adapter's spectra in place.

FourierFT adapters are tiny (n floats per layer), which makes them the natural method for serving many
per-user adapters from one model:
- ``model(..., adapter_names=[one per row])``: each row through its own adapter (``"__base__"``: none),
  inference only, as PEFT's LoRA (the tuner's ``_enable_peft_forward_hooks`` routes the names to the layers);
- adapters of a layer that share ``random_loc_seed`` and ``n_frequency`` share one entry-index tensor
  (``share_entry_indices``, done by every fourierft layer when an adapter is added), so an extra resident
  adapter costs its spectrum alone: n floats per layer;
- ``hotswap_adapter(model, path, adapter_name)`` loads another adapter's spectra into an existing adapter in
  place: no module changes, no re-injection, and a ``torch.compile``d model does not recompile.
"""
from __future__ import annotations

import os
from typing import Union

import peft
import torch

# The layer owns the per-row math; this module builds on the layer and the model (imports run one way:
# layer <- checkpoint <- serving).
from .layer import mixed_adapter_output, share_entry_indices  # noqa: F401  (re-exported)
from .checkpoint import PREFIX as _PREFIX, SPECTRUM as _SPECTRUM, check_checkpoint, parse_key

__all__ = ["mixed_adapter_output", "hotswap_adapter"]


def hotswap_adapter(model: peft.PeftModel, model_id: Union[str, os.PathLike], adapter_name: str = "default") -> None:
    """Loads the FourierFT adapter saved in ``model_id`` into the existing adapter ``adapter_name`` of
    ``model``, in place: every spectrum (and modules_to_save / bias tensor) is copied into the parameter that
    holds it, so no module is replaced, nothing is re-injected, optimizer references stay valid and a
    ``torch.compile``d model runs the new adapter without recompiling.

    The new adapter must have the old one's shape: the same targeted modules, ``n_frequency`` per module,
    ``random_loc_seed`` and ``scaling`` (these are constants of the compiled graph); anything else raises
    ``ValueError`` before any value changes."""
    if adapter_name not in model.peft_config:
        raise ValueError(f"hotswap_adapter: the model has no adapter {adapter_name!r}; it has "
                         f"{sorted(model.peft_config)}")
    tensors = check_checkpoint(model, model_id)
    if tensors is None:
        raise ValueError(f"hotswap_adapter: {model_id} is not a local directory with adapter_model.safetensors")
    old = model.peft_config[adapter_name]
    new = peft.PeftConfig.from_pretrained(str(model_id))
    for field in ("random_loc_seed", "scaling", "fan_in_fan_out"):
        if getattr(new, field) != getattr(old, field):
            raise ValueError(f"hotswap_adapter: {field} differs ({getattr(old, field)!r} loaded, "
                             f"{getattr(new, field)!r} in {model_id}); only spectra can be swapped in place")
    state = model.state_dict(keep_vars=True)
    targets = {}
    for key, value in tensors.items():
        kind, _path = parse_key(key)
        name = key[len(_PREFIX):]  # (check_checkpoint checked the prefix)
        if kind == "spectrum":
            live = f"{key}.{adapter_name}"
        else:
            # PEFT's names: a head's tensors as "<head>.<param>" (modules_to_save) and, with bias="all", also as
            # "<head>.modules_to_save.<param>" / "<head>.original_module.<param>"; an adapted layer's bias as
            # "<path>.base_layer.bias"; other biases by their own names. The adapter name is dropped in the file.
            path, _, param = name.rpartition(".")
            candidates = [f"{_PREFIX}{path}.modules_to_save.{adapter_name}.{param}", f"{_PREFIX}{path}.base_layer.{param}",
                          key]
            if ".modules_to_save." in name:
                candidates.insert(0, key.replace(".modules_to_save.", f".modules_to_save.{adapter_name}."))
            live = next((k for k in candidates if k in state), None)
        if live is None or live not in state:
            raise ValueError(f"hotswap_adapter: {model_id}: tensor {key!r} has no counterpart in adapter "
                             f"{adapter_name!r} of the model")
        if state[live].shape != value.shape:
            raise ValueError(f"hotswap_adapter: {model_id}: tensor {key!r} has shape {list(value.shape)}, the "
                             f"model's {live!r} has {list(state[live].shape)}")
        targets[live] = value
    loaded = {k for k in targets if k.endswith(f".{_SPECTRUM}.{adapter_name}")}
    expected = {k for k in state if k.endswith(f".{_SPECTRUM}.{adapter_name}")}
    if loaded != expected:
        missing = sorted(expected - loaded)[:5]
        raise ValueError(f"hotswap_adapter: {model_id} does not adapt the same modules as {adapter_name!r} "
                         f"(no spectrum for e.g. {missing})")
    with torch.no_grad():
        for live, value in targets.items():
            state[live].copy_(value)
