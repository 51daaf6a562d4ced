// Batched real FFTs of a few contiguous rows at a time, on plans cached per thread.
//
// The blocked spectral pipeline (spectral_linear_cpu.cpp) transforms a few dozen rows at a time so
// that every stage runs in cache. ATen's CPU FFT builds (commits) a new MKL descriptor on every call,
// which for small batches costs more than the transform itself (measured: ~40% of the forward at
// 4096 x 512 went to twiddle computation). Where the LibTorch in use exports MKL's DFTI entry points
// (the x86 builds do), these functions keep one committed single-threaded descriptor per
// (length, rows, direction, precision) and thread; elsewhere they fall back to ATen's transforms.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace fourierft::detail {

/// out[r] = rfft(in[r]) (unnormalised) for `rows` contiguous real rows of length `len` (float, or double
/// when `is_double`) into `rows` contiguous complex rows of len/2+1. Raw pointers: these run on worker
/// threads, which must not touch the caller's tensors. `out_stride`: distance between output rows in complex
/// values (at least len/2+1; -1: len/2+1, contiguous).
void rfft_rows(const void* in, void* out, int64_t len, int64_t rows, bool is_double, int64_t out_stride = -1);

/// out[r] = irfft(in[r], len) (normalised by 1/len, as torch.fft.irfft) for `rows` contiguous complex rows
/// of len/2+1 into `rows` contiguous real rows of length `len`. `in` may be overwritten. `in_stride`: distance
/// between input rows in complex values (at least len/2+1; -1: len/2+1, contiguous).
void irfft_rows(void* in, void* out, int64_t len, int64_t rows, bool is_double, int64_t in_stride = -1);

/// out = rfft2(in) (unnormalised) of one contiguous real [d1, d2] matrix into a complex [d1, d2/2+1] one, on up
/// to at::get_num_threads() threads (the caller's thread, not a worker's). `out_stride`: distance between the
/// output's rows in complex values (-1: d2/2+1, contiguous).
void rfft2_dense(const void* in, void* out, int64_t d1, int64_t d2, bool is_double, int64_t out_stride = -1);

/// out = irfft2(in, (d1, d2)) UNnormalised (no 1/(d1 d2)): complex [d1, d2/2+1] into contiguous real [d1, d2].
/// `in` is overwritten. `in_stride`: distance between the input's rows in complex values (-1: d2/2+1).
void irfft2_dense(void* in, void* out, int64_t d1, int64_t d2, bool is_double, int64_t in_stride = -1);

/// Row distance, in complex values, for a row-major half spectrum of `bins` values per row that FFTs read or
/// write: `bins` rounded up to whole 64-byte lines, plus one line where that lands on a multiple of 4 KiB. Rows
/// a multiple of 4 KiB apart (or 8 bytes more: 513 complex floats at width 1024) put the same column of every
/// row in one cache set; measured at width 1024 with 2048 rows, the pipeline's forward took 1.77 ms with
/// 513-value rows and 1.36 ms with 520.
int64_t padded_bins(int64_t bins, bool is_double);

/// Whether the cached-plan (MKL DFTI) backend is in use; false: ATen's transforms.
bool fft_rows_use_cached_plans();

}  // namespace fourierft::detail
