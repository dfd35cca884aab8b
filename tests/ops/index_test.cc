// Indexing ops (embedding, index_select, gather): finite differences in float64,
// hand-computed values (repeated indices must accumulate in backward), and the errors
// for bad index tensors.
#include <cstdint>
#include <vector>

#include "ops/elementwise.h"
#include "ops/index.h"
#include "ops/reduce.h"
#include "tests/test_util.h"

namespace resona::testing {
namespace {

using Fn = std::function<Tensor(const std::vector<Tensor>&)>;

Tensor i64(const std::vector<int64_t>& v, const Shape& shape) { return from_vector(v, shape); }
Tensor i32(const std::vector<int32_t>& v, const Shape& shape) { return from_vector(v, shape); }

}  // namespace

// ---------------------------------------------------------------- embedding

RESONA_OP_TEST(embedding, gradcheck,
               "embedding(weight=[5,3], ids=[2,3] int64 and int32, repeats)") {
  Generator gen(21);
  Tensor w = leaf(gen, {5, 3});
  // Id 2 three times and 4 at the last row: repeated rows accumulate, row 3 gets nothing.
  Tensor ids = i64({0, 2, 2, 4, 1, 2}, {2, 3});
  check_gradients([ids](const std::vector<Tensor>& v) { return embedding(v[0], ids); }, {w});
  Tensor ids32 = i32({4, 4, 0}, {3});
  check_gradients([ids32](const std::vector<Tensor>& v) { return embedding(v[0], ids32); }, {w});
  // A non-contiguous weight (the transpose of a [3, 5] leaf) and a non-contiguous ids view.
  Tensor wt = leaf(gen, {3, 5});
  Tensor ids_t = i64({1, 0, 2, 2, 1, 4}, {3, 2}).transpose(0, 1);
  check_gradients(
      [ids_t](const std::vector<Tensor>& v) { return embedding(v[0].transpose(0, 1), ids_t); },
      {wt});
}

RESONA_OP_TEST(embedding, values, "embedding(weight=[4,2], ids=[3] int32 with id 3 twice)") {
  Tensor w = values({0, 1, 10, 11, 20, 21, 30, 31}, {4, 2}, true);
  Tensor y = embedding(w, i32({3, 0, 3}, {3}));
  REQUIRE(y.shape() == Shape{3, 2});
  check_close(y, {30, 31, 0, 1, 30, 31});
  y.backward(values({1, 2, 3, 4, 5, 6}, {3, 2}));
  // Row 3 receives d_y rows 0 and 2 (1+5, 2+6), row 0 receives row 1, rows 1-2 nothing.
  check_close(w.grad(), {3, 4, 0, 0, 0, 0, 6, 8});
  // 0-D ids give one row [D]; [2, 1] ids give [2, 1, D].
  check_close(embedding(w.detach(), i64({2}, {})), {20, 21});
  CHECK(embedding(w.detach(), i64({1, 2}, {2, 1})).shape() == Shape{2, 1, 2});
  // float32: the same rows and the same accumulated gradient.
  Tensor w32 = w.detach().to(DType::kFloat32);
  w32.set_requires_grad(true);
  Tensor y32 = embedding(w32, i64({3, 0, 3}, {3}));
  CHECK(y32.dtype() == DType::kFloat32);
  check_close(y32, {30, 31, 0, 1, 30, 31});
  y32.backward(values({1, 2, 3, 4, 5, 6}, {3, 2}).to(DType::kFloat32));
  check_close(w32.grad(), {3, 4, 0, 0, 0, 0, 6, 8});
}

TEST_CASE("embedding refuses out-of-range ids, non-integer ids and a non-2-D weight") {
  Tensor w = zeros({5, 3});
  w.set_name("weight");
  Tensor ids = i64({0, 1, 2, 3, 5, 1}, {2, 3});
  CHECK_THROWS_WITH_AS(embedding(w, ids),
                       doctest::Contains("ids [2, 3] int64 cpu holds 5 at flat position 4, "
                                         "outside [0, 5)"),
                       Error);
  CHECK_THROWS_WITH_AS(embedding(w, i32({-1}, {1})),
                       doctest::Contains("holds -1 at flat position 0"), Error);
  CHECK_THROWS_WITH_AS(embedding(w, zeros({3})),
                       doctest::Contains("ids must be int32 or int64, got [3] float32 cpu"), Error);
  CHECK_THROWS_WITH_AS(embedding(zeros({5}), i64({0}, {1})),
                       doctest::Contains("weight must be [V, D], got [5] float32"), Error);
}

// ---------------------------------------------------------------- index_select

RESONA_OP_TEST(index_select, gradcheck, "index_select(x=[3,4,2], dim=1,0,-1, repeats; strided x)") {
  Generator gen(22);
  Tensor x = leaf(gen, {3, 4, 2});
  Tensor idx = i64({3, 0, 3}, {3});
  check_gradients([idx](const std::vector<Tensor>& v) { return index_select(v[0], 1, idx); }, {x});
  Tensor idx0 = i32({2, 2, 1, 0}, {4});
  check_gradients([idx0](const std::vector<Tensor>& v) { return index_select(v[0], 0, idx0); },
                  {x});
  Tensor idx_last = i64({1}, {1});
  check_gradients(
      [idx_last](const std::vector<Tensor>& v) { return index_select(v[0], -1, idx_last); }, {x});
  // x permuted to [4, 3, 2] (not contiguous), selecting along its dim 0.
  check_gradients(
      [idx](const std::vector<Tensor>& v) { return index_select(v[0].transpose(0, 1), 0, idx); },
      {x});
}

RESONA_OP_TEST(index_select, values, "index_select(x=[2,3], dim=1, index=[2,0,2])") {
  Tensor x = values({1, 2, 3, 4, 5, 6}, {2, 3}, true);
  Tensor y = index_select(x, 1, i32({2, 0, 2}, {3}));
  REQUIRE(y.shape() == Shape{2, 3});
  check_close(y, {3, 1, 3, 6, 4, 6});
  y.backward(values({1, 2, 3, 4, 5, 6}, {2, 3}));
  // Column 2 of x is picked twice per row: 1+3 and 4+6.
  check_close(x.grad(), {2, 0, 4, 5, 0, 10});
  check_close(index_select(x.detach(), 0, i64({1, 1}, {2})), {4, 5, 6, 4, 5, 6});
  // float32, forward and backward.
  Tensor x32 = x.detach().to(DType::kFloat32);
  x32.set_requires_grad(true);
  Tensor y32 = index_select(x32, 1, i64({2, 0, 2}, {3}));
  check_close(y32, {3, 1, 3, 6, 4, 6});
  y32.backward(values({1, 2, 3, 4, 5, 6}, {2, 3}).to(DType::kFloat32));
  check_close(x32.grad(), {2, 0, 4, 5, 0, 10});
}

TEST_CASE("index_select refuses out-of-range, 2-D and floating indices") {
  Tensor x = zeros({2, 3}).set_name("x");
  Tensor idx = i64({0, 3}, {2}).set_name("idx");
  CHECK_THROWS_WITH_AS(index_select(x, 1, idx),
                       doctest::Contains("index idx [2] int64 cpu holds 3 at flat position 1, "
                                         "outside [0, 3) (size of dim 1 of x [2, 3]"),
                       Error);
  CHECK_THROWS_WITH_AS(index_select(x, 0, i64({0, 1}, {1, 2})),
                       doctest::Contains("index must be 1-D, got [1, 2] int64"), Error);
  CHECK_THROWS_WITH_AS(index_select(x, 0, zeros({2}, DType::kFloat64)),
                       doctest::Contains("index must be int32 or int64, got [2] float64"), Error);
  CHECK_THROWS_WITH_AS(index_select(x, 2, i64({0}, {1})),
                       doctest::Contains("dim 2 out of range for a 2-D tensor"), Error);
}

// ---------------------------------------------------------------- gather

RESONA_OP_TEST(gather, gradcheck, "gather(x=[3,4], dim=1 and 0; x=[2,3,4], dim=2, smaller index)") {
  Generator gen(23);
  Tensor x = leaf(gen, {3, 4});
  Tensor idx1 = i64({3, 3, 0, 1, 2, 1, 0, 0, 0}, {3, 3});  // repeats within rows
  check_gradients([idx1](const std::vector<Tensor>& v) { return gather(v[0], 1, idx1); }, {x});
  // dim 0 with index [2, 3]: smaller than x along dim 1 too.
  Tensor idx0 = i32({2, 0, 2, 2, 1, 0}, {2, 3});
  check_gradients([idx0](const std::vector<Tensor>& v) { return gather(v[0], 0, idx0); }, {x});
  Tensor x3 = leaf(gen, {2, 3, 4});
  Tensor idx2 = i64({0, 3, 3, 1, 2, 2, 0, 1, 1, 3, 0, 0}, {2, 2, 3});
  check_gradients([idx2](const std::vector<Tensor>& v) { return gather(v[0], -1, idx2); }, {x3});
  // Non-contiguous x: [4, 3] viewed from the [3, 4] leaf, gathered along dim 0.
  Tensor idxt = i64({3, 0, 1, 1, 2, 3}, {2, 3});
  check_gradients(
      [idxt](const std::vector<Tensor>& v) { return gather(v[0].transpose(0, 1), 0, idxt); }, {x});
}

RESONA_OP_TEST(gather, values, "gather(x=[2,2], dim=1) as the torch.gather example, dim=0") {
  Tensor x = values({1, 2, 3, 4}, {2, 2}, true);
  Tensor y = gather(x, 1, i64({0, 0, 1, 0}, {2, 2}));
  check_close(y, {1, 1, 4, 3});
  y.backward(values({1, 2, 3, 4}, {2, 2}));
  check_close(x.grad(), {3, 0, 4, 3});  // x[0][0] gets 1+2, x[1][1] gets 3, x[1][0] gets 4
  // dim 0 with a [1, 2] index: out[0][j] = x[index[0][j]][j].
  check_close(gather(x.detach(), 0, i32({1, 0}, {1, 2})), {3, 2});
  // float32, forward and backward.
  Tensor x32 = x.detach().to(DType::kFloat32);
  x32.set_requires_grad(true);
  Tensor y32 = gather(x32, 1, i64({0, 0, 1, 0}, {2, 2}));
  check_close(y32, {1, 1, 4, 3});
  y32.backward(values({1, 2, 3, 4}, {2, 2}).to(DType::kFloat32));
  check_close(x32.grad(), {3, 0, 4, 3});
}

TEST_CASE("gather refuses out-of-range indices, rank mismatch and oversized index") {
  Tensor x = zeros({2, 3}).set_name("x");
  CHECK_THROWS_WITH_AS(gather(x, 1, i64({0, 1, 2, 0, 3, 1}, {2, 3})),
                       doctest::Contains("index [2, 3] int64 cpu holds 3 at flat position 4, "
                                         "outside [0, 3)"),
                       Error);
  CHECK_THROWS_WITH_AS(gather(x, 0, i64({0, -2}, {1, 2})),
                       doctest::Contains("holds -2 at flat position 1"), Error);
  CHECK_THROWS_WITH_AS(gather(x, 1, i64({0, 1}, {2})),
                       doctest::Contains("index [2] int64 cpu must have as many dims as x"), Error);
  CHECK_THROWS_WITH_AS(
      gather(x, 1, i64({0, 0, 0}, {3, 1})),
      doctest::Contains("is larger than x x [2, 3] float32 cpu along dim 0 (3 > 2)"), Error);
  CHECK_THROWS_WITH_AS(gather(x, 1, zeros({2, 3}, DType::kFloat64)),
                       doctest::Contains("index must be int32 or int64"), Error);
}

TEST_CASE("index tensors get no gradient; only the floating input is differentiated") {
  Generator gen(24);
  Tensor w = leaf(gen, {4, 2});
  Tensor ids = i64({1, 3}, {2});
  Tensor y = embedding(w, ids);
  REQUIRE(y.requires_grad());
  sum(y).backward();
  CHECK_FALSE(ids.grad().defined());
  check_close(w.grad(), {0, 0, 1, 1, 0, 0, 1, 1});
  // Without a tensor that requires grad nothing is recorded.
  CHECK_FALSE(embedding(w.detach(), ids).requires_grad());
}

}  // namespace resona::testing
