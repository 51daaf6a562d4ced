// A minimal stderr progress bar in the spirit of tqdm, for the C++ model's merge_and_unload and fourierft-merge:
//   <what>: 40%|############                  | 4/10 <item>
// Internal (not installed): src/ and tools/ include it.
#pragma once

#include <cstdio>
#include <string>

namespace fourierft::detail {

inline void progress_bar(const std::string& what, size_t done, size_t total, const std::string& item = "") {
  const int width = 30;
  const int filled = total ? static_cast<int>(width * done / total) : width;
  std::fprintf(stderr, "\r%s: %3d%%|%s%s| %zu/%zu", what.c_str(), total ? static_cast<int>(100 * done / total) : 100,
               std::string(filled, '#').c_str(), std::string(width - filled, ' ').c_str(), done, total);
  if (!item.empty()) std::fprintf(stderr, " %-40.40s", item.c_str());
  if (done == total) std::fprintf(stderr, "\n");
  std::fflush(stderr);
}

}  // namespace fourierft::detail
