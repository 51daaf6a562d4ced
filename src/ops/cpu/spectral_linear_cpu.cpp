// The matrix-free spectral path on CPU: fused, blocked gathers and scatters around real FFTs.
//
// The spectral path (DESIGN.md section 2). For real x of length m and the n entries (u_k, v_k):
//   forward : Z[u_k] += c_k * conj(fft(x))[v_k],      y      = Re(ifft(Z)) * alpha / d2
//   grad_c  : grad_c_k = alpha / (d1 d2) * sum_b Re(conj(fft(x_b))[v_k] * conj(fft(g_b))[u_k])
//   grad_x  : W[v_k] += c_k * conj(fft(g))[u_k],       grad_x = Re(ifft(W)) * alpha / d1
// Forward and grad_x are the same primitive ("spectral apply") with the roles of u and v swapped.
// Only real FFTs are used: conj(fft(x))[v] is read from rfft(x) (bins above m/2 mirror conjugated
// lower ones), and Re(ifft(Z)) = irfft(H) where H is the Hermitian part of Z, which the scatter
// builds directly in the half spectrum. The gathers and scatters are fused loops here because as
// separate tensor ops they cost more than the FFTs saved.
#include "../internal.h"
#include "fft_rows.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/complex.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <tuple>
#include <type_traits>
#include <vector>

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

template <typename real_t>
std::vector<ScatterEntry<real_t>> make_scatter_plan(const real_t* coeff, const int64_t* src,
                                                    int64_t src_len, const int64_t* dst,
                                                    int64_t dst_len, int64_t n, double factor) {
  std::vector<ScatterEntry<real_t>> plan(n);
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
    plan[k] = {static_cast<int32_t>(src_bin), static_cast<int32_t>(dst_bin),
               static_cast<real_t>(weight * coeff[k]),
               static_cast<real_t>(weight * coeff[k] * src_sign * dst_sign)};
  }
  return plan;
}

// The O(rows * n) gathers and scatters run on blocks of rows transposed into bin-major split
// real/imaginary buffers ([bin][row]): every entry then becomes an AXPY (scatter) or a dot
// product (correlate) over the rows of the block, contiguous and vectorised, instead of one
// scalar gather/scatter per (row, entry). Measured 5-10x faster than the row-major loop.
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

template <typename real_t>
__attribute__((always_inline)) inline void scatter_block_impl(
    const ScatterEntry<real_t>* plan, int64_t n, const real_t* in_re, const real_t* in_im,
    real_t* out_re, real_t* out_im, int64_t stride, int64_t len) {
  for (int64_t k = 0; k < n; ++k) {
    const ScatterEntry<real_t> e = plan[k];
    real_t* __restrict o_re = out_re + e.dst * stride;
    real_t* __restrict o_im = out_im + e.dst * stride;
    const real_t* __restrict i_re = in_re + e.src * stride;
    const real_t* __restrict i_im = in_im + e.src * stride;
    for (int64_t t = 0; t < len; ++t) {
      o_re[t] += e.re * i_re[t];
      o_im[t] += e.im * i_im[t];
    }
  }
}

template <typename real_t>
__attribute__((always_inline)) inline void correlate_block_impl(
    const CorrelateEntry<real_t>* pairs, int64_t n, const real_t* x_re, const real_t* x_im,
    const real_t* g_re, const real_t* g_im, int64_t stride, int64_t len, double* acc) {
  for (int64_t k = 0; k < n; ++k) {
    const CorrelateEntry<real_t> e = pairs[k];
    const real_t* __restrict a_re = x_re + e.x_bin * stride;
    const real_t* __restrict a_im = x_im + e.x_bin * stride;
    const real_t* __restrict b_re = g_re + e.g_bin * stride;
    const real_t* __restrict b_im = g_im + e.g_bin * stride;
    real_t sum_re = 0, sum_im = 0;
#pragma omp simd reduction(+ : sum_re, sum_im)
    for (int64_t t = 0; t < len; ++t) {
      sum_re += a_re[t] * b_re[t];
      sum_im += a_im[t] * b_im[t];
    }
    acc[k] += static_cast<double>(sum_re) + static_cast<double>(e.imag_sign) * sum_im;
  }
}

