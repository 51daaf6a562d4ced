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
#include <c10/core/DeviceType.h>
#include <c10/core/ScalarType.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

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

/// Which route fourierft::linear takes: Auto (the cost model, per call and per gradient), or always one route for
/// the forward, grad_x and the spectrum gradient:
///   Spectral: matrix-free (the CPU's blocked pipeline; elsewhere row FFTs around sparse products); the spectrum
///             gradient by correlating the rows' spectra;
///   Dense:    delta_W built for the call (irfft2, float32) and applied by GEMMs: one GEMM with W + delta_W where the
///             model's dtype keeps delta_W (float32/float64), else x delta_W^T in the model's dtype beside the base
///             GEMM (bfloat16/float16: tensor cores, float32 accumulation); the spectrum gradient from g^T x;
///   Folded:   (CPU) the coefficients folded onto two real half-spectrum matrices and applied by two GEMMs between
///             row FFTs (the large-n route); on other devices, Dense.
/// Dense and Folded take the spectrum gradient by GEMMs. Process-wide; for benchmarks and tests (every route is held
/// to PEFT).
enum class LinearPath { Auto, Spectral, Dense, Folded };
void set_linear_path(LinearPath path);
LinearPath linear_path();

/// One call of an adapted linear layer as the cost model sees it (src/ops/cost_model.cpp, the one place where routes
/// are chosen, for every device: the ops, the C++ layers and the Python layer all ask it).
struct LayerCall {
  c10::DeviceType device = c10::DeviceType::CPU;
  /// The model's (input's) dtype.
  at::ScalarType dtype = at::kFloat;
  int64_t tokens = 0;
  int64_t out_features = 0;
  int64_t in_features = 0;
  int64_t n_frequency = 0;
  /// The spectrum (or the base weight) takes a gradient in this call.
  bool training = false;
  /// The spectrum's dtype; Undefined: the model's, or PEFT's float32 for a bfloat16/float16 model. The dense route
  /// needs one of those two (other pairs run PEFT's composition by the spectral route).
  at::ScalarType spectrum_dtype = at::ScalarType::Undefined;
};

/// The routes fourierft::linear takes for `call` on its device (the forward's; with `call.training`, grad_x's and the
/// spectrum gradient's too), as the cost model picks them or set_linear_path forces them: Spectral, Dense or Folded
/// (the CPU's fused kernels only). The one decision: the kernels act on it (linear_backward_routes for a backward
/// that needs only some gradients), and the tests, benchmarks and route tables in docs/ report it.
struct LinearRoutes {
  LinearPath forward = LinearPath::Spectral;
  LinearPath grad_x = LinearPath::Spectral;
  LinearPath grad_spectrum = LinearPath::Spectral;
};
LinearRoutes linear_routes(const LayerCall& call);
/// The backward's routes when only some gradients are needed (an unneeded one is reported Spectral: not computed).
LinearRoutes linear_backward_routes(const LayerCall& call, bool need_grad_x, bool need_grad_spectrum);

/// One number behind linear_routes: the cost model's estimate, in nanoseconds per call, of what `route` adds to the
/// layer's own base GEMMs in `pass` ("forward", "grad_x", "grad_spectrum"). An estimate from the constants in
/// src/ops/cost_model.cpp, not a measurement; linear_routes picks the smallest of each pass (ties: Spectral on the
/// CPU). The backward's passes are those linear_routes describes: on the CPU grad_x knows the spectrum gradient's
/// route, on other devices the spectrum gradient knows grad_x's. Independent of set_linear_path.
struct RouteEstimate {
  std::string pass;
  LinearPath route = LinearPath::Spectral;
  double ns = 0.0;
};
/// Every candidate of every pass of `call` (the forward's; with `call.training`, grad_x's and the spectrum
/// gradient's): Spectral and Dense, and Folded on the CPU (whose spectrum gradient's GEMM route is Folded).
std::vector<RouteEstimate> linear_route_estimates(const LayerCall& call);

