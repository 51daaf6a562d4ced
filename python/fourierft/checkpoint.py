"""PEFT's adapter checkpoints: the names PEFT writes, and the strict check of a local adapter directory against a
model before PEFT touches it (:func:`check_checkpoint`), and after it loaded (:func:`check_loaded`).

PEFT's names: ``base_model.model.<module path>.fourierft_spectrum`` for a spectrum (the adapter name dropped), the
wrappers' segments (``base_layer``, ``original_module``, ``modules_to_save.<adapter>``) dropped from a parameter's
path (:func:`peft_name`), biases under ``<path>.base_layer.bias`` and heads under ``<head>.<param>`` (plus their
``modules_to_save`` / ``original_module`` copies with ``bias="all"``).
"""
from __future__ import annotations

import json
import os
from typing import Optional, Union

import peft
import torch
from peft.tuners.fourierft.layer import FourierFTLinear as PeftFourierFTLinear
from peft.tuners.tuners_utils import BaseTunerLayer, check_target_module_exists
from peft.utils import PeftType
from torch import nn

from . import _C
from .config import check_config_file_fields, n_frequency_for, validate_config

__all__ = ["SAFETENSORS_WEIGHTS_NAME", "PREFIX", "SPECTRUM", "peft_name", "spectrum_key", "parse_key",
           "check_checkpoint", "check_loaded"]

SAFETENSORS_WEIGHTS_NAME = "adapter_model.safetensors"
# PEFT's names are the C++ core's (fourierft/peft_names.h), shared with the C++ model and the tools.
#: What PEFT puts before a module path in an adapter file ("base_model.model.").
PREFIX = _C.PEFT_PREFIX
#: The attribute and checkpoint-name suffix of a FourierFT spectrum ("fourierft_spectrum").
SPECTRUM = _C.PEFT_SPECTRUM
#: ``spectrum_key(module_path)``: PEFT's name of the module's spectrum in an adapter file.
spectrum_key = _C.peft_spectrum_key
#: ``parse_key(key, file)``: ``(kind, path)``, kind ``"spectrum"`` (path: the module), ``"parameter"`` (path: the base
#: model's parameter) or ``"wrapper_copy"`` (path: the parameter a modules_to_save wrapper copies).
parse_key = _C.parse_peft_key
#: ``peft_name(name)``: a module-tree name without the wrappers' segments, as PEFT writes it in a file.
peft_name = _C.peft_module_name


def _inner_model(model: nn.Module) -> nn.Module:
    return model.base_model.model if isinstance(model, peft.PeftModel) else model


def _adapter_dir(model_id, subfolder) -> str:
    return os.path.join(str(model_id), subfolder) if subfolder else str(model_id)


