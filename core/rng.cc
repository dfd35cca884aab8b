#include "core/rng.h"

#include <cmath>

#include "core/dispatch.h"

namespace resona {

namespace {
constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u;
constexpr uint32_t kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;

inline void mulhilo(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
  uint64_t p = static_cast<uint64_t>(a) * b;
  hi = static_cast<uint32_t>(p >> 32);
  lo = static_cast<uint32_t>(p);
}
}  // namespace

std::array<uint32_t, 4> philox4x32(std::array<uint32_t, 4> c, std::array<uint32_t, 2> k) {
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0, lo0, hi1, lo1;
    mulhilo(kM0, c[0], hi0, lo0);
    mulhilo(kM1, c[2], hi1, lo1);
    c = {hi1 ^ c[1] ^ k[0], lo1, hi0 ^ c[3] ^ k[1], lo0};
    k[0] += kW0;
    k[1] += kW1;
  }
  return c;
}

uint32_t Generator::word_at(uint64_t seed, uint64_t position) {
  uint64_t block = position / 4;
  auto r = philox4x32({static_cast<uint32_t>(block), static_cast<uint32_t>(block >> 32), 0, 0},
                      {static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32)});
  return r[position % 4];
}

void Generator::set_state(const RngState& s) {
  RESONA_CHECK(s.offset % 4 == 0) << "RNG offset " << s.offset
                                  << " is not a multiple of 4 (corrupted state?)";
  state_ = s;
}

uint64_t Generator::reserve(uint64_t words) {
  uint64_t start = state_.offset;
  state_.offset += (words + 3) / 4 * 4;
  return start;
}

double Generator::next_double() {
  uint64_t o = reserve(2);
  return uints_to_unit_double(word_at(state_.seed, o), word_at(state_.seed, o + 1));
}

int64_t Generator::next_int(int64_t lo, int64_t hi) {
  RESONA_CHECK(hi > lo) << "next_int: empty range [" << lo << ", " << hi << ")";
  uint64_t range = static_cast<uint64_t>(hi - lo);
  uint64_t o = reserve(2);
  uint64_t r = (static_cast<uint64_t>(word_at(state_.seed, o)) << 32) | word_at(state_.seed, o + 1);
  return lo + static_cast<int64_t>(r % range);  // bias < range / 2^64, negligible
}

Tensor Generator::uniform(const Shape& shape, double lo, double hi, DType dtype, Device device) {
  Tensor t = empty(shape, DType::kFloat64);
  double* p = t.data<double>();
  const int64_t n = t.numel();
  const uint64_t o = reserve(2 * static_cast<uint64_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    double u =
        uints_to_unit_double(word_at(state_.seed, o + 2 * i), word_at(state_.seed, o + 2 * i + 1));
    p[i] = lo + (hi - lo) * u;
  }
  return copy_to(t, dtype, device);
}

Tensor Generator::normal(const Shape& shape, double mean, double std, DType dtype, Device device) {
  Tensor t = empty(shape, DType::kFloat64);
  double* p = t.data<double>();
  const int64_t n = t.numel();
  const uint64_t o = reserve(4 * static_cast<uint64_t>((n + 1) / 2));
  for (int64_t i = 0; i < n; i += 2) {
    uint64_t w = o + 2 * static_cast<uint64_t>(i);
    double u1 = uints_to_unit_double(word_at(state_.seed, w), word_at(state_.seed, w + 1));
    double u2 = uints_to_unit_double(word_at(state_.seed, w + 2), word_at(state_.seed, w + 3));
    double r = std::sqrt(-2.0 * std::log(1.0 - u1));  // 1 - u1 in (0, 1]: log is finite
    double th = 2.0 * M_PI * u2;
    p[i] = mean + std * r * std::cos(th);
    if (i + 1 < n) p[i + 1] = mean + std * r * std::sin(th);
  }
  return copy_to(t, dtype, device);
}

Tensor Generator::randint(const Shape& shape, int64_t lo, int64_t hi, Device device) {
  Tensor t = empty(shape, DType::kInt64);
  int64_t* p = t.data<int64_t>();
  for (int64_t i = 0, n = t.numel(); i < n; ++i) p[i] = next_int(lo, hi);
  return copy_to(t, DType::kInt64, device);
}

std::vector<int64_t> Generator::permutation(int64_t n) {
  RESONA_CHECK(n >= 0) << "permutation(" << n << "): the length must be non-negative";
  std::vector<int64_t> p(n);
  for (int64_t i = 0; i < n; ++i) p[i] = i;
  for (int64_t i = n - 1; i > 0; --i) std::swap(p[i], p[next_int(0, i + 1)]);
  return p;
}

}  // namespace resona