// Non-template entry points so that target_clones can compile an AVX2 variant of each.
#define FOURIERFT_BLOCK_KERNELS(real_t)                                                          \
  FOURIERFT_SIMD_CLONES void scatter_block(const ScatterEntry<real_t>* plan, int64_t n,          \
                                           const real_t* in_re, const real_t* in_im,            \
                                           real_t* out_re, real_t* out_im, int64_t stride,       \
                                           int64_t len) {                                        \
    scatter_block_impl<real_t>(plan, n, in_re, in_im, out_re, out_im, stride, len);             \
  }                                                                                              \
  FOURIERFT_SIMD_CLONES void correlate_block(const CorrelateEntry<real_t>* pairs, int64_t n,    \
                                             const real_t* x_re, const real_t* x_im,            \
                                             const real_t* g_re, const real_t* g_im,            \
                                             int64_t stride, int64_t len, double* acc) {        \
    correlate_block_impl<real_t>(pairs, n, x_re, x_im, g_re, g_im, stride, len, acc);           \
  }
FOURIERFT_BLOCK_KERNELS(float)
FOURIERFT_BLOCK_KERNELS(double)
#undef FOURIERFT_BLOCK_KERNELS

// Rows per block: the transposed buffers of a block stay within about 512 KiB (L2).
template <typename real_t>
int64_t block_rows(int64_t bins) {
  const int64_t fit = (512 * 1024) / (2 * static_cast<int64_t>(sizeof(real_t)) * std::max<int64_t>(bins, 1));
  if (fit >= 64) return 64;
  if (fit >= 8) return fit / 8 * 8;
  return std::max<int64_t>(fit, 1);
}

// Copies rows [r0, r0 + len) of a row-major complex half spectrum into bin-major re/im buffers.
// Bin-outer order: the block's rows are read a cache line (several bins) at a time and reused
// from L1 across those bins, while the writes run contiguously along the block.
template <typename real_t>
void to_bin_major(const c10::complex<real_t>* spec, int64_t row_stride, int64_t bins, int64_t r0,
                  int64_t len, int64_t stride, real_t* re, real_t* im) {
  const c10::complex<real_t>* base = spec + r0 * row_stride;
  for (int64_t j = 0; j < bins; ++j) {
    real_t* __restrict re_j = re + j * stride;
    real_t* __restrict im_j = im + j * stride;
    for (int64_t t = 0; t < len; ++t) {
      const c10::complex<real_t> value = base[t * row_stride + j];
      re_j[t] = value.real();
      im_j[t] = value.imag();
    }
  }
}

template <typename real_t>
void from_bin_major(const real_t* re, const real_t* im, int64_t stride, int64_t bins, int64_t r0,
                    int64_t len, c10::complex<real_t>* spec, int64_t row_stride) {
  c10::complex<real_t>* base = spec + r0 * row_stride;
  for (int64_t j = 0; j < bins; ++j) {
    const real_t* __restrict re_j = re + j * stride;
    const real_t* __restrict im_j = im + j * stride;
    for (int64_t t = 0; t < len; ++t) {
      base[t * row_stride + j] = c10::complex<real_t>(re_j[t], im_j[t]);
    }
  }
}

// A block of rows in bin-major layout: re[bin * rows + t], im[bin * rows + t].
template <typename real_t>
struct BinMajorBlock {
  BinMajorBlock(int64_t bins, int64_t rows)
      : storage(2 * bins * rows), re(storage.data()), im(storage.data() + bins * rows) {}
  std::vector<real_t> storage;
  real_t* re;
  real_t* im;
};

// Per-task scratch of the blocked pipeline: the row-major half spectra the transforms write and read,
// and their bin-major copies.
// Plain buffers, no tensors: workers must not touch at::Tensor objects that another thread frees.
template <typename real_t>
struct Scratch {
  Scratch(int64_t in_bins, int64_t out_bins, int64_t block)
      : in(in_bins, block), out(out_bins, block), in_spec(block * in_bins), out_spec(block * out_bins) {}
  BinMajorBlock<real_t> in, out;
  std::vector<c10::complex<real_t>> in_spec, out_spec;
};

// rfft of rows [r0, r0 + len) of a contiguous real [rows, m] array into spec (>= len rows of m/2+1).
template <typename real_t>
const c10::complex<real_t>* rfft_block(const real_t* real2d, int64_t m, int64_t r0, int64_t len,
                                       std::vector<c10::complex<real_t>>& spec) {
  rfft_rows(real2d + r0 * m, spec.data(), m, len, std::is_same_v<real_t, double>);
  return spec.data();
}

