// CUDA against CPU for the reductions (ops/reduce.h): sum, mean, max, logsumexp and
// argmax over chosen dims with and without keepdim, forward and backward (gradients
// computed on the GPU against the CPU's), on fresh random inputs in float32 and
// bfloat16: odd sizes (1, 7, 4097, 1,000,003), rows (the reduced dims last), the outer
// dim of [R, C] and a middle block of [A, R, C] (reduced without a transpose), reductions
// split into chunks (a second pass over partial states), contiguous rows (a warp or a
// block per row, 16-byte loads; row lengths off the vector width, misaligned bases),
// dims that are not one block and non-contiguous inputs (transposed, sliced with a step,
// expanded).
//
// Values and gradients are checked against the CPU's float64 path on the same values
// (the float32 CPU path's own sequential rounding, up to ~1e-4 relative over a million
// terms, would dominate the comparison); bfloat16 cases use the bf16-rounded values.
// u = 2^-24 is float32's unit roundoff; rounding to bf16 moves a value by at most 2^-8
// of itself.
#include <cmath>
#include <string>
#include <vector>

#include "cuda/reduce.h"
#include "ops/elementwise.h"
#include "ops/reduce.h"
#include "ops/shape.h"
#include "tests/cuda/cuda_check.h"
#include "tests/test_util.h"

