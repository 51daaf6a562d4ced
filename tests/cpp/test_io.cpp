// safetensors reader/writer: files written by the reference `safetensors` package, round trips,
// atomic writes, and a table of broken files, each with its own clear error (docs/errors.md).
#include "test_helpers.h"

#include <fourierft/io.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>

#include <signal.h>
#include <sys/resource.h>
#include <nlohmann/json.hpp>

namespace st = fourierft::safetensors;

namespace {

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// Written by the reference implementation (python: safetensors.torch.save_file) with:
//   spectrum = arange(6, float32) / 4, b_f64 = [[1.5, -2.0]], c_bf16 = [1, -3, 0.5],
//   d_f16 = [2, 0.25], e_i64 = [-7, 2**40], f_i32 = [[1], [2], [3]], g_bool = [T, F, T],
//   h_empty = zeros(0, 4); metadata {"format": "pt", "note": "x"}.
TEST(Safetensors, ReadsFilesWrittenByTheReferenceLibrary) {
  const auto file = st::load(FOURIERFT_TEST_DATA_DIR "/written_by_python_safetensors.safetensors");
  EXPECT_EQ(file.metadata.at("format"), "pt");
  EXPECT_EQ(file.metadata.at("note"), "x");
  const auto& t = file.tensors;
  EXPECT_TRUE(torch::equal(t.at("base_model.model.layers.0.q.fourierft_spectrum"),
                           torch::arange(6, torch::kFloat) / 4));
  EXPECT_TRUE(torch::equal(t.at("b_f64"), torch::tensor({1.5, -2.0}, torch::kDouble).view({1, 2})));
  EXPECT_TRUE(torch::equal(t.at("c_bf16"), torch::tensor({1.0, -3.0, 0.5}).to(torch::kBFloat16)));
  EXPECT_TRUE(torch::equal(t.at("d_f16"), torch::tensor({2.0, 0.25}).to(torch::kHalf)));
  EXPECT_TRUE(torch::equal(t.at("e_i64"), torch::tensor({int64_t{-7}, int64_t{1} << 40})));
  EXPECT_TRUE(torch::equal(t.at("f_i32"), torch::tensor({1, 2, 3}, torch::kInt).view({3, 1})));
  EXPECT_TRUE(torch::equal(t.at("g_bool"), torch::tensor({true, false, true})));
  EXPECT_EQ(t.at("h_empty").sizes(), (std::vector<int64_t>{0, 4}));
}

TEST(Safetensors, RoundTripKeepsDtypesShapesValuesAndMetadata) {
  const auto reference = st::load(FOURIERFT_TEST_DATA_DIR "/written_by_python_safetensors.safetensors");
  st::TensorMap tensors = reference.tensors;
  tensors["z_noncontiguous"] = torch::randn({4, 3}).t();
  const auto bytes = st::serialize(tensors, reference.metadata);
  uint64_t header_len = 0;
  std::memcpy(&header_len, bytes.data(), 8);
  EXPECT_EQ(header_len % 8, 0u);
  // Data laid out in name order.
  const auto header = nlohmann::json::parse(bytes.substr(8, header_len));
  EXPECT_EQ(header["b_f64"]["data_offsets"][0], 0);
  const auto back = st::parse(bytes, "round trip");
  EXPECT_EQ(back.metadata, reference.metadata);
  ASSERT_EQ(back.tensors.size(), tensors.size());
  for (const auto& [name, tensor] : tensors) {
    EXPECT_EQ(back.tensors.at(name).scalar_type(), tensor.scalar_type()) << name;
    EXPECT_TRUE(torch::equal(back.tensors.at(name), tensor)) << name;
  }
}

TEST(Safetensors, AtomicSaveLeavesThePreviousFileOnFailure) {
  const auto dir = std::filesystem::temp_directory_path() / ("fourierft_io_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const auto path = (dir / "adapter_model.safetensors").string();
  st::save(path, {{"a", torch::ones({1000})}});
  {
    // A real failing write, as on a full disk: files may not grow past 1000 bytes (RLIMIT_FSIZE holds for
    // root too); the write then fails with EFBIG instead of raising SIGXFSZ.
    rlimit before{};
    ASSERT_EQ(::getrlimit(RLIMIT_FSIZE, &before), 0);
    auto* const previous_handler = ::signal(SIGXFSZ, SIG_IGN);
    rlimit small = before;
    small.rlim_cur = 1000;
    ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &small), 0);
    EXPECT_ERROR_CONTAINS(st::save(path, {{"a", torch::zeros({2000})}}), "writing failed after 1000 of",
                          "previous file", "unchanged");
    ::setrlimit(RLIMIT_FSIZE, &before);
    ::signal(SIGXFSZ, previous_handler);
  }
  EXPECT_TRUE(torch::equal(st::load(path).tensors.at("a"), torch::ones({1000})));
  size_t files = 0;
  for ([[maybe_unused]] const auto& entry : std::filesystem::directory_iterator(dir)) ++files;
  EXPECT_EQ(files, 1u) << "no temporary file may be left behind";
  std::filesystem::remove_all(dir);
}

