// What a LibTorch user runs into outside the happy path: several threads through one layer, caches
// under InferenceMode then autograd, empty batches and odd shapes and dtypes, bad adapter names,
// checkpoints of models written with torch::nn::Linear, and the replace_module() trap.
#include "test_helpers.h"

#include <atomic>
#include <filesystem>
#include <fstream>
#include <thread>

using fourierft::AdapterOptions;
using fourierft::ForwardPath;
using fourierft::FourierFTConfig;
using fourierft::testing::reference_delta_weight;
using fourierft::testing::relative_error;

namespace {

// base(x) + x @ delta_W^T with PEFT's formula in float64 (independent of our kernels).
torch::Tensor reference_forward(fourierft::Linear& layer, const torch::Tensor& x, const std::string& name = "default") {
  torch::NoGradGuard no_grad;
  const auto& state = layer->adapter_state(name);
  const auto delta = reference_delta_weight(layer->spectrum(name), state.indices, layer->out_features(),
                                            layer->in_features(), state.scaling);
  const auto xd = x.to(torch::kDouble);
  return torch::nn::functional::linear(xd, layer->weight.to(torch::kDouble), layer->bias.to(torch::kDouble)) +
         xd.matmul(delta.t());
}

fourierft::Linear frozen_layer(ForwardPath path) {
  torch::manual_seed(3);
  fourierft::Linear layer(torch::nn::LinearOptions(24, 20), fourierft::FourierFTLinearOptions().forward_path(path));
  layer->update_layer("default", AdapterOptions().n_frequency(60).scaling(20.0));
  layer->spectrum("default").requires_grad_(false);
  return layer;
}

// The serving case: one adapted layer, many threads, inference. Every result must equal the reference
// (no torn or stale delta_W), on every path. Runs under AddressSanitizer too (tests/CMakeLists.txt).
TEST(Robustness, ThreadsShareOneLayerForInference) {
  for (const auto path : {ForwardPath::Dense, ForwardPath::Spectral, ForwardPath::Auto}) {
    auto layer = frozen_layer(path);
    std::vector<torch::Tensor> inputs, expected;
    for (int i = 0; i < 8; ++i) {
      inputs.push_back(torch::randn({64 * (i % 3 + 1), 24}));
      expected.push_back(reference_forward(layer, inputs.back()));
    }
    std::atomic<int> failures{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 8; ++t) {
      threads.emplace_back([&, t] {
        for (int round = 0; round < 25; ++round) {
          const int i = (t + round) % 8;
          torch::Tensor y;
          if (round % 2 == 0) {
            c10::InferenceMode guard;
            y = layer(inputs[i]);
          } else {
            torch::NoGradGuard guard;
            y = layer(inputs[i]);
          }
          if (relative_error(y, expected[i]) > 1e-5) ++failures;
          if (round == 10 && t == 0) {  // a writer among the readers: the cache must follow
            torch::NoGradGuard guard;
            layer->spectrum("default").mul_(1.0);
          }
        }
      });
    }
    for (auto& thread : threads) thread.join();
    EXPECT_EQ(failures.load(), 0) << "path " << path;
  }
}

TEST(Robustness, CacheFollowsWritesTheVersionCounterMisses) {
  auto layer = frozen_layer(ForwardPath::Dense);
  const auto x = torch::randn({16, 24});
  torch::NoGradGuard no_grad;
  layer(x);
  layer->spectrum("default").data().mul_(3.0);  // .data() has its own version counter
  EXPECT_LE(relative_error(layer(x), reference_forward(layer, x)), 1e-6);
  layer->spectrum("default").set_data(torch::randn({60}));
  EXPECT_LE(relative_error(layer(x), reference_forward(layer, x)), 1e-6);
}

TEST(Robustness, DeltaCachedUnderInferenceModeThenAForwardWithGradients) {
  auto layer = frozen_layer(ForwardPath::Dense);
  const auto x = torch::randn({16, 24});
  {
    c10::InferenceMode guard;
    layer(x);
  }
  auto input = x.clone().requires_grad_(true);
  layer(input).square().sum().backward();  // a saliency map: gradient with respect to the input
  auto reference_input = x.to(torch::kDouble).requires_grad_(true);
  const auto& state = layer->adapter_state("default");
  const auto delta = reference_delta_weight(layer->spectrum("default").detach(), state.indices, 20, 24, state.scaling);
  (torch::nn::functional::linear(reference_input, layer->weight.detach().to(torch::kDouble) + delta,
                                 layer->bias.detach().to(torch::kDouble)))
      .square().sum().backward();
  EXPECT_LE(relative_error(input.grad(), reference_input.grad()), 1e-5);
}

TEST(Robustness, EmptyBatchesAnyShapeAndDtypeOnEveryPath) {
  for (const auto path : {ForwardPath::Dense, ForwardPath::Spectral}) {
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

// DESIGN.md section 3: replace_module() only changes the registry; the parent's member still calls the
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
