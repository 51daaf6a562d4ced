// The matrix-free spectral path on CPU: fused, blocked gathers and scatters around real FFTs.
//
// The spectral path (docs/guide.md, Concepts). For real x of length m and the n entries (u_k, v_k):
//   forward : Z[u_k] += c_k * conj(fft(x))[v_k],      y      = Re(ifft(Z)) * alpha / d2
//   grad_c  : grad_c_k = alpha / (d1 d2) * sum_b Re(conj(fft(x_b))[v_k] * conj(fft(g_b))[u_k])
//   grad_x  : W[v_k] += c_k * conj(fft(g))[u_k],       grad_x = Re(ifft(W)) * alpha / d1
// Forward and grad_x are the same primitive ("spectral apply") with the roles of u and v swapped.
// Only real FFTs are used: conj(fft(x))[v] is read from rfft(x) (bins above m/2 mirror conjugated
// lower ones), and Re(ifft(Z)) = irfft(H) where H is the Hermitian part of Z, which the scatter
// builds directly in the half spectrum. The gathers and scatters are fused loops here because as
// separate tensor ops they cost more than the FFTs saved.
#include "../internal.h"
#include "blocks.h"
#include "fft_rows.h"
#include "spectral_cpu.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/complex.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <memory>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#endif

namespace fourierft::detail {
namespace {

// ---------------------------------------------------------------------------------------------
// Spectral apply: out[r] = Re(ifft_p(Z_r)) (times a factor applied by the caller) with
// Z_r[dst_k] += c_k * conj(fft_m(in_r))[src_k], given in_spec = rfft(in) (shape [rows, m/2+1]).
// It fills the half spectrum H2[j] = Z[j] + conj(Z[-j]) (j = 0..p/2), so irfft(H2) = 2 Re(ifft(Z));
// the 1/2 is folded into the coefficients together with the caller's factor. Each entry lands in exactly one bin of H2: bin j when
// j <= p/2, else bin p-j conjugated; the self-mirrored bins 0 and p/2 receive z + conj(z) = 2 Re(z),
// written as 2z with the imaginary part cleared afterwards. With the conjugations folded into the
// coefficient, the inner loop is one gather, two multiplies and one scatter, without branches.

// Position of bin `k` of a length-`len` real signal's full spectrum inside rfft's half spectrum,
// and the sign of the imaginary part that turns R[bin] into conj(fft)[k]:
// conj(fft)[k] = conj(R[k]) for k <= len/2, and fft[len-k] = R[len-k] above.
inline void half_spectrum_read(int64_t k, int64_t len, int64_t& bin, double& imag_sign) {
  if (k <= len / 2) {
    bin = k;
    imag_sign = -1.0;
  } else {
    bin = len - k;
    imag_sign = 1.0;
  }
}

template <typename real_t>
struct ScatterEntry {
  int32_t src;   // bin of the input half spectrum
  int32_t dst;   // bin of the output half spectrum
  real_t re;     // H2[dst] += (re * R[src].re, im * R[src].im)
  real_t im;
};

// The scatter's entries sorted by output bin (stable: entries of one bin keep their order), so that the first
// entry of each bin assigns and the rest accumulate: no zeroing pass over the output block, only over the
// bins no entry writes (`empty`). Same sums, in the same order, as accumulating into zeros.
template <typename real_t>
struct ScatterPlan {
  std::vector<ScatterEntry<real_t>> entries;
  std::vector<int32_t> empty;
};

template <typename real_t>
ScatterPlan<real_t> make_scatter_plan(const real_t* coeff, const int64_t* src, int64_t src_len, const int64_t* dst,
                                      int64_t dst_len, int64_t n, double factor) {
  std::vector<ScatterEntry<real_t>> unsorted(n);
  const int64_t dst_bins = dst_len / 2 + 1;
  std::vector<int32_t> start(dst_bins + 1, 0);
  for (int64_t k = 0; k < n; ++k) {
    int64_t src_bin;
    double src_sign;
    half_spectrum_read(src[k], src_len, src_bin, src_sign);
    const int64_t j = dst[k];
    const bool upper = j > dst_len / 2;
    const int64_t dst_bin = upper ? dst_len - j : j;
    const double dst_sign = upper ? -1.0 : 1.0;
    const bool self_mirror = dst_bin == 0 || 2 * dst_bin == dst_len;
    // 0.5 * factor: irfft(H2) is twice the wanted real part; the caller's factor rides along so
    // that no separate pass over the output is needed.
    const double weight = (self_mirror ? 2.0 : 1.0) * 0.5 * factor;
    unsorted[k] = {static_cast<int32_t>(src_bin), static_cast<int32_t>(dst_bin),
                   static_cast<real_t>(weight * coeff[k]),
                   static_cast<real_t>(weight * coeff[k] * src_sign * dst_sign)};
    ++start[dst_bin + 1];
  }
  ScatterPlan<real_t> plan;
  for (int64_t b = 0; b < dst_bins; ++b) {
    if (start[b + 1] == 0) plan.empty.push_back(static_cast<int32_t>(b));
    start[b + 1] += start[b];
  }
  plan.entries.resize(n);
  for (const auto& e : unsorted) plan.entries[start[e.dst]++] = e;
  return plan;
}

// The O(rows * n) gathers and scatters run on blocks of rows whose half spectra are bin-major and
// interleaved complex ([bin][row] of (re, im)): the transforms write and read that layout directly
// (fft_rows.h), and every entry becomes an AXPY (scatter) or a dot product (correlate) over the rows of
// the block, contiguous and vectorised, instead of one scalar gather/scatter per (row, entry).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define FOURIERFT_SIMD_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define FOURIERFT_SIMD_CLONES
#endif

template <typename real_t>
struct CorrelateEntry {
  int32_t x_bin;
  int32_t g_bin;
  real_t imag_sign;  // Re((a.re + i sx a.im)(b.re + i sg b.im)) = a.re b.re - sx sg a.im b.im
};

// Runs of 2 * len reals (len complex values, re and im interleaved) are processed kLanes reals at a time,
// a whole number of complex values, so lane j always holds a real part for even j and an imaginary part
// for odd j; the fixed-size inner loops vectorise.
constexpr int64_t kLanes = 16;

// o = w * i (kAssign) or o += w * i over a run of m reals, w repeating every kLanes lanes.
template <bool kAssign, typename real_t>
__attribute__((always_inline)) inline void scaled_run(const real_t* w, const real_t* __restrict i,
                                                      real_t* __restrict o, int64_t m) {
  int64_t q = 0;
  for (; q + kLanes <= m; q += kLanes) {
    for (int64_t j = 0; j < kLanes; ++j) o[q + j] = kAssign ? w[j] * i[q + j] : o[q + j] + w[j] * i[q + j];
  }
  for (; q < m; ++q) o[q] = kAssign ? w[q % kLanes] * i[q] : o[q] + w[q % kLanes] * i[q];
}

template <typename real_t>
__attribute__((always_inline)) inline void scatter_block_impl(const ScatterEntry<real_t>* plan, int64_t n,
                                                              const real_t* in, real_t* out, int64_t stride,
                                                              int64_t len) {
  const int64_t m = 2 * len;
  int32_t previous = -1;
  for (int64_t k = 0; k < n; ++k) {
    const ScatterEntry<real_t> e = plan[k];
    real_t w[kLanes];
    for (int64_t j = 0; j < kLanes; j += 2) {
      w[j] = e.re;
      w[j + 1] = e.im;
    }
    real_t* __restrict o = out + 2 * e.dst * stride;
    const real_t* __restrict i = in + 2 * e.src * stride;
    if (e.dst != previous) {  // the bin's first entry (the plan is sorted by output bin)
      scaled_run<true>(w, i, o, m);
    } else {
      scaled_run<false>(w, i, o, m);
    }
    previous = e.dst;
  }
}

template <typename real_t>
__attribute__((always_inline)) inline void correlate_block_impl(const CorrelateEntry<real_t>* pairs, int64_t n,
                                                                const real_t* x, const real_t* g, int64_t stride,
                                                                int64_t len, double* acc) {
  const int64_t m = 2 * len;
  for (int64_t k = 0; k < n; ++k) {
    const CorrelateEntry<real_t> e = pairs[k];
    const real_t* __restrict a = x + 2 * e.x_bin * stride;
    const real_t* __restrict b = g + 2 * e.g_bin * stride;
    real_t sum[kLanes] = {};
    int64_t q = 0;
    for (; q + kLanes <= m; q += kLanes) {
      for (int64_t j = 0; j < kLanes; ++j) sum[j] += a[q + j] * b[q + j];
    }
    for (; q < m; ++q) sum[q % kLanes] += a[q] * b[q];
    real_t sum_re = 0, sum_im = 0;
    for (int64_t j = 0; j < kLanes; j += 2) {
      sum_re += sum[j];
      sum_im += sum[j + 1];
    }
    acc[k] += static_cast<double>(sum_re) + static_cast<double>(e.imag_sign) * sum_im;
  }
}

// Non-template entry points so that target_clones can compile an AVX2 variant of each.
#define FOURIERFT_BLOCK_KERNELS(real_t)                                                                      \
  FOURIERFT_SIMD_CLONES void scatter_block(const ScatterEntry<real_t>* plan, int64_t n, const real_t* in,   \
                                           real_t* out, int64_t stride, int64_t len) {                      \
    scatter_block_impl<real_t>(plan, n, in, out, stride, len);                                               \
  }                                                                                                          \
  FOURIERFT_SIMD_CLONES void correlate_block(const CorrelateEntry<real_t>* pairs, int64_t n, const real_t* x, \
                                             const real_t* g, int64_t stride, int64_t len, double* acc) {    \
    correlate_block_impl<real_t>(pairs, n, x, g, stride, len, acc);                                          \
  }
FOURIERFT_BLOCK_KERNELS(float)
FOURIERFT_BLOCK_KERNELS(double)
#undef FOURIERFT_BLOCK_KERNELS


// Copies a [rows, cols] matrix of complex values (row stride src_stride) into [cols, rows] (row stride
// dst_stride): between the transforms' row-major half spectra and the bin-major blocks. 8 x 8 tiles, so that
// the source and destination lines of a tile stay in L1; each complex value moves as one word.
template <typename word_t>
void transpose_words(const word_t* in, int64_t src_stride, int64_t rows, int64_t cols, word_t* out,
                     int64_t dst_stride) {
  constexpr int64_t kTile = 8;
  for (int64_t r0 = 0; r0 < rows; r0 += kTile) {
    const int64_t r1 = std::min(rows, r0 + kTile);
    for (int64_t c0 = 0; c0 < cols; c0 += kTile) {
      const int64_t c1 = std::min(cols, c0 + kTile);
      for (int64_t c = c0; c < c1; ++c) {
        for (int64_t r = r0; r < r1; ++r) out[c * dst_stride + r] = in[r * src_stride + c];
      }
    }
  }
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define FOURIERFT_AVX2_TRANSPOSE 1
// The same copy in 256-bit registers: 4 x 4 tiles of 64-bit words (complex float) by two unpacks and one
// lane permute per output row, or 2 x 2 tiles of 128-bit words (complex double) by lane permutes. The
// scalar loop above moves one word per load and store and was a quarter of the pipeline's time at 128
// rows (perf, width 768). Bits are moved, never computed on, so the double-typed registers are safe for
// any payload.
__attribute__((target("avx2"))) void transpose_words_avx2(const uint64_t* in, int64_t src_stride, int64_t rows,
                                                          int64_t cols, uint64_t* out, int64_t dst_stride) {
  constexpr int64_t kStrip = 32;  // columns per pass: the strip's destination lines stay in L1
  const int64_t rows4 = rows / 4 * 4;
  for (int64_t c0 = 0; c0 < cols; c0 += kStrip) {
    const int64_t c1 = std::min(cols, c0 + kStrip);
    for (int64_t r = 0; r < rows4; r += 4) {
      int64_t c = c0;
      for (; c + 4 <= c1; c += 4) {
        const auto* p = reinterpret_cast<const double*>(in + r * src_stride + c);
        const __m256d a = _mm256_loadu_pd(p), b = _mm256_loadu_pd(p + src_stride);
        const __m256d e = _mm256_loadu_pd(p + 2 * src_stride), f = _mm256_loadu_pd(p + 3 * src_stride);
        const __m256d t0 = _mm256_unpacklo_pd(a, b), t1 = _mm256_unpackhi_pd(a, b);
        const __m256d t2 = _mm256_unpacklo_pd(e, f), t3 = _mm256_unpackhi_pd(e, f);
        auto* q = reinterpret_cast<double*>(out + c * dst_stride + r);
        _mm256_storeu_pd(q, _mm256_permute2f128_pd(t0, t2, 0x20));
        _mm256_storeu_pd(q + dst_stride, _mm256_permute2f128_pd(t1, t3, 0x20));
        _mm256_storeu_pd(q + 2 * dst_stride, _mm256_permute2f128_pd(t0, t2, 0x31));
        _mm256_storeu_pd(q + 3 * dst_stride, _mm256_permute2f128_pd(t1, t3, 0x31));
      }
      for (; c < c1; ++c) {
        for (int64_t k = 0; k < 4; ++k) out[c * dst_stride + r + k] = in[(r + k) * src_stride + c];
      }
    }
  }
  if (rows4 < rows) transpose_words(in + rows4 * src_stride, src_stride, rows - rows4, cols, out + rows4, dst_stride);
}

__attribute__((target("avx2"))) void transpose_words_avx2(const std::array<double, 2>* in, int64_t src_stride,
                                                          int64_t rows, int64_t cols, std::array<double, 2>* out,
                                                          int64_t dst_stride) {
  constexpr int64_t kStrip = 16;
  const int64_t rows2 = rows / 2 * 2;
  for (int64_t c0 = 0; c0 < cols; c0 += kStrip) {
    const int64_t c1 = std::min(cols, c0 + kStrip);
    for (int64_t r = 0; r < rows2; r += 2) {
      int64_t c = c0;
      for (; c + 2 <= c1; c += 2) {
        const auto* p = reinterpret_cast<const double*>(in + r * src_stride + c);
        const __m256d a = _mm256_loadu_pd(p), b = _mm256_loadu_pd(p + 2 * src_stride);
        auto* q = reinterpret_cast<double*>(out + c * dst_stride + r);
        _mm256_storeu_pd(q, _mm256_permute2f128_pd(a, b, 0x20));
        _mm256_storeu_pd(q + 2 * dst_stride, _mm256_permute2f128_pd(a, b, 0x31));
      }
      for (; c < c1; ++c) {
        out[c * dst_stride + r] = in[r * src_stride + c];
        out[c * dst_stride + r + 1] = in[(r + 1) * src_stride + c];
      }
    }
  }
  if (rows2 < rows) transpose_words(in + rows2 * src_stride, src_stride, rows - rows2, cols, out + rows2, dst_stride);
}

const bool has_avx2 = __builtin_cpu_supports("avx2");
#endif

template <typename real_t>
void transpose_complex(const real_t* src, int64_t src_stride, int64_t rows, int64_t cols, real_t* dst,
                       int64_t dst_stride) {
  using word_t = std::conditional_t<std::is_same_v<real_t, float>, uint64_t, std::array<double, 2>>;
  static_assert(sizeof(word_t) == 2 * sizeof(real_t));
  const auto* in = reinterpret_cast<const word_t*>(src);
  auto* out = reinterpret_cast<word_t*>(dst);
#ifdef FOURIERFT_AVX2_TRANSPOSE
  if (has_avx2) return transpose_words_avx2(in, src_stride, rows, cols, out, dst_stride);
#endif
  transpose_words(in, src_stride, rows, cols, out, dst_stride);
}


// Per-thread scratch of the blocked pipeline: the bin-major half spectra of the block's input and output
// rows, and the row-major half spectra the transforms write and read (rows staging_stride apart). Plain
// buffers, no tensors: workers must not touch at::Tensor objects that another thread frees.
template <typename real_t>
struct Scratch {
  Scratch(int64_t in_bins, int64_t out_bins, int64_t staging_bins, int64_t block)
      : in(2 * in_bins * block),
        out(2 * out_bins * block),
        rows(2 * staging_stride<real_t>(staging_bins) * block) {}
  std::vector<real_t> in, out, rows;
};

// rfft of rows [r0, r0 + len) of a contiguous real [rows, m] array, bin-major into spec (stride `block`), by way
// of the row-major `staging`.
template <typename real_t>
void rfft_block(const real_t* real2d, int64_t m, int64_t r0, int64_t len, int64_t block, real_t* staging,
                real_t* spec) {
  const int64_t bins = m / 2 + 1, stride = staging_stride<real_t>(bins);
  rfft_rows(real2d + r0 * m, staging, m, len, std::is_same_v<real_t, double>, stride);
  transpose_complex(staging, stride, len, bins, spec, block);
}

// The scatter of one block already in s.in (bin-major), then the inverse transform into rows
// [r0, r0 + len) of the contiguous real [rows, p] array `dst`.
template <typename real_t>
void scatter_and_invert(const ScatterPlan<real_t>& plan, Scratch<real_t>& s, int64_t block, int64_t len,
                        int64_t out_len, real_t* dst, int64_t r0, const real_t* bias = nullptr) {
  const int64_t out_bins = out_len / 2 + 1;
  for (const int32_t bin : plan.empty) std::fill_n(s.out.data() + 2 * bin * block, 2 * len, real_t(0));
  scatter_block(plan.entries.data(), static_cast<int64_t>(plan.entries.size()), s.in.data(), s.out.data(), block,
                len);
  // The self-mirrored bins 0 and p/2 hold 2z; their real part is 2 Re(z), the wanted value.
  const auto clear_imag = [&](int64_t bin) {
    real_t* b = s.out.data() + 2 * bin * block;
    for (int64_t t = 0; t < len; ++t) b[2 * t + 1] = real_t(0);
  };
  clear_imag(0);
  if (out_len % 2 == 0) clear_imag(out_len / 2);
  const int64_t stride = staging_stride<real_t>(out_bins);
  transpose_complex(s.out.data(), block, out_bins, len, s.rows.data(), stride);
  real_t* out = dst + r0 * out_len;
  irfft_rows(s.rows.data(), out, out_len, len, std::is_same_v<real_t, double>, stride);
  if (bias != nullptr) {  // epilogue while the rows are in cache: + bias
    for (int64_t t = 0; t < len; ++t) {
      real_t* __restrict row = out + t * out_len;
      for (int64_t j = 0; j < out_len; ++j) row[j] += bias[j];
    }
  }
}


// Rows of `in2d` (contiguous real [rows, m]) through the spectral apply into `dst` (real [rows, p]).
template <typename real_t>
void spectral_apply_rows(const at::Tensor& in2d, int64_t in_len, const ScatterPlan<real_t>& plan,
                         int64_t out_len, at::Tensor& dst, const real_t* bias = nullptr) {
  const int64_t rows = in2d.size(0);
  const int64_t in_bins = in_len / 2 + 1, out_bins = out_len / 2 + 1;
  const int64_t staging_bins = std::max(in_bins, out_bins);
  const int64_t block =
      block_rows<real_t>(in_bins + out_bins + staging_bins, rows, at::get_num_threads(), 256 * 1024, 8);
  const int64_t chunks = chunk_count(rows, block);
  const real_t* in = in2d.const_data_ptr<real_t>();
  real_t* out = dst.data_ptr<real_t>();
  const auto make = [&]() -> Scratch<real_t>& {
    return thread_scratch<Scratch<real_t>>(in_bins, out_bins, staging_bins, block);
  };
  for_each_block(rows, block, chunks, make, [&](int64_t, Scratch<real_t>& s, int64_t r0, int64_t len) {
    rfft_block<real_t>(in, in_len, r0, len, block, s.rows.data(), s.in.data());
    scatter_and_invert(plan, s, block, len, out_len, out, r0, bias);
  });
}

// The backward's blocked pass: grad_x's spectral part into gx2d (when defined) and grad_c (when x2d is
// defined), from one rfft of each block of grad_out. Returns grad_c in double, unnormalised.
template <typename real_t>
std::vector<double> spectral_backward_rows(const at::Tensor& g2d, const at::Tensor& x2d, const at::Tensor& coeff,
                                           const int64_t* u, const int64_t* v, int64_t out_features,
                                           int64_t in_features, double scaling, at::Tensor& gx2d) {
  const int64_t rows = g2d.size(0), n = coeff.size(0);
  const bool need_grad_x = gx2d.defined(), need_grad_spectrum = x2d.defined();
  ScatterPlan<real_t> plan;
  if (need_grad_x) {
    plan = make_scatter_plan<real_t>(coeff.const_data_ptr<real_t>(), u, out_features, v, in_features, n,
                                     scaling / static_cast<double>(out_features));
  }
  std::vector<CorrelateEntry<real_t>> pairs(need_grad_spectrum ? n : 0);
  for (int64_t k = 0; k < static_cast<int64_t>(pairs.size()); ++k) {
    int64_t xb, gb;
    double xs, gs;
    half_spectrum_read(v[k], in_features, xb, xs);
    half_spectrum_read(u[k], out_features, gb, gs);
    pairs[k] = {static_cast<int32_t>(xb), static_cast<int32_t>(gb), static_cast<real_t>(-xs * gs)};
  }
  const int64_t g_bins = out_features / 2 + 1, x_bins = in_features / 2 + 1;
  // Scratch: g's spectrum (in), grad_x's spectrum (out, when needed), and x's spectrum (when needed).
  const int64_t x_spec_bins = need_grad_spectrum ? x_bins : 0;
  const int64_t gx_spec_bins = need_grad_x ? x_bins : 0;
  const int64_t staging_bins = std::max(g_bins, x_bins);
  const int64_t block =
      block_rows<real_t>(g_bins + gx_spec_bins + x_spec_bins + staging_bins, rows, at::get_num_threads(),
                         512 * 1024, 8);
  const int64_t chunks = chunk_count(rows, block);
  const real_t* g = g2d.const_data_ptr<real_t>();
  const real_t* x = need_grad_spectrum ? x2d.const_data_ptr<real_t>() : nullptr;
  real_t* gx = need_grad_x ? gx2d.data_ptr<real_t>() : nullptr;
  struct BackwardScratch {
    BackwardScratch(int64_t g_bins, int64_t gx_bins, int64_t x_bins, int64_t staging_bins, int64_t block)
        : s(g_bins, gx_bins, staging_bins, block), x(2 * x_bins * block) {}
    Scratch<real_t> s;
    std::vector<real_t> x;
  };
  std::vector<std::vector<double>> partial(chunks, std::vector<double>(pairs.size(), 0.0));
  const auto make = [&]() -> BackwardScratch& {
    return thread_scratch<BackwardScratch>(g_bins, gx_spec_bins, x_spec_bins, staging_bins, block);
  };
  for_each_block(rows, block, chunks, make, [&](int64_t c, BackwardScratch& scratch, int64_t r0, int64_t len) {
    auto& s = scratch.s;
    rfft_block<real_t>(g, out_features, r0, len, block, s.rows.data(), s.in.data());
    if (need_grad_spectrum) {
      rfft_block<real_t>(x, in_features, r0, len, block, s.rows.data(), scratch.x.data());
      correlate_block(pairs.data(), n, scratch.x.data(), s.in.data(), block, len, partial[c].data());
    }
    if (need_grad_x) scatter_and_invert(plan, s, block, len, in_features, gx, r0);
  });
  std::vector<double> total(pairs.size(), 0.0);
  for (const auto& part : partial) {
    for (size_t k = 0; k < total.size(); ++k) total[k] += part[k];
  }
  return total;
}

// grad_c from its unnormalised double sums, in the spectrum's dtype: one pass that scales and converts (as
// tensor ops, allocate + copy + mul_ + to cost ~13 us a call, a tenth of the whole backward at 256 x 128).
at::Tensor finish_grad_spectrum(const std::vector<double>& sums, const at::Tensor& spectrum, int64_t out_features,
                                int64_t in_features, double scaling) {
  const int64_t n = static_cast<int64_t>(sums.size());
  const double scale = scaling / (static_cast<double>(out_features) * in_features);
  auto grad = at::empty({n}, spectrum.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "fourierft_grad_spectrum", [&] {
    scalar_t* out = grad.data_ptr<scalar_t>();
    for (int64_t k = 0; k < n; ++k) out[k] = static_cast<scalar_t>(sums[k] * scale);
  });
  return grad;
}

}  // namespace

void pipeline_apply(const at::Tensor& in2d, int64_t in_len, const at::Tensor& coeff, const int64_t* src,
                    const int64_t* dst, int64_t out_len, double factor, at::Tensor& out2d, const at::Tensor& bias) {
  AT_DISPATCH_FLOATING_TYPES(in2d.scalar_type(), "fourierft_pipeline_apply", [&] {
    const auto plan = make_scatter_plan<scalar_t>(coeff.const_data_ptr<scalar_t>(), src, in_len, dst, out_len,
                                                  coeff.size(0), factor);
    spectral_apply_rows<scalar_t>(in2d, in_len, plan, out_len, out2d,
                                  bias.defined() ? bias.const_data_ptr<scalar_t>() : nullptr);
  });
}

at::Tensor pipeline_backward(const at::Tensor& g2d, const at::Tensor& x2d, const at::Tensor& coeff, const int64_t* u,
                             const int64_t* v, int64_t out_features, int64_t in_features, double scaling,
                             at::Tensor& gx2d, const at::Tensor& spectrum) {
  at::Tensor grad_spectrum;
  AT_DISPATCH_FLOATING_TYPES(g2d.scalar_type(), "fourierft_pipeline_backward", [&] {
    const auto sums = spectral_backward_rows<scalar_t>(g2d, x2d, coeff, u, v, out_features, in_features, scaling, gx2d);
    if (x2d.defined()) grad_spectrum = finish_grad_spectrum(sums, spectrum, out_features, in_features, scaling);
  });
  return grad_spectrum;
}

at::Tensor spectral_linear_cpu(const at::Tensor& x, const at::Tensor& spectrum, const at::Tensor& indices,
                               int64_t out_features, int64_t in_features, double scaling) {
  if (generic_kernels_on_cpu()) return spectral_linear_generic(x, spectrum, indices, out_features, in_features, scaling);
  check_spectrum_and_indices("spectral_linear", spectrum, indices, out_features, in_features);
  check_input("spectral_linear", x, spectrum, in_features);
  check_cpu("spectral_linear", x);
  const int64_t n = spectrum.size(0);
  const auto work = compute_dtype(x.scalar_type(), spectrum.scalar_type());
  const auto x2d = x.reshape({-1, in_features}).to(work).contiguous();
  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end());
  out_shape.back() = out_features;
  const int64_t rows = x2d.size(0);
  if (rows == 0) return at::zeros(out_shape, x.options());  // an empty batch, as torch::nn::Linear
  const auto coeff = spectrum.to(work).contiguous();
  const auto idx = indices.contiguous();
  const int64_t* u = idx.const_data_ptr<int64_t>();
  const int64_t* v = u + n;
  auto y = at::empty({rows, out_features}, x2d.options());
  AT_DISPATCH_FLOATING_TYPES(work, "fourierft_spectral_linear", [&] {
    const auto plan = make_scatter_plan<scalar_t>(coeff.const_data_ptr<scalar_t>(), v, in_features, u,
                                                  out_features, n, scaling / static_cast<double>(in_features));
    spectral_apply_rows<scalar_t>(x2d, in_features, plan, out_features, y);
  });
  return y.to(x.scalar_type()).view(out_shape);
}

// grad_x: the spectral apply of grad_out with u and v swapped. grad_c_k = alpha / (d1 d2) *
// sum_r Re(conj(fft(x_r))[v_k] * conj(fft(g_r))[u_k]), from the rfft of x recomputed per block (x is
// saved instead of its spectrum: it is usually alive anyway, and the transform is cheap while the block
// is in cache).
std::tuple<at::Tensor, at::Tensor> spectral_linear_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& spectrum, const at::Tensor& indices,
    int64_t out_features, int64_t in_features, double scaling, bool need_grad_x, bool need_grad_spectrum) {
  if (generic_kernels_on_cpu()) return spectral_linear_backward_generic(grad_out, x, spectrum, indices, out_features, in_features, scaling, need_grad_x, need_grad_spectrum);
  check_spectral_backward("_spectral_linear_backward", grad_out, x, spectrum, indices, out_features, in_features,
                          need_grad_spectrum);
  check_cpu("_spectral_linear_backward", grad_out);
  const int64_t n = spectrum.size(0);
  const auto work = compute_dtype(x.scalar_type(), spectrum.scalar_type());
  const auto g2d = grad_out.reshape({-1, out_features}).to(work).contiguous();
  const int64_t rows = g2d.size(0);
  std::vector<int64_t> grad_x_shape(grad_out.sizes().begin(), grad_out.sizes().end());
  grad_x_shape.back() = in_features;
  const auto x_options = grad_out.options().dtype(x.scalar_type());
  at::Tensor grad_x = at::empty({0}, x_options);
  at::Tensor grad_spectrum = at::empty({0}, spectrum.options());
  if (rows == 0) {  // an empty batch: nothing flows back
    if (need_grad_x) grad_x = at::zeros(grad_x_shape, x_options);
    if (need_grad_spectrum) grad_spectrum = at::zeros_like(spectrum);
    return {grad_x, grad_spectrum};
  }
  if (!need_grad_x && !need_grad_spectrum) return {grad_x, grad_spectrum};
  const auto x2d = need_grad_spectrum ? x.reshape({-1, in_features}).to(work).contiguous() : at::Tensor();
  const auto coeff = spectrum.to(work).contiguous();
  const auto idx = indices.contiguous();
  const int64_t* u = idx.const_data_ptr<int64_t>();
  const int64_t* v = u + n;
  auto gx2d = need_grad_x ? at::empty({rows, in_features}, g2d.options()) : at::Tensor();
  // Always by correlation: spectral_linear's contract is that nothing of size out x in is allocated (the
  // folded gradient route is fourierft::linear's, see linear_backward_cpu).
  AT_DISPATCH_FLOATING_TYPES(work, "fourierft_spectral_linear_backward", [&] {
    const auto sums = spectral_backward_rows<scalar_t>(g2d, x2d, coeff, u, v, out_features, in_features, scaling, gx2d);
    if (need_grad_spectrum) grad_spectrum = finish_grad_spectrum(sums, spectrum, out_features, in_features, scaling);
  });
  if (need_grad_x) grad_x = gx2d.to(x.scalar_type()).view(grad_x_shape);
  return {grad_x, grad_spectrum};
}

}  // namespace fourierft::detail
