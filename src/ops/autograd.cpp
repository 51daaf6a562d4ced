// Autograd: C++ autograd functions registered at the Autograd key. The kernels they call go through
// the dispatcher, so that tracing (torch.compile) sees the backward ops too; so do the public C++
// entry points (include/fourierft/ops.h).
#include "internal.h"

#include <fourierft/ops.h>

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>

#include <algorithm>

namespace fourierft {
namespace detail {

const c10::TypedOperatorHandle<decltype(spectral_linear_backward_cpu)>& backward_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("fourierft::_spectral_linear_backward", "")
                             .typed<decltype(spectral_linear_backward_cpu)>();
  return op;
}
const c10::TypedOperatorHandle<decltype(delta_weight_cpu)>& delta_weight_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("fourierft::delta_weight", "")
                             .typed<decltype(delta_weight_cpu)>();
  return op;
}
const c10::TypedOperatorHandle<decltype(delta_weight_backward_cpu)>& delta_weight_backward_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("fourierft::_delta_weight_backward", "")
                             .typed<decltype(delta_weight_backward_cpu)>();
  return op;
}
const c10::TypedOperatorHandle<decltype(spectral_linear_cpu)>& spectral_linear_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("fourierft::spectral_linear", "")
                             .typed<decltype(spectral_linear_cpu)>();
  return op;
}

const c10::TypedOperatorHandle<decltype(linear_cpu)>& linear_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("fourierft::linear", "")
                             .typed<decltype(linear_cpu)>();
  return op;
}
const c10::TypedOperatorHandle<decltype(linear_dense_forward_generic)>& linear_dense_forward_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("fourierft::_linear_dense_forward", "")
                             .typed<decltype(linear_dense_forward_generic)>();
  return op;
}
const c10::TypedOperatorHandle<decltype(linear_backward_cpu)>& linear_backward_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("fourierft::_linear_backward", "")
                             .typed<decltype(linear_backward_cpu)>();
  return op;
}

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