namespace resona::testing {
namespace {

Tensor host(const Tensor& t, DType dtype = DType::kFloat32) {
  return copy_to(t.detach(), dtype, Device::cpu());
}

// |got - want| <= bound elementwise, reporting the first element outside it.
void check_bound(const std::string& what, const Tensor& got, const Tensor& want,
                 const Tensor& bound) {
  INFO(what);
  REQUIRE(got.shape() == want.shape());
  REQUIRE(bound.shape() == want.shape());
  const std::vector<double> g = host(got, DType::kFloat64).to_vector<double>();
  const std::vector<double> w = want.to_vector<double>();
  const std::vector<double> b = bound.to_vector<double>();
  for (size_t i = 0; i < g.size(); ++i) {
    const double err = std::abs(g[i] - w[i]);
    if (!(err <= b[i]) && !(g[i] == w[i])) {
      INFO("element " << i << ": got " << g[i] << ", expected " << w[i] << " (error " << err
                      << ", allowed " << b[i] << ")");
      CHECK(false);
      return;
    }
  }
  CHECK(true);
}

Tensor f64(const Tensor& t) { return host(t, DType::kFloat64); }

// kOffset: a contiguous view one element into a flat buffer, so that x's base (and for
// some row lengths every row) is not 16-byte aligned.
enum class View { kPlain, kTranspose, kStep, kExpand, kOffset };

struct ReduceCase {
  Shape shape;  // of the reduced tensor
  View view;
  std::vector<int64_t> dims;
  bool keepdim;
};

std::string case_str(const char* op, const ReduceCase& c) {
  static const char* views[] = {"", " transposed", " step2", " expanded", " offset1"};
  return std::string(op) + "(x=" + shape_str(c.shape) + views[static_cast<int>(c.view)] +
         ", dims=" + shape_str(c.dims) + ", keepdim=" + (c.keepdim ? "true" : "false") + ")";
}

Shape leaf_shape(const ReduceCase& c) {
  Shape s = c.shape;
  switch (c.view) {
    case View::kPlain:
      break;
    case View::kTranspose:
      std::swap(s[s.size() - 2], s[s.size() - 1]);
      break;
    case View::kStep:
      s.back() = 2 * s.back() + 1;
      break;
    case View::kExpand:
      s[0] = 1;
      break;
    case View::kOffset: {
      int64_t n = 1;
      for (int64_t e : c.shape) n *= e;
      return Shape{n + 1};
    }
  }
  return s;
}

Tensor apply_view(const Tensor& leaf, const ReduceCase& c) {
  switch (c.view) {
    case View::kPlain:
      return leaf;
    case View::kTranspose:
      return leaf.transpose(-2, -1);
    case View::kStep:
      return leaf.slice(-1, 1, 2 * c.shape.back() + 1, 2);
    case View::kExpand:
      return leaf.expand(c.shape);
    case View::kOffset:
      return leaf.slice(0, 1, leaf.size(0)).reshape(c.shape);
  }
  return leaf;
}

// The longest chain of float32 additions (or combines) an element goes through in
// cuda/reduce.cu for [A, R, C]: its thread's sequential run, the block's tree over `by`
// threads, and, when split into chunks, the same again over the chunks' states. The
// contiguous-rows kernel (rt threads per row): a thread's head and tail elements and
// ceil(body vectors / rt) vectors of <= 8 elements (<= R / rt + 10 terms), then 5
// shuffle levels per warp and 5 more across the warps of a block.
int64_t chain_length(int64_t A, int64_t R, int64_t C) {
  const int64_t rt = cuda::reduce_row_threads(A, R, C);
  if (rt > 0) return (R + rt - 1) / rt + 10 + (rt > 32 ? 10 : 5);
  const cuda::ReduceShape s = cuda::reduce_shape(A, R, C);
  const int64_t tree = static_cast<int64_t>(std::ceil(std::log2(static_cast<double>(s.by))));
  int64_t d = (s.chunk_rows + s.by - 1) / s.by + tree;
  if (s.chunks > 1) d += (s.chunks + s.by - 1) / s.by + tree;
  return d;
}

// The longest chain for this case over both layouts the op may pick (x itself as
// [A, R, C] when contiguous with one block of reduced dims, else permuted rows).
int64_t chain_length(const ReduceCase& c) {
  const int64_t nd = static_cast<int64_t>(c.shape.size());
  std::vector<bool> reduced(nd, c.dims.empty());
  for (int64_t d : c.dims) reduced[d < 0 ? d + nd : d] = true;
  int64_t outer = 1, inner = 1, A = 1, R = 1, C = 1;
  int phase = 0;
  for (int64_t d = 0; d < nd; ++d) {
    (reduced[d] ? inner : outer) *= c.shape[d];
    if (c.shape[d] == 1) continue;
    if (reduced[d]) {
      phase = 1;
      R *= c.shape[d];
    } else {
      if (phase == 1) phase = 2;
      (phase == 0 ? A : C) *= c.shape[d];
    }
  }
  return std::max(chain_length(outer, inner, 1), chain_length(A, R, C));
}

const std::vector<ReduceCase>& cases() {
  static const std::vector<ReduceCase> list = {
      {{1}, View::kPlain, {}, false},
      {{7}, View::kPlain, {}, false},
      {{4097}, View::kPlain, {0}, true},
      {{1000003}, View::kPlain, {}, false},          // one row, split into chunks
      {{4097, 7}, View::kPlain, {1}, true},          // short rows
      {{4097, 7}, View::kPlain, {0}, false},         // the outer dim of [R, C]
      {{100000, 3}, View::kPlain, {0}, false},       // outer dim, split into chunks
      {{3, 1000, 33}, View::kPlain, {1}, false},     // a middle block
      {{2, 50000, 40}, View::kPlain, {1}, true},     // a middle block, chunks
      {{3, 1000, 33}, View::kPlain, {0, 2}, false},  // not one block: permuted rows
      {{3, 1000, 33}, View::kPlain, {-1}, true},
      {{2, 3, 4, 5}, View::kPlain, {1, 3}, true},
      {{2, 3, 4, 5}, View::kPlain, {1, 2}, false},
      {{129, 64}, View::kTranspose, {1}, false},
      {{129, 64}, View::kTranspose, {0}, true},
      {{50, 200}, View::kStep, {1}, false},
      {{50, 200}, View::kStep, {0, 1}, false},
      {{40, 300}, View::kExpand, {0}, false},
      {{40, 300}, View::kExpand, {1}, true},
      // Contiguous rows (cuda::reduce_row_threads): a warp per row (short rows, or many
      // rows), a block per row (few long rows), row lengths that are not a multiple of
      // the vector width (rows start off 16-byte boundaries), misaligned bases.
      {{2500, 77}, View::kPlain, {1}, false},
      {{3, 4097}, View::kPlain, {1}, true},
      {{2100, 1029}, View::kPlain, {-1}, false},
      {{5, 1000}, View::kOffset, {1}, false},
      {{2200, 33}, View::kOffset, {1}, true},
      {{3, 5000}, View::kOffset, {-1}, false},
  };
  return list;
}

enum class Op { kSum, kMean, kMax, kLogsumexp };
const char* op_name(Op op) {
  switch (op) {
    case Op::kSum:
      return "sum";
    case Op::kMean:
      return "mean";
    case Op::kMax:
      return "max";
    case Op::kLogsumexp:
      return "logsumexp";
  }
  return "?";
}

Tensor run_op(Op op, const Tensor& x, const ReduceCase& c) {
  switch (op) {
    case Op::kSum:
      return sum(x, c.dims, c.keepdim);
    case Op::kMean:
      return mean(x, c.dims, c.keepdim);
    case Op::kMax:
      return max(x, c.dims, c.keepdim);
    case Op::kLogsumexp:
      return logsumexp(x, c.dims, c.keepdim);
  }
  return Tensor();
}

void check_reduction(Op op, const ReduceCase& c, DType dtype, uint64_t seed) {
  const std::string what = case_str(op_name(op), c) + "; " + dtype_name(dtype);
  Generator gen(seed);
  Tensor v = gen.uniform(leaf_shape(c), -2, 2);
  if (dtype == DType::kBFloat16) v = round_to_bf16(v);
  // CPU reference in float64, with autograd.
  Tensor leaf = f64(v).set_requires_grad(true);
  Tensor y64 = run_op(op, apply_view(leaf, c), c);
  Tensor dy = gen.uniform(y64.shape(), -1, 1);
  if (dtype == DType::kBFloat16) dy = round_to_bf16(dy);
  y64.backward(f64(dy));
  Tensor x64 = apply_view(f64(v), c);
  // S: per leaf element, the sum of |the gradient terms| backward adds into it (every
  // op here maps d_out to d_x with non-negative weights, so that is backward of |d_out|);
  // N: how many terms (an expanded view's backward sums over its stretched dim).
  Tensor sleaf = f64(v).set_requires_grad(true);
  run_op(op, apply_view(sleaf, c), c).backward(abs(f64(dy)));
  const Tensor S = sleaf.grad();
  const double N = c.view == View::kExpand ? static_cast<double>(c.shape[0]) : 1.0;
  // GPU.
  Tensor gleaf = copy_to(v, dtype, Device::cuda()).set_requires_grad(true);
  Tensor gy = run_op(op, apply_view(gleaf, c), c);
  REQUIRE(gy.device().is_cuda());
  REQUIRE(gy.dtype() == dtype);
  REQUIRE(gy.shape() == y64.shape());
  gy.backward(copy_to(dy, dtype, Device::cuda()));
  REQUIRE(gleaf.grad().defined());
  REQUIRE(gleaf.grad().device().is_cuda());

  const bool bf = dtype == DType::kBFloat16;
  const double round_out = bf ? kBf : 0;  // the bf16 output's rounding, relative
  // The expanded view's backward adds N float32 terms (<= (N - 1) u of S) and rounds the
  // bf16 sum once (2^-8 of it <= 2^-8 S); every gradient bound below is relative to S,
  // which is |the gradient| when N = 1.
  const double expand_sum = N > 1 ? N * kU + round_out : 0.0;
  auto grad_bound = [&](double rel) { return mul(S, rel + expand_sum); };
  const double D = static_cast<double>(chain_length(c));
  const Tensor abs_y = abs(y64);
  switch (op) {
    case Op::kSum: {
      // Any order of float32 additions in which each term passes through at most D of
      // them errs by at most D u of the sum of |x| (Higham, 4.2); the float64 reference
      // is exact to far below that. bf16 then rounds the float32 sum r: 2^-8 |r| <=
      // 2^-8 (|y| + D u S), which 2^-8 |y| + u S covers (D < 256).
      Tensor s = sum(abs(x64), c.dims, c.keepdim);
      check_bound(what + ": forward", gy, y64, add(mul(s, (D + 2) * kU), mul(abs_y, round_out)));
      // Backward broadcasts d_out: a copy, exact.
      check_bound(what + ": gradient", gleaf.grad(), leaf.grad(), grad_bound(0));
      break;
    }
    case Op::kMean: {
      // The sum's bound divided by the count, plus the division's rounding.
      Tensor s = mean(abs(x64), c.dims, c.keepdim);
      check_bound(what + ": forward", gy, y64,
                  add(mul(s, (D + 2) * kU), mul(abs_y, kU + round_out)));
      // Backward: d_out * float32(1/count), two roundings (u each) against float64, then
      // broadcast; bf16 rounds the product once.
      check_bound(what + ": gradient", gleaf.grad(), leaf.grad(), grad_bound(2 * kU + round_out));
      break;
    }
    case Op::kMax: {
      // No arithmetic: the same value, and the gradient at the same (first) maximum.
      check_bound(what + ": forward", gy, y64, zeros_like(y64));
      check_bound(what + ": gradient", gleaf.grad(), leaf.grad(), grad_bound(0));
      break;
    }
    case Op::kLogsumexp: {
      // m = max is exact. s = sum exp(x - m): each term has expf's 4 ulp (8u), at most D
      // additions and at most D rescalings by expf(m_old - m_new) (8u + u each) on its
      // chain, all positive: s is within (10 D + 8) u relative, so log s within that
      // absolute; logf and m + log s add 4u of |out|.
      const double lse_abs = (10 * D + 8) * kU;
      check_bound(what + ": forward", gy, y64, add(mul(abs_y, 4 * kU + round_out), lse_abs));
      // Backward d * exp(x - out): out's error above, x - out's rounding (u of
      // |x - out|), expf's 8u and the product's u. bf16 rounds out itself (2^-8 |out|)
      // and x - out (2^-8 |x - out|), which moves the exponential by a factor up to
      // exp(2^-8 (|out| + |x - out|)), then rounds the exponential and the product
      // (1 + 2^-8 each).
      Tensor out_keep = logsumexp(x64, c.dims, /*keepdim=*/true);
      const double max_gap = max(abs(sub(x64, out_keep))).item();
      const double max_out = max(abs(out_keep)).item();
      const double r_bf = std::exp(kBf * (max_out + max_gap)) * (1 + kBf) * (1 + kBf) - 1;
      const double r = lse_abs + 4 * kU * max_out + (10 + max_gap) * kU + (bf ? r_bf : 0.0);
      check_bound(what + ": gradient", gleaf.grad(), leaf.grad(), grad_bound(r));
      break;
    }
  }
}

}  // namespace

RESONA_GPU_TEST(
    "reductions CUDA vs CPU, forward and backward (sum, mean, max, logsumexp; x, dims = "
    "[1] all, [7] all, [4097] 0 keep, [1000003] all, [4097,7] 1 keep, [4097,7] 0, "
    "[100000,3] 0, [3,1000,33] 1, [2,50000,40] 1 keep, [3,1000,33] 0,2, [3,1000,33] -1 "
    "keep, [2,3,4,5] 1,3 keep, [2,3,4,5] 1,2, [129,64]T 1, [129,64]T 0 keep, [50,200]step2 "
    "1, [50,200]step2 all, [40,300]expanded 0, [40,300]expanded 1 keep, [2500,77] 1, "
    "[3,4097] 1 keep, [2100,1029] -1, [5,1000]offset1 1, [2200,33]offset1 1 keep, "
    "[3,5000]offset1 -1; float32, bfloat16)") {
  uint64_t seed = 700;
  for (Op op : {Op::kSum, Op::kMean, Op::kMax, Op::kLogsumexp}) {
    for (const ReduceCase& c : cases()) {
      for (DType dt : {DType::kFloat32, DType::kBFloat16}) check_reduction(op, c, dt, seed++);
    }
  }
}

RESONA_GPU_TEST(
    "argmax CUDA vs CPU: the first maximum (x = [4097,7] dim 0 and 1, [3,1000,33] dim 1, "
    "[129,64] transposed dim 0, [1000003] dim 0, [2100,100] dim 1, [5,3000] dim 1, bf16-rounded "
    "values with many ties, and "
    "all-equal rows; float32, bfloat16)") {
  Generator gen(42);
  struct ArgCase {
    Shape shape;
    bool transpose;
    int64_t dim;
  };
  const ArgCase list[] = {{{4097, 7}, false, 0}, {{4097, 7}, false, 1}, {{3, 1000, 33}, false, 1},
                          {{129, 64}, true, 0},  {{1000003}, false, 0}, {{2100, 100}, false, 1},
                          {{5, 3000}, false, 1}};
  for (DType dt : {DType::kFloat32, DType::kBFloat16}) {
    for (const ArgCase& c : list) {
      for (bool keepdim : {false, true}) {
        INFO("argmax(x=" << shape_str(c.shape) << (c.transpose ? " transposed" : "")
                         << ", dim=" << c.dim << ", keepdim=" << keepdim << "; "
                         << std::string(dtype_name(dt)) << ")");
        // Multiples of 1/8 in [-2, 2]: 33 values, exact in bf16, so most maxima are tied
        // and the first-maximum rule decides.
        std::vector<double> xs = gen.uniform(c.shape, -2, 2, DType::kFloat64).to_vector<double>();
        for (double& e : xs) e = std::floor(e * 8) / 8;
        Tensor rounded = from_vector_as(xs, c.shape, DType::kFloat32);
        Tensor x = c.transpose ? rounded.transpose(0, 1) : rounded;
        Tensor gx = c.transpose ? copy_to(rounded, dt, Device::cuda()).transpose(0, 1)
                                : copy_to(rounded, dt, Device::cuda());
        Tensor want = argmax(x, c.dim, keepdim);
        Tensor got = argmax(gx, c.dim, keepdim);
        REQUIRE(got.device().is_cuda());
        REQUIRE(got.dtype() == DType::kInt64);
        REQUIRE(got.shape() == want.shape());
        CHECK(host(got, DType::kInt64).to_vector<int64_t>() == want.to_vector<int64_t>());
      }
    }
    // All-equal rows: index 0 everywhere.
    Tensor same = full({5, 9}, 0.5, dt, Device::cuda());
    CHECK(host(argmax(same, 1), DType::kInt64).to_vector<int64_t>() == std::vector<int64_t>(5, 0));
  }
}

RESONA_GPU_TEST(
    "reductions on CUDA are deterministic: bit-identical repeats ([1000003] all, "
    "[2,50000,40] dim 1, [2100,1029] dim 1, [3,5000] dim 1; sum, logsumexp; float32)") {
  Generator gen(77);
  for (const Shape& shape :
       {Shape{1000003}, Shape{2, 50000, 40}, Shape{2100, 1029}, Shape{3, 5000}}) {
    Tensor x = copy_to(gen.uniform(shape, -2, 2), DType::kFloat32, Device::cuda());
    const std::vector<int64_t> dims =
        shape.size() == 1 ? std::vector<int64_t>{} : std::vector<int64_t>{1};
    for (int op = 0; op < 2; ++op) {
      auto f = [&] { return op == 0 ? sum(x, dims) : logsumexp(x, dims); };
      const std::vector<float> first = host(f()).to_vector<float>();
      for (int rep = 0; rep < 3; ++rep) CHECK(host(f()).to_vector<float>() == first);
    }
  }
}

TEST_CASE("CUDA reductions refuse float64, naming the op and the tensor") {
  if (!cuda_available()) return;
  Tensor x = zeros({4, 3}, DType::kFloat64, Device::cuda()).set_name("x64");
  CHECK_THROWS_WITH_AS(sum(x), doctest::Contains("sum: CUDA supports float32 and bfloat16"), Error);
  CHECK_THROWS_WITH_AS(max(x, {1}), doctest::Contains("x64 [4, 3] float64 cuda:0"), Error);
  CHECK_THROWS_WITH_AS(argmax(x, 0), doctest::Contains("argmax"), Error);
  // A view whose layout copy would need more dims than the copy kernel indexes.
  Tensor x9 = zeros({2, 2, 2, 2, 2, 2, 2, 2, 2}, DType::kFloat32, Device::cuda())
                  .permute({8, 7, 6, 5, 4, 3, 2, 1, 0});
  x9.set_name("x9");
  CHECK_THROWS_WITH_AS(sum(x9, {0}), doctest::Contains("sum on CUDA of x9"), Error);
  CHECK_THROWS_WITH_AS(sum(x9, {0}), doctest::Contains("more than 8 dims"), Error);
}

}  // namespace resona::testing
