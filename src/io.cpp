#include <fourierft/io.h>

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <nlohmann/json.hpp>

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <limits>
#include <set>
#include <sstream>
#include <vector>

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "the safetensors reader/writer copies little-endian data as is");

namespace fourierft::safetensors {
namespace {

using nlohmann::json;

struct DtypeInfo {
  const char* name;
  at::ScalarType type;
  uint64_t itemsize;
};

constexpr DtypeInfo kDtypes[] = {
    {"F64", at::kDouble, 8}, {"F32", at::kFloat, 4}, {"F16", at::kHalf, 2},  {"BF16", at::kBFloat16, 2},
    {"I64", at::kLong, 8},   {"I32", at::kInt, 4},   {"I16", at::kShort, 2}, {"I8", at::kChar, 1},
    {"U8", at::kByte, 1},    {"BOOL", at::kBool, 1},
};

const DtypeInfo* dtype_by_name(const std::string& name) {
  for (const auto& d : kDtypes) {
    if (name == d.name) return &d;
  }
  return nullptr;
}

const DtypeInfo& dtype_by_type(at::ScalarType type, const std::string& tensor) {
  for (const auto& d : kDtypes) {
    if (d.type == type) return d;
  }
  TORCH_CHECK_VALUE(false, "safetensors: tensor '", tensor, "' has dtype ", type,
                    " which the safetensors writer does not support");
  return kDtypes[0];
}

uint64_t read_u64_le(const char* p) {
  uint64_t value = 0;
  std::memcpy(&value, p, sizeof(value));
  return value;
}

// Multiplies with overflow detection; false on overflow.
bool checked_mul(uint64_t a, uint64_t b, uint64_t& out) {
  if (a != 0 && b > std::numeric_limits<uint64_t>::max() / a) return false;
  out = a * b;
  return true;
}

uint64_t as_u64(const json& value, const std::string& source, const std::string& tensor, const char* what) {
  TORCH_CHECK_VALUE(value.is_number_unsigned() || (value.is_number_integer() && value.get<int64_t>() >= 0),
                    source, ": tensor '", tensor, "': ", what, " must be a non-negative integer, got ",
                    value.dump());
  return value.get<uint64_t>();
}

struct Entry {
  std::string name;
  const DtypeInfo* dtype;
  std::vector<int64_t> shape;
  uint64_t begin, end;
};

}  // namespace

File parse(const std::string& bytes, const std::string& source) {
  const uint64_t size = bytes.size();
  TORCH_CHECK_VALUE(size >= 8, source, ": not a safetensors file: ", size,
                    " bytes, fewer than the 8-byte header length");
  const uint64_t header_len = read_u64_le(bytes.data());
  TORCH_CHECK_VALUE(header_len > 0, source, ": header length is 0");
  TORCH_CHECK_VALUE(header_len <= kMaxHeaderBytes, source, ": header length ", header_len,
                    " exceeds the limit of ", kMaxHeaderBytes, " bytes");
  TORCH_CHECK_VALUE(header_len <= size - 8, source, ": header length ", header_len,
                    " runs past the end of the file (", size - 8, " bytes after the length field)");
  const std::string header_text = bytes.substr(8, header_len);
  const uint64_t data_size = size - 8 - header_len;
  const char* data = bytes.data() + 8 + header_len;

  // Duplicate top-level names would be silently merged by a JSON object: detect them while parsing.
  std::set<std::string> seen;
  std::string duplicate;
  json header;
  try {
    header = json::parse(header_text, [&](int depth, json::parse_event_t event, json& parsed) {
      if (depth == 1 && event == json::parse_event_t::key) {
        const auto key = parsed.get<std::string>();
        if (!seen.insert(key).second && duplicate.empty()) duplicate = key;
      }
      return true;
    });
  } catch (const json::exception& error) {
    TORCH_CHECK_VALUE(false, source, ": the header is not valid UTF-8 JSON: ", error.what());
  }
  TORCH_CHECK_VALUE(duplicate.empty(), source, ": tensor name '", duplicate, "' appears twice in the header");
  TORCH_CHECK_VALUE(header.is_object(), source, ": the header must be a JSON object, got ", header.type_name());

  File file;
  std::vector<Entry> entries;
  for (const auto& [name, info] : header.items()) {
    if (name == "__metadata__") {
      TORCH_CHECK_VALUE(info.is_object(), source, ": __metadata__ must be an object of strings, got ",
                        info.dump());
      for (const auto& [key, value] : info.items()) {
        TORCH_CHECK_VALUE(value.is_string(), source, ": __metadata__['", key, "'] must be a string, got ",
                          value.dump());
        file.metadata[key] = value.get<std::string>();
      }
      continue;
    }
    TORCH_CHECK_VALUE(info.is_object(), source, ": tensor '", name, "': entry must be an object, got ", info.dump());
    for (const char* field : {"dtype", "shape", "data_offsets"}) {
      TORCH_CHECK_VALUE(info.contains(field), source, ": tensor '", name, "': missing '", field, "'");
    }
    const auto& dtype_value = info["dtype"];
    TORCH_CHECK_VALUE(dtype_value.is_string(), source, ": tensor '", name, "': dtype must be a string, got ",
                      dtype_value.dump());
    Entry entry{name, dtype_by_name(dtype_value.get<std::string>()), {}, 0, 0};
    TORCH_CHECK_VALUE(entry.dtype, source, ": tensor '", name, "': unknown or unsupported dtype '",
                      dtype_value.get<std::string>(), "'");
    const auto& shape = info["shape"];
    TORCH_CHECK_VALUE(shape.is_array(), source, ": tensor '", name, "': shape must be a list, got ", shape.dump());
    uint64_t numel = 1;
    for (const auto& dim : shape) {
      const uint64_t d = as_u64(dim, source, name, "every shape entry");
      TORCH_CHECK_VALUE(d <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) && checked_mul(numel, d, numel),
                        source, ": tensor '", name, "': shape ", shape.dump(), " overflows");
      entry.shape.push_back(static_cast<int64_t>(d));
    }
    const auto& offsets = info["data_offsets"];
    TORCH_CHECK_VALUE(offsets.is_array() && offsets.size() == 2, source, ": tensor '", name,
                      "': data_offsets must be [begin, end], got ", offsets.dump());
    entry.begin = as_u64(offsets[0], source, name, "data_offsets[0]");
    entry.end = as_u64(offsets[1], source, name, "data_offsets[1]");
    TORCH_CHECK_VALUE(entry.begin <= entry.end, source, ": tensor '", name, "': data_offsets [", entry.begin,
                      ", ", entry.end, "] end before they begin");
    TORCH_CHECK_VALUE(entry.end <= data_size, source, ": tensor '", name, "': data_offsets [", entry.begin, ", ",
                      entry.end, "] lie outside the data section of ", data_size, " bytes");
    uint64_t nbytes = 0;
    TORCH_CHECK_VALUE(checked_mul(numel, entry.dtype->itemsize, nbytes) && nbytes == entry.end - entry.begin,
                      source, ": tensor '", name, "': shape ", shape.dump(), " of ", entry.dtype->name, " needs ",
                      numel, " x ", entry.dtype->itemsize, " bytes but data_offsets [", entry.begin, ", ",
                      entry.end, "] hold ", entry.end - entry.begin);
    entries.push_back(std::move(entry));
  }

