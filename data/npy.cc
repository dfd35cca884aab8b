#include "data/npy.h"

#include <fcntl.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <limits>
#include <sstream>

#include "core/check.h"

namespace resona::data {

namespace {

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              ".npy reading assumes a little-endian host");

constexpr char kMagic[] = "\x93NUMPY";
constexpr size_t kMagicBytes = 6;
constexpr size_t kAlign = 64;             // numpy's ARRAY_ALIGN
constexpr size_t kGrowthAxisDigits = 21;  // numpy's GROWTH_AXIS_MAX_DIGITS

// One value of the header dict: a string, a bool, a tuple of integers, or a list (only
// ever seen as the descr of a structured dtype, which is refused by name).
struct PyValue {
  enum Kind { kString, kBool, kTuple, kList } kind = kString;
  std::string str;
  bool flag = false;
  std::vector<int64_t> ints;
};

// A recursive-descent reader of the Python literal numpy writes as the header: a dict of
// string keys; values are strings ('..' or ".."), True/False, tuples of non-negative
// integers (Python 2 wrote a trailing L), or lists. Errors name `what`.
class HeaderParser {
 public:
  HeaderParser(const std::string& text, const std::string& what) : s_(text), what_(what) {}

  std::vector<std::pair<std::string, PyValue>> parse_dict() {
    std::vector<std::pair<std::string, PyValue>> out;
    skip_ws();
    expect('{');
    for (;;) {
      skip_ws();
      if (peek() == '}') {
        ++i_;
        break;
      }
      std::string key = parse_string();
      skip_ws();
      expect(':');
      skip_ws();
      PyValue v = parse_value();
      out.emplace_back(std::move(key), std::move(v));
      skip_ws();
      if (peek() == ',') {
        ++i_;
        continue;
      }
      skip_ws();
      expect('}');
      break;
    }
    skip_ws();
    if (i_ != s_.size()) fail("unexpected text after the closing '}'");
    return out;
  }

 private:
  [[noreturn]] void fail(const std::string& why) const {
    RESONA_FAIL() << what_ << ": the .npy header does not parse (" << why << " at byte " << i_
                  << " of the header \"" << printable(s_) << "\")";
    std::abort();  // not reached: RESONA_FAIL throws
  }
  static std::string printable(const std::string& s) {
    std::string out;
    for (unsigned char c : s.substr(0, 200)) {
      if (c >= 0x20 && c < 0x7f) {
        out += static_cast<char>(c);
      } else {
        char buf[8];
        std::snprintf(buf, sizeof buf, "\\x%02x", c);
        out += buf;
      }
    }
    return s.size() > 200 ? out + "..." : out;
  }
  char peek() const { return i_ < s_.size() ? s_[i_] : '\0'; }
  void skip_ws() {
    while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\t' || s_[i_] == '\n' || s_[i_] == '\r'))
      ++i_;
  }
  void expect(char c) {
    if (peek() != c) fail(std::string("expected '") + c + "'");
    ++i_;
  }
  std::string parse_string() {
    const char q = peek();
    if (q != '\'' && q != '"') fail("expected a quoted string");
    const size_t start = ++i_;
    while (i_ < s_.size() && s_[i_] != q) {
      if (s_[i_] == '\\') fail("escape sequences are not supported in header strings");
      ++i_;
    }
    if (i_ >= s_.size()) fail("unterminated string");
    return s_.substr(start, i_++ - start);
  }
  bool word(const char* w) {
    const size_t n = std::strlen(w);
    if (s_.compare(i_, n, w) != 0) return false;
    const char after = i_ + n < s_.size() ? s_[i_ + n] : '\0';
    if (std::isalnum(static_cast<unsigned char>(after)) || after == '_') return false;
    i_ += n;
    return true;
  }
  int64_t parse_int() {
    if (!std::isdigit(static_cast<unsigned char>(peek()))) fail("expected a non-negative integer");
    int64_t v = 0;
    while (std::isdigit(static_cast<unsigned char>(peek()))) {
      const int d = s_[i_++] - '0';
      if (v > (std::numeric_limits<int64_t>::max() - d) / 10) fail("integer too large");
      v = v * 10 + d;
    }
    if (peek() == 'L' || peek() == 'l') ++i_;  // Python 2 long
    return v;
  }
  PyValue parse_value() {
    PyValue v;
    const char c = peek();
    if (c == '\'' || c == '"') {
      v.kind = PyValue::kString;
      v.str = parse_string();
    } else if (word("True")) {
      v.kind = PyValue::kBool;
      v.flag = true;
    } else if (word("False")) {
      v.kind = PyValue::kBool;
      v.flag = false;
    } else if (c == '(') {
      ++i_;
      v.kind = PyValue::kTuple;
      skip_ws();
      if (peek() == ')') {
        ++i_;
        return v;
      }
      for (;;) {
        skip_ws();
        v.ints.push_back(parse_int());
        skip_ws();
        if (peek() == ')') {
          ++i_;
          // Python writes a 1-tuple as (n,); (n) is a plain integer, not a tuple.
          if (v.ints.size() == 1) fail("a shape of one dimension must be written (n,)");
          break;
        }
        expect(',');
        skip_ws();
        if (peek() == ')') {
          ++i_;
          break;
        }
      }
    } else if (c == '[') {
      // Only a structured dtype's descr is a list; skip it to report that by name.
      v.kind = PyValue::kList;
      int depth = 0;
      do {
        if (i_ >= s_.size()) fail("unterminated list");
        if (s_[i_] == '[') ++depth;
        if (s_[i_] == ']') --depth;
        ++i_;
      } while (depth > 0);
    } else {
      fail("expected a string, True, False, a tuple or a list");
    }
    return v;
  }