// ---------------------------------------------------------------------------------------------
// Broken files. Each row: a description, the bytes, and the part of the message it must produce.

std::string with_header(const std::string& header, const std::string& data, int64_t declared = -1) {
  std::string out(8, '\0');
  const uint64_t len = declared >= 0 ? static_cast<uint64_t>(declared) : header.size();
  std::memcpy(out.data(), &len, 8);
  return out + header + data;
}

std::string valid_file() {
  return st::serialize({{"a", torch::arange(4, torch::kFloat)}, {"b", torch::ones({2}, torch::kDouble)}});
}

struct Broken {
  const char* what;
  std::string bytes;
  std::vector<std::string> message;
};

std::vector<Broken> broken_files() {
  const std::string good = valid_file();
  uint64_t header_len = 0;
  std::memcpy(&header_len, good.data(), 8);
  const std::string f32_4 = std::string(16, '\0');
  std::vector<Broken> rows = {
      {"empty file", "", {"fewer than the 8-byte header length"}},
      {"truncated inside the length field", good.substr(0, 5), {"5 bytes, fewer than the 8-byte"}},
      {"truncated after the length field", good.substr(0, 8), {"runs past the end of the file"}},
      {"truncated inside the header", good.substr(0, 8 + header_len / 2), {"runs past the end of the file"}},
      {"truncated inside the data", good.substr(0, good.size() - 3), {"lie outside the data section"}},
      {"header length zero", with_header("", ""), {"header length is 0"}},
      {"header length huge", with_header("{}", "", int64_t{1} << 40), {"exceeds the limit"}},
      {"header length past the end", with_header("{}", "", 50), {"header length 50 runs past the end"}},
      {"header not JSON", with_header("{not json", ""), {"not valid UTF-8 JSON"}},
      {"header invalid UTF-8", with_header("{\"\xff\xfe\":1}", ""), {"not valid UTF-8 JSON"}},
      {"header a list", with_header("[1, 2]", ""), {"must be a JSON object", "array"}},
      {"entry not an object", with_header(R"({"a": 3})", ""), {"tensor 'a'", "entry must be an object"}},
      {"missing dtype", with_header(R"({"a": {"shape": [1], "data_offsets": [0, 4]}})", f32_4.substr(0, 4)),
       {"tensor 'a'", "missing 'dtype'"}},
      {"missing data_offsets", with_header(R"({"a": {"dtype": "F32", "shape": [1]}})", ""), {"missing 'data_offsets'"}},
      {"unknown dtype", with_header(R"({"a": {"dtype": "F128", "shape": [1], "data_offsets": [0, 16]}})", f32_4),
       {"tensor 'a'", "unsupported dtype 'F128'"}},
      {"dtype not a string", with_header(R"({"a": {"dtype": 4, "shape": [1], "data_offsets": [0, 4]}})", f32_4.substr(0, 4)),
       {"dtype must be a string"}},
      {"negative dimension", with_header(R"({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}})", f32_4.substr(0, 4)),
       {"every shape entry must be a non-negative integer", "-1"}},
      {"shape overflows", with_header(R"({"a": {"dtype": "F32", "shape": [4294967296, 4294967296, 4], "data_offsets": [0, 4]}})", f32_4.substr(0, 4)),
       {"overflows"}},
      {"shape and offsets disagree", with_header(R"({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 16]}})", f32_4),
       {"tensor 'a'", "needs 3 x 4 bytes", "hold 16"}},
      {"offsets reversed", with_header(R"({"a": {"dtype": "F32", "shape": [0], "data_offsets": [8, 4]}})", f32_4),
       {"[8, 4] end before they begin"}},
      {"offsets out of range", with_header(R"({"a": {"dtype": "F32", "shape": [4], "data_offsets": [4, 20]}})", f32_4),
       {"[4, 20] lie outside the data section of 16 bytes"}},
      {"offsets not a pair", with_header(R"({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0]}})", f32_4),
       {"data_offsets must be [begin, end]"}},
      {"overlapping tensors", with_header(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})", std::string(12, '\0')),
       {"overlap the previous tensor, which ends at 8"}},
      {"gap between tensors", with_header(R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "b": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}})", f32_4),
       {"tensor 'b'", "gap of 4 bytes after offset 4"}},
      {"trailing bytes", with_header(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}})", f32_4),
       {"cover 8 of the 16 data bytes"}},
      {"duplicate names", with_header(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}})", f32_4),
       {"tensor name 'a' appears twice"}},
      {"metadata not strings", with_header(R"({"__metadata__": {"k": 1}})", ""), {"__metadata__['k'] must be a string"}},
      {"metadata not an object", with_header(R"({"__metadata__": [1]})", ""), {"__metadata__ must be an object"}},
  };
  return rows;
}

