"""The independent reference of the numeric tests: PEFT's FourierFT formula in float64, built with torch's own
complex FFT and differentiable by torch's autograd (none of fourierft's kernels)."""
import torch


def dense_delta_float64(c: torch.Tensor, indices: torch.Tensor, out_features: int, in_features: int,
                        scaling: float) -> torch.Tensor:
    """delta_W = Re(ifft2(F)) * scaling with F = zeros(out, in) complex, F[E0, E1] = c (c float64)."""
    dense = torch.zeros(out_features, in_features, dtype=torch.complex128).index_put(
        (indices[0], indices[1]), c.to(torch.complex128))
    return torch.fft.ifft2(dense).real * scaling
