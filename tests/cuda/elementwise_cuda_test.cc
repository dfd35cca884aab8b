// CUDA against CPU for the elementwise ops (ops/elementwise.h): the binary ops with NumPy
// broadcasting and strided operands, the unary ops and activations, and the in-place
// add_/mul_. Forward and backward (gradients computed on the GPU against the CPU's), on
// fresh random inputs, float32 and bfloat16, odd sizes (1, 7, 4097, 1,000,003),
// contiguous operands and views: transposed, sliced with a step, offset by one element
// (contiguous but not 16-byte aligned: the vector path must not take it), expanded.
//
// bfloat16 cases run the CPU in float32 on the bf16-rounded inputs and gradients.
// Tolerances below use u = 2^-24 (float32's unit roundoff: one rounding moves a value by
// at most u of itself, one ulp is at most 2u of it) and bf16's bound: rounding to bf16
// (8-bit significand) moves a value by at most 2^-8 of itself.
#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "core/dispatch.h"
#include "cuda/elementwise.h"
#include "ops/elementwise.h"
#include "ops/reduce.h"
#include "ops/shape.h"
#include "tests/cuda/cuda_check.h"
#include "tests/test_util.h"

namespace resona::testing {
namespace {

std::string dtype_str(DType t) { return dtype_name(t); }

// |got - want| <= bound elementwise (bound a CPU tensor of the same shape), reporting the
// first element outside it.
void check_bound(const std::string& what, const Tensor& got, const Tensor& want,
                 const Tensor& bound) {
  INFO(what);
  REQUIRE(got.shape() == want.shape());
  REQUIRE(bound.shape() == want.shape());
  const std::vector<double> g = host_f32(got).to_vector<double>();
  const std::vector<double> w = want.to_vector<double>();
  const std::vector<double> b = bound.to_vector<double>();
  for (size_t i = 0; i < g.size(); ++i) {
    const double err = std::abs(g[i] - w[i]);
    if (!(err <= b[i]) && !(std::isnan(g[i]) && std::isnan(w[i])) && !(g[i] == w[i])) {
      INFO("element " << i << ": got " << g[i] << ", expected " << w[i] << " (error " << err
                      << ", allowed " << b[i] << ")");
      CHECK(false);
      return;
    }
  }
  CHECK(true);
}

// rtol * |want| + atol, as a tensor.
Tensor rel_bound(const Tensor& want, double rtol, double atol) {
  return add(mul(abs(copy_to(want, DType::kFloat64, Device::cpu())), rtol), atol);
}

// ---------------------------------------------------------------- operands as views

enum class View { kPlain, kTranspose, kStep, kOffset, kExpand };

const char* view_name(View v) {
  switch (v) {
    case View::kPlain:
      return "";
    case View::kTranspose:
      return " transposed";
    case View::kStep:
      return " step2";
    case View::kOffset:
      return " offset1";
    case View::kExpand:
      return " expanded";
  }
  return "?";
}

struct Operand {
  Shape shape;  // as the op sees it
  View view = View::kPlain;
};

std::string operand_str(const Operand& o) { return shape_str(o.shape) + view_name(o.view); }

// The leaf from which the view yields an operand of o.shape.
Shape leaf_shape(const Operand& o) {
  Shape s = o.shape;
  switch (o.view) {
    case View::kPlain:
      break;
    case View::kTranspose:
      std::swap(s[s.size() - 2], s[s.size() - 1]);
      break;
    case View::kStep:
      s.back() = 2 * s.back() + 1;
      break;  // elements 1, 3, 5, ...
    case View::kOffset:
      s.back() += 1;
      break;  // elements 1..n
    case View::kExpand:
      s[0] = 1;
      break;  // stride 0 along dim 0
  }
  return s;
}

Tensor apply_view(const Tensor& leaf, const Operand& o) {
  switch (o.view) {
    case View::kPlain:
      return leaf;
    case View::kTranspose:
      return leaf.transpose(-2, -1);
    case View::kStep:
      return leaf.slice(-1, 1, 2 * o.shape.back() + 1, 2);
    case View::kOffset:
      return leaf.slice(-1, 1, o.shape.back() + 1);
    case View::kExpand:
      return leaf.expand(o.shape);
  }
  return leaf;
}

// ---------------------------------------------------------------- the CUDA-vs-CPU runner

using Fn = std::function<Tensor(const std::vector<Tensor>&)>;

struct Bounds {
  double fwd_rtol, fwd_atol;  // forward: |g - w| <= fwd_rtol |w| + fwd_atol
  // Gradient of each leaf element: <= (bwd_rel + 2 u N_max) * S + bwd_abs * N, where S
  // is the sum of |local gradient terms| that backward adds into it (sum_to and the
  // views' backward), N how many there are and N_max the most any element gathers:
  // adding N terms in two different orders (CPU sequential, GPU blocked) differs by at
  // most 2 (N - 1) u of their absolute sum.
  double bwd_rel, bwd_abs;
};

// Per leaf element of operand i: the sum of `weights` over the output elements that
// reach it through the view and broadcasting (float64, CPU).
Tensor gather_into_leaf(const Tensor& leaf64, const Operand& o, const Shape& out_shape,
                        const Tensor& weights) {
  Tensor l = leaf64.detach().clone().set_requires_grad(true);
  Tensor z = sum(mul(apply_view(l, o).expand(out_shape), weights));
  z.backward();
  return l.grad();
}

void run_case(const std::string& name, const Fn& fn, const std::vector<Operand>& ops, double lo,
              double hi, DType dtype, const Bounds& b, uint64_t seed) {
  const std::string what = name + "; " + dtype_str(dtype);
  Generator gen(seed);
  std::vector<Tensor> vals;  // float32 CPU values of the leaves (bf16-rounded for bf16)
  for (const Operand& o : ops) {
    Tensor v = gen.uniform(leaf_shape(o), lo, hi);
    vals.push_back(dtype == DType::kBFloat16 ? round_to_bf16(v) : v);
  }
  // CPU, float32.
  std::vector<Tensor> cpu_leaves, cpu_in;
  for (size_t i = 0; i < ops.size(); ++i) {
    cpu_leaves.push_back(vals[i].clone().set_requires_grad(true));
    cpu_in.push_back(apply_view(cpu_leaves[i], ops[i]));
  }
  Tensor y = fn(cpu_in);
  Tensor dy = gen.uniform(y.shape(), -1, 1);
  if (dtype == DType::kBFloat16) dy = round_to_bf16(dy);
  y.backward(dy);
  // GPU.
  std::vector<Tensor> gpu_leaves, gpu_in;
  for (size_t i = 0; i < ops.size(); ++i) {
    gpu_leaves.push_back(copy_to(vals[i], dtype, Device::cuda()).set_requires_grad(true));
    gpu_in.push_back(apply_view(gpu_leaves[i], ops[i]));
  }
  Tensor gy = fn(gpu_in);
  REQUIRE(gy.device().is_cuda());
  REQUIRE(gy.dtype() == dtype);
  gy.backward(copy_to(dy, dtype, Device::cuda()));

  check_bound(what + ": forward", gy, y, rel_bound(y, b.fwd_rtol, b.fwd_atol));
  // Local gradient terms at full output shape, in float64, for the gradient bounds.
  std::vector<Tensor> full;
  for (size_t i = 0; i < ops.size(); ++i) {
    Tensor v64 = copy_to(vals[i], DType::kFloat64, Device::cpu());
    full.push_back(apply_view(v64, ops[i]).expand(y.shape()).clone().set_requires_grad(true));
  }
  fn(full).backward(copy_to(dy, DType::kFloat64, Device::cpu()));
  for (size_t i = 0; i < ops.size(); ++i) {
    Tensor v64 = copy_to(vals[i], DType::kFloat64, Device::cpu());
    Tensor s = gather_into_leaf(v64, ops[i], y.shape(), abs(full[i].grad()));
    Tensor n = gather_into_leaf(v64, ops[i], y.shape(), ones(y.shape(), DType::kFloat64));
    const double n_max = max(n).item();
    REQUIRE(gpu_leaves[i].grad().defined());
    REQUIRE(gpu_leaves[i].grad().device().is_cuda());
    check_bound(what + ": gradient of operand " + std::to_string(i), gpu_leaves[i].grad(),
                cpu_leaves[i].grad(), add(mul(s, b.bwd_rel + 2 * n_max * kU), mul(n, b.bwd_abs)));
  }
}

// ---------------------------------------------------------------- binary ops

using BinaryFn = Tensor (*)(const Tensor&, const Tensor&);

struct BinaryCase {
  const char* name;
  BinaryFn fn;
  double lo, hi;  // input range (div and pow need positive operands)
};

const BinaryCase kBinary[] = {
    {"add", add, -2, 2},  {"sub", sub, -2, 2},  {"mul", mul, -2, 2},
    {"div", div, 0.5, 2}, {"pow", pow, 0.5, 2},
};

// float32 forward: one IEEE operation, or powf (CUDA, <= 4 ulp) against glibc's powf
// (< 1 ulp): <= 5 ulp <= 10u; 16u leaves headroom. bfloat16 adds the output's rounding.
// Gradients: each local term is a chain of at most 4 operations (pow's
// d * (b * a^(b-1))), each within 4 ulp = 8u on either side, so the two sides' terms
// differ by <= 64u of |term| (the summation-order part is in Bounds). In bfloat16 each
// operation of that chain rounds to bf16 (b-1, a^(b-1), *b, *d: 4), each sum_to rounds
// once more (the op's and an expanded view's: 2), and the rounded exponent b-1 moves
// a^(b-1) by |log a| * 2^-8 <= 2^-8: 7 * 2^-8 of the absolute sum.
Bounds binary_bounds(DType dtype) {
  if (dtype == DType::kBFloat16) return {kBf + 16 * kU, 0, 7 * kBf + 64 * kU, 0};
  return {16 * kU, 0, 64 * kU, 0};
}

struct BinaryShapes {
  Operand a, b;
};

const std::vector<BinaryShapes>& binary_shapes() {
  static const std::vector<BinaryShapes> shapes = {
      // same shape, odd sizes (the vector path and its scalar tail)
      {{{1}}, {{1}}},
      {{{7}}, {{7}}},
      {{{4097}}, {{4097}}},
      {{{1000003}}, {{1000003}}},
      // one-element and 0-D operands
      {{{4097}}, {{1}}},
      {{{1}}, {{4097}}},
      {{{1000003}}, {Shape{}}},
      // NumPy broadcasting
      {{{3, 4, 5}}, {{4, 1}}},
      {{{5, 1}}, {{1, 6}}},
      {{{2, 1, 6}}, {{5, 1}}},
      {{{2, 3, 4, 5, 6}}, {{3, 1, 5, 1}}},
      // strided views
      {{{33, 65}, View::kTranspose}, {{33, 65}, View::kStep}},
      {{{4, 129}, View::kExpand}, {{4, 129}, View::kTranspose}},
      {{{17, 9}, View::kStep}, {{9}}},
      {{{4097}, View::kOffset}, {{4097}}},
      {{{1000003}, View::kOffset}, {{1000003}, View::kOffset}},
      {{{6, 31}, View::kTranspose}, {{31}, View::kStep}},
  };
  return shapes;
}

}  // namespace

RESONA_GPU_TEST(
    "binary elementwise CUDA vs CPU, forward and backward (add, sub, mul, div, pow; "
    "a,b = [1],[1] [7],[7] [4097],[4097] [1000003],[1000003] [4097],[1] [1],[4097] "
    "[1000003],[] [3,4,5],[4,1] [5,1],[1,6] [2,1,6],[5,1] [2,3,4,5,6],[3,1,5,1] "
    "[33,65]T,[33,65]step2 [4,129]expanded,[4,129]T [17,9]step2,[9] [4097]offset1,[4097] "
    "[1000003]offset1,[1000003]offset1 [6,31]T,[31]step2; float32, bfloat16)") {
  uint64_t seed = 100;
  for (const BinaryCase& c : kBinary) {
    for (const BinaryShapes& s : binary_shapes()) {
      for (DType dt : {DType::kFloat32, DType::kBFloat16}) {
        const std::string name =
            std::string(c.name) + "(a=" + operand_str(s.a) + ", b=" + operand_str(s.b) + ")";
        BinaryFn fn = c.fn;
        run_case(
            name, [fn](const std::vector<Tensor>& in) { return fn(in[0], in[1]); }, {s.a, s.b},
            c.lo, c.hi, dt, binary_bounds(dt), seed++);
      }
    }
  }
}

namespace {

// ---------------------------------------------------------------- unary ops

struct UnaryCase {
  const char* name;
  std::function<Tensor(const Tensor&)> fn;
  double lo, hi;
};

const std::vector<UnaryCase>& unary_cases() {
  static const std::vector<UnaryCase> cases = {
      {"neg", [](const Tensor& x) { return neg(x); }, -4, 4},
      {"exp", [](const Tensor& x) { return exp(x); }, -4, 4},
      {"log", [](const Tensor& x) { return log(x); }, 0.1, 4},
      {"sqrt", [](const Tensor& x) { return sqrt(x); }, 0.1, 4},
      {"rsqrt", [](const Tensor& x) { return rsqrt(x); }, 0.1, 4},
      {"abs", [](const Tensor& x) { return abs(x); }, -4, 4},
      {"sigmoid", [](const Tensor& x) { return sigmoid(x); }, -4, 4},
      {"tanh", [](const Tensor& x) { return tanh(x); }, -4, 4},
      {"silu", [](const Tensor& x) { return silu(x); }, -4, 4},
      // The sigmoid's exp(-|x|) down to ~1e-13 and its hardware reciprocal over (1, 2].
      {"silu(x in [-30,30])", [](const Tensor& x) { return silu(x); }, -30, 30},
      {"sigmoid(x in [-30,30])", [](const Tensor& x) { return sigmoid(x); }, -30, 30},
      {"gelu", [](const Tensor& x) { return gelu(x); }, -4, 4},
      {"softplus", [](const Tensor& x) { return softplus(x); }, -4, 4},
      {"softplus(x in [15,25], across the linear threshold 20)",
       [](const Tensor& x) { return softplus(x); }, 15, 25},
      {"relu", [](const Tensor& x) { return relu(x); }, -4, 4},
      {"add(x, 0.75)", [](const Tensor& x) { return add(x, 0.75); }, -4, 4},
      {"mul(x, -1.5)", [](const Tensor& x) { return mul(x, -1.5); }, -4, 4},
      {"pow(x, 2.5)", [](const Tensor& x) { return pow(x, 2.5); }, 0.1, 4},
  };
  return cases;
}

// float32: each formula makes at most 3 math-library calls (CUDA's expf, erff, tanhf,
// log1pf, powf are within 4 ulp, glibc's within 1) and a few rounded operations: <= 16
// ulp = 32u of the result. Where a formula cancels (1 + erf(x) for x < 0 in gelu,
// 1 - y^2 in tanh's backward) the error is that many ulps of the O(1) cancelled terms
// instead, hence the same 32u absolute (results here are at most exp(4) ~ 55).
// bfloat16 forward: plus the output's rounding, 2^-8 relative. bfloat16 backward reads
// y as stored in bf16 (the CPU's is float32): rsqrt's dy * y^3 carries y's rounding
// three times, plus the output's: 4 * 2^-8 relative, and an expanded input's sum_to
// rounds once more: 5 * 2^-8; tanh's 1 - y^2 and sigmoid's y (1 - y) turn y's 2^-8 into
// up to 2 * 2^-8 absolute per term (|y| <= 1, |dy| <= 1).
Bounds unary_bounds(DType dtype) {
  if (dtype == DType::kBFloat16) {
    return {kBf + 32 * kU, 32 * kU, 5 * kBf + 32 * kU, 2 * kBf + 32 * kU};
  }
  return {32 * kU, 32 * kU, 32 * kU, 32 * kU};
}

const std::vector<Operand>& unary_shapes() {
  static const std::vector<Operand> shapes = {
      {{1}},
      {{7}},
      {{4097}},
      {{1000003}},
      {{33, 65}, View::kTranspose},
      {{17, 40}, View::kStep},
      {{5, 129}, View::kExpand},
      {{4097}, View::kOffset},
  };
  return shapes;
}

}  // namespace

RESONA_GPU_TEST(
    "unary elementwise CUDA vs CPU, forward and backward (neg, exp, log, sqrt, rsqrt, abs, "
    "sigmoid, tanh, silu, gelu, softplus, relu, add/mul/pow scalar; silu and sigmoid also "
    "on [-30,30]; x = [1] [7] [4097] "
    "[1000003] [33,65]T [17,40]step2 [5,129]expanded [4097]offset1; float32, bfloat16)") {
  uint64_t seed = 5000;
  for (const UnaryCase& c : unary_cases()) {
    for (const Operand& o : unary_shapes()) {
      for (DType dt : {DType::kFloat32, DType::kBFloat16}) {
        const std::string name = std::string(c.name) + " (x=" + operand_str(o) + ")";
        auto fn = c.fn;
        run_case(
            name, [fn](const std::vector<Tensor>& in) { return fn(in[0]); }, {o}, c.lo, c.hi, dt,
            unary_bounds(dt), seed++);
      }
    }
  }
}

namespace {

// add_(dst, src, alpha) and mul_(dst, s) on a view of a CUDA tensor, against the CPU.
void check_in_place(const std::string& name, const Shape& base_shape, bool transpose, bool offset,
                    const Shape& src_shape, DType dtype, uint64_t seed) {
  const std::string what = name + "(dst=" + shape_str(base_shape) +
                           (transpose ? " transposed" : "") + (offset ? " offset1" : "") +
                           ", src=" + shape_str(src_shape) + "; " + dtype_str(dtype) + ")";
  INFO(what);
  Generator gen(seed);
  Tensor base = gen.uniform(base_shape, -2, 2);
  Tensor src = gen.uniform(src_shape, -2, 2);
  if (dtype == DType::kBFloat16) {
    base = round_to_bf16(base);
    src = round_to_bf16(src);
  }
  Tensor gbase = copy_to(base, dtype, Device::cuda());
  Tensor gsrc = copy_to(src, dtype, Device::cuda());
  auto view_of = [&](const Tensor& t) {
    Tensor v = transpose ? t.transpose(0, 1) : t;
    return offset ? v.slice(-1, 1, v.size(-1)) : v;
  };
  Tensor cv = view_of(base), gv = view_of(gbase);
  if (name == "add_") {
    add_(cv, src, -0.5);
    add_(gv, gsrc, -0.5);
  } else {
    mul_(cv, -1.25);
    mul_(gv, -1.25);
  }
  // float32: a + alpha*b (possibly fused into one FMA on either side) differs by at most
  // one rounding of |alpha*b| <= 1 plus one of the result: 2u of (|result| + 1).
  // bfloat16: plus the result's rounding, 2^-8 relative. Elements outside the view must
  // be untouched: their bound is 2u absolute but they are equal.
  const double rtol = dtype == DType::kBFloat16 ? kBf + 2 * kU : 2 * kU;
  check_bound(what, gbase, base, rel_bound(base, rtol, 2 * kU));
}

}  // namespace

RESONA_GPU_TEST(
    "in-place add_/mul_ CUDA vs CPU (dst, src = [1000003],[1000003]; [9,33] transposed,[9]; "
    "[9,34] transposed offset1,[34,1]; [4,4098] offset1,[4097]; float32, bfloat16)") {
  uint64_t seed = 9000;
  for (DType dt : {DType::kFloat32, DType::kBFloat16}) {
    for (const char* op : {"add_", "mul_"}) {
      check_in_place(op, {1000003}, false, false, {1000003}, dt, seed++);
      check_in_place(op, {9, 33}, true, false, {9}, dt, seed++);
      check_in_place(op, {9, 34}, true, true, {34, 1}, dt, seed++);
      check_in_place(op, {4, 4098}, false, true, {4097}, dt, seed++);
    }
  }
}

TEST_CASE(
    "make_strided_dims: drops size-1 dims, orders by the output's strides, merges "
    "contiguous runs, refuses more than 8 dims") {
  auto dims2 = [](const Shape& shape, const Shape& s0, const Shape& s1) {
    const int64_t* st[2] = {s0.data(), s1.data()};
    cuda::StridedDims<2> d;
    const bool ok = cuda::make_strided_dims<2>(static_cast<int>(shape.size()), shape.data(), st, d);
    REQUIRE(ok);
    return d;
  };
  // Contiguous with contiguous: one run.
  cuda::StridedDims<2> d = dims2({2, 3, 4}, {12, 4, 1}, {12, 4, 1});
  REQUIRE(d.ndim == 1);
  CHECK(d.shape[0] == 24);
  CHECK((d.strides[0][0] == 1 && d.strides[1][0] == 1));
  // A broadcast operand [1, 3, 1] keeps every dim apart.
  d = dims2({2, 3, 4}, {12, 4, 1}, {0, 1, 0});
  REQUIRE(d.ndim == 3);
  CHECK((d.shape[0] == 2 && d.shape[1] == 3 && d.shape[2] == 4));
  CHECK((d.strides[1][0] == 0 && d.strides[1][1] == 1 && d.strides[1][2] == 0));
  // Size-1 dims vanish; a one-element tensor has no dims left.
  d = dims2({1, 5, 1}, {5, 1, 1}, {0, 7, 3});
  REQUIRE(d.ndim == 1);
  CHECK((d.shape[0] == 5 && d.strides[1][0] == 7));
  CHECK(dims2({1, 1}, {1, 1}, {0, 0}).ndim == 0);
  // A transposed output is walked in its memory order: [3, 4] with strides (1, 3) becomes
  // [4, 3] with (3, 1); the contiguous input then has strides (1, 4).
  d = dims2({3, 4}, {1, 3}, {4, 1});
  REQUIRE(d.ndim == 2);
  CHECK((d.shape[0] == 4 && d.shape[1] == 3));
  CHECK((d.strides[0][0] == 3 && d.strides[0][1] == 1));
  CHECK((d.strides[1][0] == 1 && d.strides[1][1] == 4));
  // Nine dims no merging shortens.
  Shape shape(9, 2), fwd(9), rev(9);
  for (int i = 0; i < 9; ++i) {
    fwd[i] = int64_t{1} << (8 - i);
    rev[i] = int64_t{1} << i;
  }
  const int64_t* st[2] = {fwd.data(), rev.data()};
  cuda::StridedDims<2> nine;
  CHECK_FALSE(cuda::make_strided_dims<2>(9, shape.data(), st, nine));
}

TEST_CASE("CUDA elementwise ops refuse cases they do not support, naming them") {
  if (!cuda_available()) {
    // Without a GPU, creating a CUDA tensor fails with a message saying why.
    CHECK_THROWS_WITH_AS(zeros({2}, DType::kFloat32, Device::cuda()),
                         doctest::Contains("cuda:0 requested but 0 CUDA device(s) are visible"),
                         Error);
    return;
  }
  Tensor c = zeros({2, 3}, DType::kFloat64, Device::cuda());
  CHECK_THROWS_WITH_AS(add(c, c), doctest::Contains("CUDA supports float32 and bfloat16"), Error);
  CHECK_THROWS_WITH_AS(exp(c), doctest::Contains("exp: CUDA supports float32 and bfloat16"), Error);
  // Nine dims that no merging can shorten (each operand steps through them in opposite
  // orders): more than the kernels index.
  Tensor x = zeros({2, 2, 2, 2, 2, 2, 2, 2, 2}, DType::kFloat32, Device::cuda())
                 .permute({8, 7, 6, 5, 4, 3, 2, 1, 0})
                 .set_name("x9");
  CHECK_THROWS_WITH_AS(exp(x), doctest::Contains("x9 [2, 2, 2, 2, 2, 2, 2, 2, 2]"), Error);
  CHECK_THROWS_WITH_AS(exp(x), doctest::Contains("more than 8 dims"), Error);
  // In place into a broadcast view would have threads race on one element.
  Tensor row = zeros({1, 4}, DType::kFloat32, Device::cuda());
  Tensor wide = row.expand({3, 4});
  CHECK_THROWS_WITH_AS(add_(wide, zeros({3, 4}, DType::kFloat32, Device::cuda())),
                       doctest::Contains("cannot be written in place"), Error);
}

}  // namespace resona::testing
