// fourierft in a LibTorch training program, end to end on real data (the UCI handwritten digits
// that scikit-learn ships; scripts/bootstrap.sh exports them to build/data/digits.csv).
//
// 1. A small transformer-style network (each 8x8 image is a sequence of 8 row tokens) written with
//    fourierft::Linear layers is "pretrained" on digits 0-4 only.
// 2. get_peft_model adapts the q/v projections (by regex) with FourierFT and makes the classifier
//    head trainable (modules_to_save); everything else stays frozen. Fine-tuning on all ten digits
//    uses the paper's recipe: a large learning rate for the spectra, a small one for the head.
// 3. merge_and_unload folds the adapters into the weights; the merged model predicts the same.
//
//   ./fourierft_digits build/data/digits.csv
#include <fourierft/fourierft.h>
#include <torch/torch.h>

#include <cstdio>
#include <fstream>
#include <sstream>

namespace {

struct AttentionImpl : torch::nn::Module {
  fourierft::Linear q{nullptr}, k{nullptr}, v{nullptr}, o{nullptr};
  explicit AttentionImpl(int64_t d) {
    q = register_module("q", fourierft::Linear(d, d));
    k = register_module("k", fourierft::Linear(d, d));
    v = register_module("v", fourierft::Linear(d, d));
    o = register_module("o", fourierft::Linear(d, d));
  }
  torch::Tensor forward(const torch::Tensor& x) {
    const double scale = 1.0 / std::sqrt(static_cast<double>(x.size(-1)));
    auto weights = torch::softmax(torch::matmul(q(x), k(x).transpose(-1, -2)) * scale, -1);
    return o(torch::matmul(weights, v(x)));
  }
};
TORCH_MODULE(Attention);

struct BlockImpl : torch::nn::Module {
  Attention attn{nullptr};
  torch::nn::LayerNorm norm1{nullptr}, norm2{nullptr};
  fourierft::Linear fc1{nullptr}, fc2{nullptr};
  explicit BlockImpl(int64_t d) {
    attn = register_module("attn", Attention(d));
    norm1 = register_module("norm1", torch::nn::LayerNorm(torch::nn::LayerNormOptions({d})));
    norm2 = register_module("norm2", torch::nn::LayerNorm(torch::nn::LayerNormOptions({d})));
    fc1 = register_module("fc1", fourierft::Linear(d, 2 * d));
    fc2 = register_module("fc2", fourierft::Linear(2 * d, d));
  }
  torch::Tensor forward(torch::Tensor x) {
    x = x + attn(norm1(x));
    return x + fc2(torch::gelu(fc1(norm2(x))));
  }
};
TORCH_MODULE(Block);

struct DigitNetImpl : torch::nn::Module {
  fourierft::Linear embed{nullptr}, classifier{nullptr};
  torch::nn::ModuleList blocks{nullptr};
  torch::Tensor position;
  explicit DigitNetImpl(int64_t d = 32) {
    embed = register_module("embed", fourierft::Linear(8, d));
    blocks = register_module("blocks", torch::nn::ModuleList(Block(d), Block(d)));
    classifier = register_module("classifier", fourierft::Linear(d, 10));
    position = register_parameter("position", torch::randn({8, d}) * 0.1);
  }
  torch::Tensor forward(const torch::Tensor& images) {  // [batch, 8, 8]
    auto x = embed(images) + position;
    for (const auto& block : *blocks) x = block->as<BlockImpl>()->forward(x);
    return classifier(x.mean(1));
  }
};
TORCH_MODULE(DigitNet);

struct Data {
  torch::Tensor images, labels;
};

Data load_csv(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot open " + path + " (scripts/bootstrap.sh writes it)");
  std::vector<float> pixels;
  std::vector<int64_t> labels;
  std::string line;
  while (std::getline(in, line)) {
    std::stringstream row(line);
    std::string cell;
    std::vector<float> values;
    while (std::getline(row, cell, ',')) values.push_back(std::stof(cell));
    if (values.size() != 65) throw std::runtime_error("bad row in " + path + ": " + line);
    for (int i = 0; i < 64; ++i) pixels.push_back(values[i] / 16.0f);
    labels.push_back(static_cast<int64_t>(values[64]));
  }
  const auto n = static_cast<int64_t>(labels.size());
  return {torch::tensor(pixels).view({n, 8, 8}), torch::tensor(labels)};
}

double accuracy(DigitNet& net, const Data& data) {
  torch::NoGradGuard no_grad;
  return net(data.images).argmax(1).eq(data.labels).to(torch::kDouble).mean().item<double>();
}

void train(DigitNet& net, torch::optim::Optimizer& optimizer, const Data& data, int epochs) {
  const int64_t n = data.labels.size(0);
  for (int epoch = 0; epoch < epochs; ++epoch) {
    const auto order = torch::randperm(n);
    for (int64_t start = 0; start < n; start += 64) {
      const auto idx = order.slice(0, start, std::min(start + 64, n));
      const auto loss = torch::cross_entropy_loss(net(data.images.index({idx})), data.labels.index({idx}));
      optimizer.zero_grad();
      loss.backward();
      optimizer.step();
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  const std::string path = argc > 1 ? argv[1] : "build/data/digits.csv";
  torch::manual_seed(0);
  const Data all = load_csv(path);
  const int64_t n = all.labels.size(0);
  const auto order = torch::randperm(n);
  const int64_t n_train = n * 3 / 4;
  const Data train_set{all.images.index({order.slice(0, 0, n_train)}), all.labels.index({order.slice(0, 0, n_train)})};
  const Data test_set{all.images.index({order.slice(0, n_train)}), all.labels.index({order.slice(0, n_train)})};
  const auto low = train_set.labels.lt(5);
  const Data pretrain_set{train_set.images.index({low}), train_set.labels.index({low})};

  DigitNet net;
  torch::optim::AdamW pretrain_optimizer(net->parameters(), torch::optim::AdamWOptions(3e-3));
  train(net, pretrain_optimizer, pretrain_set, 15);
  const double before = accuracy(net, test_set);
  std::printf("pretrained on digits 0-4: test accuracy on all ten digits %.3f\n", before);

  auto config = fourierft::FourierFTConfig()
                    .target_modules(".*\\.attn\\.(q|v)")
                    .n_frequency(200)
                    .scaling(20.0)
                    .modules_to_save(std::vector<std::string>{"classifier"});
  auto peft = fourierft::get_peft_model(net.ptr(), config);
  peft.print_trainable_parameters();

  std::vector<torch::Tensor> spectra, head;
  for (const auto& item : net->named_parameters()) {
    if (!item.value().requires_grad()) continue;
    (item.key().find("fourierft_spectrum") != std::string::npos ? spectra : head).push_back(item.value());
  }
  torch::optim::AdamW optimizer({torch::optim::OptimizerParamGroup(spectra, std::make_unique<torch::optim::AdamWOptions>(5e-2)),
                                 torch::optim::OptimizerParamGroup(head, std::make_unique<torch::optim::AdamWOptions>(1e-2))});
  train(net, optimizer, train_set, 15);
  const double after = accuracy(net, test_set);
  std::printf("after FourierFT fine-tuning on all ten digits: test accuracy %.3f\n", after);

  torch::Tensor adapted_logits;
  {
    torch::NoGradGuard no_grad;
    adapted_logits = net(test_set.images);
  }
  peft.merge_and_unload(/*progressbar=*/false, /*safe_merge=*/true);
  torch::NoGradGuard no_grad;
  const auto merged_logits = net(test_set.images);
  const double diff = (merged_logits - adapted_logits).abs().max().item<double>();
  const bool same = merged_logits.argmax(1).equal(adapted_logits.argmax(1));
  std::printf("merged model: max |logit diff| %.2e, same predictions: %s\n", diff, same ? "yes" : "no");
  if (!(after > before + 0.1) || !same || diff > 1e-3) {
    std::fprintf(stderr, "digits example: fine-tuning or merging did not behave as expected\n");
    return 1;
  }
  std::printf("ok\n");
  return 0;
}
