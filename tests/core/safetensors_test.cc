// safetensors: round trips keep every byte, written files follow the format (checked
// here by reading the bytes directly), a hand-built golden file, and corrupted or
// truncated files refused with a message naming the file and the problem.
#include "core/safetensors.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <sstream>

#include "tests/test_util.h"

namespace resona::testing {
namespace {

std::string tmp_path(const std::string& name) {
  const char* dir = std::getenv("TEST_TMPDIR");
  return std::string(dir ? dir : "/tmp") + "/" + name;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  REQUIRE(in.good());
  std::ostringstream os;
  os << in.rdbuf();
  return os.str();
}

void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  REQUIRE(out.good());
}

bool file_exists(const std::string& path) { return ::access(path.c_str(), F_OK) == 0; }

template <class T, class Bits>
T from_bits(Bits b) {
  static_assert(sizeof(T) == sizeof(Bits));
  T v;
  std::memcpy(&v, &b, sizeof(T));
  return v;
}

// The elements of a CPU tensor in row-major order, as raw bytes, found by walking its
// shape and strides (independently of the code under test).
std::string logical_bytes(const Tensor& t) {
  REQUIRE(t.device().is_cpu());
  const size_t es = t.element_size();
  const char* base = static_cast<const char*>(t.raw_data());
  std::string out;
  std::vector<int64_t> idx(t.dim(), 0);
  for (int64_t i = 0, n = t.numel(); i < n; ++i) {
    int64_t off = 0;
    for (int64_t d = 0; d < t.dim(); ++d) off += idx[d] * t.strides()[d];
    out.append(base + off * static_cast<int64_t>(es), es);
    for (int64_t d = t.dim() - 1; d >= 0; --d) {
      if (++idx[d] < t.shape()[d]) break;
      idx[d] = 0;
    }
  }
  return out;
}

std::string le64(uint64_t n) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return s;
}

// A file image with the given header text (padded with spaces to a multiple of 8) and
// `data_bytes` zero bytes of data.
std::string make_file(const std::string& header, size_t data_bytes) {
  std::string h = header + std::string((8 - header.size() % 8) % 8, ' ');
  return le64(h.size()) + h + std::string(data_bytes, '\0');
}

// Tensors of every dtype and several layouts, with bit patterns that a value-converting
// copy would change (NaN payloads, signalling NaN, -0, denormals, integer extremes).
NamedTensors sample_tensors() {
  NamedTensors ts;
  ts.emplace_back("f32", from_vector<float>(
                             {1.5f, -0.0f, std::numeric_limits<float>::infinity(),
                              from_bits<float>(0x7fc12345u), from_bits<float>(0x00000001u), -3.25f},
                             {2, 3}));
  ts.emplace_back("f64", from_vector<double>({from_bits<double>(0x7ff8000000000123ull), -0.0,
                                              std::numeric_limits<double>::max(),
                                              std::numeric_limits<double>::denorm_min()},
                                             {4}));
  std::vector<bfloat16> bf(6);
  const uint16_t bf_bits[6] = {0x7f81, 0x8000, 0x3f80, 0xff80, 0x0001, 0xc0a0};  // 0x7f81: sNaN
  for (int i = 0; i < 6; ++i) bf[i].bits = bf_bits[i];
  ts.emplace_back("bf16", from_vector(bf, {3, 2}));
  ts.emplace_back("i32", from_vector<int32_t>({std::numeric_limits<int32_t>::min(), -1, 0,
                                               std::numeric_limits<int32_t>::max()},
                                              {2, 2}));
  ts.emplace_back("i64", from_vector<int64_t>({std::numeric_limits<int64_t>::min(), 42,
                                               std::numeric_limits<int64_t>::max()},
                                              {3}));
  ts.emplace_back("scalar", scalar_tensor(3.25, DType::kFloat64));
  ts.emplace_back("empty_rows", empty({0, 3}));
  ts.emplace_back("empty_cols", zeros({2, 0}, DType::kInt64));
  // Non-contiguous views: transposed, strided slice, broadcast (stride 0), offset row.
  Tensor m = from_vector_as({0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}, {3, 4}, DType::kFloat32);
  ts.emplace_back("transposed", m.transpose(0, 1));
  ts.emplace_back("strided", arange(10).slice(0, 1, 10, 3));
  ts.emplace_back("expanded", from_vector<int32_t>({7, 8, 9}, {3, 1}).expand({3, 4}));
  ts.emplace_back("row", m.select(0, 2));
  ts.emplace_back("bf16_transposed", ts[2].second.transpose(0, 1));
  return ts;
}

