#include <fourierft/io.h>

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <nlohmann/json.hpp>

#include <fcntl.h>
#include <sys/stat.h>
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

// The bytes before the data section, as serialize() and Writer write them: the u64 little-endian header
// length, then the JSON header padded with spaces to a multiple of 8 bytes.
std::string framed_header(const json& header) {
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  std::string out(8, '\0');
  const uint64_t header_len = text.size();
  std::memcpy(out.data(), &header_len, sizeof(header_len));
  return out + text;
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

// The header's JSON object; a name given twice (a JSON object would silently keep one) is refused.
json parse_header_json(const std::string& header_text, const std::string& source) {
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
  return header;
}

void read_metadata(const json& info, const std::string& source, Metadata& metadata) {
  TORCH_CHECK_VALUE(info.is_object(), source, ": __metadata__ must be an object of strings, got ", info.dump());
  for (const auto& [key, value] : info.items()) {
    TORCH_CHECK_VALUE(value.is_string(), source, ": __metadata__['", key, "'] must be a string, got ",
                      value.dump());
    metadata[key] = value.get<std::string>();
  }
}

// One tensor's entry: a known dtype, a shape that does not overflow, data_offsets inside the data section that
// hold exactly the shape's bytes.
Entry parse_entry(const std::string& name, const json& info, const std::string& source, uint64_t data_size) {
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
  return entry;
}

// The tensors must tile the data section exactly: sorted by offset, no gaps, no overlaps.
void sort_and_check_tiling(std::vector<Entry>& entries, const std::string& source, uint64_t data_size) {
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
}

// Validates the header of a file of `size` bytes whose first bytes are `prefix` (at least the 8-byte
// length and the header itself, when the file is that long): every entry, and that the tensors tile
// the data section exactly. Entries come back sorted by offset.
std::vector<Entry> parse_header(const std::string& prefix, uint64_t size, const std::string& source,
                                Metadata& metadata, uint64_t& data_start) {
  TORCH_CHECK_VALUE(size >= 8, source, ": not a safetensors file: ", size,
                    " bytes, fewer than the 8-byte header length");
  const uint64_t header_len = read_u64_le(prefix.data());
  TORCH_CHECK_VALUE(header_len > 0, source, ": header length is 0");
  TORCH_CHECK_VALUE(header_len <= kMaxHeaderBytes, source, ": header length ", header_len,
                    " exceeds the limit of ", kMaxHeaderBytes, " bytes");
  TORCH_CHECK_VALUE(header_len <= size - 8, source, ": header length ", header_len,
                    " runs past the end of the file (", size - 8, " bytes after the length field)");
  const uint64_t data_size = size - 8 - header_len;
  data_start = 8 + header_len;

  const json header = parse_header_json(prefix.substr(8, header_len), source);  // named: items() refers to it
  std::vector<Entry> entries;
  for (const auto& [name, info] : header.items()) {
    if (name == "__metadata__") {
      read_metadata(info, source, metadata);
    } else {
      entries.push_back(parse_entry(name, info, source, data_size));
    }
  }
  sort_and_check_tiling(entries, source, data_size);
  return entries;
}

}  // namespace

File parse(const std::string& bytes, const std::string& source) {
  File file;
  uint64_t data_start = 0;
  const auto entries = parse_header(bytes, bytes.size(), source, file.metadata, data_start);
  const char* data = bytes.data() + data_start;
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
  std::string out = framed_header(header);
  out.reserve(out.size() + offset);
  for (const auto& t : ordered) {
    out.append(static_cast<const char*>(t.const_data_ptr()), t.numel() * t.element_size());
  }
  return out;
}

