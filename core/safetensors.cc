#include "core/safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <functional>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>

#include "core/strided_loop.h"

namespace resona {

// Tensor bytes go to and from the file as they are in memory.
static_assert(std::endian::native == std::endian::little,
              "safetensors data is little-endian and is copied without byte swapping");

namespace {

// ordered_json keeps the header's key order, so that entries whose data ranges tie
// (several empty tensors at one offset) come back in the order the file lists them.
using Json = nlohmann::ordered_json;

constexpr const char* kMetadataKey = "__metadata__";
// The reference implementation refuses headers above 100 MB; so do we, which also
// bounds what a corrupted length field can make us allocate.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;

struct DTypeCode {
  DType dtype;
  const char* name;
};
constexpr DTypeCode kDTypeCodes[] = {
    {DType::kFloat32, "F32"}, {DType::kFloat64, "F64"}, {DType::kBFloat16, "BF16"},
    {DType::kInt32, "I32"},   {DType::kInt64, "I64"},
};

// ---- errors ----

std::string squote(const std::string& s) { return "'" + s + "'"; }

#define RESONA_CHECK_FILE(cond, src) \
  RESONA_CHECK(cond) << "safetensors file " << squote(src) << ": "

// ---- low-level I/O ----

class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }
  // Closes now and reports the error close() may return (for written files it can
  // carry a deferred write error).
  int close_now() {
    int r = ::close(fd_);
    fd_ = -1;
    return r;
  }

 private:
  int fd_;
};

std::string errno_str() { return std::strerror(errno); }

void pread_full(int fd, void* dst, uint64_t n, uint64_t offset, const std::string& path) {
  char* p = static_cast<char*>(dst);
  while (n > 0) {
    const size_t chunk = static_cast<size_t>(std::min<uint64_t>(n, 1u << 30));
    ssize_t r = ::pread(fd, p, chunk, static_cast<off_t>(offset));
    if (r < 0 && errno == EINTR) continue;
    RESONA_CHECK_FILE(r >= 0, path) << "read at byte " << offset << " failed: " << errno_str();
    RESONA_CHECK_FILE(r > 0, path)
        << "file ended at byte " << offset << " while reading (was it changed while being read?)";
    p += r;
    n -= static_cast<uint64_t>(r);
    offset += static_cast<uint64_t>(r);
  }
}

void write_full(int fd, const void* src, size_t n, const std::string& path) {
  const char* p = static_cast<const char*>(src);
  while (n > 0) {
    ssize_t r = ::write(fd, p, std::min<size_t>(n, 1u << 30));
    if (r < 0 && errno == EINTR) continue;
    RESONA_CHECK_FILE(r > 0, path) << "write failed: " << errno_str();
    p += r;
    n -= static_cast<size_t>(r);
  }
}

// Reads bytes [offset, offset + n) of the file image into `dst`. Callers have checked
// the range against the image's size; implementations check again.
using ReadFn = std::function<void(uint64_t offset, uint64_t n, void* dst)>;

// ---- header parsing ----

DType parse_dtype(const Json& v, const std::string& name, const std::string& src) {
  RESONA_CHECK_FILE(v.is_string(), src)
      << "dtype of tensor " << squote(name) << " is " << v.dump() << ", not a string";
  const std::string& s = v.get_ref<const std::string&>();
  for (const DTypeCode& c : kDTypeCodes) {
    if (s == c.name) return c.dtype;
  }
  RESONA_FAIL() << "safetensors file " << squote(src) << ": tensor " << squote(name)
                << " has unknown or unsupported dtype " << squote(s)
                << " (expected F32, F64, BF16, I32 or I64)";
  return DType::kFloat32;
}

// A JSON integer >= 0; `what` names it. Floats ("2.0", "1e3") are refused, as the
// reference implementation refuses them.
uint64_t parse_count(const Json& v, const std::string& what, const std::string& src) {
  if (v.is_number_unsigned()) return v.get<uint64_t>();
  RESONA_CHECK_FILE(v.is_number_integer(), src) << what << " is " << v.dump() << ", not an integer";
  const int64_t i = v.get<int64_t>();
  RESONA_CHECK_FILE(i >= 0, src) << what << " is negative (" << i << ")";
  return static_cast<uint64_t>(i);
}