  // The tensors must tile the data section exactly: sorted, no gaps, no overlaps.
  std::sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  uint64_t cursor = 0;
  for (const auto& e : entries) {
    TORCH_CHECK_VALUE(e.begin >= cursor, source, ": tensor '", e.name, "': data_offsets [", e.begin, ", ", e.end,
                      "] overlap the previous tensor, which ends at ", cursor);
    TORCH_CHECK_VALUE(e.begin == cursor, source, ": tensor '", e.name, "': data_offsets [", e.begin, ", ", e.end,
                      "] leave a gap of ", e.begin - cursor, " bytes after offset ", cursor);
    cursor = e.end;
  }
  TORCH_CHECK_VALUE(cursor == data_size, source, ": the tensors cover ", cursor, " of the ", data_size,
                    " data bytes; the rest is unaccounted for");

  for (const auto& e : entries) {
    auto tensor = at::empty(e.shape, at::TensorOptions(e.dtype->type));
    if (e.end > e.begin) std::memcpy(tensor.data_ptr(), data + e.begin, e.end - e.begin);
    file.tensors.emplace(e.name, std::move(tensor));
  }
  return file;
}

File load(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  TORCH_CHECK_VALUE(in.good(), path, ": cannot open for reading (", std::strerror(errno), ")");
  std::ostringstream buffer;
  buffer << in.rdbuf();
  return parse(buffer.str(), path);
}

