// Meta kernels (shapes and dtypes only) for FakeTensor, torch.compile and opcheck. Symbolic sizes
// throughout, so that torch.compile with dynamic shapes can trace the ops.
#include "internal.h"

#include <ATen/ATen.h>

#include <vector>

namespace fourierft::detail {

at::Tensor delta_weight_meta(const at::Tensor& spectrum, const at::Tensor& indices,
                             int64_t out_features, int64_t in_features, double) {
  check_dims("delta_weight", out_features, in_features);
  return at::empty({out_features, in_features}, spectrum.options());
}

at::Tensor delta_weight_backward_meta(const at::Tensor&, const at::Tensor& spectrum,
                                      const at::Tensor&, int64_t, int64_t, double) {
  return at::empty_like(spectrum);
}

// Symbolic sizes throughout, so that torch.compile with dynamic shapes can trace these.
at::Tensor spectral_linear_meta(const at::Tensor& x, const at::Tensor& spectrum, const at::Tensor&,
                                int64_t out_features, int64_t in_features, double) {
  TORCH_CHECK(x.dim() >= 1 && x.sym_size(-1) == in_features, "fourierft.spectral_linear: input "
              "must have last dimension in_features=", in_features, ", got shape ", x.sym_sizes());
  TORCH_CHECK(x.device() == spectrum.device(), "fourierft.spectral_linear: input and spectrum "
              "must be on the same device, got input on ", x.device(), " and spectrum on ",
              spectrum.device());
  auto out_shape = x.sym_sizes().vec();
  out_shape.back() = out_features;
  return at::empty_symint(out_shape, x.options());
}

std::tuple<at::Tensor, at::Tensor> spectral_linear_backward_meta(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& spectrum, const at::Tensor&,
    int64_t, int64_t in_features, double, bool need_grad_x, bool need_grad_spectrum) {
  auto shape = grad_out.sym_sizes().vec();
  shape.back() = in_features;
  const auto x_options = grad_out.options().dtype(x.scalar_type());
  return {need_grad_x ? at::empty_symint(shape, x_options) : at::empty({0}, x_options),
          need_grad_spectrum ? at::empty_like(spectrum) : at::empty({0}, spectrum.options())};
}

at::Tensor linear_meta(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>&,
                       const at::Tensor& spectrum, const at::Tensor&, int64_t out_features, int64_t in_features,
                       double) {
  TORCH_CHECK(x.dim() >= 1 && x.sym_size(-1) == in_features, "fourierft.linear: input must have last dimension "
              "in_features=", in_features, ", got shape ", x.sym_sizes());
  TORCH_CHECK(weight.scalar_type() == x.scalar_type(), "fourierft.linear: weight and input must have the same "
              "dtype, got weight ", weight.scalar_type(), " and input ", x.scalar_type());
  auto out_shape = x.sym_sizes().vec();
  out_shape.back() = out_features;
  return at::empty_symint(out_shape, x.options().dtype(linear_result_dtype(x.scalar_type(), spectrum.scalar_type())));
}

std::tuple<at::Tensor, at::Tensor> linear_dense_forward_meta(
    const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias, const at::Tensor& spectrum,
    const at::Tensor& indices, int64_t out_features, int64_t in_features, double scaling) {
  return {linear_meta(x, weight, bias, spectrum, indices, out_features, in_features, scaling),
          at::empty({out_features, in_features}, weight.options())};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> linear_backward_meta(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& spectrum,
    const at::Tensor&, int64_t out_features, int64_t in_features, double, bool need_grad_x, bool need_grad_weight,
    bool need_grad_bias, bool need_grad_spectrum, const std::optional<at::Tensor>&) {
  auto shape = grad_out.sym_sizes().vec();
  shape.back() = in_features;
  const auto x_options = grad_out.options().dtype(x.scalar_type());
  return {need_grad_x ? at::empty_symint(shape, x_options) : at::empty({0}, x_options),
          need_grad_weight ? at::empty_like(weight) : at::empty({0}, weight.options()),
          need_grad_bias ? at::empty({out_features}, weight.options()) : at::empty({0}, weight.options()),
          need_grad_spectrum ? at::empty_like(spectrum) : at::empty({0}, spectrum.options())};
}

}  // namespace fourierft::detail
