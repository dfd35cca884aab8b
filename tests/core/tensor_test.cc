// Tensor core: views and their geometry, copies, dtype conversions (bfloat16 rounding
// included), construction, element access, in-place updates and the errors that name
// the tensor and shape at fault.
#include "core/tensor.h"

#include <cmath>
#include <cstring>
#include <limits>

#include "autograd/grad_mode.h"
#include "tests/test_util.h"

namespace resona::testing {
namespace {

// 0, 1, ..., n-1 as float64 in the given shape (a fresh contiguous tensor).
Tensor iota(const Shape& shape) {
  return arange(shape_numel(shape), DType::kFloat64).reshape(shape);
}

std::vector<double> vals(const Tensor& t) { return t.to_vector<double>(); }

// iota(24) with the given flat indices replaced by -1.
std::vector<double> iota_with(std::initializer_list<int> minus_one) {
  std::vector<double> v(24);
  for (int i = 0; i < 24; ++i) v[i] = i;
  for (int i : minus_one) v[i] = -1;
  return v;
}

float float_from_bits(uint32_t b) {
  float f;
  std::memcpy(&f, &b, 4);
  return f;
}

uint16_t to_bf16_bits(uint32_t float_bits) {
  return from_vector<float>({float_from_bits(float_bits)}, {1})
      .to(DType::kBFloat16)
      .to_vector<bfloat16>()[0]
      .bits;
}

}  // namespace

TEST_CASE("tensor: views share storage and write through") {
  struct Case {
    const char* what;
    std::function<Tensor(const Tensor&)> view;  // of a [2, 3, 4] base
    std::vector<double> expected;               // base after view.fill_(-1)
  };
  const std::vector<Case> cases = {
      {"reshape [6,4], row 5",
       [](const Tensor& x) {
         return x.reshape({6, 4}).select(0, 5);
       },
       iota_with({20, 21, 22, 23})},
      {"view [4,6], column 0",
       [](const Tensor& x) {
         return x.view({4, 6}).select(1, 0);
       },
       iota_with({0, 6, 12, 18})},
      {"flatten, 2..4", [](const Tensor& x) { return x.flatten().slice(0, 2, 5); },
       iota_with({2, 3, 4})},
      {"permute [2,0,1], index 3",
       [](const Tensor& x) {
         return x.permute({2, 0, 1}).select(0, 3);
       },
       iota_with({3, 7, 11, 15, 19, 23})},
      {"transpose(0,2), last index 1",
       [](const Tensor& x) { return x.transpose(0, 2).select(2, 1); },
       iota_with({12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23})},
      {"slice dim 2 [1:4:2]", [](const Tensor& x) { return x.slice(2, 1, 4, 2); },
       iota_with({1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23})},
      {"expand of row [0,0] to [5,4]",
       [](const Tensor& x) {
         return x.select(0, 0).select(0, 0).unsqueeze(0).expand({5, 4});
       },
       iota_with({0, 1, 2, 3})},
      {"squeeze of slice [:,1:2,:]", [](const Tensor& x) { return x.slice(1, 1, 2).squeeze(1); },
       iota_with({4, 5, 6, 7, 16, 17, 18, 19})},
      {"unsqueeze(0) then [0][1]",
       [](const Tensor& x) { return x.unsqueeze(0).select(0, 0).select(0, 1); },
       iota_with({12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23})},
      {"select(1,-1)", [](const Tensor& x) { return x.select(1, -1); },
       iota_with({8, 9, 10, 11, 20, 21, 22, 23})},
      {"detach", [](const Tensor& x) { return x.detach().select(0, 0).select(0, 0); },
       iota_with({0, 1, 2, 3})},
  };
  for (const Case& c : cases) {
    INFO("view: " << c.what);
    Tensor base = iota({2, 3, 4});
    Tensor v = c.view(base);
    CHECK(v.shares_storage(base));
    v.fill_(-1);
    CHECK(vals(base) == c.expected);
    // And the other way: writes to the base show in the view.
    base.fill_(5);
    for (double x : vals(v)) CHECK(x == 5);
  }
}

TEST_CASE("tensor: contiguous() copies only when needed") {
  Tensor x = iota({3, 4});
  CHECK(x.contiguous().is_same(x));
  CHECK(x.slice(0, 1, 3).is_contiguous());  // leading rows: contiguous with an offset
  CHECK(x.slice(0, 1, 3).contiguous().shares_storage(x));
  CHECK(x.reshape({3, 1, 4}).is_contiguous());
  CHECK(x.slice(0, 1, 2).transpose(0, 1).is_contiguous());  // size-1 dims do not count
  CHECK(zeros({2, 0}).is_contiguous());                     // nor do empty tensors
  CHECK(x.slice(1, 0, 0).transpose(0, 1).is_contiguous());

  Tensor t = x.transpose(0, 1);
  CHECK(!t.is_contiguous());
  Tensor c = t.contiguous();
  CHECK(c.is_contiguous());
  CHECK(!c.shares_storage(x));
  CHECK(c.strides() == Shape{3, 1});
  CHECK(vals(c) == vals(t));
  c.fill_(0);
  CHECK(vals(x)[1] == 1);  // the copy is independent

  // reshape copies a non-contiguous input; view refuses it.
  Tensor r = t.reshape({12});
  CHECK(!r.shares_storage(x));
  CHECK(vals(r) == std::vector<double>{0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11});
  check_contains(error_of([&] { t.view({12}); }), "use reshape()");
  // clone always copies.
  CHECK(!x.clone().shares_storage(x));
  CHECK(vals(x.clone()) == vals(x));
}

TEST_CASE("tensor: strides and offset after slicing") {
  Tensor x = zeros({4, 5});
  CHECK(x.strides() == Shape{5, 1});
  CHECK(x.offset() == 0);
  auto geometry = [](const Tensor& t, Shape shape, Shape strides, int64_t offset) {
    CHECK(t.shape() == shape);
    CHECK(t.strides() == strides);
    CHECK(t.offset() == offset);
  };
  geometry(x.slice(0, 1, 4, 2), {2, 5}, {10, 1}, 5);
  geometry(x.slice(1, -3, -1), {4, 2}, {5, 1}, 2);
  geometry(x.slice(1, 2, 100), {4, 3}, {5, 1}, 2);  // end clamped
  geometry(x.slice(1, 4, 2), {4, 0}, {5, 1}, 4);    // end before start: empty
  geometry(x.slice(1, 0, 5, 3), {4, 2}, {5, 3}, 0);
  geometry(x.select(1, -1), {4}, {5}, 4);
  geometry(x.select(0, 2), {5}, {1}, 10);
  geometry(x.slice(0, 1, 4).slice(1, 1, 5, 2), {3, 2}, {5, 2}, 6);
  geometry(x.transpose(0, 1).slice(0, 1, 3), {2, 4}, {1, 5}, 1);
  geometry(x.slice(0, 2, 3).select(0, 0).slice(0, 3, 5), {2}, {1}, 13);
  CHECK(x.size(-1) == 5);
  CHECK(x.stride(0) == 5);
  check_contains(error_of([&] { x.slice(0, 0, 4, 0); }), "step must be positive");
}

TEST_CASE("tensor: dtype conversions") {
  Tensor d = from_vector<double>({2.7, -2.7, 0.5, -0.5, 1e9}, {5});
  CHECK(d.to(DType::kInt32).to_vector<int32_t>() == std::vector<int32_t>{2, -2, 0, 0, 1000000000});
  CHECK(d.to(DType::kInt64).to_vector<int64_t>() == std::vector<int64_t>{2, -2, 0, 0, 1000000000});
  CHECK(d.to(DType::kFloat64).is_same(d));  // same dtype: no copy
  Tensor big = from_vector<int64_t>({(int64_t{1} << 40) + 1, (int64_t{1} << 24) + 1}, {2});
  CHECK(big.to(DType::kFloat64).to_vector<double>() ==
        std::vector<double>{1099511627777.0, 16777217.0});
  CHECK(big.to(DType::kFloat32).to_vector<float>()[1] == 16777216.0f);  // nearest float
  CHECK(d.to(DType::kFloat32).to(DType::kFloat64).to_vector<double>()[0] ==
        static_cast<double>(2.7f));

  SUBCASE("bfloat16 rounds to nearest, ties to even") {
    CHECK(to_bf16_bits(0x3f800000u) == 0x3f80);  // 1
    CHECK(to_bf16_bits(0x3f808000u) == 0x3f80);  // 1 + 2^-8: tie, down to even
    CHECK(to_bf16_bits(0x3f818000u) == 0x3f82);  // 1 + 3*2^-8: tie, up to even
    CHECK(to_bf16_bits(0x3f808001u) == 0x3f81);  // just above the tie
    CHECK(to_bf16_bits(0x3f807fffu) == 0x3f80);  // just below the tie
    CHECK(to_bf16_bits(0xbf818000u) == 0xbf82);  // negative tie
    CHECK(to_bf16_bits(0x80000000u) == 0x8000);  // -0 keeps its sign
    CHECK(to_bf16_bits(0x00010000u) == 0x0001);  // smallest bf16 denormal, exact
    CHECK(to_bf16_bits(0x7f7fffffu) == 0x7f80);  // FLT_MAX rounds up to +inf
    CHECK(to_bf16_bits(0x7f800000u) == 0x7f80);  // +inf
    CHECK(to_bf16_bits(0xff800000u) == 0xff80);  // -inf
    // Integers through float: 257 and 259 are ties at 8 significant bits.
    CHECK(from_vector<int32_t>({257, 259}, {2}).to(DType::kBFloat16).to_vector<float>() ==
          std::vector<float>{256.0f, 260.0f});
    // Widening back is exact.
    CHECK(from_vector<float>({1.0078125f}, {1}).to(DType::kBFloat16).to_vector<float>()[0] ==
          1.0078125f);
    CHECK(bfloat16(-2.5f).bits == 0xc020);
  }
  SUBCASE("bfloat16 keeps NaN a NaN") {
    // Truncating 0x7f800001 would give 0x7f80, infinity; the quiet bit keeps it a NaN.
    for (uint32_t nan : {0x7fc00000u, 0x7f800001u, 0xff800001u, 0x7fffffffu}) {
      INFO("float bits " << std::hex << nan);
      const uint16_t b = to_bf16_bits(nan);
      CHECK((b & 0x7f80) == 0x7f80);
      CHECK((b & 0x007f) != 0);
      CHECK((b & 0x8000) == ((nan >> 16) & 0x8000));  // sign kept
      CHECK(std::isnan(static_cast<float>(bfloat16(float_from_bits(nan)))));
    }
    CHECK(std::isnan(from_vector<double>({std::nan("")}, {1}).to(DType::kBFloat16).item()));
  }
}

TEST_CASE("tensor: make_view checks that the view stays inside the storage") {
  Tensor base = iota({6});
  Tensor m = make_view(base, {2, 3}, {3, 1}, 0);
  CHECK(m.shares_storage(base));
  CHECK(vals(m.select(0, 1)) == std::vector<double>{3, 4, 5});
  CHECK(vals(make_view(base, {3}, {-1}, 2)) == std::vector<double>{2, 1, 0});  // reversed
  CHECK(vals(make_view(base, {4}, {0}, 5)) == std::vector<double>{5, 5, 5, 5});
  CHECK(make_view(base, {}, {}, 5).item() == 5);
  CHECK(make_view(base, {0, 3}, {3, 1}, 100).numel() == 0);  // empty: nothing is read

  check_contains(error_of([&] {
                   make_view(base, {2, 3}, {3, 1}, 1);
                 }),
                 "reaches outside the storage of [6] float64 cpu (6 elements)");
  check_contains(error_of([&] { make_view(base, {3}, {-1}, 1); }), "reaches outside");
  check_contains(error_of([&] { make_view(base, {6}, {1}, -1); }), "reaches outside");
  check_contains(error_of([&] { make_view(base, {}, {}, 6); }), "reaches outside");
  check_contains(error_of([&] { make_view(base, {2, 3}, {1}, 0); }), "differ in rank");
  check_contains(error_of([&] { make_view(base, {-1}, {1}, 0); }), "negative size in [-1]");
}

TEST_CASE("tensor: bad input is refused naming the tensor and shape") {
  Tensor x = zeros({2, 3});
  x.set_name("x");
  const std::string xd = "x [2, 3] float32 cpu";
  CHECK(x.describe() == xd);

  std::string m = error_of([&] { x.size(2); });
  check_contains(m, xd);
  check_contains(m, "dim 2 out of range for a 2-D tensor");
  check_contains(error_of([&] { x.stride(-3); }), "dim -3 out of range");
  check_contains(error_of([&] { scalar_tensor(1).size(0); }), "of 0-D tensor");
  check_contains(error_of([&] { x.transpose(0, 5); }), "dim 5 out of range");

  m = error_of([&] { x.reshape({4, 2}); });
  check_contains(m, "reshape of " + xd + " (6 elements) to [4, 2] (8 elements)");
  check_contains(error_of([&] { x.reshape({-1, -1}); }), "only one dim may be -1");
  check_contains(error_of([&] { x.reshape({-1, 4}); }), "the -1 dim cannot be inferred");
  check_contains(error_of([&] { x.reshape({-2, -3}); }), "negative size");

  m = error_of([&] { x.expand({3, 3}); });
  check_contains(m, "expand of " + xd + " to [3, 3]");
  check_contains(m, "dim 0 has size 2, which is neither 3 nor 1");
  check_contains(error_of([&] { x.expand({3}); }), "fewer dims than the tensor");
  CHECK(x.expand({4, 2, 3}).strides() == Shape{0, 3, 1});  // new leading dims are fine

  check_contains(error_of([&] { x.data<double>(); }), "data<float64>() on " + xd);
  check_contains(error_of([&] { x.data<int32_t>(); }), "data<int32>() on " + xd);
  check_contains(error_of([&] { x.data<bfloat16>(); }), "data<bfloat16>() on " + xd);
  CHECK(x.data<float>() != nullptr);

  check_contains(error_of([&] { x.squeeze(0); }), "its size is not 1");
  check_contains(error_of([&] { x.select(0, 2); }), "index 2 out of range for dim 0 of " + xd);
  check_contains(error_of([&] { x.permute({0, 0}); }), "repeat");
  check_contains(error_of([&] { x.permute({0}); }), "need 2 dims");
  check_contains(error_of([&] { x.item(); }), "item() needs a one-element tensor, got " + xd);
  check_contains(error_of([&] { x.copy_(zeros({4})); }), "expand of");
  check_contains(error_of([&] {
                   copy_into(x, zeros({3, 2}));
                 }),
                 "destination " + xd + " and source [3, 2] float32 cpu differ in shape");
  check_contains(error_of([&] {
                   from_vector<float>({1, 2, 3}, {2, 2});
                 }),
                 "3 values for shape [2, 2]");
  check_contains(error_of([&] { empty({2, -1}); }), "negative dimension in shape [2, -1]");
  check_contains(error_of([&] { zeros({2}, DType::kInt64).set_requires_grad(true); }),
                 "only floating-point tensors can require grad");
  check_contains(error_of([&] { Tensor().shape(); }), "undefined tensor");
  check_contains(error_of([&] { dtype_from_name("float16"); }), "unknown dtype 'float16'");
}

TEST_CASE("tensor: zeros, ones, full, arange") {
  Tensor z = zeros({2, 3}, DType::kInt32);
  CHECK(z.dtype() == DType::kInt32);
  CHECK(z.shape() == Shape{2, 3});
  CHECK(z.strides() == Shape{3, 1});
  CHECK(z.to_vector<int32_t>() == std::vector<int32_t>(6, 0));
  CHECK(zeros({0, 4}).numel() == 0);

  Tensor o = ones({4}, DType::kBFloat16);
  for (bfloat16 b : o.to_vector<bfloat16>()) CHECK(b.bits == 0x3f80);
  CHECK(ones({2, 2}).to_vector<float>() == std::vector<float>(4, 1.0f));

  CHECK(vals(full({2, 2}, -1.5, DType::kFloat64)) == std::vector<double>(4, -1.5));
  CHECK(full({3}, 7.9, DType::kInt64).to_vector<int64_t>() == std::vector<int64_t>(3, 7));
  Tensor s = full({}, 2.0);
  CHECK(s.dim() == 0);
  CHECK(s.numel() == 1);
  CHECK(s.strides().empty());
  CHECK(s.item() == 2.0);
  CHECK(scalar_tensor(3.5, DType::kFloat64).item() == 3.5);

  CHECK(arange(5).dtype() == DType::kInt64);
  CHECK(arange(5).to_vector<int64_t>() == std::vector<int64_t>{0, 1, 2, 3, 4});
  CHECK(arange(3, DType::kFloat32).to_vector<float>() == std::vector<float>{0, 1, 2});
  CHECK(arange(0).shape() == Shape{0});

  Tensor l = zeros_like(o);
  CHECK(l.dtype() == DType::kBFloat16);
  CHECK(l.shape() == o.shape());
  CHECK(!l.shares_storage(o));
  CHECK(empty_like(z).dtype() == DType::kInt32);
  CHECK(from_vector_as({1.5, -2.5}, {2}, DType::kInt32).to_vector<int32_t>() ==
        std::vector<int32_t>{1, -2});
}

TEST_CASE("tensor: item() and item_int()") {
  CHECK(scalar_tensor(-4.25, DType::kFloat64).item() == -4.25);
  CHECK(ones({1, 1}).item() == 1.0);
  Tensor m = iota({3, 4});
  CHECK(m.transpose(0, 1).select(0, 2).select(0, 1).item() == 6.0);
  CHECK(full({}, 1.5, DType::kBFloat16).item() == 1.5);
  const int64_t big = (int64_t{1} << 53) + 1;  // not a double
  CHECK(full({1}, 0, DType::kInt64).fill_(0).item_int() == 0);
  Tensor b = from_vector<int64_t>({big}, {1});
  CHECK(b.item_int() == big);
  CHECK(from_vector<int32_t>({-7}, {}).item_int() == -7);
}

TEST_CASE("tensor: to_vector follows strides") {
  Tensor m = iota({3, 4});
  CHECK(vals(m.transpose(0, 1)) == std::vector<double>{0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11});
  CHECK(vals(m.slice(1, 1, 4, 2)) == std::vector<double>{1, 3, 5, 7, 9, 11});
  CHECK(vals(m.select(1, 3)) == std::vector<double>{3, 7, 11});
  CHECK(vals(m.select(0, 1).unsqueeze(0).expand({2, 4})) ==
        std::vector<double>{4, 5, 6, 7, 4, 5, 6, 7});
  CHECK(m.transpose(0, 1).slice(0, 0, 2).to_vector<int32_t>() ==
        std::vector<int32_t>{0, 4, 8, 1, 5, 9});
  const std::vector<bfloat16> b = m.select(1, 1).to_vector<bfloat16>();
  REQUIRE(b.size() == 3);
  CHECK(static_cast<float>(b[2]) == 9.0f);
  CHECK(zeros({0, 3}).transpose(0, 1).to_vector<float>().empty());
}

TEST_CASE("tensor: fill_, zero_ and copy_ on strided views") {
  Tensor m = zeros({3, 4});
  m.select(1, 2).fill_(7);
  CHECK(vals(m) == std::vector<double>{0, 0, 7, 0, 0, 0, 7, 0, 0, 0, 7, 0});
  m.transpose(0, 1).slice(0, 0, 4, 2).fill_(1);  // columns 0 and 2
  CHECK(vals(m) == std::vector<double>{1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0});

  Tensor r = iota({3, 4});
  r.slice(0, 1, 2).zero_();  // contiguous with an offset: only row 1
  CHECK(vals(r) == std::vector<double>{0, 1, 2, 3, 0, 0, 0, 0, 8, 9, 10, 11});
  r.select(1, 0).zero_();  // non-contiguous column
  CHECK(vals(r) == std::vector<double>{0, 1, 2, 3, 0, 0, 0, 0, 0, 9, 10, 11});

  Tensor c = zeros({3, 4});
  c.slice(1, 1, 3).copy_(from_vector<double>({10, 20}, {2}));  // broadcast, float64 -> float32
  CHECK(vals(c) == std::vector<double>{0, 10, 20, 0, 0, 10, 20, 0, 0, 10, 20, 0});
  Tensor t = zeros({2, 3});
  t.transpose(0, 1).copy_(arange(6).reshape({3, 2}));  // int64 into a transposed view
  CHECK(vals(t) == std::vector<double>{0, 2, 4, 1, 3, 5});

  Tensor bf = zeros({2, 3}, DType::kBFloat16);
  bf.select(1, 1).fill_(1.5);
  CHECK(bf.to_vector<float>() == std::vector<float>{0, 1.5f, 0, 0, 1.5f, 0});
  Tensor i = zeros({4}, DType::kInt32);
  i.slice(0, 0, 4, 3).fill_(-2.9);
  CHECK(i.to_vector<int32_t>() == std::vector<int32_t>{-2, 0, 0, -2});
}

TEST_CASE("tensor: in-place updates are refused on tensors needing grad while grad mode is on") {
  EnableGradGuard grad_on;
  Tensor w = zeros({3});
  w.set_name("w").set_requires_grad(true);
  const std::string msg = error_of([&] { w.fill_(1); });
  check_contains(msg, "fill_: in-place update of w [3] float32 cpu, which requires grad");
  check_contains(error_of([&] { w.zero_(); }), "zero_: in-place update");
  check_contains(error_of([&] { w.copy_(ones({3})); }), "copy_: in-place update");
  Tensor v = w.slice(0, 0, 2);  // a view recorded on the graph needs grad too
  CHECK(v.requires_grad());
  check_contains(error_of([&] { v.fill_(1); }), "requires grad");
  CHECK(vals(w) == std::vector<double>{0, 0, 0});

  {
    NoGradGuard no_grad;
    w.fill_(2);
    CHECK(vals(w) == std::vector<double>{2, 2, 2});
    w.slice(0, 1, 3).zero_();
    w.select(0, 2).copy_(scalar_tensor(5));
    CHECK(vals(w) == std::vector<double>{2, 0, 5});
  }
  Tensor plain = zeros({3});  // not requiring grad: fine with grad mode on
  plain.fill_(4);
  w.detach().fill_(1);  // a detached handle does not need grad
  CHECK(vals(w) == std::vector<double>{1, 1, 1});
}

RESONA_GPU_TEST("tensor: strided CUDA tensors copy to the host") {
  Tensor m = iota({3, 4}).to(Device::cuda());
  CHECK(vals(m.transpose(0, 1)) == std::vector<double>{0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11});
  CHECK(m.select(1, 2).to_vector<float>() == std::vector<float>{2, 6, 10});
  CHECK(m.select(0, 2).select(0, 1).item() == 9);
  Tensor h = copy_to(m.slice(1, 1, 4, 2), DType::kFloat32, Device::cpu());
  CHECK(h.to_vector<float>() == std::vector<float>{1, 3, 5, 7, 9, 11});
}

}  // namespace resona::testing
