// A tensor's version counter, the one definition for the caches that key on it: the index plans
// (src/ops/index_plan.cpp) and the layers' delta_W cache (src/layer.cpp). Not installed.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/TensorImpl.h>

#include <cstdint>

namespace fourierft::detail {

// Bumped by every in-place write. 0 for an inference tensor, which has none (it cannot be written outside inference
// mode).
inline uint32_t version_of(const at::Tensor& t) {
  return t.is_inference() ? 0u : t.unsafeGetTensorImpl()->version_counter().current_version();
}

}  // namespace fourierft::detail
