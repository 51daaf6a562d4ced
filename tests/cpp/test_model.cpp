// FourierFTModel over a user-written LibTorch module tree: injection by name/regex, PEFT's
// model-level operations, and the guarantee that failed calls leave the model untouched.
#include "test_helpers.h"

#include <sstream>

using fourierft::FourierFTConfig;
using fourierft::get_peft_model;
using fourierft::AdapterOptions;
using fourierft::testing::relative_error;

namespace {

struct AttentionImpl : torch::nn::Module {
  fourierft::Linear q{nullptr}, k{nullptr}, v{nullptr}, o{nullptr};
  AttentionImpl() {
    q = register_module("q", fourierft::Linear(16, 16));
    k = register_module("k", fourierft::Linear(16, 16));
    v = register_module("v", fourierft::Linear(16, 16));
    o = register_module("o", fourierft::Linear(16, 16));
  }
  torch::Tensor forward(const torch::Tensor& x) {
    auto scores = torch::softmax(torch::matmul(q(x), k(x).transpose(-1, -2)) / 4.0, -1);
    return o(torch::matmul(scores, v(x)));
  }
};
TORCH_MODULE(Attention);

struct BlockImpl : torch::nn::Module {
  Attention attn{nullptr};
  fourierft::Linear fc1{nullptr}, fc2{nullptr};
  BlockImpl() {
    attn = register_module("attn", Attention());
    fc1 = register_module("fc1", fourierft::Linear(16, 32));
    fc2 = register_module("fc2", fourierft::Linear(32, 16));
  }
  torch::Tensor forward(const torch::Tensor& x) {
    auto h = x + attn(x);
    return h + fc2(torch::gelu(fc1(h)));
  }
};
TORCH_MODULE(Block);

struct ToyImpl : torch::nn::Module {
  torch::nn::ModuleList layers{nullptr};
  fourierft::Linear classifier{nullptr};
  torch::nn::LayerNorm norm{nullptr};
  ToyImpl() {
    layers = register_module("layers", torch::nn::ModuleList(Block(), Block()));
    norm = register_module("norm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({16})));
    classifier = register_module("classifier", fourierft::Linear(16, 3));
  }
  torch::Tensor forward(torch::Tensor x) {
    for (const auto& layer : *layers) x = layer->as<BlockImpl>()->forward(x);
    return classifier(norm(x).mean(1));
  }
};
TORCH_MODULE(Toy);

struct PlainImpl : torch::nn::Module {
  torch::nn::Linear fc{nullptr};
  PlainImpl() { fc = register_module("fc", torch::nn::Linear(8, 8)); }
  torch::Tensor forward(const torch::Tensor& x) { return fc(x); }
};
TORCH_MODULE(Plain);

FourierFTConfig qv(int64_t n = 40) { return FourierFTConfig().target_modules({"q", "v"}).n_frequency(n).scaling(10.0); }

std::map<std::string, torch::Tensor> snapshot(const torch::nn::Module& m) {
  std::map<std::string, torch::Tensor> out;
  for (const auto& item : m.named_parameters()) out[item.key()] = item.value().detach().clone();
  return out;
}

void expect_identical(const torch::nn::Module& m, const std::map<std::string, torch::Tensor>& before) {
  const auto now = m.named_parameters();
  EXPECT_EQ(now.size(), before.size());
  for (const auto& [name, value] : before) {
    ASSERT_TRUE(now.contains(name)) << name;
    EXPECT_TRUE(torch::equal(now[name], value)) << name;
  }
}

class ModelTest : public ::testing::Test {
 protected:
  void SetUp() override {
    torch::manual_seed(0);
    toy = Toy();
    x = torch::randn({2, 5, 16});
    base_out = toy(x).detach();
  }
  Toy toy{nullptr};
  torch::Tensor x, base_out;
};

TEST_F(ModelTest, InjectsByNameAndTheModelUsesTheAdapters) {
  auto peft = get_peft_model(toy.ptr(), qv());
  EXPECT_EQ(peft.adapted_modules(), (std::vector<std::string>{"layers.0.attn.q", "layers.0.attn.v",
                                                              "layers.1.attn.q", "layers.1.attn.v"}));
  EXPECT_GT((toy(x) - base_out).abs().max().item<double>(), 1e-4);
  const auto [trainable, total] = peft.get_nb_trainable_parameters();
  EXPECT_EQ(trainable, 4 * 40);
  for (const auto& item : toy->named_parameters()) {
    EXPECT_EQ(item.value().requires_grad(), item.key().find("fourierft_spectrum") != std::string::npos) << item.key();
  }
  std::ostringstream line;
  peft.print_trainable_parameters(line);
  EXPECT_EQ(total, 4563);
  std::ostringstream expected;
  expected << "trainable params: 160 || all params: 4,563 || trainable%: 3.5065\n";
  EXPECT_EQ(line.str(), expected.str());
}

TEST_F(ModelTest, RegexLayersToTransformAndNFrequencyPattern) {
  auto peft = get_peft_model(toy.ptr(), FourierFTConfig().target_modules(".*\\.(q|fc1)").n_frequency(30)
                                            .n_frequency_pattern({{"fc1", 60}}));
  EXPECT_EQ(peft.adapted_modules().size(), 4u);
  EXPECT_EQ(peft.layer("layers.1.fc1").adapter_state("default").n_frequency, 60);
  EXPECT_EQ(peft.layer("layers.0.attn.q").adapter_state("default").n_frequency, 30);
  toy = Toy();
  // Without layers_pattern PEFT needs a prefix before the container ("model.layers.1..."); the
  // top-level "layers.1..." here needs the pattern named.
  auto only_second = get_peft_model(toy.ptr(), qv().layers_to_transform(1).layers_pattern("layers"));
  EXPECT_EQ(only_second.adapted_modules(), (std::vector<std::string>{"layers.1.attn.q", "layers.1.attn.v"}));
}

TEST_F(ModelTest, ZeroInitKeepsBaseOutputs) {
  get_peft_model(toy.ptr(), qv().init_weights(true));
  EXPECT_TRUE(torch::allclose(toy(x), base_out, 1e-6, 1e-6));
}

TEST_F(ModelTest, FailedInjectionsLeaveTheModelUntouched) {
  const auto before = snapshot(*toy);
  EXPECT_ERROR_CONTAINS(get_peft_model(toy.ptr(), FourierFTConfig().target_modules({"nope"})),
                        "Target modules {nope} not found", "layers.0.attn.q");
  // n fits q/v (16x16 = 256) but not... every layer is checked before any changes.
  EXPECT_ERROR_CONTAINS(get_peft_model(toy.ptr(), FourierFTConfig().target_modules({"q", "classifier"}).n_frequency(100)),
                        "module 'classifier'", "the value passed is 100", "the product is 48");
  EXPECT_ERROR_CONTAINS(get_peft_model(toy.ptr(), FourierFTConfig().target_modules({"norm"})),
                        "'norm'", "LayerNorm", "not supported");
  EXPECT_ERROR_CONTAINS(get_peft_model(toy.ptr(), FourierFTConfig().target_modules({"q"}).bias("bad")), "bias");
  expect_identical(*toy, before);
  for (const auto& item : toy->named_modules()) {
    if (auto* layer = dynamic_cast<fourierft::FourierFTLayer*>(item.value().get())) {
      EXPECT_TRUE(layer->adapter_names().empty()) << item.key();
    }
  }
}

TEST(Model, PlainTorchLinearIsRefusedWithAFix) {
  Plain plain;
  EXPECT_ERROR_CONTAINS(get_peft_model(plain.ptr(), FourierFTConfig().target_modules({"fc"})),
                        "'fc'", "torch::nn::Linear", "Declare it as fourierft::Linear");
}

TEST_F(ModelTest, OptimizerStepChangesOnlySpectra) {
  auto peft = get_peft_model(toy.ptr(), qv());
  const auto before = snapshot(*toy);
  torch::optim::AdamW optimizer(peft.trainable_parameters(), torch::optim::AdamWOptions(0.01));
  toy(x).pow(2).sum().backward();
  optimizer.step();
  for (const auto& item : toy->named_parameters()) {
    const bool changed = !torch::equal(item.value(), before.at(item.key()));
    EXPECT_EQ(changed, item.key().find("fourierft_spectrum") != std::string::npos) << item.key();
  }
}

TEST_F(ModelTest, DisableAdapterGuardAndTwoAdaptersAdd) {
  auto peft = get_peft_model(toy.ptr(), FourierFTConfig().target_modules({"fc1"}).n_frequency(50));
  const auto with_a = toy(x).detach();
  {
    auto guard = peft.disable_adapter();
    EXPECT_TRUE(torch::allclose(toy(x), base_out));
  }
  EXPECT_TRUE(torch::allclose(toy(x), with_a));
  peft.add_adapter("b", FourierFTConfig().target_modules({"fc1"}).n_frequency(20).random_loc_seed(3));
  EXPECT_TRUE(torch::allclose(toy(x), with_a));  // added adapters start inactive
  EXPECT_FALSE(peft.layer("layers.0.fc1").spectrum("b").requires_grad());
  // With one adapted layer set per adapter, delta_W's add: check at the layer.
  auto& layer = peft.layer("layers.0.fc1");
  const auto h = torch::randn({3, 16});
  const auto only_a = layer.adapter_forward("default", h);
  const auto only_b = layer.adapter_forward("b", h);
  peft.set_adapter(std::vector<std::string>{"default", "b"});
  auto* fc1 = toy->layers[0]->as<BlockImpl>()->fc1.get();
  EXPECT_LE(fourierft::testing::relative_error(fc1->forward(h) - torch::nn::functional::linear(h, fc1->weight, fc1->bias),
                                               only_a + only_b), 1e-5);
}

TEST_F(ModelTest, DeleteAdapter) {
  auto peft = get_peft_model(toy.ptr(), qv());
  peft.add_adapter("other", qv(10));
  EXPECT_ERROR_CONTAINS(peft.delete_adapter("missing"), "'missing' does not exist", "default, other");
  peft.delete_adapter("default");
  EXPECT_EQ(peft.active_adapters(), std::vector<std::string>{"other"});
  EXPECT_TRUE(peft.layer("layers.0.attn.q").spectrum("other").requires_grad());
  for (const auto& item : toy->named_parameters()) {
    EXPECT_EQ(item.key().find("fourierft_spectrum.default"), std::string::npos) << item.key();
  }
}

TEST_F(ModelTest, MergeAndUnloadKeepsOutputsAndRemovesAdapters) {
  auto peft = get_peft_model(toy.ptr(), qv());
  const auto adapted = toy(x).detach();
  auto plain = peft.merge_and_unload(/*progressbar=*/true, /*safe_merge=*/true);
  EXPECT_EQ(plain.get(), toy.ptr().get());
  EXPECT_LE(fourierft::testing::relative_error(toy(x), adapted), 1e-5);
  for (const auto& item : toy->named_parameters()) {
    EXPECT_EQ(item.key().find("fourierft_spectrum"), std::string::npos) << item.key();
  }
}

// PEFT 0.21's unload(): the adapters go as they are; a delta merged before stays in the weights (the generated
// table has the same case, "unload after merge_adapter keeps the merged weights").
TEST_F(ModelTest, UnloadKeepsMergedDeltasAndOtherwiseRestoresTheOriginalModel) {
  auto peft = get_peft_model(toy.ptr(), qv());
  const auto adapted = toy(x).detach();
  ASSERT_GT((adapted - base_out).abs().max().item<double>(), 1e-3);
  peft.merge_adapter();
  peft.unload();
  EXPECT_LE((toy(x) - adapted).abs().max().item<double>(), 1e-5);
  EXPECT_TRUE(peft.peft_config().empty());
  toy = Toy();
  torch::manual_seed(0);
  base_out = toy(x).detach();
  auto fresh = get_peft_model(toy.ptr(), qv());
  fresh.unload();
  EXPECT_TRUE(torch::equal(toy(x), base_out));
}

TEST_F(ModelTest, SafeMergeOfABrokenAdapterChangesNoWeight) {
  auto peft = get_peft_model(toy.ptr(), qv());
  {
    torch::NoGradGuard no_grad;
    auto spectrum = peft.layer("layers.1.attn.v").spectrum("default");
    spectrum[0] = std::numeric_limits<float>::infinity();
  }
  const auto before = snapshot(*toy);
  EXPECT_ERROR_CONTAINS(peft.merge_and_unload(false, /*safe_merge=*/true), "NaNs detected", "layers.1.attn.v");
  expect_identical(*toy, before);
  EXPECT_FALSE(peft.layer("layers.0.attn.q").merged());
}

TEST_F(ModelTest, BiasModesAndModulesToSave) {
  auto all = get_peft_model(toy.ptr(), qv().bias("all"));
  for (const auto& item : toy->named_parameters()) {
    const bool bias = item.key().size() > 5 && item.key().substr(item.key().size() - 5) == ".bias";
    EXPECT_EQ(item.value().requires_grad(), bias || item.key().find("fourierft_spectrum") != std::string::npos) << item.key();
  }
  toy = Toy();
  auto only = get_peft_model(toy.ptr(), qv().bias("fourier_only").modules_to_save(std::vector<std::string>{"classifier"}));
  auto params = toy->named_parameters();
  EXPECT_TRUE(params["layers.0.attn.q.bias"].requires_grad());
  EXPECT_FALSE(params["layers.0.attn.k.bias"].requires_grad());
  EXPECT_TRUE(params["classifier.weight"].requires_grad());
  EXPECT_TRUE(params["classifier.bias"].requires_grad());
  EXPECT_FALSE(params["norm.weight"].requires_grad());
  const auto [trainable, total] = only.get_nb_trainable_parameters();
  EXPECT_EQ(trainable, 4 * 40 + 4 * 16 + 16 * 3 + 3);
}

TEST_F(ModelTest, ModulesToSaveKeepOneCopyPerAdapterAndTheOriginal) {
  const auto original_head = toy->classifier->weight.detach().clone();
  auto train_steps = [&](fourierft::FourierFTModel& peft) {
    torch::optim::SGD optimizer(peft.trainable_parameters(), torch::optim::SGDOptions(0.5));
    for (int i = 0; i < 3; ++i) {
      optimizer.zero_grad();
      toy(x).pow(2).sum().backward();
      optimizer.step();
    }
  };
  auto peft = get_peft_model(toy.ptr(), qv().modules_to_save(std::vector<std::string>{"classifier"}));
  train_steps(peft);
  const auto head_a = toy->classifier->weight.detach().clone();
  const auto out_a = toy(x).detach();
  EXPECT_FALSE(torch::equal(head_a, original_head));
  {
    auto guard = peft.disable_adapter();  // the original head, as PEFT's wrapper uses it
    EXPECT_TRUE(torch::equal(toy->classifier->weight, original_head));
    EXPECT_TRUE(torch::allclose(toy(x), base_out));
  }
  EXPECT_TRUE(torch::equal(toy->classifier->weight, head_a));

  peft.add_adapter("b", qv(10).random_loc_seed(1).modules_to_save(std::vector<std::string>{"classifier"}));
  peft.set_adapter("b");  // b's head starts as a copy of the original
  EXPECT_TRUE(torch::equal(toy->classifier->weight, original_head));
  train_steps(peft);
  const auto head_b = toy->classifier->weight.detach().clone();
  peft.set_adapter("default");
  EXPECT_TRUE(torch::equal(toy->classifier->weight, head_a));
  EXPECT_TRUE(torch::allclose(toy(x), out_a));
  peft.set_adapter("b");
  EXPECT_TRUE(torch::equal(toy->classifier->weight, head_b));

  const auto q_weight = toy->layers[0]->as<BlockImpl>()->attn->q->weight.detach().clone();
  peft.unload();  // as PEFT (tests/data/peft_semantics.json): no adapters, the active adapter's head stays
  EXPECT_TRUE(torch::equal(toy->classifier->weight, head_b));
  EXPECT_TRUE(torch::equal(toy->layers[0]->as<BlockImpl>()->attn->q->weight, q_weight));
  EXPECT_TRUE(toy->layers[0]->as<BlockImpl>()->attn->q->adapter_names().empty());
}

TEST_F(ModelTest, MergeAndUnloadKeepsTheActiveAdaptersHead) {
  auto peft = get_peft_model(toy.ptr(), qv().modules_to_save(std::vector<std::string>{"classifier"}));
  {
    torch::NoGradGuard no_grad;
    toy->classifier->weight.add_(1.0);  // stands for training
  }
  const auto adapted = toy(x).detach();
  peft.merge_and_unload();
  EXPECT_LE(fourierft::testing::relative_error(toy(x), adapted), 1e-5);
}

}  // namespace

namespace {
// Everything a failed call must leave as it was: parameters (names and values), requires_grad, the adapter list,
// the active adapters and the output.
struct ModelState {
  std::map<std::string, torch::Tensor> params;
  std::map<std::string, bool> requires_grad;
  std::vector<std::string> adapters, active;
  torch::Tensor output;
};
ModelState model_state(const fourierft::FourierFTModel& peft, Toy& net, const torch::Tensor& x) {
  ModelState s;
  s.params = snapshot(*net);
  for (const auto& item : net->named_parameters()) s.requires_grad[item.key()] = item.value().requires_grad();
  for (const auto& [name, config] : peft.peft_config()) s.adapters.push_back(name);
  s.active = peft.active_adapters();
  torch::NoGradGuard no_grad;
  s.output = net->forward(x).clone();
  return s;
}
void expect_same_state(const fourierft::FourierFTModel& peft, Toy& net, const torch::Tensor& x,
                       const ModelState& before) {
  const auto after = model_state(peft, net, x);
  expect_identical(*net, before.params);
  EXPECT_EQ(after.requires_grad, before.requires_grad);
  EXPECT_EQ(after.adapters, before.adapters);
  EXPECT_EQ(after.active, before.active);
  EXPECT_TRUE(torch::equal(after.output, before.output));
}
}  // namespace

// The cases on the C++ side: bad names, an n_frequency too large for a later layer, bad config fields and
// unknown names in merges each raise naming the value and leave everything as it was.
TEST(Model, FailedCallsNameTheValueAndChangeNothing) {
  torch::manual_seed(0);
  Toy net;
  auto peft = get_peft_model(net.ptr(), qv());
  const auto x = torch::randn({2, 5, 16});
  const auto before = model_state(peft, net, x);
  EXPECT_ERROR_CONTAINS(peft.add_adapter("a.b", qv()), "'a.b'", "'.'");
  expect_same_state(peft, net, x, before);
  EXPECT_ERROR_CONTAINS(peft.add_adapter("", qv()), "non-empty");
  expect_same_state(peft, net, x, before);
  // fc1 (16 x 32) takes 300 coefficients; q (16 x 16) of the second block is given 257 by a pattern.
  fourierft::FrequencyPattern pattern{{"layers.1.attn.q", 257}};
  EXPECT_ERROR_CONTAINS(
      peft.add_adapter("big", FourierFTConfig().target_modules({"q", "fc1"}).n_frequency(200).n_frequency_pattern(pattern)),
      "module 'layers.1.attn.q'", "adapter 'big'", "257", "256");
  expect_same_state(peft, net, x, before);
  EXPECT_TRUE(peft.adapted_modules("big").empty());
  EXPECT_ERROR_CONTAINS(peft.add_adapter("b", qv().bias("foo")), "bias", "'foo'");
  EXPECT_ERROR_CONTAINS(peft.add_adapter("n", qv(0)), "n_frequency", "0");
  EXPECT_ERROR_CONTAINS(peft.add_adapter("s", qv().scaling(std::nan(""))), "scaling", "nan");
  expect_same_state(peft, net, x, before);
  EXPECT_ERROR_CONTAINS(peft.merge_adapter(std::vector<std::string>{"default", "nope"}), "unknown adapter 'nope'");
  expect_same_state(peft, net, x, before);
  EXPECT_ERROR_CONTAINS(peft.merge_and_unload(false, false, std::vector<std::string>{"nope"}), "unknown adapter 'nope'");
  expect_same_state(peft, net, x, before);
}

namespace {

TEST(Model, BadAdapterNamesChangeNothing) {
  torch::manual_seed(0);
  fourierft::Linear layer(12, 10);
  EXPECT_ERROR_CONTAINS(layer->update_layer("a.b", AdapterOptions().n_frequency(5)), "'a.b'", "'.'");
  EXPECT_ERROR_CONTAINS(layer->update_layer("", AdapterOptions().n_frequency(5)), "non-empty");
  EXPECT_TRUE(layer->active_adapters().empty());
  EXPECT_TRUE(layer->adapter_names().empty());
  layer->update_layer("ok", AdapterOptions().n_frequency(5));  // the next adapter is active and trains
  EXPECT_EQ(layer->active_adapters(), std::vector<std::string>{"ok"});
  EXPECT_TRUE(layer->spectrum("ok").requires_grad());

  auto net = std::make_shared<torch::nn::Module>();
  net->register_module("fc", fourierft::Linear(8, 8));
  auto peft = fourierft::get_peft_model(net, FourierFTConfig().target_modules({"fc"}).n_frequency(4));
  const auto before = peft.get_adapter_state_dict();
  try {
    peft.add_adapter("x.y", FourierFTConfig().target_modules({"fc"}).n_frequency(4));
    ADD_FAILURE() << "a dotted adapter name was accepted";
  } catch (const c10::ValueError& error) {
    EXPECT_NE(std::string(error.what()).find("'x.y'"), std::string::npos);
  }
  EXPECT_EQ(peft.peft_config().size(), 1u);
  EXPECT_EQ(peft.layer("fc").adapter_names(), std::vector<std::string>{"default"});
}


// README.md, "Which modules can be adapted": replace_module() only changes the registry; the parent's member still calls the
// base layer. Injection must refuse such a wrapper loudly, and accept one the member points at.
struct TrapImpl : torch::nn::Module {
  torch::nn::Linear fc{nullptr};
  TrapImpl() { fc = register_module("fc", torch::nn::Linear(8, 8)); }
  torch::Tensor forward(const torch::Tensor& x) { return fc(x); }
};
TORCH_MODULE(Trap);

struct WrappedImpl : torch::nn::Module {
  fourierft::FourierFTLinear fc{nullptr};
  WrappedImpl() { fc = register_module("fc", fourierft::FourierFTLinear(torch::nn::Linear(8, 8))); }
  torch::Tensor forward(const torch::Tensor& x) { return fc(x); }
};
TORCH_MODULE(Wrapped);

TEST(Model, ReplaceModuleTrapIsRefusedNotSilent) {
  Trap trap;
  trap->replace_module("fc", fourierft::FourierFTLinear(trap->fc));
  EXPECT_ERROR_CONTAINS(fourierft::get_peft_model(trap.ptr(), FourierFTConfig().target_modules({"fc"}).n_frequency(4)),
                        "'fc'", "replace_module", "never run");

  Wrapped wrapped;
  auto peft = fourierft::get_peft_model(wrapped.ptr(), FourierFTConfig().target_modules({"fc"}).n_frequency(4)
                                                           .scaling(50.0));
  const auto x = torch::randn({2, 8});
  EXPECT_FALSE(torch::allclose(wrapped(x), wrapped->fc->base_layer(x)));  // the adapter runs
}


// Mixed-adapter batches in C++: each row equals that row run alone with its adapter active (PEFT's
// adapter_names), for the name list and the index-tensor forms; unknown names and training mode refused.
struct TwoLayerImpl : torch::nn::Module {
  fourierft::Linear q{nullptr}, v{nullptr};
  TwoLayerImpl() {
    q = register_module("q", fourierft::Linear(16, 16));
    v = register_module("v", fourierft::Linear(16, 12));
  }
  torch::Tensor forward(const torch::Tensor& x) { return v(torch::tanh(q(x))); }
};
TORCH_MODULE(TwoLayer);

TEST(Model, MixedAdapterBatchRowsEqualEachRowAlone) {
  torch::manual_seed(0);
  TwoLayer net;
  auto peft = fourierft::get_peft_model(net.ptr(), FourierFTConfig().target_modules({"q", "v"}).n_frequency(40).scaling(30.0));
  peft.add_adapter("b", FourierFTConfig().target_modules({"q"}).n_frequency(30).scaling(30.0).random_loc_seed(3));
  peft.add_adapter("c", FourierFTConfig().target_modules({"v"}).n_frequency(20).scaling(30.0).random_loc_seed(4));
  const std::vector<std::string> names{"b", "__base__", "default", "c", "b"};
  const auto x = torch::randn({5, 7, 16});
  EXPECT_ERROR_CONTAINS((void)peft.mixed_batch(names), "eval()");
  net->eval();
  torch::NoGradGuard no_grad;
  torch::Tensor mixed, mixed_by_index;
  {
    auto guard = peft.mixed_batch(names);
    mixed = net(x);
  }
  {
    auto guard = peft.mixed_batch(torch::tensor({1, -1, 0, 2, 1}, torch::kLong), {"default", "b", "c"});
    mixed_by_index = net(x);
  }
  EXPECT_TRUE(torch::equal(mixed, mixed_by_index));
  for (size_t row = 0; row < names.size(); ++row) {
    torch::Tensor alone;
    if (names[row] == "__base__") {
      auto guard = peft.disable_adapter();
      alone = net(x.slice(0, row, row + 1));
    } else {
      peft.set_adapter(names[row]);
      alone = net(x.slice(0, row, row + 1));
      peft.set_adapter("default");
    }
    EXPECT_LE(relative_error(mixed.slice(0, row, row + 1), alone), 1e-5) << "row " << row << " (" << names[row] << ")";
  }
  {
    auto guard = peft.disable_adapter();  // the adapters really change the rows they are named for
    EXPECT_FALSE(torch::allclose(mixed.slice(0, 0, 1), net(x.slice(0, 0, 1)), 1e-4, 1e-4));
  }
  EXPECT_ERROR_CONTAINS((void)peft.mixed_batch({"b", "nope"}), "non-existing adapter(s): nope");
  EXPECT_ERROR_CONTAINS((void)peft.mixed_batch(torch::tensor({0, 3}, torch::kLong), {"b"}), "[-1, 1)", "[0, 3]");
  {
    auto guard = peft.mixed_batch(names);
    EXPECT_ERROR_CONTAINS(net(torch::randn({4, 16})), "5 rows", "[4, 16]");
  }
  EXPECT_EQ(fourierft::current_mixed_batch(), nullptr);  // the guard is gone, forwards are normal again
}

}  // namespace
