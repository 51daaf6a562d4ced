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

}  // namespace fourierft::safetensors
