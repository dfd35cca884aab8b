// AdamW against values computed by hand, decoupled weight decay, state round trip,
// gradient clipping and the learning-rate schedules.
#include <cmath>

#include "ops/elementwise.h"
#include "tests/test_util.h"
#include "train/optimizer.h"
#include "train/schedule.h"

namespace resona::testing {
namespace {

using train::AdamW;
using train::AdamWConfig;

AdamWConfig config(double lr, double wd) {
  AdamWConfig c;
  c.lr = lr;
  c.beta1 = 0.9;
  c.beta2 = 0.999;
  c.eps = 1e-8;
  c.weight_decay = wd;
  return c;
}

Tensor param(const std::vector<double>& v, const Shape& shape, DType dtype = DType::kFloat64) {
  Tensor p = from_vector_as(v, shape, dtype);
  p.set_requires_grad(true);
  return p;
}

void set_grad(Tensor& p, const std::vector<double>& g) {
  p.set_grad(from_vector_as(g, p.shape(), p.dtype()));
}

// p0 = [1, -2] as a [1, 2] matrix (so weight decay applies), lr 0.1, betas (0.9, 0.999),
// eps 1e-8, gradients g1 = [0.5, -1] then g2 = [0.1, 0.2].
//   step 1: m = 0.1 g1, v = 0.001 g1^2, so m_hat = g1 and v_hat = g1^2: the update is
//           lr * g1 / (|g1| + eps) = 0.1 * sign(g1) up to eps:
//           p = p0 (1 - lr wd) - [0.1 * 0.5 / (0.5 + 1e-8), -0.1 * 1 / (1 + 1e-8)]
//   step 2: m = [0.055, -0.07], v = [0.00025975, 0.001039],
//           m_hat = m / 0.19, v_hat = v / 0.001999;
//           element 0: 0.1 * 0.2894737 / (0.3604706 + 1e-8) = 0.0803041
//           element 1: 0.1 * -0.3684211 / (0.7209414 + 1e-8) = -0.0511026
// With wd = 0 (values also from a float64 transcription of torch.optim.AdamW):
//   after step 1: [0.900000002, -1.900000001]; after step 2: [0.81969590638, -1.84889739399]
// With wd = 0.5 (p is first scaled by 0.95 each step):
//   after step 1: [0.850000002, -1.800000001]; after step 2: [0.72719590628, -1.65889739394]
TEST_CASE("AdamW: two steps against hand-computed values (float64)") {
  for (double wd : {0.0, 0.5}) {
    CAPTURE(wd);
    Tensor p = param({1.0, -2.0}, {1, 2});
    AdamW opt({{"w", p}}, config(0.1, wd));
    set_grad(p, {0.5, -1.0});
    opt.step();
    if (wd == 0.0) {
      check_close(p, {0.900000002, -1.900000001}, 1e-12);
    } else {
      check_close(p, {0.850000002, -1.800000001}, 1e-12);
    }
    set_grad(p, {0.1, 0.2});
    opt.step();
    CHECK(opt.step_count() == 2);
    // 1e-11: the expected values are written with 11 decimals.
    if (wd == 0.0) {
      check_close(p, {0.81969590638, -1.84889739399}, 1e-11);
    } else {
      check_close(p, {0.72719590628, -1.65889739394}, 1e-11);
    }
    auto state = opt.named_state();
    REQUIRE(state.size() == 2);
    CHECK(state[0].first == "w.exp_avg");
    CHECK(state[1].first == "w.exp_avg_sq");
    check_close(state[0].second, {0.055, -0.07}, 1e-15);
    check_close(state[1].second, {0.00025975, 0.001039}, 1e-15);
  }
}

TEST_CASE("AdamW: float32 parameters follow the float64 values to float32 precision") {
  Tensor p = param({1.0, -2.0}, {1, 2}, DType::kFloat32);
  AdamW opt({{"w", p}}, config(0.1, 0.5));
  set_grad(p, {0.5, -1.0});
  opt.step();
  set_grad(p, {0.1, 0.2});
  opt.step();
  // A few float32 ulps of values near 1.
  check_close(p, {0.72719590628, -1.65889739394}, 1e-6);
}

TEST_CASE("AdamW: weight decay is decoupled from the gradient") {
  // With a zero gradient, Adam's step is 0 / (0 + eps) = 0: only the decay moves p, by
  // exactly (1 - lr wd), whatever the scale of p. (L2 regularisation through the gradient
  // would instead take an Adam step of about lr * sign(p).)
  Tensor w = param({4.0, -0.001, 100.0, 0.0}, {2, 2});
  AdamW opt({{"w", w}}, config(0.5, 0.1));
  set_grad(w, {0, 0, 0, 0});
  opt.step();
  check_close(w, {4.0 * 0.95, -0.001 * 0.95, 100.0 * 0.95, 0.0}, 1e-15, 1e-15);

  // Two parameters with the same gradient and different values end up differing only
  // by the decay factor: the adaptive part of the step does not see p.
  Tensor a = param({1.0, 2.0}, {1, 2}), b = param({-3.0, 7.0}, {1, 2});
  AdamW opt2({{"a", a}, {"b", b}}, config(0.05, 0.2));
  for (int s = 0; s < 3; ++s) {
    set_grad(a, {0.3, -0.7});
    set_grad(b, {0.3, -0.7});
    opt2.step();
  }
  const double f = std::pow(1.0 - 0.05 * 0.2, 3);
  check_close(sub(a, b), {4.0 * f, -5.0 * f}, 1e-12);
}

TEST_CASE("AdamW: vectors are not decayed unless asked; parameters without grad are skipped") {
  Tensor norm_w = param({1.0, 1.0}, {2});
  Tensor untouched = param({5.0}, {1, 1});
  AdamW opt({{"norm.weight", norm_w}, {"unused", untouched}}, config(0.1, 0.5));
  set_grad(norm_w, {0.0, 0.0});
  opt.step();
  check_close(norm_w, {1.0, 1.0}, 0.0);
  check_close(untouched, {5.0}, 0.0);  // no gradient: no decay either

  AdamWConfig all = config(0.1, 0.5);
  all.decay_only_matrices = false;
  Tensor v = param({1.0, 1.0}, {2});
  AdamW opt2({{"v", v}}, all);
  set_grad(v, {0.0, 0.0});
  opt2.step();
  check_close(v, {0.95, 0.95}, 1e-15);
}

TEST_CASE("AdamW: the embedding matrix is not decayed unless decay_embeddings") {
  Tensor emb = param({1.0, 1.0, 1.0, 1.0}, {2, 2});
  Tensor w = param({1.0, 1.0, 1.0, 1.0}, {2, 2});
  AdamW opt({{"model.embeddings.weight", emb}, {"model.layers.0.w", w}}, config(0.1, 0.5));
  set_grad(emb, {0.0, 0.0, 0.0, 0.0});
  set_grad(w, {0.0, 0.0, 0.0, 0.0});
  opt.step();
  check_close(emb, {1.0, 1.0, 1.0, 1.0}, 0.0);
  check_close(w, {0.95, 0.95, 0.95, 0.95}, 1e-15);  // 1 - lr * wd

  AdamWConfig with = config(0.1, 0.5);
  with.decay_embeddings = true;
  Tensor emb2 = param({1.0, 1.0}, {1, 2});
  AdamW opt2({{"model.embeddings.weight", emb2}}, with);
  set_grad(emb2, {0.0, 0.0});
  opt2.step();
  check_close(emb2, {0.95, 0.95}, 1e-15);
}

TEST_CASE("AdamW: state round trip and refusals") {
  Tensor p = param({1.0, -2.0}, {1, 2});
  AdamW opt({{"w", p}}, config(0.1, 0.0));
  set_grad(p, {0.5, -1.0});
  opt.step();
  auto saved = opt.named_state();
  std::vector<std::pair<std::string, Tensor>> copy;
  for (auto& [n, t] : saved) copy.emplace_back(n, t.clone());

  Tensor q = param({0.900000002, -1.900000001}, {1, 2});
  AdamW opt2({{"w", q}}, config(0.1, 0.0));
  opt2.load_state(copy, opt.step_count());
  CHECK(opt2.step_count() == 1);
  set_grad(p, {0.1, 0.2});
  set_grad(q, {0.1, 0.2});
  opt.step();
  opt2.step();
  check_close(q, p, 1e-15);

  // A missing or misshapen entry is refused before anything changes.
  CHECK_THROWS_AS(opt2.load_state({copy[0]}, 1), Error);
  auto bad = copy;
  bad[1].second = zeros({3});
  CHECK_THROWS_AS(opt2.load_state(bad, 1), Error);
  CHECK(opt2.step_count() == 2);

  CHECK_THROWS_AS(AdamW({{"w", p}, {"w", q}}, config(0.1, 0.0)), Error);  // same name
  CHECK_THROWS_AS(AdamW({{"a", p}, {"b", p}}, config(0.1, 0.0)), Error);  // same tensor
  CHECK_THROWS_AS(AdamW({{"i", arange(3)}}, config(0.1, 0.0)), Error);    // not float
  AdamWConfig bad_cfg = config(0.1, 0.0);
  bad_cfg.beta2 = 1.0;
  CHECK_THROWS_AS(AdamW({{"w", p}}, bad_cfg), Error);
}

RESONA_GPU_TEST("AdamW: bfloat16 CUDA parameters are refused with a clear error") {
  // CUDA parameters are float32 master weights (tests/cuda/adamw_cuda_test.cc runs them).
  Tensor p = zeros({2}, DType::kBFloat16, Device::cuda());
  p.set_requires_grad(true);
  CHECK_THROWS_WITH_AS(AdamW({{"w", p}}, config(0.1, 0.0)),
                       doctest::Contains("must be float32 (master weights"), Error);
}

TEST_CASE("zero_grad zeroes the gradient buffers in place") {
  Tensor p = param({1.0, 2.0}, {2});
  Tensor none = param({3.0}, {1});
  set_grad(p, {0.5, -0.5});
  Tensor buffer = p.grad();
  AdamW opt({{"p", p}, {"none", none}}, config(0.1, 0.0));
  opt.zero_grad();
  REQUIRE(p.grad().defined());
  CHECK(p.grad().is_same(buffer));
  check_close(p.grad(), {0.0, 0.0}, 0.0);
  CHECK_FALSE(none.grad().defined());
}

TEST_CASE("clip_grad_norm: global L2 norm, scaled only above the threshold") {
  Tensor a = param({0, 0}, {2}), b = param({0}, {1, 1}), c = param({1}, {1});
  set_grad(a, {3.0, 4.0});
  set_grad(b, {12.0});  // global norm sqrt(9 + 16 + 144) = 13; c has no gradient
  CHECK(train::clip_grad_norm(std::vector<Tensor>{a, b, c}, 20.0) == doctest::Approx(13.0));
  check_close(a.grad(), {3.0, 4.0}, 0.0);  // below the threshold: untouched

  const double norm = train::clip_grad_norm(std::vector<Tensor>{a, b, c}, 6.5);
  CHECK(norm == doctest::Approx(13.0).epsilon(1e-15));
  const double s = 6.5 / (13.0 + 1e-6);
  check_close(a.grad(), {3.0 * s, 4.0 * s}, 1e-15);
  check_close(b.grad(), {12.0 * s}, 1e-15);
  // The clipped gradients now have norm 6.5 (up to the 1e-6 guard).
  CHECK(train::clip_grad_norm(std::vector<Tensor>{a, b}, 100.0) ==
        doctest::Approx(6.5).epsilon(1e-6));

  // float32 gradients are summed in float64.
  Tensor f = param({0, 0}, {2}, DType::kFloat32);
  set_grad(f, {6.0, 8.0});
  CHECK(train::clip_grad_norm(std::vector<Tensor>{f}, 1.0) == doctest::Approx(10.0));
  check_close(f.grad(), {0.6, 0.8}, 1e-6);

  // A non-finite norm is reported and nothing is scaled.
  Tensor n = param({0, 0}, {2});
  set_grad(n, {INFINITY, 1.0});
  CHECK(std::isinf(train::clip_grad_norm(std::vector<Tensor>{n}, 1.0)));
  CHECK(n.grad().to_vector<double>()[1] == 1.0);
  CHECK_THROWS_AS(train::clip_grad_norm(std::vector<Tensor>{a}, 0.0), Error);
}

TEST_CASE("schedules: warmup, cosine, linear, constant at given steps") {
  train::ScheduleConfig c;
  c.lr = 1.0;
  c.warmup_steps = 10;
  c.total_steps = 110;  // 100 decay steps
  c.min_lr_ratio = 0.1;

  for (auto kind : {train::ScheduleKind::kCosine, train::ScheduleKind::kLinear,
                    train::ScheduleKind::kConstant}) {
    c.kind = kind;
    CAPTURE(train::schedule_kind_name(kind));
    // Warmup: (s + 1) / 10, the same for every kind.
    CHECK(train::lr_at(c, 0) == doctest::Approx(0.1));
    CHECK(train::lr_at(c, 4) == doctest::Approx(0.5));
    CHECK(train::lr_at(c, 9) == doctest::Approx(1.0));
    CHECK(train::lr_at(c, 10) == doctest::Approx(1.0));  // decay starts at p = 0
  }
  c.kind = train::ScheduleKind::kCosine;
  // p = 0.25: 0.1 + 0.9 * (1 + cos(pi/4)) / 2 = 0.1 + 0.45 * 1.70710678 = 0.86819805
  CHECK(train::lr_at(c, 35) == doctest::Approx(0.868198052).epsilon(1e-9));
  CHECK(train::lr_at(c, 60) == doctest::Approx(0.55));  // p = 0.5: halfway
  CHECK(train::lr_at(c, 110) == doctest::Approx(0.1));  // p = 1: the floor
  CHECK(train::lr_at(c, 1000) == doctest::Approx(0.1));
  c.kind = train::ScheduleKind::kLinear;
  CHECK(train::lr_at(c, 35) == doctest::Approx(0.775));  // 1 - 0.9 * 0.25
  CHECK(train::lr_at(c, 60) == doctest::Approx(0.55));
  CHECK(train::lr_at(c, 110) == doctest::Approx(0.1));
  c.kind = train::ScheduleKind::kConstant;
  CHECK(train::lr_at(c, 35) == 1.0);
  CHECK(train::lr_at(c, 1000) == 1.0);

  // No warmup: step 0 already has the peak.
  c.kind = train::ScheduleKind::kCosine;
  c.warmup_steps = 0;
  c.total_steps = 100;
  c.min_lr_ratio = 0.0;
  CHECK(train::lr_at(c, 0) == 1.0);
  CHECK(train::lr_at(c, 50) == doctest::Approx(0.5));

  CHECK(train::schedule_kind_from_name("linear") == train::ScheduleKind::kLinear);
  CHECK_THROWS_WITH_AS(train::schedule_kind_from_name("step"),
                       doctest::Contains("constant, linear or cosine"), Error);
  c.warmup_steps = 200;  // more than total_steps
  CHECK_THROWS_AS(train::lr_at(c, 0), Error);
}

}  // namespace
}  // namespace resona::testing