void check_same_tensors(const NamedTensors& got, const NamedTensors& want) {
  REQUIRE(got.size() == want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    const auto& [name, t] = got[i];
    const Tensor& w = want[i].second;
    INFO("tensor " << want[i].first);
    CHECK(name == want[i].first);
    CHECK(t.name() == want[i].first);
    CHECK(t.dtype() == w.dtype());
    CHECK(t.shape() == w.shape());
    CHECK(t.device().is_cpu());
    CHECK(t.is_contiguous());
    CHECK(logical_bytes(t) == logical_bytes(w));
    // Each loaded tensor owns exactly its own bytes.
    CHECK(t.storage()->nbytes() == t.nbytes());
    for (size_t j = 0; j < i; ++j) {
      if (t.numel() > 0 && got[j].second.numel() > 0) CHECK(!t.shares_storage(got[j].second));
    }
  }
}

// Copies `bytes` to the very end of a readable mapping followed by an inaccessible page,
// so that reading one byte past the end crashes the test instead of passing silently.
class GuardedBuffer {
 public:
  explicit GuardedBuffer(size_t capacity) {
    page_ = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
    data_pages_ = (capacity + page_ - 1) / page_ + 1;
    void* p = ::mmap(nullptr, (data_pages_ + 1) * page_, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    REQUIRE(p != MAP_FAILED);
    base_ = static_cast<char*>(p);
    REQUIRE(::mprotect(base_ + data_pages_ * page_, page_, PROT_NONE) == 0);
  }
  ~GuardedBuffer() { ::munmap(base_, (data_pages_ + 1) * page_); }
  const char* place(const std::string& bytes, size_t n) {
    char* at = base_ + data_pages_ * page_ - n;
    std::memcpy(at, bytes.data(), n);
    return at;
  }

 private:
  size_t page_ = 0, data_pages_ = 0;
  char* base_ = nullptr;
};

}  // namespace

TEST_CASE("safetensors: round trip keeps every byte (all dtypes, 0-D, empty, strided)") {
  const NamedTensors ts = sample_tensors();
  const SafetensorsMetadata md = {{"format", "pt"}, {"unicode", "größe ∑"}, {"empty", ""}};
  const std::string path = tmp_path("round_trip.safetensors");
  save_safetensors(path, ts, md);
  CHECK(!file_exists(path + ".tmp"));

  SafetensorsFile f = load_safetensors(path);
  CHECK(f.source == path);
  CHECK(f.metadata == md);
  std::remove(path.c_str());  // loaded tensors own their memory
  check_same_tensors(f.tensors, ts);
  CHECK(f.contains("bf16"));
  CHECK(!f.contains("nope"));
  CHECK(f.get("i64").to_vector<int64_t>()[1] == 42);
  check_contains(error_of([&] { f.get("nope"); }), "has no tensor 'nope'");

  // In memory: the same bytes as the file; the parsed tensors outlive the buffer.
  std::string bytes = serialize_safetensors(ts, md);
  save_safetensors(path, ts, md);
  CHECK(bytes == read_file(path));
  SafetensorsFile g = parse_safetensors(bytes.data(), bytes.size(), "mem");
  bytes.assign(bytes.size(), '\xff');
  check_same_tensors(g.tensors, ts);
  CHECK(g.metadata == md);

  // No tensors and no metadata is a valid file too.
  const std::string none = serialize_safetensors({});
  CHECK(none == le64(8) + "{}      ");
  CHECK(parse_safetensors(none.data(), none.size()).tensors.empty());
}

