// Philox-4x32-10 against the Random123 known answers, the stream's definition in terms
// of (seed, offset), reproducibility and state restore, offsets in whole blocks, and
// the moments of the distributions.
//
// Statistical checks use N = 2^18 draws and a tolerance of 6 standard errors of the
// statistic (stated at each check): a correct generator fails one with probability
// ~2e-9, and since seeds are fixed the outcome is deterministic anyway. A wrong
// transform (e.g. a missing scale or an off-by-one in Fisher-Yates) misses by far more.
#include "core/rng.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <map>
#include <numeric>

#include "tests/test_util.h"

namespace resona::testing {
namespace {

constexpr int64_t kN = 1 << 18;

struct Moments {
  double mean = 0, var = 0, m3 = 0, m4 = 0;  // central moments
};

Moments moments(const std::vector<double>& x) {
  Moments m;
  for (double v : x) m.mean += v;
  m.mean /= static_cast<double>(x.size());
  for (double v : x) {
    const double d = v - m.mean;
    m.var += d * d;
    m.m3 += d * d * d;
    m.m4 += d * d * d * d;
  }
  const double n = static_cast<double>(x.size());
  m.var /= n;
  m.m3 /= n;
  m.m4 /= n;
  return m;
}

// Every way the generator hands out numbers, appended to `out` (bit-exact as doubles).
void draw_everything(Generator& g, std::vector<double>& out) {
  for (double v : g.uniform({5}, -1, 1, DType::kFloat64).to_vector<double>()) out.push_back(v);
  for (double v : g.uniform({3}, 0, 1, DType::kFloat32).to_vector<double>()) out.push_back(v);
  for (double v : g.normal({7}, 0, 1, DType::kFloat64).to_vector<double>()) out.push_back(v);
  for (int64_t v : g.randint({4}, -10, 10).to_vector<int64_t>()) out.push_back(v);
  for (int64_t v : g.permutation(9)) out.push_back(static_cast<double>(v));
  out.push_back(g.next_double());
  out.push_back(static_cast<double>(g.next_int(0, 1000)));
}

}  // namespace

TEST_CASE("rng: Philox-4x32-10 matches the Random123 known-answer vectors") {
  // Random123's kat_vectors, "philox4x32 10" lines: counter[4] key[2] -> output[4].
  using Ctr = std::array<uint32_t, 4>;
  using Key = std::array<uint32_t, 2>;
  CHECK(philox4x32(Ctr{0, 0, 0, 0}, Key{0, 0}) ==
        Ctr{0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u});
  CHECK(philox4x32(Ctr{0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu},
                   Key{0xffffffffu, 0xffffffffu}) ==
        Ctr{0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu});
  CHECK(philox4x32(Ctr{0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u},
                   Key{0xa4093822u, 0x299f31d0u}) ==
        Ctr{0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u});
}

TEST_CASE("rng: word i of the stream is word i%4 of the Philox block i/4 under the seed") {
  // Seed 0, words 0..3: the all-zero known answer.
  const uint32_t zero_kat[4] = {0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u};
  for (uint64_t i = 0; i < 4; ++i) CHECK(Generator::word_at(0, i) == zero_kat[i]);
  // Block index and seed split into (low, high) 32-bit words: counter {lo, hi, 0, 0},
  // key {lo, hi}. Positions and seeds above 2^32 exercise the high words.
  for (uint64_t seed : {uint64_t{1}, uint64_t{0x123456789abcdefull}}) {
    for (uint64_t pos : {uint64_t{0}, uint64_t{7}, uint64_t{4} << 32, (uint64_t{5} << 34) + 3}) {
      INFO("seed " << seed << " position " << pos);
      const uint64_t block = pos / 4;
      const auto r =
          philox4x32({static_cast<uint32_t>(block), static_cast<uint32_t>(block >> 32), 0, 0},
                     {static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32)});
      CHECK(Generator::word_at(seed, pos) == r[pos % 4]);
    }
  }
  // uniform(): element i from words (offset + 2i, offset + 2i + 1), 53 bits.
  Generator g(99);
  g.reserve(8);
  const uint64_t o = g.state().offset;
  const std::vector<double> u = g.uniform({6}, 0, 1, DType::kFloat64).to_vector<double>();
  for (uint64_t i = 0; i < 6; ++i) {
    CHECK(u[i] == uints_to_unit_double(Generator::word_at(99, o + 2 * i),
                                       Generator::word_at(99, o + 2 * i + 1)));
  }
  // The unit maps never reach 1.
  CHECK(uint_to_unit_float(0) == 0.0f);
  CHECK(uint_to_unit_float(0xffffffffu) < 1.0f);
  CHECK(uints_to_unit_double(0, 0) == 0.0);
  CHECK(uints_to_unit_double(0xffffffffu, 0xffffffffu) < 1.0);
  CHECK(uints_to_unit_double(0xffffffffu, 0xffffffffu) == 1.0 - std::ldexp(1.0, -53));
}

