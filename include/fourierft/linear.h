// fourierft::Linear: a drop-in replacement for torch::nn::Linear that carries FourierFT adapters
// in place.
//
// Why it exists (README.md, "Which modules can be adapted"): a LibTorch parent module calls its children through member
// holders (`fc1(x)`), so swapping a registered child with replace_module() changes nothing the
// forward uses. A model written with fourierft::Linear instead of torch::nn::Linear keeps its
// parameter names (`weight`, `bias`: pretrained state dicts load unchanged), initialises exactly
// like torch::nn::Linear, and adapters attach to the layer itself, so every path that reaches it
// (member holders, Sequential, ModuleList, ModuleDict) uses them.
//
//   struct NetImpl : torch::nn::Module {
//     fourierft::Linear q{nullptr};
//     NetImpl() { q = register_module("q", fourierft::Linear(768, 768)); }
//     torch::Tensor forward(torch::Tensor x) { return q(x); }
//   };
//   net->q->update_layer("default", fourierft::AdapterOptions().n_frequency(1000));
#pragma once

#include <fourierft/layer.h>

#include <torch/nn/options/linear.h>

namespace fourierft {

class LinearImpl : public torch::nn::Cloneable<LinearImpl>, public FourierFTLayer {
 public:
  LinearImpl(int64_t in_features, int64_t out_features)
      : LinearImpl(torch::nn::LinearOptions(in_features, out_features)) {}
  explicit LinearImpl(const torch::nn::LinearOptions& options,
                      FourierFTLinearOptions layer_options = {});

  /// Registers `weight` and `bias` and initialises them exactly as torch::nn::Linear does (same random
  /// draws). The `fourierft_spectrum` dict is registered with the first adapter and dropped with the
  /// last, so a layer without adapters saves and loads exactly like torch::nn::Linear.
  /// torch::nn::Module::train; going back to training drops the inference caches (a step uses none).
  void train(bool on = true) override {
    if (on) clear_caches();
    torch::nn::Cloneable<LinearImpl>::train(on);
  }
  void reset() override;
  void reset_parameters();
  void pretty_print(std::ostream& stream) const override;

  /// input @ weight^T + bias, plus every active adapter's input @ delta_W^T (PEFT semantics:
  /// nothing added while disabled or merged).
  torch::Tensor forward(const torch::Tensor& input);

  torch::nn::LinearOptions options;
  torch::Tensor weight;
  torch::Tensor bias;
  /// The adapters' spectra (`fourierft_spectrum.<adapter>`); empty holder while there are none.
  SpectrumDict fourierft_spectrum{nullptr};

 protected:
  torch::Tensor& base_weight() override { return weight; }
  SpectrumDictImpl& spectra() override;
  void release_spectra() override;
  const char* kind() const override { return "fourierft::Linear"; }
};
TORCH_MODULE(Linear);

}  // namespace fourierft
