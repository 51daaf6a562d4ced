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

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/complex.h>

#include <algorithm>
#include <cmath>
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

template <typename real_t>
void spectral_scatter(const c10::complex<real_t>* in_spec, int64_t in_stride, int64_t in_bins,
                      const std::vector<ScatterEntry<real_t>>& plan,
                      c10::complex<real_t>* out_spec, int64_t out_stride, int64_t out_len,
                      int64_t rows) {
  const int64_t n = static_cast<int64_t>(plan.size());
  const int64_t out_bins = out_len / 2 + 1;
  const int64_t nyquist = out_len % 2 == 0 ? out_len / 2 : -1;
  const int64_t block = block_rows<real_t>(in_bins + out_bins);
  const int64_t blocks = (rows + block - 1) / block;
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    BinMajorBlock<real_t> in(in_bins, block), out(out_bins, block);
    for (int64_t b = begin; b < end; ++b) {
      const int64_t r0 = b * block;
      const int64_t len = std::min(block, rows - r0);
      to_bin_major(in_spec, in_stride, in_bins, r0, len, block, in.re, in.im);
      std::fill(out.storage.begin(), out.storage.end(), real_t(0));
      scatter_block(plan.data(), n, in.re, in.im, out.re, out.im, block, len);
      // The self-mirrored bins 0 and p/2 hold 2z; their real part is 2 Re(z), the wanted value.
      std::fill(out.im, out.im + len, real_t(0));
      if (nyquist > 0) std::fill(out.im + nyquist * block, out.im + nyquist * block + len, real_t(0));
      from_bin_major(out.re, out.im, block, out_bins, r0, len, out_spec, out_stride);
    }
  });
}

// grad_c_k = sum_r Re(conj(fft(x_r))[v_k] * conj(fft(g_r))[u_k]), accumulated in double.
template <typename real_t>
std::vector<double> spectral_correlate(const c10::complex<real_t>* x_spec, int64_t x_stride,
                                       int64_t in_features, const c10::complex<real_t>* g_spec,
                                       int64_t g_stride, int64_t out_features, const int64_t* u,
                                       const int64_t* v, int64_t n, int64_t rows) {
  std::vector<CorrelateEntry<real_t>> pairs(n);
  for (int64_t k = 0; k < n; ++k) {
    int64_t xb, gb;
    double xs, gs;
    half_spectrum_read(v[k], in_features, xb, xs);
    half_spectrum_read(u[k], out_features, gb, gs);
    pairs[k] = {static_cast<int32_t>(xb), static_cast<int32_t>(gb), static_cast<real_t>(-xs * gs)};
  }
  const int64_t x_bins = in_features / 2 + 1;
  const int64_t g_bins = out_features / 2 + 1;
  const int64_t block = block_rows<real_t>(x_bins + g_bins);
  const int64_t blocks = (rows + block - 1) / block;
  // One partial sum per thread chunk (at most one chunk per thread), added in double at the end.
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), blocks));
  std::vector<std::vector<double>> partial(chunks, std::vector<double>(n, 0.0));
  at::parallel_for(0, chunks, 1, [&](int64_t cbegin, int64_t cend) {
    BinMajorBlock<real_t> x(x_bins, block), g(g_bins, block);
    for (int64_t c = cbegin; c < cend; ++c) {
      for (int64_t b = blocks * c / chunks; b < blocks * (c + 1) / chunks; ++b) {
        const int64_t r0 = b * block;
        const int64_t len = std::min(block, rows - r0);
        to_bin_major(x_spec, x_stride, x_bins, r0, len, block, x.re, x.im);
        to_bin_major(g_spec, g_stride, g_bins, r0, len, block, g.re, g.im);
        correlate_block(pairs.data(), n, x.re, x.im, g.re, g.im, block, len, partial[c].data());
      }
    }
  });
  std::vector<double> total(n, 0.0);
  for (const auto& part : partial) {
    for (int64_t k = 0; k < n; ++k) total[k] += part[k];
  }
  return total;
}

// Spectral apply on a 2-D real input [rows, m] given its rfft; returns [rows, p] real.
at::Tensor spectral_apply(const at::Tensor& in_spec, const at::Tensor& coeff, const int64_t* src,
                          int64_t src_len, const int64_t* dst, int64_t dst_len, double factor) {
  const int64_t rows = in_spec.size(0);
  const int64_t n = coeff.size(0);
  auto out_spec = at::empty({rows, dst_len / 2 + 1}, in_spec.options());
  AT_DISPATCH_FLOATING_TYPES(coeff.scalar_type(), "fourierft_spectral_apply", [&] {
    const auto plan = make_scatter_plan<scalar_t>(coeff.const_data_ptr<scalar_t>(), src, src_len,
                                                  dst, dst_len, n, factor);
    spectral_scatter<scalar_t>(in_spec.const_data_ptr<c10::complex<scalar_t>>(), in_spec.stride(0),
                               src_len / 2 + 1, plan, out_spec.data_ptr<c10::complex<scalar_t>>(),
                               out_spec.stride(0), dst_len, rows);
  });
  return at::fft_irfft(out_spec, dst_len, -1);
}

}  // namespace