// The scatter of one block already in scratch.in (bin-major), then the inverse transform into rows
// [r0, r0 + len) of the contiguous real [rows, p] tensor `dst`.
template <typename real_t>
void scatter_and_invert(const std::vector<ScatterEntry<real_t>>& plan, Scratch<real_t>& s, int64_t block,
                        int64_t len, int64_t out_len, real_t* dst, int64_t r0, const real_t* bias = nullptr) {
  const int64_t out_bins = out_len / 2 + 1;
  std::fill(s.out.storage.begin(), s.out.storage.end(), real_t(0));
  scatter_block(plan.data(), static_cast<int64_t>(plan.size()), s.in.re, s.in.im, s.out.re, s.out.im, block,
                len);
  // The self-mirrored bins 0 and p/2 hold 2z; their real part is 2 Re(z), the wanted value.
  std::fill(s.out.im, s.out.im + len, real_t(0));
  if (out_len % 2 == 0) std::fill(s.out.im + (out_len / 2) * block, s.out.im + (out_len / 2) * block + len, real_t(0));
  from_bin_major(s.out.re, s.out.im, block, out_bins, 0, len, s.out_spec.data(), out_bins);
  real_t* out = dst + r0 * out_len;
  irfft_rows(s.out_spec.data(), out, out_len, len, std::is_same_v<real_t, double>);
  if (bias != nullptr) {  // epilogue while the rows are in cache: + bias
    for (int64_t t = 0; t < len; ++t) {
      real_t* __restrict row = out + t * out_len;
      for (int64_t j = 0; j < out_len; ++j) row[j] += bias[j];
    }
  }
}

// The calling thread's scratch of type S for these sizes, kept between calls (grow-only per thread, rebuilt when
// the sizes change): a fresh ~1 MiB of buffers per call costs more in allocation, zeroing and page faults than
// the transforms at a few hundred rows. Allocated and freed by the thread that uses it; every stage writes
// the rows it later reads, so nothing of a previous call is read.
template <typename S, typename... Sizes>
S& thread_scratch(Sizes... sizes) {
  thread_local std::unique_ptr<S> scratch;
  thread_local std::tuple<Sizes...> key;
  if (!scratch || key != std::make_tuple(sizes...)) {
    scratch.reset();
    scratch = std::make_unique<S>(sizes...);
    key = std::make_tuple(sizes...);
  }
  return *scratch;
}

// Runs body(chunk, r0, len) over blocks of `block` rows, the blocks split into at most one contiguous chunk
// per thread. Every transform, gather and scatter of a block happens while its rows are in cache: the
// pipeline reads the input and writes the output once, instead of one pass over memory per stage.
// make_scratch() runs on the worker thread and returns that thread's scratch (thread_scratch): nothing
// allocated by one thread is released by another.
template <typename MakeScratch, typename Body>
void for_each_block(int64_t rows, int64_t block, int64_t chunks, const MakeScratch& make_scratch, const Body& body) {
  const int64_t blocks = (rows + block - 1) / block;
  at::parallel_for(0, chunks, 1, [&](int64_t cbegin, int64_t cend) {
    // Worker threads do not inherit the caller's dispatch state: the ATen calls below must not
    // record autograd history (the kernel runs below the Autograd key on the calling thread too).
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto& scratch = make_scratch();
    for (int64_t c = cbegin; c < cend; ++c) {
      for (int64_t b = blocks * c / chunks; b < blocks * (c + 1) / chunks; ++b) {
        const int64_t r0 = b * block;
        body(c, scratch, r0, std::min(block, rows - r0));
      }
    }
  });
}

int64_t chunk_count(int64_t rows, int64_t block) {
  return std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), (rows + block - 1) / block));
}

