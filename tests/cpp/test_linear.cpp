// fourierft::Linear, the drop-in for torch::nn::Linear: same parameters and initialisation, and
// adapters that a user-written module actually uses, whether it calls member holders or holds the
// layer in Sequential, ModuleList or ModuleDict (README.md, "Which modules can be adapted").
#include "test_helpers.h"

#include <filesystem>

using fourierft::AdapterOptions;
using fourierft::testing::reference_delta_weight;
using fourierft::testing::relative_error;
using fourierft::FourierFTConfig;

namespace {

struct TwinNetImpl : torch::nn::Module {  // a plain LibTorch model
  torch::nn::Linear fc1{nullptr}, fc2{nullptr};
  TwinNetImpl() {
    fc1 = register_module("fc1", torch::nn::Linear(16, 32));
    fc2 = register_module("fc2", torch::nn::Linear(32, 4));
  }
  torch::Tensor forward(const torch::Tensor& x) { return fc2(torch::relu(fc1(x))); }
};
TORCH_MODULE(TwinNet);

struct NetImpl : torch::nn::Module {  // the same model written against fourierft::Linear
  fourierft::Linear fc1{nullptr}, fc2{nullptr};
  torch::nn::Sequential seq{nullptr};
  torch::nn::ModuleList list{nullptr};
  torch::nn::ModuleDict dict{nullptr};
  NetImpl() {
    fc1 = register_module("fc1", fourierft::Linear(16, 32));
    fc2 = register_module("fc2", fourierft::Linear(32, 4));
    seq = register_module("seq", torch::nn::Sequential(fourierft::Linear(4, 8), torch::nn::ReLU()));
    list = register_module("list", torch::nn::ModuleList(fourierft::Linear(8, 8)));
    dict = register_module("dict", torch::nn::ModuleDict(torch::OrderedDict<std::string, std::shared_ptr<torch::nn::Module>>{
                                       {"head", fourierft::Linear(8, 3).ptr()}}));
  }
  torch::Tensor forward(const torch::Tensor& x) {
    auto h = seq->forward(fc2(torch::relu(fc1(x))));
    h = list[0]->as<fourierft::LinearImpl>()->forward(h);
    return dict["head"]->as<fourierft::LinearImpl>()->forward(h);
  }
};
TORCH_MODULE(Net);

TEST(DropInLinear, InitialisesAndNamesLikeTorchLinear) {
  torch::manual_seed(5);
  torch::nn::Linear plain(24, 10);
  torch::manual_seed(5);
  fourierft::Linear ours(24, 10);
  EXPECT_TRUE(torch::equal(plain->weight, ours->weight));
  EXPECT_TRUE(torch::equal(plain->bias, ours->bias));
  EXPECT_EQ(plain->named_parameters().keys(), ours->named_parameters().keys());
  const auto x = torch::randn({3, 24});
  EXPECT_TRUE(torch::equal(plain(x), ours(x)));
  fourierft::Linear no_bias(torch::nn::LinearOptions(24, 10).bias(false));
  EXPECT_EQ(no_bias->named_parameters().keys(), std::vector<std::string>{"weight"});
}

TEST(DropInLinear, PretrainedTwinStateLoadsUnchanged) {
  TwinNet twin;
  Net net;
  torch::NoGradGuard no_grad;
  const auto twin_params = twin->named_parameters();
  auto net_params = net->named_parameters();
  for (const auto& item : twin_params) net_params[item.key()].copy_(item.value());
  const auto x = torch::randn({5, 16});
  // Only fc1/fc2 exist in the twin: compare that part of the network.
  EXPECT_TRUE(torch::allclose(net->fc2(torch::relu(net->fc1(x))), twin(x)));
}

TEST(DropInLinear, AdaptersAreUsedThroughMemberHoldersAndContainers) {
  torch::manual_seed(0);
  Net net;
  const auto x = torch::randn({6, 16});
  auto previous = net(x).detach();
  std::vector<fourierft::FourierFTLayer*> layers = {
      net->fc1.get(), net->fc2.get(), net->seq[0]->as<fourierft::LinearImpl>(),
      net->list[0]->as<fourierft::LinearImpl>(), net->dict["head"]->as<fourierft::LinearImpl>()};
  for (size_t i = 0; i < layers.size(); ++i) {
    layers[i]->update_layer("default", AdapterOptions().n_frequency(20).scaling(5.0));
    const auto now = net(x).detach();
    EXPECT_GT((now - previous).abs().max().item<double>(), 1e-4) << "layer " << i << " not used";
    previous = now;
  }
  EXPECT_EQ(net->named_parameters().size(), 10u + 5u);  // 5 x (weight, bias) + 5 spectra
  EXPECT_TRUE(net->named_parameters().contains("seq.0.fourierft_spectrum.default"));
}

TEST(DropInLinear, ForwardMatchesDenseFormulaAndMergeIsExact) {
  torch::manual_seed(1);
  fourierft::Linear layer(40, 30);
  layer->update_layer("default", AdapterOptions().n_frequency(300).scaling(20.0));
  const auto x = torch::randn({4, 40});
  const auto w = reference_delta_weight(layer->spectrum("default").detach(),
                                        layer->adapter_state("default").indices, 30, 40, 20.0);
  const auto expected = torch::nn::functional::linear(x, layer->weight, layer->bias).to(torch::kDouble) +
                        torch::matmul(x.to(torch::kDouble), w.t());
  EXPECT_LE(relative_error(layer(x), expected), 1e-5);
  const auto before = layer->weight.detach().clone();
  layer->merge(true);
  EXPECT_LE(relative_error(layer(x), expected), 1e-5);
  layer->unmerge();
  EXPECT_LE((layer->weight - before).abs().max().item<double>(), 1e-6);
}

TEST(DropInLinear, CloneKeepsAdapters) {
  fourierft::Linear layer(12, 6);
  layer->update_layer("a", AdapterOptions().n_frequency(10));
  auto copy = std::dynamic_pointer_cast<fourierft::LinearImpl>(layer->clone());
  ASSERT_TRUE(copy);
  const auto x = torch::randn({2, 12});
  EXPECT_TRUE(torch::allclose(copy->forward(x), layer(x)));
  EXPECT_NE(copy->weight.data_ptr(), layer->weight.data_ptr());
  EXPECT_NE(copy->spectrum("a").data_ptr(), layer->spectrum("a").data_ptr());
}

TEST(DropInLinear, ErrorsNameTheLayer) {
  fourierft::Linear layer(3, 2);
  EXPECT_ERROR_CONTAINS(layer->update_layer("x", AdapterOptions().n_frequency(7)),
                        "fourierft::Linear(2x3)", "adapter 'x'", "the product is 6");
}

}  // namespace