SafetensorsEntry parse_entry(const std::string& name, const Json& v, const std::string& src) {
  RESONA_CHECK_FILE(v.is_object(), src)
      << "entry of tensor " << squote(name) << " is a JSON " << v.type_name()
      << ", not an object with dtype, shape and data_offsets";
  for (const auto& item : v.items()) {
    const std::string& k = item.key();
    RESONA_CHECK_FILE(k == "dtype" || k == "shape" || k == "data_offsets", src)
        << "entry of tensor " << squote(name) << " has unexpected key " << squote(k)
        << " (expected dtype, shape and data_offsets)";
  }
  for (const char* k : {"dtype", "shape", "data_offsets"}) {
    RESONA_CHECK_FILE(v.contains(k), src)
        << "entry of tensor " << squote(name) << " is missing key " << squote(k);
  }
  SafetensorsEntry e;
  e.name = name;
  e.dtype = parse_dtype(v.at("dtype"), name, src);

  const Json& shape = v.at("shape");
  RESONA_CHECK_FILE(shape.is_array(), src)
      << "shape of tensor " << squote(name) << " is " << shape.dump() << ", not an array";
  for (const Json& d : shape) {
    const std::string what = "a dimension in shape " + shape.dump() + " of tensor " + squote(name);
    const uint64_t n = parse_count(d, what, src);
    RESONA_CHECK_FILE(n <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()), src)
        << what << " is too large (" << n << ")";
    e.shape.push_back(static_cast<int64_t>(n));
  }
  uint64_t nbytes = 0;
  if (std::find(e.shape.begin(), e.shape.end(), 0) == e.shape.end()) {
    uint64_t numel = 1;
    bool overflow = false;
    for (int64_t n : e.shape) overflow |= __builtin_mul_overflow(numel, n, &numel);
    overflow |= numel > static_cast<uint64_t>(std::numeric_limits<int64_t>::max());
    overflow |= __builtin_mul_overflow(numel, dtype_size(e.dtype), &nbytes);
    RESONA_CHECK_FILE(!overflow, src) << "shape " << shape.dump() << " of tensor " << squote(name)
                                      << " has too many elements to address";
  }

  const Json& offs = v.at("data_offsets");
  RESONA_CHECK_FILE(offs.is_array() && offs.size() == 2, src)
      << "data_offsets of tensor " << squote(name) << " is " << offs.dump()
      << ", not an array [begin, end]";
  e.begin = parse_count(offs[0], "data_offsets begin of tensor " + squote(name), src);
  e.end = parse_count(offs[1], "data_offsets end of tensor " + squote(name), src);
  RESONA_CHECK_FILE(e.begin <= e.end, src) << "data_offsets " << offs.dump() << " of tensor "
                                           << squote(name) << " are out of order (begin after end)";
  RESONA_CHECK_FILE(e.end - e.begin == nbytes, src)
      << "data_offsets " << offs.dump() << " of tensor " << squote(name) << " span "
      << e.end - e.begin << " bytes, but shape " << shape.dump() << " of "
      << safetensors_dtype_name(e.dtype) << " needs " << nbytes;
  return e;
}

