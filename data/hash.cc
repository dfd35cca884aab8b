#include "data/hash.h"

#include <cstring>

#include "core/check.h"

namespace resona::data {

namespace {
constexpr uint64_t kP1 = 0x9E3779B97F4A7C15ull;
constexpr uint64_t kP2 = 0xC2B2AE3D27D4EB4Full;
constexpr uint64_t kP3 = 0x165667B19E3779F9ull;

inline uint64_t rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }
inline uint64_t step(uint64_t h, uint64_t w) { return rotl(h ^ (w * kP1), 31) * kP2; }
inline uint64_t finish(uint64_t h) {
  h ^= h >> 33;
  h *= kP2;
  h ^= h >> 29;
  h *= kP3;
  h ^= h >> 32;
  return h;
}
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "shard formats assume little-endian");
}  // namespace

uint64_t hash64(const void* data, size_t n, uint64_t seed) {
  const auto* p = static_cast<const unsigned char*>(data);
  uint64_t h = seed ^ (static_cast<uint64_t>(n) * kP3);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t w;
    std::memcpy(&w, p + i, 8);
    h = step(h, w);
  }
  if (i < n) {
    uint64_t w = 0;
    std::memcpy(&w, p + i, n - i);
    h = step(h, w);
  }
  return finish(h);
}

uint64_t hash_combine(uint64_t h, uint64_t v) { return finish(step(h ^ kP3, v)); }

std::string hex64(uint64_t v) {
  static const char* digits = "0123456789abcdef";
  std::string s(16, '0');
  for (int i = 15; i >= 0; --i, v >>= 4) s[i] = digits[v & 15];
  return s;
}

uint64_t parse_hex64(const std::string& s, const std::string& what) {
  RESONA_CHECK(s.size() == 16) << what << ": expected 16 hex digits, got '" << s << "'";
  uint64_t v = 0;
  for (char c : s) {
    int d = (c >= '0' && c <= '9') ? c - '0' : (c >= 'a' && c <= 'f') ? c - 'a' + 10 : -1;
    RESONA_CHECK(d >= 0) << what << ": expected 16 lower-case hex digits, got '" << s << "'";
    v = (v << 4) | static_cast<uint64_t>(d);
  }
  return v;
}

}  // namespace resona::data
