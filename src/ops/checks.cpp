// Argument checks shared by every op. Messages name the op and the offending values.
#include "internal.h"

#include <ATen/ATen.h>

#include <algorithm>

namespace fourierft::detail {

void check_dims(const char* op, int64_t out_features, int64_t in_features) {
  TORCH_CHECK(out_features > 0 && in_features > 0, "fourierft.", op,
              ": out_features and in_features must be positive, got out_features=", out_features,
              ", in_features=", in_features);
}

void check_spectrum_and_indices(const char* op, const at::Tensor& spectrum,
                                const at::Tensor& indices, int64_t out_features,
                                int64_t in_features) {
  check_dims(op, out_features, in_features);
  TORCH_CHECK(spectrum.dim() == 1, "fourierft.", op,
              ": spectrum must be 1-D with n_frequency entries, got shape ", spectrum.sizes());
  TORCH_CHECK(at::isFloatingType(spectrum.scalar_type()), "fourierft.", op,
              ": spectrum must be a floating point tensor, got dtype ", spectrum.scalar_type());
  const int64_t n = spectrum.size(0);
  TORCH_CHECK(n >= 1 && n <= out_features * in_features, "fourierft.", op,
              ": n_frequency must be in [1, out_features * in_features] = [1, ",
              out_features * in_features, "], got n_frequency=", n, " (out_features=", out_features,
              ", in_features=", in_features, ")");
  TORCH_CHECK(indices.scalar_type() == at::kLong, "fourierft.", op,
              ": indices must be int64 (as returned by entry_indices), got dtype ",
              indices.scalar_type());
  TORCH_CHECK(indices.dim() == 2 && indices.size(0) == 2 && indices.size(1) == n, "fourierft.",
              op, ": indices must have shape [2, n_frequency] = [2, ", n, "], got shape ",
              indices.sizes());
  TORCH_CHECK(indices.device() == spectrum.device(), "fourierft.", op,
              ": indices and spectrum must be on the same device, got indices on ",
              indices.device(), " and spectrum on ", spectrum.device());
  if (indices.device().is_cpu()) {
    const auto idx = indices.contiguous();
    const int64_t* row = idx.data_ptr<int64_t>();
    // Fast path, every call: one branch-free pass (as unsigned, a negative index is out of range too).
    bool out_of_range = false;
    for (int64_t k = 0; k < n; ++k) {
      out_of_range |= static_cast<uint64_t>(row[k]) >= static_cast<uint64_t>(out_features);
      out_of_range |= static_cast<uint64_t>(row[n + k]) >= static_cast<uint64_t>(in_features);
    }
    if (!out_of_range) return;
    const auto [u_min, u_max] = std::minmax_element(row, row + n);
    const auto [v_min, v_max] = std::minmax_element(row + n, row + 2 * n);
    TORCH_CHECK(*u_min >= 0 && *u_max < out_features, "fourierft.", op,
                ": indices[0] (output frequencies) must lie in [0, out_features) = [0, ",
                out_features, "), got values in [", *u_min, ", ", *u_max, "]");
    TORCH_CHECK(*v_min >= 0 && *v_max < in_features, "fourierft.", op,
                ": indices[1] (input frequencies) must lie in [0, in_features) = [0, ", in_features,
                "), got values in [", *v_min, ", ", *v_max, "]");
  }
}

void check_input(const char* op, const at::Tensor& x, const at::Tensor& spectrum,
                 int64_t in_features) {
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) == in_features, "fourierft.", op,
              ": input must have last dimension in_features=", in_features, ", got shape ",
              x.sizes());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), "fourierft.", op,
              ": input must be floating point (float32, float64, float16 or bfloat16), got dtype ",
              x.scalar_type());
  TORCH_CHECK(x.device() == spectrum.device(), "fourierft.", op,
              ": input and spectrum must be on the same device, got input on ", x.device(),
              " and spectrum on ", spectrum.device());
}

void check_linear(const char* op, const at::Tensor& x, const at::Tensor& weight,
                  const std::optional<at::Tensor>& bias, const at::Tensor& spectrum, const at::Tensor& indices,
                  int64_t out_features, int64_t in_features) {
  check_spectrum_and_indices(op, spectrum, indices, out_features, in_features);
  check_input(op, x, spectrum, in_features);
  TORCH_CHECK(weight.dim() == 2 && weight.size(0) == out_features && weight.size(1) == in_features, "fourierft.",
              op, ": weight must have shape [out_features, in_features] = [", out_features, ", ", in_features,
              "], got ", weight.sizes());
  TORCH_CHECK(weight.scalar_type() == x.scalar_type() && weight.device() == x.device(), "fourierft.", op,
              ": weight and input must have the same dtype and device (as for torch.nn.functional.linear), got "
              "weight ", weight.scalar_type(), " on ", weight.device(), " and input ", x.scalar_type(), " on ",
              x.device());
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == out_features, "fourierft.", op,
                ": bias must have shape [out_features] = [", out_features, "], got ", bias->sizes());
    TORCH_CHECK(bias->scalar_type() == weight.scalar_type() && bias->device() == weight.device(), "fourierft.", op,
                ": bias must have the weight's dtype and device, got ", bias->scalar_type(), " on ",
                bias->device(), " and weight ", weight.scalar_type(), " on ", weight.device());
  }
}

void check_spectral_backward(const char* op, const at::Tensor& grad_out, const at::Tensor& x,
                             const at::Tensor& spectrum, const at::Tensor& indices, int64_t out_features,
                             int64_t in_features, bool need_x) {
  check_spectrum_and_indices(op, spectrum, indices, out_features, in_features);
  TORCH_CHECK(grad_out.dim() >= 1 && grad_out.size(-1) == out_features, "fourierft.", op,
              ": grad_out must have last dimension out_features=", out_features, ", got shape ", grad_out.sizes());
  TORCH_CHECK(!need_x || x.numel() == grad_out.numel() / out_features * in_features, "fourierft.", op,
              ": saved input has shape ", x.sizes(), ", expected ", grad_out.numel() / out_features,
              " rows of in_features=", in_features, " (grad_out has shape ", grad_out.sizes(), ")");
}

void check_linear_backward(const char* op, const at::Tensor& grad_out, const at::Tensor& x,
                           const at::Tensor& weight, const at::Tensor& spectrum, const at::Tensor& indices,
                           int64_t out_features, int64_t in_features, bool need_x) {
  check_spectral_backward(op, grad_out, x, spectrum, indices, out_features, in_features, need_x);
  TORCH_CHECK(weight.dim() == 2 && weight.size(0) == out_features && weight.size(1) == in_features, "fourierft.",
              op, ": weight must have shape [", out_features, ", ", in_features, "], got ", weight.sizes());
}

void check_cpu(const char* op, const at::Tensor& t) {
  TORCH_CHECK(t.device().is_cpu(), "fourierft.", op,
              ": only CPU tensors are supported by this build, got a tensor on ", t.device());
}

at::ScalarType compute_dtype(at::ScalarType a, at::ScalarType b) {
  return (a == at::kDouble || b == at::kDouble) ? at::kDouble : at::kFloat;
}

bool half_precision_model(at::ScalarType x, at::ScalarType spectrum) {
  return (x == at::kHalf || x == at::kBFloat16) && spectrum == at::kFloat;
}

at::ScalarType linear_result_dtype(at::ScalarType x, at::ScalarType spectrum) {
  return half_precision_model(x, spectrum) ? x : c10::promoteTypes(x, spectrum);
}

}  // namespace fourierft::detail
