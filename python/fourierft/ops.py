"""The FourierFT kernels, as ``torch.ops.fourierft.*`` (registered by the C++ library).

Thin wrappers with the math in their docstrings; the implementation (CPU kernels, autograd, fake
tensors for ``torch.compile``) lives in ``src/ops/`` and is shared with the C++ API.

Notation: base weight ``W0`` is ``out_features x in_features`` (d1 x d2), ``c`` the ``n`` learnable
coefficients (PEFT's ``fourierft_spectrum``), ``E`` the 2 x n entry matrix, ``alpha`` the scaling.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from . import _C  # noqa: F401  (loads libfourierft.so, which registers the ops)

__all__ = ["entry_indices", "delta_weight", "spectral_linear", "linear", "linear_path", "linear_routes",
           "linear_route_estimates", "inference_cache", "keep_delta", "generic_kernels"]


@contextlib.contextmanager
def _scoped(get, set_, value) -> Iterator[None]:
    """A process-wide setting of the C++ library, set inside the block and restored afterwards."""
    before = get()
    set_(value)
    try:
        yield
    finally:
        set_(before)


def entry_indices(out_features: int, in_features: int, n_frequency: int, random_loc_seed: int) -> torch.Tensor:
    """The entry matrix ``E`` (int64, shape ``[2, n_frequency]``), bit-identical to PEFT's:
    ``p = torch.randperm(d1 * d2, generator=torch.Generator().manual_seed(seed))[:n]``,
    ``E = stack([p // d2, p % d2])``."""
    return torch.ops.fourierft.entry_indices(out_features, in_features, n_frequency, random_loc_seed)


def delta_weight(
    spectrum: torch.Tensor, indices: torch.Tensor, out_features: int, in_features: int, scaling: float
) -> torch.Tensor:
    """``delta_W = Re(ifft2(F)) * alpha`` with ``F = zeros(d1, d2)``, ``F[E0, E1] = c``.

    Equal to PEFT's ``FourierFTLayer.get_delta_weight``; computed as the real inverse FFT of the
    Hermitian part of ``F`` in float32 (float64 for a float64 spectrum), returned in the spectrum's
    dtype. Differentiable with respect to ``spectrum``."""
    return torch.ops.fourierft.delta_weight(spectrum, indices, out_features, in_features, float(scaling))


def spectral_linear(
    x: torch.Tensor,
    spectrum: torch.Tensor,
    indices: torch.Tensor,
    out_features: int,
    in_features: int,
    scaling: float,
) -> torch.Tensor:
    """``x @ delta_W^T`` without materialising ``delta_W``:
    ``y = Re(ifft(Z)) * alpha / d2`` with ``Z[E0_k] += c_k * conj(fft(x))[E1_k]``.

    ``x`` has any leading shape and last dimension ``in_features``; float16/bfloat16 are computed
    in float32 and returned in ``x``'s dtype. Differentiable with respect to ``x`` and ``spectrum``;
    nothing of size ``d1 x d2`` is allocated, forward or backward."""
    return torch.ops.fourierft.spectral_linear(x, spectrum, indices, out_features, in_features, float(scaling))


def linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    spectrum: torch.Tensor,
    indices: torch.Tensor,
    out_features: int,
    in_features: int,
    scaling: float,
) -> torch.Tensor:
    """The whole adapted layer: ``x @ (weight + delta_W)^T + bias``, equal to PEFT's FourierFT ``Linear``
    around an ``nn.Linear`` with one active adapter (``base_layer(x) + x @ delta_W^T``).

    Takes the path the cost model picks (see :func:`linear_path`): the spectral pipeline writing
    ``x @ delta_W^T + bias`` with the GEMM on ``weight`` accumulating into it, or one GEMM with
    ``weight + delta_W`` (built for the call, then freed). The backward chooses the same way for the
    input gradient. Saves ``x`` for the spectrum's (and a trainable weight's) gradient, nothing else.
    ``weight`` and ``bias`` have ``x``'s dtype; with a spectrum of another dtype the result is PEFT's
    composition (base in ``x``'s dtype plus the adapter in the spectrum's, promoted).
    Differentiable with respect to ``x``, ``weight``, ``bias`` and ``spectrum``."""
    return torch.ops.fourierft.linear(x, weight, bias, spectrum, indices, out_features, in_features, float(scaling))


def linear_path(path: str) -> contextlib.AbstractContextManager:
    """Inside the block, :func:`linear` (and the layers' adapters) always take ``path``: ``"spectral"``
    (matrix-free: the CPU's blocked pipeline, elsewhere row FFTs around sparse products; the spectrum's gradient by
    correlating the rows' spectra), ``"dense"`` (``delta_W`` built for the call and applied by GEMMs: one with
    ``W + delta_W`` for float32/float64 models, a second one in the model's dtype beside the base GEMM for
    bfloat16/float16; the spectrum's gradient from ``g^T x``), ``"folded"`` (CPU:
    the coefficients folded onto two real half-spectrum matrices and applied by two GEMMs between row FFTs, the route
    for large ``n``; elsewhere ``"dense"``) or ``"auto"`` (the cost model, per call, per gradient and per device;
    the default). Process-wide while active, restored afterwards; for benchmarks and tests, which hold every route to
    PEFT.

    >>> with fourierft.ops.linear_path("dense"):
    ...     y = fourierft.ops.linear(x, weight, bias, spectrum, indices, out_features, in_features, scaling)
    """
    return _scoped(_C.linear_path, _C.set_linear_path, path)


def linear_routes(device, dtype: torch.dtype, tokens: int, out_features: int, in_features: int, n_frequency: int,
                  training: bool = True) -> dict:
    """The routes :func:`linear` takes for such a call on ``device`` (``"cpu"``, ``"cuda"``, a ``torch.device``), as
    the one cost model (``src/ops/cost_model.cpp``) picks them, or as :func:`linear_path` forces them:
    ``{"forward": ..., "grad_x": ..., "grad_spectrum": ...}`` (the gradients only with ``training``), each
    ``"spectral"``, ``"dense"`` or ``"folded"`` (CPU). Needs no tensor and no GPU: for planning and tests.

    >>> fourierft.ops.linear_routes("cuda", torch.bfloat16, 16384, 3072, 3072, 1000)
    {'forward': 'dense', 'grad_x': 'dense', 'grad_spectrum': 'dense'}
    """
    return _C.linear_routes(torch.device(device), dtype, tokens, out_features, in_features, n_frequency, training)


def linear_route_estimates(device, dtype: torch.dtype, tokens: int, out_features: int, in_features: int,
                           n_frequency: int, training: bool = True) -> dict:
    """The numbers behind :func:`linear_routes`: the cost model's estimate, in nanoseconds per call, of what each
    candidate route adds to the layer's own base GEMMs, per pass: ``{"forward": {"spectral": ns, "dense": ns, ...},
    "grad_x": ..., "grad_spectrum": ...}`` (``"folded"`` on the CPU only; the CPU's spectrum gradient compares
    ``"spectral"`` with ``"folded"``). :func:`linear_routes` takes the smallest of each pass (ties go to
    ``"spectral"`` on the CPU). Estimates from the constants in ``src/ops/cost_model.cpp`` (the CPU's fitted on a
    2-core x86 VM, the GPU's from rates measured on an H200 where measured), not measurements; :func:`linear_path`
    does not change them. ``scripts/routes.py`` tables them for the docs.

    >>> est = fourierft.ops.linear_route_estimates("cuda", torch.bfloat16, 2048, 3072, 3072, 1000)
    >>> min(est["forward"], key=est["forward"].get)
    'dense'
    """
    return _C.linear_route_estimates(torch.device(device), dtype, tokens, out_features, in_features, n_frequency,
                                     training)


def inference_cache(enabled: bool = True) -> contextlib.AbstractContextManager:
    """Inside the block, adapted layers run inference with (``True``, the default everywhere) or without their
    caches: with a frozen spectrum a layer keeps ``W + delta_W`` (CPU, float32/float64, where the cost model says it
    pays) or ``delta_W`` in the model's dtype (GPUs), one weight-sized tensor per adapted layer, so that nothing of
    size ``out x in`` is recomputed per call. Off, every call recomputes (memory-bound deployments). Process-wide
    while active, restored afterwards; ``fourierft._C.set_inference_cache(False)`` turns it off for good.

    >>> with fourierft.ops.inference_cache(False):
    ...     logits = model(**batch).logits
    """
    return _scoped(_C.inference_cache, _C.set_inference_cache, enabled)


def keep_delta(enabled: bool = True) -> contextlib.AbstractContextManager:
    """Inside the block, training calls of :func:`linear` that take the dense route on a GPU (the cost model's pick
    for large token counts) keep the dense operand their forward built (``delta_W`` in a bfloat16/float16 model's
    dtype, or ``W + delta_W`` for float32/float64 models) for the backward's input gradient, instead of rebuilding
    it: 5 fewer launches per layer and step (a bf16 dense step: 13 instead of 18), for one weight-sized tensor per
    adapted layer held from the forward to the backward (bf16 3072 x 3072: 18 MiB; Llama-3.2-3B with q/v adapted:
    28 x (18 + 6) MiB = 672 MiB at the peak of a step). Off by default. On the CPU it applies only under
    :func:`generic_kernels` (the fused CPU kernels have their own routes). Process-wide while active, restored
    afterwards.

    >>> with fourierft.ops.keep_delta():
    ...     loss = model(**batch).loss
    ...     loss.backward()
    """
    return _scoped(_C.keep_delta, _C.set_keep_delta, enabled)


def generic_kernels(enabled: bool = True) -> contextlib.AbstractContextManager:
    """Inside the block, CPU tensors run the device-generic implementation of the ops (ATen operations
    only: the code registered for CUDA) instead of the fused CPU kernels. For testing the GPU code path
    on a machine without a GPU; process-wide while active, restored afterwards.

    >>> with fourierft.ops.generic_kernels():
    ...     y = fourierft.ops.spectral_linear(x, spectrum, indices, out_features, in_features, scaling)
    """
    return _scoped(_C.generic_kernels, _C.set_generic_kernels, enabled)
