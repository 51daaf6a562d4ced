// Which forward path is cheaper: the matrix-free spectral one or materialising delta_W and one GEMM.
#include "internal.h"

#include <fourierft/ops.h>

#include <algorithm>
#include <atomic>
#include <cmath>

namespace fourierft {

namespace {
// Per-call costs in units of ~0.03 ns, fitted on CPU (2-core x86 VM, float32; docs/benchmarks.md):
// one real FFT of width d costs about kFftCostPerPoint * d * log2(d) per row (the spectral path runs the
// forward and inverse transforms of both widths' rows) ...
constexpr double kFftCostPerPoint = 3.5;
// ... plus the O(n) gather/scatter per row and coefficient (cache-missing reads, ~2 ns each) ...
constexpr double kGatherCostPerCoefficient = 60.0;
// ... against one GEMM per row (~0.015 ns per multiply-add) on the dense path ...
constexpr double kGemmCostPerMultiplyAdd = 0.5;
// ... which, unless delta_W is cached, first builds it with one inverse FFT of the d1 x d2 spectrum.
constexpr double kDeltaWeightCostPerPoint = 10.0;
}  // namespace

bool spectral_path_is_cheaper(int64_t tokens, int64_t out_features, int64_t in_features,
                              int64_t n_frequency, bool delta_cached) {
  const double d1 = static_cast<double>(out_features);
  const double d2 = static_cast<double>(in_features);
  const double t = static_cast<double>(std::max<int64_t>(tokens, 1));
  const double spectral = t * (kFftCostPerPoint * (d1 * std::log2(d1 + 1) + d2 * std::log2(d2 + 1)) +
                               kGatherCostPerCoefficient * static_cast<double>(n_frequency));
  double dense = t * d1 * d2 * kGemmCostPerMultiplyAdd;
  if (!delta_cached) dense += kDeltaWeightCostPerPoint * d1 * d2 * std::log2(d1 * d2 + 1);
  return spectral <= dense;
}

namespace {
std::atomic<LinearPath> forced_linear_path{LinearPath::Auto};

// fourierft::linear, per call, in nanoseconds (fitted on the 2-core x86 VM of docs/benchmarks.md, float32, from
// ops.linear timings with each path forced by set_linear_path, widths 256-4096, 128-8192 tokens, n 1000..10%).
// The spectral pipeline costs, per row, a real FFT of each width with the transposes around it, and the
// scatter (or correlation) over the n coefficients ...
constexpr double kPipelineNsPerPointLog = 0.07;
constexpr double kPipelineNsPerCoefficient = 0.2;
// ... against building W + delta_W once per call: an irfft2 of the d1 x d2 spectrum and one add, after
// scattering the n coefficients into it (random writes).
constexpr double kMergeNsPerPointLog = 0.1;
constexpr double kMergeNsPerCoefficient = 8.0;
// The folded route: per row, the real FFTs of both widths and two GEMM rows against the h1 x h2 matrices; per
// call, building those matrices (zeroing 2 h1 h2 values, then n scattered adds: random writes, as the merged
// weight's; the spectrum gradient's n reads of A and B cost about the same).
constexpr double kFoldedNsPerMultiplyAdd = 0.006;
constexpr double kFoldedNsPerPointLog = 0.07;
constexpr double kFoldedBuildNsPerPoint = 0.2;
constexpr double kFoldedBuildNsPerCoefficient = 8.0;
// The spectrum gradient by correlation costs, per row and coefficient, two gathers and a multiply-add in the
// pipeline's blocks.
constexpr double kCorrelateNsPerCoefficient = 0.2;
// A cached W + delta_W costs, per call, the fingerprint of W (one read; in a model W comes from memory, not
// cache: 0.18-0.20 ns per entry at 768^2-1024^2, 0.32-0.35 at 2048^2-4096^2, measured between GEMMs) against
// the pipeline's forward alone, which inference runs at ~0.75 of pipeline_ns (fitted on forward + backward
// calls; measured 0.7-0.75 of it at widths 768-4096, 512-1024 tokens). With 0.2 and the whole pipeline_ns the
// cache won at 2048^2 and 4096^2 with 512 tokens, where it cost 1.34 and 5.8 ms a call against the pipeline's
// 1.19 and 2.65.
constexpr double kFingerprintNsPerPoint = 0.35;
constexpr double kInferencePipelineShare = 0.75;
// Inside a training step (after the base GEMMs, the padded half spectra of fft_rows.h), the pipeline's forward
// costs 0.40-0.60 of pipeline_ns (measured at widths 384-2048, 512-4096 tokens, n = 1000, forward timed alone
// in rounds with the frozen layer's), while the merged route's extra cost is ~1.0-1.3x its estimate at 2048+
// tokens (0.6x at fewer, where the pipeline wins anyway). The forward (and a backward's grad_x alone: the same
// transforms and scatter) compares merged against 0.55 of pipeline_ns: merged from ~2.5 tokens per feature
// (768 x 2048, 1536 x 4096: merged; 1024 x 2048, 2048 x 2048: pipeline; all as measured). Beside a correlation
// that transforms g's and x's rows anyway, grad_x by the pipeline adds 0.23-0.27 of pipeline_ns warm, ~0.3 in
// a step: merged from ~4 tokens per feature (768 x 2048: pipeline, 1.261x vs 1.290x the frozen layer; 384 x 4096,
// 512 x 4096, 256 x 8192: merged, 1.317x vs 1.408x, 1.260x vs 1.294x, 1.418x vs 1.570x; 1024 x 4096 tied). With
// the shares 1.0 and 0.5 the forward merged from 1.4 tokens per feature and grad_x from 2.9.
constexpr double kForwardPipelineShare = 0.55;
constexpr double kGradXBesideCorrelationShare = 0.3;

double pipeline_ns(int64_t tokens, int64_t out_features, int64_t in_features, int64_t n_frequency) {
  const double d1 = static_cast<double>(out_features), d2 = static_cast<double>(in_features);
  return static_cast<double>(std::max<int64_t>(tokens, 1)) *
         (kPipelineNsPerPointLog * (d1 * std::log2(d1 + 1) + d2 * std::log2(d2 + 1)) +
          kPipelineNsPerCoefficient * static_cast<double>(n_frequency));
}
}  // namespace

void set_linear_path(LinearPath path) { forced_linear_path.store(path); }
LinearPath linear_path() { return forced_linear_path.load(); }

bool merged_weight_cache_pays(int64_t tokens, int64_t out_features, int64_t in_features, int64_t n_frequency) {
  return kFingerprintNsPerPoint * static_cast<double>(out_features) * static_cast<double>(in_features) <
         kInferencePipelineShare * pipeline_ns(tokens, out_features, in_features, n_frequency);
}

namespace detail {
namespace {
double half_bins(int64_t d1, int64_t d2) {
  return static_cast<double>(d1 / 2 + 1) * static_cast<double>(d2 / 2 + 1);
}
double folded_gemm_ns(int64_t tokens, int64_t d1, int64_t d2) {
  return static_cast<double>(std::max<int64_t>(tokens, 1)) * 2.0 * half_bins(d1, d2) * kFoldedNsPerMultiplyAdd;
}
}  // namespace

LinearRoute linear_route(int64_t tokens, int64_t out_features, int64_t in_features, int64_t n_frequency,
                         RoutePass pass) {
  switch (forced_linear_path.load(std::memory_order_relaxed)) {
    case LinearPath::Spectral: return LinearRoute::Pipeline;
    case LinearPath::Merged: return LinearRoute::Merged;
    case LinearPath::Folded: return LinearRoute::Folded;
    case LinearPath::Auto: break;
  }
  const double d1 = static_cast<double>(out_features), d2 = static_cast<double>(in_features);
  const double points = d1 * d2, n = static_cast<double>(n_frequency);
  const double pipeline_share =
      pass == RoutePass::GradXBesideCorrelation ? kGradXBesideCorrelationShare : kForwardPipelineShare;
  const double pipeline = pipeline_share * pipeline_ns(tokens, out_features, in_features, n_frequency);
  const double merged = kMergeNsPerPointLog * points * std::log2(points + 1) + kMergeNsPerCoefficient * n;
  const double folded =
      folded_gemm_ns(tokens, out_features, in_features) +
      static_cast<double>(std::max<int64_t>(tokens, 1)) * kFoldedNsPerPointLog *
          (d1 * std::log2(d1 + 1) + d2 * std::log2(d2 + 1)) +
      kFoldedBuildNsPerPoint * 2.0 * half_bins(out_features, in_features) + kFoldedBuildNsPerCoefficient * n;
  if (pipeline <= merged && pipeline <= folded) return LinearRoute::Pipeline;
  return merged < folded ? LinearRoute::Merged : LinearRoute::Folded;
}

bool linear_grad_spectrum_is_folded(int64_t tokens, int64_t out_features, int64_t in_features, int64_t n_frequency) {
  switch (forced_linear_path.load(std::memory_order_relaxed)) {
    case LinearPath::Spectral: return false;
    case LinearPath::Merged:
    case LinearPath::Folded: return true;
    case LinearPath::Auto: break;
  }
  // Both need x's row transforms; the GEMMs replace the tokens x n products (and g's transforms, shared with a
  // pipeline grad_x, are counted for neither).
  const double t = static_cast<double>(std::max<int64_t>(tokens, 1));
  return folded_gemm_ns(tokens, out_features, in_features) + kFoldedBuildNsPerCoefficient * n_frequency <
         t * static_cast<double>(n_frequency) * kCorrelateNsPerCoefficient;
}
}  // namespace detail

}  // namespace fourierft
