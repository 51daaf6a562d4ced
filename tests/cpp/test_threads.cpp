// Several threads through one adapted layer, and the delta_W cache under writes the version counter
// misses and under InferenceMode. Built twice: into the main test binary, and with AddressSanitizer +
// UBSan (fourierft_sanitized_tests, tests/CMakeLists.txt) together with src/layer.cpp, where the
// unsynchronised cache write of an earlier version corrupted the heap ("unaligned tcache chunk").
#include "test_threads_helpers.h"

#include <atomic>
#include <thread>

using fourierft::LinearPath;
using fourierft::testing::frozen_layer;
using fourierft::testing::reference_delta_weight;
using fourierft::testing::reference_forward;
using fourierft::testing::relative_error;

namespace {

// The serving case: one adapted layer, many threads, inference. Every result must equal the reference (no torn or
// stale delta_W), on every path. Half-way, all threads stop at a barrier while one of them changes the spectrum's
// values in place (a version-counter-blind write, as an EMA update or hot swap makes); after it every result must
// follow the new values: a cache that served the old delta_W fails. Runs under AddressSanitizer too.
void share_one_layer_for_inference(LinearPath path) {
  {
    constexpr int kThreads = 8, kRounds = 24, kWriteRound = 12;
    auto layer = frozen_layer(path);
    std::vector<torch::Tensor> inputs, before, after;
    for (int i = 0; i < 8; ++i) {
      inputs.push_back(torch::randn({64 * (i % 3 + 1), 24}));
      before.push_back(reference_forward(layer, inputs.back()));
    }
    auto& spectrum = layer->spectrum("default");
    const auto original = spectrum.detach().clone();
    const auto written = original * -2.0 + 0.5;
    {
      torch::NoGradGuard guard;
      spectrum.copy_(written);
      for (const auto& x : inputs) after.push_back(reference_forward(layer, x));
      spectrum.copy_(original);
    }
    std::atomic<int> failures{0}, arrived{0}, done_writing{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&, t] {
        for (int round = 0; round < kRounds; ++round) {
          if (round == kWriteRound) {  // barrier; thread 0 writes; everyone waits for the write
            arrived.fetch_add(1);
            while (arrived.load() < kThreads) {
            }
            if (t == 0) {
              torch::NoGradGuard guard;
              spectrum.data().copy_(written);
              done_writing.store(1);
            }
            while (done_writing.load() == 0) {
            }
          }
          const int i = (t + round) % 8;
          torch::Tensor y;
          if (round % 2 == 0) {
            c10::InferenceMode guard;
            y = layer(inputs[i]);
          } else {
            torch::NoGradGuard guard;
            y = layer(inputs[i]);
          }
          const auto& expected = round < kWriteRound ? before[i] : after[i];
          if (relative_error(y, expected) > 1e-5) ++failures;
        }
      });
    }
    for (auto& thread : threads) thread.join();
    EXPECT_EQ(failures.load(), 0) << "path " << path << ", linear path " << static_cast<int>(fourierft::linear_path());
  }
}

TEST(Threads, ThreadsShareOneLayerForInference) {
  for (const auto path : {LinearPath::Dense, LinearPath::Spectral, LinearPath::Auto}) share_one_layer_for_inference(path);
}

// The whole-layer op's every route (fourierft::linear under LinearPath::Auto) under the same load: the folded
// route's blocked transforms and GEMMs, the pipeline, the merged weight.
TEST(Threads, ThreadsShareOneLayerOnEveryLinearRoute) {
  for (const auto route : {fourierft::LinearPath::Folded, fourierft::LinearPath::Spectral,
                           fourierft::LinearPath::Dense}) {
    fourierft::set_linear_path(route);
    share_one_layer_for_inference(LinearPath::Auto);
  }
  fourierft::set_linear_path(fourierft::LinearPath::Auto);
}

// Every thread's first forward misses the cache at the same moment and stores into it: many fresh layers,
// all threads released together. Without the cache's lock this corrupts the heap (caught by ASan).
TEST(Threads, ConcurrentFirstForwardsStoreTheCacheSafely) {
  const auto x = torch::randn({32, 24});
  for (int trial = 0; trial < 60; ++trial) {
    auto layer = frozen_layer(LinearPath::Dense);
    const auto expected = reference_forward(layer, x);
    std::atomic<int> ready{0}, failures{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 6; ++t) {
      threads.emplace_back([&] {
        ready.fetch_add(1);
        while (ready.load() < 6) {
        }
        torch::NoGradGuard guard;
        if (relative_error(layer(x), expected) > 1e-5) failures.fetch_add(1);
      });
    }
    for (auto& thread : threads) thread.join();
    ASSERT_EQ(failures.load(), 0) << "trial " << trial;
  }
}

TEST(Threads, CacheFollowsWritesTheVersionCounterMisses) {
  auto layer = frozen_layer(LinearPath::Dense);
  const auto x = torch::randn({16, 24});
  torch::NoGradGuard no_grad;
  layer(x);
  layer->spectrum("default").data().mul_(3.0);  // .data() has its own version counter
  EXPECT_LE(relative_error(layer(x), reference_forward(layer, x)), 1e-6);
  layer->spectrum("default").set_data(torch::randn({60}));
  EXPECT_LE(relative_error(layer(x), reference_forward(layer, x)), 1e-6);
}

TEST(Threads, DeltaCachedUnderInferenceModeThenAForwardWithGradients) {
  auto layer = frozen_layer(LinearPath::Dense);
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


}  // namespace