def check_checkpoint(model: nn.Module, model_id: Union[str, os.PathLike],
                     subfolder: Optional[str] = None) -> Optional[dict[str, torch.Tensor]]:
    """Checks a local FourierFT adapter directory against ``model`` (a base model or a ``PeftModel``)
    without changing anything: ``adapter_config.json`` is a FourierFT config; ``adapter_model.safetensors``
    passes the strict C++ reader (header, offsets, dtypes, sizes); every spectrum belongs to a linear
    module of ``model`` and has 1..in*out floating point values; every other tensor has the shape of
    the parameter it replaces. Raises ``ValueError`` naming the file, the tensor and the numbers.
    Returns the file's tensors (read once, for the callers that need them); hub ids (no such local directory) and PEFT's pickled
    adapter_model.bin are left to PEFT (None)."""
    directory = _adapter_dir(model_id, subfolder)
    if not os.path.isdir(directory):
        return None
    config_file = os.path.join(directory, "adapter_config.json")
    if os.path.isfile(config_file):
        try:
            with open(config_file, encoding="utf-8") as handle:
                raw = json.load(handle)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"{config_file}: not a JSON adapter config ({error})") from error
        if not isinstance(raw, dict):
            raise ValueError(f"{config_file}: not a JSON adapter config (a {type(raw).__name__}, not an object)")
        if raw.get("peft_type") == PeftType.FOURIERFT.value:
            check_config_file_fields(raw, config_file)
    try:
        config = peft.PeftConfig.from_pretrained(directory)
    except (TypeError, ValueError, KeyError) as error:
        raise ValueError(f"{config_file}: {type(error).__name__}: {error}") from error
    if config.peft_type != PeftType.FOURIERFT:
        raise ValueError(f"{directory}: not a FourierFT adapter (peft_type={getattr(config.peft_type, 'value', config.peft_type)})")
    validate_config(config, config_file)
    file = os.path.join(directory, SAFETENSORS_WEIGHTS_NAME)
    if not os.path.isfile(file):
        return None  # PEFT's pickled adapter_model.bin, or nothing: PEFT reports it
    tensors, _ = _C.load_safetensors(file)
    inner = _inner_model(model)
    modules = {peft_name(name): module for name, module in inner.named_modules()}
    params = {peft_name(name): p for name, p in inner.named_parameters() if f".{SPECTRUM}." not in f".{name}"}
    for key, tensor in tensors.items():
        kind, path = parse_key(key, file)
        if kind == "spectrum":
            module = modules.get(path)
            if isinstance(module, BaseTunerLayer):
                module = module.get_base_layer()
            shape = _linear_shape(module)
            if shape is None:
                raise ValueError(f"{file}: spectrum {key!r} is for module {path!r}, which the model "
                                 f"({type(inner).__name__}) has no linear layer at")
            size = shape[0] * shape[1]
            if tensor.dim() != 1 or not tensor.is_floating_point() or not 1 <= tensor.numel() <= size:
                raise ValueError(f"{file}: spectrum {key!r} has shape {list(tensor.shape)} and dtype {tensor.dtype}; "
                                 f"expected 1-D floating point with 1..{size} values for {path!r} "
                                 f"({shape[0]} x {shape[1]})")
            if config.target_modules not in (None, "all-linear") and not check_target_module_exists(config, path):
                raise ValueError(f"{file}: spectrum {key!r} is for module {path!r}, which {config_file} does not "
                                 f"target (target_modules={_describe_targets(config.target_modules)}, "
                                 f"exclude_modules={config.exclude_modules!r}); the file and its config disagree")
            expected_n = n_frequency_for(config, path)
            if tensor.numel() != expected_n:
                raise ValueError(f"{file}: spectrum {key!r} has {tensor.numel()} values, but {config_file} gives "
                                 f"{path!r} n_frequency={expected_n}; the file and its config disagree")
        else:  # a head's or a bias's tensor, or a modules_to_save wrapper's copy of one: the parameter it is for
            name = path
            param = params.get(name)
            if param is None:
                raise ValueError(f"{file}: tensor {key!r} matches no parameter of the model ({type(inner).__name__})")
            if tuple(param.shape) != tuple(tensor.shape):
                raise ValueError(f"{file}: tensor {key!r} has shape {list(tensor.shape)}, the model's {name!r} "
                                 f"has {list(param.shape)}")
    return tensors


def _linear_shape(module: Optional[nn.Module]) -> Optional[tuple[int, int]]:
    """``(out, in)`` of a linear module from ``out_features``/``in_features`` (a quantized weight's shape is its packed
    storage's, not out x in); a transformers ``Conv1D`` or other 2-D weight by its shape; None if not linear."""
    if isinstance(module, nn.Linear):
        return module.out_features, module.in_features
    weight = getattr(module, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.dim() == 2:
        return tuple(weight.shape)
    return None


def _describe_targets(targets) -> str:
    return repr(sorted(targets)) if isinstance(targets, (set, list, tuple)) else repr(targets)


def check_loaded(peft_model: peft.PeftModel, saved: Optional[dict[str, torch.Tensor]], model_id, adapter_name: str,
                  subfolder: Optional[str]) -> None:
    """After PEFT loaded: every layer holding the adapter got its spectrum from the file, whose tensor names
    check_checkpoint read (PEFT only warns about missing keys and keeps the random initial spectra)."""
    if saved is None:
        return
    file = os.path.join(_adapter_dir(model_id, subfolder), SAFETENSORS_WEIGHTS_NAME)
    for name, module in peft_model.base_model.model.named_modules():
        if isinstance(module, PeftFourierFTLinear) and adapter_name in module.fourierft_spectrum:
            key = spectrum_key(peft_name(name))
            if key not in saved:
                raise ValueError(f"{file}: no spectrum for the targeted module {peft_name(name)!r} "
                                 f"(missing tensor {key!r}); the adapter was not loaded")
