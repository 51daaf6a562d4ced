// The C++ twin of tests/data/twin_models.py (same module names: block.q, block.v, block.fc,
// classifier), shared by the checkpoint tests and the helper that saves an adapter for pytest.
#pragma once

#include <fourierft/fourierft.h>
#include <torch/torch.h>

namespace fourierft::testing {

struct BlockImpl : torch::nn::Module {
  fourierft::Linear q{nullptr}, v{nullptr}, fc{nullptr};
  BlockImpl() {
    q = register_module("q", fourierft::Linear(16, 16));
    v = register_module("v", fourierft::Linear(16, 16));
    fc = register_module("fc", fourierft::Linear(16, 24));
  }
  torch::Tensor forward(const torch::Tensor& x) { return torch::relu(fc(q(x) + v(x))); }
};
TORCH_MODULE(Block);

struct TwinImpl : torch::nn::Module {
  Block block{nullptr};
  fourierft::Linear classifier{nullptr};
  TwinImpl() {
    block = register_module("block", Block());
    classifier = register_module("classifier", fourierft::Linear(24, 3));
  }
  torch::Tensor forward(const torch::Tensor& x) { return classifier(block(x)); }
};
TORCH_MODULE(Twin);

}  // namespace fourierft::testing
