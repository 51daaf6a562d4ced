// safetensors reading and writing (the format of PEFT's adapter_model.safetensors), with strict
// validation: whatever the bytes, the reader never reads out of bounds and every violation is an
// exception naming the file, the tensor and the numbers.
//
// Layout: u64 little-endian header length N, N bytes of UTF-8 JSON
// {"<name>": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ..., "__metadata__": {..}},
// then the data section; offsets are relative to it.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace fourierft::safetensors {

using TensorMap = std::map<std::string, at::Tensor>;
using Metadata = std::map<std::string, std::string>;

/// Largest header accepted by the reader (the reference implementation's cap is 100 MB).
constexpr uint64_t kMaxHeaderBytes = 100'000'000;

struct File {
  TensorMap tensors;
  Metadata metadata;
};

/// Parses a complete safetensors file held in memory. `source` names it in error messages.
/// Supported dtypes: F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL.
File parse(const std::string& bytes, const std::string& source = "<memory>");
/// Reads and parses `path`.
File load(const std::string& path);

/// Serialises tensors (CPU, any layout; written contiguous) with tensors laid out sorted by name
/// and the header padded with spaces to a multiple of 8 bytes.
std::string serialize(const TensorMap& tensors, const Metadata& metadata = {});
/// Writes atomically: a temporary file in the same directory, flushed, then renamed over `path`,
/// so a failure at any point leaves the previous file (if any) intact.
void save(const std::string& path, const TensorMap& tensors, const Metadata& metadata = {});

/// Atomically replaces `path` with `contents` (temporary file + rename).
void write_file_atomically(const std::string& path, const std::string& contents);

/// Name, dtype and shape of one tensor of a file, without its data.
struct TensorInfo {
  std::string name;
  at::ScalarType dtype;
  std::vector<int64_t> shape;
};

/// Reads a file one tensor at a time (memory bounded by the largest tensor, not the file): the header
/// is validated as strictly as parse() does when the reader opens; tensor() then reads only its bytes.
class Reader {
 public:
  explicit Reader(const std::string& path);
  ~Reader();
  Reader(const Reader&) = delete;
  Reader& operator=(const Reader&) = delete;

  /// The tensors in file order (by offset).
  const std::vector<TensorInfo>& tensors() const { return infos_; }
  const Metadata& metadata() const { return metadata_; }
  bool contains(const std::string& name) const;
  const TensorInfo& info(const std::string& name) const;
  at::Tensor tensor(const std::string& name) const;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  int fd_ = -1;
  uint64_t data_start_ = 0;
  std::vector<TensorInfo> infos_;
  std::map<std::string, std::pair<uint64_t, uint64_t>> spans_;  // name -> [begin, end) in the data section
  Metadata metadata_;
};

/// Writes a file one tensor at a time: the header (from `layout`, in that order) first, then write()
/// each tensor in the same order, then commit(). Written to a temporary file in the same directory and
/// renamed by commit(); a Writer destroyed without commit() removes it, so `path` is never half written.
class Writer {
 public:
  Writer(const std::string& path, std::vector<TensorInfo> layout, const Metadata& metadata = {});
  ~Writer();
  Writer(const Writer&) = delete;
  Writer& operator=(const Writer&) = delete;

  /// The next tensor of the layout: its name, dtype and shape must match it.
  void write(const std::string& name, const at::Tensor& tensor);
  void commit();

 private:
  void write_bytes(const char* data, uint64_t size);
  std::string path_, tmp_;
  int fd_ = -1;
  std::vector<TensorInfo> layout_;
  size_t next_ = 0;
  uint64_t written_ = 0;
};

}  // namespace fourierft::safetensors
