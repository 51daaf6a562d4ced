"""``FourierFTLinear``: PEFT's FourierFT layer on the matrix-free kernels.

The attribute names are PEFT's (``base_layer``, ``fourierft_spectrum``, ``fourierft_scaling``,
``indices``, ``merged_adapters``, ...), so state dicts and checkpoints are interchangeable with
``peft``. The math lives in the C++ ops; this file only decides which op to call.
"""
from __future__ import annotations

import copy
import warnings
from typing import Any, Optional

import torch
from torch import nn

from . import _C
from . import ops

try:  # GPT-2 style layers, only when transformers is installed
    from transformers.pytorch_utils import Conv1D as _Conv1D
except ImportError:  # pragma: no cover - transformers is a test dependency
    _Conv1D = None


def is_conv1d(module: nn.Module) -> bool:
    return _Conv1D is not None and isinstance(module, _Conv1D)


def transpose(weight: torch.Tensor, fan_in_fan_out: bool) -> torch.Tensor:
    return weight.T if fan_in_fan_out else weight


def check_adapters_to_merge(module, adapter_names: Optional[list[str]] = None) -> list[str]:
    """PEFT's rule: by default the active adapters; already merged ones are skipped with a warning."""
    if adapter_names is None:
        adapter_names = module.active_adapters
    if isinstance(adapter_names, str):
        raise ValueError(f"adapter_names should be a list of strings, got {adapter_names!r}.")
    if module.merged:
        merged = set(module.merged_adapters)
        adapter_names = [name for name in adapter_names if name not in merged]
        if adapter_names:
            warnings.warn(
                f"Already following adapters were merged {','.join(module.merged_adapters)}. "
                f"You are now additionally merging {','.join(adapter_names)}."
            )
        else:
            warnings.warn("All adapters are already merged, nothing to do.")
    return adapter_names


class FourierFTKernels:
    """The forward and ``get_delta_weight`` of a FourierFT layer on our kernels.

    Relies only on PEFT's attribute names, so it serves both our ``FourierFTLinear`` and PEFT's own
    layers (``fourierft.accelerate``)."""

    def get_delta_weight(self, adapter: str) -> torch.Tensor:
        """``delta_W`` (out_features x in_features) in the spectrum's dtype, as PEFT's."""
        spectrum = self.fourierft_spectrum[adapter]
        indices = self.indices[adapter].to(spectrum.device)
        return ops.delta_weight(spectrum, indices, self.out_features, self.in_features,
                                self.fourierft_scaling[adapter])

    def _fourierft_delta_cache(self) -> dict:
        cache = self.__dict__.get("_fourierft_cache")
        if cache is None:
            cache = self.__dict__["_fourierft_cache"] = {}
        return cache

    def _adapter_output(self, adapter: str, x: torch.Tensor) -> torch.Tensor:
        """``x @ delta_W^T`` for one adapter, by the path the cost model (shared with the C++ layers) picks.

        Matrix-free (FFTs of ``x``, nothing of size out x in) while training and under ``torch.compile``;
        with a frozen spectrum, one GEMM with a cached ``delta_W`` (keyed by the tensor and its version
        counter, so it never goes stale) where the cost model says that is cheaper (small layers, many
        tokens, very large ``n_frequency``)."""
        spectrum = self.fourierft_spectrum[adapter]
        indices = self.indices[adapter]
        if indices.device != spectrum.device:
            indices = self.indices[adapter] = indices.to(spectrum.device)
        scaling = self.fourierft_scaling[adapter]
        if x.dtype != spectrum.dtype:  # as PEFT: the adapter runs in the spectrum's dtype
            x = x.to(spectrum.dtype)
        # While the spectrum trains: always matrix-free (its gradients match PEFT's most closely, and
        # it wins for every n_frequency below ~10% of out x in, see docs/benchmarks.md).
        if torch.compiler.is_compiling() or (torch.is_grad_enabled() and spectrum.requires_grad):
            return ops.spectral_linear(x, spectrum, indices, self.out_features, self.in_features, scaling)
        cache = self._fourierft_delta_cache()
        key = (id(spectrum), spectrum._version, spectrum.device, spectrum.dtype)
        cached = cache.get(adapter)
        delta = cached[1] if cached is not None and cached[0] == key else None
        tokens = x.numel() // max(x.shape[-1], 1)
        if _C.spectral_path_is_cheaper(tokens, self.out_features, self.in_features, spectrum.numel(),
                                       delta is not None):
            return ops.spectral_linear(x, spectrum, indices, self.out_features, self.in_features, scaling)
        if delta is None:
            with torch.no_grad():
                delta = self.get_delta_weight(adapter)
            cache[adapter] = (key, delta)
        return nn.functional.linear(x, delta)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        previous_dtype = x.dtype
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            result = self.base_layer(x, *args, **kwargs)
        elif self.merged:
            result = self.base_layer(x, *args, **kwargs)
        else:
            result = self.base_layer(x, *args, **kwargs)
            for active_adapter in self.active_adapters:
                if active_adapter not in self.fourierft_spectrum.keys():
                    continue
                result = result + self._adapter_output(active_adapter, x)
        return result.to(previous_dtype)


