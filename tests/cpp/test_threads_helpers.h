// Helpers of the thread stress tests (test_threads.cpp, also built under ThreadSanitizer and AddressSanitizer).
#pragma once

#include "test_helpers.h"

namespace fourierft::testing {

inline fourierft::Linear frozen_layer(fourierft::LinearPath path) {
  torch::manual_seed(3);
  fourierft::Linear layer(torch::nn::LinearOptions(24, 20), fourierft::FourierFTLinearOptions().forward_path(path));
  layer->update_layer("default", fourierft::AdapterOptions().n_frequency(60).scaling(20.0));
  layer->spectrum("default").requires_grad_(false);
  return layer;
}

}  // namespace fourierft::testing
