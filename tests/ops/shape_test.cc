// Layout ops (reshape, permute, slice, expand, squeeze, unsqueeze, contiguous, cast,
// to_device, concat, split): finite differences in float64, values by hand (and which
// results are views of their input's storage), and errors that name the tensor shapes.
#include <cmath>

#include "autograd/grad_mode.h"
#include "ops/elementwise.h"
#include "ops/reduce.h"
#include "ops/shape.h"
#include "tests/test_util.h"

namespace resona::testing {
namespace {

using Fn = std::function<Tensor(const std::vector<Tensor>&)>;

// 0, 1, ..., n-1 as float64, shaped.
Tensor iota(const Shape& shape, bool grad = false) {
  std::vector<double> v(shape_numel(shape));
  for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<double>(i);
  return values(v, shape, grad);
}

std::vector<double> iota_values(int64_t n, double first = 0) {
  std::vector<double> v(n);
  for (int64_t i = 0; i < n; ++i) v[i] = first + static_cast<double>(i);
  return v;
}

}  // namespace

// ---------------------------------------------------------------- reshape

RESONA_OP_TEST(reshape, gradcheck,
               "reshape([2,3,4] -> [4,-1]; transposed [4,3,2] -> [-1,6]; view)") {
  Generator gen(31);
  Tensor x = leaf(gen, {2, 3, 4});
  check_gradients([](const std::vector<Tensor>& v) { return reshape(v[0], {4, -1}); }, {x});
  check_gradients(
      [](const std::vector<Tensor>& v) {
        return reshape(v[0].transpose(0, 2), {-1, 6});
      },
      {x});
  check_gradients([](const std::vector<Tensor>& v) { return v[0].view({6, 1, 4}); }, {x});
}
RESONA_OP_TEST(reshape, values, "reshape [2,3] -> [3,2], -1, of a transpose (copy), view") {
  Tensor x = iota({2, 3});
  Tensor y = reshape(x, {3, 2});
  CHECK(y.shape() == Shape{3, 2});
  check_close(y, iota_values(6));
  CHECK(y.shares_storage(x));  // contiguous: a view
  CHECK(reshape(x, {-1}).shape() == Shape{6});
  CHECK(reshape(x, {1, -1, 2}).shape() == Shape{1, 3, 2});
  CHECK(x.view({6}).shares_storage(x));
  // A transpose cannot be flattened as a view: reshape copies, in the view's order.
  Tensor t = x.transpose(0, 1);
  Tensor r = reshape(t, {6});
  check_close(r, {0, 3, 1, 4, 2, 5});
  CHECK_FALSE(r.shares_storage(x));
  // Backward maps the gradient back to the input's shape.
  Tensor w = iota({2, 3}, true);
  reshape(w.transpose(0, 1), {2, 3}).backward(iota({2, 3}));
  // d_out [[0,1,2],[3,4,5]] is d of the transpose [3,2] read row-major: [[0,1],[2,3],[4,5]].
  check_close(w.grad(), {0, 2, 4, 1, 3, 5});
}
TEST_CASE("reshape and view refuse bad shapes, naming the tensor and the shapes") {
  Tensor x = iota({2, 3});
  x.set_name("x");
  CHECK_THROWS_WITH_AS(
      reshape(x, {4}),
      doctest::Contains("reshape of x [2, 3] float64 cpu (6 elements) to [4] (4 elements)"), Error);
  CHECK_THROWS_WITH_AS(
      reshape(x, {-1, -1}),
      doctest::Contains("reshape of x [2, 3] float64 cpu to [-1, -1]: only one dim may be -1"),
      Error);
  CHECK_THROWS_WITH_AS(
      reshape(x, {4, -1}),
      doctest::Contains(
          "reshape of x [2, 3] float64 cpu to [4, -1]: the -1 dim cannot be inferred"),
      Error);
  CHECK_THROWS_WITH_AS(
      reshape(x, {-2, -3}),
      doctest::Contains("reshape of x [2, 3] float64 cpu to [-2, -3]: negative size"), Error);
  Tensor t = x.transpose(0, 1).set_name("t");
  CHECK_THROWS_WITH_AS(
      t.view({6}), doctest::Contains("view of non-contiguous t [3, 2] float64 cpu as [6]"), Error);
}

// ---------------------------------------------------------------- permute

RESONA_OP_TEST(permute, gradcheck, "permute([2,3,4], {2,0,1} and {-1,-3,-2}; of a transpose)") {
  Generator gen(32);
  Tensor x = leaf(gen, {2, 3, 4});
  check_gradients([](const std::vector<Tensor>& v) { return permute(v[0], {2, 0, 1}); }, {x});
  check_gradients([](const std::vector<Tensor>& v) { return permute(v[0], {-1, -3, -2}); }, {x});
  check_gradients(
      [](const std::vector<Tensor>& v) {
        return permute(v[0].transpose(0, 1), {1, 2, 0});
      },
      {x});
}
RESONA_OP_TEST(permute, values, "permute [2,3,4] {2,0,1}: y[k,i,j] = x[i,j,k], a view") {
  Tensor x = iota({2, 3, 4});
  Tensor y = permute(x, {2, 0, 1});
  CHECK(y.shape() == Shape{4, 2, 3});
  CHECK(y.shares_storage(x));
  std::vector<double> expected;
  for (int k = 0; k < 4; ++k)
    for (int i = 0; i < 2; ++i)
      for (int j = 0; j < 3; ++j) expected.push_back(12 * i + 4 * j + k);
  check_close(y, expected);
  check_close(permute(x, {-1, 0, -2}), expected);
  // The gradient goes back through the inverse permutation.
  Tensor w = iota({2, 3}, true);
  permute(w, {1, 0}).backward(iota({3, 2}));
  check_close(w.grad(), {0, 2, 4, 1, 3, 5});
}
TEST_CASE("permute refuses wrong, repeated and out-of-range dims, naming the tensor") {
  Tensor x = iota({2, 3, 4}).set_name("x");
  CHECK_THROWS_WITH_AS(
      permute(x, {0, 1}),
      doctest::Contains("permute of x [2, 3, 4] float64 cpu with [0, 1]: need 3 dims"), Error);
  CHECK_THROWS_WITH_AS(
      permute(x, {0, -3, 1}),
      doctest::Contains("permute of x [2, 3, 4] float64 cpu: dims [0, -3, 1] repeat 0"), Error);
  CHECK_THROWS_WITH_AS(
      permute(x, {0, 1, 3}),
      doctest::Contains("permute of x [2, 3, 4] float64 cpu: dim 3 out of range for a 3-D tensor"),
      Error);
  CHECK_THROWS_WITH_AS(
      x.transpose(0, 5),
      doctest::Contains("transpose of x [2, 3, 4] float64 cpu: dim 5 out of range"), Error);
  // A 0-D tensor transposes to itself (dims 0 and -1 only) and cannot be selected from.
  Tensor s = scalar_tensor(2.0, DType::kFloat64).set_name("s");
  check_close(s.transpose(0, -1), {2});
  CHECK_THROWS_WITH_AS(s.transpose(0, 1), doctest::Contains("transpose of s [] float64 cpu: dim 1"),
                       Error);
  CHECK_THROWS_WITH_AS(s.select(0, 0), doctest::Contains("select on a 0-D tensor s [] float64 cpu"),
                       Error);
}

// ---------------------------------------------------------------- slice

RESONA_OP_TEST(slice, gradcheck, "slice(steps 2 and 3, negative bounds, of a transpose, twice)") {
  Generator gen(33);
  Tensor x = leaf(gen, {4, 7});
  check_gradients([](const std::vector<Tensor>& v) { return slice(v[0], 1, 1, 7, 2); }, {x});
  check_gradients([](const std::vector<Tensor>& v) { return slice(v[0], -1, -6, -1, 3); }, {x});
  check_gradients(
      [](const std::vector<Tensor>& v) { return slice(v[0].transpose(0, 1), 0, -5, 100, 2); }, {x});
  check_gradients(
      [](const std::vector<Tensor>& v) { return slice(slice(v[0], 0, 1, 4), 1, 0, 7, 3); }, {x});
}
RESONA_OP_TEST(slice, values,
               "slice [10] with steps and negative/out-of-range bounds; [3,4] dim 1") {
  Tensor x = iota({10});
  check_close(slice(x, 0, 1, 8, 3), {1, 4, 7});
  check_close(slice(x, 0, 1, 9, 3), {1, 4, 7});  // the last step reaches past end
  check_close(slice(x, 0, -3, -1), {7, 8});
  check_close(slice(x, -1, -100, 100), iota_values(10));  // bounds clamp
  CHECK(slice(x, 0, 5, 2).shape() == Shape{0});           // end before start: empty
  CHECK(slice(x, 0, 10, 12).shape() == Shape{0});
  CHECK(slice(x, 0, 2, 5).shares_storage(x));
  Tensor m = iota({3, 4});
  Tensor s = slice(m, 1, 1, 4, 2);
  CHECK(s.shape() == Shape{3, 2});
  check_close(s, {1, 3, 5, 7, 9, 11});
  check_close(slice(m, -2, 1, 3), iota_values(8, 4));
  check_close(m.select(0, -1), {8, 9, 10, 11});
  // Backward scatters into zeros.
  Tensor w = iota({5}, true);
  slice(w, 0, 1, 5, 2).backward(values({10, 20}, {2}));
  check_close(w.grad(), {0, 10, 0, 20, 0});
}
TEST_CASE("slice refuses a bad step or dim, naming the tensor") {
  Tensor x = iota({3, 4}).set_name("x");
  CHECK_THROWS_WITH_AS(
      slice(x, 1, 0, 4, 0),
      doctest::Contains("slice of x [3, 4] float64 cpu: step must be positive, got 0"), Error);
  CHECK_THROWS_WITH_AS(slice(x, 1, 4, 0, -1), doctest::Contains("step must be positive"), Error);
  CHECK_THROWS_WITH_AS(
      slice(x, 2, 0, 1),
      doctest::Contains("slice of x [3, 4] float64 cpu: dim 2 out of range for a 2-D tensor"),
      Error);
  CHECK_THROWS_WITH_AS(slice(scalar_tensor(1.0, DType::kFloat64).set_name("s"), 0, 0, 1),
                       doctest::Contains("slice of a 0-D tensor s [] float64 cpu"), Error);
  CHECK_THROWS_WITH_AS(x.select(1, 4),
                       doctest::Contains("index 4 out of range for dim 1 of x [3, 4] float64 cpu"),
                       Error);
}

// ---------------------------------------------------------------- expand

RESONA_OP_TEST(expand, gradcheck,
               "expand([3,1] -> [2,3,4], -1 kept; of a transpose [1,3] -> [2,3])") {
  Generator gen(34);
  Tensor x = leaf(gen, {3, 1});
  check_gradients([](const std::vector<Tensor>& v) { return expand(v[0], {2, 3, 4}); }, {x});
  check_gradients([](const std::vector<Tensor>& v) { return expand(v[0], {2, -1, 5}); }, {x});
  check_gradients(
      [](const std::vector<Tensor>& v) {
        return expand(v[0].transpose(0, 1), {2, 3});
      },
      {x});
}
RESONA_OP_TEST(expand, values,
               "expand [3,1] -> [2,3,2] (stride 0, a view) and its summed gradient") {
  Tensor x = values({1, 2, 3}, {3, 1}, true);
  Tensor y = expand(x, {2, 3, 2});
  CHECK(y.shape() == Shape{2, 3, 2});
  CHECK(y.strides()[0] == 0);
  CHECK(y.strides()[2] == 0);
  CHECK(y.shares_storage(x));
  check_close(y, {1, 1, 2, 2, 3, 3, 1, 1, 2, 2, 3, 3});
  check_close(expand(x, {-1, 2}), {1, 1, 2, 2, 3, 3});
  sum(y).backward();
  check_close(x.grad(), {4, 4, 4});
}
TEST_CASE("expand refuses incompatible shapes, naming the tensor and the target") {
  Tensor x = values({1, 2, 3}, {3, 1}).set_name("x");
  CHECK_THROWS_WITH_AS(
      expand(x, {2, 4}),
      doctest::Contains(
          "expand of x [3, 1] float64 cpu to [2, 4]: dim 0 has size 3, which is neither 2 nor 1"),
      Error);
  CHECK_THROWS_WITH_AS(
      expand(x, {3}),
      doctest::Contains("expand of x [3, 1] float64 cpu to [3]: fewer dims than the tensor"),
      Error);
  CHECK_THROWS_WITH_AS(
      expand(x, {-1, 3, 2}),
      doctest::Contains("expand of x [3, 1] float64 cpu to [-1, 3, 2]: -1 in a new leading dim"),
      Error);
  CHECK_THROWS_WITH_AS(
      expand(x, {3, -2}),
      doctest::Contains("expand of x [3, 1] float64 cpu to [3, -2]: negative size -2"), Error);
}

// ---------------------------------------------------------------- squeeze / unsqueeze

RESONA_OP_TEST(squeeze, gradcheck, "squeeze([2,1,3] dim 1 and -2; of a transpose [3,1,2])") {
  Generator gen(35);
  Tensor x = leaf(gen, {2, 1, 3});
  check_gradients([](const std::vector<Tensor>& v) { return squeeze(v[0], 1); }, {x});
  check_gradients([](const std::vector<Tensor>& v) { return squeeze(v[0], -2); }, {x});
  check_gradients([](const std::vector<Tensor>& v) { return squeeze(v[0].transpose(0, 2), 1); },
                  {x});
}
RESONA_OP_TEST(squeeze, values, "squeeze [2,1,3] -> [2,3], [1] -> [] (views)") {
  Tensor x = iota({2, 1, 3}, true);
  Tensor y = squeeze(x, 1);
  CHECK(y.shape() == Shape{2, 3});
  CHECK(y.shares_storage(x));
  check_close(y, iota_values(6));
  CHECK(squeeze(x, -2).shape() == Shape{2, 3});
  CHECK(squeeze(iota({1}), 0).dim() == 0);
  y.backward(iota({2, 3}));
  CHECK(x.grad().shape() == Shape{2, 1, 3});
  check_close(x.grad(), iota_values(6));
}
TEST_CASE("squeeze refuses a dim whose size is not 1 or out of range, naming the tensor") {
  Tensor x = iota({2, 1, 3}).set_name("x");
  CHECK_THROWS_WITH_AS(
      squeeze(x, 0),
      doctest::Contains("squeeze of dim 0 of x [2, 1, 3] float64 cpu: its size is not 1"), Error);
  CHECK_THROWS_WITH_AS(squeeze(x, 3),
                       doctest::Contains("squeeze of x [2, 1, 3] float64 cpu: dim 3 out of range"),
                       Error);
}
RESONA_OP_TEST(unsqueeze, gradcheck, "unsqueeze([2,3] at 0, 2, -1; of a transpose)") {
  Generator gen(36);
  Tensor x = leaf(gen, {2, 3});
  for (int64_t d : {0, 2, -1, -3}) {
    INFO("dim " << d);
    check_gradients([d](const std::vector<Tensor>& v) { return unsqueeze(v[0], d); }, {x});
  }
  check_gradients([](const std::vector<Tensor>& v) { return unsqueeze(v[0].transpose(0, 1), 1); },
                  {x});
}
RESONA_OP_TEST(unsqueeze, values, "unsqueeze [2,3] at 0, 1, 2, -1, -3 (views)") {
  Tensor x = iota({2, 3});
  CHECK(unsqueeze(x, 0).shape() == Shape{1, 2, 3});
  CHECK(unsqueeze(x, 1).shape() == Shape{2, 1, 3});
  CHECK(unsqueeze(x, 2).shape() == Shape{2, 3, 1});
  CHECK(unsqueeze(x, -1).shape() == Shape{2, 3, 1});
  CHECK(unsqueeze(x, -3).shape() == Shape{1, 2, 3});
  CHECK(unsqueeze(scalar_tensor(1.0), 0).shape() == Shape{1});
  Tensor y = unsqueeze(x.transpose(0, 1), 1);
  CHECK(y.shape() == Shape{3, 1, 2});
  CHECK(y.shares_storage(x));
  check_close(y, {0, 3, 1, 4, 2, 5});
}
TEST_CASE("unsqueeze refuses a dim out of range, naming the tensor") {
  Tensor x = iota({2, 3}).set_name("x");
  CHECK_THROWS_WITH_AS(
      unsqueeze(x, 3),
      doctest::Contains("unsqueeze of x [2, 3] float64 cpu: dim 3 out of range for a 3-D tensor"),
      Error);
  CHECK_THROWS_WITH_AS(unsqueeze(x, -4),
                       doctest::Contains("unsqueeze of x [2, 3] float64 cpu: dim -4"), Error);
}

// ---------------------------------------------------------------- contiguous

RESONA_OP_TEST(contiguous, gradcheck,
               "contiguous(transpose of [3,4]; forced copy; slice with step)") {
  Generator gen(37);
  Tensor x = leaf(gen, {3, 4});
  check_gradients([](const std::vector<Tensor>& v) { return contiguous(v[0].transpose(0, 1)); },
                  {x});
  check_gradients([](const std::vector<Tensor>& v) { return contiguous(v[0], true); }, {x});
  check_gradients([](const std::vector<Tensor>& v) { return contiguous(slice(v[0], 1, 0, 4, 2)); },
                  {x});
}
RESONA_OP_TEST(contiguous, values, "contiguous: itself when contiguous, else a row-major copy") {
  Tensor x = iota({2, 3});
  CHECK(contiguous(x).is_same(x));
  CHECK(x.contiguous().is_same(x));
  Tensor forced = contiguous(x, true);
  CHECK_FALSE(forced.shares_storage(x));
  check_close(forced, iota_values(6));
  Tensor t = x.transpose(0, 1);
  REQUIRE_FALSE(t.is_contiguous());
  Tensor c = contiguous(t);
  CHECK(c.is_contiguous());
  CHECK(c.shape() == Shape{3, 2});
  CHECK(c.strides() == Shape{2, 1});
  CHECK_FALSE(c.shares_storage(x));
  check_close(c, {0, 3, 1, 4, 2, 5});
  // clone() always copies.
  Tensor k = x.clone();
  CHECK_FALSE(k.shares_storage(x));
  check_close(k, iota_values(6));
}

// ---------------------------------------------------------------- cast

RESONA_OP_TEST(cast, gradcheck, "cast(float64 -> float32 -> float64), eps 1e-2") {
  // Cast to float64 from float64 is the identity, so the case goes through float32 and
  // back. f is the identity up to rounding, so central differences have no truncation
  // error at any step; the error is the float32 rounding of x +- eps (|x| < 1: at most
  // 2^-24 ~ 6e-8 each), divided by 2 eps = 2e-2: ~6e-6 * |d_out|, with |d_out| < ~4
  // for the few normal draws here. atol 1e-4 leaves a wide margin; the analytic side
  // only rounds d_out to float32 (relative 6e-8).
  Generator gen(38);
  GradcheckOptions opt;
  opt.eps = 1e-2;
  opt.atol = 1e-4;
  opt.rtol = 1e-4;
  Tensor x = leaf(gen, {3, 4});
  check_gradients(
      [](const std::vector<Tensor>& v) {
        return cast(cast(v[0], DType::kFloat32), DType::kFloat64);
      },
      {x}, opt);
  check_gradients(
      [](const std::vector<Tensor>& v) {
        return cast(cast(v[0].transpose(0, 1), DType::kFloat32), DType::kFloat64);
      },
      {x}, opt);
}
RESONA_OP_TEST(cast, values, "cast float64 <-> float32 round trips, int64 -> float64, same dtype") {
  Tensor x = values({0.5, -2.25, 3, 0.1}, {4}, true);
  Tensor f = cast(x, DType::kFloat32);
  CHECK(f.dtype() == DType::kFloat32);
  Tensor back = cast(f, DType::kFloat64);
  CHECK(back.dtype() == DType::kFloat64);
  // Representable values come back exactly; 0.1 comes back as the nearest float32.
  check_close(back, {0.5, -2.25, 3, static_cast<double>(0.1f)}, 0, 0);
  // float32 -> float64 -> float32 is exact for every float32.
  Tensor g = from_vector(std::vector<float>{0.1f, 1e-30f, 3.4e38f}, {3});
  CHECK(cast(cast(g, DType::kFloat64), DType::kFloat32).to_vector<float>() == g.to_vector<float>());
  check_close(cast(from_vector(std::vector<int64_t>{1, -2}, {2}), DType::kFloat64), {1, -2}, 0, 0);
  CHECK(cast(x, DType::kFloat64).is_same(x));
  Tensor ct = cast(iota({2, 3}).transpose(0, 1), DType::kFloat32);  // converts and compacts
  CHECK(ct.is_contiguous());
  check_close(ct, {0, 3, 1, 4, 2, 5}, 0, 0);
  // Backward converts d_out back to the input's dtype.
  sum(mul(f, from_vector(std::vector<float>{1, 2, 3, 4}, {4}))).backward();
  CHECK(x.grad().dtype() == DType::kFloat64);
  check_close(x.grad(), {1, 2, 3, 4}, 0, 0);
}
TEST_CASE("cast of a tensor that requires grad to an integer type is refused, naming it") {
  Tensor x = values({1, 2}, {2}, true).set_name("x");
  CHECK_THROWS_WITH_AS(
      cast(x, DType::kInt64),
      doctest::Contains("cast of x [2] float64 cpu (which requires grad) to int64"), Error);
  NoGradGuard no_grad;  // without grad recording the same cast is fine
  CHECK(cast(x, DType::kInt64).to_vector<int64_t>() == std::vector<int64_t>{1, 2});
}

// ---------------------------------------------------------------- to_device

RESONA_OP_TEST(to_device, values, "to_device(cpu -> cpu) is the tensor itself") {
  Tensor x = iota({2, 3}, true);
  CHECK(to_device(x, Device::cpu()).is_same(x));
  CHECK(x.to(Device::cpu()).is_same(x));
}
RESONA_OP_GPU_TEST(to_device, values,
                   "to_device cpu -> cuda -> cpu (float64, float32, a transpose)") {
  Tensor x = iota({2, 3});
  Tensor g = to_device(x, Device::cuda());
  CHECK(g.device() == Device::cuda());
  CHECK(g.shape() == Shape{2, 3});
  CHECK(to_device(g, Device::cuda()).is_same(g));
  Tensor back = to_device(g, Device::cpu());
  CHECK(back.device().is_cpu());
  check_close(back, iota_values(6), 0, 0);
  check_close(g, iota_values(6), 0, 0);  // to_vector reads device memory too
  Tensor t = to_device(x.transpose(0, 1), Device::cuda());
  CHECK(t.is_contiguous());
  check_close(to_device(t, Device::cpu()), {0, 3, 1, 4, 2, 5}, 0, 0);
  Tensor f = from_vector(std::vector<float>{1.5f, -2.f}, {2});
  check_close(to_device(to_device(f, Device::cuda()), Device::cpu()), {1.5, -2}, 0, 0);
  // The gradient comes back to the CPU leaf.
  Tensor w = iota({2, 3}, true);
  sum(to_device(to_device(w, Device::cuda()), Device::cpu())).backward();
  CHECK(w.grad().device().is_cpu());
  check_close(w.grad(), std::vector<double>(6, 1.0), 0, 0);
}
RESONA_OP_GPU_TEST(to_device, gradcheck, "to_device(cpu -> cuda -> cpu) of [3,4] and a transpose") {
  Generator gen(39);
  Tensor x = leaf(gen, {3, 4});
  check_gradients(
      [](const std::vector<Tensor>& v) {
        return to_device(to_device(v[0], Device::cuda()), Device::cpu());
      },
      {x});
  check_gradients(
      [](const std::vector<Tensor>& v) {
        return to_device(to_device(v[0].transpose(0, 1), Device::cuda()), Device::cpu());
      },
      {x});
}

// ---------------------------------------------------------------- concat

RESONA_OP_TEST(concat, gradcheck, "concat(3 inputs, dims 0, 1 and -1, one input without grad)") {
  Generator gen(40);
  Tensor a = leaf(gen, {2, 1, 3}), b = leaf(gen, {2, 2, 3}), c = leaf(gen, {2, 4, 3});
  Tensor frozen = gen.uniform({2, 2, 3}, -1, 1, DType::kFloat64);  // requires no grad
  check_gradients(
      [](const std::vector<Tensor>& v) {
        return concat({v[0], v[1], v[2]}, 1);
      },
      {a, b, c});
  check_gradients(
      [](const std::vector<Tensor>& v) {
        return concat({v[0], v[1], v[2]}, 1);
      },
      {a, frozen, c});
  Tensor d = leaf(gen, {1, 4}), e = leaf(gen, {3, 4});
  check_gradients(
      [](const std::vector<Tensor>& v) {
        return concat({v[0], v[1], v[0]}, 0);
      },
      {d, e});
  // Non-contiguous inputs along the last dim.
  check_gradients(
      [](const std::vector<Tensor>& v) {
        return concat({v[0].transpose(0, 1), v[1].transpose(0, 1), v[0].transpose(0, 1)}, -1);
      },
      {d, e});
}
RESONA_OP_TEST(concat, values,
               "concat [2,1],[2,2],[2,3] along 1 and -1; [1,3],[2,3],[1,3] along 0") {
  Tensor a = values({1, 2}, {2, 1}, true), b = values({3, 4, 5, 6}, {2, 2});
  Tensor c = values({7, 8, 9, 10, 11, 12}, {2, 3}, true);
  Tensor y = concat({a, b, c}, 1);
  CHECK(y.shape() == Shape{2, 6});
  check_close(y, {1, 3, 4, 7, 8, 9, 2, 5, 6, 10, 11, 12});
  check_close(concat({a, b, c}, -1), y);
  Tensor r = concat({iota({1, 3}), iota({2, 3}), iota({1, 3})}, 0);
  CHECK(r.shape() == Shape{4, 3});
  check_close(r, {0, 1, 2, 0, 1, 2, 3, 4, 5, 0, 1, 2});
  // Each input that requires grad gets its slice of d_out; b (no grad) gets nothing.
  y.backward(iota({2, 6}));
  check_close(a.grad(), {0, 6});
  check_close(c.grad(), {3, 4, 5, 9, 10, 11});
  CHECK_FALSE(b.grad().defined());
}
TEST_CASE("concat refuses mismatched inputs, naming the tensors and their shapes") {
  Tensor a = zeros({2, 1}, DType::kFloat64).set_name("a");
  Tensor b = zeros({3, 2}, DType::kFloat64).set_name("b");
  CHECK_THROWS_WITH_AS(concat({a, b}, 1),
                       doctest::Contains("concat along dim 1: input 1 b [3, 2] float64 cpu differs "
                                         "from input 0 a [2, 1] float64 cpu in dim 0"),
                       Error);
  Tensor v = zeros({2}, DType::kFloat64).set_name("v");
  CHECK_THROWS_WITH_AS(concat({a, v}, 0),
                       doctest::Contains("concat: input 1 v [2] float64 cpu has a different rank "
                                         "than input 0 a [2, 1] float64 cpu"),
                       Error);
  Tensor f = zeros({2, 1}, DType::kFloat32).set_name("f");
  CHECK_THROWS_WITH_AS(
      concat({a, f}, 0),
      doctest::Contains("concat: dtype mismatch: a [2, 1] float64 cpu and f [2, 1] float32 cpu"),
      Error);
  CHECK_THROWS_WITH_AS(concat({a, a}, 2),
                       doctest::Contains("concat of a [2, 1] float64 cpu: dim 2 out of range"),
                       Error);
  CHECK_THROWS_WITH_AS(concat({}, 0), doctest::Contains("concat of an empty list"), Error);
}

// ---------------------------------------------------------------- split

RESONA_OP_TEST(split, gradcheck,
               "split([2,6] into {1,3,2} along 1 with one piece unused; [5,2] by 2 along 0)") {
  Generator gen(41);
  Tensor x = leaf(gen, {2, 6});
  // y[1] is unused: its missing gradient must arrive as zeros.
  check_gradients(
      [](const std::vector<Tensor>& v) {
        std::vector<Tensor> y = split(v[0], {1, 3, 2}, 1);
        return concat({y[2], y[0]}, 1);
      },
      {x});
  check_gradients(
      [](const std::vector<Tensor>& v) {
        std::vector<Tensor> y = split(v[0].transpose(0, 1), {4, 0, 2}, -2);
        return concat({y[1], mul(y[2], 3.0), y[0]}, 0);
      },
      {x});
  Tensor z = leaf(gen, {5, 2});
  check_gradients(
      [](const std::vector<Tensor>& v) {
        std::vector<Tensor> y = split(v[0], 2, 0);
        return concat({mul(y[2], 2.0), y[0], y[1]}, 0);
      },
      {z});
}
RESONA_OP_TEST(split, values,
               "split [2,6] into {1,3,2}; [5,2] by 2 -> 2,2,1; unused pieces get zeros") {
  Tensor x = iota({2, 6}, true);
  std::vector<Tensor> y = split(x, {1, 3, 2}, 1);
  REQUIRE(y.size() == 3);
  CHECK(y[0].shape() == Shape{2, 1});
  CHECK(y[1].shape() == Shape{2, 3});
  CHECK(y[2].shape() == Shape{2, 2});
  check_close(y[0], {0, 6});
  check_close(y[1], {1, 2, 3, 7, 8, 9});
  check_close(y[2], {4, 5, 10, 11});
  CHECK(y[1].shares_storage(x));
  check_close(split(x, {3, 3}, -1)[1], {3, 4, 5, 9, 10, 11});
  // Only y[1] is used: the gradient is 1 on its columns and 0 on the others.
  sum(y[1]).backward();
  check_close(x.grad(), {0, 1, 1, 1, 0, 0, 0, 1, 1, 1, 0, 0});

  std::vector<Tensor> p = split(iota({5, 2}), 2, 0);
  REQUIRE(p.size() == 3);
  CHECK(p[0].shape() == Shape{2, 2});
  CHECK(p[2].shape() == Shape{1, 2});
  check_close(p[2], {8, 9});
  CHECK(split(iota({4}), 2, 0).size() == 2);  // even pieces
  CHECK(split(iota({4}), 9, 0).size() == 1);  // one piece larger than the dim
}
TEST_CASE("split refuses sizes that do not add up and bad piece sizes, naming the tensor") {
  Tensor x = iota({2, 6}).set_name("x");
  CHECK_THROWS_WITH_AS(
      split(x, {1, 3}, 1),
      doctest::Contains(
          "split of x [2, 6] float64 cpu along dim 1 into [1, 3]: sizes add up to 4, not 6"),
      Error);
  CHECK_THROWS_WITH_AS(split(x, {7, -1}, 1),
                       doctest::Contains("split of x [2, 6] float64 cpu: negative size in [7, -1]"),
                       Error);
  CHECK_THROWS_WITH_AS(
      split(x, int64_t{0}, 1),
      doctest::Contains("split of x [2, 6] float64 cpu: piece size must be positive, got 0"),
      Error);
  CHECK_THROWS_WITH_AS(split(x, std::vector<int64_t>{6}, 2),
                       doctest::Contains("split of x [2, 6] float64 cpu: dim 2 out of range"),
                       Error);
  CHECK_THROWS_WITH_AS(split(x, int64_t{2}, 2), doctest::Contains("x [2, 6] float64 cpu"), Error);
}

}  // namespace resona::testing
