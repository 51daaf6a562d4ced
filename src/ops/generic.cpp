// The FourierFT ops written with ATen operations only, so that they run on any device PyTorch supports:
// registered for CUDA (cuFFT, cuBLAS, cuSPARSE), and reachable on CPU with fourierft::set_generic_kernels(true),
// where the tests hold them to the fused CPU kernels and to PEFT's formula. Two routes, chosen per call by the cost
// model (cost_model.cpp) for the tensors' device:
//
//   dense:    delta_W from the half spectrum (irfft2 of the Hermitian part, float32), then GEMMs: forward x delta_W^T
//             and backward g delta_W in the model's dtype (one GEMM with W + delta_W for float32/float64 models;
//             beside the base GEMM for bfloat16/float16, tensor cores with float32 accumulation), the spectrum's
//             gradient from G = g^T x (one GEMM, float32 accumulation), an rfft2 and a read at the n entries.
//             Nothing grows with n beyond the n coefficients; the positions come from the indices' plan
//             (index_plan.cpp), so a call issues no index arithmetic and no host synchronisation.
//   spectral: row FFTs of x (and of g) around one sparse product with a real matrix of at most 4n entries built
//             from the coefficients (below), and the spectrum's gradient as one sampled product (SDDMM) of the
//             rows' half spectra at 2n positions: no [tokens, n] temporaries, no atomics over tokens. The sparse
//             patterns sort the n entries (torch.unique, host synchronisations for the sizes) once per indices
//             tensor and are kept in its plan.
//
// The sparse product. For real rows of length m with half spectra R = P + iQ (rfft), entry k reads
// conj(fft)[src_k] = P[b_k] + i s_k Q[b_k] (b_k = src_k, s_k = -1 for src_k <= m/2; b_k = m - src_k, s_k = +1
// above) and, times c_k, lands in the output's half spectrum H2 (irfft(H2) = 2 Re(ifft(Z))) at bin dst_k as is and
// at bin (p - dst_k) mod p conjugated, wherever those lie in 0..p/2. So Re H2 = P M_re and Im H2 = Q M_im with real
// sparse M_re, M_im; on interleaved (re, im) columns that is one product of [rows, 2(m/2+1)] with a real
// [2(m/2+1), 2(p/2+1)] matrix whose even rows hold M_re and odd rows M_im.
#include "internal.h"

#include <fourierft/ops.h>

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <atomic>
#include <vector>