// Parses and validates the N header bytes against a data section of `data_size` bytes.
SafetensorsHeader parse_header(const std::string& text, uint64_t data_size,
                               const std::string& src) {
  // nlohmann keeps the last of repeated keys silently; track the keys of each open
  // object to refuse them instead.
  std::vector<std::set<std::string>> open_objects;
  std::string duplicate;
  bool duplicate_is_tensor = false;
  Json::parser_callback_t on_event = [&](int, Json::parse_event_t event, Json& parsed) {
    switch (event) {
      case Json::parse_event_t::object_start:
        open_objects.emplace_back();
        break;
      case Json::parse_event_t::object_end:
        open_objects.pop_back();
        break;
      case Json::parse_event_t::key: {
        const std::string& k = parsed.get_ref<const std::string&>();
        if (!open_objects.back().insert(k).second && duplicate.empty()) {
          duplicate = k;
          duplicate_is_tensor = open_objects.size() == 1 && k != kMetadataKey;
        }
        break;
      }
      default:
        break;
    }
    return true;
  };
  Json j;
  try {
    j = Json::parse(text.begin(), text.end(), on_event);
  } catch (const Json::exception& ex) {
    RESONA_FAIL() << "safetensors file " << squote(src) << ": header is not valid JSON ("
                  << ex.what() << ")";
  }
  RESONA_CHECK_FILE(j.is_object(), src)
      << "header is a JSON " << j.type_name() << ", not an object";
  RESONA_CHECK_FILE(duplicate.empty(), src)
      << (duplicate_is_tensor ? "duplicate tensor name " : "duplicate key ") << squote(duplicate)
      << " in the header";

  SafetensorsHeader h;
  for (const auto& item : j.items()) {
    if (item.key() == kMetadataKey) {
      const Json& md = item.value();
      RESONA_CHECK_FILE(md.is_object(), src)
          << "__metadata__ is a JSON " << md.type_name() << ", not an object of strings";
      for (const auto& kv : md.items()) {
        RESONA_CHECK_FILE(kv.value().is_string(), src)
            << "__metadata__ value of " << squote(kv.key()) << " is " << kv.value().dump()
            << ", not a string";
        h.metadata[kv.key()] = kv.value().get<std::string>();
      }
      continue;
    }
    h.entries.push_back(parse_entry(item.key(), item.value(), src));
  }

  // The data ranges, in order, must tile [0, data_size) exactly.
  std::stable_sort(h.entries.begin(), h.entries.end(),
                   [](const SafetensorsEntry& a, const SafetensorsEntry& b) {
                     return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
                   });
  uint64_t at = 0;
  const SafetensorsEntry* prev = nullptr;
  for (const SafetensorsEntry& e : h.entries) {
    RESONA_CHECK_FILE(e.end <= data_size, src)
        << "data of tensor " << squote(e.name) << " [" << e.begin << ", " << e.end
        << ") lies beyond the data section, which has " << data_size
        << " bytes (is the file truncated?)";
    RESONA_CHECK_FILE(e.begin >= at, src)
        << "data of tensor " << squote(e.name) << " [" << e.begin << ", " << e.end
        << ") overlaps that of tensor " << squote(prev->name) << " [" << prev->begin << ", "
        << prev->end << ")";
    RESONA_CHECK_FILE(e.begin == at, src)
        << "gap of " << e.begin - at << " bytes before the data of tensor " << squote(e.name)
        << " [" << e.begin << ", " << e.end << "): data offsets must be contiguous";
    at = e.end;
    prev = &e;
  }
  RESONA_CHECK_FILE(at == data_size, src)
      << "data section has " << data_size - at << " trailing bytes not covered by any tensor ("
      << data_size << " bytes, tensors end at " << at << ")";
  return h;
}

SafetensorsHeader decode_header(uint64_t size, const ReadFn& read, const std::string& src) {
  RESONA_CHECK_FILE(size >= 8, src)
      << "file is " << size << " bytes, shorter than the 8-byte header length";
  unsigned char len_bytes[8];
  read(0, 8, len_bytes);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | len_bytes[i];
  RESONA_CHECK_FILE(n <= size - 8, src)
      << "header length " << n << " runs past the end of the file (" << size << " bytes)";
  RESONA_CHECK_FILE(n <= kMaxHeaderBytes, src)
      << "header length " << n << " is above the limit of " << kMaxHeaderBytes << " bytes";
  std::string text(n, '\0');
  read(8, n, text.data());
  SafetensorsHeader h = parse_header(text, size - 8 - n, src);
  h.data_start = 8 + n;
  return h;
}

SafetensorsFile decode_file(uint64_t size, const ReadFn& read, const std::string& src) {
  SafetensorsHeader h = decode_header(size, read, src);
  SafetensorsFile f;
  f.source = src;
  f.metadata = std::move(h.metadata);
  for (const SafetensorsEntry& e : h.entries) {
    Tensor t = empty(e.shape, e.dtype);
    read(h.data_start + e.begin, e.end - e.begin, t.raw_data());
    t.set_name(e.name);
    f.tensors.emplace_back(e.name, std::move(t));
  }
  return f;
}

