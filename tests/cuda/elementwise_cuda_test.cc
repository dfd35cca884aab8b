// CUDA against CPU for the elementwise kernels, on fresh random inputs, float32 and
// bfloat16, contiguous and one-element (broadcast scalar) operands, odd sizes.
#include <cmath>

#include "core/dispatch.h"
#include "ops/elementwise.h"
#include "tests/test_util.h"

namespace resona::testing {
namespace {

using BinaryFn = Tensor (*)(const Tensor&, const Tensor&);

struct BinaryCase {
  const char* name;
  BinaryFn fn;
  double lo, hi;  // input range (pow needs a positive base)
};

const BinaryCase kBinary[] = {
    {"add", add, -2, 2}, {"sub", sub, -2, 2}, {"mul", mul, -2, 2},
    {"div", div, 0.5, 2}, {"pow", pow, 0.5, 2},
};

// Rounds float32 values to bfloat16 and back, as the GPU sees them.
Tensor round_to_bf16(const Tensor& x) { return copy_to(copy_to(x, DType::kBFloat16, x.device()), DType::kFloat32, x.device()); }

void check_binary_case(const BinaryCase& c, int64_t n_a, int64_t n_b, DType dtype, uint64_t seed) {
  Generator gen(seed);
  const int64_t n = std::max(n_a, n_b);
  Tensor a = gen.uniform({n_a}, c.lo, c.hi);
  Tensor b = gen.uniform({n_b}, c.lo, c.hi);
  if (dtype == DType::kBFloat16) {
    a = round_to_bf16(a);
    b = round_to_bf16(b);
  }
  Tensor expected = c.fn(a, b);  // CPU float32 on the same (rounded) inputs
  Tensor got = c.fn(copy_to(a, dtype, Device::cuda()), copy_to(b, dtype, Device::cuda()));
  REQUIRE(got.device().is_cuda());
  REQUIRE(got.shape() == Shape{n});
  // float32: the same single operation on both sides, up to powf/std::pow ulp
  // differences (1e-6 relative). bfloat16: the GPU computes in float32 and rounds the
  // result to bf16, whose 8-bit significand spaces values 2^-7 apart relative to the
  // power of two below them: rounding moves a value by at most 2^-8 of itself.
  const double rtol = dtype == DType::kBFloat16 ? 1.0 / 256 + 1e-6 : 1e-6;
  INFO(std::string(c.name) << "(n_a=" << n_a << ",n_b=" << n_b << ","
                           << std::string(dtype_name(dtype)) << ")");
  check_close(copy_to(got, DType::kFloat32, Device::cpu()), expected, 1e-30, rtol);
}

}  // namespace

RESONA_GPU_TEST("binary elementwise CUDA vs CPU (n=1,7,4097,1000003; float32, bfloat16)") {
  uint64_t seed = 100;
  for (const BinaryCase& c : kBinary) {
    for (DType dt : {DType::kFloat32, DType::kBFloat16}) {
      for (int64_t n : {1, 7, 4097, 1000003}) {
        check_binary_case(c, n, n, dt, seed++);
        check_binary_case(c, n, 1, dt, seed++);
        check_binary_case(c, 1, n, dt, seed++);
      }
    }
  }
}

RESONA_GPU_TEST("CUDA tensors round-trip through device memory unchanged") {
  Generator gen(5);
  Tensor x = gen.normal({3, 1001});
  Tensor back = copy_to(copy_to(x, x.dtype(), Device::cuda()), x.dtype(), Device::cpu());
  check_close(back, x, 0, 0);
}

TEST_CASE("CUDA ops refuse cases they do not support, naming them") {
  if (!cuda_available()) {
    // Without a GPU, creating a CUDA tensor fails with a message saying why.
    CHECK_THROWS_WITH_AS(zeros({2}, DType::kFloat32, Device::cuda()),
                         doctest::Contains("cuda:0 requested but 0 CUDA device(s) are visible"),
                         Error);
    return;
  }
  Tensor a = zeros({2, 3}, DType::kFloat32, Device::cuda());
  Tensor b = zeros({3}, DType::kFloat32, Device::cuda());
  CHECK_THROWS_WITH_AS(add(a, b), doctest::Contains("not supported yet"), Error);
  Tensor c = zeros({2, 3}, DType::kFloat64, Device::cuda());
  CHECK_THROWS_WITH_AS(add(c, c), doctest::Contains("CUDA supports float32 and bfloat16"), Error);
}

}  // namespace resona::testing
