// What a LibTorch user runs into outside the happy path: several threads through one layer, caches
// under InferenceMode then autograd, empty batches and odd shapes and dtypes, bad adapter names,
// checkpoints of models written with torch::nn::Linear, and the replace_module() trap.
#include "test_helpers.h"
#include "test_threads_helpers.h"

#include <atomic>
#include <filesystem>
#include <fstream>
#include <thread>

using fourierft::AdapterOptions;
using fourierft::LinearPath;
using fourierft::FourierFTConfig;
using fourierft::testing::reference_delta_weight;
using fourierft::testing::reference_forward;
using fourierft::testing::relative_error;

namespace {


TEST(Robustness, EmptyBatchesAnyShapeAndDtypeOnEveryPath) {
  for (const auto path : {LinearPath::Dense, LinearPath::Spectral}) {
    for (const auto dtype : {torch::kFloat, torch::kDouble, torch::kBFloat16, torch::kHalf}) {
      SCOPED_TRACE(c10::toString(dtype));
      torch::manual_seed(0);
      fourierft::Linear layer(torch::nn::LinearOptions(12, 10), fourierft::FourierFTLinearOptions().forward_path(path));
      layer->update_layer("default", AdapterOptions().n_frequency(30).scaling(10.0));
      layer->to(dtype);
      for (const auto& shape : std::vector<std::vector<int64_t>>{{0, 12}, {2, 0, 12}, {3, 12}, {2, 3, 4, 12}}) {
        auto x = torch::randn(shape).to(dtype).requires_grad_(true);
        auto y = layer(x);
        auto expected_shape = shape;
        expected_shape.back() = 10;
        EXPECT_EQ(y.sizes().vec(), expected_shape);
        EXPECT_EQ(y.scalar_type(), dtype);
        y.sum().backward();
        EXPECT_EQ(x.grad().sizes(), x.sizes());
        if (x.numel() > 0 && dtype != torch::kBFloat16 && dtype != torch::kHalf) {
          EXPECT_LE(relative_error(y, reference_forward(layer, x.detach())), 1e-5);
        }
      }
      // non-contiguous input
      auto wide = torch::randn({5, 24}).to(dtype);
      auto strided = wide.slice(1, 0, 24, 2);
      ASSERT_FALSE(strided.is_contiguous());
      const double tolerance = (dtype == torch::kFloat || dtype == torch::kDouble) ? 1e-6 : 1e-2;
      EXPECT_LE(relative_error(layer(strided), layer(strided.contiguous())), tolerance);
    }
  }
}

TEST(Robustness, BadAdapterNamesChangeNothing) {
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

TEST(Robustness, SavePretrainedUnderARegularFileIsTheLibrarysError) {
  const auto file = std::filesystem::temp_directory_path() / ("fourierft_file_" + std::to_string(::getpid()));
  { std::ofstream(file) << "x"; }
  auto net = std::make_shared<torch::nn::Module>();
  net->register_module("fc", fourierft::Linear(8, 8));
  auto peft = fourierft::get_peft_model(net, FourierFTConfig().target_modules({"fc"}).n_frequency(4));
  try {
    peft.save_pretrained((file / "adapter").string());
    ADD_FAILURE() << "no error";
  } catch (const c10::ValueError& error) {
    EXPECT_NE(std::string(error.what()).find("cannot create the directory"), std::string::npos) << error.what();
  }
  std::filesystem::remove(file);
}

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

TEST(Robustness, TorchLoadCheckpointsOfTorchLinearModelsBothWays) {
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

TEST(Robustness, ReplaceModuleTrapIsRefusedNotSilent) {
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

}  // namespace

namespace {

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

TEST(Robustness, MixedAdapterBatchRowsEqualEachRowAlone) {
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
