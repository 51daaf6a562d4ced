"""``FourierFTLinear``: PEFT's own FourierFT layer, running on fourierft's kernels.

The class is a subclass of ``peft.tuners.fourierft.FourierFTLinear``: attribute names, adapters,
``update_layer``, ``set_adapter``, ``merge``/``unmerge``, ``delete_adapter`` and every ``isinstance``
check are PEFT's. Only the math is ours: ``forward`` and ``get_delta_weight`` call the matrix-free
``torch.ops.fourierft.*`` kernels instead of building a dense ``out x in`` complex spectrum per call.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
from peft.tuners.fourierft.layer import FourierFTLinear as PeftFourierFTLinear
from torch import nn
from torch.nn.modules import module as _module

from . import _C
from . import ops
from . import quantized
from peft.tuners.tuners_utils import check_adapters_to_merge

__all__ = ["FourierFTLinear", "FourierFTKernels", "BASE_ADAPTER", "clear_caches", "mixed_adapter_output",
           "share_entry_indices"]

#: The name that selects "no adapter" for a row of a mixed-adapter batch (PEFT's LoRA uses the same).
BASE_ADAPTER = "__base__"

_CACHE = "_fourierft_cache"


@torch._dynamo.assume_constant_result
def _fused_when_compiled(device, dtype, spectrum_dtype, weight_dtype, out_features, in_features, n_frequency,
                         same_device) -> bool:
    """plan_layer_call's fused-or-not answer for a compiled graph (no caches there; the tokens do not change it):
    constant for the graph, so torch.compile traces it without a break."""
    return _C.plan_layer_call(device, dtype, spectrum_dtype, 1, out_features, in_features, n_frequency, True, True,
                              True, weight_dtype, same_device, False, False) == "fused"


def _caching_allowed() -> bool:
    """Inference caches are on (``fourierft.ops.inference_cache``) and this is not one rank of several: under FSDP a
    layer's parameters are shards or temporarily gathered copies, and a weight-sized cache built from them would keep
    an unsharded copy of every adapted layer on every rank. Multi-process jobs recompute instead."""
    if not _C.inference_cache():
        return False
    dist = torch.distributed
    return not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1)


def clear_caches(model: nn.Module) -> nn.Module:
    """Drops the inference caches (``delta_W``, ``W + delta_W``) of every fourierft layer in ``model``; they are
    rebuilt on demand. ``model.train()`` does it too. Returns ``model``."""
    for module in model.modules():
        if isinstance(module, FourierFTKernels):
            module.clear_caches()
    return model


def _storage_id(t: torch.Tensor) -> tuple:
    """The storage a tensor's values live in and where in it: changes when ``p.data = ...`` swaps them."""
    return t.untyped_storage()._cdata, t.storage_offset()


