// FourierFT kernels: the math of the method, in one place.
//
// Notation (Gao et al., ICML 2024; PEFT's FourierFT tuner):
//   base weight W0 is d1 x d2 = out_features x in_features,
//   c  = the n learnable spectral coefficients (PEFT: `fourierft_spectrum`),
//   E  = the 2 x n entry matrix (row 0: frequency along out, row 1: along in),
//   alpha = `scaling`.
//   delta_W = Re(ifft2(F)) * alpha,  F = zeros(d1, d2), F[E0, E1] = c.
//
// Every function here goes through the PyTorch dispatcher (ops registered as
// `torch.ops.fourierft.*` by the compiled library), so C++ callers, Python
// callers, autograd and torch.compile all run the same kernels.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>

namespace fourierft {

/// The entry matrix E exactly as PEFT builds it: the first `n_frequency` values of
/// `torch.randperm(out_features * in_features)` drawn from a CPU generator seeded with
/// `random_loc_seed`, split into `[p // in_features, p % in_features]`. int64, shape [2, n].
at::Tensor entry_indices(int64_t out_features, int64_t in_features, int64_t n_frequency,
                         int64_t random_loc_seed);

/// Dense delta_W = Re(ifft2(F)) * scaling, shape [out_features, in_features], equal to PEFT's
/// `FourierFTLayer.get_delta_weight`. Computed through the real inverse FFT of the Hermitian part of
/// F (half the transform work of a complex ifft2), in float32 (float64 for a float64 spectrum), and
/// returned in the spectrum's dtype. Differentiable with respect to `spectrum`.
at::Tensor delta_weight(const at::Tensor& spectrum, const at::Tensor& indices, int64_t out_features,
                        int64_t in_features, double scaling);

/// `x @ delta_W^T` without materialising delta_W (nothing of size out x in is ever allocated):
/// y = Re(ifft(Z)) * scaling / in_features with Z[E0_k] += c_k * conj(fft(x))[E1_k].
/// `x` has any leading shape and last dimension `in_features`; the result has last dimension
/// `out_features` and x's dtype. float16/bfloat16 inputs are computed in float32.
/// Differentiable with respect to `x` and `spectrum`.
at::Tensor spectral_linear(const at::Tensor& x, const at::Tensor& spectrum, const at::Tensor& indices,
                           int64_t out_features, int64_t in_features, double scaling);

/// The whole adapted linear layer, `x @ (weight + delta_W)^T + bias`, equal to PEFT's FourierFT
/// `Linear.forward` around an `nn.Linear` with one active adapter (`base_layer(x) + x @ delta_W^T`).
/// By the path the cost model picks (see set_linear_path): the spectral pipeline writing
/// `x @ delta_W^T + bias` and the GEMM with `weight` accumulating into it, or one GEMM with
/// `weight + delta_W` (delta_W built for the call and freed). The backward makes the same choice for
/// the input gradient; it saves the input (when the spectrum or the weight trains), never delta_W or
/// a spectrum of the input. `weight` [out, in] and `bias` [out] have x's dtype; a spectrum of another
/// dtype gets PEFT's composition (base in x's dtype + adapter in the spectrum's, promoted).
/// Differentiable with respect to x, weight, bias and spectrum.
at::Tensor linear(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                  const at::Tensor& spectrum, const at::Tensor& indices, int64_t out_features, int64_t in_features,
                  double scaling);

/// Which path fourierft::linear takes: Auto (the cost model, per call and per gradient), or always one route for
/// the forward, grad_x and the spectrum gradient:
///   Spectral: the blocked spectral pipeline; the spectrum gradient by correlating the rows' spectra;
///   Merged:   one GEMM with W + delta_W (delta_W built per call) forward and for grad_x;
///   Folded:   the coefficients folded onto two real half-spectrum matrices and applied by two GEMMs between
///             row FFTs (the large-n route);
/// Merged and Folded take the spectrum gradient from the folded route's two GEMMs. Process-wide; for
/// benchmarks and tests (every route is held to PEFT).
enum class LinearPath { Auto, Spectral, Merged, Folded };
void set_linear_path(LinearPath path);
LinearPath linear_path();

/// A 64-bit fingerprint of a CPU tensor's values (bytes, dtype and shape), read once in parallel: the key
/// of caches that must notice changes made behind the version counter (`p.data.mul_()`, PEFT's merge
/// through `.data`).
uint64_t fingerprint(const at::Tensor& tensor);

/// Inference with a frozen spectrum and base weight: true when caching `W + delta_W` (one GEMM per call,
/// after fingerprinting W and comparing the spectrum) is cheaper than the spectral pipeline per call.
/// The cache costs one more weight-sized tensor per layer.
bool merged_weight_cache_pays(int64_t tokens, int64_t out_features, int64_t in_features, int64_t n_frequency);

/// Runs the device-generic implementation (ATen operations only, the one registered for CUDA) for CPU
/// tensors too, instead of the fused CPU kernels: slower, for testing the generic path where no GPU is
/// available (the tests hold both to PEFT's formula). Process-wide; off by default.
void set_generic_kernels(bool enabled);
bool generic_kernels();

/// The forward-path cost model (calibrated on CPU, docs/benchmarks.md): true when the matrix-free
/// spectral path is expected to be cheaper than materialising delta_W and doing one GEMM, for
/// `tokens` rows through an `out_features x in_features` layer with `n_frequency` coefficients.
/// `delta_cached`: delta_W is already materialised (frozen spectrum), so the dense path only pays
/// the GEMM. Used by the C++ layers and by the Python layer, so both pick the same path.
bool spectral_path_is_cheaper(int64_t tokens, int64_t out_features, int64_t in_features,
                              int64_t n_frequency, bool delta_cached);

}  // namespace fourierft