  const std::string& s_;
  const std::string& what_;
  size_t i_ = 0;
};

uint64_t read_le(const char* p, size_t n) {
  uint64_t v = 0;
  std::memcpy(&v, p, n);
  return v;
}

struct Dtype {
  size_t itemsize;
  bool is_signed;
};

Dtype parse_descr(const std::string& d, const std::string& what) {
  RESONA_CHECK(d.size() >= 2) << what << ": unsupported .npy dtype '" << d
                              << "' (expected '<i4', '<i8', '<u2' or '<u4')";
  const char order = d[0];
  const std::string kind = d.substr(1);
  const bool known_int = kind == "i4" || kind == "i8" || kind == "u2" || kind == "u4";
  RESONA_CHECK(order != '>' && order != '!')
      << what << ": .npy dtype '" << d
      << "' is big-endian; only little-endian integers are read (save with '<" << kind << "')";
  RESONA_CHECK(!(kind.size() > 0 && (kind[0] == 'f' || kind[0] == 'c')))
      << what << ": .npy dtype '" << d
      << "' is floating point; token and label arrays must be integers ('<i4', '<i8', '<u2' or "
         "'<u4')";
  RESONA_CHECK(kind != "O" && kind != "O8" && kind != "O4")
      << what << ": .npy dtype '" << d << "' is an object array (pickled Python objects)";
  RESONA_CHECK(order == '<' && known_int)
      << what << ": unsupported .npy dtype '" << d << "' (expected '<i4', '<i8', '<u2' or '<u4')";
  return {static_cast<size_t>(kind[1] - '0'), kind[0] == 'i'};
}

std::string shape_repr(const std::vector<int64_t>& shape) {
  std::ostringstream os;
  os << "(";
  for (size_t i = 0; i < shape.size(); ++i) os << (i ? ", " : "") << shape[i];
  if (shape.size() == 1) os << ",";
  os << ")";
  return os.str();
}

std::string errno_text() { return std::strerror(errno); }

void write_all(int fd, const char* p, size_t n, const std::string& path) {
  while (n > 0) {
    const ssize_t w = ::write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    RESONA_CHECK(w > 0) << path << ": write failed: " << errno_text();
    p += w;
    n -= static_cast<size_t>(w);
  }
}

}  // namespace

int64_t NpyArray::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

