// fourierft quick start (C++): wrap a frozen torch::nn::Linear with a FourierFT adapter, train the
// n spectral coefficients with AdamW, then merge the adapter into the weights for deployment.
//
// The task is a regression onto a "teacher" layer W0 + delta_W* whose delta_W* has its spectrum on
// the same entry matrix (random_loc_seed) as the student, so the student can recover it exactly.
#include <fourierft/fourierft.h>
#include <torch/torch.h>

#include <cstdio>

int main() {
  torch::manual_seed(0);
  const int64_t in = 256, out = 128, n = 500;

  // The pretrained layer, frozen. FourierFTLinear shares its weights (no copy).
  auto base = torch::nn::Linear(in, out);
  for (auto& p : base->parameters()) p.requires_grad_(false);

  fourierft::FourierFTLinear teacher(torch::nn::Linear(base->options));
  teacher->base_layer->weight.set_data(base->weight.clone());
  teacher->base_layer->bias.set_data(base->bias.clone());
  teacher->update_layer("default", fourierft::AdapterOptions().n_frequency(n).scaling(10.0));

  // The student starts at zero change (init_weights = true), like PEFT's identity init.
  fourierft::FourierFTLinear layer(base);
  layer->update_layer("default",
                      fourierft::AdapterOptions().n_frequency(n).scaling(10.0).init_weights(true));

  torch::optim::AdamW optimizer({layer->fourierft_spectrum->at("default")},
                                torch::optim::AdamWOptions(0.05).weight_decay(0.0));
  const auto x_test = torch::randn({512, in});
  const auto y_test = teacher(x_test).detach();
  const double initial = torch::mse_loss(layer(x_test), y_test).item<double>();
  for (int step = 0; step < 300; ++step) {
    const auto x = torch::randn({64, in});
    const auto loss = torch::mse_loss(layer(x), teacher(x).detach());
    optimizer.zero_grad();
    loss.backward();
    optimizer.step();
  }
  torch::NoGradGuard no_grad;
  const auto adapted = layer(x_test);
  const double final_loss = torch::mse_loss(adapted, y_test).item<double>();
  std::printf("trainable parameters: %lld (the base layer has %lld)\n",
              static_cast<long long>(n), static_cast<long long>(in * out + out));
  std::printf("test MSE to the teacher: %.3e before training, %.3e after\n", initial, final_loss);

  // Deployment: merge delta_W into the weights; the forward is then the plain linear layer.
  layer->merge(/*safe_merge=*/true);
  const double merge_diff = (layer(x_test) - adapted).abs().max().item<double>();
  const double plain_diff = (torch::nn::functional::linear(x_test, layer->base_layer->weight,
                                                           layer->base_layer->bias) - adapted)
                                .abs().max().item<double>();
  std::printf("merged vs unmerged max |diff|: %.3e (plain linear on merged weights: %.3e)\n",
              merge_diff, plain_diff);

  if (!(final_loss < initial * 1e-3) || merge_diff > 1e-4 || plain_diff > 1e-4) {
    std::fprintf(stderr, "quickstart: training or merging did not behave as expected\n");
    return 1;
  }
  std::printf("ok\n");
  return 0;
}