TEST_CASE("safetensors: a written file follows the format byte for byte") {
  const NamedTensors ts = sample_tensors();
  const SafetensorsMetadata md = {{"step", "12"}};
  const std::string path = tmp_path("format.safetensors");
  save_safetensors(path, {{"old", ones({5})}});  // overwritten atomically below
  save_safetensors(path, ts, md);
  const std::string bytes = read_file(path);

  REQUIRE(bytes.size() >= 8);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(bytes[i]);
  REQUIRE(n <= bytes.size() - 8);
  CHECK((8 + n) % 8 == 0);
  const std::string header = bytes.substr(8, n);
  const size_t close = header.find_last_of('}');
  REQUIRE(close != std::string::npos);
  CHECK(header.size() - close - 1 < 8);  // padding only to the next multiple of 8
  CHECK(header.find_first_not_of(' ', close + 1) == std::string::npos);

  const auto j = nlohmann::ordered_json::parse(header);
  REQUIRE(j.is_object());
  std::vector<std::string> keys;
  for (const auto& item : j.items()) keys.push_back(item.key());
  REQUIRE(keys.size() == ts.size() + 1);
  CHECK(keys[0] == "__metadata__");
  CHECK(j["__metadata__"] == nlohmann::ordered_json({{"step", "12"}}));

  const char* dtype_codes[] = {"F32", "F64", "BF16", "I32", "I64"};
  uint64_t at = 0;
  for (size_t i = 0; i < ts.size(); ++i) {
    const auto& [name, t] = ts[i];
    INFO("tensor " << name);
    CHECK(keys[i + 1] == name);
    const auto& e = j[name];
    CHECK(e.size() == 3);
    CHECK(e["dtype"] == dtype_codes[static_cast<int>(t.dtype())]);
    CHECK(e["shape"].get<std::vector<int64_t>>() == t.shape());
    const auto offs = e["data_offsets"].get<std::vector<uint64_t>>();
    REQUIRE(offs.size() == 2);
    CHECK(offs[0] == at);  // in order and contiguous
    CHECK(offs[1] - offs[0] == t.numel() * t.element_size());
    CHECK(bytes.substr(8 + n + offs[0], offs[1] - offs[0]) == logical_bytes(t));
    at = offs[1];
  }
  CHECK(8 + n + at == bytes.size());  // no trailing bytes
  CHECK(!file_exists(path + ".tmp"));

  SafetensorsHeader h = read_safetensors_header(path);
  CHECK(h.data_start == 8 + n);
  CHECK(h.metadata == md);
  REQUIRE(h.entries.size() == ts.size());
  CHECK(h.entries[8].name == "transposed");
  CHECK(h.entries[8].shape == Shape{4, 3});
  CHECK(h.entries[8].dtype == DType::kFloat32);
}

TEST_CASE("safetensors: golden bytes of a tiny file built by hand") {
  // a: F32 [2] = {1, -2};  b: I64 [] = 7;  metadata {"k": "v"}.
  const std::string json =
      R"({"__metadata__":{"k":"v"},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
      R"("b":{"dtype":"I64","shape":[],"data_offsets":[8,16]}})";
  REQUIRE(json.size() == 132);  // + 4 spaces of padding = 136 = 0x88
  const std::string golden = std::string("\x88\0\0\0\0\0\0\0", 8) + json + "    " +
                             std::string("\x00\x00\x80\x3f\x00\x00\x00\xc0", 8) +  // 1.0f, -2.0f
                             std::string("\x07\0\0\0\0\0\0\0", 8);                 // int64 7
  const NamedTensors ts = {{"a", from_vector<float>({1.0f, -2.0f}, {2})},
                           {"b", scalar_tensor(7, DType::kInt64)}};
  CHECK(serialize_safetensors(ts, {{"k", "v"}}) == golden);
  const std::string path = tmp_path("golden.safetensors");
  save_safetensors(path, ts, {{"k", "v"}});
  CHECK(read_file(path) == golden);

  SafetensorsFile f = parse_safetensors(golden.data(), golden.size(), "golden");
  CHECK(f.metadata == SafetensorsMetadata{{"k", "v"}});
  REQUIRE(f.tensors.size() == 2);
  CHECK(f.get("a").to_vector<float>() == std::vector<float>{1.0f, -2.0f});
  CHECK(f.get("b").dim() == 0);
  CHECK(f.get("b").item_int() == 7);
}

