// Internal declarations shared by the op files of src/ops/ (not installed).
//
// Layout, one concern per file (in the manner of pytorch_scatter's csrc/<op>.cpp + csrc/cpu/<op>_cpu.cpp):
//   checks.cpp                 argument checks shared by every op (messages name the op and the values)
//   cpu/spectral_linear_cpu.cpp the matrix-free spectral path: blocked SIMD gather/scatter kernels, forward, backward
//   cpu/folded_cpu.cpp         the folded route (half-spectrum GEMMs between row transforms)
//   cpu/linear_cpu.cpp         fourierft::linear (the whole layer) by the cost model's routes, and its backward
//   cpu/blocks.h, spectral_cpu.h, fft_rows.*  row blocking and scratch; the routes' interface; batched row FFTs
//   cpu/delta_weight_cpu.cpp   entry_indices (PEFT's draw), delta_weight and its backward
//   generic.cpp                the same ops from ATen operations only: registered for CUDA, and on CPU
//                              behind fourierft::set_generic_kernels(true) (the parity reference)
//   meta.cpp                   shapes and dtypes for FakeTensor / torch.compile / opcheck
//   autograd.cpp               autograd Functions at the Autograd key, the public C++ entry points
//   registration.cpp           TORCH_LIBRARY schemas and the per-key kernel tables
//   index_plan.cpp             what the ATen implementation derives from an entry matrix, once per indices tensor
//   cost_model.cpp             the routes per device and pass, and the plan of a layer call
#pragma once

#include <ATen/core/Tensor.h>
#include <fourierft/ops.h>
#include <c10/core/ScalarType.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <tuple>

namespace fourierft::detail {

// ---- checks.cpp ------------------------------------------------------------------------------
void check_dims(const char* op, int64_t out_features, int64_t in_features);
void check_spectrum_and_indices(const char* op, const at::Tensor& spectrum, const at::Tensor& indices,
                                int64_t out_features, int64_t in_features);
void check_input(const char* op, const at::Tensor& x, const at::Tensor& spectrum, int64_t in_features);
void check_cpu(const char* op, const at::Tensor& t);
/// fourierft.linear's arguments: check_input plus weight [out, in] (x's dtype and device) and bias [out].
void check_linear(const char* op, const at::Tensor& x, const at::Tensor& weight,
                  const std::optional<at::Tensor>& bias, const at::Tensor& spectrum, const at::Tensor& indices,
                  int64_t out_features, int64_t in_features);
/// The backward ops' shared checks: spectrum and indices, grad_out [..., out], and (need_x) a saved input of
/// grad_out's rows x in_features.
void check_spectral_backward(const char* op, const at::Tensor& grad_out, const at::Tensor& x,
                             const at::Tensor& spectrum, const at::Tensor& indices, int64_t out_features,
                             int64_t in_features, bool need_x);
void check_linear_backward(const char* op, const at::Tensor& grad_out, const at::Tensor& x,
                           const at::Tensor& weight, const at::Tensor& spectrum, const at::Tensor& indices,
                           int64_t out_features, int64_t in_features, bool need_x);
/// float32 for half/bfloat16/float32, float64 when either operand is float64.
at::ScalarType compute_dtype(at::ScalarType a, at::ScalarType b);
/// A half-precision model with PEFT's float32 adapter: x bfloat16/float16, spectrum float32.
bool half_precision_model(at::ScalarType x, at::ScalarType spectrum);
/// fourierft::linear's result dtype: x's for a half-precision model (x bfloat16/float16, spectrum float32, as
/// PEFT's layer returns it after its float32 adapter), else promote(x, spectrum) (PEFT's composition).
at::ScalarType linear_result_dtype(at::ScalarType x, at::ScalarType spectrum);

// ---- kernels: one signature per op, implemented for CPU (fused), generically (ATen) and Meta ------
at::Tensor entry_indices_impl(int64_t out_features, int64_t in_features, int64_t n_frequency, int64_t random_loc_seed);

#define FOURIERFT_DECLARE_KERNELS(suffix)                                                                   \
  at::Tensor delta_weight_##suffix(const at::Tensor& spectrum, const at::Tensor& indices, int64_t out_features, \
                                   int64_t in_features, double scaling);                                    \
  at::Tensor delta_weight_backward_##suffix(const at::Tensor& grad, const at::Tensor& spectrum,            \
                                            const at::Tensor& indices, int64_t out_features,                \
                                            int64_t in_features, double scaling);                           \
  std::tuple<at::Tensor, at::Tensor> spectral_linear_backward_##suffix(                                     \
      const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& spectrum, const at::Tensor& indices, \
      int64_t out_features, int64_t in_features, double scaling, bool need_grad_x, bool need_grad_spectrum); \
  at::Tensor spectral_linear_##suffix(const at::Tensor& x, const at::Tensor& spectrum, const at::Tensor& indices, \
                                      int64_t out_features, int64_t in_features, double scaling);                 \
  at::Tensor linear_##suffix(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias, \
                             const at::Tensor& spectrum, const at::Tensor& indices, int64_t out_features,         \
                             int64_t in_features, double scaling);                                                \
  std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> linear_backward_##suffix(                            \
      const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& spectrum,      \
      const at::Tensor& indices, int64_t out_features, int64_t in_features, double scaling, bool need_grad_x,     \
      bool need_grad_weight, bool need_grad_bias, bool need_grad_spectrum,                                        \
      const std::optional<at::Tensor>& dense_operand);
