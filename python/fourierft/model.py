"""``FourierFTModel`` / ``get_peft_model``: PEFT's model-level API for FourierFT.

A ``FourierFTModel`` wraps any ``nn.Module`` (e.g. a transformers model) the way ``peft.PeftModel``
does: ``base_model.model`` is the user's model with ``FourierFTLinear`` layers put in place of the
matched targets, so parameter and state-dict names are PEFT's
(``base_model.model.<path>.fourierft_spectrum.<adapter>``). Target matching, config validation
and the safetensors files come from the C++ core (one implementation for C++ and Python).
"""
from __future__ import annotations

import contextlib
import copy
import os
import warnings
from typing import Any, Optional, Union

import torch
from torch import nn

from . import _C
from .config import FourierFTConfig
from .layer import FourierFTLinear, ModulesToSaveWrapper, is_conv1d
from .target_modules import DEFAULT_TARGET_MODULES

SAFETENSORS_WEIGHTS_NAME = "adapter_model.safetensors"
WEIGHTS_NAME = "adapter_model.bin"
SPECTRUM = "fourierft_spectrum"

# PEFT adds the task's head to modules_to_save for these task types.
_TASK_HEADS = {"SEQ_CLS": ["classifier", "score"], "TOKEN_CLS": ["classifier", "score"], "QUESTION_ANS": ["qa_outputs"]}


def _as_config(config) -> FourierFTConfig:
    if isinstance(config, FourierFTConfig):
        return copy.deepcopy(config)
    if type(config).__name__ == "FourierFTConfig" and hasattr(config, "to_dict"):
        return FourierFTConfig.from_peft_config(config)
    raise TypeError(f"expected a fourierft.FourierFTConfig or peft.FourierFTConfig, got {type(config).__name__}")


def _parent(model: nn.Module, key: str) -> tuple[nn.Module, str]:
    if "." in key:
        parent_name, name = key.rsplit(".", 1)
        return model.get_submodule(parent_name), name
    return model, key


class _Passthrough(nn.Module):
    """Attributes the module lacks are read from its child ``_inner`` (as PEFT's wrappers do)."""

    _inner = "model"

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == self._inner:
                raise
            return getattr(super().__getattr__(self._inner), name)


