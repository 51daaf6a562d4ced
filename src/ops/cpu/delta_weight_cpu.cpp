// The dense delta_W on CPU (merging, the dense forward path) and the entry matrix E.
//   delta_W = Re(ifft2(F)) * alpha = irfft2 of the Hermitian part of F (half the transform work).
#include "../internal.h"
#include "fft_rows.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <c10/util/complex.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

namespace fourierft::detail {

at::Tensor entry_indices_impl(int64_t out_features, int64_t in_features, int64_t n_frequency,
                              int64_t random_loc_seed) {
  check_dims("entry_indices", out_features, in_features);
  TORCH_CHECK(n_frequency >= 1 && n_frequency <= out_features * in_features,
              "fourierft.entry_indices: n_frequency must be in [1, out_features * in_features] = [1, ",
              out_features * in_features, "], got n_frequency=", n_frequency,
              " (out_features=", out_features, ", in_features=", in_features, ")");
  // torch.Generator().manual_seed(s) maps a negative s to 2**64 + s, as this cast does.
  auto generator = at::make_generator<at::CPUGeneratorImpl>(static_cast<uint64_t>(random_loc_seed));
  auto perm = at::randperm(out_features * in_features, generator, at::TensorOptions(at::kLong))
                  .slice(0, 0, n_frequency);
  return at::stack({at::floor_divide(perm, in_features), at::remainder(perm, in_features)}, 0);
}

at::Tensor delta_weight_cpu(const at::Tensor& spectrum, const at::Tensor& indices,
                            int64_t out_features, int64_t in_features, double scaling) {
  if (generic_kernels_on_cpu()) return delta_weight_generic(spectrum, indices, out_features, in_features, scaling);
  check_spectrum_and_indices("delta_weight", spectrum, indices, out_features, in_features);
  check_cpu("delta_weight", spectrum);
  const int64_t n = spectrum.size(0);
  const auto work = compute_dtype(spectrum.scalar_type(), spectrum.scalar_type());
  const auto coeff = spectrum.to(work).contiguous();
  const auto idx = indices.contiguous();
  const int64_t* u = idx.const_data_ptr<int64_t>();
  const int64_t* v = u + n;
  const int64_t half = in_features / 2 + 1;
  // Doubled Hermitian part of the real sparse F: c at (u, v) and c at (-u, -v), each kept where its
  // column lies in the half spectrum. irfft2 of it is 2 Re(ifft2(F)); the transform is unnormalised, so the
  // coefficients carry 0.5 * scaling / (d1 d2).
  const int64_t stride = padded_bins(half, work == at::kDouble);  // rows of `half` values, `stride` apart
  auto spec = at::empty({out_features, stride}, coeff.options().dtype(c10::toComplexType(work)));
  auto dw = at::empty({out_features, in_features}, coeff.options());
  const double factor = 0.5 * scaling / (static_cast<double>(out_features) * in_features);
  AT_DISPATCH_FLOATING_TYPES(work, "fourierft_delta_weight", [&] {
    using complex_t = c10::complex<scalar_t>;
    complex_t* h = spec.data_ptr<complex_t>();
    const scalar_t* c = coeff.const_data_ptr<scalar_t>();
    // Each thread zeroes a band of rows and adds the entries landing in it (the scatter's random writes are
    // the cost at large n: split across threads, each band's writes stay local to the thread that zeroed it).
    const int64_t grain = std::max<int64_t>(1, (1 << 16) / half);
    at::parallel_for(0, out_features, grain, [&](int64_t r0, int64_t r1) {
      std::fill(h + r0 * stride, h + r1 * stride, complex_t(0));
      for (int64_t k = 0; k < n; ++k) {
        const int64_t uk = u[k], vk = v[k];
        const auto value = static_cast<scalar_t>(factor * c[k]);
        if (uk >= r0 && uk < r1 && vk < half) h[uk * stride + vk] += value;
        const int64_t mu = uk == 0 ? 0 : out_features - uk;  // (-u) mod d1, without a division
        const int64_t mv = vk == 0 ? 0 : in_features - vk;
        if (mu >= r0 && mu < r1 && mv < half) h[mu * stride + mv] += value;
      }
    });
    irfft2_dense(h, dw.data_ptr<scalar_t>(), out_features, in_features, std::is_same_v<scalar_t, double>, stride);
  });
  return dw.to(spectrum.scalar_type());
}

// grad_c_k = scaling / (d1 d2) * Re(fft2(G)[u_k, v_k]), read from rfft2(G).
at::Tensor delta_weight_backward_cpu(const at::Tensor& grad, const at::Tensor& spectrum,
                                     const at::Tensor& indices, int64_t out_features,
                                     int64_t in_features, double scaling) {
  if (generic_kernels_on_cpu()) return delta_weight_backward_generic(grad, spectrum, indices, out_features, in_features, scaling);
  check_spectrum_and_indices("_delta_weight_backward", spectrum, indices, out_features,
                             in_features);
  TORCH_CHECK(grad.dim() == 2 && grad.size(0) == out_features && grad.size(1) == in_features,
              "fourierft._delta_weight_backward: grad must have shape [", out_features, ", ",
              in_features, "], got ", grad.sizes());
  check_cpu("_delta_weight_backward", grad);
  const int64_t n = spectrum.size(0);
  const auto work = compute_dtype(grad.scalar_type(), spectrum.scalar_type());
  const auto g = grad.to(work).contiguous();
  const int64_t stride = padded_bins(in_features / 2 + 1, work == at::kDouble);
  auto g_spec = at::empty({out_features, stride}, g.options().dtype(c10::toComplexType(work)));
  rfft2_dense(g.const_data_ptr(), g_spec.data_ptr(), out_features, in_features, work == at::kDouble, stride);
  const auto idx = indices.contiguous();
  const int64_t* u = idx.const_data_ptr<int64_t>();
  const int64_t* v = u + n;
  const int64_t half = in_features / 2 + 1;
  auto out = at::empty({n}, spectrum.options().dtype(work));
  const double norm = scaling / (static_cast<double>(out_features) * in_features);
  AT_DISPATCH_FLOATING_TYPES(work, "fourierft_delta_weight_backward", [&] {
    const auto* r = g_spec.const_data_ptr<c10::complex<scalar_t>>();
    scalar_t* o = out.data_ptr<scalar_t>();
    for (int64_t k = 0; k < n; ++k) {
      int64_t row = u[k], col = v[k];
      if (col >= half) {  // Re(fft2(G)[u, v]) = Re(fft2(G)[-u, -v]) for real G
        row = (out_features - row) % out_features;
        col = in_features - col;
      }
      o[k] = static_cast<scalar_t>(norm * r[row * stride + col].real());
    }
  });
  return out.to(spectrum.scalar_type());
}

}  // namespace fourierft::detail