NpyArray parse_npy(const std::string& bytes, const std::string& what) {
  RESONA_CHECK(bytes.size() >= kMagicBytes + 2 &&
               std::memcmp(bytes.data(), kMagic, kMagicBytes) == 0)
      << what << ": not a .npy file (bad magic; expected \\x93NUMPY)";
  const int major = static_cast<unsigned char>(bytes[6]);
  const int minor = static_cast<unsigned char>(bytes[7]);
  RESONA_CHECK((major == 1 || major == 2 || major == 3) && minor == 0)
      << what << ": .npy format version " << major << "." << minor
      << " is not supported (1.0, 2.0 and 3.0 are)";
  const size_t len_bytes = major == 1 ? 2 : 4;
  RESONA_CHECK(bytes.size() >= kMagicBytes + 2 + len_bytes)
      << what << ": truncated .npy file (" << bytes.size() << " bytes, no header length)";
  const size_t header_len = read_le(bytes.data() + kMagicBytes + 2, len_bytes);
  const size_t data_at = kMagicBytes + 2 + len_bytes + header_len;
  RESONA_CHECK(data_at <= bytes.size())
      << what << ": truncated .npy file (the header says " << header_len << " bytes, the file has "
      << bytes.size() - (kMagicBytes + 2 + len_bytes) << " after the header length)";
  const std::string header = bytes.substr(kMagicBytes + 2 + len_bytes, header_len);

  bool have_descr = false, have_order = false, have_shape = false;
  Dtype dtype{};
  NpyArray a;
  for (auto& [key, v] : HeaderParser(header, what).parse_dict()) {
    if (key == "descr") {
      RESONA_CHECK(v.kind != PyValue::kList)
          << what
          << ": .npy dtype is structured (a list of fields); expected '<i4', '<i8', "
             "'<u2' or '<u4'";
      RESONA_CHECK(v.kind == PyValue::kString)
          << what << ": .npy header key 'descr' is not a string";
      dtype = parse_descr(v.str, what);
      have_descr = true;
    } else if (key == "fortran_order") {
      RESONA_CHECK(v.kind == PyValue::kBool)
          << what << ": .npy header key 'fortran_order' is not True or False";
      RESONA_CHECK(!v.flag) << what
                            << ": .npy array is in Fortran order; only C order is read (save "
                               "np.ascontiguousarray(a))";
      have_order = true;
    } else if (key == "shape") {
      RESONA_CHECK(v.kind == PyValue::kTuple)
          << what << ": .npy header key 'shape' is not a tuple of integers";
      a.shape = v.ints;
      have_shape = true;
    } else {
      RESONA_FAIL() << what << ": .npy header has an unexpected key '" << key
                    << "' (expected exactly descr, fortran_order and shape)";
    }
  }
  RESONA_CHECK(have_descr && have_order && have_shape) << what << ": .npy header lacks key '"
                                                       << (!have_descr   ? "descr"
                                                           : !have_order ? "fortran_order"
                                                                         : "shape")
                                                       << "'";

  uint64_t numel = 1;
  for (int64_t d : a.shape) {
    RESONA_CHECK(!__builtin_mul_overflow(numel, static_cast<uint64_t>(d), &numel) &&
                 numel <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) / 8)
        << what << ": .npy shape " << shape_repr(a.shape) << " is too large";
  }
  const uint64_t nbytes = numel * dtype.itemsize;
  const uint64_t have = bytes.size() - data_at;
  RESONA_CHECK(have >= nbytes) << what << ": truncated .npy data: shape " << shape_repr(a.shape)
                               << " of " << dtype.itemsize << "-byte items needs " << nbytes
                               << " bytes, the file has " << have;
  RESONA_CHECK(have == nbytes) << what << ": .npy file has " << have - nbytes
                               << " bytes after the data of shape " << shape_repr(a.shape);

  a.values.resize(numel);
  const char* p = bytes.data() + data_at;
  for (uint64_t i = 0; i < numel; ++i, p += dtype.itemsize) {
    switch (dtype.itemsize) {
      case 2:
        a.values[i] = static_cast<int64_t>(read_le(p, 2));
        break;
      case 4:
        a.values[i] = dtype.is_signed ? static_cast<int64_t>(static_cast<int32_t>(read_le(p, 4)))
                                      : static_cast<int64_t>(read_le(p, 4));
        break;
      case 8:
        a.values[i] = static_cast<int64_t>(read_le(p, 8));
        break;
      default:
        RESONA_FAIL() << what << ": item size " << dtype.itemsize;
    }
  }
  return a;
}

