// The autograd engine and gradcheck: topological order and summed gradients on a
// diamond, in-place accumulation into leaves across backward calls, grad mode, freed
// graphs and retain_graph, post-accumulate hooks, grad() capture, and a gradcheck that
// must fail on a deliberately wrong backward.
#include <cmath>
#include <string>
#include <vector>

#include "autograd/engine.h"
#include "autograd/function.h"
#include "autograd/grad_mode.h"
#include "autograd/gradcheck.h"
#include "ops/elementwise.h"
#include "ops/reduce.h"
#include "ops/shape.h"
#include "tests/test_util.h"

namespace resona::testing {
namespace {

// Identity op whose backward appends its tag to a log, to observe the engine's order.
std::vector<std::string>& probe_log() {
  static std::vector<std::string> log;
  return log;
}

struct Probe {
  static constexpr const char* kName = "probe";
  struct Saved {
    std::string tag;
  };
  static Tensor forward(Ctx<Saved>& ctx, const Tensor& x, const std::string& tag) {
    ctx.saved.tag = tag;
    return x.clone();
  }
  static Grads backward(Ctx<Saved>& ctx, const Tensor& d) {
    probe_log().push_back(ctx.saved.tag);
    return {d.clone()};
  }
};

Tensor probe(const Tensor& x, const std::string& tag) { return apply<Probe>(x, tag); }

// x^2 with a wrong backward (d * x instead of 2 d x): gradcheck must catch it.
struct WrongSquare {
  static constexpr const char* kName = "wrong_square";
  struct Saved {
    Tensor x;
  };
  static Tensor forward(Ctx<Saved>& ctx, const Tensor& x) {
    ctx.saved.x = x;
    return mul(x, x);
  }
  static Grads backward(Ctx<Saved>& ctx, const Tensor& d) { return {mul(d, ctx.saved.x)}; }
};

// The same op with the right backward, as the control.
struct RightSquare {
  static constexpr const char* kName = "right_square";
  struct Saved {
    Tensor x;
  };
  static Tensor forward(Ctx<Saved>& ctx, const Tensor& x) {
    ctx.saved.x = x;
    return mul(x, x);
  }
  static Grads backward(Ctx<Saved>& ctx, const Tensor& d) {
    return {mul(mul(d, ctx.saved.x), 2.0)};
  }
};

size_t index_of(const std::vector<std::string>& v, const std::string& s) {
  for (size_t i = 0; i < v.size(); ++i) {
    if (v[i] == s) return i;
  }
  return v.size();
}

}  // namespace

TEST_CASE("diamond: each node runs once, after every node feeding it; gradients sum") {
  //   x -> a -> b1 -> b2 -> (*2) --+
  //          |                      +-> add -> d -> sum
  //          +---> c -------> (*3) --+
  // a is reached by two paths of different lengths; it must run once, after b1 and c,
  // with the summed gradient 2 + 3.
  Tensor x = values({1, 2, 3}, {3}, true);
  Tensor a = probe(x, "a");
  Tensor b = mul(probe(probe(a, "b1"), "b2"), 2.0);
  Tensor c = mul(probe(a, "c"), 3.0);
  Tensor d = probe(add(b, c), "d");
  probe_log().clear();
  sum(d).backward();
  const std::vector<std::string> log = probe_log();
  REQUIRE(log.size() == 5);
  for (const char* tag : {"a", "b1", "b2", "c", "d"}) CHECK(index_of(log, tag) < log.size());
  CHECK(log.front() == "d");
  CHECK(log.back() == "a");
  CHECK(index_of(log, "b2") < index_of(log, "b1"));
  check_close(x.grad(), {5, 5, 5});

  // The plain version through ops only: x used by two branches that rejoin.
  Tensor y = values({1, -2}, {2}, true);
  sum(add(mul(y, y), exp(y))).backward();
  check_close(y.grad(), {2 + std::exp(1.0), -4 + std::exp(-2.0)}, 1e-14);
}

TEST_CASE("gradients accumulate into a leaf across backward calls, in place") {
  Tensor x = values({1, 2, 3}, {3}, true);
  sum(mul(x, 2.0)).backward();
  Tensor g1 = x.grad();
  REQUIRE(g1.defined());
  check_close(g1, {2, 2, 2});
  const void* buffer = g1.raw_data();
  sum(mul(x, x)).backward();  // a new graph: d/dx = 2x
  Tensor g2 = x.grad();
  CHECK(g2.is_same(g1));
  CHECK(g2.raw_data() == buffer);
  check_close(g2, {4, 6, 8});
  check_close(g1, {4, 6, 8});  // the handle taken earlier sees the update
  // The first gradient a leaf gets is copied: contiguous's backward hands the seed
  // through unchanged, and accumulating into the leaf must not write into the seed.
  Tensor z = values({1, 2, 3}, {3}, true);
  Tensor seed = values({1, 1, 1}, {3});
  contiguous(z, /*force_copy=*/true).backward(seed);
  CHECK_FALSE(z.grad().shares_storage(seed));
  contiguous(z, /*force_copy=*/true).backward(seed);
  check_close(seed, {1, 1, 1});
  check_close(z.grad(), {2, 2, 2});
}

TEST_CASE("NoGradGuard records nothing and restores grad mode") {
  Tensor x = values({1, 2}, {2}, true);
  REQUIRE(GradMode::enabled());
  {
    NoGradGuard no_grad;
    CHECK_FALSE(GradMode::enabled());
    Tensor y = mul(exp(x), 2.0);
    CHECK_FALSE(y.requires_grad());
    CHECK_FALSE(y.grad_fn());
    CHECK(y.is_leaf());
    CHECK_THROWS_WITH_AS(sum(y).backward(), doctest::Contains("does not require grad"), Error);
    {
      EnableGradGuard enable;
      CHECK(exp(x).requires_grad());
    }
    CHECK_FALSE(GradMode::enabled());
  }
  CHECK(GradMode::enabled());
  CHECK(exp(x).requires_grad());
  CHECK_FALSE(x.grad().defined());
}

TEST_CASE("tensors that do not require grad get no gradient") {
  Tensor x = values({1, 2}, {2}, true);
  Tensor w = values({3, 4}, {2});
  Tensor frozen = values({5, 6}, {2}, true);
  frozen.set_requires_grad(false);
  sum(mul(mul(x, w), frozen)).backward();
  check_close(x.grad(), {15, 24});
  CHECK_FALSE(w.grad().defined());
  CHECK_FALSE(frozen.grad().defined());
  CHECK_FALSE(w.requires_grad());
  // A detached handle starts a new leaf with no history.
  Tensor dx = mul(x, 2.0).detach();
  CHECK_FALSE(dx.requires_grad());
  CHECK(dx.is_leaf());
}

TEST_CASE("backward from a non-scalar needs an explicit gradient of the same shape") {
  Tensor x = values({1, 2, 3}, {3}, true);
  Tensor y = mul(x, 2.0);
  CHECK_THROWS_WITH_AS(
      y.backward(),
      doctest::Contains("backward from non-scalar [3] float64 cpu needs an explicit gradient"),
      Error);
  CHECK_THROWS_WITH_AS(
      y.backward(values({1, 1}, {2})),
      doctest::Contains("gradient [2] float64 cpu does not match root [3] float64 cpu"), Error);
  CHECK_FALSE(x.grad().defined());  // the refused calls touched nothing
  y.backward(values({1, 0, -1}, {3}));
  check_close(x.grad(), {2, 0, -2});
  // A one-element tensor of any rank is a scalar for this purpose.
  Tensor z = values({4}, {1, 1}, true);
  mul(z, z).backward();
  check_close(z.grad(), {8});
  // Backward from a leaf delivers the seed to it.
  Tensor l = values({1, 2}, {2}, true);
  l.backward(values({3, 4}, {2}));
  check_close(l.grad(), {3, 4});
}

TEST_CASE("a second backward through a freed graph throws, and retain_graph allows it") {
  SUBCASE("saved tensors (exp saves its output)") {
    Tensor x = values({0, 1}, {2}, true);
    Tensor loss = sum(exp(x));
    loss.backward();
    check_close(x.grad(), {1, std::exp(1.0)}, 1e-15);
    CHECK_THROWS_WITH_AS(loss.backward(), doctest::Contains("the graph was already freed"), Error);
    check_close(x.grad(), {1, std::exp(1.0)}, 1e-15);  // not added to a second time
  }
  SUBCASE("0-D: where shapes would line up, no silently wrong second gradient") {
    // Before the released check, exp's backward read its released output as 0 here and
    // added a zero gradient without complaint.
    Tensor x = scalar_tensor(1.0, DType::kFloat64).set_requires_grad(true);
    Tensor y = exp(x);
    y.backward();
    CHECK_THROWS_WITH_AS(y.backward(),
                         doctest::Contains("exp backward: the graph was already freed"), Error);
    check_close(x.grad(), {std::exp(1.0)}, 1e-15);
  }
  SUBCASE("mul saves both inputs; the error names the op") {
    Tensor x = values({2, 3}, {2}, true);
    Tensor y = mul(x, x);
    Tensor loss = sum(y, {}, false);
    loss.backward();
    CHECK_THROWS_WITH_AS(loss.backward(),
                         doctest::Contains("sum backward: the graph was already freed"), Error);
    // A new root on the freed part fails at the first freed node it meets.
    CHECK_THROWS_WITH_AS(sum(mul(y, 1.0)).backward(),
                         doctest::Contains("mul backward: the graph was already freed"), Error);
  }
  SUBCASE("nodes without saved tensors are refused too (release clears their shapes)") {
    Tensor x = values({1, 2, 3, 4}, {2, 2}, true);
    Tensor loss = sum(reshape(x, {4}));
    loss.backward();
    CHECK_THROWS_WITH_AS(loss.backward(), doctest::Contains("already freed"), Error);
  }
  SUBCASE("retain_graph") {
    Tensor x = values({0, 1}, {2}, true);
    Tensor loss = sum(mul(exp(x), x));  // d/dx = e^x (1 + x)
    loss.backward(Tensor(), /*retain_graph=*/true);
    loss.backward(Tensor(), /*retain_graph=*/true);
    check_close(x.grad(), {2, 4 * std::exp(1.0)}, 1e-14);
    loss.backward();  // the last one releases
    check_close(x.grad(), {3, 6 * std::exp(1.0)}, 1e-14);
    CHECK_THROWS_WITH_AS(loss.backward(), doctest::Contains("already freed"), Error);
  }
  SUBCASE("the part of the graph a backward did not reach stays usable") {
    Tensor x = values({1, 2}, {2}, true);
    Tensor y = exp(x);
    Tensor branch = sum(mul(y, 3.0));
    sum(x).backward();  // does not run exp's or mul's backward
    branch.backward();
    check_close(x.grad(), {1 + 3 * std::exp(1.0), 1 + 3 * std::exp(2.0)}, 1e-13);
  }
}

TEST_CASE("post-accumulate hooks run once per leaf per backward, with the full gradient") {
  Tensor x = values({1, 2}, {2}, true);
  Tensor w = values({3, 5}, {2}, true);
  int x_calls = 0, w_calls = 0;
  std::vector<std::vector<double>> seen;
  x.autograd_meta().post_accumulate_hooks.push_back([&](Tensor& leaf) {
    ++x_calls;
    CHECK(leaf.is_same(x));
    seen.push_back(leaf.grad().to_vector<double>());
  });
  w.autograd_meta().post_accumulate_hooks.push_back([&](Tensor&) { ++w_calls; });
  // x reaches the loss along three edges (x*x twice, and x*w).
  auto loss = [&] { return sum(add(mul(x, x), mul(x, w))); };
  loss().backward();
  CHECK(x_calls == 1);
  CHECK(w_calls == 1);
  REQUIRE(seen.size() == 1);
  CHECK(seen[0] == std::vector<double>{2 * 1 + 3, 2 * 2 + 5});
  loss().backward();
  CHECK(x_calls == 2);
  CHECK(w_calls == 2);
  CHECK(seen[1] == std::vector<double>{10, 18});
  // A leaf that gets no gradient in a backward has no hook call.
  sum(mul(w, 2.0)).backward();
  CHECK(x_calls == 2);
  CHECK(w_calls == 3);
  // grad() accumulates nothing, so it runs no hooks.
  autograd::grad({loss()}, {x}, {});
  CHECK(x_calls == 2);
}

TEST_CASE("autograd::grad returns gradients and leaves .grad() untouched") {
  Tensor x = values({1, 2}, {2}, true);
  Tensor w = values({3, 4}, {2}, true);
  Tensor unused = values({7}, {1}, true);
  std::vector<Tensor> g = autograd::grad({sum(mul(mul(x, x), w))}, {x, w, unused}, {});
  REQUIRE(g.size() == 3);
  check_close(g[0], {6, 16});
  check_close(g[1], {1, 4});
  CHECK_FALSE(g[2].defined());  // the output does not depend on it
  CHECK_FALSE(x.grad().defined());
  CHECK_FALSE(w.grad().defined());
  // With a gradient already there, it stays as it was.
  sum(x).backward();
  Tensor before = x.grad();
  std::vector<Tensor> g2 = autograd::grad({mul(x, 3.0)}, {x}, {values({1, 2}, {2})});
  check_close(g2[0], {3, 6});
  CHECK(x.grad().is_same(before));
  check_close(x.grad(), {1, 1});
  // Only leaves that require grad can be asked for.
  CHECK_THROWS_WITH_AS(autograd::grad({sum(mul(x, 2.0))}, {values({1}, {1})}, {}),
                       doctest::Contains("must be a leaf that requires grad"), Error);
}

TEST_CASE("gradcheck fails on a deliberately wrong backward, and passes on the right one") {
  Generator gen(51);
  Tensor x = leaf(gen, {3, 2}, 0.5, 1.5);
  GradcheckResult wrong =
      gradcheck([](const std::vector<Tensor>& v) { return apply<WrongSquare>(v[0]); }, {x});
  CHECK_FALSE(wrong.ok);
  // The analytic gradient is half the true one: off by |d x| >= 0.5 |d| somewhere.
  CHECK(wrong.max_abs_error > 0.1);
  CHECK(wrong.report.find("input 0 [3, 2] float64 cpu") != std::string::npos);
  GradcheckResult right =
      gradcheck([](const std::vector<Tensor>& v) { return apply<RightSquare>(v[0]); }, {x});
  INFO(right.report);
  CHECK(right.ok);
  CHECK(right.max_abs_error < 1e-8);
  // It also refuses inputs it cannot nudge.
  Tensor f32 = gen.uniform({2}, 0, 1, DType::kFloat32).set_requires_grad(true);
  CHECK_THROWS_WITH_AS(
      gradcheck([](const std::vector<Tensor>& v) { return cast(v[0], DType::kFloat64); }, {f32}),
      doctest::Contains("gradcheck needs float64 CPU leaves"), Error);
}

TEST_CASE("set_requires_grad: refused on integer tensors and on non-leaves") {
  Tensor i = from_vector(std::vector<int64_t>{1, 2}, {2}).set_name("i");
  CHECK_THROWS_WITH_AS(
      i.set_requires_grad(true),
      doctest::Contains("only floating-point tensors can require grad, got i [2] int64 cpu"),
      Error);
  CHECK_FALSE(i.requires_grad());
  i.set_requires_grad(false);  // turning it off is always fine
  Tensor x = values({1, 2}, {2}, true);
  Tensor y = mul(x, 2.0);
  CHECK_THROWS_WITH_AS(y.set_requires_grad(true), doctest::Contains("non-leaf"), Error);
}

}  // namespace resona::testing
