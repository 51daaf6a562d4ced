// The folded route of the CPU kernels (fourierft::linear's, at large n against the layer): the n coefficients
// folded onto two real matrices over the half spectra's bins (h1 = d1/2 + 1 by h2 = d2/2 + 1),
//   R[a, b] = sum c_k,   I[a, b] = - sum s(u_k) s(v_k) c_k,   over the entries with fold(u_k) = a, fold(v_k) = b,
// where fold(k) = min(k, d - k) and s(k) = +1 for k <= d/2, -1 above (the real parts of a real signal's spectrum
// are even, the imaginary parts odd). Then, with X = rfft(x) and G = rfft(g) per row:
//   forward: y      = irfft(Re X R^T + i Im X I^T) * alpha / (2 d2)
//   grad_x : grad_x = irfft(Re G R   + i Im G I  ) * alpha / (2 d1)
//   grad_c : grad_c_k = alpha / (d1 d2) * (A[a_k, b_k] - s(u_k) s(v_k) B[a_k, b_k]),  A = Re G^T Re X,
//            B = Im G^T Im X,
// i.e. two real GEMMs of tokens x h1 x h2 each (together half the base layer's GEMM) between row transforms,
// whatever n is: what the pipeline does in tokens x n gathers, and cheaper than building delta_W (an irfft2 of
// d1 x d2) when the tokens are few against log(d1 d2). The output's self-mirrored bins (0 and d/2) take the
// real part twice (Re(ifft(Z)) = irfft of Z's Hermitian part): their rows (forward) or columns (grad_x) of R
// are doubled and of I cleared.
#include "../internal.h"
#include "blocks.h"
#include "fft_rows.h"
#include "spectral_cpu.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <type_traits>
#include <utility>
#include <vector>