// Rows of `in2d` (contiguous real [rows, m]) through the spectral apply into `dst` (real [rows, p]).
template <typename real_t>
void spectral_apply_rows(const at::Tensor& in2d, int64_t in_len, const std::vector<ScatterEntry<real_t>>& plan,
                         int64_t out_len, at::Tensor& dst, const real_t* bias = nullptr) {
  const int64_t rows = in2d.size(0);
  const int64_t in_bins = in_len / 2 + 1, out_bins = out_len / 2 + 1;
  const int64_t block = block_rows<real_t>(in_bins + out_bins);
  const int64_t chunks = chunk_count(rows, block);
  const real_t* in = in2d.const_data_ptr<real_t>();
  real_t* out = dst.data_ptr<real_t>();
  const auto make = [&]() -> Scratch<real_t>& { return thread_scratch<Scratch<real_t>>(in_bins, out_bins, block); };
  for_each_block(rows, block, chunks, make, [&](int64_t, Scratch<real_t>& s, int64_t r0, int64_t len) {
    to_bin_major(rfft_block<real_t>(in, in_len, r0, len, s.in_spec), in_bins, in_bins, 0, len, block, s.in.re, s.in.im);
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
  std::vector<ScatterEntry<real_t>> plan;
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
  // Scratch: g's spectrum (in), grad_x's spectrum (out), and x's spectrum.
  const int64_t block = block_rows<real_t>(g_bins + 2 * x_bins);
  const int64_t chunks = chunk_count(rows, block);
  const real_t* g = g2d.const_data_ptr<real_t>();
  const real_t* x = need_grad_spectrum ? x2d.const_data_ptr<real_t>() : nullptr;
  real_t* gx = need_grad_x ? gx2d.data_ptr<real_t>() : nullptr;
  struct BackwardScratch {
    BackwardScratch(int64_t g_bins, int64_t x_bins, int64_t x_block_bins, int64_t block)
        : s(g_bins, x_bins, block), x(x_block_bins, block) {}
    Scratch<real_t> s;
    BinMajorBlock<real_t> x;
  };
  std::vector<std::vector<double>> partial(chunks, std::vector<double>(pairs.size(), 0.0));
  const auto make = [&]() -> BackwardScratch& {
    return thread_scratch<BackwardScratch>(g_bins, x_bins, need_grad_spectrum ? x_bins : int64_t{0}, block);
  };
  for_each_block(rows, block, chunks, make, [&](int64_t c, BackwardScratch& scratch, int64_t r0, int64_t len) {
    auto& s = scratch.s;
    to_bin_major(rfft_block<real_t>(g, out_features, r0, len, s.in_spec), g_bins, g_bins, 0, len, block, s.in.re,
                 s.in.im);
    if (need_grad_spectrum) {
      auto& xb = scratch.x;
      // s.out_spec (grad_x's half spectrum, same width) is free until the scatter below.
      to_bin_major(rfft_block<real_t>(x, in_features, r0, len, s.out_spec), x_bins, x_bins, 0, len, block, xb.re,
                   xb.im);
      correlate_block(pairs.data(), n, xb.re, xb.im, s.in.re, s.in.im, block, len, partial[c].data());
    }
    if (need_grad_x) scatter_and_invert(plan, s, block, len, in_features, gx, r0);
  });
  std::vector<double> total(pairs.size(), 0.0);
  for (const auto& part : partial) {
    for (size_t k = 0; k < total.size(); ++k) total[k] += part[k];
  }
  return total;
}

// grad_c from its unnormalised double sums, in the spectrum's dtype.
at::Tensor finish_grad_spectrum(const std::vector<double>& sums, const at::Tensor& spectrum, int64_t out_features,
                                int64_t in_features, double scaling) {
  const int64_t n = static_cast<int64_t>(sums.size());
  auto total = at::empty({n}, spectrum.options().dtype(at::kDouble));
  std::copy(sums.begin(), sums.end(), total.data_ptr<double>());
  total.mul_(scaling / (static_cast<double>(out_features) * in_features));
  return total.to(spectrum.scalar_type());
}

// grad_c by the dense route: the gradient of delta_W is g^T x, and delta_weight's backward reads the
// coefficients' gradients from its rfft2 (linear_grad_spectrum_is_dense picks it when n is large against the
// layer: one GEMM and one 2-D transform instead of tokens x n products).
at::Tensor dense_grad_spectrum(const at::Tensor& g2d, const at::Tensor& x2d, const at::Tensor& spectrum,
                               const at::Tensor& indices, int64_t out_features, int64_t in_features, double scaling) {
  return delta_weight_backward_cpu(g2d.t().mm(x2d), spectrum, indices, out_features, in_features, scaling);
}

}  // namespace

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
  const bool dense_grad_c =
      need_grad_spectrum && linear_grad_spectrum_is_dense(rows, out_features, in_features, n);
  if (dense_grad_c) grad_spectrum = dense_grad_spectrum(g2d, x2d, spectrum, indices, out_features, in_features, scaling);
  const auto coeff = spectrum.to(work).contiguous();
  const auto idx = indices.contiguous();
  const int64_t* u = idx.const_data_ptr<int64_t>();
  const int64_t* v = u + n;
  auto gx2d = need_grad_x ? at::empty({rows, in_features}, g2d.options()) : at::Tensor();
  if (need_grad_x || !dense_grad_c) {
    AT_DISPATCH_FLOATING_TYPES(work, "fourierft_spectral_linear_backward", [&] {
      const auto sums = spectral_backward_rows<scalar_t>(g2d, dense_grad_c ? at::Tensor() : x2d, coeff, u, v,
                                                         out_features, in_features, scaling, gx2d);
      if (!dense_grad_c) grad_spectrum = finish_grad_spectrum(sums, spectrum, out_features, in_features, scaling);
    });
  }
  if (need_grad_x) grad_x = gx2d.to(x.scalar_type()).view(grad_x_shape);
  return {grad_x, grad_spectrum};
}

}  // namespace fourierft::detail