class FourierFTLinear(FourierFTKernels, nn.Module):
    """A FourierFT adapter around an ``nn.Linear`` or a transformers ``Conv1D`` (PEFT's layer).

    ``y = base_layer(x) + sum over active adapters of x @ delta_W^T``, computed without forming
    ``delta_W`` while training. ``merge`` / ``unmerge`` add / subtract ``delta_W`` (transposed for
    ``fan_in_fan_out``) in the base weight.
    """

    adapter_layer_names = ("fourierft_spectrum",)
    other_param_names = ("fourierft_n_frequency", "fourierft_scaling", "fourierft_random_loc_seed", "indices")

    def __init__(self, base_layer: nn.Module, adapter_name: str, config, n_frequency: int = 1000, **kwargs) -> None:
        super().__init__()
        if isinstance(base_layer, nn.Linear):
            in_features, out_features = base_layer.in_features, base_layer.out_features
        elif is_conv1d(base_layer):
            in_features, out_features = base_layer.weight.shape
        else:
            raise TypeError(f"Unsupported layer type {type(base_layer)}")
        self.base_layer = base_layer
        self.in_features, self.out_features = in_features, out_features
        self.fourierft_n_frequency: dict[str, int] = {}
        self.fourierft_scaling: dict[str, float] = {}
        self.fourierft_spectrum = nn.ParameterDict({})
        self.indices: dict[str, torch.Tensor] = {}
        self.fourierft_random_loc_seed: dict[str, int] = {}
        self._disable_adapters = False
        self.merged_adapters: list[str] = []
        self.kwargs = kwargs
        self.fan_in_fan_out = config.fan_in_fan_out
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, n_frequency, config=config)

    # ---- PEFT's BaseTunerLayer surface --------------------------------------------------------
    @property
    def weight(self) -> torch.Tensor:
        return self.base_layer.weight

    @property
    def bias(self) -> Optional[torch.Tensor]:
        return self.base_layer.bias

    @property
    def merged(self) -> bool:
        return bool(self.merged_adapters)

    @property
    def disable_adapters(self) -> bool:
        return self._disable_adapters

    @property
    def active_adapter(self):
        return self._active_adapter

    @property
    def active_adapters(self) -> list[str]:
        return [self._active_adapter] if isinstance(self._active_adapter, str) else list(self._active_adapter)

    def get_base_layer(self) -> nn.Module:
        return self.base_layer

    def update_layer(self, adapter_name: str, n_frequency: int, config, **kwargs) -> None:
        """Adds (or replaces) adapter ``adapter_name`` with ``n_frequency`` coefficients."""
        if n_frequency <= 0:
            raise ValueError(f"`n_frequency` should be a positive integer value but the value passed is {n_frequency}")
        if n_frequency > self.in_features * self.out_features:
            raise ValueError(
                f"`n_frequency` should be less than or equal to the product of the input and output dimensions "
                f"but the value passed is {n_frequency} and the product is {self.in_features * self.out_features}"
            )
        # Same draws as PEFT: the entries from their own seeded generator, then randn(n) from the
        # global generator, so a seeded run gives PEFT's spectra.
        indices = ops.entry_indices(self.out_features, self.in_features, n_frequency, config.random_loc_seed)
        spectrum = torch.randn(n_frequency)
        if config.init_weights:
            spectrum.zero_()
        weight = self.base_layer.weight
        dtype = weight.dtype if (weight.dtype.is_floating_point or weight.dtype.is_complex) else None
        self.fourierft_n_frequency[adapter_name] = n_frequency
        self.fourierft_random_loc_seed[adapter_name] = config.random_loc_seed
        self.indices[adapter_name] = indices
        self.fourierft_scaling[adapter_name] = config.scaling
        self.fourierft_spectrum[adapter_name] = nn.Parameter(spectrum.to(weight.device, dtype=dtype))
        self.set_adapter(self.active_adapters, inference_mode=config.inference_mode)

    @torch.no_grad()
    def reset_fourier_parameters(self, adapter_name: str) -> None:
        if adapter_name in self.fourierft_spectrum.keys():
            nn.init.zeros_(self.fourierft_spectrum[adapter_name])

    def set_adapter(self, adapter_names, inference_mode: bool = False) -> None:
        """Makes ``adapter_names`` active (and trainable unless ``inference_mode``)."""
        if isinstance(adapter_names, str):
            adapter_names = [adapter_names]
        for key, spectrum in self.fourierft_spectrum.items():
            spectrum.requires_grad_(key in adapter_names and not inference_mode)
        self._active_adapter = adapter_names[0] if len(adapter_names) == 1 else list(adapter_names)

    def enable_adapters(self, enabled: bool) -> None:
        if enabled:
            self.set_adapter(self.active_adapters)
            self._disable_adapters = False
        else:
            for spectrum in self.fourierft_spectrum.values():
                spectrum.requires_grad_(False)
            self._disable_adapters = True

    def delete_adapter(self, adapter_name: str) -> None:
        for attr in self.adapter_layer_names + self.other_param_names:
            container = getattr(self, attr)
            if adapter_name in container:
                del container[adapter_name]
        self._fourierft_delta_cache().pop(adapter_name, None)
        if adapter_name in self.active_adapters:
            remaining = [a for a in self.active_adapters if a != adapter_name]
            if not remaining:
                remaining = list(self.fourierft_spectrum.keys())[:1]
            if remaining:
                self.set_adapter(remaining)
            else:
                self._active_adapter = []

    # ---- merging --------------------------------------------------------------------------------
    def _weight_delta(self, adapter_name: str) -> torch.Tensor:
        """``delta_W`` in the base weight's layout (transposed for ``fan_in_fan_out``) and dtype."""
        delta = transpose(self.get_delta_weight(adapter_name), self.fan_in_fan_out)
        return delta.to(self.base_layer.weight.dtype)

    def merged_weight(self, adapter_name: str) -> torch.Tensor:
        """``W0 + delta_W`` (in the base weight's layout and dtype), without changing anything."""
        return self.base_layer.weight.detach() + self._weight_delta(adapter_name)

    def merge(self, safe_merge: bool = False, adapter_names: Optional[list[str]] = None) -> None:
        """Adds the adapters' ``delta_W`` into the base weight (PEFT's semantics). With
        ``safe_merge`` the sum is checked for NaN/inf first and nothing changes if it fails."""
        adapter_names = check_adapters_to_merge(self, adapter_names)
        if not adapter_names:
            return
        weight = self.base_layer.weight
        with torch.no_grad():
            for adapter in adapter_names:
                if adapter not in self.fourierft_spectrum.keys():
                    continue
                if safe_merge:
                    merged = self.merged_weight(adapter)
                    if not torch.isfinite(merged).all():
                        raise ValueError(
                            f"NaNs detected in the merged weights. The adapter {adapter} seems to be broken"
                        )
                    weight.data = merged
                else:
                    weight.data += self._weight_delta(adapter)
                self.merged_adapters.append(adapter)

    def unmerge(self) -> None:
        """Subtracts every merged adapter's ``delta_W`` again (last merged first)."""
        if not self.merged:
            warnings.warn("Already unmerged. Nothing to do.")
            return
        weight = self.base_layer.weight
        with torch.no_grad():
            while self.merged_adapters:
                adapter = self.merged_adapters.pop()
                if adapter in self.fourierft_spectrum.keys():
                    weight.data -= self._weight_delta(adapter)

    def __repr__(self) -> str:
        return "fourierft." + super().__repr__()