TEST_CASE("rng: same seed, same numbers; different seed, different numbers") {
  Generator a(1234), b(1234), c(1235);
  std::vector<double> xa, xb, xc;
  draw_everything(a, xa);
  draw_everything(b, xb);
  draw_everything(c, xc);
  CHECK(xa == xb);
  CHECK(a.state() == b.state());
  CHECK(xa != xc);
}

TEST_CASE("rng: saving and restoring the state continues identically") {
  Generator g(77);
  std::vector<double> warmup;
  draw_everything(g, warmup);
  const RngState saved = g.state();
  std::vector<double> first, again, elsewhere;
  draw_everything(g, first);
  const RngState after = g.state();
  g.set_state(saved);
  draw_everything(g, again);
  CHECK(first == again);
  CHECK(g.state() == after);
  Generator h(5);  // a different generator restored to the saved state
  h.set_state(saved);
  CHECK(h.seed() == 77);
  draw_everything(h, elsewhere);
  CHECK(first == elsewhere);

  INFO("an offset inside a Philox block is refused");
  RngState bad = saved;
  bad.offset += 2;
  try {
    h.set_state(bad);
    FAIL("set_state accepted offset " << bad.offset);
  } catch (const Error& e) {
    CHECK(std::string(e.what()).find("not a multiple of 4") != std::string::npos);
  }
  CHECK(h.state() == after);  // unchanged by the refused call
}

TEST_CASE("rng: every draw advances the offset by whole Philox blocks") {
  Generator g(3);
  auto advance = [&](auto&& draw) {
    const uint64_t before = g.state().offset;
    draw();
    const uint64_t d = g.state().offset - before;
    CHECK(g.state().offset % 4 == 0);
    return d;
  };
  CHECK(advance([&] { g.reserve(0); }) == 0);
  CHECK(advance([&] { g.reserve(1); }) == 4);
  CHECK(advance([&] { g.reserve(4); }) == 4);
  CHECK(advance([&] { g.reserve(5); }) == 8);
  CHECK(advance([&] { g.uniform({0}); }) == 0);
  CHECK(advance([&] { g.uniform({3}); }) == 8);  // 2 words per element: 6 -> 8
  CHECK(advance([&] { g.uniform({2, 2}); }) == 8);
  CHECK(advance([&] { g.normal({1}); }) == 4);  // 4 words per pair
  CHECK(advance([&] { g.normal({3}); }) == 8);
  CHECK(advance([&] { g.normal({4}); }) == 8);
  CHECK(advance([&] { g.next_double(); }) == 4);
  CHECK(advance([&] { g.next_int(0, 5); }) == 4);
  CHECK(advance([&] { g.randint({5}, 0, 3); }) == 20);
  CHECK(advance([&] { g.permutation(6); }) == 20);  // 5 swaps
  CHECK(advance([&] { g.permutation(1); }) == 0);
  const uint64_t before = g.state().offset;
  CHECK(g.reserve(4) == before);  // returns where the reserved words start
}

TEST_CASE("rng: uniform moments and range") {
  Generator g(2024);
  const double lo = -2, hi = 3;
  const std::vector<double> x = g.uniform({kN}, lo, hi, DType::kFloat64).to_vector<double>();
  std::vector<double> u(x.size());
  int64_t outside = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    outside += !(x[i] >= lo && x[i] < hi);
    u[i] = (x[i] - lo) / (hi - lo);
  }
  CHECK(outside == 0);
  const Moments m = moments(u);
  // U(0,1): mean 1/2 with standard error sqrt(1/12 / N); variance 1/12 with standard
  // error sqrt((mu4 - sigma^4) / N) = sqrt((1/80 - 1/144) / N).
  const double n = static_cast<double>(kN);
  CHECK(std::abs(m.mean - 0.5) < 6 * std::sqrt(1.0 / 12 / n));
  CHECK(std::abs(m.var - 1.0 / 12) < 6 * std::sqrt((1.0 / 80 - 1.0 / 144) / n));
  CHECK(std::abs(m.m3) < 6 * std::sqrt(1.0 / 448 / n));  // E d^6 = 1/448 bounds Var(d^3)

  const std::vector<float> f = g.uniform({kN}, 0, 1, DType::kFloat32).to_vector<float>();
  double sum = 0;
  outside = 0;
  for (float v : f) {
    outside += !(v >= 0.0f && v < 1.0f);
    sum += v;
  }
  CHECK(outside == 0);
  CHECK(std::abs(sum / n - 0.5) < 6 * std::sqrt(1.0 / 12 / n));
}

