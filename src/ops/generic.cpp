// The FourierFT ops written with ATen operations only, so that they run on any device PyTorch supports:
// registered for CUDA (cuFFT for the transforms, index kernels for the gathers and scatters, no host
// synchronisation), and reachable on CPU with fourierft::set_generic_kernels(true), where the tests hold
// them to the fused CPU kernels and to PEFT's formula. Same math as cpu/ (DESIGN.md section 2), with the
// gathers as [rows, n] tensors instead of fused loops: more memory traffic, no custom kernel.
#include "internal.h"

#include <fourierft/ops.h>

#include <ATen/ATen.h>

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

// conj(fft(signal))[:, k] for the columns k (int64 [n]) of a real signal of length `len`, read from its
// half spectrum (rfft): conj(R[k]) for k <= len/2, R[len - k] above. [rows, n] complex.
at::Tensor conj_spectrum_at(const at::Tensor& half_spectrum, const at::Tensor& k, int64_t len) {
  const auto lower = k.le(len / 2);
  const auto bins = at::where(lower, k, len - k);
  const auto values = half_spectrum.index_select(1, bins);
  return at::where(lower, at::conj_physical(values), values);
}

// Re(ifft_p(Z)) * factor for each row, with Z[dst_k] += coeff_k * column k of `gathered` ([rows, n]),
// through the half spectrum H2[j] = Z[j] + conj(Z[-j]) (irfft(H2) = 2 Re(ifft(Z))). An entry lands in
// bin dst when dst <= p/2 and, conjugated, in bin p - dst when that is <= p/2 (both for bins 0, p/2).
at::Tensor spectral_apply(const at::Tensor& gathered, const at::Tensor& coeff, const at::Tensor& dst, int64_t len,
                          double factor) {
  const int64_t rows = gathered.size(0);
  const auto values = gathered * coeff.unsqueeze(0);
  auto half = at::zeros({rows, len / 2 + 1}, values.options());
  const auto zero = at::zeros({}, values.options());
  const auto lower = dst.le(len / 2);
  half.index_add_(1, at::where(lower, dst, 0), at::where(lower.unsqueeze(0), values, zero));
  const auto mirror = (len - dst).remainder(len);
  const auto mirrored = mirror.le(len / 2);
  half.index_add_(1, at::where(mirrored, mirror, 0), at::where(mirrored.unsqueeze(0), at::conj_physical(values), zero));
  return at::fft_irfft(half, len, -1).mul_(0.5 * factor);
}

}  // namespace

at::Tensor delta_weight_generic(const at::Tensor& spectrum, const at::Tensor& indices, int64_t out_features,
                                int64_t in_features, double scaling) {
  check_spectrum_and_indices("delta_weight", spectrum, indices, out_features, in_features);
  const auto work = compute_dtype(spectrum.scalar_type(), spectrum.scalar_type());
  const auto coeff = at::complex(spectrum.to(work), at::zeros({}, spectrum.options().dtype(work)));
  const auto u = indices[0], v = indices[1];
  const int64_t half = in_features / 2 + 1;
  // Doubled Hermitian part of the real sparse F, kept where the column lies in the half spectrum.
  auto spec = at::zeros({out_features * half}, coeff.options());
  const auto zero = at::zeros({}, coeff.options());
  const auto keep = v.lt(half);
  spec.index_add_(0, at::where(keep, u * half + v, 0), at::where(keep, coeff, zero));
  const auto mu = (out_features - u).remainder(out_features), mv = (in_features - v).remainder(in_features);
  const auto keep_mirror = mv.lt(half);
  spec.index_add_(0, at::where(keep_mirror, mu * half + mv, 0), at::where(keep_mirror, coeff, zero));
  auto dw = at::fft_irfft2(spec.view({out_features, half}), std::vector<int64_t>{out_features, in_features}, {0, 1});
  return dw.mul_(0.5 * scaling).to(spectrum.scalar_type());
}