ReadFn memory_reader(const void* data, uint64_t size, const std::string& src) {
  return [=](uint64_t offset, uint64_t n, void* dst) {
    RESONA_CHECK_FILE(offset <= size && n <= size - offset, src)
        << "read of " << n << " bytes at " << offset << " outside the " << size << "-byte image";
    if (n > 0) std::memcpy(dst, static_cast<const char*>(data) + offset, n);
  };
}

// Opens `path` for reading and returns (fd, size), checking it is a regular file.
uint64_t open_for_reading(const std::string& path, std::unique_ptr<Fd>& fd) {
  fd = std::make_unique<Fd>(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  RESONA_CHECK_FILE(fd->get() >= 0, path) << "cannot open: " << errno_str();
  struct stat st;
  RESONA_CHECK_FILE(::fstat(fd->get(), &st) == 0, path) << "cannot stat: " << errno_str();
  RESONA_CHECK_FILE(S_ISREG(st.st_mode), path) << "not a regular file";
  return static_cast<uint64_t>(st.st_size);
}

ReadFn file_reader(int fd, const std::string& path) {
  return
      [fd, &path](uint64_t offset, uint64_t n, void* dst) { pread_full(fd, dst, n, offset, path); };
}

// ---- writing ----

// `t`'s elements, row-major, as a contiguous CPU tensor of the same dtype: `t` itself
// when it already is one, else a byte-for-byte copy (no value conversion, so every bit
// pattern, NaN payloads included, survives).
Tensor host_contiguous(const Tensor& t) {
  if (t.numel() == 0) return empty(t.shape(), t.dtype());
  Tensor src = t;
  if (!t.device().is_cpu()) {
    if (t.is_contiguous()) return copy_to(t, t.dtype(), Device::cpu());
    // Device backends copy contiguous bytes only: bring the span of storage that `t`
    // covers to the host and gather from there.
    int64_t lo = t.offset(), hi = t.offset();
    for (int64_t d = 0; d < t.dim(); ++d) {
      const int64_t span = (t.shape()[d] - 1) * t.strides()[d];
      (span < 0 ? lo : hi) += span;
    }
    Tensor host_span = copy_to(make_view(t, {hi - lo + 1}, {1}, lo), t.dtype(), Device::cpu());
    src = make_view(host_span, t.shape(), t.strides(), t.offset() - lo);
  }
  if (src.is_contiguous()) return src;
  Tensor out = empty(t.shape(), t.dtype());
  auto gather = [&](auto word) {
    using W = decltype(word);
    char* d = static_cast<char*>(out.raw_data());
    const char* s = static_cast<const char*>(src.raw_data());
    strided_loop<2>(
        out.shape(), {out.strides(), src.strides()},
        [&](const std::array<int64_t, 2>& off, int64_t n, const std::array<int64_t, 2>& step) {
          for (int64_t i = 0; i < n; ++i) {
            std::memcpy(d + (off[0] + i * step[0]) * sizeof(W),
                        s + (off[1] + i * step[1]) * sizeof(W), sizeof(W));
          }
        });
  };
  switch (t.element_size()) {
    case 2:
      gather(uint16_t{});
      break;
    case 4:
      gather(uint32_t{});
      break;
    case 8:
      gather(uint64_t{});
      break;
    default:
      RESONA_FAIL() << "safetensors: no byte gather for " << t.describe();
  }
  return out;
}

// The header bytes (length field included, padded) for `tensors` stored in order.
std::string encode_header(const NamedTensors& tensors, const SafetensorsMetadata& metadata) {
  Json j = Json::object();
  if (!metadata.empty()) {
    Json md = Json::object();
    for (const auto& [k, v] : metadata) md[k] = v;
    j[kMetadataKey] = std::move(md);
  }
  std::set<std::string> seen;
  uint64_t at = 0;
  for (const auto& [name, t] : tensors) {
    RESONA_CHECK(name != kMetadataKey)
        << "save_safetensors: a tensor cannot be called " << kMetadataKey;
    RESONA_CHECK(seen.insert(name).second)
        << "save_safetensors: tensor name " << squote(name) << " appears twice";
    RESONA_CHECK(t.defined()) << "save_safetensors: tensor " << squote(name) << " is undefined";
    const uint64_t nbytes = t.nbytes();
    Json e = Json::object();
    e["dtype"] = safetensors_dtype_name(t.dtype());
    e["shape"] = t.shape();
    e["data_offsets"] = Json::array({at, at + nbytes});
    j[name] = std::move(e);
    at += nbytes;
  }
  std::string text;
  try {
    text = j.dump();
  } catch (const Json::exception& ex) {
    RESONA_FAIL() << "save_safetensors: tensor names and metadata must be valid UTF-8 ("
                  << ex.what() << ")";
  }
  text.append((8 - text.size() % 8) % 8, ' ');  // data then starts 8-byte aligned
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((text.size() >> (8 * i)) & 0xff);
  return out + text;
}

using WriteFn = std::function<void(const void*, size_t)>;

void encode(const NamedTensors& tensors, const SafetensorsMetadata& metadata,
            const WriteFn& write) {
  const std::string header = encode_header(tensors, metadata);
  write(header.data(), header.size());
  for (const auto& [name, t] : tensors) {
    if (t.numel() == 0) continue;
    Tensor h = host_contiguous(t);
    write(h.raw_data(), h.nbytes());
  }
}

}  // namespace

