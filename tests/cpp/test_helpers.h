// Shared helpers for the C++ tests: the independent float64 reference (PEFT's dense formula,
// computed with a complex ifft2 and torch autograd), and error-message assertions.
#pragma once

#include <fourierft/fourierft.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <string>

namespace fourierft::testing {

// PEFT's get_delta_weight in float64: F = zeros(d1, d2); F[E0, E1] = c; Re(ifft2(F)) * alpha.
// Differentiable in c through torch's own complex autograd (independent of our kernels).
inline torch::Tensor reference_delta_weight(const torch::Tensor& c, const torch::Tensor& indices,
                                            int64_t d1, int64_t d2, double alpha) {
  auto dense = torch::zeros({d1, d2}, torch::dtype(torch::kComplexDouble));
  dense = dense.index_put({indices[0], indices[1]}, c.to(torch::kDouble).to(torch::kComplexDouble));
  return torch::real(torch::fft::ifft2(dense)) * alpha;
}

inline double relative_error(const torch::Tensor& actual, const torch::Tensor& expected) {
  const auto a = actual.to(torch::kDouble);
  const auto e = expected.to(torch::kDouble);
  const double denom = std::max(e.norm().item<double>(), 1e-300);
  return (a - e).norm().item<double>() / denom;
}

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

}  // namespace fourierft::testing

// Expects `statement` to throw a c10::Error whose message contains every listed substring.
#define EXPECT_ERROR_CONTAINS(statement, ...)                                              \
  do {                                                                                     \
    bool fourierft_thrown = false;                                                         \
    try {                                                                                  \
      statement;                                                                           \
    } catch (const c10::Error& error) {                                                    \
      fourierft_thrown = true;                                                             \
      const std::string message = error.what_without_backtrace();                          \
      for (const std::string& part : {__VA_ARGS__}) {                                      \
        EXPECT_NE(message.find(part), std::string::npos)                                   \
            << "error message lacks '" << part << "':\n" << message;                       \
      }                                                                                    \
    }                                                                                      \
    EXPECT_TRUE(fourierft_thrown) << "expected an error from: " #statement;                \
  } while (0)
