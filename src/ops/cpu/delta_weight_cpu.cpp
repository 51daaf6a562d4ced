// The dense delta_W on CPU (merging, the dense forward path) and the entry matrix E.
//   delta_W = Re(ifft2(F)) * alpha = irfft2 of the Hermitian part of F (half the transform work).
#include "../internal.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <c10/util/complex.h>

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
  // column lies in the half spectrum. irfft2 of it is 2 Re(ifft2(F)).
  auto spec = at::zeros({out_features, half}, coeff.options().dtype(c10::toComplexType(work)));
  AT_DISPATCH_FLOATING_TYPES(work, "fourierft_delta_weight", [&] {
    auto* h = spec.data_ptr<c10::complex<scalar_t>>();
    const scalar_t* c = coeff.const_data_ptr<scalar_t>();
    for (int64_t k = 0; k < n; ++k) {
      if (v[k] < half) h[u[k] * half + v[k]] += c[k];
      const int64_t mu = (out_features - u[k]) % out_features;
      const int64_t mv = (in_features - v[k]) % in_features;
      if (mv < half) h[mu * half + mv] += c[k];
    }
  });
  auto dw = at::fft_irfft2(spec, std::vector<int64_t>{out_features, in_features}, {0, 1});
  dw.mul_(0.5 * scaling);
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
  const auto g_spec = at::fft_rfft2(grad.to(work), c10::nullopt, {0, 1}).contiguous();
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
      o[k] = static_cast<scalar_t>(norm * r[row * half + col].real());
    }
  });
  return out.to(spectrum.scalar_type());
}

}  // namespace fourierft::detail
