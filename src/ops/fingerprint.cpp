// A 64-bit fingerprint of a tensor's bytes, for caches keyed on values that may change behind the
// version counter (`p.data.mul_()`, PEFT's merge through `.data`): one read of the data, parallel.
#include <fourierft/ops.h>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cstring>
#include <vector>

namespace fourierft {
namespace {
inline uint64_t mix(uint64_t h, uint64_t word) {
  h ^= word;
  h *= 0x9E3779B97F4A7C15ULL;
  return h ^ (h >> 29);
}
}  // namespace

uint64_t fingerprint(const at::Tensor& tensor) {
  TORCH_CHECK(tensor.device().is_cpu(), "fourierft.fingerprint: expected a CPU tensor, got one on ", tensor.device());
  const auto data = tensor.contiguous();
  const auto* bytes = static_cast<const unsigned char*>(data.const_data_ptr());
  const int64_t nbytes = static_cast<int64_t>(data.nbytes());
  const int64_t words = nbytes / 8;
  constexpr int64_t kChunk = 1 << 16;  // words per task
  const int64_t chunks = (words + kChunk - 1) / kChunk;
  std::vector<uint64_t> partial(std::max<int64_t>(chunks, 1), 0);
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      uint64_t lane[4] = {0x243F6A8885A308D3ULL, 0x13198A2E03707344ULL, 0xA4093822299F31D0ULL, 0x082EFA98EC4E6C89ULL};
      const int64_t w0 = c * kChunk, w1 = std::min(words, w0 + kChunk);
      int64_t w = w0;
      for (; w + 4 <= w1; w += 4) {
        uint64_t v[4];
        std::memcpy(v, bytes + 8 * w, sizeof(v));
        for (int l = 0; l < 4; ++l) lane[l] = mix(lane[l], v[l]);
      }
      for (; w < w1; ++w) {
        uint64_t v;
        std::memcpy(&v, bytes + 8 * w, 8);
        lane[0] = mix(lane[0], v);
      }
      partial[c] = mix(mix(mix(lane[0], lane[1]), lane[2]), lane[3]) ^ static_cast<uint64_t>(c);
    }
  });
  uint64_t h = mix(0x452821E638D01377ULL, static_cast<uint64_t>(nbytes));
  for (const uint64_t p : partial) h = mix(h, p);
  for (int64_t b = 8 * words; b < nbytes; ++b) h = mix(h, bytes[b]);
  // The dtype and shape too: the same bytes read as another tensor are another key.
  h = mix(h, static_cast<uint64_t>(data.scalar_type()));
  for (const int64_t s : data.sizes()) h = mix(h, static_cast<uint64_t>(s));
  return h;
}

}  // namespace fourierft
