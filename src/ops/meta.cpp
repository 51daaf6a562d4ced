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
std::tuple<at::Tensor, at::Tensor> spectral_linear_forward_meta(const at::Tensor& x,
                                                                const at::Tensor& spectrum,
                                                                const at::Tensor&,
                                                                int64_t out_features,
                                                                int64_t in_features, double) {
  TORCH_CHECK(x.dim() >= 1 && x.sym_size(-1) == in_features, "fourierft.spectral_linear: input "
              "must have last dimension in_features=", in_features, ", got shape ", x.sym_sizes());
  TORCH_CHECK(x.device() == spectrum.device(), "fourierft.spectral_linear: input and spectrum "
              "must be on the same device, got input on ", x.device(), " and spectrum on ",
              spectrum.device());
  auto out_shape = x.sym_sizes().vec();
  out_shape.back() = out_features;
  const auto work = compute_dtype(x.scalar_type(), spectrum.scalar_type());
  const c10::SymInt rows = x.sym_numel() / in_features;
  return {at::empty_symint(out_shape, x.options()),
          at::empty_symint({rows, c10::SymInt(in_features / 2 + 1)},
                           x.options().dtype(c10::toComplexType(work)))};
}

std::tuple<at::Tensor, at::Tensor> spectral_linear_backward_meta(
    const at::Tensor& grad_out, const at::Tensor&, const at::Tensor& spectrum, const at::Tensor&,
    int64_t, int64_t in_features, double, at::ScalarType x_dtype, bool need_grad_x,
    bool need_grad_spectrum) {
  auto shape = grad_out.sym_sizes().vec();
  shape.back() = in_features;
  const auto x_options = grad_out.options().dtype(x_dtype);
  return {need_grad_x ? at::empty_symint(shape, x_options) : at::empty({0}, x_options),
          need_grad_spectrum ? at::empty_like(spectrum) : at::empty({0}, spectrum.options())};
}

at::Tensor spectral_linear_meta(const at::Tensor& x, const at::Tensor& spectrum,
                                const at::Tensor& indices, int64_t out_features,
                                int64_t in_features, double scaling) {
  return std::get<0>(
      spectral_linear_forward_meta(x, spectrum, indices, out_features, in_features, scaling));
}

}  // namespace fourierft::detail