TEST_CASE("safetensors: header order may differ from data order") {
  // The format fixes the data ranges, not the order of the header's keys.
  const std::string file = make_file(R"({"b":{"dtype":"I32","shape":[1],"data_offsets":[4,8]},)"
                                     R"("a":{"dtype":"I32","shape":[1],"data_offsets":[0,4]},)"
                                     R"("e":{"dtype":"F64","shape":[0],"data_offsets":[8,8]}})",
                                     8);
  SafetensorsFile f = parse_safetensors(file.data(), file.size());
  REQUIRE(f.tensors.size() == 3);
  CHECK(f.tensors[0].first == "a");
  CHECK(f.tensors[1].first == "b");
  CHECK(f.tensors[2].first == "e");
  CHECK(f.tensors[2].second.shape() == Shape{0});
}

TEST_CASE("safetensors: truncated files are refused at every cut point") {
  const NamedTensors ts = {{"e", empty({0}, DType::kInt32)},
                           {"w", from_vector_as({1, 2, 3, 4, 5, 6}, {2, 3}, DType::kFloat64)},
                           {"b", from_vector<int32_t>({1, 2, 3}, {3})}};
  const std::string full = serialize_safetensors(ts, {{"k", "v"}});
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(full[i]);
  GuardedBuffer buf(full.size());
  for (size_t cut = 0; cut < full.size(); ++cut) {
    INFO("cut at " << cut << " of " << full.size() << " bytes");
    const char* p = buf.place(full, cut);
    const std::string msg = error_of([&] { parse_safetensors(p, cut, "cut.safetensors"); });
    check_contains(msg, "'cut.safetensors'");
    if (cut < 8) {
      check_contains(msg, "shorter than the 8-byte header length");
    } else if (cut < 8 + n) {
      check_contains(msg, "runs past the end of the file");
    } else {
      check_contains(msg, "beyond the data section");
    }
  }
  const char* p = buf.place(full, full.size());
  CHECK(parse_safetensors(p, full.size()).tensors.size() == 3);

  // One byte too many is refused as well.
  const std::string longer = full + '\0';
  check_contains(error_of([&] { parse_safetensors(longer.data(), longer.size()); }),
                 "1 trailing bytes");

  // The same through the file reader.
  const std::string path = tmp_path("cut.safetensors");
  for (size_t cut :
       {size_t{0}, size_t{7}, size_t{8}, size_t(8 + n - 1), size_t(8 + n), full.size() - 1}) {
    INFO("file cut at " << cut);
    write_file(path, full.substr(0, cut));
    const std::string msg = error_of([&] { load_safetensors(path); });
    check_contains(msg, path);
    check_contains(msg, cut < 8 ? "shorter than" : cut < 8 + n ? "runs past" : "beyond the data");
    check_contains(error_of([&] { read_safetensors_header(path); }), path);
  }
}

