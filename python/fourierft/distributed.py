"""Saving and merging FourierFT models trained under DistributedDataParallel or FSDP (FSDP1, FSDP2 ``fully_shard``).

A wrapped model's parameter names carry the wrappers' segments (``module.``, ``_fsdp_wrapped_module.``,
``_checkpoint_wrapped_module.``) and its parameters may be shards. PEFT strips ``_fsdp_wrapped_module.`` only at the
start of a name, so ``save_pretrained(state_dict=...)`` of an FSDP1 model whose inner layers are wrapped writes an
adapter with no tensor. :func:`save_pretrained` gathers the adapter's tensors whole, under PEFT's names, and writes
the adapter from rank 0::

    model = fully_shard(peft_model)            # or FSDP(peft_model, ...), or DDP(peft_model)
    ...train...
    fourierft.distributed.save_pretrained(model, "out/adapter")   # on every rank (a collective)

Merging a sharded model is refused with the way to do it (:func:`check_not_sharded`): save the adapter, then load it
into an unsharded base in one process and merge there.
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator, Union

import peft
import torch
from torch import nn

__all__ = ["peft_model_of", "full_adapter_state_dict", "save_pretrained", "sharded_parameter", "check_not_sharded"]

_WRAPPER_SEGMENTS = ("_fsdp_wrapped_module", "_checkpoint_wrapped_module")


def peft_model_of(model: nn.Module) -> peft.PeftModel:
    """The ``PeftModel`` inside DDP / FSDP1 wrappers (FSDP2 keeps the PeftModel object itself)."""
    seen = model
    while not isinstance(seen, peft.PeftModel):
        inner = getattr(seen, "module", None)
        if not isinstance(inner, nn.Module):
            raise ValueError(f"fourierft.distributed: no peft.PeftModel in {type(model).__name__} (looked through "
                             "DistributedDataParallel / FullyShardedDataParallel's .module)")
        seen = inner
    return seen


def _peft_key(name: str) -> str:
    """A parameter name without the wrappers' segments (anywhere in it) nor DDP's leading ``module.``."""
    return ".".join(part for part in name.split(".") if part not in _WRAPPER_SEGMENTS)


def _is_distributed() -> bool:
    dist = torch.distributed
    return dist.is_available() and dist.is_initialized()


def full_adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trainable tensors of ``model`` (the adapters' spectra, trained biases and ``modules_to_save`` copies)
    gathered whole, named as in the unwrapped ``PeftModel``. A collective under FSDP: every rank calls it; on GPUs the
    tensors are gathered to rank 0's CPU memory (the other ranks get an empty dict), on the CPU every rank gets them.
    Frozen base weights are not gathered (unless nothing is trainable: then everything is)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    inner = peft_model_of(model)
    frozen_only = not any(p.requires_grad for p in model.parameters())
    # Offloading gathers to rank 0's CPU memory only (on GPUs, so that no GPU holds the whole); a model already on the
    # CPU is not offloaded: torch 2.13's FSDP1 crashes (SIGSEGV) offloading CPU tensors of nested FSDP units.
    on_accelerator = any(p.device.type != "cpu" for p in model.parameters())
    options = StateDictOptions(full_state_dict=True, cpu_offload=on_accelerator, ignore_frozen_params=not frozen_only)
    state = get_model_state_dict(model, options=options)
    prefix = "" if model is inner else _wrapped_prefix(model, inner)
    clean = {}
    for name, tensor in state.items():
        key = _peft_key(name)
        if prefix and key.startswith(prefix):
            key = key[len(prefix):]
        clean[key] = tensor
    return clean


def _wrapped_prefix(model: nn.Module, inner: nn.Module) -> str:
    for name, module in model.named_modules():
        if module is inner:
            return _peft_key(name) + "." if name else ""
    return ""


@contextlib.contextmanager
def _unwrapped_module_names(model: nn.Module) -> Iterator[None]:
    """While PEFT picks the adapter's tensors out of a gathered state dict, ``model.named_modules()`` (of this one
    object) yields names without FSDP1's wrapper segments, as the gathered state dict has them: PEFT matches the two
    by name and strips the segment only at the start."""
    original = model.named_modules

    def named_modules(*args, **kwargs):
        for name, module in original(*args, **kwargs):
            yield _peft_key(name), module

    model.__dict__["named_modules"] = named_modules
    try:
        yield
    finally:
        del model.__dict__["named_modules"]


def save_pretrained(model: nn.Module, save_directory: Union[str, os.PathLike], **kwargs) -> None:
    """``PeftModel.save_pretrained`` for a model wrapped by DDP, FSDP1 or FSDP2 (or not wrapped): every rank calls it
    (the adapter's tensors are gathered), rank 0 writes ``save_directory``. ``kwargs`` are PEFT's
    (``selected_adapters``, ``safe_serialization``, ...). Raises ``ValueError`` rather than write an adapter without
    a spectrum."""
    if "state_dict" in kwargs:
        raise ValueError("fourierft.distributed.save_pretrained gathers the state dict itself; do not pass state_dict")
    inner = peft_model_of(model)
    state = full_adapter_state_dict(model)
    main = not _is_distributed() or torch.distributed.get_rank() == 0
    if main:
        if not any(".fourierft_spectrum." in key for key in state):
            raise ValueError(f"fourierft.distributed.save_pretrained: no FourierFT spectrum among the gathered "
                             f"tensors of {type(model).__name__} ({len(state)} tensors); nothing was written")
        with _unwrapped_module_names(inner):
            inner.save_pretrained(save_directory, state_dict=state, is_main_process=True, **kwargs)
    if _is_distributed():
        torch.distributed.barrier()


def sharded_parameter(model: nn.Module):
    """The name of a parameter of ``model`` that FSDP has sharded (an FSDP2 DTensor, or an FSDP1 flattened original
    parameter), else None."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover (torch without distributed)
        return None
    for name, p in model.named_parameters():
        if isinstance(p, DTensor) or getattr(p, "_fsdp_flattened", False):
            return name
    return None


def check_not_sharded(model: nn.Module, what: str) -> None:
    """Raises ``ValueError`` if ``model``'s parameters are FSDP shards: merging into a shard would merge a slice of
    ``delta_W`` into a slice of the weight."""
    name = sharded_parameter(model)
    if name is not None:
        raise ValueError(
            f"{what}: the model is sharded by FSDP (parameter {name!r}); merging needs whole weights. Save the adapter "
            "with fourierft.distributed.save_pretrained(model, path) on every rank, then in one process load it into "
            "the unsharded base (fourierft.FourierFTModel.from_pretrained(base, path)) and merge there "
            "(docs/large-models.md). Nothing was merged")