TEST_CASE("rng: normal moments") {
  Generator g(31337);
  const std::vector<double> x = g.normal({kN}, 0, 1, DType::kFloat64).to_vector<double>();
  const Moments m = moments(x);
  const double n = static_cast<double>(kN);
  // N(0,1): standard errors sqrt(1/N) (mean), sqrt(2/N) (variance), sqrt(15/N) (third
  // moment, E x^6 = 15) and sqrt(96/N) (fourth moment, E x^8 - (E x^4)^2 = 105 - 9).
  CHECK(std::abs(m.mean) < 6 * std::sqrt(1 / n));
  CHECK(std::abs(m.var - 1) < 6 * std::sqrt(2 / n));
  CHECK(std::abs(m.m3) < 6 * std::sqrt(15 / n));
  CHECK(std::abs(m.m4 - 3) < 6 * std::sqrt(96 / n));
  // Mass within one sigma: p = erf(1/sqrt 2), standard error sqrt(p (1 - p) / N).
  const double p = std::erf(1 / std::sqrt(2.0));
  const double within =
      std::count_if(x.begin(), x.end(), [](double v) { return std::abs(v) < 1; }) / n;
  CHECK(std::abs(within - p) < 6 * std::sqrt(p * (1 - p) / n));
  CHECK(std::all_of(x.begin(), x.end(), [](double v) { return std::isfinite(v); }));

  // Mean and std are applied: N(3, 2^2).
  const Moments s = moments(g.normal({kN}, 3, 2, DType::kFloat64).to_vector<double>());
  CHECK(std::abs(s.mean - 3) < 6 * 2 * std::sqrt(1 / n));
  CHECK(std::abs(s.var - 4) < 6 * 4 * std::sqrt(2 / n));
  // Odd sizes fill the last element from the cosine half of a pair.
  CHECK(g.normal({5}, 0, 1, DType::kFloat32).numel() == 5);
}

TEST_CASE("rng: randint covers [lo, hi) evenly") {
  Generator g(8);
  const int64_t lo = -3, hi = 5, k = hi - lo;
  const std::vector<int64_t> x = g.randint({kN}, lo, hi).to_vector<int64_t>();
  std::vector<int64_t> count(k, 0);
  int64_t outside = 0;
  for (int64_t v : x) {
    if (v >= lo && v < hi)
      ++count[v - lo];
    else
      ++outside;
  }
  CHECK(outside == 0);
  // Each bucket is Binomial(N, 1/k).
  const double n = static_cast<double>(kN), p = 1.0 / k;
  for (int64_t c : count) CHECK(std::abs(c - n * p) < 6 * std::sqrt(n * p * (1 - p)));

  CHECK_THROWS_AS(g.next_int(4, 4), Error);
  for (int i = 0; i < 100; ++i) {
    const double d = g.next_double();
    CHECK((d >= 0 && d < 1));
  }
}

TEST_CASE("rng: permutation is a uniformly random permutation") {
  Generator g(4);
  for (int64_t n : {0, 1, 2, 17, 1000}) {
    std::vector<int64_t> p = g.permutation(n);
    std::sort(p.begin(), p.end());
    std::vector<int64_t> iota(n);
    std::iota(iota.begin(), iota.end(), 0);
    CHECK(p == iota);
  }
  CHECK(Generator(1).permutation(1000) != Generator(2).permutation(1000));
  // All 6 orders of 3 elements, each Binomial(M, 1/6).
  const int64_t draws = 60000;
  std::map<std::vector<int64_t>, int64_t> seen;
  for (int64_t i = 0; i < draws; ++i) ++seen[g.permutation(3)];
  CHECK(seen.size() == 6);
  const double p = 1.0 / 6;
  for (const auto& [order, c] : seen) {
    CHECK(std::abs(c - draws * p) < 6 * std::sqrt(draws * p * (1 - p)));
  }
}

RESONA_GPU_TEST("rng: CUDA draws equal CPU draws for the same state") {
  Generator a(10), b(10);
  const Tensor cpu = a.uniform({33}, -1, 1, DType::kFloat32);
  const Tensor gpu = b.uniform({33}, -1, 1, DType::kFloat32, Device::cuda());
  CHECK(gpu.device().is_cuda());
  CHECK(gpu.to_vector<float>() == cpu.to_vector<float>());
  CHECK(a.normal({9}).to_vector<float>() ==
        b.normal({9}, 0, 1, DType::kFloat32, Device::cuda()).to_vector<float>());
  CHECK(a.state() == b.state());
}

}  // namespace resona::testing