void write_file_atomically(const std::string& path, const std::string& contents) {
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  TORCH_CHECK(fd >= 0, path, ": cannot create ", tmp, " (", std::strerror(errno), ")");
  uint64_t written = 0;
  bool ok = true;
  std::string why;
  while (written < contents.size()) {
    const size_t chunk = std::min<uint64_t>(contents.size() - written, 1 << 20);
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

// ---------------------------------------------------------------------------------------------
// Streaming reader and writer.

namespace {
void pread_exactly(int fd, char* out, uint64_t size, uint64_t offset, const std::string& path) {
  uint64_t done = 0;
  while (done < size) {
    const ssize_t n = ::pread(fd, out + done, size - done, static_cast<off_t>(offset + done));
    if (n < 0 && errno == EINTR) continue;
    TORCH_CHECK_VALUE(n > 0, path, ": read failed at byte ", offset + done, " (",
                      n < 0 ? std::strerror(errno) : "unexpected end of file", ")");
    done += static_cast<uint64_t>(n);
  }
}
}  // namespace

Reader::Reader(const std::string& path) : path_(path) {
  fd_ = ::open(path.c_str(), O_RDONLY);
  TORCH_CHECK_VALUE(fd_ >= 0, path, ": cannot open for reading (", std::strerror(errno), ")");
  try {
    struct stat st {};
    TORCH_CHECK_VALUE(::fstat(fd_, &st) == 0, path, ": cannot stat (", std::strerror(errno), ")");
    const uint64_t size = static_cast<uint64_t>(st.st_size);
    std::string prefix(std::min<uint64_t>(size, 8), '\0');
    pread_exactly(fd_, prefix.data(), prefix.size(), 0, path);
    if (size >= 8) {  // read the header too (bounded by kMaxHeaderBytes, checked by parse_header)
      const uint64_t header_len = read_u64_le(prefix.data());
      const uint64_t want = std::min<uint64_t>(size, 8 + std::min<uint64_t>(header_len, kMaxHeaderBytes + 1));
      prefix.resize(want);
      pread_exactly(fd_, prefix.data() + 8, want - 8, 8, path);
    }
    const auto entries = parse_header(prefix, size, path, metadata_, data_start_);
    for (const auto& e : entries) {
      infos_.push_back({e.name, e.dtype->type, e.shape});
      spans_[e.name] = {e.begin, e.end};
    }
  } catch (...) {
    ::close(fd_);
    throw;
  }
}

Reader::~Reader() {
  if (fd_ >= 0) ::close(fd_);
}

bool Reader::contains(const std::string& name) const { return spans_.count(name) > 0; }

const TensorInfo& Reader::info(const std::string& name) const {
  for (const auto& i : infos_) {
    if (i.name == name) return i;
  }
  TORCH_CHECK_VALUE(false, path_, ": no tensor named '", name, "'");
}

at::Tensor Reader::tensor(const std::string& name) const {
  const auto& i = info(name);
  const auto [begin, end] = spans_.at(name);
  auto out = at::empty(i.shape, at::TensorOptions(i.dtype));
  if (end > begin) pread_exactly(fd_, static_cast<char*>(out.data_ptr()), end - begin, data_start_ + begin, path_);
  return out;
}

Writer::Writer(const std::string& path, std::vector<TensorInfo> layout, const Metadata& metadata)
    : path_(path), tmp_(path + ".tmp." + std::to_string(::getpid())), layout_(std::move(layout)) {
  json header = json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const auto& t : layout_) {
    TORCH_CHECK_VALUE(t.name != "__metadata__" && !header.contains(t.name), path,
                      ": tensor name '", t.name, "' is reserved or appears twice");
    const auto& dtype = dtype_by_type(t.dtype, t.name);
    uint64_t numel = 1;
    for (const auto d : t.shape) numel *= static_cast<uint64_t>(d);
    const uint64_t nbytes = numel * dtype.itemsize;
    header[t.name] = {{"dtype", dtype.name}, {"shape", t.shape}, {"data_offsets", {offset, offset + nbytes}}};
    offset += nbytes;
  }
  const std::string head = framed_header(header);
  fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  TORCH_CHECK_VALUE(fd_ >= 0, path, ": cannot create ", tmp_, " (", std::strerror(errno), ")");
  write_bytes(head.data(), head.size());
}

Writer::~Writer() {
  if (fd_ >= 0) {
    ::close(fd_);
    std::remove(tmp_.c_str());
  }
}

void Writer::write_bytes(const char* data, uint64_t size) {
  uint64_t done = 0;
  while (done < size) {
    const ssize_t n = ::write(fd_, data + done, std::min<uint64_t>(size - done, 1 << 20));
    if (n < 0 && errno == EINTR) continue;
    TORCH_CHECK_VALUE(n > 0, path_, ": writing failed after ", written_ + done, " bytes (", std::strerror(errno),
                      "); nothing was written to ", path_);
    done += static_cast<uint64_t>(n);
  }
  written_ += size;
}

void Writer::write(const std::string& name, const at::Tensor& tensor) {
  TORCH_CHECK_VALUE(next_ < layout_.size(), path_, ": tensor '", name, "' is beyond the ", layout_.size(),
                    " tensors of the layout");
  const auto& want = layout_[next_];
  TORCH_CHECK_VALUE(want.name == name && want.dtype == tensor.scalar_type() && want.shape == tensor.sizes().vec(),
                    path_, ": expected tensor '", want.name, "' (", want.dtype, ", ", c10::IntArrayRef(want.shape),
                    ") next, got '", name, "' (", tensor.scalar_type(), ", ", tensor.sizes(), ")");
  const auto cpu = tensor.detach().to(at::kCPU).contiguous();
  write_bytes(static_cast<const char*>(cpu.const_data_ptr()), static_cast<uint64_t>(cpu.numel()) * cpu.element_size());
  ++next_;
}

void Writer::commit() {
  TORCH_CHECK_VALUE(next_ == layout_.size(), path_, ": commit after ", next_, " of ", layout_.size(), " tensors");
  TORCH_CHECK_VALUE(::fsync(fd_) == 0, path_, ": fsync failed (", std::strerror(errno), ")");
  ::close(fd_);
  fd_ = -1;
  if (std::rename(tmp_.c_str(), path_.c_str()) != 0) {
    const std::string why = std::strerror(errno);
    std::remove(tmp_.c_str());
    TORCH_CHECK_VALUE(false, path_, ": cannot rename ", tmp_, " into place (", why, ")");
  }
}

}  // namespace fourierft::safetensors
