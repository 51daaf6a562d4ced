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

__all__ = ["entry_indices", "delta_weight", "spectral_linear", "generic_kernels"]


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


@contextlib.contextmanager
def generic_kernels(enabled: bool = True) -> Iterator[None]:
    """Inside the block, CPU tensors run the device-generic implementation of the ops (ATen operations
    only: the code registered for CUDA) instead of the fused CPU kernels. For testing the GPU code path
    on a machine without a GPU; process-wide while active, restored afterwards.

    >>> with fourierft.ops.generic_kernels():
    ...     y = fourierft.ops.spectral_linear(x, spectrum, indices, out_features, in_features, scaling)
    """
    before = _C.generic_kernels()
    _C.set_generic_kernels(enabled)
    try:
        yield
    finally:
        _C.set_generic_kernels(before)
