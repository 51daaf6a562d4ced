// See fft_rows.h. MKL's C API is declared here (mkl_dfti.h is not shipped with LibTorch) with weak
// linkage: a LibTorch without these symbols leaves them null and the ATen transforms are used.
#include "fft_rows.h"

#include <ATen/ATen.h>
#include <c10/util/complex.h>

#include <map>
#include <memory>
#include <tuple>

extern "C" {
struct DFTI_DESCRIPTOR;
typedef DFTI_DESCRIPTOR* DFTI_DESCRIPTOR_HANDLE;
long DftiCreateDescriptor_s_1d(DFTI_DESCRIPTOR_HANDLE*, int domain, long length) __attribute__((weak));
long DftiCreateDescriptor_d_1d(DFTI_DESCRIPTOR_HANDLE*, int domain, long length) __attribute__((weak));
long DftiCreateDescriptor_s_md(DFTI_DESCRIPTOR_HANDLE*, int domain, long dimension, ...) __attribute__((weak));
long DftiCreateDescriptor_d_md(DFTI_DESCRIPTOR_HANDLE*, int domain, long dimension, ...) __attribute__((weak));
long DftiSetValue(DFTI_DESCRIPTOR_HANDLE, int param, ...) __attribute__((weak));
long DftiCommitDescriptor(DFTI_DESCRIPTOR_HANDLE) __attribute__((weak));
long DftiComputeForward(DFTI_DESCRIPTOR_HANDLE, void*, ...) __attribute__((weak));
long DftiComputeBackward(DFTI_DESCRIPTOR_HANDLE, void*, ...) __attribute__((weak));
long DftiFreeDescriptor(DFTI_DESCRIPTOR_HANDLE*) __attribute__((weak));
char* DftiErrorMessage(long) __attribute__((weak));
}