FOURIERFT_DECLARE_KERNELS(cpu)
FOURIERFT_DECLARE_KERNELS(generic)
FOURIERFT_DECLARE_KERNELS(meta)
#undef FOURIERFT_DECLARE_KERNELS

/// fourierft::linear's dense route (any device, ATen operations), returning beside the output the dense operand it
/// applied: W + delta_W (a model of the spectrum's dtype) or delta_W in the model's dtype (a half-precision model,
/// applied beside the base GEMM). The backward takes it as `dense_operand` instead of rebuilding delta_W
/// (set_keep_delta).
std::tuple<at::Tensor, at::Tensor> linear_dense_forward_generic(
    const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias, const at::Tensor& spectrum,
    const at::Tensor& indices, int64_t out_features, int64_t in_features, double scaling);
std::tuple<at::Tensor, at::Tensor> linear_dense_forward_meta(
    const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias, const at::Tensor& spectrum,
    const at::Tensor& indices, int64_t out_features, int64_t in_features, double scaling);
/// Whether the dense route applies to these dtypes: x of the spectrum's dtype, or a half-precision model with a
/// float32 spectrum.
bool dense_capable(at::ScalarType x, at::ScalarType spectrum);

/// The CPU kernels run the generic implementation instead of the fused one (set_generic_kernels).
bool generic_kernels_on_cpu();

// ---- index_plan.cpp ---------------------------------------------------------------------------
/// A sparse matrix pattern of the spectral route (generic.cpp): CSR row pointers and columns of the unique positions,
/// `inverse` mapping each placement to its stored entry, and the real factors the placements' values are multiplied
/// by (operators: [4, n] = keep, sign * keep, keep_mirror, -sign * keep_mirror; the spectrum gradient's mask: [n],
/// the product of the two conj_read signs).
struct SparsePattern {
  at::Tensor crow, col, inverse, factors;
  int64_t unique = 0, rows = 0, cols = 0;
  /// The spectrum gradient's sampling mask (values zero): built once, reused by every call.
  at::Tensor mask;
};
/// The spectral route's three sparse patterns: the forward's operator (input bins -> output bins), grad_x's operator
/// (output bins -> input bins) and the spectrum gradient's sampling mask.
enum class SparseUse { Forward = 0, GradX = 1, GradSpectrum = 2 };

/// Everything the ATen implementation derives from the entry matrix `indices` of an out_features x in_features layer.
/// Dense route: delta_W's doubled Hermitian half spectrum is scattered into a [out + 1, in / 2 + 1] buffer at
/// (scatter_rows, scatter_cols) ([2, n]: each entry and its mirror; row `out` collects placements outside the half),
/// and the spectrum gradient reads Re(rfft2(G)) at (gather_rows, gather_cols) ([n]). Spectral route: the sparse
/// patterns, built on first use (each needs host synchronisations for its size) and kept.
class IndexPlan {
 public:
  IndexPlan(const at::Tensor& indices, int64_t out_features, int64_t in_features);
  const SparsePattern& pattern(SparseUse use, at::ScalarType real) const;