NpyArray read_npy(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  RESONA_CHECK(f.good()) << path << ": cannot open the .npy file: " << errno_text();
  std::string bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  RESONA_CHECK(!f.bad()) << path << ": read failed: " << errno_text();
  return parse_npy(bytes, path);
}

std::string serialize_npy(const std::vector<int64_t>& shape, const std::vector<int64_t>& values,
                          bool int64, const std::string& what) {
  uint64_t numel = 1;
  for (size_t i = 0; i < shape.size(); ++i) {
    RESONA_CHECK(shape[i] >= 0) << what << ": write_npy: dimension " << i << " of shape "
                                << shape_repr(shape) << " is negative";
    RESONA_CHECK(!__builtin_mul_overflow(numel, static_cast<uint64_t>(shape[i]), &numel))
        << what << ": write_npy: shape " << shape_repr(shape) << " is too large";
  }
  RESONA_CHECK(numel == values.size()) << what << ": write_npy: shape " << shape_repr(shape)
                                       << " holds " << numel << " values, got " << values.size();
  // numpy.save's header: keys sorted, spare spaces for growing the first axis in place,
  // then spaces and '\n' up to a multiple of 64 bytes including magic and length.
  std::string dict = std::string("{'descr': '") + (int64 ? "<i8" : "<i4") +
                     "', 'fortran_order': False, 'shape': " + shape_repr(shape) + ", }";
  if (!shape.empty()) dict.append(kGrowthAxisDigits - std::to_string(shape[0]).size(), ' ');
  const size_t hlen = dict.size() + 1;
  size_t len_bytes = 2;
  size_t pad = kAlign - (kMagicBytes + 2 + len_bytes + hlen) % kAlign;
  int major = 1;
  if (hlen + pad > 0xffff) {
    len_bytes = 4;
    pad = kAlign - (kMagicBytes + 2 + len_bytes + hlen) % kAlign;
    major = 2;
  }
  const uint64_t header_len = hlen + pad;
  const size_t item = int64 ? 8 : 4;
  std::string out;
  out.reserve(kMagicBytes + 2 + len_bytes + header_len + numel * item);
  out.append(kMagic, kMagicBytes);
  out.push_back(static_cast<char>(major));
  out.push_back('\0');
  for (size_t i = 0; i < len_bytes; ++i)
    out.push_back(static_cast<char>((header_len >> (8 * i)) & 0xff));
  out += dict;
  out.append(pad, ' ');
  out.push_back('\n');
  const size_t data_at = out.size();
  out.resize(data_at + numel * item);
  char* p = out.data() + data_at;
  for (uint64_t i = 0; i < numel; ++i, p += item) {
    if (int64) {
      std::memcpy(p, &values[i], 8);
    } else {
      RESONA_CHECK(values[i] >= std::numeric_limits<int32_t>::min() &&
                   values[i] <= std::numeric_limits<int32_t>::max())
          << what << ": write_npy: value " << values[i] << " at index " << i
          << " does not fit in int32 ('<i4')";
      const int32_t v = static_cast<int32_t>(values[i]);
      std::memcpy(p, &v, 4);
    }
  }
  return out;
}

void write_npy(const std::string& path, const std::vector<int64_t>& shape,
               const std::vector<int64_t>& values, bool int64) {
  const std::string bytes = serialize_npy(shape, values, int64, path);
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  RESONA_CHECK(fd >= 0) << tmp << ": cannot create: " << errno_text();
  try {
    write_all(fd, bytes.data(), bytes.size(), tmp);
    RESONA_CHECK(::fsync(fd) == 0) << tmp << ": fsync failed: " << errno_text();
  } catch (...) {
    ::close(fd);
    ::unlink(tmp.c_str());
    throw;
  }
  if (::close(fd) != 0) {
    const std::string err = errno_text();
    ::unlink(tmp.c_str());
    RESONA_FAIL() << tmp << ": close failed: " << err;
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const std::string err = errno_text();
    ::unlink(tmp.c_str());
    RESONA_FAIL() << path << ": cannot rename " << tmp << " over it: " << err;
  }
  // Make the rename itself durable.
  const size_t slash = path.find_last_of('/');
  const std::string dir = slash == std::string::npos ? "."
                          : slash == 0               ? "/"
                                                     : path.substr(0, slash);
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
}

}  // namespace resona::data