/// A layer that cannot run as one fourierft::linear (several active adapters, a Conv1D or hooked base): whether its
/// adapter's x delta_W^T is cheaper by spectral_linear (Spectral) or by a GEMM with delta_W (Dense; `delta_cached`:
/// a frozen spectrum's delta_W is already at hand).
LinearPath adapter_path(const LayerCall& call, bool delta_cached);

/// Inference with a frozen spectrum and base weight: what a layer keeps between calls so that nothing of size
/// out x in is recomputed per call. MergedWeight: W + delta_W (CPU, float32/float64: one GEMM per call, W's values
/// fingerprinted per call); Delta: delta_W in the model's dtype, applied by a second GEMM beside the base's (GPUs);
/// None: no cache (the cost model prefers recomputing, or set_inference_cache(false)). Either cache costs one
/// weight-sized tensor per adapted layer. A forced set_linear_path(Dense) gives Delta on every device, Spectral and
/// Folded give None.
enum class InferenceCache { None, MergedWeight, Delta };

InferenceCache inference_cache_for(const LayerCall& call);
/// Turns the inference caches off (process-wide) or back on (the default): for memory-bound deployments.
void set_inference_cache(bool enabled);
bool inference_cache();

/// What an adapted layer's forward knows about itself besides the call: the facts that decide whether it can run as
/// one fourierft::linear.
struct LayerFacts {
  /// One active adapter held by this layer.
  bool single_adapter = false;
  /// A plain linear base (weight and bias parameters, no hooks or extra arguments) whose forward the op can replace.
  bool plain_base = false;
  /// The base weight's dtype, and whether input, weight and spectrum share one device.
  at::ScalarType weight_dtype = at::kFloat;
  bool same_device = false;
  /// (Per-adapter plans) this adapter's frozen delta_W is already cached.
  bool delta_cached = false;
  /// The layer may keep inference caches now (not while tracing for torch.compile, not as one rank of several).
  bool may_cache = true;
};
/// What a layer does for one call, decided once, in one place, from the call (with its spectrum_dtype) and the facts:
///   Fused:              one fourierft::linear (its routes: linear_routes);
///   FusedMergedWeight:  inference, one GEMM with the cached W + delta_W (CPU, float32/float64);
///   FusedDelta:         inference, the base GEMM plus one with the cached delta_W in the model's dtype;
///   PerAdapter:         the base layer, then each active adapter's x delta_W^T by `adapter_route` (Spectral:
///                       spectral_linear; Dense: a GEMM with delta_W), PEFT's composition.
/// Fused needs the facts above and dtypes the op computes in the model's precision: x, weight and spectrum of one
/// float32/float64 dtype, or a bfloat16/float16 x and weight with PEFT's float32 spectrum.
struct LayerPlan {
  enum class Kind { Fused, FusedMergedWeight, FusedDelta, PerAdapter };
  Kind kind = Kind::PerAdapter;
  LinearPath adapter_route = LinearPath::Spectral;
};
LayerPlan plan_layer_call(const LayerCall& call, const LayerFacts& facts);

/// Memory for speed in training on a GPU: fourierft::linear keeps the dense operand its forward built (delta_W in a
/// half-precision model's dtype, or W + delta_W) for the backward's input gradient instead of rebuilding it, where the
/// cost model takes the dense route for both (on the CPU: only under set_generic_kernels). Costs one weight-sized
/// tensor per adapted layer held from the forward to the backward (bf16 3072 x 3072: 18 MiB), and saves rebuilding
/// delta_W in the backward (5 of a bf16 dense step's 18 launches). Process-wide; off by default.
void set_keep_delta(bool enabled);
bool keep_delta();

/// A 64-bit fingerprint of a CPU tensor's values (bytes, dtype and shape), read once in parallel: the key
/// of caches that must notice changes made behind the version counter (`p.data.mul_()`, PEFT's merge
/// through `.data`).
uint64_t fingerprint(const at::Tensor& tensor);

/// Runs the device-generic implementation (ATen operations only, the one registered for CUDA) for CPU
/// tensors too, instead of the fused CPU kernels: slower, for testing the generic path where no GPU is
/// available (the tests hold both to PEFT's formula). Process-wide; off by default.
void set_generic_kernels(bool enabled);
bool generic_kernels();

}  // namespace fourierft
