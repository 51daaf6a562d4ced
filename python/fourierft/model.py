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
import functools
import os
from typing import Iterator, Optional, Union

import peft
import torch
from peft import get_peft_model as _peft_get_peft_model
from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING
from peft.tuners.fourierft.layer import FourierFTLinear as PeftFourierFTLinear
from peft.tuners.fourierft.model import FourierFTModel as PeftFourierFTModel
from peft.utils import PeftType
from peft.utils.other import AuxiliaryTrainingWrapper, transpose
from torch import nn

from . import distributed
from . import quantized
from .checkpoint import check_checkpoint, check_loaded
from .config import check_adapter_name, validate_config
from .layer import BASE_ADAPTER, FourierFTKernels, FourierFTLinear
from .rollback import all_or_nothing

__all__ = ["FourierFTModel", "get_peft_model", "load_adapter", "register", "registered", "is_registered",
           "accelerate", "is_accelerated", "check_checkpoint", "check_adapter_name", "validate_config"]


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
        with all_or_nothing(self if model is getattr(self, "model", None) else model):
            super().inject_adapter(model, adapter_name, *args, **kwargs)

    def train(self, mode: bool = True):
        """``nn.Module.train``; going back to training also puts 4-bit layers that bitsandbytes repacked for its CPU
        inference kernel back into its standard layout (``fourierft.quantized.standard_layout``): bitsandbytes 0.50
        cannot train a repacked layer, and a CPU model evaluated before or during training would fail."""
        if mode:
            quantized.standard_layout(self.model)
        return super().train(mode)

    def _check_adapter_names(self, adapter_names, what: str, allow_str: bool = False,
                             nothing: str = "nothing was merged") -> None:
        """Unknown names raise before anything changes (PEFT's merges skip them silently, the tuner's set_adapter
        makes every layer's active adapter a name no layer holds, set_requires_grad does nothing)."""
        if adapter_names is None:
            return
        names = [adapter_names] if allow_str and isinstance(adapter_names, str) else adapter_names
        if not isinstance(names, (list, tuple, set)) or not all(isinstance(n, str) for n in names):
            raise ValueError(f"{what}: adapter_names must be a list of adapter names, got {adapter_names!r}")
        unknown = [n for n in names if n not in self.peft_config]
        if unknown:
            raise ValueError(f"{what}: unknown adapter(s) {', '.join(map(repr, unknown))}; the model has "
                             f"{', '.join(map(repr, self.peft_config))} ({nothing})")

    def set_adapter(self, adapter_name, inference_mode: bool = False) -> None:
        """PEFT's ``set_adapter``; unknown names raise and change nothing."""
        self._check_adapter_names(adapter_name, "set_adapter", allow_str=True, nothing="the active adapter is unchanged")
        return super().set_adapter(adapter_name, inference_mode=inference_mode)

    def set_requires_grad(self, adapter_names, requires_grad: bool = True) -> None:
        """PEFT's ``set_requires_grad``; unknown names raise and change nothing."""
        self._check_adapter_names(adapter_names, "set_requires_grad", allow_str=True, nothing="nothing changed")
        return super().set_requires_grad(adapter_names=adapter_names, requires_grad=requires_grad)

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
        with all_or_nothing(model), registered():
            peft_model = peft.PeftModel.from_pretrained(model, model_id, adapter_name=adapter_name,
                                                        is_trainable=is_trainable, config=config, **kwargs)
            check_loaded(peft_model, saved, model_id, adapter_name, kwargs.get("subfolder"))
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
    with all_or_nothing(model), registered():
        return _peft_get_peft_model(model, peft_config, adapter_name=adapter_name, **kwargs)


def load_adapter(peft_model: peft.PeftModel, model_id: Union[str, os.PathLike], adapter_name: str,
                 is_trainable: bool = False, **kwargs):
    """``peft_model.load_adapter(model_id, adapter_name, ...)`` with fourierft's guarantees: the checkpoint
    is checked first (:func:`check_checkpoint`) and a failed load leaves ``peft_model`` as it was (no
    half-loaded adapter, trainability and active adapter unchanged). Returns PEFT's load result."""
    check_adapter_name(adapter_name, "load_adapter")
    if adapter_name in peft_model.peft_config:
        raise ValueError(f"load_adapter: adapter {adapter_name!r} already exists; delete it first or pick another name")
    saved = check_checkpoint(peft_model, model_id, subfolder=kwargs.get("subfolder"))
    with all_or_nothing(peft_model), registered():
        result = peft_model.load_adapter(model_id, adapter_name, is_trainable=is_trainable, **kwargs)
        check_loaded(peft_model, saved, model_id, adapter_name, kwargs.get("subfolder"))
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
