// Which forward path is cheaper: the matrix-free spectral one or materialising delta_W and one GEMM.
#include <fourierft/ops.h>

#include <algorithm>
#include <cmath>

namespace fourierft {

bool spectral_path_is_cheaper(int64_t tokens, int64_t out_features, int64_t in_features,
                              int64_t n_frequency, bool delta_cached) {
  // Rough per-call cost in units of ~0.03 ns, fitted on CPU (2-core x86 VM, docs/benchmarks.md): the
  // spectral path pays real FFTs of both widths plus the O(n) gather/scatter per token (cache-missing
  // reads, ~2 ns per coefficient and token); the dense path one GEMM per token (~0.015 ns per
  // multiply-add) plus, unless delta_W is cached, one inverse FFT of the full d1 x d2 spectrum.
  const double d1 = static_cast<double>(out_features);
  const double d2 = static_cast<double>(in_features);
  const double t = static_cast<double>(std::max<int64_t>(tokens, 1));
  const double spectral =
      t * (3.5 * (d1 * std::log2(d1 + 1) + d2 * std::log2(d2 + 1)) + 60.0 * n_frequency);
  double dense = t * d1 * d2 * 0.5;
  if (!delta_cached) dense += 10.0 * d1 * d2 * std::log2(d1 * d2 + 1);
  return spectral <= dense;
}

}  // namespace fourierft
