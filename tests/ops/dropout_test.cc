// dropout: finite differences with a fixed mask, mask statistics, reproducibility from
// the generator state, the backward mask, the identity cases and the errors for bad p.
#include <cmath>
#include <cstdint>
#include <vector>

#include "ops/dropout.h"
#include "ops/elementwise.h"
#include "ops/reduce.h"
#include "tests/test_util.h"

namespace resona::testing {

RESONA_OP_TEST(dropout, gradcheck, "dropout(x=[4,5], p=0.3 and 0.75, fixed generator state)") {
  Generator gen(51);
  Tensor x = leaf(gen, {4, 5});
  // A fresh Generator(seed) in each evaluation: every finite-difference evaluation and the
  // analytic pass draw the same mask, so dropout is linear in x and gradcheck applies.
  check_gradients(
      [](const std::vector<Tensor>& v) {
        Generator g(7);
        return dropout(v[0], 0.3, true, g);
      },
      {x});
  check_gradients(
      [](const std::vector<Tensor>& v) {
        Generator g(8);
        g.reserve(12);  // a nonzero offset
        return dropout(v[0].transpose(0, 1), 0.75, true, g);
      },
      {x});
}

RESONA_OP_TEST(dropout, values, "dropout(x=ones[2^20], p=0.3): keep rate and scale 1/(1-p)") {
  const int64_t n = int64_t{1} << 20;
  const double p = 0.3;
  Generator gen(52);
  Tensor y = dropout(ones({n}, DType::kFloat64), p, true, gen);
  std::vector<double> v = y.to_vector<double>();
  // Every element is 0 or exactly 1 * double(1 / (1 - p)).
  int64_t kept = 0, wrong = 0;
  for (double e : v) {
    kept += e != 0;
    wrong += e != 0 && e != 1.0 / (1.0 - p);
  }
  CHECK(wrong == 0);
  // The kept count is Binomial(n, 1-p): its fraction has standard deviation
  // sqrt(p (1-p) / n) = 4.5e-4 at n = 2^20, so 3e-3 is ~6.7 sigma (a correct mask fails
  // with probability ~1e-11; the test is deterministic anyway for this seed). The 24-bit
  // uniform shifts the keep probability by < 2^-24, far below that.
  const double rate = static_cast<double>(kept) / static_cast<double>(n);
  CHECK(std::abs(rate - (1 - p)) < 3e-3);
  // The generator advanced by n words (a multiple of 4 already).
  CHECK(gen.state().offset == static_cast<uint64_t>(n));

  // float32 as well: kept elements are x * float(1/(1-p)) exactly.
  Generator gen32(53);
  Tensor x32 = Generator(54).uniform({4096}, 0.5, 1.5);
  Tensor y32 = dropout(x32, 0.5, true, gen32);
  CHECK(y32.dtype() == DType::kFloat32);
  std::vector<float> xs = x32.to_vector<float>(), ys = y32.to_vector<float>();
  int64_t kept32 = 0, wrong32 = 0;
  for (size_t i = 0; i < xs.size(); ++i) {
    kept32 += ys[i] != 0;
    wrong32 += ys[i] != 0 && ys[i] != xs[i] * 2.0f;
  }
  CHECK(wrong32 == 0);
  // sigma = sqrt(0.25 / 4096) = 0.0078; 0.05 is ~6.4 sigma.
  CHECK(std::abs(static_cast<double>(kept32) / 4096 - 0.5) < 0.05);
}

RESONA_OP_TEST(dropout, values, "dropout masks: same state same mask, backward mask, strides") {
  Generator src(55);
  Tensor x = src.uniform({6, 7}, 0.5, 1.5, DType::kFloat64);  // no zeros: zero <=> dropped
  const double p = 0.4;

  // Identical generator states draw identical masks; the next call draws another one.
  Generator g1(9), g2(9);
  Tensor a = dropout(x, p, true, g1);
  Tensor b = dropout(x, p, true, g2);
  check_close(a, b, 0, 0);
  CHECK(g1.state() == g2.state());
  CHECK(g1.state().offset == 44);  // 42 words rounded up to a Philox block of 4
  Tensor c = dropout(x, p, true, g1);
  CHECK(a.to_vector<double>() != c.to_vector<double>());
  // Restoring a saved state (as a resumed run does) repeats the mask.
  Generator g3(1);
  g3.set_state({9, 44});
  check_close(dropout(x, p, true, g3), c, 0, 0);

  // The mask follows x's logical row-major order, not its storage: a transposed view gives
  // the same result as its contiguous copy.
  Generator g4(10), g5(10);
  check_close(dropout(x.transpose(0, 1), p, true, g4),
              dropout(x.transpose(0, 1).contiguous(), p, true, g5), 0, 0);

  // Backward regenerates the forward's mask: zeroed elements get zero gradient, kept ones
  // d_y / (1 - p). The generator moves on between forward and backward on purpose.
  Tensor xl = x.clone();
  xl.set_requires_grad(true);
  Generator g6(11);
  Tensor y = dropout(xl, p, true, g6);
  dropout(x, p, true, g6);
  Tensor d_y = src.uniform({6, 7}, 0.5, 1.5, DType::kFloat64);
  y.backward(d_y);
  std::vector<double> yv = y.to_vector<double>(), gv = xl.grad().to_vector<double>(),
                      dv = d_y.to_vector<double>(), xv = x.to_vector<double>();
  int64_t kept = 0, dropped = 0;
  for (size_t i = 0; i < yv.size(); ++i) {
    if (yv[i] == 0) {
      ++dropped;
      CHECK(gv[i] == 0);
    } else {
      ++kept;
      CHECK(yv[i] == doctest::Approx(xv[i] / (1 - p)).epsilon(1e-15));
      CHECK(gv[i] == doctest::Approx(dv[i] / (1 - p)).epsilon(1e-15));
    }
  }
  CHECK(kept > 0);
  CHECK(dropped > 0);
}

RESONA_OP_TEST(dropout, values, "dropout identity: eval mode and p=0 draw nothing") {
  Tensor x = values({1, -2, 3}, {3});
  Generator gen(56);
  check_close(dropout(x, 0.5, false, gen), {1, -2, 3});
  check_close(dropout(x, 0.0, true, gen), {1, -2, 3});
  CHECK(gen.state().offset == 0);
}

TEST_CASE("dropout refuses p outside [0, 1)") {
  Tensor x = zeros({3}).set_name("h");
  Generator gen(57);
  CHECK_THROWS_WITH_AS(dropout(x, 1.0, true, gen),
                       doctest::Contains("p must be in [0, 1), got 1 (for h [3] float32 cpu)"),
                       Error);
  CHECK_THROWS_WITH_AS(dropout(x, -0.1, true, gen), doctest::Contains("got -0.1"), Error);
  CHECK_THROWS_WITH_AS(dropout(x, 1.5, false, gen), doctest::Contains("p must be in [0, 1)"),
                       Error);
  CHECK_THROWS_WITH_AS(dropout(x, std::nan(""), true, gen),
                       doctest::Contains("p must be in [0, 1)"), Error);
  CHECK_THROWS_WITH_AS(dropout(from_vector(std::vector<int64_t>{1, 2}, {2}), 0.5, true, gen),
                       doctest::Contains("float32 or float64 expected"), Error);
  CHECK(gen.state().offset == 0);  // refused calls draw nothing
}

}  // namespace resona::testing