class FourierFTKernels:
    """The forward and ``get_delta_weight`` of a FourierFT layer on our kernels.

    Relies only on PEFT's attribute names (``fourierft_spectrum``, ``indices``, ``fourierft_scaling``,
    ``in_features``, ``out_features``, ``base_layer``), so it is the same code for every layer it is
    mixed into."""

    def get_delta_weight(self, adapter: str) -> torch.Tensor:
        """``delta_W`` (out_features x in_features) in the spectrum's dtype, equal to PEFT's."""
        spectrum = self.fourierft_spectrum[adapter]
        indices = self.indices[adapter].to(spectrum.device)
        return ops.delta_weight(spectrum, indices, self.out_features, self.in_features,
                                self.fourierft_scaling[adapter])

    # ---- caches of derived weights (frozen spectrum) ---------------------------------------------
    # An entry is keyed on the spectrum tensor itself, its storage, offset and version counter: optimizer steps,
    # ``load_state_dict``/``load_adapter``, ``hotswap_adapter`` and any in-place write (``no_grad`` included) bump the
    # version; ``p.data = ...`` swaps the storage; a new Parameter is another tensor. Reading the key needs no device
    # synchronisation, so a GPU forward never waits on it. What it cannot see: writes through a ``.data`` alias
    # (``p.data.mul_()``, PEFT's merge into W: ``.data`` has a version counter of its own) and a storage rewritten in
    # place under the same offset by ``torch.nn.utils.vector_to_parameters`` from the same vector. On the CPU, where
    # comparing is free of synchronisation, the key also holds a copy of the ``n`` values and compares them, which
    # sees those too. A tensor made under ``torch.inference_mode()`` is not reused outside it (autograd cannot save
    # an inference tensor). Each entry is replaced by one dict assignment: a concurrent reader sees the old or the
    # new entry. ``clear_caches`` drops every entry.
    def _spectrum_key(self, adapter: str, spectrum: torch.Tensor) -> tuple:
        values = spectrum.detach().clone() if spectrum.device.type == "cpu" else None
        return (spectrum, _storage_id(spectrum), spectrum._version, values, self.indices[adapter],
                self.fourierft_scaling[adapter])

    def _key_matches(self, adapter: str, spectrum: torch.Tensor, key: tuple, cached: torch.Tensor) -> bool:
        tensor, storage, version, values, indices, scaling = key
        return (tensor is spectrum and storage == _storage_id(spectrum) and version == spectrum._version
                and indices is self.indices[adapter] and scaling == self.fourierft_scaling[adapter]
                and not (cached.is_inference() and not torch.is_inference_mode_enabled())
                and (values is None or torch.equal(values, spectrum)))

    def clear_caches(self) -> None:
        """Drops every cached ``delta_W`` and ``W + delta_W`` of this layer (they are rebuilt on demand)."""
        self.__dict__.pop(_CACHE, None)

    def train(self, mode: bool = True):
        """``nn.Module.train``; going back to training drops the inference caches (a training step uses none, and
        they would hold a weight-sized tensor per layer through it)."""
        if mode:
            self.clear_caches()
        return super().train(mode)

    @staticmethod
    def _delta_cache_key(adapter: str, dtype: Optional[torch.dtype]):
        """``delta_W`` in the spectrum's dtype (the adapter path) under the adapter's name; in a model's dtype (GPU
        inference beside the base GEMM) apart from it."""
        return adapter if dtype is None else (adapter, "delta", dtype)

    def _cached_delta(self, adapter: str, spectrum: torch.Tensor,
                      dtype: Optional[torch.dtype] = None) -> Optional[torch.Tensor]:
        """The cached ``delta_W`` of ``adapter`` (in ``dtype``, default the spectrum's) if it was computed from
        exactly the values the spectrum holds now, else None."""
        entry = self.__dict__.get(_CACHE, {}).get(self._delta_cache_key(adapter, dtype))
        if entry is None:
            return None
        key, delta = entry
        return delta if self._key_matches(adapter, spectrum, key, delta) else None

    def _store_delta(self, adapter: str, spectrum: torch.Tensor, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        with torch.no_grad():
            delta = self.get_delta_weight(adapter)
            if dtype is not None:
                delta = delta.to(dtype)
        self.__dict__.setdefault(_CACHE, {})[self._delta_cache_key(adapter, dtype)] = (
            self._spectrum_key(adapter, spectrum), delta)
        return delta

    def _merged_weight(self, adapter: str, spectrum: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """``W + delta_W`` for inference with a frozen spectrum and base weight, cached.

        Keyed like the delta_W cache plus a 64-bit fingerprint of the base weight's values, recomputed
        per call (one read of W, 0.2-0.35 ns per entry): PEFT's ``merge``/``unmerge`` and
        ``weight.data.mul_()`` change W behind its version counter. Costs one weight-sized tensor per
        layer while cached."""
        cache_key = (adapter, "weight")
        stamp = _C.fingerprint(weight)
        entry = self.__dict__.get(_CACHE, {}).get(cache_key)
        if entry is not None:
            key, w_stamp, merged = entry
            if (w_stamp == stamp and merged.dtype == weight.dtype and merged.device == weight.device
                    and self._key_matches(adapter, spectrum, key, merged)):
                return merged
        with torch.no_grad():
            merged = self.get_delta_weight(adapter).to(weight.dtype).add_(weight)
        self.__dict__.setdefault(_CACHE, {})[cache_key] = (self._spectrum_key(adapter, spectrum), stamp, merged)
        return merged

    def _model_delta(self, adapter: str, spectrum: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """``delta_W`` in the model's ``dtype`` for inference on a GPU, cached: the layer then costs one more GEMM
        than the base, with nothing recomputed per call."""
        delta = self._cached_delta(adapter, spectrum, dtype)
        return delta if delta is not None else self._store_delta(adapter, spectrum, dtype)

    def __getstate__(self):
        # torch.save(model) / pickle / deepcopy: the cache is derived data, never serialised.
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__
        if _CACHE in state:
            state = dict(state)
            del state[_CACHE]
        return state

    # ---- forward ---------------------------------------------------------------------------------
    def _spectral_inputs(self, adapter: str):
        spectrum = self.fourierft_spectrum[adapter]
        indices = self.indices[adapter]
        if indices.device != spectrum.device:
            indices = self.indices[adapter] = indices.to(spectrum.device)
        return spectrum, indices, self.fourierft_scaling[adapter]

    def _adapter_output(self, adapter: str, x: torch.Tensor) -> torch.Tensor:
        """``x @ delta_W^T`` for one adapter (``x`` already in the spectrum's dtype), by the path the
        cost model shared with the C++ layers picks.

        Matrix-free (FFTs of ``x``, nothing of size out x in) while the spectrum trains and under
        ``torch.compile``; with a frozen spectrum, one GEMM with a cached ``delta_W`` where the cost
        model says that is cheaper (small layers, many tokens, very large ``n_frequency``)."""
        spectrum, indices, scaling = self._spectral_inputs(adapter)
        if torch.compiler.is_compiling():
            return ops.spectral_linear(x, spectrum, indices, self.out_features, self.in_features, scaling)
        training = torch.is_grad_enabled() and spectrum.requires_grad
        # no cache over a quantized base: delta_W would be 2-8x the quantized weight it serves
        caching = not training and _caching_allowed() and quantized.quantization_of(self.get_base_layer()) is None
        delta = self._cached_delta(adapter, spectrum) if caching else None
        route = _C.plan_layer_call(x.device, x.dtype, spectrum.dtype, x.numel() // max(x.shape[-1], 1),
                                   self.out_features, self.in_features, spectrum.numel(), training, False, False,
                                   spectrum.dtype, x.device == spectrum.device, delta is not None, caching)
        if route == "spectral":
            return ops.spectral_linear(x, spectrum, indices, self.out_features, self.in_features, scaling)
        if training:  # delta_W for this call, differentiable (its backward: an rfft2 of g^T x)
            return nn.functional.linear(x, self.get_delta_weight(adapter))
        if delta is None:
            delta = self._store_delta(adapter, spectrum) if caching else self.get_delta_weight(adapter)
        return nn.functional.linear(x, delta)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        previous_dtype = x.dtype
        adapter_names = kwargs.pop("adapter_names", None)
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            result = self.base_layer(x, *args, **kwargs)
        elif adapter_names is not None:
            result = self._mixed_batch_forward(x, *args, adapter_names=adapter_names, **kwargs)
        elif self.merged:
            result = self.base_layer(x, *args, **kwargs)
        elif (fused := self._fused_candidate(x, args, kwargs)) is not None and \
                (result := self._fused_forward(x, *fused)) is not None:
            return result
        else:
            result = self.base_layer(x, *args, **kwargs)
            for active_adapter in self.active_adapters:
                if active_adapter not in self.fourierft_spectrum.keys():
                    continue
                spectrum = self.fourierft_spectrum[active_adapter]
                x = x.to(spectrum.dtype)  # as PEFT: the adapter runs in the spectrum's dtype
                result = result + self._adapter_output(active_adapter, x)
        return result.to(previous_dtype)

    def _fused_candidate(self, x: torch.Tensor, args, kwargs) -> Optional[tuple]:
        """``(adapter, spectrum, weight, bias)`` when the layer's structure allows ``base_layer(x) + adapter(x)`` as one
        ``ops.linear``: a plain ``nn.Linear`` base (weight and bias registered parameters) without hooks or extra
        arguments, and one active adapter in this layer; else None. Whether the dtypes and devices allow it too is
        the plan's to say (``_fused_forward``). Reads the modules' parameter tables directly: this runs on every
        call, and nn.Module attribute lookups cost about a microsecond each."""
        if args or kwargs:
            return None
        base = self._modules.get("base_layer")
        if (type(base) is not nn.Linear or base._forward_hooks or base._forward_pre_hooks
                or _module._global_forward_hooks or _module._global_forward_pre_hooks):
            return None
        spectra = self._modules.get("fourierft_spectrum")
        if not isinstance(spectra, nn.ParameterDict):
            return None
        active = self.active_adapter
        found = spectrum = None
        for name in (active,) if isinstance(active, str) else active:
            candidate = spectra._parameters.get(name)
            if candidate is None:
                continue
            if found is not None:
                return None
            found, spectrum = name, candidate
        weight = base._parameters.get("weight")
        if found is None or weight is None:
            return None
        return found, spectrum, weight, base._parameters.get("bias")

    def _fused_forward(self, x: torch.Tensor, adapter: str, spectrum: torch.Tensor, weight: torch.Tensor,
                       bias: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        """The whole layer as the plan of the call (``fourierft._C.plan_layer_call``, the C++ layers' too) says:
        one ``ops.linear`` (x @ (W + delta_W)^T + b by the cost model's routes), or inference with a cached
        ``W + delta_W`` (CPU) or ``delta_W`` in the model's dtype beside the base GEMM (GPU), so that nothing of size
        out x in is recomputed per call; None where the plan is PEFT's per-adapter composition (dtypes or devices
        the op does not fuse)."""
        if torch.compiler.is_compiling():  # no caches in a compiled graph; the op decides its routes at run time
            if not _fused_when_compiled(x.device, x.dtype, spectrum.dtype, weight.dtype, self.out_features,
                                        self.in_features, spectrum.numel(),
                                        x.device == spectrum.device == weight.device):
                return None
            plan = "fused"
        else:
            plan = self._plan(x, spectrum, weight)
        if plan == "fused+weight":  # one GEMM with the cached W + delta_W (CPU, float32/float64)
            return nn.functional.linear(x, self._merged_weight(adapter, spectrum, weight), bias)
        if plan == "fused+delta":  # the base GEMM and one with delta_W cached in the model's dtype (GPUs)
            delta = self._model_delta(adapter, spectrum, x.dtype)
            return nn.functional.linear(x, weight, bias).add_(nn.functional.linear(x, delta))
        if plan != "fused":
            return None
        indices = self.indices[adapter]
        if indices.device != spectrum.device:
            indices = self.indices[adapter] = indices.to(spectrum.device)
        return ops.linear(x, weight, bias, spectrum, indices, self.out_features, self.in_features,
                          self.fourierft_scaling[adapter])

    def _plan(self, x: torch.Tensor, spectrum: torch.Tensor, weight: torch.Tensor) -> str:
        training = torch.is_grad_enabled() and (spectrum.requires_grad or weight.requires_grad)
        may_cache = not training and _caching_allowed()
        return _C.plan_layer_call(x.device, x.dtype, spectrum.dtype, x.numel() // max(x.shape[-1], 1),
                                  self.out_features, self.in_features, spectrum.numel(), training, True, True,
                                  weight.dtype, x.device == spectrum.device == weight.device, False, may_cache)

    def _mixed_batch_forward(self, x: torch.Tensor, *args: Any, adapter_names: list[str], **kwargs: Any):
        """Each row ``i`` of the batch through adapter ``adapter_names[i]`` (``"__base__"``: none)."""
        result = self.base_layer(x, *args, **kwargs)
        return result + mixed_adapter_output(self, x, adapter_names).to(result.dtype)


class FourierFTLinear(FourierFTKernels, PeftFourierFTLinear):
    """PEFT's ``FourierFTLinear`` (around an ``nn.Linear`` or a transformers ``Conv1D``) on
    fourierft's kernels: ``y = base_layer(x) + sum over active adapters of x @ delta_W^T``, computed
    without forming ``delta_W`` while training; ``merge`` adds the same ``delta_W`` PEFT would."""

    def update_layer(self, adapter_name, n_frequency, config, **kwargs):
        """PEFT's ``update_layer``; then adapters with the same seed and ``n_frequency`` share one entry-index
        tensor, so a resident adapter costs only its spectrum."""
        super().update_layer(adapter_name, n_frequency, config=config, **kwargs)
        share_entry_indices(self, adapter_name)

    def merge(self, safe_merge: bool = False, adapter_names: Optional[list[str]] = None) -> None:
        """PEFT's ``merge``; over a bitsandbytes-quantized base (which PEFT cannot merge into), the weight is
        dequantized, ``delta_W`` of every adapter added in float32 and the sum quantized again with the layer's own
        settings (``fourierft.quantized``)."""
        base = self.get_base_layer()
        if quantized.quantization_of(base) is None:
            return super().merge(safe_merge=safe_merge, adapter_names=adapter_names)
        names = [a for a in check_adapters_to_merge(self, adapter_names) if a in self.fourierft_spectrum]
        if not names:
            return None
        with torch.no_grad():
            quantized.merge_into(base, [self.get_delta_weight(a) for a in names],
                                 f"{type(base).__name__} (adapters {', '.join(names)})", safe_merge)
        self.merged_adapters.extend(names)
        self.clear_caches()
        return None

    def unmerge(self) -> None:
        """PEFT's ``unmerge``; over a quantized base, the merged ``delta_W`` are subtracted and the weight quantized
        again (with a warning: not bit-identical to the weight before the merge)."""
        base = self.get_base_layer()
        if quantized.quantization_of(base) is None or not self.merged:
            return super().unmerge()
        names = [a for a in reversed(self.merged_adapters) if a in self.fourierft_spectrum]
        with torch.no_grad():
            quantized.unmerge_from(base, [self.get_delta_weight(a) for a in names])
        self.merged_adapters.clear()
        self.clear_caches()
        return None


def mixed_adapter_output(layer, x: torch.Tensor, adapter_names) -> torch.Tensor:
    """``x_i @ delta_W(adapter_names[i])^T`` per row ``i`` of the batch (zero for ``"__base__"`` rows and
    adapters this layer does not hold). Rows are grouped by adapter, so every row's FFT runs once."""
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
        if len(rows) == x.shape[0]:
            out = layer._adapter_output(name, x.to(spectrum.dtype)).to(out.dtype)
            continue
        index = torch.tensor(rows, device=x.device)
        part = layer._adapter_output(name, x.index_select(0, index).to(spectrum.dtype))
        out.index_copy_(0, index, part.to(out.dtype))
    return out


def share_entry_indices(layer, adapter_name: str) -> None:
    """Makes ``adapter_name`` use the entry-index tensor of another adapter of ``layer`` drawn with the same
    ``random_loc_seed`` and ``n_frequency`` (equal values: PEFT's draw depends on nothing else)."""
    mine = layer.indices[adapter_name]
    key = (layer.fourierft_random_loc_seed[adapter_name], layer.fourierft_n_frequency[adapter_name])
    for other, indices in layer.indices.items():
        if other != adapter_name and (layer.fourierft_random_loc_seed[other],
                                      layer.fourierft_n_frequency[other]) == key \
                and indices.device == mine.device and torch.equal(indices, mine):
            layer.indices[adapter_name] = indices
            return