class SpectralLinearFunction : public torch::autograd::Function<SpectralLinearFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& spectrum,
                            const at::Tensor& indices, int64_t out_features, int64_t in_features,
                            double scaling) {
    at::AutoDispatchBelowADInplaceOrView guard;
    // The spectrum gradient needs the input (its spectrum is recomputed in the backward: the input is
    // usually alive anyway, its spectrum would be one more activation); the input gradient needs only
    // the spectrum.
    ctx->save_for_backward({spectrum.requires_grad() ? x : at::Tensor(), spectrum, indices});
    ctx->saved_data["out_features"] = out_features;
    ctx->saved_data["in_features"] = in_features;
    ctx->saved_data["scaling"] = scaling;
    ctx->saved_data["x_dtype"] = static_cast<int64_t>(x.scalar_type());
    return spectral_linear_op().call(x, spectrum, indices, out_features, in_features, scaling);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const bool need_x = ctx->needs_input_grad(0);
    const bool need_spectrum = ctx->needs_input_grad(1);
    at::Tensor x = saved[0];
    if (!x.defined()) {  // spectrum frozen: grad_x alone, which never reads the input
      x = at::empty({0}, grad_outputs[0].options().dtype(
                             static_cast<at::ScalarType>(ctx->saved_data["x_dtype"].toInt())));
    }
    auto [grad_x, grad_spectrum] = backward_op().call(
        grad_outputs[0], x, saved[1], saved[2], ctx->saved_data["out_features"].toInt(),
        ctx->saved_data["in_features"].toInt(), ctx->saved_data["scaling"].toDouble(), need_x,
        need_spectrum && saved[0].defined());
    return {need_x ? grad_x : at::Tensor(), need_spectrum ? grad_spectrum : at::Tensor(),
            at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

class LinearFunction : public torch::autograd::Function<LinearFunction> {
 public:
  // bias: an empty [0] tensor for none (autograd Functions record every tensor input's device).
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight,
                            const at::Tensor& bias, bool has_bias, const at::Tensor& spectrum,
                            const at::Tensor& indices, int64_t out_features, int64_t in_features, double scaling) {
    at::AutoDispatchBelowADInplaceOrView guard;
    // x is saved only for the spectrum's and the weight's gradients (grad_c recomputes its spectrum).
    const bool keep_x = spectrum.requires_grad() || weight.requires_grad();
    ctx->saved_data["out_features"] = out_features;
    ctx->saved_data["in_features"] = in_features;
    ctx->saved_data["scaling"] = scaling;
    ctx->saved_data["x_dtype"] = static_cast<int64_t>(x.scalar_type());
    ctx->saved_data["has_bias"] = has_bias;
    const auto maybe_bias = has_bias ? std::optional<at::Tensor>(bias) : std::nullopt;
    // set_keep_delta: the dense forward's operand, kept for grad_x (one weight-sized tensor until the backward).
    // (Not while tracing with symbolic shapes: the route depends on the token count.)
    const bool may_keep = keep_delta() && x.requires_grad() &&
                          !x.unsafeGetTensorImpl()->has_symbolic_sizes_strides() && x.numel() > 0;
    if (may_keep && keep_dense_operand(LayerCall{x.device().type(), x.scalar_type(), x.numel() / in_features,
                                                 out_features, in_features, spectrum.size(0), true,
                                                 spectrum.scalar_type()})) {
      auto [y, operand] = linear_dense_forward_op().call(x, weight, maybe_bias, spectrum, indices, out_features,
                                                          in_features, scaling);
      ctx->save_for_backward({keep_x ? x : at::Tensor(), weight, spectrum, indices, operand});
      return y;
    }
    ctx->save_for_backward({keep_x ? x : at::Tensor(), weight, spectrum, indices, at::Tensor()});
    return linear_op().call(x, weight, maybe_bias, spectrum, indices, out_features, in_features, scaling);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    at::Tensor x = saved[0];
    if (!x.defined()) {
      x = at::empty({0}, grad_outputs[0].options().dtype(
                             static_cast<at::ScalarType>(ctx->saved_data["x_dtype"].toInt())));
    }
    const bool need_x = ctx->needs_input_grad(0), need_weight = ctx->needs_input_grad(1),
               need_bias = ctx->needs_input_grad(2) && ctx->saved_data["has_bias"].toBool(),
               need_spectrum = ctx->needs_input_grad(3);  // tensor inputs only: has_bias is not one
    auto [grad_x, grad_weight, grad_bias, grad_spectrum] = linear_backward_op().call(
        grad_outputs[0], x, saved[1], saved[2], saved[3], ctx->saved_data["out_features"].toInt(),
        ctx->saved_data["in_features"].toInt(), ctx->saved_data["scaling"].toDouble(), need_x, need_weight,
        need_bias, need_spectrum, saved[4].defined() ? std::optional<at::Tensor>(saved[4]) : std::nullopt);
    return {need_x ? grad_x : at::Tensor(),       need_weight ? grad_weight : at::Tensor(),
            need_bias ? grad_bias : at::Tensor(), at::Tensor(),
            need_spectrum ? grad_spectrum : at::Tensor(),
            at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

class DeltaWeightFunction : public torch::autograd::Function<DeltaWeightFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& spectrum,
                            const at::Tensor& indices, int64_t out_features, int64_t in_features,
                            double scaling) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({spectrum, indices});
    ctx->saved_data["out_features"] = out_features;
    ctx->saved_data["in_features"] = in_features;
    ctx->saved_data["scaling"] = scaling;
    return delta_weight_op().call(spectrum, indices, out_features, in_features, scaling);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    auto grad = delta_weight_backward_op().call(
        grad_outputs[0].contiguous(), saved[0], saved[1], ctx->saved_data["out_features"].toInt(),
        ctx->saved_data["in_features"].toInt(), ctx->saved_data["scaling"].toDouble());
    return {grad, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor spectral_linear_autograd(const at::Tensor& x, const at::Tensor& spectrum,
                                    const at::Tensor& indices, int64_t out_features,
                                    int64_t in_features, double scaling) {
  return SpectralLinearFunction::apply(x, spectrum, indices, out_features, in_features, scaling);
}

at::Tensor linear_autograd(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                           const at::Tensor& spectrum, const at::Tensor& indices, int64_t out_features,
                           int64_t in_features, double scaling) {
  const bool has_bias = bias.has_value() && bias->defined();
  return LinearFunction::apply(x, weight, has_bias ? *bias : at::empty({0}, weight.options()), has_bias, spectrum,
                               indices, out_features, in_features, scaling);
}

at::Tensor delta_weight_autograd(const at::Tensor& spectrum, const at::Tensor& indices,
                                 int64_t out_features, int64_t in_features, double scaling) {
  return DeltaWeightFunction::apply(spectrum, indices, out_features, in_features, scaling);
}

}  // namespace detail

using namespace detail;

at::Tensor entry_indices(int64_t out_features, int64_t in_features, int64_t n_frequency,
                         int64_t random_loc_seed) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("fourierft::entry_indices", "")
                             .typed<decltype(detail::entry_indices_impl)>();
  return op.call(out_features, in_features, n_frequency, random_loc_seed);
}

at::Tensor delta_weight(const at::Tensor& spectrum, const at::Tensor& indices, int64_t out_features,
                        int64_t in_features, double scaling) {
  return delta_weight_op().call(spectrum, indices, out_features, in_features, scaling);
}

at::Tensor spectral_linear(const at::Tensor& x, const at::Tensor& spectrum, const at::Tensor& indices,
                           int64_t out_features, int64_t in_features, double scaling) {
  return spectral_linear_op().call(x, spectrum, indices, out_features, in_features, scaling);
}

at::Tensor linear(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                  const at::Tensor& spectrum, const at::Tensor& indices, int64_t out_features, int64_t in_features,
                  double scaling) {
  return linear_op().call(x, weight, bias, spectrum, indices, out_features, in_features, scaling);
}

}  // namespace fourierft