TEST_CASE("safetensors: corrupted headers are refused with a message naming the problem") {
  struct Case {
    const char* what;
    std::string header;
    size_t data_bytes;
    const char* expected;
  };
  const std::string f32_2 = R"({"dtype":"F32","shape":[2],"data_offsets":)";
  const std::vector<Case> cases = {
      {"not JSON", R"({"a": )", 0, "header is not valid JSON"},
      {"empty header", "", 0, "header is not valid JSON"},
      {"invalid UTF-8", "{\"\xff\": 1}", 0, "header is not valid JSON"},
      {"an array", "[1, 2]", 0, "header is a JSON array, not an object"},
      {"a string", R"("hello")", 0, "header is a JSON string, not an object"},
      {"unknown dtype", R"({"a":{"dtype":"F16","shape":[2],"data_offsets":[0,4]}})", 4,
       "unsupported dtype 'F16'"},
      {"dtype not a string", R"({"a":{"dtype":32,"shape":[2],"data_offsets":[0,8]}})", 8,
       "dtype of tensor 'a' is 32, not a string"},
      {"offsets disagree with shape", R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})",
       8, "span 8 bytes, but shape [3] of F32 needs 12"},
      {"overlap", R"({"a":)" + f32_2 + R"([0,8]},"b":)" + f32_2 + "[4,12]}}", 12,
       "data of tensor 'b' [4, 12) overlaps that of tensor 'a' [0, 8)"},
      {"gap",
       R"({"a":{"dtype":"I32","shape":[1],"data_offsets":[0,4]},)"
       R"("b":{"dtype":"I32","shape":[1],"data_offsets":[8,12]}})",
       12, "gap of 4 bytes before the data of tensor 'b'"},
      {"gap at the start", R"({"a":{"dtype":"I32","shape":[1],"data_offsets":[4,8]}})", 8,
       "gap of 4 bytes before the data of tensor 'a'"},
      {"reversed offsets", R"({"a":{"dtype":"I32","shape":[1],"data_offsets":[4,0]}})", 4,
       "are out of order"},
      {"beyond the data", R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", 8,
       "lies beyond the data section, which has 8 bytes"},
      {"trailing bytes", R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", 8,
       "data section has 4 trailing bytes not covered by any tensor"},
      {"trailing bytes, no tensors", "{}", 8, "8 trailing bytes"},
      {"duplicate name", R"({"a":)" + f32_2 + R"([0,8]},"a":)" + f32_2 + "[8,16]}}", 16,
       "duplicate tensor name 'a'"},
      {"duplicate key", R"({"a":{"dtype":"F32","dtype":"F32","shape":[1],"data_offsets":[0,4]}})",
       4, "duplicate key 'dtype'"},
      {"duplicate metadata", R"({"__metadata__":{},"__metadata__":{}})", 0,
       "duplicate key '__metadata__'"},
      {"negative dim", R"({"a":{"dtype":"F32","shape":[-1,2],"data_offsets":[0,0]}})", 0,
       "a dimension in shape [-1,2] of tensor 'a' is negative (-1)"},
      {"fractional dim", R"({"a":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}})", 8,
       "is 2.0, not an integer"},
      {"dims overflow",
       R"({"a":{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,0]}})", 0,
       "has too many elements to address"},
      {"dim above int64",
       R"({"a":{"dtype":"F32","shape":[18446744073709551615],"data_offsets":[0,0]}})", 0,
       "is too large"},
      {"shape not an array", R"({"a":{"dtype":"F32","shape":2,"data_offsets":[0,8]}})", 8,
       "shape of tensor 'a' is 2, not an array"},
      {"missing key", R"({"a":{"dtype":"F32","shape":[2]}})", 0, "is missing key 'data_offsets'"},
      {"unexpected key", R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"foo":1}})", 4,
       "unexpected key 'foo'"},
      {"offsets not a pair", R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0]}})", 4,
       "not an array [begin, end]"},
      {"negative offset", R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[-4,0]}})", 4,
       "data_offsets begin of tensor 'a' is negative"},
      {"entry not an object", R"({"a":5})", 0, "entry of tensor 'a' is a JSON number"},
      {"metadata not an object", R"({"__metadata__":[1]})", 0,
       "__metadata__ is a JSON array, not an object of strings"},
      {"metadata value not a string", R"({"__metadata__":{"k":1}})", 0,
       "__metadata__ value of 'k' is 1, not a string"},
  };
  for (const Case& c : cases) {
    INFO("case: " << c.what);
    const std::string file = make_file(c.header, c.data_bytes);
    const std::string msg =
        error_of([&] { parse_safetensors(file.data(), file.size(), "bad.st"); });
    check_contains(msg, "safetensors file 'bad.st'");
    check_contains(msg, c.expected);
  }

  // The length field itself.
  const std::string tiny = "abc";
  check_contains(error_of([&] { parse_safetensors(tiny.data(), tiny.size()); }),
                 "file is 3 bytes, shorter than the 8-byte header length");
  const std::string long_header = le64(1000) + "{}" + std::string(10, ' ');
  check_contains(error_of([&] { parse_safetensors(long_header.data(), long_header.size()); }),
                 "header length 1000 runs past the end of the file (20 bytes)");
  const std::string huge = le64(std::numeric_limits<uint64_t>::max()) + "{}      ";
  check_contains(error_of([&] { parse_safetensors(huge.data(), huge.size()); }),
                 "header length 18446744073709551615 runs past the end of the file");

  // Through the file reader: the path is named.
  const std::string path = tmp_path("bad.safetensors");
  write_file(path, make_file(R"({"a":{"dtype":"F16","shape":[1],"data_offsets":[0,2]}})", 2));
  const std::string msg = error_of([&] { load_safetensors(path); });
  check_contains(msg, "safetensors file '" + path + "'");
  check_contains(msg, "unsupported dtype 'F16'");
  check_contains(error_of([&] { load_safetensors(tmp_path("missing.safetensors")); }),
                 "cannot open");
  const char* dir = std::getenv("TEST_TMPDIR");
  check_contains(error_of([&] { load_safetensors(dir ? dir : "/tmp"); }), "not a regular file");
}