  /// The entry matrix's rows, copied (a plan never holds its indices tensor, whose lifetime it follows).
  at::Tensor rows, cols;
  int64_t out_features, in_features;
  at::Tensor scatter_rows, scatter_cols, gather_rows, gather_cols;

 private:
  mutable std::mutex mutex_;
  mutable std::array<std::array<std::unique_ptr<SparsePattern>, 2>, 3> patterns_;
};
/// The plan of `indices` (int64 [2, n] on any device), computed on first use and kept while that tensor lives and is
/// not written in place; thread-safe.
std::shared_ptr<IndexPlan> index_plan(const at::Tensor& indices, int64_t out_features, int64_t in_features);
/// Live plans (for tests: plans die with their indices).
std::size_t index_plan_cache_size();
/// generic.cpp: builds one sparse pattern of `plan` (real: the values' dtype, float32 or float64).
SparsePattern build_sparse_pattern(const IndexPlan& plan, SparseUse use, at::ScalarType real);

// ---- cost_model.cpp ----------------------------------------------------------------------------
/// Which product the route computes: the forward's x delta_W^T, the backward's g delta_W alone, or g delta_W
/// beside a correlation for grad_c (which transforms g's rows anyway, so the pipeline costs less extra).
enum class RoutePass { Forward, GradX, GradXBesideCorrelation };
/// How fourierft::linear computes x delta_W^T (forward) or g delta_W (the backward's grad_x), for `call` on its
/// device: the cheapest of Spectral, Dense and (CPU) Folded by the cost model, or the one set_linear_path forces. Off
/// the CPU, Folded is never chosen (the ATen implementation has no folded route).
LinearPath linear_route(const LayerCall& call, RoutePass pass);
/// fourierft::linear's backward: the spectrum gradient by GEMMs (CPU: the folded route's A = Re G^T Re X,
/// B = Im G^T Im X; elsewhere g^T x and its rfft2) instead of correlating the rows' spectra. `grad_x_is_spectral`:
/// g's row transforms are made for grad_x anyway. Spectral forces the correlation, Dense and Folded the GEMMs.
bool linear_grad_spectrum_is_dense(const LayerCall& call, bool grad_x_is_spectral);
/// fourierft::linear keeps the forward's dense operand for the backward's grad_x (set_keep_delta) in this training call:
/// the option is on, the ATen implementation runs (not the CPU's fused kernels), and linear_routes takes the dense
/// route for the forward and grad_x (which needs the call's dtypes to allow it).
bool keep_dense_operand(const LayerCall& call);
/// The estimates (ns per call) the two decisions above compare: what each route adds to the layer's own GEMMs in
/// one pass (folded: CPU only, infinite elsewhere); for the spectrum gradient, `dense` is the GEMM route (CPU: the
/// folded GEMMs) and `folded` is unused. Independent of set_linear_path.
struct RouteCosts {
  double spectral = 0.0;
  double dense = 0.0;
  double folded = std::numeric_limits<double>::infinity();
};
RouteCosts linear_route_costs(const LayerCall& call, RoutePass pass);
RouteCosts grad_spectrum_costs(const LayerCall& call, bool grad_x_is_spectral);

// ---- autograd.cpp ------------------------------------------------------------------------------
at::Tensor spectral_linear_autograd(const at::Tensor& x, const at::Tensor& spectrum, const at::Tensor& indices,
                                    int64_t out_features, int64_t in_features, double scaling);
at::Tensor linear_autograd(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                           const at::Tensor& spectrum, const at::Tensor& indices, int64_t out_features,
                           int64_t in_features, double scaling);
at::Tensor delta_weight_autograd(const at::Tensor& spectrum, const at::Tensor& indices, int64_t out_features,
                                 int64_t in_features, double scaling);

}  // namespace fourierft::detail
