// Fuzz target for the safetensors reader, built with AddressSanitizer + UndefinedBehaviorSanitizer
// (src/io.cpp is compiled into this binary with the sanitizers). A bounded random-mutation loop
// over a seed corpus of valid files (byte flips, deletions, insertions, splices, and edits of the
// header-length field) runs for argv[1] seconds: every mutant must parse or raise c10::Error; a
// crash, an out-of-bounds access or undefined behaviour aborts with a sanitizer report.
#include <fourierft/io.h>

#include <ATen/ATen.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

namespace st = fourierft::safetensors;

int main(int argc, char** argv) {
  const double seconds = argc > 1 ? std::atof(argv[1]) : 10.0;
  std::vector<std::string> corpus = {
      st::serialize({{"a", at::arange(4, at::kFloat)}, {"b", at::ones({2, 3}, at::kDouble)}}, {{"format", "pt"}}),
      st::serialize({{"base_model.model.q.fourierft_spectrum", at::randn({37})}}),
      st::serialize({{"x", at::zeros({0, 3})}, {"y", at::ones({5}, at::kBool)}, {"z", at::ones({2}, at::kBFloat16)}}),
      st::serialize({}),
  };
  std::mt19937_64 rng(20261123);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  int64_t runs = 0, accepted = 0;
  while (std::chrono::steady_clock::now() < deadline) {
    std::string bytes = corpus[rng() % corpus.size()];
    const int edits = 1 + static_cast<int>(rng() % 6);
    for (int e = 0; e < edits && !bytes.empty(); ++e) {
      const size_t pos = rng() % bytes.size();
      switch (rng() % 6) {
        case 0: bytes[pos] = static_cast<char>(rng()); break;
        case 1: bytes.erase(pos, 1 + rng() % 16); break;
        case 2: bytes.insert(pos, 1 + rng() % 4, static_cast<char>(rng())); break;
        case 3: {  // splice from another seed
          const std::string& other = corpus[rng() % corpus.size()];
          const size_t from = rng() % other.size();
          bytes.replace(pos, rng() % 32, other.substr(from, rng() % 64));
          break;
        }
        case 4: {  // rewrite the header length
          if (bytes.size() >= 8) {
            const uint64_t len = (rng() % 2) ? rng() : rng() % (bytes.size() + 16);
            std::memcpy(bytes.data(), &len, 8);
          }
          break;
        }
        default: bytes.resize(rng() % (bytes.size() + 1)); break;
      }
    }
    try {
      const auto file = st::parse(bytes, "mutant");
      for (const auto& [name, tensor] : file.tensors) (void)tensor.sum();  // touch every byte read
      ++accepted;
    } catch (const c10::Error&) {
    }
    ++runs;
  }
  std::printf("fuzz_safetensors: %lld mutants in %.0f s, %lld parsed, %lld rejected cleanly, no sanitizer report\n",
              static_cast<long long>(runs), seconds, static_cast<long long>(accepted),
              static_cast<long long>(runs - accepted));
  return runs > 0 ? 0 : 1;
}
