// Used by tests/python/integration/test_checkpoint_peft.py: builds the C++ twin of tests/data/make_peft_twin.py,
// loads the base weights, adds a FourierFT adapter (random spectra, a changed head), saves it with
// save_pretrained to argv[1], and writes a fixed input and this model's output to argv[1]/io.safetensors.
#include <fourierft/fourierft.h>
#include <torch/torch.h>

#include "twin_model.h"

#include <cstdio>

namespace st = fourierft::safetensors;

using fourierft::testing::Twin;

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s <out dir> <base.safetensors>\n", argv[0]);
    return 2;
  }
  torch::manual_seed(7);
  Twin twin;
  {
    torch::NoGradGuard no_grad;
    auto params = twin->named_parameters();
    for (const auto& [name, value] : st::load(argv[2]).tensors) params[name].copy_(value);
  }
  auto peft = fourierft::get_peft_model(
      twin.ptr(), fourierft::FourierFTConfig().target_modules(".*\\.(q|fc)").n_frequency(60).scaling(25.0)
                      .random_loc_seed(2024).modules_to_save(std::vector<std::string>{"classifier"}));
  {
    torch::NoGradGuard no_grad;
    twin->classifier->bias.add_(0.3);
  }
  peft.save_pretrained(argv[1]);
  torch::NoGradGuard no_grad;
  const auto x = torch::randn({6, 16});
  st::save(std::string(argv[1]) + "/io.safetensors", {{"x", x}, {"y", twin(x)}});
  return 0;
}
