"""Base layers quantized by bitsandbytes under fourierft's layer: 4-bit ``bnb.nn.Linear4bit`` (nf4, fp4, double
quantization) and 8-bit ``bnb.nn.Linear8bitLt`` (int8 weights).

A FourierFT layer over such a base adds its adapter to the quantized layer's own output: the base weight is never
dequantized for a forward, and no inference cache is kept (``delta_W`` in any float dtype is 2 to 8 times the
quantized weight it would serve). Merging dequantizes the weight as the layer computes with it now, adds
``delta_W`` in float32 and quantizes the sum again with the layer's own settings (:func:`set_weight`), so a merged
layer differs from the unmerged one only by that re-quantization. :func:`dequantize` turns the quantized layers of a
model into ``nn.Linear`` in a float dtype, for a deployment that merges into an unquantized base.

bitsandbytes is optional (``pip install fourierft[quantization]``): nothing here imports it before a quantized layer
is met.
"""
from __future__ import annotations

import warnings
from typing import Optional

import torch
from torch import nn

__all__ = ["quantization_of", "dequantized_weight", "set_weight", "dequantize", "standard_layout"]


def quantization_of(layer: nn.Module) -> Optional[str]:
    """``"4bit"`` for a bitsandbytes 4-bit layer, ``"8bit"`` for an 8-bit one holding int8 weights, else None (an
    8-bit layer with ``has_fp16_weights=True`` keeps float weights and merges like ``nn.Linear``)."""
    if not isinstance(layer, nn.Linear):  # bitsandbytes' layers are nn.Linear; PEFT's tuner layers only expose .weight
        return None
    weight = getattr(layer, "weight", None)
    kind = type(weight).__name__
    if kind == "Params4bit" and getattr(weight, "bnb_quantized", False):
        return "4bit"
    if kind == "Int8Params" and weight.dtype == torch.int8:
        return "8bit"
    return None


