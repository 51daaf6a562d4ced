// fourierft::linear and its backward on the CPU.
#include "../internal.h"
#include "spectral_cpu.h"

#include <ATen/ATen.h>

#include <optional>
#include <tuple>
#include <vector>

// The whole adapted layer, y = x W^T + b + x delta_W^T, by the path the cost model picks:
//   spectral: the blocked pipeline (spectral_linear_cpu.cpp) writes x delta_W^T (+ b, in its epilogue) into y, and the GEMM
//             accumulates x W^T into it (beta = 1): no separate pass over y for either addition;
//   merged:   one GEMM with W + delta_W (delta_W from its irfft2, never kept: nothing of size
//             out x in outlives the call);
//   folded:   the two half-spectrum GEMMs between row transforms (folded_cpu.cpp), the GEMM with W
//             accumulating.
// The backward makes the same choice for grad_x (grad_x = g (W + delta_W), the pipeline or the folded GEMMs on
// g, and a GEMM accumulating g W), and computes grad_c by correlating the rfft of g's and x's blocks inside the
// pipeline's pass, or by the folded route's two GEMMs at large n (linear_grad_spectrum_is_dense).
namespace fourierft::detail {
namespace {

bool fused_dtypes(const at::Tensor& x, const at::Tensor& spectrum) {
  return x.scalar_type() == spectrum.scalar_type() &&
         (x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble);
}

at::Tensor merged_weight(const at::Tensor& weight, const at::Tensor& spectrum, const at::Tensor& indices,
                         int64_t out_features, int64_t in_features, double scaling) {
  return delta_weight_cpu(spectrum, indices, out_features, in_features, scaling).add_(weight);
}

}  // namespace

at::Tensor linear_cpu(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                      const at::Tensor& spectrum, const at::Tensor& indices, int64_t out_features,
                      int64_t in_features, double scaling) {
  if (generic_kernels_on_cpu()) return linear_generic(x, weight, bias, spectrum, indices, out_features, in_features, scaling);
  check_linear("linear", x, weight, bias, spectrum, indices, out_features, in_features);
  check_cpu("linear", x);
  if (!fused_dtypes(x, spectrum)) {
    // PEFT's composition: base in x's dtype, adapter in the spectrum's (float32 for a half-precision model),
    // the sum returned in linear_result_dtype (x's for a half-precision model, as PEFT's layer returns it).
    return at::add(at::linear(x, weight, bias),
                   spectral_linear_cpu(x.to(spectrum.scalar_type()), spectrum, indices, out_features, in_features,
                                       scaling))
        .to(linear_result_dtype(x.scalar_type(), spectrum.scalar_type()));
  }
  const auto x2d = x.reshape({-1, in_features}).contiguous();
  const int64_t rows = x2d.size(0);
  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end());
  out_shape.back() = out_features;
  if (rows == 0) return at::linear(x, weight, bias);
  const int64_t n = spectrum.size(0);
  const LayerCall call{c10::DeviceType::CPU, x.scalar_type(), rows, out_features, in_features, n, false};
  const auto route = linear_routes(call).forward;
  if (route == LinearPath::Dense) {
    return at::linear(x2d, merged_weight(weight, spectrum, indices, out_features, in_features, scaling), bias)
        .view(out_shape);
  }
  const auto coeff = spectrum.contiguous();
  const auto idx = indices.contiguous();
  const int64_t* u = idx.const_data_ptr<int64_t>();
  const int64_t* v = u + n;
  const auto b = bias.has_value() && bias->defined() ? bias->to(x.scalar_type()).contiguous() : at::Tensor();
  if (route == LinearPath::Folded) {
    const auto folded = folded_coefficients(coeff, u, v, out_features, in_features, /*output_is_rows=*/true,
                                            0.5 * scaling / static_cast<double>(in_features));
    auto y = folded_apply(half_spectra(x2d), folded, /*output_is_rows=*/true, out_features);
    y.addmm_(x2d, weight.t());
    if (b.defined()) y.add_(b);
    return y.view(out_shape);
  }
  auto y = at::empty({rows, out_features}, x2d.options());
  pipeline_apply(x2d, in_features, coeff, v, u, out_features, scaling / static_cast<double>(in_features), y, b);
  y.addmm_(x2d, weight.t());
  return y.view(out_shape);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> linear_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& spectrum,
    const at::Tensor& indices, int64_t out_features, int64_t in_features, double scaling, bool need_grad_x,
    bool need_grad_weight, bool need_grad_bias, bool need_grad_spectrum,
    const std::optional<at::Tensor>& dense_operand) {
  // A kept dense operand comes from the ATen implementation's forward (set_keep_delta): its backward uses it.
  if (generic_kernels_on_cpu() || (dense_operand.has_value() && dense_operand->defined())) {
    return linear_backward_generic(grad_out, x, weight, spectrum, indices, out_features, in_features, scaling,
                                   need_grad_x, need_grad_weight, need_grad_bias, need_grad_spectrum, dense_operand);
  }
  check_linear_backward("_linear_backward", grad_out, x, weight, spectrum, indices, out_features, in_features,
                        need_grad_weight || need_grad_spectrum);
  check_cpu("_linear_backward", grad_out);
  const auto g2d = grad_out.reshape({-1, out_features}).contiguous();
  const int64_t rows = g2d.size(0);
  const bool need_x = need_grad_weight || need_grad_spectrum;
  const auto x2d = need_x ? x.reshape({-1, in_features}).contiguous() : at::Tensor();
  std::vector<int64_t> grad_x_shape(grad_out.sizes().begin(), grad_out.sizes().end());
  grad_x_shape.back() = in_features;
  at::Tensor grad_x = at::empty({0}, grad_out.options().dtype(x.scalar_type()));
  at::Tensor grad_weight = at::empty({0}, weight.options());
  at::Tensor grad_bias = at::empty({0}, weight.options());
  at::Tensor grad_spectrum = at::empty({0}, spectrum.options());
  if (need_grad_weight) grad_weight = rows == 0 ? at::zeros_like(weight) : g2d.t().mm(x2d.to(g2d.scalar_type()));
  if (need_grad_bias) grad_bias = g2d.sum(0).to(weight.scalar_type());
  if (!fused_dtypes(grad_out, spectrum) || grad_out.scalar_type() != x.scalar_type()) {
    // PEFT's composition (see linear_cpu): the base part in x's dtype, the adapter part in the spectrum's.
    auto [gx, gc] = spectral_linear_backward_cpu(grad_out.to(spectrum.scalar_type()),
                                                 need_grad_spectrum ? x.to(spectrum.scalar_type()) : x, spectrum,
                                                 indices, out_features, in_features, scaling, need_grad_x,
                                                 need_grad_spectrum);
    if (need_grad_x) grad_x = at::matmul(grad_out.to(weight.scalar_type()), weight).add_(gx).to(x.scalar_type());
    if (need_grad_spectrum) grad_spectrum = gc;
    return {grad_x, grad_weight, grad_bias, grad_spectrum};
  }
  if (rows == 0) {
    if (need_grad_x) grad_x = at::zeros(grad_x_shape, grad_out.options());
    if (need_grad_spectrum) grad_spectrum = at::zeros_like(spectrum);
    return {grad_x, grad_weight, grad_bias, grad_spectrum};
  }
  const int64_t n = spectrum.size(0);
  const auto coeff = spectrum.contiguous();
  const auto idx = indices.contiguous();
  const int64_t* u = idx.const_data_ptr<int64_t>();
  const int64_t* v = u + n;
  // The spectrum's gradient by the folded route's GEMMs, or by correlation inside the pipeline's pass over g and
  // x (then grad_x by another route saves only about half of that pass).
  const LayerCall call{c10::DeviceType::CPU, x.scalar_type(), rows, out_features, in_features, n, true};
  const auto routes = linear_backward_routes(call, need_grad_x, need_grad_spectrum);
  const bool folded_grad_c = routes.grad_spectrum == LinearPath::Folded;
  const bool correlate = need_grad_spectrum && !folded_grad_c;
  const auto route = routes.grad_x;
  std::pair<at::Tensor, at::Tensor> g_spec;
  if (folded_grad_c || (need_grad_x && route == LinearPath::Folded)) g_spec = half_spectra(g2d);
  if (folded_grad_c) {
    grad_spectrum =
        folded_grad_spectrum(g_spec, half_spectra(x2d), u, v, out_features, in_features, scaling, spectrum);
  }
  at::Tensor gx2d;
  if (need_grad_x && route == LinearPath::Dense) {
    grad_x = g2d.mm(merged_weight(weight, spectrum, indices, out_features, in_features, scaling));
  } else if (need_grad_x && route == LinearPath::Folded) {
    const auto folded = folded_coefficients(coeff, u, v, out_features, in_features, /*output_is_rows=*/false,
                                            0.5 * scaling / static_cast<double>(out_features));
    gx2d = folded_apply(g_spec, folded, /*output_is_rows=*/false, in_features);
  } else if (need_grad_x) {
    gx2d = at::empty({rows, in_features}, g2d.options());
  }
  const bool pipeline_grad_x = need_grad_x && route == LinearPath::Spectral;
  if (pipeline_grad_x || correlate) {
    at::Tensor pipeline_gx = pipeline_grad_x ? gx2d : at::Tensor();
    const auto grad_c = pipeline_backward(g2d, correlate ? x2d : at::Tensor(), coeff, u, v, out_features,
                                          in_features, scaling, pipeline_gx, spectrum);
    if (correlate) grad_spectrum = grad_c;
  }
  if (gx2d.defined()) grad_x = gx2d.addmm_(g2d, weight);
  if (need_grad_x) grad_x = grad_x.view(grad_x_shape);
  return {grad_x, grad_weight, grad_bias, grad_spectrum};
}

}  // namespace fourierft::detail
