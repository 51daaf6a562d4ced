// What the CPU kernels of the spectral op (spectral_linear_cpu.cpp: the blocked pipeline), the folded route
// (folded_cpu.cpp) and the whole layer (linear_cpu.cpp) share. Internal.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <utility>

namespace fourierft::detail {

// ---- the blocked pipeline (spectral_linear_cpu.cpp) -------------------------------------------------------------
// out2d[rows, out_len] = the spectral apply of in2d's rows [rows, in_len] (contiguous, the kernel's real dtype):
// entry k scatters coeff[k] * factor from input bin src[k] to output bin dst[k]; `bias` (if defined) is added in the
// pass's epilogue.
void pipeline_apply(const at::Tensor& in2d, int64_t in_len, const at::Tensor& coeff, const int64_t* src,
                    const int64_t* dst, int64_t out_len, double factor, at::Tensor& out2d, const at::Tensor& bias);
// The backward's blocked pass from one rfft of each block of g2d: grad_x's spectral part into gx2d (when defined),
// and grad_c (returned when x2d is defined; else an undefined tensor).
at::Tensor pipeline_backward(const at::Tensor& g2d, const at::Tensor& x2d, const at::Tensor& coeff, const int64_t* u,
                             const int64_t* v, int64_t out_features, int64_t in_features, double scaling,
                             at::Tensor& gx2d, const at::Tensor& spectrum);

// ---- the folded route (folded_cpu.cpp) --------------------------------------------------------------------------
std::pair<at::Tensor, at::Tensor> half_spectra(const at::Tensor& rows2d);
at::Tensor folded_coefficients(const at::Tensor& coeff, const int64_t* u, const int64_t* v, int64_t d1, int64_t d2,
                               bool output_is_rows, double factor);
at::Tensor folded_apply(const std::pair<at::Tensor, at::Tensor>& spec, const at::Tensor& folded, bool output_is_rows,
                        int64_t out_len);
at::Tensor folded_grad_spectrum(const std::pair<at::Tensor, at::Tensor>& g_spec,
                                const std::pair<at::Tensor, at::Tensor>& x_spec, const int64_t* u, const int64_t* v,
                                int64_t d1, int64_t d2, double scaling, const at::Tensor& spectrum);

}  // namespace fourierft::detail
