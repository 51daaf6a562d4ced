// Row blocking and per-thread scratch of the CPU kernels: the blocked pipeline (spectral_linear_cpu.cpp) and the
// folded route's row transforms (folded_cpu.cpp).
#pragma once

#include "fft_rows.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <memory>
#include <tuple>
#include <type_traits>

namespace fourierft::detail {

// Rows per block: the block's half spectra (`bins` complex values per row, all buffers together) stay
// within `budget` bytes (256 KiB forward, 512 KiB backward), but no fewer than `least` rows; and the blocks
// split evenly across `threads` (at a few hundred rows, one thread with two blocks while the other has one
// costs a third of the call). Measured A/B in one process (widths 384-8192, 128-4096 rows): MKL's batched row
// transforms vectorise across rows, and blocks of 4-7 rows (widths 4096-8192 within the budget) were 20-30%
// slower than 8; 16 or more rows at widths 2048-8192 were 10-25% slower than 8 as well.
template <typename real_t>
int64_t block_rows(int64_t bins, int64_t rows, int64_t threads, int64_t budget, int64_t least) {
  const int64_t fit = budget / (2 * static_cast<int64_t>(sizeof(real_t)) * std::max<int64_t>(bins, 1));
  const int64_t most = std::max(least, fit >= 64 ? 64 : fit >= 8 ? fit / 8 * 8 : std::max<int64_t>(fit, 1));
  int64_t blocks = (rows + most - 1) / most;
  threads = std::max<int64_t>(threads, 1);
  if (blocks > 1 && blocks < 8 * threads) blocks = (blocks + threads - 1) / threads * threads;
  const int64_t even = (rows + blocks - 1) / blocks;
  return std::min(most, most >= 8 ? (even + 7) / 8 * 8 : even);
}

// Row distance of the row-major staging (fft_rows.h: padded_bins, against 4 KiB aliasing).
template <typename real_t>
int64_t staging_stride(int64_t bins) {
  return padded_bins(bins, std::is_same_v<real_t, double>);
}

// The calling thread's scratch of type S for these sizes, kept between calls (rebuilt when the sizes
// change): a fresh ~1 MiB of buffers per call costs more in allocation, zeroing and page faults than the
// transforms at a few hundred rows. Allocated and freed by the thread that uses it; every stage writes the
// rows it later reads, so nothing of a previous call is read.
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

// Runs body(chunk, scratch, r0, len) over blocks of `block` rows, the blocks split into at most one contiguous
// chunk per thread. Every transform, gather and scatter of a block happens while its rows are in cache: the
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

inline int64_t chunk_count(int64_t rows, int64_t block) {
  return std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), (rows + block - 1) / block));
}

}  // namespace fourierft::detail
