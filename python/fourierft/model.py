"""fourierft on PEFT's own machinery: a registered tuner subclass, and the entry points.

PEFT looks the tuner of every FourierFT model up in ``peft.mapping.PEFT_TYPE_TO_TUNER_MAPPING`` (the
registry ``peft.utils.register_peft_method`` fills): ``get_peft_model``, ``PeftModel.from_pretrained``,
``load_adapter``, ``add_adapter``, ``inject_adapter_in_model`` and the ``AutoPeftModel`` classes all go
through it. ``register()`` (run when ``fourierft`` is imported) puts :class:`FourierFTModel` there: PEFT's
``FourierFTModel`` with one change, the layers it creates are :class:`fourierft.FourierFTLinear`.
Everything else (walking the model, adapters, task heads, saving, loading, merging) is PEFT's code.

On top of PEFT, and only here: a checkpoint is checked by the strict C++ safetensors reader before PEFT
touches the model (:func:`check_checkpoint`), a failed load leaves the model as it was, and
``merge_and_unload(safe_merge=True)`` / ``merge_adapter(safe_merge=True)`` check every layer before
changing any (PEFT leaves the earlier layers merged when a later one fails).
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import json
import math
import os
import re
from typing import Iterator, Optional, Union

import peft
import torch
from peft import get_peft_model as _peft_get_peft_model
from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING
from peft.tuners.fourierft.layer import FourierFTLinear as PeftFourierFTLinear
from peft.tuners.fourierft.model import FourierFTModel as PeftFourierFTModel
from peft.tuners.tuners_utils import BaseTunerLayer, check_target_module_exists
from peft.utils import PeftType
from peft.utils.other import AuxiliaryTrainingWrapper, transpose
from torch import nn

from . import _C
from . import distributed
from . import quantized
from .layer import BASE_ADAPTER, FourierFTKernels, FourierFTLinear

__all__ = ["FourierFTModel", "get_peft_model", "load_adapter", "register", "registered", "is_registered",
           "accelerate", "is_accelerated", "check_checkpoint", "check_adapter_name", "validate_config"]

SAFETENSORS_WEIGHTS_NAME = "adapter_model.safetensors"
_PREFIX = "base_model.model."
_SPECTRUM = "fourierft_spectrum"


def check_adapter_name(name, where: str) -> None:
    """Raises ``ValueError`` unless ``name`` can name an adapter: a non-empty ``str`` without ``'.'`` (it becomes a
    key of the layers' ``nn.ParameterDict``; PEFT fails half-way through injecting such a name)."""
    if not isinstance(name, str) or not name or "." in name:
        raise ValueError(f"{where}: adapter name {name!r} is invalid: an adapter name must be a non-empty str "
                         "without '.' (it is a parameter-name segment)")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _str_or_strs(value) -> bool:
    return isinstance(value, str) or (isinstance(value, (list, tuple, set)) and all(isinstance(v, str) for v in value))


#: The FourierFTConfig fields fourierft implements (PEFT's FourierFT from 0.17 to 0.21), besides PeftConfig's own.
IMPLEMENTED_FIELDS = frozenset({"n_frequency", "scaling", "random_loc_seed", "fan_in_fan_out", "target_modules",
                                "exclude_modules", "bias", "modules_to_save", "layers_to_transform", "layers_pattern",
                                "n_frequency_pattern", "init_weights"})
#: Fields a PEFT pull request adds to FourierFTConfig that change the math, with the value that leaves it as
#: fourierft computes it.
_MATH_FIELDS = {"alpha": None, "ifft2_norm": "backward"}
#: The PEFT versions whose FourierFT fourierft reproduces (pyproject.toml's range).
SUPPORTED_PEFT = ">=0.17,<0.22"
#: A field with no value that leaves the math unchanged.
_NO_NEUTRAL = object()


def _base_fields() -> set:
    return {f.name for f in dataclasses.fields(peft.PeftConfig)}


def _refuse_field(where: str, field: str, value, neutral, saved_elsewhere: bool = False) -> None:
    origin = ("is not a field of the installed PEFT's FourierFTConfig (the adapter was saved by another PEFT version)"
              if saved_elsewhere else "is a FourierFTConfig field fourierft does not implement")
    raise ValueError(f"{where}: {field}={value!r} {origin}, and it changes the FourierFT math (PEFT "
                     f"{peft.__version__}; fourierft reproduces PEFT {SUPPORTED_PEFT}"
                     + (f", where {field}={neutral!r}" if neutral is not _NO_NEUTRAL else "")
                     + "). Remove it or use a fourierft release that supports it.")


def check_unimplemented_fields(config, where: str) -> None:
    """Refuses a FourierFTConfig that carries a field fourierft does not implement (a newer PEFT's, such as
    ``alpha`` or ``ifft2_norm``) with a value that changes the math: anything but the value that leaves it as
    fourierft computes it (for a field unknown to fourierft: the field's default in PEFT's class)."""
    for field in dataclasses.fields(config):
        if field.name in IMPLEMENTED_FIELDS or field.name in _base_fields():
            continue
        value = getattr(config, field.name)
        if field.name in _MATH_FIELDS:
            neutral = _MATH_FIELDS[field.name]
        elif field.default is not dataclasses.MISSING:
            neutral = field.default
        elif field.default_factory is not dataclasses.MISSING:
            neutral = field.default_factory()
        else:
            neutral = _NO_NEUTRAL
        if neutral is _NO_NEUTRAL or value != neutral:
            _refuse_field(where, f"FourierFTConfig.{field.name}", value, neutral)


def check_config_file_fields(raw: dict, config_file: str) -> None:
    """Refuses an adapter_config.json with keys the installed PEFT's FourierFTConfig does not have (PEFT drops them
    silently when it loads the file): an adapter saved by a newer PEFT whose extra fields may change the math. Only
    ``alpha`` / ``ifft2_norm`` at the value that leaves the math unchanged are let through."""
    known = {f.name for f in dataclasses.fields(peft.FourierFTConfig)}
    for key, value in raw.items():
        if key in known:
            continue
        neutral = _MATH_FIELDS.get(key, _NO_NEUTRAL)
        if neutral is _NO_NEUTRAL or value != neutral:
            _refuse_field(config_file, key, value, neutral, saved_elsewhere=True)


def validate_config(config, where: str) -> None:
    """Checks every field of a ``FourierFTConfig`` (PEFT's class) for type and range before anything is built from
    it; raises ``ValueError`` naming ``where``, the field and the value. PEFT checks some of these late (a
    ``TypeError`` from inside ``update_layer``, a ``NotImplementedError`` for ``bias``) or not at all."""
    def bad(field, expected):
        raise ValueError(f"{where}: FourierFTConfig.{field}={getattr(config, field, None)!r} is invalid: expected "
                         f"{expected}")

    if not _is_int(config.n_frequency) or config.n_frequency <= 0:
        bad("n_frequency", "a positive int")
    scaling = config.scaling
    if isinstance(scaling, bool) or not isinstance(scaling, (int, float)) or not math.isfinite(scaling):
        bad("scaling", "a finite number")
    if not _is_int(config.random_loc_seed):
        bad("random_loc_seed", "an int (the seed of the entry draw)")
    for field in ("fan_in_fan_out", "init_weights", "inference_mode"):
        if not isinstance(getattr(config, field), bool):
            bad(field, "True or False")
    if not isinstance(config.bias, str) or not (config.bias in ("none", "all") or config.bias.endswith("_only")):
        # PEFT's rule (BaseTuner._mark_only_adapters_as_trainable): "<method>_only" opens the adapted layers' biases
        bad("bias", "'none', 'all' or '<method>_only' (e.g. 'fourier_only')")
    for field in ("target_modules", "exclude_modules", "layers_pattern"):
        value = getattr(config, field)
        if value is not None and not _str_or_strs(value):
            bad(field, "None, a str or a list of str")
    if config.modules_to_save is not None and (isinstance(config.modules_to_save, str)
                                               or not _str_or_strs(config.modules_to_save)):
        bad("modules_to_save", "None or a list of str")
    layers = config.layers_to_transform
    if layers is not None and not ((_is_int(layers) and layers >= 0) or (
            isinstance(layers, (list, tuple)) and all(_is_int(i) and i >= 0 for i in layers))):
        bad("layers_to_transform", "None, a non-negative int or a list of them")
    pattern = config.n_frequency_pattern
    if not isinstance(pattern, dict) or not all(isinstance(k, str) and _is_int(v) and v > 0
                                                for k, v in pattern.items()):
        bad("n_frequency_pattern", "a dict of module-name patterns to positive ints")
    check_unimplemented_fields(config, where)


def _n_frequency_for(config, module_name: str) -> int:
    """The n_frequency PEFT's FourierFT tuner gives ``module_name`` (its ``_create_and_replace``): the first
    n_frequency_pattern key k with re.match(rf".*\.{k}$", name); else the pattern's entry under the full module name
    itself (so ``{"lin0": 5}`` applies to a top-level ``lin0``, which has no dot before it); else n_frequency."""
    pattern = config.n_frequency_pattern
    key = next((k for k in pattern if re.match(rf".*\.{k}$", module_name)), module_name)
    return pattern.get(key, config.n_frequency)


class _AdapterEntries:
    """The per-adapter entries of every tuner layer and auxiliary wrapper of a model (spectra, n_frequency,
    scaling, seeds, indices, modules_to_save copies) and their active adapters, to remove what a failed
    injection added to layers that existed before it."""

    def __init__(self, model: nn.Module):
        self.entries = []
        for module in model.modules():
            names = set(getattr(module, "adapter_layer_names", ())) | set(getattr(module, "other_param_names", ()))
            if not names:
                continue
            names.add("indices")
            for name in names:
                holder = getattr(module, name, None)
                if holder is not None and hasattr(holder, "keys"):
                    self.entries.append((module, holder, set(holder.keys())))
            self.entries.append((module, None, getattr(module, "_active_adapter", None)))

    def restore(self) -> None:
        for module, holder, before in self.entries:
            if holder is None:
                if before is not None:
                    module._active_adapter = copy.copy(before)
                continue
            for key in [k for k in holder.keys() if k not in before]:
                del holder[key]


class FourierFTModel(PeftFourierFTModel):
    """PEFT's FourierFT tuner whose layers are :class:`fourierft.FourierFTLinear` (PEFT's layer on our
    kernels), with an all-or-nothing ``safe_merge``. Registered for ``PeftType.FOURIERFT`` by
    :func:`register`; users reach it through ``get_peft_model`` / ``PeftModel`` as usual."""

    @staticmethod
    def _create_new_module(fourierft_config, adapter_name, target, **kwargs):
        module = PeftFourierFTModel._create_new_module(fourierft_config, adapter_name, target, **kwargs)
        if type(module) is PeftFourierFTLinear:
            module.__class__ = FourierFTLinear
        return module

    def _create_and_replace(self, fourierft_config, adapter_name, target, target_name, parent, current_key,
                            **optional_kwargs):
        """PEFT's, with the module and the adapter named in its errors (PEFT's say only the numbers)."""
        try:
            super()._create_and_replace(fourierft_config, adapter_name, target, target_name, parent, current_key,
                                        **optional_kwargs)
        except (ValueError, TypeError) as error:
            if type(error) not in (ValueError, TypeError):
                raise
            raise type(error)(f"{error} (module {current_key!r}, adapter {adapter_name!r})") from error

    def inject_adapter(self, model: nn.Module, adapter_name: str, *args, **kwargs) -> None:
        """PEFT's ``inject_adapter`` (run by ``get_peft_model``, ``add_adapter``, ``load_adapter`` and
        ``from_pretrained``), all-or-nothing: the name and every config field are checked first, and if PEFT
        fails part-way (a layer too small for ``n_frequency``, ...) every entry it added to the layers, every
        module it replaced and every ``requires_grad`` it changed is put back before the error propagates."""
        check_adapter_name(adapter_name, "fourierft")
        validate_config(self.peft_config[adapter_name], f"adapter {adapter_name!r}")
        snapshot = _Snapshot(model)
        entries = _AdapterEntries(model)
        targeted = list(self.targeted_module_names), list(getattr(self, "targeted_parameter_names", []))
        try:
            super().inject_adapter(model, adapter_name, *args, **kwargs)
        except BaseException:
            entries.restore()
            snapshot.restore()
            self.targeted_module_names[:] = targeted[0]
            if hasattr(self, "targeted_parameter_names"):
                self.targeted_parameter_names[:] = targeted[1]
            raise

    def train(self, mode: bool = True):
        """``nn.Module.train``; going back to training also puts 4-bit layers that bitsandbytes repacked for its CPU
        inference kernel back into its standard layout (``fourierft.quantized.standard_layout``): bitsandbytes 0.50
        cannot train a repacked layer, and a CPU model evaluated before or during training would fail."""
        if mode:
            quantized.standard_layout(self.model)
        return super().train(mode)

    def _check_adapter_names(self, adapter_names: Optional[list[str]], what: str) -> None:
        """Unknown names raise before anything is merged (PEFT's merge skips them silently)."""
        if adapter_names is None:
            return
        if isinstance(adapter_names, str) or not all(isinstance(n, str) for n in adapter_names):
            raise ValueError(f"{what}: adapter_names must be a list of adapter names, got {adapter_names!r}")
        unknown = [n for n in adapter_names if n not in self.peft_config]
        if unknown:
            raise ValueError(f"{what}: unknown adapter(s) {', '.join(map(repr, unknown))}; the model has "
                             f"{', '.join(map(repr, self.peft_config))} (nothing was merged)")

    def _check_safe_merge(self, adapter_names: Optional[list[str]]) -> None:
        """Raises, changing nothing, if merging would put NaN/inf into any layer's weights."""
        for key, module in self.model.named_modules():
            if not isinstance(module, PeftFourierFTLinear):
                continue
            names = module.active_adapters if adapter_names is None else adapter_names
            todo = [a for a in names if a in module.fourierft_spectrum and a not in module.merged_adapters]
            if not todo:
                continue
            base = module.get_base_layer()
            weight = quantized.dequantized_weight(base) if quantized.quantization_of(base) else base.weight
            with torch.no_grad():
                merged = weight.detach().clone()
                for adapter in todo:
                    merged += transpose(module.get_delta_weight(adapter), module.fan_in_fan_out).to(weight.dtype)
                if not torch.isfinite(merged).all():
                    raise ValueError(
                        f"NaNs detected in the merged weights of {key!r}. The adapter(s) {','.join(todo)} seem to be "
                        "broken; nothing was merged (safe_merge checks every layer before changing any)")

    def merge_adapter(self, adapter_names: Optional[list[str]] = None, safe_merge: bool = False) -> None:
        """PEFT's ``merge_adapter``; unknown names raise, a model sharded by FSDP is refused, and with ``safe_merge``
        every layer is checked before any is merged."""
        self._check_adapter_names(adapter_names, "merge_adapter")
        distributed.check_not_sharded(self.model, "merge_adapter")
        if safe_merge:
            self._check_safe_merge(adapter_names)
        super().merge_adapter(adapter_names=adapter_names, safe_merge=safe_merge)

    def merge_and_unload(self, progressbar: bool = False, safe_merge: bool = False,
                         adapter_names: Optional[list[str]] = None) -> nn.Module:
        """PEFT's ``merge_and_unload``; unknown names raise, a model sharded by FSDP is refused, and with
        ``safe_merge`` every layer is checked before any is merged."""
        self._check_adapter_names(adapter_names, "merge_and_unload")
        distributed.check_not_sharded(self.model, "merge_and_unload")
        if safe_merge:
            self._check_safe_merge(adapter_names)
        return super().merge_and_unload(progressbar=progressbar, safe_merge=safe_merge, adapter_names=adapter_names)

    @contextlib.contextmanager
    def _enable_peft_forward_hooks(self, *args, **kwargs):
        """``model(..., adapter_names=[one per row])`` (and ``generate``): each row through its own adapter,
        ``"__base__"`` for none; inference only, unknown names raise before any compute (PEFT's LoRA rules)."""
        adapter_names = kwargs.pop("adapter_names", None)
        if adapter_names is None:
            yield
            return
        if self.training:
            raise ValueError("Cannot pass `adapter_names` when the model is in training mode.")
        if not isinstance(adapter_names, (list, tuple)) or not all(isinstance(n, str) for n in adapter_names):
            raise TypeError(f"Got adapter names of type {type(adapter_names)}, expected a list of str.")
        known = set()
        for layer in self.modules():
            if isinstance(layer, PeftFourierFTLinear):
                known |= set(layer.fourierft_spectrum.keys())
        unknown = {n for n in adapter_names if n != BASE_ADAPTER} - known
        if unknown:
            raise ValueError(f"Trying to infer with non-existing adapter(s): {', '.join(sorted(unknown))}")
        original = list(adapter_names)
        num_beams = kwargs.get("num_beams")
        if isinstance(num_beams, int) and num_beams > 1:  # generate repeats every row num_beams times
            adapter_names = [n for n in adapter_names for _ in range(num_beams)]
        handles = []

        def hook_all(modules, names):
            for module in modules:
                if isinstance(module, (PeftFourierFTLinear, AuxiliaryTrainingWrapper)):
                    handles.append(module.register_forward_pre_hook(
                        functools.partial(_adapter_names_hook, adapter_names=names), with_kwargs=True))

        hook_all(self.modules(), list(adapter_names))
        encoder = _get_encoder(self.model)
        if encoder is not None and len(adapter_names) != len(original):  # the encoder sees the rows once
            hook_all(encoder.modules(), original)
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    @classmethod
    def from_pretrained(cls, model: nn.Module, model_id: Union[str, os.PathLike], adapter_name: str = "default",
                        is_trainable: bool = False, config: Optional[peft.PeftConfig] = None,
                        **kwargs) -> peft.PeftModel:
        """``peft.PeftModel.from_pretrained`` with fourierft's layers and guarantees: the checkpoint is
        checked first (:func:`check_checkpoint`), and if loading fails ``model`` is left as it was.
        Returns PEFT's task-specific ``PeftModel`` (in eval mode unless ``is_trainable``)."""
        check_adapter_name(adapter_name, "FourierFTModel.from_pretrained")
        saved = check_checkpoint(model, model_id, subfolder=kwargs.get("subfolder"))
        snapshot = _Snapshot(model)
        try:
            with registered():
                peft_model = peft.PeftModel.from_pretrained(model, model_id, adapter_name=adapter_name,
                                                            is_trainable=is_trainable, config=config, **kwargs)
            _check_loaded(peft_model, saved, model_id, adapter_name, kwargs.get("subfolder"))
        except BaseException:
            snapshot.restore()
            raise
        return peft_model


def _adapter_names_hook(module, args, kwargs, adapter_names):
    kwargs["adapter_names"] = adapter_names
    return args, kwargs


def _get_encoder(model: nn.Module) -> Optional[nn.Module]:
    get_encoder = getattr(model, "get_encoder", None)
    if not callable(get_encoder):
        return None
    try:
        encoder = get_encoder()
    except (AttributeError, NotImplementedError, TypeError):
        return None
    # transformers v5: every PreTrainedModel has get_encoder, which returns the model itself when it has no encoder
    # (a causal LM); its rows are the beams then, like the decoder's (PEFT's LoRA makes the same check).
    return None if encoder is model else encoder


# ---- registration ---------------------------------------------------------------------------------
_PEFT_TUNER = PEFT_TYPE_TO_TUNER_MAPPING.get(PeftType.FOURIERFT, PeftFourierFTModel)


def register(enabled: bool = True) -> bool:
    """Makes PEFT build fourierft's layers for every FourierFT adapter (``enabled=False``: PEFT's own
    layers again). Runs when ``fourierft`` is imported. Returns whether it was registered before.
    Models built earlier keep their layers (see :func:`accelerate`)."""
    before = is_registered()
    PEFT_TYPE_TO_TUNER_MAPPING[PeftType.FOURIERFT] = FourierFTModel if enabled else _PEFT_TUNER
    return before


def is_registered() -> bool:
    """True while PEFT builds fourierft's layers for FourierFT adapters."""
    return PEFT_TYPE_TO_TUNER_MAPPING.get(PeftType.FOURIERFT) is FourierFTModel


@contextlib.contextmanager
def registered(enabled: bool = True) -> Iterator[None]:
    """``with fourierft.registered(False): ...`` builds PEFT's own layers inside the block (e.g. a
    reference model); the previous registration is restored after it."""
    before = register(enabled)
    try:
        yield
    finally:
        register(before)


def get_peft_model(model: nn.Module, peft_config: peft.PeftConfig, adapter_name: str = "default",
                   **kwargs) -> peft.PeftModel:
    """``peft.get_peft_model`` with fourierft's layers: returns PEFT's (task-specific) ``PeftModel``;
    ``kwargs`` are PEFT's (``mixed``, ``autocast_adapter_dtype``, ``revision``, ``low_cpu_mem_usage``).
    If PEFT raises (a bad target, ``n_frequency`` too large for a layer, ...), ``model`` is left as it
    was (PEFT leaves the layers it had already replaced)."""
    check_adapter_name(adapter_name, "get_peft_model")
    if getattr(peft_config, "peft_type", None) == PeftType.FOURIERFT:
        validate_config(peft_config, f"get_peft_model (adapter {adapter_name!r})")
    snapshot = _Snapshot(model)
    try:
        with registered():
            return _peft_get_peft_model(model, peft_config, adapter_name=adapter_name, **kwargs)
    except BaseException:
        snapshot.restore()
        raise


def load_adapter(peft_model: peft.PeftModel, model_id: Union[str, os.PathLike], adapter_name: str,
                 is_trainable: bool = False, **kwargs):
    """``peft_model.load_adapter(model_id, adapter_name, ...)`` with fourierft's guarantees: the checkpoint
    is checked first (:func:`check_checkpoint`) and a failed load leaves ``peft_model`` as it was (no
    half-loaded adapter, trainability and active adapter unchanged). Returns PEFT's load result."""
    check_adapter_name(adapter_name, "load_adapter")
    if adapter_name in peft_model.peft_config:
        raise ValueError(f"load_adapter: adapter {adapter_name!r} already exists; delete it first or pick another name")
    saved = check_checkpoint(peft_model, model_id, subfolder=kwargs.get("subfolder"))
    snapshot = _Snapshot(peft_model)
    active = peft_model.active_adapter
    try:
        with registered():
            result = peft_model.load_adapter(model_id, adapter_name, is_trainable=is_trainable, **kwargs)
        _check_loaded(peft_model, saved, model_id, adapter_name, kwargs.get("subfolder"))
    except BaseException:
        if adapter_name in peft_model.peft_config:
            with contextlib.suppress(Exception):
                peft_model.delete_adapter(adapter_name)
            peft_model.peft_config.pop(adapter_name, None)
        snapshot.restore()
        if peft_model.active_adapter != active:
            peft_model.set_adapter(active)
            snapshot.restore()
        raise
    return result


# ---- accelerate: switch an existing PEFT model's layers -------------------------------------------
def is_accelerated(module: nn.Module) -> bool:
    """True when ``module`` is a PEFT FourierFT layer running on fourierft's kernels."""
    return isinstance(module, FourierFTKernels)


def accelerate(model: nn.Module, enabled: bool = True) -> nn.Module:
    """Switches every PEFT FourierFT layer inside ``model`` to fourierft's kernels, in place
    (``enabled=False``: back to PEFT's). Objects, parameters, outputs, gradients and checkpoints stay
    PEFT's. Returns ``model``; raises ``ValueError`` if it holds no PEFT FourierFT layer.

    >>> peft_model = fourierft.accelerate(peft.get_peft_model(base, peft.FourierFTConfig(...)))
    """
    if enabled:  # a config with math fourierft does not implement is refused before anything switches
        for module in model.modules():
            if isinstance(module, PeftFourierFTModel):
                for name, config in module.peft_config.items():
                    validate_config(config, f"fourierft.accelerate (adapter {name!r})")
    found = 0
    for module in model.modules():
        if isinstance(module, PeftFourierFTModel):  # the tuner: mixed-adapter batches, all-or-nothing safe merge
            module.__class__ = FourierFTModel if enabled else _PEFT_TUNER
            continue
        if not isinstance(module, PeftFourierFTLinear):
            continue
        found += 1
        if enabled and type(module) is PeftFourierFTLinear:
            module.__class__ = FourierFTLinear
        elif not enabled and type(module) is FourierFTLinear:
            module.__dict__.pop("_fourierft_cache", None)
            module.__class__ = PeftFourierFTLinear
    if not found:
        raise ValueError(
            f"fourierft.accelerate: no peft FourierFT layer in {type(model).__name__}; build the model with "
            "peft.get_peft_model(model, peft.FourierFTConfig(...)) or fourierft.get_peft_model first")
    return model


# ---- checkpoints: strict checks before PEFT loads, and undo when it fails ---------------------------
def _inner_model(model: nn.Module) -> nn.Module:
    return model.base_model.model if isinstance(model, peft.PeftModel) else model


def _peft_name(name: str) -> str:
    """A parameter name as PEFT writes it in a checkpoint (wrappers' segments dropped)."""
    parts = name.split(".")
    out = []
    i = 0
    while i < len(parts):
        if parts[i] in ("base_layer", "original_module"):
            i += 1
        elif parts[i] == "modules_to_save" and i + 1 < len(parts):
            i += 2
        else:
            out.append(parts[i])
            i += 1
    return ".".join(out)


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
    modules = {_peft_name(name): module for name, module in inner.named_modules()}
    params = {_peft_name(name): p for name, p in inner.named_parameters() if f".{_SPECTRUM}." not in f".{name}"}
    for key, tensor in tensors.items():
        if not key.startswith(_PREFIX):
            raise ValueError(f"{file}: tensor {key!r} does not start with {_PREFIX!r} (not a PEFT adapter file)")
        name = key[len(_PREFIX):]
        if name.endswith("." + _SPECTRUM):
            path = name[: -len(_SPECTRUM) - 1]
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
            expected_n = _n_frequency_for(config, path)
            if tensor.numel() != expected_n:
                raise ValueError(f"{file}: spectrum {key!r} has {tensor.numel()} values, but {config_file} gives "
                                 f"{path!r} n_frequency={expected_n}; the file and its config disagree")
        else:
            # PEFT's checkpoint names of biases (bias="all"/"fourier_only") keep its wrappers' segments, without
            # the adapter name: "<path>.base_layer.bias", "<head>.original_module.bias", "<head>.modules_to_save.bias".
            name = ".".join(part for part in name.split(".")
                            if part not in ("base_layer", "original_module", "modules_to_save"))
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


def _check_loaded(peft_model: peft.PeftModel, saved: Optional[dict[str, torch.Tensor]], model_id, adapter_name: str,
                  subfolder: Optional[str]) -> None:
    """After PEFT loaded: every layer holding the adapter got its spectrum from the file, whose tensor names
    check_checkpoint read (PEFT only warns about missing keys and keeps the random initial spectra)."""
    if saved is None:
        return
    file = os.path.join(_adapter_dir(model_id, subfolder), SAFETENSORS_WEIGHTS_NAME)
    for name, module in peft_model.base_model.model.named_modules():
        if isinstance(module, PeftFourierFTLinear) and adapter_name in module.fourierft_spectrum:
            key = f"{_PREFIX}{_peft_name(name)}.{_SPECTRUM}"
            if key not in saved:
                raise ValueError(f"{file}: no spectrum for the targeted module {_peft_name(name)!r} "
                                 f"(missing tensor {key!r}); the adapter was not loaded")


class _Snapshot:
    """What loading an adapter may change in a model, to put it back when the load fails: the module
    tree (PEFT replaces targets by tuner layers and heads by wrappers), ``requires_grad``, train/eval
    and the ``peft_config`` attribute."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.children = {id(m): dict(m._modules) for m in model.modules()}
        self.modules = list(model.modules())
        self.requires_grad = [(p, p.requires_grad) for p in model.parameters()]
        self.training = [(m, m.training) for m in self.modules]
        self.peft_config = model.__dict__.get("peft_config", _MISSING)

    def restore(self) -> None:
        for module in self.modules:
            module._modules.clear()
            module._modules.update(self.children[id(module)])
        for p, flag in self.requires_grad:
            p.requires_grad_(flag)
        for m, flag in self.training:
            m.training = flag
        if self.peft_config is _MISSING:
            self.model.__dict__.pop("peft_config", None)
        else:
            self.model.__dict__["peft_config"] = self.peft_config


_MISSING = object()