namespace fourierft::detail {
namespace {

// out = irfft(re + i im, out_len) per row (normalised by 1/out_len), the parts [rows, out_len/2 + 1] joined and
// transformed block by block.
at::Tensor irfft_of_parts(const at::Tensor& re, const at::Tensor& im, int64_t out_len) {
  const int64_t rows = re.size(0), bins = out_len / 2 + 1;
  auto out = at::empty({rows, out_len}, re.options());
  AT_DISPATCH_FLOATING_TYPES(re.scalar_type(), "fourierft_irfft_of_parts", [&] {
    const int64_t block = block_rows<scalar_t>(bins, rows, at::get_num_threads(), 256 * 1024, 8);
    const scalar_t* pr = re.const_data_ptr<scalar_t>();
    const scalar_t* pi = im.const_data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    const int64_t stride = staging_stride<scalar_t>(bins);
    const auto make = [&]() -> std::vector<scalar_t>& {
      return thread_scratch<std::vector<scalar_t>>(static_cast<size_t>(2 * stride * block));
    };
    for_each_block(rows, block, chunk_count(rows, block), make,
                   [&](int64_t, std::vector<scalar_t>& staging, int64_t r0, int64_t n_rows) {
                     for (int64_t t = 0; t < n_rows; ++t) {
                       scalar_t* __restrict z = staging.data() + 2 * t * stride;
                       const scalar_t* r = pr + (r0 + t) * bins;
                       const scalar_t* i = pi + (r0 + t) * bins;
                       for (int64_t q = 0; q < bins; ++q) {
                         z[2 * q] = r[q];
                         z[2 * q + 1] = i[q];
                       }
                     }
                     irfft_rows(staging.data(), o + r0 * out_len, out_len, n_rows, std::is_same_v<scalar_t, double>,
                                stride);
                   });
  });
  return out;
}

}  // namespace

// Re and Im of the rows' half spectra, each a contiguous real [rows, len/2 + 1] matrix (the GEMMs' operands):
// blocks of rows transformed and split while in cache (one read of the input, one write of each part).
std::pair<at::Tensor, at::Tensor> half_spectra(const at::Tensor& rows2d) {
  const int64_t rows = rows2d.size(0), len = rows2d.size(1), bins = len / 2 + 1;
  auto re = at::empty({rows, bins}, rows2d.options()), im = at::empty({rows, bins}, rows2d.options());
  AT_DISPATCH_FLOATING_TYPES(rows2d.scalar_type(), "fourierft_half_spectra", [&] {
    const int64_t block = block_rows<scalar_t>(bins, rows, at::get_num_threads(), 256 * 1024, 8);
    const scalar_t* in = rows2d.const_data_ptr<scalar_t>();
    scalar_t* pr = re.data_ptr<scalar_t>();
    scalar_t* pi = im.data_ptr<scalar_t>();
    const int64_t stride = staging_stride<scalar_t>(bins);
    const auto make = [&]() -> std::vector<scalar_t>& {
      return thread_scratch<std::vector<scalar_t>>(static_cast<size_t>(2 * stride * block));
    };
    for_each_block(rows, block, chunk_count(rows, block), make,
                   [&](int64_t, std::vector<scalar_t>& staging, int64_t r0, int64_t n_rows) {
                     rfft_rows(in + r0 * len, staging.data(), len, n_rows, std::is_same_v<scalar_t, double>, stride);
                     for (int64_t t = 0; t < n_rows; ++t) {
                       const scalar_t* z = staging.data() + 2 * t * stride;
                       scalar_t* __restrict r = pr + (r0 + t) * bins;
                       scalar_t* __restrict i = pi + (r0 + t) * bins;
                       for (int64_t q = 0; q < bins; ++q) {
                         r[q] = z[2 * q];
                         i[q] = z[2 * q + 1];
                       }
                     }
                   });
  });
  return {re, im};
}


// [2, h1, h2]: R and I, times `factor`, the self-mirrored bins of the output side (rows: the forward; columns:
// grad_x) doubled in R and cleared in I. Threads split the rows; each zeroes its band and adds the entries
// that land in it.
at::Tensor folded_coefficients(const at::Tensor& coeff, const int64_t* u, const int64_t* v, int64_t d1, int64_t d2,
                               bool output_is_rows, double factor) {
  const int64_t n = coeff.size(0), h1 = d1 / 2 + 1, h2 = d2 / 2 + 1;
  auto folded = at::empty({2, h1, h2}, coeff.options());
  const auto self_mirrored = [](int64_t bin, int64_t len) { return bin == 0 || 2 * bin == len; };
  AT_DISPATCH_FLOATING_TYPES(coeff.scalar_type(), "fourierft_folded_coefficients", [&] {
    const scalar_t* c = coeff.const_data_ptr<scalar_t>();
    scalar_t* re = folded.data_ptr<scalar_t>();
    scalar_t* im = re + h1 * h2;
    at::parallel_for(0, h1, std::max<int64_t>(1, (1 << 15) / h2), [&](int64_t a0, int64_t a1) {
      std::fill(re + a0 * h2, re + a1 * h2, scalar_t(0));
      std::fill(im + a0 * h2, im + a1 * h2, scalar_t(0));
      for (int64_t k = 0; k < n; ++k) {
        const bool u_upper = 2 * u[k] > d1, v_upper = 2 * v[k] > d2;
        const int64_t a = u_upper ? d1 - u[k] : u[k];
        if (a < a0 || a >= a1) continue;
        const int64_t b = v_upper ? d2 - v[k] : v[k];
        const bool mirrored = output_is_rows ? self_mirrored(a, d1) : self_mirrored(b, d2);
        const double value = factor * static_cast<double>(c[k]);
        re[a * h2 + b] += static_cast<scalar_t>(mirrored ? 2 * value : value);
        if (!mirrored) im[a * h2 + b] += static_cast<scalar_t>(u_upper == v_upper ? -value : value);
      }
    });
  });
  return folded;
}

// irfft(Re S F^T + i Im S G^T, out_len) for the half spectra (re, im) of the input rows, (F, G) = (R, I) for the
// forward (output bins are R's rows) or (R^T, I^T) for grad_x.
at::Tensor folded_apply(const std::pair<at::Tensor, at::Tensor>& spec, const at::Tensor& folded, bool output_is_rows,
                        int64_t out_len) {
  const auto r = folded.select(0, 0), i = folded.select(0, 1);
  return irfft_of_parts(spec.first.mm(output_is_rows ? r.t() : r), spec.second.mm(output_is_rows ? i.t() : i),
                        out_len);
}

// grad_c from the half spectra of g's and x's rows.
at::Tensor folded_grad_spectrum(const std::pair<at::Tensor, at::Tensor>& g_spec,
                                const std::pair<at::Tensor, at::Tensor>& x_spec, const int64_t* u, const int64_t* v,
                                int64_t d1, int64_t d2, double scaling, const at::Tensor& spectrum) {
  const auto a = g_spec.first.t().mm(x_spec.first).contiguous();
  const auto b = g_spec.second.t().mm(x_spec.second).contiguous();
  const int64_t n = spectrum.size(0), h2 = d2 / 2 + 1;
  const double factor = scaling / (static_cast<double>(d1) * d2);
  auto grad = at::empty({n}, spectrum.options());
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "fourierft_folded_grad_spectrum", [&] {
    const scalar_t* pa = a.const_data_ptr<scalar_t>();
    const scalar_t* pb = b.const_data_ptr<scalar_t>();
    scalar_t* out = grad.data_ptr<scalar_t>();
    for (int64_t k = 0; k < n; ++k) {
      const bool u_upper = 2 * u[k] > d1, v_upper = 2 * v[k] > d2;
      const int64_t at = (u_upper ? d1 - u[k] : u[k]) * h2 + (v_upper ? d2 - v[k] : v[k]);
      const double value = u_upper == v_upper ? pa[at] - pb[at] : pa[at] + pb[at];
      out[k] = static_cast<scalar_t>(factor * value);
    }
  });
  return grad;
}

}  // namespace fourierft::detail