class _TunerModel(_Passthrough):
    """Holds the adapted model as ``.model`` (PEFT's ``base_model.model`` names) and forwards to it."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)


class FourierFTModel(_Passthrough):
    """A model with FourierFT adapters (PEFT's ``PeftModel`` for FourierFT).

    Build it with :func:`get_peft_model` or :meth:`from_pretrained`. Attributes the wrapper does
    not have are looked up on the wrapped model (``model.config``, ...)."""

    def __init__(self, model: nn.Module, peft_config, adapter_name: str = "default",
                 autocast_adapter_dtype: bool = True) -> None:
        super().__init__()
        config = _as_config(peft_config)
        if config.base_model_name_or_path is None:
            config.base_model_name_or_path = model.__dict__.get("name_or_path", None)
        self.peft_config: dict[str, FourierFTConfig] = {}
        self.active_adapter: str = adapter_name
        self.base_model = _TunerModel(model)
        self._inject(adapter_name, config)
        if autocast_adapter_dtype:
            self._cast_adapter_dtype(adapter_name)

    _inner = "base_model"

    def get_base_model(self) -> nn.Module:
        """The wrapped model (with the adapter layers in place)."""
        return self.base_model.model

    def forward(self, *args: Any, **kwargs: Any):
        return self.base_model.model(*args, **kwargs)

    def generate(self, *args: Any, **kwargs: Any):
        return self.base_model.model.generate(*args, **kwargs)

    @property
    def active_adapters(self) -> list[str]:
        return [self.active_adapter]

    # ---- building adapters --------------------------------------------------------------------
    def _fourierft_layers(self) -> list[tuple[str, FourierFTLinear]]:
        return [(k, m) for k, m in self.base_model.model.named_modules() if isinstance(m, FourierFTLinear)]

    def _wrappers(self) -> list[tuple[str, ModulesToSaveWrapper]]:
        return [(k, m) for k, m in self.base_model.model.named_modules() if isinstance(m, ModulesToSaveWrapper)]

    def _prepare_config(self, config: FourierFTConfig) -> FourierFTConfig:
        model = self.base_model.model
        if config.target_modules is None:
            model_type = getattr(getattr(model, "config", None), "model_type", None)
            if model_type not in DEFAULT_TARGET_MODULES:
                raise ValueError("Please specify `target_modules` in `peft_config`")
            default = DEFAULT_TARGET_MODULES[model_type]
            config.target_modules = set(default) if isinstance(default, list) else default
        heads = _TASK_HEADS.get(config.task_type or "")
        if heads:
            config.modules_to_save = list(config.modules_to_save or []) + [
                h for h in heads if h not in (config.modules_to_save or [])]
        config.validate()
        return config

    def _inject(self, adapter_name: str, config: FourierFTConfig) -> None:
        """Adds adapter ``adapter_name`` everywhere ``config`` matches. On any error the model is
        left as it was (new layers removed, the adapter deleted from existing ones)."""
        if not isinstance(adapter_name, str) or not adapter_name:
            raise ValueError(f"adapter_name must be a non-empty string, got {adapter_name!r}")
        if adapter_name in self.peft_config:
            raise ValueError(f"Adapter with name {adapter_name!r} already exists.")
        config = self._prepare_config(config)
        model = self.base_model.model
        core = config._core()
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None

        created: list[tuple[nn.Module, str, nn.Module]] = []  # (parent, name, original) to undo
        updated: list[FourierFTLinear] = []
        self.peft_config[adapter_name] = config
        try:
            skip_prefixes: list[str] = []
            for key, module in list(model.named_modules()):
                if not key or any(key.startswith(p) for p in skip_prefixes):
                    continue
                if isinstance(module, (FourierFTLinear, ModulesToSaveWrapper)):
                    skip_prefixes.append(key + ".")
                is_linear = isinstance(module, (nn.Linear, FourierFTLinear)) or is_conv1d(module)
                matched, _excluded, n_frequency = core.match(key, is_linear, head is not None and module is head)
                if not matched:
                    continue
                if isinstance(module, ModulesToSaveWrapper):
                    continue
                if isinstance(module, FourierFTLinear):
                    updated.append(module)
                    module.update_layer(adapter_name, n_frequency, config=config)
                    continue
                new_module = self._create_new_module(config, adapter_name, module, n_frequency, key)
                if adapter_name != self.active_adapter:
                    new_module.requires_grad_(False)
                parent, name = _parent(model, key)
                setattr(parent, name, new_module)
                created.append((parent, name, module))
            if not created and not updated:
                targets = config.target_modules
                raise ValueError(
                    f"Target modules {targets} not found in the base model. "
                    "Please check the target modules and try again."
                )
            self._set_modules_to_save(adapter_name, config)
        except BaseException:
            for parent, name, original in reversed(created):
                setattr(parent, name, original)
            for layer in updated:
                layer.delete_adapter(adapter_name)
            for _, wrapper in self._wrappers():
                wrapper.delete_adapter(adapter_name)
            del self.peft_config[adapter_name]
            raise
        self._mark_trainable(adapter_name)

    @staticmethod
    def _create_new_module(config: FourierFTConfig, adapter_name: str, target: nn.Module, n_frequency: int,
                           key: str) -> FourierFTLinear:
        if isinstance(target, nn.Linear):
            if config.fan_in_fan_out:
                warnings.warn(
                    "fan_in_fan_out is set to True but the target module is `torch.nn.Linear`. "
                    "Setting fan_in_fan_out to False."
                )
                config.fan_in_fan_out = False
        elif is_conv1d(target):
            if not config.fan_in_fan_out:
                warnings.warn(
                    "fan_in_fan_out is set to False but the target module is `Conv1D`. Setting fan_in_fan_out to True."
                )
                config.fan_in_fan_out = True
        else:
            raise TypeError(
                f"Target module {target} is not supported. Currently, only the following modules are supported: "
                f"`torch.nn.Linear` (and transformers' `Conv1D`). (module '{key}', adapter '{adapter_name}')"
            )
        try:
            return FourierFTLinear(target, adapter_name, config=config, n_frequency=n_frequency)
        except ValueError as error:
            raise ValueError(f"module '{key}', adapter '{adapter_name}': {error}") from None

    def _set_modules_to_save(self, adapter_name: str, config: FourierFTConfig) -> None:
        names = config.modules_to_save
        if not names:
            return
        model = self.base_model.model
        for key, module in list(model.named_modules()):
            if not any(key.endswith(name) for name in names):
                continue
            parent, name = _parent(model, key)
            if isinstance(parent, (ModulesToSaveWrapper, FourierFTLinear)) or ".modules_to_save." in key \
                    or ".original_module" in key:
                continue
            if isinstance(module, ModulesToSaveWrapper):
                module.update(adapter_name)
                module.set_adapter(module.active_adapter or [], inference_mode=config.inference_mode)
            elif isinstance(module, FourierFTLinear):
                continue
            else:
                wrapper = ModulesToSaveWrapper(module, adapter_name)
                if adapter_name == self.active_adapter:
                    wrapper.set_adapter(adapter_name, inference_mode=config.inference_mode)
                else:
                    wrapper.set_adapter([], inference_mode=config.inference_mode)
                setattr(parent, name, wrapper)

    def _mark_trainable(self, adapter_name: str) -> None:
        """PEFT's rule: only adapter spectra train; biases per ``bias``; modules_to_save copies of
        the active adapter train; nothing of ``adapter_name`` trains in inference mode."""
        model = self.base_model.model
        for name, param in model.named_parameters():
            if SPECTRUM not in name:
                param.requires_grad_(False)
        active = self.peft_config[self.active_adapter]
        if active.bias == "all":
            for name, param in model.named_parameters():
                if "bias" in name:
                    param.requires_grad_(True)
        elif active.bias == "fourier_only":
            for _, layer in self._fourierft_layers():
                if getattr(layer.base_layer, "bias", None) is not None:
                    layer.base_layer.bias.requires_grad_(True)
        if self.peft_config[adapter_name].inference_mode:
            for name, param in model.named_parameters():
                if f"{SPECTRUM}.{adapter_name}" in name:
                    param.requires_grad_(False)
        for _, wrapper in self._wrappers():
            if self.active_adapter in wrapper.modules_to_save:
                wrapper.set_adapter(self.active_adapter, inference_mode=active.inference_mode)

    def _cast_adapter_dtype(self, adapter_name: str) -> None:
        """As PEFT's ``autocast_adapter_dtype=True``: float16/bfloat16 spectra are kept in float32."""
        for _, layer in self._fourierft_layers():
            if adapter_name in layer.fourierft_spectrum:
                spectrum = layer.fourierft_spectrum[adapter_name]
                if spectrum.dtype in (torch.float16, torch.bfloat16):
                    spectrum.data = spectrum.data.float()

    def add_adapter(self, adapter_name: str, peft_config, low_cpu_mem_usage: bool = False) -> None:
        """Adds a second (third, ...) adapter; it is not active (nor trainable) until
        :meth:`set_adapter`."""
        self._inject(adapter_name, _as_config(peft_config))

    def set_adapter(self, adapter_name: str, inference_mode: bool = False) -> None:
        """Makes ``adapter_name`` the active (and trainable) adapter."""
        if adapter_name not in self.peft_config:
            raise ValueError(f"Adapter {adapter_name} not found.")
        for _, layer in self._fourierft_layers():
            if layer.merged:
                warnings.warn("Adapter cannot be set when the model is merged. Unmerging the model first.")
                layer.unmerge()
            layer.set_adapter(adapter_name, inference_mode=inference_mode)
        for _, wrapper in self._wrappers():
            if adapter_name in wrapper.modules_to_save:
                wrapper.set_adapter(adapter_name, inference_mode=inference_mode)
            else:
                wrapper.set_adapter([], inference_mode=inference_mode)
        self.active_adapter = adapter_name

    def delete_adapter(self, adapter_name: str) -> None:
        """Removes ``adapter_name`` everywhere; if it was active, the first remaining one becomes active."""
        if adapter_name not in self.peft_config:
            raise ValueError(f"Adapter {adapter_name} does not exist")
        del self.peft_config[adapter_name]
        for _, layer in self._fourierft_layers():
            layer.delete_adapter(adapter_name)
        for _, wrapper in self._wrappers():
            wrapper.delete_adapter(adapter_name)
        if self.active_adapter == adapter_name:
            remaining = list(self.peft_config)
            self.active_adapter = remaining[0] if remaining else None
            if remaining:
                warnings.warn(f"Adapter {adapter_name} was active which is now deleted. "
                              f"Setting active adapter to {remaining[0]}.")
                self.set_adapter(remaining[0])

    # ---- enabling / disabling -----------------------------------------------------------------
    def _enable_adapter_layers(self, enabled: bool) -> None:
        for _, layer in self._fourierft_layers():
            layer.enable_adapters(enabled)
        for _, wrapper in self._wrappers():
            wrapper.enable_adapters(enabled)

    def enable_adapter_layers(self) -> None:
        self._enable_adapter_layers(True)

    def disable_adapter_layers(self) -> None:
        bias = self.peft_config[self.active_adapter].bias if self.active_adapter in self.peft_config else "none"
        if bias != "none":
            warnings.warn(
                f"Careful, disabling adapter layers with bias configured to be '{bias}' does not produce the "
                "same output as the base model would without adaption."
            )
        self._enable_adapter_layers(False)

    @contextlib.contextmanager
    def disable_adapter(self):
        """``with model.disable_adapter(): ...`` runs the base model (merged adapters are unmerged)."""
        self.disable_adapter_layers()
        try:
            yield
        finally:
            self.enable_adapter_layers()

    # ---- merging ---------------------------------------------------------------------------------
    def _check_merge(self, adapter_names: Optional[list[str]]) -> None:
        """All-or-nothing safe merge: every layer's ``W0 + delta_W`` is checked before any changes."""
        for key, layer in self._fourierft_layers():
            names = layer.active_adapters if adapter_names is None else adapter_names
            for name in names:
                if name in layer.fourierft_spectrum and name not in layer.merged_adapters:
                    with torch.no_grad():
                        if not torch.isfinite(layer.merged_weight(name)).all():
                            raise ValueError(
                                f"NaNs detected in the merged weights. The adapter {name} seems to be broken "
                                f"(module '{key}'); nothing was merged"
                            )

    def _check_adapter_names(self, adapter_names: Optional[list[str]]) -> None:
        if adapter_names is None:
            return
        if isinstance(adapter_names, str):
            raise ValueError(f"adapter_names should be a list of strings, got {adapter_names!r}.")
        unknown = [n for n in adapter_names if n not in self.peft_config]
        if unknown:
            raise ValueError(f"Adapter(s) {unknown} not found, available: {list(self.peft_config)}")

    def merge_adapter(self, adapter_names: Optional[list[str]] = None, safe_merge: bool = False) -> None:
        """Adds ``delta_W`` into the base weights (active adapters by default)."""
        self._check_adapter_names(adapter_names)
        if safe_merge:
            self._check_merge(adapter_names)
        for _, layer in self._fourierft_layers():
            layer.merge(safe_merge=safe_merge, adapter_names=adapter_names)

    def unmerge_adapter(self) -> None:
        for _, layer in self._fourierft_layers():
            if layer.merged:
                layer.unmerge()

    def _unload_and_optionally_merge(self, merge: bool, progressbar: bool, safe_merge: bool,
                                     adapter_names: Optional[list[str]]) -> nn.Module:
        from tqdm.auto import tqdm

        if merge:
            self._check_adapter_names(adapter_names)
            if safe_merge:
                self._check_merge(adapter_names)
        model = self.base_model.model
        keys = [k for k, m in model.named_modules() if isinstance(m, (FourierFTLinear, ModulesToSaveWrapper))]
        desc = "Unloading " + ("and merging " if merge else "") + "model"
        for key in tqdm(keys, disable=not progressbar, desc=desc):
            target = model.get_submodule(key)
            parent, name = _parent(model, key)
            if isinstance(target, FourierFTLinear):
                if merge:
                    target.merge(safe_merge=safe_merge, adapter_names=adapter_names)
                setattr(parent, name, target.get_base_layer())
            else:
                setattr(parent, name, target._active_module())
        return model

    def merge_and_unload(self, progressbar: bool = False, safe_merge: bool = False,
                         adapter_names: Optional[list[str]] = None) -> nn.Module:
        """Merges the adapters into the base weights and returns the plain base model (FourierFT
        layers replaced by their base layers, modules_to_save by the active copy)."""
        return self._unload_and_optionally_merge(True, progressbar, safe_merge, adapter_names)

    def unload(self) -> nn.Module:
        """Returns the base model without merging (FourierFT layers replaced by their base layers)."""
        return self._unload_and_optionally_merge(False, False, False, None)

    # ---- parameters ------------------------------------------------------------------------------
    def get_nb_trainable_parameters(self) -> tuple[int, int]:
        trainable, total = 0, 0
        for _, param in self.named_parameters():
            total += param.numel()
            if param.requires_grad:
                trainable += param.numel()
        return trainable, total

    def print_trainable_parameters(self) -> None:
        trainable, total = self.get_nb_trainable_parameters()
        print(f"trainable params: {trainable:,d} || all params: {total:,d} || "
              f"trainable%: {100 * trainable / total:.4f}")

    # ---- checkpoints -----------------------------------------------------------------------------
    def _adapter_key_map(self, adapter_name: str, state_keys) -> dict[str, str]:
        """PEFT's checkpoint key (adapter name removed) -> this model's state-dict key, for every tensor
        saved with ``adapter_name``: the spectra, the modules_to_save copies, and the trained biases
        for ``bias != "none"``. Saving and loading both go through this one map."""
        if adapter_name not in self.peft_config:
            raise ValueError(f"Adapter {adapter_name} not found.")
        bias = self.peft_config[adapter_name].bias
        suffix = f".{SPECTRUM}.{adapter_name}"
        marker = f".modules_to_save.{adapter_name}."
        out: dict[str, str] = {}
        for key in state_keys:
            if key.endswith(suffix):
                out[key[: -len(adapter_name) - 1]] = key
            elif marker in key:
                out[key.replace(marker, ".")] = key
            elif bias == "all" and key.endswith(".bias") and ".modules_to_save." not in key \
                    and ".original_module." not in key:
                out[key] = key
        if bias == "fourier_only":
            for name, layer in self._fourierft_layers():
                if getattr(layer.base_layer, "bias", None) is not None:
                    key = f"base_model.model.{name}.base_layer.bias"
                    out[key] = key
        return out

    def get_adapter_state_dict(self, adapter_name: Optional[str] = None) -> dict[str, torch.Tensor]:
        """The tensors PEFT saves for ``adapter_name`` under PEFT's keys (adapter name removed):
        ``base_model.model.<path>.fourierft_spectrum``, modules_to_save as
        ``base_model.model.<path>.<param>``, and the trained biases for ``bias != "none"``."""
        state = self.state_dict()
        key_map = self._adapter_key_map(adapter_name or self.active_adapter, state.keys())
        return {checkpoint_key: state[model_key] for checkpoint_key, model_key in key_map.items()}

    def save_pretrained(self, save_directory: Union[str, os.PathLike], safe_serialization: bool = True,
                        selected_adapters: Optional[list[str]] = None, is_main_process: bool = True,
                        **kwargs: Any) -> None:
        """Writes each adapter in PEFT's layout: ``adapter_config.json`` + ``adapter_model.safetensors``
        in ``save_directory`` for ``default``, in ``save_directory/<name>`` for the others. Files
        are replaced atomically."""
        if os.path.isfile(save_directory):
            raise ValueError(f"Provided path ({save_directory}) should be a directory, not a file")
        if not safe_serialization:
            raise ValueError("fourierft writes safetensors only (safe_serialization=False is not supported)")
        selected = list(self.peft_config) if selected_adapters is None else list(selected_adapters)
        unknown = [n for n in selected if n not in self.peft_config]
        if unknown:
            raise ValueError(f"You passed an invalid `selected_adapters` arguments, current supported adapter "
                             f"names are {list(self.peft_config)} - got {unknown}.")
        if not is_main_process:
            return
        for adapter_name in selected:
            out_dir = os.fspath(save_directory)
            if adapter_name != "default":
                out_dir = os.path.join(out_dir, adapter_name)
            os.makedirs(out_dir, exist_ok=True)
            tensors = {k: v.detach().to("cpu").contiguous() for k, v in self.get_adapter_state_dict(adapter_name).items()}
            _C.save_safetensors(os.path.join(out_dir, SAFETENSORS_WEIGHTS_NAME), tensors, {"format": "pt"})
            config = copy.deepcopy(self.peft_config[adapter_name])
            config.inference_mode = True
            config.save_pretrained(out_dir)

    @classmethod
    def from_pretrained(cls, model: nn.Module, model_id: Union[str, os.PathLike], adapter_name: str = "default",
                        is_trainable: bool = False, config: Optional[FourierFTConfig] = None,
                        autocast_adapter_dtype: bool = True, **kwargs: Any) -> "FourierFTModel":
        """Loads an adapter directory written by PEFT or by us onto ``model``."""
        config = FourierFTConfig.from_pretrained(model_id) if config is None else _as_config(config)
        config.inference_mode = not is_trainable
        peft_model = cls(model, config, adapter_name, autocast_adapter_dtype=autocast_adapter_dtype)
        try:
            peft_model._load_adapter_weights(model_id, adapter_name)
        except BaseException:
            peft_model._inject_undo_all()
            raise
        return peft_model

    def _inject_undo_all(self) -> None:
        """Restores the user's model after a failed from_pretrained."""
        for name in list(self.peft_config):
            self.delete_adapter(name)
        self.unload()

    def load_adapter(self, model_id: Union[str, os.PathLike], adapter_name: str, is_trainable: bool = False,
                     **kwargs: Any) -> None:
        """Adds the adapter stored in ``model_id`` as ``adapter_name`` (not made active). A failed
        load leaves the model exactly as it was."""
        if adapter_name in self.peft_config:
            raise ValueError(f"Adapter with name {adapter_name!r} already exists.")
        config = FourierFTConfig.from_pretrained(model_id)
        config.inference_mode = not is_trainable
        self.add_adapter(adapter_name, config)
        try:
            self._load_adapter_weights(model_id, adapter_name)
        except BaseException:
            self.delete_adapter(adapter_name)
            raise
        self.set_adapter(self.active_adapter)

    def _load_adapter_weights(self, model_id: Union[str, os.PathLike], adapter_name: str) -> None:
        path = os.fspath(model_id)
        file = os.path.join(path, SAFETENSORS_WEIGHTS_NAME)
        if not os.path.isfile(file):
            if os.path.isfile(os.path.join(path, WEIGHTS_NAME)):
                raise ValueError(f"{path}: only {SAFETENSORS_WEIGHTS_NAME} is read; {WEIGHTS_NAME} (a pickle) is "
                                 "refused. Re-save it with peft's save_pretrained(safe_serialization=True).")
            raise ValueError(f"Can't find '{SAFETENSORS_WEIGHTS_NAME}' at '{path}'")
        tensors, _ = _C.load_safetensors(file)
        self.set_adapter_state_dict(tensors, adapter_name, source=file)

    def set_adapter_state_dict(self, tensors: dict[str, torch.Tensor], adapter_name: str,
                               source: str = "<state dict>") -> None:
        """Copies PEFT-keyed tensors into adapter ``adapter_name``. Every key, shape and dtype is
        checked first; nothing is written unless all are valid."""
        state = self.state_dict(keep_vars=True)
        model_keys = self._adapter_key_map(adapter_name, state.keys())
        missing = sorted(k for k in model_keys if k not in tensors)
        unexpected = sorted(k for k in tensors if k not in model_keys)
        if missing or unexpected:
            raise ValueError(
                f"{source}: the checkpoint does not fit adapter '{adapter_name}' of this model: "
                f"missing keys {missing[:8]}{' ...' if len(missing) > 8 else ''}, "
                f"unexpected keys {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}"
            )
        for key, tensor in tensors.items():
            target = state[model_keys[key]]
            if tuple(tensor.shape) != tuple(target.shape):
                raise ValueError(
                    f"{source}: '{key}' has shape {tuple(tensor.shape)} but adapter '{adapter_name}' of this model "
                    f"needs {tuple(target.shape)} (n_frequency or the base layer differs)"
                )
            if not (tensor.dtype.is_floating_point or tensor.dtype.is_complex):
                raise ValueError(f"{source}: '{key}' has dtype {tensor.dtype}, expected a floating-point tensor")
        with torch.no_grad():
            for key, tensor in tensors.items():
                state[model_keys[key]].copy_(tensor)


def get_peft_model(model: nn.Module, peft_config, adapter_name: str = "default", mixed: bool = False,
                   autocast_adapter_dtype: bool = True, **kwargs: Any) -> FourierFTModel:
    """Adds a FourierFT adapter to ``model`` (PEFT's ``get_peft_model`` for a ``FourierFTConfig``;
    a ``peft.FourierFTConfig`` is accepted too).

    >>> model = get_peft_model(base, FourierFTConfig(target_modules=["query", "value"]))
    """
    if mixed:
        raise ValueError("fourierft.get_peft_model: mixed adapter types are not supported")
    return FourierFTModel(model, peft_config, adapter_name, autocast_adapter_dtype=autocast_adapter_dtype)