class ModulesToSaveWrapper(nn.Module):
    """PEFT's wrapper for ``modules_to_save``: the original module plus one trainable copy per
    adapter (state-dict names ``original_module.*`` and ``modules_to_save.<adapter>.*``)."""

    def __init__(self, module_to_save: nn.Module, adapter_name: str):
        super().__init__()
        self.original_module = module_to_save
        self.modules_to_save = nn.ModuleDict({})
        self._active_adapter: list[str] = []
        self._disable_adapters = False
        self.update(adapter_name)

    @property
    def active_adapters(self) -> list[str]:
        return list(self._active_adapter)

    @property
    def active_adapter(self):
        return self._active_adapter[0] if len(self._active_adapter) == 1 else list(self._active_adapter)

    @property
    def disable_adapters(self) -> bool:
        return self._disable_adapters

    @property
    def weight(self):
        module = self._active_module()
        return module.weight

    def _active_module(self) -> nn.Module:
        if self._disable_adapters or not self._active_adapter or self._active_adapter[0] not in self.modules_to_save:
            return self.original_module
        return self.modules_to_save[self._active_adapter[0]]

    def update(self, adapter_name: str) -> None:
        copy_module = copy.deepcopy(self.original_module)
        copy_module.requires_grad_(True)
        self.modules_to_save[adapter_name] = copy_module

    def set_adapter(self, adapter_names, inference_mode: bool = False) -> None:
        if isinstance(adapter_names, str):
            adapter_names = [adapter_names]
        if len(adapter_names) > 1:
            raise ValueError(f"Attempted to set multiple ({adapter_names}) adapters at once for modules_to_save.")
        self.original_module.requires_grad_(False)
        for name, module in self.modules_to_save.items():
            module.requires_grad_(name in adapter_names and not inference_mode)
        self._active_adapter = list(adapter_names)

    def enable_adapters(self, enabled: bool) -> None:
        self._disable_adapters = not enabled
        if enabled:
            self.set_adapter(self._active_adapter)
        else:
            for module in self.modules_to_save.values():
                module.requires_grad_(False)

    def delete_adapter(self, adapter_name: str) -> None:
        if adapter_name in self.modules_to_save:
            del self.modules_to_save[adapter_name]
        self._active_adapter = [a for a in self._active_adapter if a != adapter_name]

    def forward(self, *args, **kwargs):
        return self._active_module()(*args, **kwargs)
