// Shared by test_robustness.cpp and test_threads.cpp (the latter is also built with AddressSanitizer).
#pragma once

#include "test_helpers.h"

namespace fourierft::testing {

// base(x) + x @ delta_W^T with PEFT's formula in float64 (independent of our kernels).
inline torch::Tensor reference_forward(fourierft::Linear& layer, const torch::Tensor& x, const std::string& name = "default") {
  torch::NoGradGuard no_grad;
  const auto& state = layer->adapter_state(name);
  const auto delta = reference_delta_weight(layer->spectrum(name), state.indices, layer->out_features(),
                                            layer->in_features(), state.scaling);
  const auto xd = x.to(torch::kDouble);
  return torch::nn::functional::linear(xd, layer->weight.to(torch::kDouble), layer->bias.to(torch::kDouble)) +
         xd.matmul(delta.t());
}

inline fourierft::Linear frozen_layer(fourierft::LinearPath path) {
  torch::manual_seed(3);
  fourierft::Linear layer(torch::nn::LinearOptions(24, 20), fourierft::FourierFTLinearOptions().forward_path(path));
  layer->update_layer("default", fourierft::AdapterOptions().n_frequency(60).scaling(20.0));
  layer->spectrum("default").requires_grad_(false);
  return layer;
}

}  // namespace fourierft::testing