const char* safetensors_dtype_name(DType t) {
  for (const DTypeCode& c : kDTypeCodes) {
    if (c.dtype == t) return c.name;
  }
  RESONA_FAIL() << "safetensors: no code for dtype " << dtype_name(t);
  return "";
}

std::string serialize_safetensors(const NamedTensors& tensors,
                                  const SafetensorsMetadata& metadata) {
  std::string out;
  encode(tensors, metadata,
         [&](const void* p, size_t n) { out.append(static_cast<const char*>(p), n); });
  return out;
}

void save_safetensors(const std::string& path, const NamedTensors& tensors,
                      const SafetensorsMetadata& metadata) {
  encode_header(tensors, metadata);  // refuse bad names before touching the disk
  const std::string tmp = path + ".tmp";
  try {
    Fd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
    RESONA_CHECK_FILE(fd.get() >= 0, tmp) << "cannot create: " << errno_str();
    encode(tensors, metadata, [&](const void* p, size_t n) { write_full(fd.get(), p, n, tmp); });
    RESONA_CHECK_FILE(::fsync(fd.get()) == 0, tmp) << "fsync failed: " << errno_str();
    RESONA_CHECK_FILE(fd.close_now() == 0, tmp) << "close failed: " << errno_str();
    RESONA_CHECK_FILE(::rename(tmp.c_str(), path.c_str()) == 0, path)
        << "cannot rename " << squote(tmp) << " over it: " << errno_str();
  } catch (...) {
    ::unlink(tmp.c_str());
    throw;
  }
  // Make the rename itself durable.
  const size_t slash = path.find_last_of('/');
  const std::string dir = slash == std::string::npos ? "."
                          : slash == 0               ? "/"
                                                     : path.substr(0, slash);
  Fd dfd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (dfd.get() >= 0) ::fsync(dfd.get());
}

bool SafetensorsFile::contains(const std::string& name) const {
  for (const auto& nt : tensors) {
    if (nt.first == name) return true;
  }
  return false;
}

const Tensor& SafetensorsFile::get(const std::string& name) const {
  for (const auto& nt : tensors) {
    if (nt.first == name) return nt.second;
  }
  RESONA_FAIL() << "safetensors file " << squote(source) << " has no tensor " << squote(name)
                << " (it has " << tensors.size() << ")";
  return tensors.front().second;  // not reached
}

SafetensorsFile parse_safetensors(const void* data, size_t size, const std::string& source) {
  return decode_file(size, memory_reader(data, size, source), source);
}

SafetensorsFile load_safetensors(const std::string& path) {
  std::unique_ptr<Fd> fd;
  const uint64_t size = open_for_reading(path, fd);
  return decode_file(size, file_reader(fd->get(), path), path);
}

SafetensorsHeader read_safetensors_header(const std::string& path) {
  std::unique_ptr<Fd> fd;
  const uint64_t size = open_for_reading(path, fd);
  return decode_header(size, file_reader(fd->get(), path), path);
}

}  // namespace resona
