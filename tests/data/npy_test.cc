// .npy interchange: round trips, files as NumPy writes them (byte strings written out from
// the format specification, numpy/lib/format.py), and every refusal.
#include "data/npy.h"

#include <filesystem>

#include "tests/data/data_paths.h"

namespace resona::testing {
namespace {

using namespace resona::data;
namespace fs = std::filesystem;

std::string le(const std::vector<int64_t>& v, int bytes) {
  std::string out;
  for (int64_t x : v) {
    const uint64_t u = static_cast<uint64_t>(x);
    for (int i = 0; i < bytes; ++i) out.push_back(static_cast<char>((u >> (8 * i)) & 0xff));
  }
  return out;
}

// "\x93NUMPY" + version + header length (2 bytes for 1.0, 4 otherwise) + header.
std::string npy(int major, const std::string& header, const std::string& data) {
  std::string out = "\x93NUMPY";
  out.push_back(static_cast<char>(major));
  out.push_back('\0');
  out += le({static_cast<int64_t>(header.size())}, major == 1 ? 2 : 4);
  return out + header + data;
}

// numpy.save(f, np.arange(6, dtype='<i4').reshape(2, 3)) with numpy >= 1.24: the dict,
// 20 spare spaces (21 digits minus the width of "2"), then 38 spaces and '\n' so that the
// data starts at byte 128.
const std::string kNumpyArange23 = std::string("\x93NUMPY\x01\x00\x76\x00", 10) +
                                   "{'descr': '<i4', 'fortran_order': False, 'shape': (2, 3), }" +
                                   std::string(58, ' ') + "\n" +
                                   std::string(
                                       "\x00\x00\x00\x00\x01\x00\x00\x00\x02\x00\x00\x00"
                                       "\x03\x00\x00\x00\x04\x00\x00\x00\x05\x00\x00\x00",
                                       24);

std::string write_bytes(const std::string& name, const std::string& bytes) {
  static const std::string dir = fresh_temp_dir("npy");
  const std::string path = dir + "/" + name;
  spit(path, bytes);
  return path;
}

TEST_CASE("npy: numpy.save's bytes for arange(6, '<i4').reshape(2, 3), read and written") {
  REQUIRE(kNumpyArange23.size() == 128 + 24);
  const NpyArray a = parse_npy(kNumpyArange23, "arange.npy");
  CHECK(a.shape == std::vector<int64_t>{2, 3});
  CHECK(a.values == std::vector<int64_t>{0, 1, 2, 3, 4, 5});
  CHECK(serialize_npy({2, 3}, {0, 1, 2, 3, 4, 5}, /*int64=*/false) == kNumpyArange23);
  // The same through files.
  const std::string path = write_bytes("arange.npy", kNumpyArange23);
  CHECK(read_npy(path).values == a.values);
  const std::string ours = fs::path(path).parent_path() / "ours.npy";
  write_npy(ours, {2, 3}, {0, 1, 2, 3, 4, 5}, false);
  CHECK(slurp(ours) == kNumpyArange23);
}

TEST_CASE("npy: numpy.save's header for '<i8' of shape (6,) and () and a long first axis") {
  // (6,): 57 + 20 spare characters, hlen 78; 10 + 78 = 88 -> 40 spaces and '\n' to 128.
  const std::string h6 = serialize_npy({6}, {1, 2, 3, 4, 5, 6}).substr(0, 128);
  CHECK(h6 == std::string("\x93NUMPY\x01\x00\x76\x00", 10) +
                  "{'descr': '<i8', 'fortran_order': False, 'shape': (6,), }" +
                  std::string(60, ' ') + "\n");
  // A scalar has no first axis, hence no spare space: 55 + 1 + 10 = 66 -> 128.
  const std::string h0 = serialize_npy({}, {42});
  CHECK(h0.substr(0, 128) == std::string("\x93NUMPY\x01\x00\x76\x00", 10) +
                                 "{'descr': '<i8', 'fortran_order': False, 'shape': (), }" +
                                 std::string(62, ' ') + "\n");
  CHECK(h0.size() == 136);
  // 1234567 rows: 7 digits, 14 spare spaces; every written header ends at a multiple of 64.
  const std::string big = serialize_npy({1234567, 0}, {});
  CHECK(big.size() % 64 == 0);
  CHECK(big.find("'shape': (1234567, 0), }" + std::string(14, ' ')) != std::string::npos);
  CHECK(big.back() == '\n');
}

TEST_CASE("npy: files of other writers and versions") {
  struct Case {
    const char* name;
    std::string bytes;
    std::vector<int64_t> shape, values;
  };
  const std::vector<Case> cases = {
      // numpy before 1.14: 16-byte alignment, no spare space.
      {"old numpy '<i8' (6,)",
       npy(1,
           "{'descr': '<i8', 'fortran_order': False, 'shape': (6,), }" + std::string(12, ' ') +
               "\n",
           le({-3, -2, -1, 0, int64_t{1} << 40, INT64_MAX}, 8)),
       {6},
       {-3, -2, -1, 0, int64_t{1} << 40, INT64_MAX}},
      // numpy under Python 2 wrote longs with an L.
      {"python 2 '<u2' (2L, 2L)",
       npy(1,
           "{'descr': '<u2', 'fortran_order': False, 'shape': (2L, 2L), }" + std::string(8, ' ') +
               "\n",
           le({0, 1, 65535, 40000}, 2)),
       {2, 2},
       {0, 1, 65535, 40000}},
      {"version 2.0 '<u4'",
       npy(2, "{'descr': '<u4', 'fortran_order': False, 'shape': (3,), }\n",
           le({0, 4294967295, 123456789}, 4)),
       {3},
       {0, 4294967295, 123456789}},
      {"version 3.0 '<i4' rank 3",
       npy(3, "{'descr': '<i4', 'fortran_order': False, 'shape': (1, 2, 2), }\n",
           le({-100, 7, INT32_MIN, INT32_MAX}, 4)),
       {1, 2, 2},
       {-100, 7, INT32_MIN, INT32_MAX}},
      {"keys in another order, double quotes, no trailing comma",
       npy(1, "{\"shape\": (2,), \"fortran_order\": False, \"descr\": \"<i4\"}   \n",
           le({5, 6}, 4)),
       {2},
       {5, 6}},
      {"rank 0",
       npy(1, "{'descr': '<i8', 'fortran_order': False, 'shape': (), }\n", le({9}, 8)),
       {},
       {9}},
      {"empty (0, 3)",
       npy(1, "{'descr': '<i4', 'fortran_order': False, 'shape': (0, 3), }\n", ""),
       {0, 3},
       {}},
  };
  for (const Case& c : cases) {
    INFO(c.name);
    const NpyArray a = parse_npy(c.bytes, c.name);
    CHECK(a.shape == c.shape);
    CHECK(a.values == c.values);
  }
}

TEST_CASE("npy: round trips of int32 and int64 arrays of ranks 0 to 3") {
  const std::vector<std::vector<int64_t>> shapes = {{}, {7}, {3, 5}, {2, 3, 4}, {4, 0, 2}};
  for (bool int64 : {false, true}) {
    for (const auto& shape : shapes) {
      int64_t n = 1;
      for (int64_t d : shape) n *= d;
      std::vector<int64_t> v(n);
      for (int64_t i = 0; i < n; ++i) {
        v[i] = (i % 3 == 0 ? -1 : 1) * (i * 2654435761LL % 100003);
        if (int64 && i % 5 == 1) v[i] *= int64_t{1} << 30;  // outside int32
      }
      if (n > 0) v[0] = int64 ? INT64_MIN : INT32_MIN;
      INFO("int64=" << int64 << " rank " << shape.size());
      const std::string path = write_bytes("rt.npy", "");
      write_npy(path, shape, v, int64);
      const NpyArray a = read_npy(path);
      CHECK(a.shape == shape);
      CHECK(a.values == v);
      const std::string bytes = slurp(path);
      CHECK(bytes.find(int64 ? "'<i8'" : "'<i4'") != std::string::npos);
      CHECK(bytes.size() % 64 == (n * (int64 ? 8 : 4)) % 64);  // the data starts 64-aligned
    }
  }
}

TEST_CASE("npy: a header longer than 65535 bytes is written as version 2.0") {
  const std::vector<int64_t> shape(25000, 1);  // "1, " per dimension
  const std::string bytes = serialize_npy(shape, {77});
  CHECK(bytes[6] == 2);
  CHECK(bytes[7] == 0);
  CHECK((bytes.size() - 8) % 64 == 0);
  const NpyArray a = parse_npy(bytes, "wide.npy");
  CHECK(a.shape == shape);
  CHECK(a.values == std::vector<int64_t>{77});
}

TEST_CASE("npy: every malformed or unsupported file is refused, naming the file and the problem") {
  auto hdr = [](const std::string& descr, const std::string& order, const std::string& shape) {
    return "{'descr': " + descr + ", 'fortran_order': " + order + ", 'shape': " + shape + ", }\n";
  };
  const std::string good_header = hdr("'<i4'", "False", "(2, 3)");
  const std::string data6 = le({0, 1, 2, 3, 4, 5}, 4);
  struct Case {
    const char* name;
    std::string bytes;
    std::vector<std::string> message;
  };
  const std::vector<Case> cases = {
      {"bad magic", "\x93NUMPZ\x01\x00" + kNumpyArange23.substr(8), {"bad magic"}},
      {"empty file", "", {"bad magic"}},
      {"version 4.0", npy(4, good_header, data6), {"version 4.0 is not supported"}},
      {"version 1.1",
       [&] {
         std::string b = npy(1, good_header, data6);
         b[7] = 1;
         return b;
       }(),
       {"version 1.1"}},
      {"no header length", std::string("\x93NUMPY\x02\x00\x10", 9), {"no header length"}},
      {"header past the end", kNumpyArange23.substr(0, 100), {"truncated", "header says 118"}},
      {"header not a dict", npy(1, "[1, 2]\n", ""), {"does not parse", "expected '{'"}},
      {"header cut", npy(1, "{'descr': '<i4', 'fortr", ""), {"does not parse"}},
      {"text after the dict", npy(1, good_header + "x", data6), {"after the closing"}},
      {"unquoted key", npy(1, "{descr: '<i4'}\n", ""), {"expected a quoted string"}},
      {"missing shape",
       npy(1, "{'descr': '<i4', 'fortran_order': False}\n", data6),
       {"lacks key 'shape'"}},
      {"missing descr",
       npy(1, "{'fortran_order': False, 'shape': (6,)}\n", data6),
       {"lacks key 'descr'"}},
      {"extra key",
       npy(1, "{'descr': '<i4', 'fortran_order': False, 'shape': (6,), 'x': 'y'}\n", data6),
       {"unexpected key 'x'"}},
      {"Fortran order", npy(1, hdr("'<i4'", "True", "(2, 3)"), data6), {"Fortran order"}},
      {"fortran_order not a bool",
       npy(1, hdr("'<i4'", "'no'", "(2, 3)"), data6),
       {"'fortran_order' is not True or False"}},
      {"big-endian", npy(1, hdr("'>i4'", "False", "(2, 3)"), data6), {"'>i4' is big-endian"}},
      {"float32", npy(1, hdr("'<f4'", "False", "(2, 3)"), data6), {"'<f4' is floating point"}},
      {"float64",
       npy(1, hdr("'<f8'", "False", "(3,)"), le({0, 0, 0}, 8)),
       {"'<f8' is floating point"}},
      {"object", npy(1, hdr("'|O'", "False", "(2,)"), le({0, 0}, 8)), {"object array"}},
      {"structured",
       npy(1, hdr("[('a', '<i4'), ('b', '<i4')]", "False", "(3,)"), data6),
       {"structured"}},
      {"int16",
       npy(1, hdr("'<i2'", "False", "(6,)"), le({0, 1, 2, 3, 4, 5}, 2)),
       {"unsupported .npy dtype '<i2'"}},
      {"uint64",
       npy(1, hdr("'<u8'", "False", "(1,)"), le({1}, 8)),
       {"unsupported .npy dtype '<u8'"}},
      {"descr not a string",
       npy(1, hdr("True", "False", "(1,)"), le({1}, 4)),
       {"'descr' is not a string"}},
      {"shape not a tuple",
       npy(1, hdr("'<i4'", "False", "6"), data6),
       {"does not parse", "expected a string"}},
      {"shape (6) without the comma",
       npy(1, hdr("'<i4'", "False", "(6)"), data6),
       {"written (n,)"}},
      {"negative dimension",
       npy(1, hdr("'<i4'", "False", "(-6,)"), data6),
       {"non-negative integer"}},
      {"huge shape",
       npy(1, hdr("'<i8'", "False", "(4294967296, 4294967296)"), ""),
       {"is too large"}},
      {"truncated data",
       kNumpyArange23.substr(0, kNumpyArange23.size() - 3),
       {"truncated .npy data", "needs 24 bytes", "has 21"}},
      {"trailing bytes", kNumpyArange23 + "abc", {"3 bytes after the data"}},
  };
  for (const Case& c : cases) {
    INFO(c.name);
    const std::string path =
        write_bytes(std::string("bad_") + std::to_string(&c - &cases[0]) + ".npy", c.bytes);
    std::string msg;
    try {
      read_npy(path);
    } catch (const std::exception& e) {
      msg = e.what();
    }
    CHECK_MESSAGE(!msg.empty(), "expected an error");
    std::vector<std::string> needles = c.message;
    needles.push_back(path);
    for (const std::string& n : needles) {
      CHECK_MESSAGE(msg.find(n) != std::string::npos, "error \"", msg, "\" lacks \"", n, "\"");
    }
  }
  check_throws_with([] { read_npy("/nonexistent/x.npy"); }, {"/nonexistent/x.npy", "cannot open"});
}

TEST_CASE("npy: write refuses bad arrays and leaves the old file whole") {
  const std::string path = write_bytes("keep.npy", "");
  write_npy(path, {3}, {1, 2, 3});
  const std::string before = slurp(path);
  check_throws_with(
      [&] {
        write_npy(path, {3}, {1, 2, int64_t{1} << 31}, false);
      },
      {path, "value 2147483648 at index 2 does not fit in int32"});
  check_throws_with(
      [&] {
        write_npy(path, {2, 2}, {1, 2, 3});
      },
      {path, "shape (2, 2) holds 4 values, got 3"});
  check_throws_with([&] { write_npy(path, {-1}, {}); }, {path, "dimension 0", "is negative"});
  check_throws_with([&] { write_npy("/nonexistent/dir/x.npy", {1}, {1}); },
                    {"/nonexistent/dir/x.npy", "cannot create"});
  CHECK(slurp(path) == before);
  for (const auto& e : fs::directory_iterator(fs::path(path).parent_path())) {
    CHECK_MESSAGE(e.path().string().find(".tmp") == std::string::npos, "left behind: ", e.path());
  }
}

}  // namespace
}  // namespace resona::testing