namespace fourierft {
namespace {
std::atomic<bool> generic_on_cpu{false};
}  // namespace

void set_generic_kernels(bool enabled) { generic_on_cpu.store(enabled); }
bool generic_kernels() { return generic_on_cpu.load(); }

namespace detail {

bool generic_kernels_on_cpu() { return generic_on_cpu.load(std::memory_order_relaxed); }

namespace {

// Half-spectrum bin of full-spectrum bin k of a real signal of length len, and the sign s of the imaginary part
// that reads conj(fft)[k] from it: conj(R[k]) for k <= len/2 (s = -1), R[len - k] above (s = +1).
std::pair<at::Tensor, at::Tensor> conj_read(const at::Tensor& k, int64_t len, at::ScalarType real) {
  const auto lower = k.le(len / 2);
  return {at::where(lower, k, len - k), 1.0 - 2.0 * lower.to(real)};
}

// Real [rows, 2 bins] view of a contiguous complex [rows, bins] half spectrum, (re, im) interleaved; and back.
at::Tensor interleaved(const at::Tensor& half) { return at::view_as_real(half).flatten(-2); }
at::Tensor complex_of(const at::Tensor& pairs) { return at::view_as_complex(pairs.unflatten(-1, {-1, 2})); }

// The CSR pattern of a [rows, cols] matrix holding the sum of values at the linear positions `keys` (duplicates add
// up): the keys sorted and made unique (host synchronisations for their count: once per plan), the row pointers
// found by binary search, and for each key the stored entry it adds to.
SparsePattern csr_pattern(const at::Tensor& keys, int64_t rows, int64_t cols) {
  auto [unique_keys, inverse, counts] = at::_unique2(keys, /*sorted=*/true, /*return_inverse=*/true, false);
  const auto row = at::div(unique_keys, cols, "floor");
  SparsePattern pattern;
  pattern.crow = at::searchsorted(row, at::arange(rows + 1, keys.options()));
  pattern.col = unique_keys.remainder(cols);
  pattern.inverse = inverse;
  pattern.unique = unique_keys.size(0);
  pattern.rows = rows;
  pattern.cols = cols;
  return pattern;
}

// PyTorch warns once per process that sparse CSR support is "in beta" when the first CSR tensor is made: about its
// own API, which this file uses internally, so the user would be told nothing they can act on. Dropped here only.
struct DropWarnings final : c10::WarningHandler {
  void process(const c10::Warning&) override {}
};
// No validation of the pattern (it would read the indices on the host: a synchronisation per call); the pattern is
// ours and valid by construction.
at::Tensor csr_tensor(const SparsePattern& pattern, const at::Tensor& values) {
  static DropWarnings drop;
  c10::WarningUtils::WarningHandlerGuard guard(&drop);
  const std::vector<int64_t> size{pattern.rows, pattern.cols};
  return at::_sparse_csr_tensor_unsafe(pattern.crow, pattern.col, values, size, values.options().layout(at::kSparseCsr));
}

// The spectral apply's operator pattern: a real [2(m/2+1), 2(p/2+1)] matrix taking the interleaved half spectrum of
// rows of length m = src_len to the interleaved half spectrum H2 of the output of length p = dst_len (header
// comment). Placements outside 0..p/2 get factor 0 at a valid bin (clamped) instead of being dropped, which would
// need one more synchronisation.
SparsePattern operator_pattern(const at::Tensor& src, const at::Tensor& dst, int64_t src_len, int64_t dst_len,
                               at::ScalarType real) {
  const int64_t in_cols = 2 * (src_len / 2 + 1), out_cols = 2 * (dst_len / 2 + 1);
  const auto [b, s] = conj_read(src, src_len, real);
  const auto mirror = (dst_len - dst).remainder(dst_len);
  const auto keep = dst.le(dst_len / 2).to(real), keep_mirror = mirror.le(dst_len / 2).to(real);
  const auto j = dst.clamp_max(dst_len / 2), jm = mirror.clamp_max(dst_len / 2);
  const auto rows = at::cat({2 * b, 2 * b + 1, 2 * b, 2 * b + 1});
  const auto cols = at::cat({2 * j, 2 * j + 1, 2 * jm, 2 * jm + 1});
  auto pattern = csr_pattern(rows * out_cols + cols, in_cols, out_cols);
  pattern.factors = at::stack({keep, s * keep, keep_mirror, -s * keep_mirror});
  return pattern;
}

// grad_c_k = scaling / (d1 d2) * sum_r Re(conj(fft(g_r))[u_k] conj(fft(x_r))[v_k]): with G = g's and X = x's half
// spectra, Re(...) = Re G[a] Re X[b] - s_u s_v Im G[a] Im X[b], so one sampled product of the interleaved spectra,
// G^T X at (2a, 2b) and (2a + 1, 2b + 1). The pattern's factors are -s_u s_v.
SparsePattern sampling_pattern(const IndexPlan& plan, at::ScalarType real) {
  const int64_t d1 = plan.out_features, d2 = plan.in_features;
  const auto [a, su] = conj_read(plan.rows, d1, real);
  const auto [b, sv] = conj_read(plan.cols, d2, real);
  const int64_t rows = 2 * (d1 / 2 + 1), cols = 2 * (d2 / 2 + 1);
  auto pattern = csr_pattern(at::cat({(2 * a) * cols + 2 * b, (2 * a + 1) * cols + 2 * b + 1}), rows, cols);
  pattern.factors = -(su * sv);
  pattern.mask = csr_tensor(pattern, at::zeros({pattern.unique}, plan.rows.options().dtype(real)));
  return pattern;
}

// Re(ifft_p(Z)) * factor for every row of `signal` ([rows, src_len] real), Z[dst_k] += c_k conj(fft(signal))[src_k],
// by the operator of `use` (Forward: src = E1, dst = E0; GradX: the reverse).
at::Tensor spectral_apply(const at::Tensor& signal, const at::Tensor& coeff, const IndexPlan& plan, SparseUse use,
                          double factor) {
  const bool forward = use == SparseUse::Forward;
  const int64_t dst_len = forward ? plan.out_features : plan.in_features;
  const auto& pattern = plan.pattern(use, coeff.scalar_type());
  // The placements' values, times factor / 2 (irfft(H2) = 2 Re(ifft(Z))), summed per stored entry.
  const auto values = (pattern.factors * coeff.mul(0.5 * factor)).view({-1});
  const auto summed = at::zeros({pattern.unique}, coeff.options()).index_add_(0, pattern.inverse, values);
  const auto half = interleaved(at::fft_rfft(signal, c10::nullopt, -1));
  return at::fft_irfft(complex_of(at::mm(half, csr_tensor(pattern, summed))), dst_len, -1);
}

at::Tensor spectral_grad_spectrum(const at::Tensor& g_half, const at::Tensor& x_half, const IndexPlan& plan,
                                  double scaling, at::ScalarType real) {
  const int64_t n = plan.rows.size(0);
  const auto& pattern = plan.pattern(SparseUse::GradSpectrum, real);
  const auto sampled = at::sparse_sampled_addmm(pattern.mask, g_half.t(), x_half, /*beta=*/0.0, /*alpha=*/1.0).values();
  const auto re = sampled.index_select(0, pattern.inverse.narrow(0, 0, n));
  const auto im = sampled.index_select(0, pattern.inverse.narrow(0, n, n));
  return at::addcmul(re, pattern.factors, im).mul_(scaling / (static_cast<double>(plan.out_features) * plan.in_features));
}

// g^T x accumulated in float32 (or float64): on CUDA a half-precision GEMM with a float32 result, elsewhere the
// operands converted first.
at::Tensor outer_sum(const at::Tensor& g2d, const at::Tensor& x2d, at::ScalarType work) {
  if (g2d.is_cuda() && g2d.scalar_type() == x2d.scalar_type() && work == at::kFloat &&
      (g2d.scalar_type() == at::kHalf || g2d.scalar_type() == at::kBFloat16)) {
    return at::mm(g2d.t(), x2d, at::kFloat);
  }
  return g2d.to(work).t().mm(x2d.to(work));
}

// delta_W in `out_dtype` from the plan: the scaled coefficients scattered into the doubled Hermitian half spectrum
// (both placements of every entry in one accumulating write; the scaling and irfft2's 1/(d1 d2) folded into the n
// coefficients, so the transform runs unnormalised and nothing passes over out x in again), then one irfft2.
// Kernels: zeros, the coefficients' scale, the scatter, the transform, and the cast where out_dtype differs.
at::Tensor dense_delta(const at::Tensor& spectrum, const IndexPlan& plan, double scaling, at::ScalarType out_dtype) {
  const int64_t d1 = plan.out_features, d2 = plan.in_features;
  const auto work = compute_dtype(spectrum.scalar_type(), spectrum.scalar_type());
  auto buffer = at::zeros({d1 + 1, d2 / 2 + 1}, spectrum.options().dtype(c10::toComplexType(work)));
  const auto coeff = spectrum.to(work).mul(0.5 * scaling / (static_cast<double>(d1) * d2));
  at::real(buffer).index_put_({plan.scatter_rows, plan.scatter_cols}, coeff, /*accumulate=*/true);
  return at::fft_irfft2(buffer.narrow(0, 0, d1), std::vector<int64_t>{d1, d2}, {0, 1}, "forward").to(out_dtype);
}

// The spectrum's gradient from G = g^T x (float32/float64, [d1, d2], any layout): Re(rfft2(G)) read at the n entries
// (by position pairs, so the transform's output layout does not matter: on CUDA it is column-major).
at::Tensor dense_grad_spectrum(const at::Tensor& outer, const IndexPlan& plan, double scaling,
                               at::ScalarType spectrum_dtype) {
  const auto spec = at::fft_rfft2(outer, c10::nullopt, {0, 1});
  const double norm = scaling / (static_cast<double>(plan.out_features) * plan.in_features);
  return at::index(at::real(spec), c10::List<std::optional<at::Tensor>>({plan.gather_rows, plan.gather_cols}))
      .mul_(norm)
      .to(spectrum_dtype);
}

// The dense route's operand for a model of dtype `x_dtype`: W + delta_W when x has the spectrum's dtype (one GEMM
// applies the whole layer), else delta_W in the model's dtype (applied beside the base GEMM, float32 accumulation).
at::Tensor dense_operand_of(at::ScalarType x_dtype, const at::Tensor& weight, const at::Tensor& spectrum,
                            const IndexPlan& plan, double scaling) {
  auto operand = dense_delta(spectrum, plan, scaling, x_dtype);
  return x_dtype == spectrum.scalar_type() ? operand.add_(weight) : operand;
}

// The dense route's forward over x's rows: the output, and the dense operand it applied.
std::pair<at::Tensor, at::Tensor> dense_forward(const at::Tensor& x2d, const at::Tensor& weight,
                                                const std::optional<at::Tensor>& bias, const at::Tensor& spectrum,
                                                const IndexPlan& plan, double scaling) {
  const auto operand = dense_operand_of(x2d.scalar_type(), weight, spectrum, plan, scaling);
  if (x2d.scalar_type() == spectrum.scalar_type()) return {at::linear(x2d, operand, bias), operand};
  return {at::linear(x2d, weight, bias).addmm_(x2d, operand.t()), operand};
}

// grad_x of the dense route from its operand (dense_forward's).
at::Tensor dense_input_grad(const at::Tensor& g2d, const at::Tensor& weight, const at::Tensor& operand, bool same) {
  return same ? g2d.mm(operand) : g2d.mm(weight).addmm_(g2d, operand);
}

}  // namespace

bool dense_capable(at::ScalarType x, at::ScalarType spectrum) {
  return x == spectrum || half_precision_model(x, spectrum);
}

SparsePattern build_sparse_pattern(const IndexPlan& plan, SparseUse use, at::ScalarType real) {
  at::AutoDispatchBelowADInplaceOrView guard;
  switch (use) {
    case SparseUse::Forward:
      return operator_pattern(plan.cols, plan.rows, plan.in_features, plan.out_features, real);
    case SparseUse::GradX:
      return operator_pattern(plan.rows, plan.cols, plan.out_features, plan.in_features, real);
    case SparseUse::GradSpectrum: break;
  }
  return sampling_pattern(plan, real);
}

at::Tensor delta_weight_generic(const at::Tensor& spectrum, const at::Tensor& indices, int64_t out_features,
                                int64_t in_features, double scaling) {
  check_spectrum_and_indices("delta_weight", spectrum, indices, out_features, in_features);
  return dense_delta(spectrum, *index_plan(indices, out_features, in_features), scaling, spectrum.scalar_type());
}

at::Tensor delta_weight_backward_generic(const at::Tensor& grad, const at::Tensor& spectrum, const at::Tensor& indices,
                                         int64_t out_features, int64_t in_features, double scaling) {
  check_spectrum_and_indices("_delta_weight_backward", spectrum, indices, out_features, in_features);
  TORCH_CHECK(grad.dim() == 2 && grad.size(0) == out_features && grad.size(1) == in_features,
              "fourierft._delta_weight_backward: grad must have shape [", out_features, ", ", in_features, "], got ",
              grad.sizes());
  const auto work = compute_dtype(grad.scalar_type(), spectrum.scalar_type());
  return dense_grad_spectrum(grad.to(work), *index_plan(indices, out_features, in_features), scaling,
                             spectrum.scalar_type());
}

at::Tensor spectral_linear_generic(const at::Tensor& x, const at::Tensor& spectrum, const at::Tensor& indices,
                                   int64_t out_features, int64_t in_features, double scaling) {
  check_spectrum_and_indices("spectral_linear", spectrum, indices, out_features, in_features);
  check_input("spectral_linear", x, spectrum, in_features);
  const auto work = compute_dtype(x.scalar_type(), spectrum.scalar_type());
  const auto x2d = x.reshape({-1, in_features}).to(work);
  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end());
  out_shape.back() = out_features;
  if (x2d.size(0) == 0) return at::zeros(out_shape, x.options());
  const auto plan = index_plan(indices, out_features, in_features);
  const auto y = spectral_apply(x2d, spectrum.to(work), *plan, SparseUse::Forward,
                                scaling / static_cast<double>(in_features));
  return y.to(x.scalar_type()).view(out_shape);
}

std::tuple<at::Tensor, at::Tensor> spectral_linear_backward_generic(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& spectrum, const at::Tensor& indices,
    int64_t out_features, int64_t in_features, double scaling, bool need_grad_x, bool need_grad_spectrum) {
  check_spectral_backward("_spectral_linear_backward", grad_out, x, spectrum, indices, out_features, in_features,
                          need_grad_spectrum);
  const auto work = compute_dtype(x.scalar_type(), spectrum.scalar_type());
  const auto g2d = grad_out.reshape({-1, out_features}).to(work);
  const int64_t rows = g2d.size(0);
  std::vector<int64_t> shape(grad_out.sizes().begin(), grad_out.sizes().end());
  shape.back() = in_features;
  const auto x_options = grad_out.options().dtype(x.scalar_type());
  at::Tensor grad_x = at::empty({0}, x_options);
  at::Tensor grad_spectrum = at::empty({0}, spectrum.options());
  if (rows == 0) {
    if (need_grad_x) grad_x = at::zeros(shape, x_options);
    if (need_grad_spectrum) grad_spectrum = at::zeros_like(spectrum);
    return {grad_x, grad_spectrum};
  }
  if (!need_grad_x && !need_grad_spectrum) return {grad_x, grad_spectrum};
  const auto coeff = spectrum.to(work);
  const auto plan = index_plan(indices, out_features, in_features);
  if (need_grad_x) {
    grad_x = spectral_apply(g2d, coeff, *plan, SparseUse::GradX, scaling / static_cast<double>(out_features))
                 .to(x.scalar_type())
                 .view(shape);
  }
  if (need_grad_spectrum) {
    // The input's spectrum is recomputed from the saved input (saved instead of its spectrum).
    const auto g_half = interleaved(at::fft_rfft(g2d, c10::nullopt, -1));
    const auto x_half = interleaved(at::fft_rfft(x.reshape({-1, in_features}).to(work), c10::nullopt, -1));
    grad_spectrum = spectral_grad_spectrum(g_half, x_half, *plan, scaling, work).to(spectrum.scalar_type());
  }
  return {grad_x, grad_spectrum};
}

at::Tensor linear_generic(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                          const at::Tensor& spectrum, const at::Tensor& indices, int64_t out_features,
                          int64_t in_features, double scaling) {
  check_linear("linear", x, weight, bias, spectrum, indices, out_features, in_features);
  const auto result_dtype = linear_result_dtype(x.scalar_type(), spectrum.scalar_type());
  const auto x2d = x.reshape({-1, in_features});
  const int64_t rows = x2d.size(0);
  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end());
  out_shape.back() = out_features;
  if (rows == 0) return at::linear(x, weight, bias).to(result_dtype);
  const LayerCall call{x.device().type(), x.scalar_type(), rows, out_features, in_features, spectrum.size(0), false,
                       spectrum.scalar_type()};
  if (linear_routes(call).forward == LinearPath::Dense) {
    const auto plan = index_plan(indices, out_features, in_features);
    return dense_forward(x2d, weight, bias, spectrum, *plan, scaling).first.view(out_shape);
  }
  // PEFT's composition: the base layer in x's dtype, the adapter in the spectrum's, the sum in result_dtype.
  return at::add(at::linear(x, weight, bias),
                 spectral_linear_generic(x.to(spectrum.scalar_type()), spectrum, indices, out_features, in_features,
                                         scaling))
      .to(result_dtype);
}