at::Tensor delta_weight_backward_generic(const at::Tensor& grad, const at::Tensor& spectrum, const at::Tensor& indices,
                                         int64_t out_features, int64_t in_features, double scaling) {
  check_spectrum_and_indices("_delta_weight_backward", spectrum, indices, out_features, in_features);
  TORCH_CHECK(grad.dim() == 2 && grad.size(0) == out_features && grad.size(1) == in_features,
              "fourierft._delta_weight_backward: grad must have shape [", out_features, ", ", in_features, "], got ",
              grad.sizes());
  const auto work = compute_dtype(grad.scalar_type(), spectrum.scalar_type());
  const auto g_spec = at::fft_rfft2(grad.to(work), c10::nullopt, {0, 1});
  const int64_t half = in_features / 2 + 1;
  const auto u = indices[0], v = indices[1];
  // Re(fft2(G)[u, v]) = Re(fft2(G)[-u, -v]) for real G: read the mirror where v is outside the half.
  const auto upper = v.ge(half);
  const auto row = at::where(upper, (out_features - u).remainder(out_features), u);
  const auto col = at::where(upper, in_features - v, v);
  const double norm = scaling / (static_cast<double>(out_features) * in_features);
  return at::real(g_spec.view({-1}).index_select(0, row * half + col)).mul(norm).to(spectrum.scalar_type());
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
  const auto gathered = conj_spectrum_at(at::fft_rfft(x2d, c10::nullopt, -1), indices[1], in_features);
  const auto y = spectral_apply(gathered, spectrum.to(work), indices[0], out_features,
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
  const auto g_at_u = conj_spectrum_at(at::fft_rfft(g2d, c10::nullopt, -1), indices[0], out_features);
  if (need_grad_x) {
    grad_x = spectral_apply(g_at_u, spectrum.to(work), indices[1], in_features,
                            scaling / static_cast<double>(out_features))
                 .to(x.scalar_type())
                 .view(shape);
  }
  if (need_grad_spectrum) {
    // The input's spectrum is recomputed from the saved input (saved instead of its spectrum).
    const auto x_spec = at::fft_rfft(x.reshape({-1, in_features}).to(work), c10::nullopt, -1);
    const auto x_at_v = conj_spectrum_at(x_spec, indices[1], in_features);
    const double norm = scaling / (static_cast<double>(out_features) * in_features);
    grad_spectrum = at::real(x_at_v * g_at_u).sum(0, false, at::kDouble).mul(norm).to(spectrum.scalar_type());
  }
  return {grad_x, grad_spectrum};
}

at::Tensor linear_generic(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                          const at::Tensor& spectrum, const at::Tensor& indices, int64_t out_features,
                          int64_t in_features, double scaling) {
  check_linear("linear", x, weight, bias, spectrum, indices, out_features, in_features);
  // PEFT's composition: the base layer in x's dtype, the adapter in the spectrum's.
  return at::add(at::linear(x, weight, bias), spectral_linear_generic(x.to(spectrum.scalar_type()), spectrum, indices,
                                                                      out_features, in_features, scaling));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> linear_backward_generic(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& spectrum,
    const at::Tensor& indices, int64_t out_features, int64_t in_features, double scaling, bool need_grad_x,
    bool need_grad_weight, bool need_grad_bias, bool need_grad_spectrum) {
  check_linear_backward("_linear_backward", grad_out, x, weight, spectrum, indices, out_features, in_features,
                        need_grad_weight || need_grad_spectrum);
  const auto g2d = grad_out.reshape({-1, out_features});
  at::Tensor grad_x = at::empty({0}, grad_out.options().dtype(x.scalar_type()));
  at::Tensor grad_weight = at::empty({0}, weight.options());
  at::Tensor grad_bias = at::empty({0}, weight.options());
  if (need_grad_weight) grad_weight = g2d.to(weight.scalar_type()).t().mm(x.reshape({-1, in_features}));
  if (need_grad_bias) grad_bias = g2d.sum(0).to(weight.scalar_type());
  auto [gx, grad_spectrum] = spectral_linear_backward_generic(
      grad_out.to(spectrum.scalar_type()), need_grad_spectrum ? x.to(spectrum.scalar_type()) : x, spectrum, indices,
      out_features, in_features, scaling, need_grad_x, need_grad_spectrum);
  if (need_grad_x) grad_x = at::matmul(grad_out.to(weight.scalar_type()), weight).add_(gx).to(x.scalar_type());
  return {grad_x, grad_weight, grad_bias, grad_spectrum};
}

}  // namespace detail
}  // namespace fourierft
