// The op schemas of `torch.ops.fourierft.*` and the kernel of each dispatch key.
#include "internal.h"

#include <torch/library.h>

using namespace fourierft::detail;

TORCH_LIBRARY(fourierft, m) {
  m.def("entry_indices(int out_features, int in_features, int n_frequency, int random_loc_seed) -> Tensor",
        TORCH_FN(entry_indices_impl));
  m.def("delta_weight(Tensor spectrum, Tensor indices, int out_features, int in_features, float scaling) -> Tensor");
  m.def("_delta_weight_backward(Tensor grad, Tensor spectrum, Tensor indices, int out_features, int in_features, float scaling) -> Tensor");
  m.def("spectral_linear(Tensor x, Tensor spectrum, Tensor indices, int out_features, int in_features, float scaling) -> Tensor");
  m.def("linear(Tensor x, Tensor weight, Tensor? bias, Tensor spectrum, Tensor indices, int out_features, int in_features, float scaling) -> Tensor");
  m.def("_linear_backward(Tensor grad_out, Tensor x, Tensor weight, Tensor spectrum, Tensor indices, int out_features, int in_features, float scaling, bool need_grad_x, bool need_grad_weight, bool need_grad_bias, bool need_grad_spectrum, Tensor? dense_operand=None) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("_linear_dense_forward(Tensor x, Tensor weight, Tensor? bias, Tensor spectrum, Tensor indices, int out_features, int in_features, float scaling) -> (Tensor, Tensor)");
  m.def("_spectral_linear_backward(Tensor grad_out, Tensor x, Tensor spectrum, Tensor indices, int out_features, int in_features, float scaling, bool need_grad_x, bool need_grad_spectrum) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(fourierft, CPU, m) {
  m.impl("delta_weight", TORCH_FN(delta_weight_cpu));
  m.impl("_delta_weight_backward", TORCH_FN(delta_weight_backward_cpu));
  m.impl("spectral_linear", TORCH_FN(spectral_linear_cpu));
  m.impl("_spectral_linear_backward", TORCH_FN(spectral_linear_backward_cpu));
  m.impl("linear", TORCH_FN(linear_cpu));
  m.impl("_linear_backward", TORCH_FN(linear_backward_cpu));
  m.impl("_linear_dense_forward", TORCH_FN(linear_dense_forward_generic));
}

// The device-generic implementation (ATen operations: cuFFT and index kernels on a GPU). Registered in
// every build, so that a CPU-only build already dispatches CUDA tensors correctly.
TORCH_LIBRARY_IMPL(fourierft, CUDA, m) {
  m.impl("delta_weight", TORCH_FN(delta_weight_generic));
  m.impl("_delta_weight_backward", TORCH_FN(delta_weight_backward_generic));
  m.impl("spectral_linear", TORCH_FN(spectral_linear_generic));
  m.impl("_spectral_linear_backward", TORCH_FN(spectral_linear_backward_generic));
  m.impl("linear", TORCH_FN(linear_generic));
  m.impl("_linear_backward", TORCH_FN(linear_backward_generic));
  m.impl("_linear_dense_forward", TORCH_FN(linear_dense_forward_generic));
}

TORCH_LIBRARY_IMPL(fourierft, Meta, m) {
  m.impl("delta_weight", TORCH_FN(delta_weight_meta));
  m.impl("_delta_weight_backward", TORCH_FN(delta_weight_backward_meta));
  m.impl("spectral_linear", TORCH_FN(spectral_linear_meta));
  m.impl("_spectral_linear_backward", TORCH_FN(spectral_linear_backward_meta));
  m.impl("linear", TORCH_FN(linear_meta));
  m.impl("_linear_backward", TORCH_FN(linear_backward_meta));
  m.impl("_linear_dense_forward", TORCH_FN(linear_dense_forward_meta));
}

TORCH_LIBRARY_IMPL(fourierft, Autograd, m) {
  m.impl("delta_weight", TORCH_FN(delta_weight_autograd));
  m.impl("spectral_linear", TORCH_FN(spectral_linear_autograd));
  m.impl("linear", TORCH_FN(linear_autograd));
}