namespace {

// A model written the usual way (torch::nn::Linear members), saved with torch::save; the same model
// declared with fourierft::Linear loads that checkpoint, trains an adapter, merges, and its checkpoint
// loads back into the torch::nn::Linear model.
template <typename LinearT>
struct BlockT : torch::nn::Module {
  torch::nn::Embedding embed{nullptr};
  LinearT q{nullptr}, out{nullptr};
  BlockT() {
    embed = register_module("embed", torch::nn::Embedding(20, 8));
    q = register_module("q", LinearT(8, 8));
    out = register_module("out", LinearT(8, 3));
  }
  torch::Tensor forward(const torch::Tensor& ids) { return out(torch::relu(q(embed(ids)))); }
};

TEST(DropInLinear, TorchLoadCheckpointsOfTorchLinearModelsBothWays) {
  const auto dir = std::filesystem::temp_directory_path() / ("fourierft_load_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  torch::manual_seed(0);
  auto plain = std::make_shared<BlockT<torch::nn::Linear>>();
  torch::save(plain, (dir / "plain.pt").string());
  const auto ids = torch::randint(0, 20, {4, 5});

  auto adapted = std::make_shared<BlockT<fourierft::Linear>>();
  torch::load(adapted, (dir / "plain.pt").string());
  EXPECT_TRUE(torch::equal(adapted->forward(ids), plain->forward(ids)));
  auto peft = fourierft::get_peft_model(adapted, FourierFTConfig().target_modules({"q"}).n_frequency(20).scaling(30.0));
  const auto with_adapter = adapted->forward(ids).detach();
  EXPECT_FALSE(torch::allclose(with_adapter, plain->forward(ids)));
  peft.merge_and_unload();
  torch::save(adapted, (dir / "merged.pt").string());

  auto back = std::make_shared<BlockT<torch::nn::Linear>>();
  torch::load(back, (dir / "merged.pt").string());
  EXPECT_LE(relative_error(back->forward(ids), with_adapter), 1e-5);
  std::filesystem::remove_all(dir);
}

}  // namespace
