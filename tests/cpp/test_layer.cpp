// FourierFTLinear: PEFT's layer semantics, both forward paths, merge safety, state dict names.
#include "test_helpers.h"

#include <array>
#include <optional>

using fourierft::AdapterOptions;
using fourierft::FourierFTLinear;
using fourierft::FourierFTLinearOptions;
using fourierft::LinearPath;
using fourierft::testing::reference_delta_weight;
using fourierft::testing::relative_error;
using fourierft::testing::reference_forward;

namespace {

FourierFTLinear make_layer(int64_t in, int64_t out, int64_t n, LinearPath path = LinearPath::Auto,
                           double scaling = 150.0) {
  FourierFTLinear layer(torch::nn::LinearOptions(in, out),
                        FourierFTLinearOptions().forward_path(path));
  layer->update_layer("default", AdapterOptions().n_frequency(n).scaling(scaling));
  return layer;
}

TEST(FourierFTLinear, StateDictNamesMatchPeft) {
  auto layer = make_layer(12, 10, 30);
  layer->update_layer("other", AdapterOptions().n_frequency(7));
  std::vector<std::string> names;
  for (const auto& item : layer->named_parameters()) names.push_back(item.key());
  EXPECT_EQ(names, (std::vector<std::string>{"base_layer.weight", "base_layer.bias",
                                             "fourierft_spectrum.default",
                                             "fourierft_spectrum.other"}));
  EXPECT_EQ(layer->fourierft_spectrum->at("other").sizes(), (std::vector<int64_t>{7}));
}

TEST(FourierFTLinear, SharesTheBaseWeightsWithoutCopy) {
  torch::nn::Linear base(8, 4);
  FourierFTLinear layer(base);
  EXPECT_EQ(layer->base_layer->weight.data_ptr(), base->weight.data_ptr());
  EXPECT_EQ(layer->base_layer.ptr(), base.ptr());
}

TEST(FourierFTLinear, ForwardEqualsBasePlusDenseFormulaOnEveryPath) {
  torch::manual_seed(0);
  for (auto path : {LinearPath::Spectral, LinearPath::Dense, LinearPath::Auto}) {
    auto layer = make_layer(48, 40, 200, path);
    const auto x = torch::randn({2, 7, 48});
    const auto& state = layer->adapter_state("default");
    const auto w = reference_delta_weight(layer->fourierft_spectrum->at("default").detach(),
                                          state.indices, 40, 48, 150.0);
    const auto expected = layer->base_layer(x).to(torch::kDouble) + torch::matmul(x.to(torch::kDouble), w.t());
    EXPECT_LE(relative_error(layer(x), expected), 1e-5) << path;
  }
}

TEST(FourierFTLinear, PathsAgreeInTraining) {
  torch::manual_seed(1);
  auto spectral = make_layer(64, 32, 500, LinearPath::Spectral);
  auto dense = make_layer(64, 32, 500, LinearPath::Dense);
  torch::NoGradGuard no_grad;
  dense->base_layer->weight.copy_(spectral->base_layer->weight);
  dense->base_layer->bias.copy_(spectral->base_layer->bias);
  dense->fourierft_spectrum->at("default").copy_(spectral->fourierft_spectrum->at("default"));
  {
    torch::AutoGradMode enable(true);
    const auto x = torch::randn({5, 64});
    spectral(x).pow(2).sum().backward();
    dense(x).pow(2).sum().backward();
  }
  EXPECT_LE(relative_error(spectral->fourierft_spectrum->at("default").grad(),
                           dense->fourierft_spectrum->at("default").grad()),
            1e-5);
}

// Two active adapters cannot run as one fourierft::linear: each adapter's x delta_W^T takes the route the one cost
// model (fourierft::adapter_path) picks, and both routes give PEFT's output.
TEST(FourierFTLinear, SeveralAdaptersTakeTheCostModelsAdapterPath) {
  torch::manual_seed(4);
  for (const auto& [in, out, n, tokens] : std::vector<std::array<int64_t, 4>>{{768, 768, 1000, 64}, {16, 16, 256, 4096}}) {
    auto layer = make_layer(in, out, n, LinearPath::Auto, 3.0);
    layer->update_layer("other", AdapterOptions().n_frequency(n / 2).scaling(2.0).random_loc_seed(5));
    layer->set_adapter(std::vector<std::string>{"default", "other"});
    const fourierft::LayerCall call{c10::DeviceType::CPU, at::kFloat, tokens, out, in, n, true};
    const auto expected = fourierft::adapter_path(call, false);
    EXPECT_EQ(layer->resolve_path("default", tokens) == LinearPath::Spectral, expected == fourierft::LinearPath::Spectral);
    const auto x = torch::randn({tokens, in});
    torch::Tensor reference = layer->base_layer(x).to(torch::kDouble);
    for (const char* name : {"default", "other"}) {
      const auto& state = layer->adapter_state(name);
      reference += x.to(torch::kDouble).matmul(
          reference_delta_weight(layer->fourierft_spectrum->at(name), state.indices, out, in, state.scaling).t());
    }
    EXPECT_LE(relative_error(layer(x), reference), 1e-5) << in << "x" << out;
  }
  // The two ends of the CPU model: many coefficients on a tiny layer against many tokens is a GEMM, a wide layer
  // with few tokens is spectral.
  EXPECT_EQ(fourierft::adapter_path({c10::DeviceType::CPU, at::kFloat, 4096, 16, 16, 256, true}, false),
            fourierft::LinearPath::Dense);
  EXPECT_EQ(fourierft::adapter_path({c10::DeviceType::CPU, at::kFloat, 64, 768, 768, 1000, true}, false),
            fourierft::LinearPath::Spectral);
}

// The C++ face of the cost model's estimates: every pass linear_routes reports has its candidates in
// linear_route_estimates, and the route reported is the cheapest (ties: Spectral on the CPU, else the later one).
TEST(CostModel, RoutesAreTheCheapestEstimates) {
  using fourierft::LinearPath;
  for (const auto device : {c10::DeviceType::CPU, c10::DeviceType::CUDA}) {
    for (const auto& [tokens, out, in, n] : std::vector<std::array<int64_t, 4>>{
             {1, 3072, 3072, 1000}, {2048, 3072, 3072, 1000}, {512, 768, 768, 1000}, {8192, 256, 256, 1000},
             {256, 768, 768, 58982}, {16384, 1024, 3072, 10000}}) {
      const fourierft::LayerCall call{device, at::kBFloat16, tokens, out, in, n, true};
      const auto routes = fourierft::linear_routes(call);
      const auto estimates = fourierft::linear_route_estimates(call);
      for (const auto& [pass, reported] : std::vector<std::pair<std::string, LinearPath>>{
               {"forward", routes.forward}, {"grad_x", routes.grad_x}, {"grad_spectrum", routes.grad_spectrum}}) {
        std::optional<fourierft::RouteEstimate> best;
        int candidates = 0;
        for (const auto& estimate : estimates) {
          if (estimate.pass != pass) continue;
          ++candidates;
          EXPECT_GT(estimate.ns, 0.0);
          // a tie keeps Spectral on the CPU (taken at <=) and otherwise goes to the later candidate
          const bool tie_moves = !(device == c10::DeviceType::CPU && best && best->route == LinearPath::Spectral);
          if (!best || estimate.ns < best->ns || (estimate.ns == best->ns && tie_moves)) best = estimate;
        }
        EXPECT_EQ(candidates, device == c10::DeviceType::CPU && pass != "grad_spectrum" ? 3 : 2) << pass;
        ASSERT_TRUE(best.has_value()) << pass;
        EXPECT_EQ(best->route, reported) << pass << " " << tokens << " " << out << "x" << in << " n=" << n;
      }
    }
  }
}

// A bf16 model with PEFT's float32 spectrum runs as one fourierft::linear in bf16; inference with a frozen spectrum
// on the dense route keeps delta_W in bf16 and never serves it after the spectrum's values change.
TEST(FourierFTLinear, HalfPrecisionModelAndItsInferenceCache) {
  torch::manual_seed(6);
  auto layer = make_layer(48, 40, 300, LinearPath::Auto, 20.0);
  layer->base_layer->to(torch::kBFloat16);
  auto& spectrum = layer->fourierft_spectrum->at("default");
  const auto x = torch::randn({2, 9, 48}).to(torch::kBFloat16);
  const auto reference = [&] {
    const auto& state = layer->adapter_state("default");
    const auto delta = reference_delta_weight(spectrum.detach(), state.indices, 40, 48, 20.0);
    return torch::nn::functional::linear(x.to(torch::kDouble), layer->base_layer->weight.to(torch::kDouble) + delta,
                                         layer->base_layer->bias.to(torch::kDouble));
  };
  const auto trained = layer(x);
  EXPECT_EQ(trained.scalar_type(), torch::kBFloat16);
  EXPECT_LE(relative_error(trained, reference()), 1e-2);
  torch::NoGradGuard no_grad;
  const auto before = reference();
  fourierft::set_linear_path(fourierft::LinearPath::Dense);
  const auto first = layer(x);
  const auto again = layer(x);
  spectrum.mul_(3.0);
  const auto after = layer(x);
  fourierft::set_linear_path(fourierft::LinearPath::Auto);
  EXPECT_LE(relative_error(first, before), 1e-2);
  EXPECT_TRUE(torch::equal(first, again));
  EXPECT_LE(relative_error(after, reference()), 1e-2);
  EXPECT_GT(relative_error(after, first), 0.1);
}

TEST(FourierFTLinear, DenseCacheFollowsSpectrumUpdates) {
  auto layer = make_layer(24, 20, 60, LinearPath::Dense);
  torch::NoGradGuard no_grad;
  const auto x = torch::randn({3, 24});
  const auto before = layer(x);
  EXPECT_TRUE(torch::equal(before, layer(x)));
  layer->fourierft_spectrum->at("default").mul_(2.0);  // in place: the cache must notice
  const auto base = layer->base_layer(x);
  EXPECT_LE(relative_error(layer(x) - base, 2 * (before - base)), 1e-5);
}

TEST(FourierFTLinear, CachesAreDroppedByClearCachesAndByTrain) {
  // A frozen float32 layer with many tokens: the plan keeps W + delta_W (CPU) between inference calls.
  auto layer = make_layer(24, 20, 60, LinearPath::Auto);
  layer->fourierft_spectrum->at("default").requires_grad_(false);
  const auto x = torch::randn({4096, 24});
  torch::Tensor first;
  {
    torch::NoGradGuard no_grad;
    first = layer(x);
  }
  ASSERT_EQ(layer->cached_tensors(), 1u);
  layer->clear_caches();
  EXPECT_EQ(layer->cached_tensors(), 0u);
  {
    torch::NoGradGuard no_grad;
    EXPECT_TRUE(torch::allclose(layer(x), first, 1e-5, 1e-5));  // rebuilt, same values
  }
  EXPECT_EQ(layer->cached_tensors(), 1u);
  layer->eval();
  EXPECT_EQ(layer->cached_tensors(), 1u);
  layer->train();
  EXPECT_EQ(layer->cached_tensors(), 0u);
}

TEST(FourierFTLinear, ZeroInitIsIdentity) {
  FourierFTLinear layer(torch::nn::LinearOptions(16, 8));
  layer->update_layer("default", AdapterOptions().n_frequency(20).init_weights(true));
  const auto x = torch::randn({4, 16});
  EXPECT_TRUE(torch::allclose(layer(x), layer->base_layer(x)));
  EXPECT_TRUE(layer->fourierft_spectrum->at("default").eq(0).all().item<bool>());
}

TEST(FourierFTLinear, NFrequencyRangeIsChecked) {
  FourierFTLinear layer(torch::nn::LinearOptions(6, 4));
  EXPECT_ERROR_CONTAINS(layer->update_layer("a", AdapterOptions().n_frequency(25)), "adapter 'a'",
                        "the value passed is 25", "the product is 24");
  EXPECT_ERROR_CONTAINS(layer->update_layer("b", AdapterOptions().n_frequency(0)), "adapter 'b'",
                        "positive integer", "the value passed is 0");
  EXPECT_ERROR_CONTAINS(layer->update_layer("c.d", AdapterOptions().n_frequency(4)), "'c.d'");
  EXPECT_TRUE(layer->adapter_names().empty());
  EXPECT_TRUE(layer->fourierft_spectrum->keys().empty());
}

TEST(FourierFTLinear, SetAdapterControlsGradAndTwoActiveAdaptersAdd) {
  torch::manual_seed(2);
  auto layer = make_layer(20, 12, 40);
  layer->update_layer("second", AdapterOptions().n_frequency(25).scaling(3.0).random_loc_seed(5));
  EXPECT_EQ(layer->active_adapters(), std::vector<std::string>{"default"});
  EXPECT_TRUE(layer->fourierft_spectrum->at("default").requires_grad());
  EXPECT_FALSE(layer->fourierft_spectrum->at("second").requires_grad());

  const auto x = torch::randn({3, 20});
  const auto base = layer->base_layer(x).detach();
  const auto only_default = (layer(x) - base).detach();
  layer->set_adapter("second");
  EXPECT_FALSE(layer->fourierft_spectrum->at("default").requires_grad());
  EXPECT_TRUE(layer->fourierft_spectrum->at("second").requires_grad());
  const auto only_second = (layer(x) - base).detach();
  layer->set_adapter(std::vector<std::string>{"default", "second"});
  // Both against PEFT's formula in float64 (not against the sum of this layer's own outputs).
  torch::Tensor reference = base.to(torch::kDouble);
  for (const char* name : {"default", "second"}) {
    const auto& state = layer->adapter_state(name);
    reference += x.to(torch::kDouble).matmul(
        reference_delta_weight(layer->fourierft_spectrum->at(name).detach(), state.indices, 12, 20, state.scaling).t());
  }
  EXPECT_LE(relative_error(layer(x), reference), 1e-5);
  EXPECT_GT(relative_error(only_second, reference - base.to(torch::kDouble)), 1e-2);  // both really contribute
  EXPECT_GT(relative_error(only_default, reference - base.to(torch::kDouble)), 1e-2);
}

TEST(FourierFTLinear, MergeUnmergeRoundTrip) {
  torch::manual_seed(3);
  for (auto path : {LinearPath::Spectral, LinearPath::Dense}) {
    auto layer = make_layer(32, 24, 100, path);
    const auto w0 = layer->base_layer->weight.detach().clone();
    const auto x = torch::randn({6, 32});
    const auto unmerged = layer(x).detach();
    layer->merge();
    EXPECT_TRUE(layer->merged());
    EXPECT_EQ(layer->merged_adapters(), std::vector<std::string>{"default"});
    EXPECT_LE(relative_error(layer(x), unmerged), 1e-6);
    EXPECT_LE(relative_error(layer->base_layer->weight - w0, layer->get_delta_weight("default")), 1e-6);
    layer->unmerge();
    EXPECT_FALSE(layer->merged());
    EXPECT_LE((layer->base_layer->weight - w0).abs().max().item<double>(), 1e-6);
    EXPECT_LE(relative_error(layer(x), unmerged), 1e-6);
  }
}

TEST(FourierFTLinear, SafeMergeWithNanThrowsAndChangesNothing) {
  auto layer = make_layer(16, 16, 30);
  layer->update_layer("good", AdapterOptions().n_frequency(30).random_loc_seed(1));
  {
    torch::NoGradGuard no_grad;
    layer->fourierft_spectrum->at("default")[4] = std::numeric_limits<float>::quiet_NaN();
  }
  const auto before = layer->base_layer->weight.detach().clone();
  // "good" would merge fine on its own; the failure of "default" must not leave it merged either.
  EXPECT_ERROR_CONTAINS(layer->merge(/*safe_merge=*/true, std::vector<std::string>{"good", "default"}),
                        "NaNs detected", "default", "left unchanged");
  EXPECT_TRUE(torch::equal(layer->base_layer->weight, before));
  EXPECT_FALSE(layer->merged());
  EXPECT_TRUE(layer->merged_adapters().empty());
}

TEST(FourierFTLinear, MergingTwiceOnlyMergesOnce) {
  auto layer = make_layer(16, 8, 30);
  layer->merge();
  const auto once = layer->base_layer->weight.detach().clone();
  struct Collector : c10::WarningHandler {
    std::string text;
    void process(const c10::Warning& warning) override { text += warning.msg(); }
  } collector;
  {
    c10::WarningUtils::WarningHandlerGuard guard(&collector);
    layer->merge();  // PEFT's warning, nothing changes
  }
  EXPECT_NE(collector.text.find("All adapters are already merged, nothing to do."), std::string::npos) << collector.text;
  EXPECT_TRUE(torch::equal(layer->base_layer->weight, once));
  EXPECT_EQ(layer->merged_adapters().size(), 1u);
}

TEST(FourierFTLinear, DisableAdaptersGivesBaseOutputAndUnmergesFirst) {
  auto layer = make_layer(16, 12, 50);
  const auto w0 = layer->base_layer->weight.detach().clone();
  const auto x = torch::randn({3, 16});
  const auto base = layer->base_layer(x).detach();
  const auto adapted = layer(x).detach();
  layer->merge();
  layer->enable_adapters(false);
  EXPECT_TRUE(layer->disable_adapters());
  EXPECT_FALSE(layer->fourierft_spectrum->at("default").requires_grad());
  // W + delta_W - delta_W in float32: a few ulps of the larger of the two per entry (1e-6 failed ~7% of runs)
  EXPECT_LE(relative_error(layer(x), base), 1e-5);
  EXPECT_FALSE(layer->merged());
  EXPECT_LE((layer->base_layer->weight - w0).abs().max().item<double>(), 1e-5);
  layer->enable_adapters(true);
  EXPECT_TRUE(layer->fourierft_spectrum->at("default").requires_grad());
  EXPECT_LE(relative_error(layer(x), adapted), 1e-6);
}

TEST(FourierFTLinear, DeleteAdapter) {
  auto layer = make_layer(10, 10, 20);
  layer->update_layer("b", AdapterOptions().n_frequency(5));
  layer->update_layer("c", AdapterOptions().n_frequency(6));
  EXPECT_ERROR_CONTAINS(layer->delete_adapter("nope"), "unknown adapter 'nope'", "'default'", "'b'");
  layer->delete_adapter("default");  // the active one: falls back to the first remaining adapter
  EXPECT_EQ(layer->active_adapters(), std::vector<std::string>{"b"});
  EXPECT_TRUE(layer->fourierft_spectrum->at("b").requires_grad());
  EXPECT_FALSE(layer->has_adapter("default"));
  EXPECT_EQ(layer->named_parameters().size(), 4u);  // weight, bias, b, c
  layer->merge();
  EXPECT_ERROR_CONTAINS(layer->delete_adapter("b"), "'b' is merged");
  layer->unmerge();
  layer->delete_adapter("b");
  layer->delete_adapter("c");
  EXPECT_TRUE(layer->active_adapters().empty());
  const auto x = torch::randn({2, 10});
  EXPECT_TRUE(torch::equal(layer(x), layer->base_layer(x)));
}

TEST(FourierFTLinear, OneOptimizerStepChangesOnlyTheSpectrum) {
  auto layer = make_layer(24, 16, 40);
  for (auto& p : layer->base_layer->parameters()) p.requires_grad_(false);
  const auto before = layer->base_layer->weight.clone();
  const auto spectrum_before = layer->fourierft_spectrum->at("default").detach().clone();
  torch::optim::AdamW optimizer(layer->parameters(), torch::optim::AdamWOptions(0.1));
  layer(torch::randn({4, 24})).pow(2).mean().backward();
  optimizer.step();
  EXPECT_TRUE(torch::equal(layer->base_layer->weight, before));
  EXPECT_FALSE(torch::equal(layer->fourierft_spectrum->at("default"), spectrum_before));
}

TEST(FourierFTLinear, CloneIsDeepAndKeepsAdapters) {
  auto layer = make_layer(12, 8, 20);
  layer->update_layer("other", AdapterOptions().n_frequency(9));
  auto copy = std::dynamic_pointer_cast<fourierft::FourierFTLinearImpl>(layer->clone());
  ASSERT_TRUE(copy);
  const auto x = torch::randn({3, 12});
  EXPECT_TRUE(torch::allclose(copy->forward(x), layer(x)));
  EXPECT_EQ(copy->adapter_names(), layer->adapter_names());
  EXPECT_NE(copy->fourierft_spectrum->at("default").data_ptr(),
            layer->fourierft_spectrum->at("default").data_ptr());
  EXPECT_NE(copy->base_layer->weight.data_ptr(), layer->base_layer->weight.data_ptr());
  {
    torch::NoGradGuard no_grad;
    copy->fourierft_spectrum->at("default").zero_();
  }
  EXPECT_FALSE(torch::allclose(copy->forward(x), layer(x)));
}

TEST(FourierFTLinear, SpectrumFollowsBaseDtype) {
  torch::nn::Linear base(16, 8);
  base->to(torch::kDouble);
  FourierFTLinear layer(base);
  layer->update_layer("default", AdapterOptions().n_frequency(10));
  EXPECT_EQ(layer->fourierft_spectrum->at("default").scalar_type(), torch::kDouble);
  const auto x = torch::randn({2, 16}, torch::kDouble);
  EXPECT_EQ(layer(x).scalar_type(), torch::kDouble);
}

// PEFT: "fan_in_fan_out is set to True but the target module is `torch.nn.Linear`. Setting fan_in_fan_out
// to False." The C++ layers are all (out, in): the flag is warned about, dropped from the stored config,
// and merging stays correct (a transposed delta_W would corrupt the weights).
TEST(FourierFTLinear, FanInFanOutConfigIsWarnedAndIgnored) {
  struct Collector : c10::WarningHandler {
    std::string text;
    void process(const c10::Warning& warning) override { text += warning.msg(); }
  } collector;
  auto net = std::make_shared<torch::nn::Module>();
  fourierft::Linear fc = net->register_module("fc", fourierft::Linear(6, 4));
  std::optional<fourierft::FourierFTModel> peft;
  {
    c10::WarningUtils::WarningHandlerGuard guard(&collector);
    peft.emplace(fourierft::get_peft_model(net, fourierft::FourierFTConfig().target_modules({"fc"}).n_frequency(9)
                                                    .fan_in_fan_out(true)));
  }
  EXPECT_NE(collector.text.find("fan_in_fan_out is set to True"), std::string::npos) << collector.text;
  EXPECT_FALSE(peft->peft_config().at("default").fan_in_fan_out());
  const auto x = torch::randn({3, 6});
  const auto adapted = fc(x).detach();
  peft->merge_and_unload();
  EXPECT_LE(fourierft::testing::relative_error(fc(x), adapted), 1e-5);
}

TEST(FourierFTLinear, PrettyPrintNamesAdapters) {
  auto layer = make_layer(12, 8, 20);
  std::ostringstream os;
  os << *layer;
  EXPECT_NE(os.str().find("default(n_frequency=20, scaling=150)"), std::string::npos) << os.str();
}

}  // namespace

namespace {

// Empty batches, any leading shape, every dtype and route, a non-contiguous input.
TEST(FourierFTLinear, EmptyBatchesAnyShapeAndDtypeOnEveryPath) {
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

}  // namespace