std::tuple<at::Tensor, at::Tensor> linear_dense_forward_generic(
    const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias, const at::Tensor& spectrum,
    const at::Tensor& indices, int64_t out_features, int64_t in_features, double scaling) {
  check_linear("_linear_dense_forward", x, weight, bias, spectrum, indices, out_features, in_features);
  TORCH_CHECK(dense_capable(x.scalar_type(), spectrum.scalar_type()), "fourierft._linear_dense_forward: the dense "
              "route needs x of the spectrum's dtype or a bfloat16/float16 x with a float32 spectrum, got x ",
              x.scalar_type(), " and spectrum ", spectrum.scalar_type());
  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end());
  out_shape.back() = out_features;
  auto [y, operand] = dense_forward(x.reshape({-1, in_features}), weight, bias, spectrum,
                                    *index_plan(indices, out_features, in_features), scaling);
  return {y.view(out_shape), operand};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> linear_backward_generic(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& spectrum,
    const at::Tensor& indices, int64_t out_features, int64_t in_features, double scaling, bool need_grad_x,
    bool need_grad_weight, bool need_grad_bias, bool need_grad_spectrum,
    const std::optional<at::Tensor>& dense_operand) {
  check_linear_backward("_linear_backward", grad_out, x, weight, spectrum, indices, out_features, in_features,
                        need_grad_weight || need_grad_spectrum);
  const auto g2d = grad_out.reshape({-1, out_features});
  const int64_t rows = g2d.size(0);
  std::vector<int64_t> grad_x_shape(grad_out.sizes().begin(), grad_out.sizes().end());
  grad_x_shape.back() = in_features;
  at::Tensor grad_x = at::empty({0}, grad_out.options().dtype(x.scalar_type()));
  at::Tensor grad_weight = at::empty({0}, weight.options());
  at::Tensor grad_bias = at::empty({0}, weight.options());
  at::Tensor grad_spectrum = at::empty({0}, spectrum.options());
  const bool need_x = need_grad_weight || need_grad_spectrum;
  const auto x2d = need_x ? x.reshape({-1, in_features}) : at::Tensor();
  if (need_grad_weight) grad_weight = g2d.to(weight.scalar_type()).t().mm(x2d.to(weight.scalar_type()));
  if (need_grad_bias) grad_bias = g2d.sum(0).to(weight.scalar_type());
  if (rows == 0) {
    if (need_grad_x) grad_x = at::zeros(grad_x_shape, grad_out.options().dtype(x.scalar_type()));
    if (need_grad_spectrum) grad_spectrum = at::zeros_like(spectrum);
    return {grad_x, grad_weight, grad_bias, grad_spectrum};
  }
  const bool same = x.scalar_type() == spectrum.scalar_type();
  const LayerCall call{grad_out.device().type(), x.scalar_type(), rows, out_features, in_features, spectrum.size(0),
                       true, spectrum.scalar_type()};
  const auto routes = linear_backward_routes(call, need_grad_x, need_grad_spectrum);
  // The forward's dense operand, when it was kept (set_keep_delta), replaces rebuilding delta_W.
  const bool kept = dense_operand.has_value() && dense_operand->defined();
  TORCH_CHECK(!kept || (dense_operand->sizes() == weight.sizes() && dense_operand->scalar_type() == x.scalar_type() &&
                        dense_capable(x.scalar_type(), spectrum.scalar_type())),
              "fourierft._linear_backward: dense_operand must be _linear_dense_forward's second result for this call "
              "(shape ", weight.sizes(), ", dtype ", x.scalar_type(), "), got shape ", dense_operand->sizes(),
              " and dtype ", dense_operand->scalar_type());
  const bool dense_grad_x = need_grad_x && (kept || routes.grad_x == LinearPath::Dense);
  const bool dense_grad_c = need_grad_spectrum && routes.grad_spectrum == LinearPath::Dense;
  if (dense_grad_x || dense_grad_c) {
    const auto plan = index_plan(indices, out_features, in_features);
    if (dense_grad_x) {
      const auto operand =
          kept ? *dense_operand : dense_operand_of(x.scalar_type(), weight, spectrum, *plan, scaling);
      grad_x = dense_input_grad(g2d, weight, operand, same).view(grad_x_shape);
    }
    if (dense_grad_c) {
      const auto work = compute_dtype(x.scalar_type(), spectrum.scalar_type());
      grad_spectrum = dense_grad_spectrum(outer_sum(g2d, x2d, work), *plan, scaling, spectrum.scalar_type());
    }
  }
  const bool spectral_grad_x = need_grad_x && !dense_grad_x, spectral_grad_c = need_grad_spectrum && !dense_grad_c;
  if (spectral_grad_x || spectral_grad_c) {
    // PEFT's composition: the adapter's part in the spectrum's dtype, the base's in x's.
    const auto sdt = spectrum.scalar_type();
    auto [gx, gc] = spectral_linear_backward_generic(grad_out.to(sdt), spectral_grad_c ? x.to(sdt) : x, spectrum,
                                                     indices, out_features, in_features, scaling, spectral_grad_x,
                                                     spectral_grad_c);
    if (spectral_grad_x) {
      grad_x = at::matmul(grad_out.to(weight.scalar_type()), weight).add_(gx).to(x.scalar_type());
    }
    if (spectral_grad_c) grad_spectrum = gc;
  }
  return {grad_x, grad_weight, grad_bias, grad_spectrum};
}

}  // namespace detail
}  // namespace fourierft
