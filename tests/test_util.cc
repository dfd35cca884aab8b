#include "tests/test_util.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "cuda/backend.h"
#include "ops/elementwise.h"  // add, mul
#include "ops/op_list.h"
#include "ops/reduce.h"  // sum
#include "ops/shape.h"   // concat

namespace resona::testing {

bool cuda_available() {
  cuda::register_cuda_backend();  // test registration runs before other static initialisers
  return backend_available(DeviceType::kCUDA);
}

void check_rel(const Tensor& got, const std::vector<double>& ref, double rms_tol, double max_tol) {
  REQUIRE(got.numel() == static_cast<int64_t>(ref.size()));
  const std::vector<double> g = got.to_vector<double>();
  double num = 0, den = 0, worst = 0;
  bool finite = true;
  for (size_t i = 0; i < g.size(); ++i) {
    finite = finite && std::isfinite(g[i]);
    num += (g[i] - ref[i]) * (g[i] - ref[i]);
    den += ref[i] * ref[i];
    worst = std::max(worst, std::abs(g[i] - ref[i]));
  }
  const double rms = std::sqrt(den / std::max<size_t>(g.size(), 1));
  INFO(got.describe() << ": relative RMS error " << std::sqrt(num / den) << ", max error " << worst
                      << " with reference RMS " << rms);
  CHECK(finite);
  CHECK(std::sqrt(num) <= rms_tol * std::sqrt(den));
  CHECK(worst <= max_tol * rms);
}

void check_contains(const std::string& msg, const std::string& needle) {
  INFO("message: " << msg);
  INFO("expected to contain: " << needle);
  CHECK(msg.find(needle) != std::string::npos);
}

Tensor out_and_state(const RecurrentOutput& r) {
  return concat({r.out.reshape({-1}), r.final_state.reshape({-1})}, 0);
}

void check_split_sequence(
    std::vector<Tensor> leaves, const Tensor& h0, int64_t T,
    const std::function<RecurrentOutput(int64_t, int64_t, const Tensor&)>& run, const Tensor& d_out,
    const Tensor& d_state, const std::vector<int64_t>& splits, double atol, double rtol) {
  auto loss = [&](const RecurrentOutput& r) {
    return add(sum(mul(r.out, d_out)), sum(mul(r.final_state, d_state)));
  };
  auto take_grads = [&] {
    std::vector<Tensor> g;
    for (Tensor& t : leaves) {
      REQUIRE(t.grad().defined());
      g.push_back(t.grad());
      t.set_grad(Tensor());
    }
    return g;
  };
  for (const Tensor& t : leaves) REQUIRE_FALSE(t.grad().defined());
  const RecurrentOutput full = run(0, T, h0);
  loss(full).backward();
  const std::vector<Tensor> g_full = take_grads();
  for (int64_t t : splits) {
    INFO("split at t=" << t);
    const RecurrentOutput first = run(0, t, h0);
    const RecurrentOutput second = run(t, T, first.final_state);
    const RecurrentOutput joined{concat({first.out, second.out}, 1), second.final_state};
    check_close(joined.out, full.out, atol, rtol);
    check_close(joined.final_state, full.final_state, atol, rtol);
    loss(joined).backward();
    const std::vector<Tensor> g_split = take_grads();
    for (size_t i = 0; i < leaves.size(); ++i) {
      INFO("gradient of leaf " << i << " " << leaves[i].describe());
      check_close(g_split[i], g_full[i], atol, rtol);
    }
  }
}

Tensor leaf(Generator& gen, const Shape& shape, double lo, double hi) {
  Tensor t = gen.uniform(shape, lo, hi, DType::kFloat64);
  t.set_requires_grad(true);
  return t;
}

Tensor values(const std::vector<double>& v, const Shape& shape, bool grad) {
  Tensor t = from_vector(v, shape);
  if (grad) t.set_requires_grad(true);
  return t;
}

void check_close(const Tensor& t, const std::vector<double>& expected, double atol, double rtol) {
  REQUIRE(t.numel() == static_cast<int64_t>(expected.size()));
  std::vector<double> got = t.to_vector<double>();
  for (size_t i = 0; i < got.size(); ++i) {
    const double err = std::abs(got[i] - expected[i]);
    const bool ok = err <= atol + rtol * std::abs(expected[i]) ||
                    (std::isnan(got[i]) && std::isnan(expected[i])) ||
                    (std::isinf(got[i]) && got[i] == expected[i]);
    if (!ok) {
      INFO("element " << i << " of " << t.describe() << ": got " << got[i] << ", expected "
                      << expected[i] << " (abs err " << err << ")");
      CHECK(ok);
      return;
    }
  }
  CHECK(true);
}

void check_close(const Tensor& t, const Tensor& expected, double atol, double rtol) {
  REQUIRE(t.shape() == expected.shape());
  check_close(t, expected.to_vector<double>(), atol, rtol);
}

void check_gradients(const std::function<Tensor(const std::vector<Tensor>&)>& f,
                     const std::vector<Tensor>& inputs, const GradcheckOptions& opt) {
  GradcheckResult r = gradcheck(f, inputs, opt);
  INFO(r.report);
  CHECK(r.ok);
}

namespace {
std::vector<OpTestRecord>& registry() {
  static std::vector<OpTestRecord> r;
  return r;
}
}  // namespace

bool register_op_test(const char* op, OpTestKind kind, const char* title) {
  if (!is_registered_op(op)) {
    std::fprintf(stderr, "RESONA_OP_TEST: '%s' (test '%s') is not in RESONA_OPS\n", op, title);
    std::abort();
  }
  registry().push_back({op, kind, title});
  return true;
}

const std::vector<OpTestRecord>& op_tests() { return registry(); }

}  // namespace resona::testing