// ---------------------------------------------------------------------------------------------
// The whole adapted layer, y = x W^T + b + x delta_W^T, by the path the cost model picks:
//   spectral: the blocked pipeline writes x delta_W^T (+ b, in its epilogue) into y, and the GEMM
//             accumulates x W^T into it (beta = 1): no separate pass over y for either addition;
//   merged:   one GEMM with W + delta_W (delta_W from its irfft2, never kept: nothing of size
//             out x in outlives the call).
// The backward makes the same choice for grad_x (grad_x = g (W + delta_W), or the pipeline on g and a
// GEMM accumulating g W into it), and always computes grad_c from the rfft of g's and x's blocks.
namespace fourierft::detail {
namespace {

bool fused_dtypes(const at::Tensor& x, const at::Tensor& spectrum) {
  return x.scalar_type() == spectrum.scalar_type() &&
         (x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble);
}

at::Tensor merged_weight(const at::Tensor& weight, const at::Tensor& spectrum, const at::Tensor& indices,
                         int64_t out_features, int64_t in_features, double scaling) {
  return delta_weight_cpu(spectrum, indices, out_features, in_features, scaling).add_(weight);
}

}  // namespace

at::Tensor linear_cpu(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                      const at::Tensor& spectrum, const at::Tensor& indices, int64_t out_features,
                      int64_t in_features, double scaling) {
  if (generic_kernels_on_cpu()) return linear_generic(x, weight, bias, spectrum, indices, out_features, in_features, scaling);
  check_linear("linear", x, weight, bias, spectrum, indices, out_features, in_features);
  check_cpu("linear", x);
  if (!fused_dtypes(x, spectrum)) {  // PEFT's composition: base in x's dtype, adapter in the spectrum's
    return at::add(at::linear(x, weight, bias),
                   spectral_linear_cpu(x.to(spectrum.scalar_type()), spectrum, indices, out_features, in_features,
                                       scaling));
  }
  const auto x2d = x.reshape({-1, in_features}).contiguous();
  const int64_t rows = x2d.size(0);
  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end());
  out_shape.back() = out_features;
  if (rows == 0) return at::linear(x, weight, bias);
  const int64_t n = spectrum.size(0);
  if (linear_uses_merged_weight(rows, out_features, in_features, n)) {
    return at::linear(x2d, merged_weight(weight, spectrum, indices, out_features, in_features, scaling), bias)
        .view(out_shape);
  }
  const auto coeff = spectrum.contiguous();
  const auto idx = indices.contiguous();
  const int64_t* u = idx.const_data_ptr<int64_t>();
  const int64_t* v = u + n;
  const auto b = bias.has_value() && bias->defined() ? bias->to(x.scalar_type()).contiguous() : at::Tensor();
  auto y = at::empty({rows, out_features}, x2d.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fourierft_linear", [&] {
    const auto plan = make_scatter_plan<scalar_t>(coeff.const_data_ptr<scalar_t>(), v, in_features, u,
                                                  out_features, n, scaling / static_cast<double>(in_features));
    spectral_apply_rows<scalar_t>(x2d, in_features, plan, out_features, y,
                                  b.defined() ? b.const_data_ptr<scalar_t>() : nullptr);
  });
  y.addmm_(x2d, weight.t());
  return y.view(out_shape);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> linear_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& spectrum,
    const at::Tensor& indices, int64_t out_features, int64_t in_features, double scaling, bool need_grad_x,
    bool need_grad_weight, bool need_grad_bias, bool need_grad_spectrum) {
  if (generic_kernels_on_cpu()) return linear_backward_generic(grad_out, x, weight, spectrum, indices, out_features, in_features, scaling, need_grad_x, need_grad_weight, need_grad_bias, need_grad_spectrum);
  check_linear_backward("_linear_backward", grad_out, x, weight, spectrum, indices, out_features, in_features,
                        need_grad_weight || need_grad_spectrum);
  check_cpu("_linear_backward", grad_out);
  const auto g2d = grad_out.reshape({-1, out_features}).contiguous();
  const int64_t rows = g2d.size(0);
  const bool need_x = need_grad_weight || need_grad_spectrum;
  const auto x2d = need_x ? x.reshape({-1, in_features}).contiguous() : at::Tensor();
  std::vector<int64_t> grad_x_shape(grad_out.sizes().begin(), grad_out.sizes().end());
  grad_x_shape.back() = in_features;
  at::Tensor grad_x = at::empty({0}, grad_out.options().dtype(x.scalar_type()));
  at::Tensor grad_weight = at::empty({0}, weight.options());
  at::Tensor grad_bias = at::empty({0}, weight.options());
  at::Tensor grad_spectrum = at::empty({0}, spectrum.options());
  if (need_grad_weight) grad_weight = rows == 0 ? at::zeros_like(weight) : g2d.t().mm(x2d.to(g2d.scalar_type()));
  if (need_grad_bias) grad_bias = g2d.sum(0).to(weight.scalar_type());
  if (!fused_dtypes(grad_out, spectrum) || grad_out.scalar_type() != x.scalar_type()) {
    // PEFT's composition (see linear_cpu): the base part in x's dtype, the adapter part in the spectrum's.
    auto [gx, gc] = spectral_linear_backward_cpu(grad_out.to(spectrum.scalar_type()),
                                                 need_grad_spectrum ? x.to(spectrum.scalar_type()) : x, spectrum,
                                                 indices, out_features, in_features, scaling, need_grad_x,
                                                 need_grad_spectrum);
    if (need_grad_x) grad_x = at::matmul(grad_out.to(weight.scalar_type()), weight).add_(gx).to(x.scalar_type());
    if (need_grad_spectrum) grad_spectrum = gc;
    return {grad_x, grad_weight, grad_bias, grad_spectrum};
  }
  if (rows == 0) {
    if (need_grad_x) grad_x = at::zeros(grad_x_shape, grad_out.options());
    if (need_grad_spectrum) grad_spectrum = at::zeros_like(spectrum);
    return {grad_x, grad_weight, grad_bias, grad_spectrum};
  }
  const int64_t n = spectrum.size(0);
  // The spectrum's gradient densely, or by correlation inside the pipeline's pass over g and x (then the
  // merged weight saves only about half of that pass).
  const bool dense_grad_c =
      need_grad_spectrum && linear_grad_spectrum_is_dense(rows, out_features, in_features, n);
  const bool correlate = need_grad_spectrum && !dense_grad_c;
  if (dense_grad_c) grad_spectrum = dense_grad_spectrum(g2d, x2d, spectrum, indices, out_features, in_features, scaling);
  const bool merged =
      need_grad_x && linear_uses_merged_weight(rows, out_features, in_features, n, correlate ? 0.5 : 1.0);
  if (merged) grad_x = g2d.mm(merged_weight(weight, spectrum, indices, out_features, in_features, scaling));
  at::Tensor gx2d = need_grad_x && !merged ? at::empty({rows, in_features}, g2d.options()) : at::Tensor();
  if (gx2d.defined() || correlate) {
    const auto coeff = spectrum.contiguous();
    const auto idx = indices.contiguous();
    const int64_t* u = idx.const_data_ptr<int64_t>();
    const int64_t* v = u + n;
    AT_DISPATCH_FLOATING_TYPES(g2d.scalar_type(), "fourierft_linear_backward", [&] {
      const auto sums = spectral_backward_rows<scalar_t>(g2d, correlate ? x2d : at::Tensor(), coeff, u, v,
                                                         out_features, in_features, scaling, gx2d);
      if (correlate) grad_spectrum = finish_grad_spectrum(sums, spectrum, out_features, in_features, scaling);
    });
  }
  if (gx2d.defined()) grad_x = gx2d.addmm_(g2d, weight);
  if (need_grad_x) grad_x = grad_x.view(grad_x_shape);
  return {grad_x, grad_weight, grad_bias, grad_spectrum};
}

}  // namespace fourierft::detail