TEST_CASE("safetensors: saving refuses bad names and leaves no file behind") {
  const std::string path = tmp_path("refused.safetensors");
  std::remove(path.c_str());
  const Tensor t = ones({2});
  check_contains(error_of([&] {
                   save_safetensors(path, {{"a", t}, {"a", t}});
                 }),
                 "tensor name 'a' appears twice");
  check_contains(error_of([&] {
                   save_safetensors(path, {{"__metadata__", t}});
                 }),
                 "cannot be called __metadata__");
  check_contains(error_of([&] {
                   save_safetensors(path, {{"u", Tensor()}});
                 }),
                 "tensor 'u' is undefined");
  check_contains(error_of([&] { save_safetensors(path, {{"bad\xff", t}}); }), "UTF-8");
  CHECK(!file_exists(path));
  CHECK(!file_exists(path + ".tmp"));
  const std::string nowhere = tmp_path("no_such_dir/x.safetensors");
  const std::string msg = error_of([&] { save_safetensors(nowhere, {{"a", t}}); });
  check_contains(msg, nowhere + ".tmp");
  check_contains(msg, "cannot create");
}

RESONA_GPU_TEST("safetensors: CUDA tensors, strided ones included, are written byte for byte") {
  const NamedTensors host = sample_tensors();
  NamedTensors device;
  for (const auto& [name, t] : host) {
    // Same geometry on the GPU: copy the whole storage, then view it the same way.
    const int64_t capacity = static_cast<int64_t>(t.storage()->nbytes() / t.element_size());
    Tensor flat = make_view(t, {capacity}, {1}, 0);
    Tensor on_gpu = copy_to(flat, t.dtype(), Device::cuda());
    device.emplace_back(name, make_view(on_gpu, t.shape(), t.strides(), t.offset()));
  }
  CHECK(!device[8].second.is_contiguous());  // "transposed"
  CHECK(serialize_safetensors(device) == serialize_safetensors(host));
  const std::string path = tmp_path("cuda.safetensors");
  save_safetensors(path, device);
  check_same_tensors(load_safetensors(path).tensors, host);
}

}  // namespace resona::testing