def _unpacked_cpu_codes(data: torch.Tensor) -> torch.Tensor:
    """The ``[out, in]`` 4-bit codes of a weight bitsandbytes repacked for its CPU kernel (its first eval forward on a
    CPU with AVX512-BF16 does so in place: ``[out, in/2]``, two codes per byte in blocks of 32 rows)."""
    rows, half = data.shape
    pairs = data.reshape(-1, 32)
    codes = torch.cat([pairs & 0xF, (pairs >> 4) & 0xF], dim=-1)
    return codes.reshape(rows // 32, half, 32, 2).transpose(1, 2).reshape(rows, 2 * half)


def _is_cpu_packed(layer: nn.Module) -> bool:
    return quantization_of(layer) == "4bit" and getattr(layer.weight.quant_state, "packing_format_for_cpu", False)


def _cpu_packed_weight(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """``(codes [out, in], absmax [out, in/blocksize] float32)`` of a 4-bit weight in bitsandbytes' CPU layout."""
    state = layer.weight.quant_state
    codes = _unpacked_cpu_codes(layer.weight.data.view(torch.uint8))
    return codes, state.absmax.float().T.contiguous()


def standard_layout(model: nn.Module) -> int:
    """Puts every 4-bit layer of ``model`` that bitsandbytes repacked for its CPU kernel (at an eval forward on a CPU
    with AVX512-BF16) back into bitsandbytes' standard layout, exactly: the same codes and the block scales the layer
    computes with (as float32, without double quantization, which the repacking dissolved). bitsandbytes 0.50 cannot
    train a repacked layer (its backward is missing) and saves it lossily; ``train()`` of a fourierft model calls this.
    Returns how many layers were converted."""
    from bitsandbytes.functional import QuantState

    converted = 0
    for layer in model.modules():
        if not _is_cpu_packed(layer):
            continue
        state = layer.weight.quant_state
        codes, absmax = _cpu_packed_weight(layer)
        pairs = codes.reshape(-1, 2).to(torch.uint8)
        data = ((pairs[:, 0] << 4) | pairs[:, 1]).reshape(getattr(state, "original_qshape", (-1, 1)))
        if getattr(state, "original_storage_type", None) is not None:
            data = data.view(state.original_storage_type)
        standard = QuantState(absmax=absmax.reshape(-1), shape=state.shape, code=state.code,
                              blocksize=state.blocksize, quant_type=state.quant_type,
                              dtype=getattr(state, "original_dtype", state.dtype))
        layer.weight.data = data
        layer.weight.quant_state = standard
        layer.quant_state = standard
        converted += 1
    return converted


def dequantized_weight(layer: nn.Module) -> torch.Tensor:
    """The ``[out_features, in_features]`` float32 weight a quantized layer computes with now, whatever layout it is
    in (bitsandbytes' standard layout, its CPU-repacked one, 8-bit scales on the weight or on the layer's state).
    Reads the layer without changing it."""
    import bitsandbytes as bnb

    kind = quantization_of(layer)
    weight = layer.weight
    if kind == "4bit":
        state = weight.quant_state
        if getattr(state, "packing_format_for_cpu", False):  # double quantization already undone there
            codes, absmax = _cpu_packed_weight(layer)
            rows, cols = codes.shape
            values = state.code.float()[codes.long()].reshape(rows, cols // state.blocksize, state.blocksize)
            return (values * absmax.reshape(rows, -1, 1)).reshape(rows, cols)
        return bnb.functional.dequantize_4bit(weight.data, state).float().reshape(layer.out_features,
                                                                                   layer.in_features)
    if kind == "8bit":
        scales = weight.SCB if getattr(weight, "SCB", None) is not None else layer.state.SCB
        if scales is None:
            raise ValueError(f"{type(layer).__name__}: an int8 weight without its row scales (SCB)")
        return bnb.functional.int8_vectorwise_dequant(weight.data, scales.to(weight.device)).float()
    raise TypeError(f"{type(layer).__name__} is not a bitsandbytes-quantized layer")


def set_weight(layer: nn.Module, weight: torch.Tensor) -> None:
    """Quantizes ``weight`` (``[out, in]``, any float dtype) with ``layer``'s own settings and makes it the layer's
    weight: 4-bit with its quant type, block size, double quantization and storage dtype; 8-bit as int8 with row
    scales (bitsandbytes rounds the weight to float16 first). Exactly what quantizing ``weight`` yourself with those
    settings gives."""
    import bitsandbytes as bnb

    kind = quantization_of(layer)
    old = layer.weight
    device = old.device
    if kind == "4bit":
        new = bnb.nn.Params4bit(weight.detach().to("cpu", torch.float32).contiguous(), requires_grad=False,
                                blocksize=old.blocksize, compress_statistics=old.compress_statistics,
                                quant_type=old.quant_type, quant_storage=old.quant_storage, module=layer)
        layer.weight = new.to(device)
    elif kind == "8bit":
        new = bnb.nn.Int8Params(weight.detach().to("cpu", torch.float32).contiguous(), requires_grad=False,
                                has_fp16_weights=False)
        layer.weight = new.to(device)
        layer.state.reset_grads()  # the next forward takes the new codes and scales from the weight
    else:
        raise TypeError(f"{type(layer).__name__} is not a bitsandbytes-quantized layer")


def _unquantized_copy(layer: nn.Module, dtype: torch.dtype) -> nn.Linear:
    linear = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None, device="meta")
    linear.weight = nn.Parameter(dequantized_weight(layer).to(dtype), requires_grad=False)
    if layer.bias is not None:
        linear.bias = nn.Parameter(layer.bias.detach().to(dtype).clone(), requires_grad=layer.bias.requires_grad)
    linear.train(layer.training)
    return linear


def dequantize(model: nn.Module, dtype: torch.dtype = torch.float32) -> nn.Module:
    """Replaces every bitsandbytes-quantized linear layer of ``model`` (inside FourierFT layers or not) by an
    ``nn.Linear`` in ``dtype`` holding the weight the layer computes with, in place; then ``merge_and_unload()``
    adds ``delta_W`` to float weights exactly (deployment in ``dtype`` rather than re-quantized). All or nothing:
    every replacement is built before the first is made. Returns ``model``."""
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"fourierft.quantized.dequantize: dtype={dtype!r} is not a floating point torch.dtype")
    todo = []
    for parent in model.modules():
        for name, child in parent.named_children():
            if quantization_of(child) is not None:
                todo.append((parent, name, _unquantized_copy(child, dtype)))
    for parent, name, linear in todo:
        setattr(parent, name, linear)
    return model


def merge_into(layer: nn.Module, deltas: list[torch.Tensor], where: str, safe_merge: bool) -> None:
    """Adds ``sum(deltas)`` (float32 ``[out, in]``) to the quantized base ``layer`` and quantizes the sum again.
    With ``safe_merge`` a non-finite result raises before the layer changes."""
    merged = dequantized_weight(layer)
    for delta in deltas:
        merged = merged + delta.to(merged.device, torch.float32)
    if safe_merge and not torch.isfinite(merged).all():
        raise ValueError(f"NaNs detected in the merged weights of {where}; nothing was merged")
    set_weight(layer, merged)


def unmerge_from(layer: nn.Module, deltas: list[torch.Tensor]) -> None:
    """Subtracts ``sum(deltas)`` from the quantized base ``layer`` and quantizes again (not the weight before the merge:
    each quantization rounds)."""
    warnings.warn("Unmerging a FourierFT adapter from a quantized base quantizes the weight again; its output may "
                  "differ slightly from the layer before the merge (rounding)", stacklevel=3)
    merge_into(layer, [-delta for delta in deltas], type(layer).__name__, safe_merge=False)