std::string serialize(const TensorMap& tensors, const Metadata& metadata) {
  json header = json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  std::vector<at::Tensor> ordered;
  for (const auto& [name, tensor] : tensors) {  // std::map: sorted by name
    TORCH_CHECK_VALUE(name != "__metadata__", "safetensors: '__metadata__' cannot name a tensor");
    TORCH_CHECK_VALUE(tensor.defined(), "safetensors: tensor '", name, "' is undefined");
    const auto& dtype = dtype_by_type(tensor.scalar_type(), name);
    auto cpu = tensor.detach().to(at::kCPU).contiguous();
    const uint64_t nbytes = static_cast<uint64_t>(cpu.numel()) * dtype.itemsize;
    header[name] = {{"dtype", dtype.name}, {"shape", cpu.sizes().vec()}, {"data_offsets", {offset, offset + nbytes}}};
    offset += nbytes;
    ordered.push_back(std::move(cpu));
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  std::string out(8, '\0');
  const uint64_t header_len = text.size();
  std::memcpy(out.data(), &header_len, sizeof(header_len));
  out += text;
  out.reserve(out.size() + offset);
  for (const auto& t : ordered) {
    out.append(static_cast<const char*>(t.const_data_ptr()), t.numel() * t.element_size());
  }
  return out;
}

namespace detail {
// Test hook: when >= 0, write_file_atomically fails after writing this many bytes.
int64_t fail_writes_after = -1;
}  // namespace detail

void write_file_atomically(const std::string& path, const std::string& contents) {
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  TORCH_CHECK(fd >= 0, path, ": cannot create ", tmp, " (", std::strerror(errno), ")");
  uint64_t written = 0;
  const uint64_t limit = detail::fail_writes_after >= 0 ? static_cast<uint64_t>(detail::fail_writes_after)
                                                        : std::numeric_limits<uint64_t>::max();
  bool ok = true;
  std::string why;
  while (written < contents.size()) {
    if (written >= limit) {
      ok = false;
      why = "simulated write failure";
      break;
    }
    const size_t chunk = std::min<uint64_t>(contents.size() - written, std::min<uint64_t>(limit - written, 1 << 20));
    const ssize_t n = ::write(fd, contents.data() + written, chunk);
    if (n < 0) {
      if (errno == EINTR) continue;
      ok = false;
      why = std::strerror(errno);
      break;
    }
    written += static_cast<uint64_t>(n);
  }
  if (ok && ::fsync(fd) != 0) {
    ok = false;
    why = std::strerror(errno);
  }
  ::close(fd);
  if (ok && std::rename(tmp.c_str(), path.c_str()) != 0) {
    ok = false;
    why = std::strerror(errno);
  }
  if (!ok) {
    std::remove(tmp.c_str());
    TORCH_CHECK(false, path, ": writing failed after ", written, " of ", contents.size(), " bytes (", why,
                "); the previous file, if any, is unchanged");
  }
}

void save(const std::string& path, const TensorMap& tensors, const Metadata& metadata) {
  write_file_atomically(path, serialize(tensors, metadata));
}

}  // namespace fourierft::safetensors