TEST(Safetensors, EveryBrokenFileGetsItsOwnClearError) {
  const auto rows = broken_files();
  EXPECT_GE(rows.size(), 25u);
  for (const auto& row : rows) {
    SCOPED_TRACE(row.what);
    bool thrown = false;
    try {
      st::parse(row.bytes, "broken.safetensors");
    } catch (const c10::Error& error) {
      thrown = true;
      const std::string message = error.what_without_backtrace();
      EXPECT_NE(message.find("broken.safetensors"), std::string::npos) << message;
      for (const auto& part : row.message) {
        EXPECT_NE(message.find(part), std::string::npos) << "lacks '" << part << "': " << message;
      }
    }
    EXPECT_TRUE(thrown);
  }
}

TEST(Safetensors, NanValuesLoadFine) {
  const auto file = st::parse(st::serialize({{"s", torch::tensor({1.0f, std::numeric_limits<float>::quiet_NaN()})}}));
  EXPECT_TRUE(torch::isnan(file.tensors.at("s")[1]).item<bool>());
}

// Bounded random mutation of a valid file: every mutant either throws c10::Error (anything else escapes
// and fails the test) or parses into a file that survives its own round trip. The sanitizer run of the
// same idea is tests/fuzz.
TEST(Safetensors, RandomMutationsParseConsistentlyOrAreRejected) {
  const std::string seed = st::serialize({{"a", torch::arange(4, torch::kFloat)}, {"b", torch::ones({2, 3}, torch::kDouble)}},
                                         {{"format", "pt"}});
  std::mt19937_64 rng(1234);
  int parsed = 0, rejected = 0;
  for (int i = 0; i < 3000; ++i) {
    std::string bytes = seed;
    const int edits = 1 + static_cast<int>(rng() % 4);
    for (int e = 0; e < edits; ++e) {
      const size_t pos = rng() % bytes.size();
      switch (rng() % 3) {
        case 0: bytes[pos] = static_cast<char>(rng()); break;
        case 1: bytes.erase(pos, 1 + rng() % 8); break;
        default: bytes.insert(pos, 1, static_cast<char>(rng())); break;
      }
      if (bytes.empty()) bytes = "x";
    }
    st::File file;
    try {
      file = st::parse(bytes, "mutant");
    } catch (const c10::Error&) {
      ++rejected;
      continue;
    }
    ++parsed;
    const auto again = st::parse(st::serialize(file.tensors, file.metadata), "round trip");
    ASSERT_EQ(again.tensors.size(), file.tensors.size());
    for (const auto& [name, tensor] : file.tensors) {
      ASSERT_TRUE(again.tensors.count(name)) << name;
      EXPECT_TRUE(torch::equal(again.tensors.at(name), tensor) || torch::isnan(tensor).any().item<bool>()) << name;
    }
  }
  EXPECT_GT(rejected, 1000);  // the mutations do break files...
  EXPECT_GT(parsed, 0);       // ...and some still parse (e.g. edits inside tensor data)
}

}  // namespace
