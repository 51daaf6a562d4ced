// Which forward path is cheaper: the matrix-free spectral one or materialising delta_W and one GEMM.
#include <fourierft/ops.h>

#include <algorithm>
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

}  // namespace fourierft