// Returns (y, x_spec): x_spec = rfft(x) in the compute dtype, saved for the spectrum gradient.
std::tuple<at::Tensor, at::Tensor> spectral_linear_forward_cpu(const at::Tensor& x,
                                                               const at::Tensor& spectrum,
                                                               const at::Tensor& indices,
                                                               int64_t out_features,
                                                               int64_t in_features,
                                                               double scaling) {
  if (generic_kernels_on_cpu()) return spectral_linear_forward_generic(x, spectrum, indices, out_features, in_features, scaling);
  check_spectrum_and_indices("spectral_linear", spectrum, indices, out_features, in_features);
  check_input("spectral_linear", x, spectrum, in_features);
  check_cpu("spectral_linear", x);
  const int64_t n = spectrum.size(0);
  const auto work = compute_dtype(x.scalar_type(), spectrum.scalar_type());
  const auto x2d = x.reshape({-1, in_features}).to(work);
  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end());
  out_shape.back() = out_features;
  if (x2d.size(0) == 0) {  // an empty batch, as torch::nn::Linear: no FFT (MKL refuses 0 rows)
    return {at::zeros(out_shape, x.options()),
            at::zeros({0, in_features / 2 + 1}, x.options().dtype(c10::toComplexType(work)))};
  }
  const auto coeff = spectrum.to(work).contiguous();
  const auto idx = indices.contiguous();
  const int64_t* u = idx.const_data_ptr<int64_t>();
  const int64_t* v = u + n;
  auto x_spec = at::fft_rfft(x2d, c10::nullopt, -1).contiguous();
  auto y = spectral_apply(x_spec, coeff, v, in_features, u, out_features,
                          scaling / static_cast<double>(in_features));
  return {y.to(x.scalar_type()).view(out_shape), x_spec};
}

std::tuple<at::Tensor, at::Tensor> spectral_linear_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& x_spec, const at::Tensor& spectrum,
    const at::Tensor& indices, int64_t out_features, int64_t in_features, double scaling,
    at::ScalarType x_dtype, bool need_grad_x, bool need_grad_spectrum) {
  if (generic_kernels_on_cpu()) return spectral_linear_backward_generic(grad_out, x_spec, spectrum, indices, out_features, in_features, scaling, x_dtype, need_grad_x, need_grad_spectrum);
  check_spectrum_and_indices("_spectral_linear_backward", spectrum, indices, out_features,
                             in_features);
  TORCH_CHECK(grad_out.size(-1) == out_features,
              "fourierft._spectral_linear_backward: grad_out must have last dimension out_features=",
              out_features, ", got shape ", grad_out.sizes());
  check_cpu("_spectral_linear_backward", grad_out);
  const int64_t n = spectrum.size(0);
  const auto work = c10::toRealValueType(x_spec.scalar_type());
  const auto g2d = grad_out.reshape({-1, out_features}).to(work);
  const int64_t rows = g2d.size(0);
  TORCH_CHECK(!need_grad_spectrum ||
                  (x_spec.dim() == 2 && x_spec.size(0) == rows && x_spec.size(1) == in_features / 2 + 1),
              "fourierft._spectral_linear_backward: saved input spectrum has shape ",
              x_spec.sizes(), ", expected [", rows, ", ", in_features / 2 + 1, "]");
  if (rows == 0) {  // an empty batch: nothing flows back
    std::vector<int64_t> shape(grad_out.sizes().begin(), grad_out.sizes().end());
    shape.back() = in_features;
    return {need_grad_x ? at::zeros(shape, grad_out.options().dtype(x_dtype))
                        : at::empty({0}, grad_out.options().dtype(x_dtype)),
            need_grad_spectrum ? at::zeros_like(spectrum) : at::empty({0}, spectrum.options())};
  }
  const auto coeff = spectrum.to(work).contiguous();
  const auto idx = indices.contiguous();
  const int64_t* u = idx.const_data_ptr<int64_t>();
  const int64_t* v = u + n;
  const auto g_spec = at::fft_rfft(g2d, c10::nullopt, -1).contiguous();

  at::Tensor grad_x = at::empty({0}, grad_out.options().dtype(x_dtype));
  at::Tensor grad_spectrum = at::empty({0}, spectrum.options());
  if (need_grad_x) {
    std::vector<int64_t> shape(grad_out.sizes().begin(), grad_out.sizes().end());
    shape.back() = in_features;
    grad_x = spectral_apply(g_spec, coeff, u, out_features, v, in_features,
                            scaling / static_cast<double>(out_features))
                 .to(x_dtype)
                 .view(shape);
  }
  if (need_grad_spectrum) {
    AT_DISPATCH_FLOATING_TYPES(work, "fourierft_spectral_grad", [&] {
      const auto acc = spectral_correlate<scalar_t>(
          x_spec.const_data_ptr<c10::complex<scalar_t>>(), x_spec.stride(0), in_features,
          g_spec.const_data_ptr<c10::complex<scalar_t>>(), g_spec.stride(0), out_features, u, v, n,
          rows);
      const double norm = scaling / (static_cast<double>(out_features) * in_features);
      grad_spectrum = at::empty({n}, spectrum.options().dtype(at::kDouble));
      double* o = grad_spectrum.data_ptr<double>();
      for (int64_t k = 0; k < n; ++k) o[k] = acc[k] * norm;
      grad_spectrum = grad_spectrum.to(spectrum.scalar_type());
    });
  }
  return {grad_x, grad_spectrum};
}

at::Tensor spectral_linear_cpu(const at::Tensor& x, const at::Tensor& spectrum,
                               const at::Tensor& indices, int64_t out_features,
                               int64_t in_features, double scaling) {
  return std::get<0>(
      spectral_linear_forward_cpu(x, spectrum, indices, out_features, in_features, scaling));
}

}  // namespace fourierft::detail