namespace fourierft::detail {
namespace {

// Values of mkl_dfti.h's DFTI_CONFIG_PARAM and DFTI_CONFIG_VALUE enums (stable across MKL releases).
enum : int {
  kForwardDomain = 0,  // unused: the domain is an argument of the create call
  kBackwardScale = 5,
  kNumberOfTransforms = 7,
  kConjugateEvenStorage = 10,
  kPlacement = 11,
  kInputStrides = 12,
  kOutputStrides = 13,
  kInputDistance = 14,
  kOutputDistance = 15,
  kThreadLimit = 27,
  kReal = 33,
  kComplexComplex = 39,
  kNotInplace = 44,
};

bool dfti_available() {
  return DftiCreateDescriptor_s_1d != nullptr && DftiCreateDescriptor_d_1d != nullptr && DftiSetValue != nullptr &&
         DftiCommitDescriptor != nullptr && DftiComputeForward != nullptr && DftiComputeBackward != nullptr &&
         DftiFreeDescriptor != nullptr && DftiCreateDescriptor_s_md != nullptr && DftiCreateDescriptor_d_md != nullptr;
}

void check(long status, const char* what, int64_t len, int64_t rows) {
  TORCH_CHECK(status == 0, "fourierft: MKL FFT ", what, " failed for ", rows, " rows of length ", len, ": ",
              DftiErrorMessage != nullptr ? DftiErrorMessage(status) : "unknown error");
}

struct Plan {
  DFTI_DESCRIPTOR_HANDLE handle = nullptr;
  ~Plan() {
    if (handle != nullptr) DftiFreeDescriptor(&handle);
  }
};

// One committed descriptor per (double, forward, length, rows, spectrum row distance), single-threaded: the
// callers run one block per thread.
Plan& plan_for(bool is_double, bool forward, int64_t len, int64_t rows, int64_t stride) {
  thread_local std::map<std::tuple<bool, bool, int64_t, int64_t, int64_t>, std::unique_ptr<Plan>> cache;
  const auto key = std::make_tuple(is_double, forward, len, rows, stride);
  if (auto it = cache.find(key); it != cache.end()) return *it->second;
  if (cache.size() >= 64) cache.clear();  // many shapes on this thread: start over rather than grow unbounded
  auto plan = std::make_unique<Plan>();
  const long half = static_cast<long>(stride);
  check(is_double ? DftiCreateDescriptor_d_1d(&plan->handle, kReal, static_cast<long>(len))
                  : DftiCreateDescriptor_s_1d(&plan->handle, kReal, static_cast<long>(len)),
        "descriptor creation", len, rows);
  check(DftiSetValue(plan->handle, kPlacement, kNotInplace), "configuration", len, rows);
  check(DftiSetValue(plan->handle, kConjugateEvenStorage, kComplexComplex), "configuration", len, rows);
  check(DftiSetValue(plan->handle, kNumberOfTransforms, static_cast<long>(rows)), "configuration", len, rows);
  check(DftiSetValue(plan->handle, kInputDistance, forward ? static_cast<long>(len) : half), "configuration", len,
        rows);
  check(DftiSetValue(plan->handle, kOutputDistance, forward ? half : static_cast<long>(len)), "configuration",
        len, rows);
  check(DftiSetValue(plan->handle, kThreadLimit, 1L), "configuration", len, rows);
  if (!forward) {
    check(is_double ? DftiSetValue(plan->handle, kBackwardScale, 1.0 / static_cast<double>(len))
                    : DftiSetValue(plan->handle, kBackwardScale, static_cast<float>(1.0 / static_cast<double>(len))),
          "configuration", len, rows);
  }
  check(DftiCommitDescriptor(plan->handle), "commit", len, rows);
  auto& stored = cache[key];
  stored = std::move(plan);
  return *stored;
}

// One committed 2-D real descriptor per (double, forward, d1, d2, threads, complex row distance) and thread:
// unnormalised, out of place, row-major [d1, d2] real <-> [d1, d2/2+1] complex (rows `stride` apart); MKL runs it
// on up to `threads` threads.
Plan& plan_2d_for(bool is_double, bool forward, int64_t d1, int64_t d2, int64_t threads, int64_t stride) {
  thread_local std::map<std::tuple<bool, bool, int64_t, int64_t, int64_t, int64_t>, std::unique_ptr<Plan>> cache;
  const auto key = std::make_tuple(is_double, forward, d1, d2, threads, stride);
  if (auto it = cache.find(key); it != cache.end()) return *it->second;
  if (cache.size() >= 16) cache.clear();
  auto plan = std::make_unique<Plan>();
  long lengths[2] = {static_cast<long>(d1), static_cast<long>(d2)};
  const long half = static_cast<long>(stride);
  long real_strides[3] = {0, static_cast<long>(d2), 1};
  long complex_strides[3] = {0, half, 1};
  check(is_double ? DftiCreateDescriptor_d_md(&plan->handle, kReal, 2L, lengths)
                  : DftiCreateDescriptor_s_md(&plan->handle, kReal, 2L, lengths),
        "2-D descriptor creation", d2, d1);
  check(DftiSetValue(plan->handle, kPlacement, kNotInplace), "2-D configuration", d2, d1);
  check(DftiSetValue(plan->handle, kConjugateEvenStorage, kComplexComplex), "2-D configuration", d2, d1);
  check(DftiSetValue(plan->handle, kInputStrides, forward ? real_strides : complex_strides), "2-D configuration", d2,
        d1);
  check(DftiSetValue(plan->handle, kOutputStrides, forward ? complex_strides : real_strides), "2-D configuration",
        d2, d1);
  check(DftiSetValue(plan->handle, kThreadLimit, static_cast<long>(threads)), "2-D configuration", d2, d1);
  check(DftiCommitDescriptor(plan->handle), "2-D commit", d2, d1);
  auto& stored = cache[key];
  stored = std::move(plan);
  return *stored;
}

}  // namespace

namespace {
// The ATen fallbacks' views of the caller's buffers: a real [rows, len] matrix and its half spectrum
// [rows, len/2+1].
at::Tensor real_view(const void* data, int64_t rows, int64_t len, bool is_double) {
  return at::from_blob(const_cast<void*>(data), {rows, len}, at::TensorOptions().dtype(is_double ? at::kDouble : at::kFloat));
}
at::Tensor half_spectrum_view(const void* data, int64_t rows, int64_t len, bool is_double, int64_t stride = -1) {
  return at::from_blob(const_cast<void*>(data), {rows, len / 2 + 1}, {stride < 0 ? len / 2 + 1 : stride, 1},
                       at::TensorOptions().dtype(is_double ? at::kComplexDouble : at::kComplexFloat));
}
constexpr int64_t kUnnormalised = 0, kByN = 2;  // ATen's fft_norm_mode values
}  // namespace

void rfft2_dense(const void* in, void* out, int64_t d1, int64_t d2, bool is_double, int64_t out_stride) {
  const int64_t stride = out_stride < 0 ? d2 / 2 + 1 : out_stride;
  if (!fft_rows_use_cached_plans()) {
    half_spectrum_view(out, d1, d2, is_double, stride)
        .copy_(at::_fft_r2c(real_view(in, d1, d2, is_double), {0, 1}, kUnnormalised, /*onesided=*/true));
    return;
  }
  auto& plan = plan_2d_for(is_double, /*forward=*/true, d1, d2, at::get_num_threads(), stride);
  check(DftiComputeForward(plan.handle, const_cast<void*>(in), out), "2-D forward transform", d2, d1);
}

void irfft2_dense(void* in, void* out, int64_t d1, int64_t d2, bool is_double, int64_t in_stride) {
  const int64_t stride = in_stride < 0 ? d2 / 2 + 1 : in_stride;
  if (!fft_rows_use_cached_plans()) {
    auto output = real_view(out, d1, d2, is_double);
    at::_fft_c2r_out(output, half_spectrum_view(in, d1, d2, is_double, stride).contiguous(), {0, 1}, kUnnormalised,
                     d2);
    return;
  }
  auto& plan = plan_2d_for(is_double, /*forward=*/false, d1, d2, at::get_num_threads(), stride);
  check(DftiComputeBackward(plan.handle, in, out), "2-D inverse transform", d2, d1);
}

int64_t padded_bins(int64_t bins, bool is_double) {
  const int64_t bytes = is_double ? 16 : 8, per_line = 64 / bytes;
  int64_t stride = (bins + per_line - 1) / per_line * per_line;
  if ((stride * bytes) % 4096 == 0) stride += per_line;
  return stride;
}

bool fft_rows_use_cached_plans() {
  static const bool available = dfti_available();
  return available;
}

void rfft_rows(const void* in, void* out, int64_t len, int64_t rows, bool is_double, int64_t out_stride) {
  const int64_t half = len / 2 + 1, stride = out_stride < 0 ? half : out_stride;
  if (!fft_rows_use_cached_plans()) {
    auto output = half_spectrum_view(out, rows, len, is_double, stride);
    if (stride == half) {
      at::_fft_r2c_out(output, real_view(in, rows, len, is_double), {1}, kUnnormalised, /*onesided=*/true);
    } else {
      output.copy_(at::_fft_r2c(real_view(in, rows, len, is_double), {1}, kUnnormalised, /*onesided=*/true));
    }
    return;
  }
  auto& plan = plan_for(is_double, /*forward=*/true, len, rows, stride);
  check(DftiComputeForward(plan.handle, const_cast<void*>(in), out), "forward transform", len, rows);
}

void irfft_rows(void* in, void* out, int64_t len, int64_t rows, bool is_double, int64_t in_stride) {
  const int64_t half = len / 2 + 1, stride = in_stride < 0 ? half : in_stride;
  if (!fft_rows_use_cached_plans()) {
    auto output = real_view(out, rows, len, is_double);
    at::_fft_c2r_out(output, half_spectrum_view(in, rows, len, is_double, stride).contiguous(), {1}, kByN, len);
    return;
  }
  auto& plan = plan_for(is_double, /*forward=*/false, len, rows, stride);
  check(DftiComputeBackward(plan.handle, in, out), "inverse transform", len, rows);
}

}  // namespace fourierft::detail
