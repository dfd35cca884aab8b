// CUDA dropout against the CPU: the device Philox words equal Generator::word_at (seeds
// with high bits, offsets past 2^32 blocks, unaligned starts), and the CUDA dropout mask,
// values and backward equal the CPU's for the same generator state, bit for bit:
// float32 kept values are the same single multiply by float(1/(1-p)); bfloat16 ones
// are that float32 product rounded once, i.e. the CPU's float32 result on the same
// (bf16-rounded) input rounded to bfloat16. Odd sizes, strided inputs, p from 0.01 to
// 0.9, nonzero generator offsets.
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "cuda/dropout.h"
#include "ops/dropout.h"
#include "tests/cuda/cuda_check.h"
#include "tests/test_util.h"

namespace resona::testing {
namespace {

// A view of `x` (CPU float32) on the GPU as `dtype` with reversed strides (same values).
Tensor strided_cuda(const Tensor& x, DType dtype) {
  const int64_t n = x.dim();
  Shape perm(n);
  for (int64_t d = 0; d < n; ++d) perm[d] = n - 1 - d;
  Tensor base = copy_to(x.permute(perm).contiguous(), dtype, Device::cuda());
  Shape strides(n);
  for (int64_t d = 0; d < n; ++d) strides[d] = base.strides()[n - 1 - d];
  return make_view(base, x.shape(), strides, 0);
}

void check_same_bits(const Tensor& got, const Tensor& expected, const std::string& what) {
  INFO(what);
  REQUIRE(got.shape() == expected.shape());
  const std::vector<uint32_t> g = bits(got), e = bits(expected);
  size_t first_bad = g.size();
  for (size_t i = 0; i < g.size(); ++i) {
    if (g[i] != e[i]) {
      first_bad = i;
      break;
    }
  }
  INFO("first differing element " << first_bad << " of " << g.size());
  CHECK(first_bad == g.size());
}

}  // namespace

RESONA_GPU_TEST(
    "device Philox-4x32-10 words equal Generator::word_at (seeds 0, 1, 2^32+5, "
    "0xDEADBEEFCAFEF00D; offsets 0, 3, 4, 2^34+8, 2^40+1; n = 1, 7, 1001)") {
  const uint64_t seeds[] = {0, 1, (uint64_t{1} << 32) + 5, 0xDEADBEEFCAFEF00Dull};
  const uint64_t offsets[] = {0, 3, 4, (uint64_t{1} << 34) + 8, (uint64_t{1} << 40) + 1};
  for (uint64_t seed : seeds) {
    for (uint64_t offset : offsets) {
      for (int64_t n : {1, 7, 1001}) {
        Tensor out = empty({n}, DType::kInt32, Device::cuda());
        cuda::PhiloxWordsParams p{seed, offset, n, static_cast<uint32_t*>(out.raw_data())};
        REQUIRE(cuda::philox_words_cuda(p, nullptr) == nullptr);
        const std::vector<int32_t> got = out.to_vector<int32_t>();
        int64_t bad = -1;
        for (int64_t i = 0; i < n && bad < 0; ++i) {
          if (static_cast<uint32_t>(got[i]) != Generator::word_at(seed, offset + i)) bad = i;
        }
        INFO("seed " << seed << " offset " << offset << " n " << n << ": first mismatch " << bad);
        CHECK(bad == -1);
      }
    }
  }
}

RESONA_GPU_TEST(
    "dropout CUDA masks, values and backward equal the CPU's (x=[1],[7],[4097],"
    "[3,129,65],[2,3,4,5,6] strided; p=0.01,1/3,0.5,0.9; float32, bfloat16; "
    "generator offsets 0 and 12)") {
  const Shape shapes[] = {{1}, {7}, {4097}, {3, 129, 65}, {2, 3, 4, 5, 6}};
  const double ps[] = {0.01, 1.0 / 3.0, 0.5, 0.9};
  uint64_t seed = 700;
  for (const Shape& shape : shapes) {
    for (double p : ps) {
      for (DType dt : {DType::kFloat32, DType::kBFloat16}) {
        for (bool strided : {false, true}) {
          if (strided && shape.size() < 2) continue;
          Generator data(seed++);
          // No zeros in x or d_y, so a zero output means a dropped element.
          Tensor x = data.uniform(shape, 0.5, 1.5);
          Tensor d_y = data.uniform(shape, -1.5, -0.5);
          if (dt == DType::kBFloat16) {
            x = round_to_bf16(x);
            d_y = round_to_bf16(d_y);
          }
          const uint64_t gen_seed = seed * 7919;
          const uint64_t skip = seed % 2 == 0 ? 0 : 12;

          Generator g_cpu(gen_seed);
          g_cpu.reserve(skip);
          Tensor x_cpu = x.clone();
          x_cpu.set_requires_grad(true);
          Tensor y_cpu = dropout(x_cpu, p, true, g_cpu);
          y_cpu.backward(d_y);

          Generator g_gpu(gen_seed);
          g_gpu.reserve(skip);
          Tensor x_gpu = strided ? strided_cuda(x, dt) : copy_to(x, dt, Device::cuda());
          x_gpu.set_requires_grad(true);
          Tensor y_gpu = dropout(x_gpu, p, true, g_gpu);
          y_gpu.backward(copy_to(d_y, dt, Device::cuda()));

          const std::string name = "dropout(x=" + shape_str(shape) + ",p=" + std::to_string(p) +
                                   "," + dtype_name(dt) + (strided ? ",strided" : "") +
                                   ",offset=" + std::to_string(skip) + ")";
          CHECK_MESSAGE(g_gpu.state() == g_cpu.state(), name, ": generators advanced alike");
          REQUIRE(y_gpu.device().is_cuda());
          REQUIRE(y_gpu.dtype() == dt);
          check_same_bits(y_gpu, copy_to(y_cpu.detach(), dt, Device::cpu()), name + " forward");
          check_same_bits(x_gpu.grad(), copy_to(x_cpu.grad(), dt, Device::cpu()),
                          name + " backward regenerates the mask");
          // The mask itself: zero exactly where the CPU's is.
          const std::vector<float> yc = y_cpu.to_vector<float>();
          const std::vector<float> yg =
              copy_to(y_gpu, DType::kFloat32, Device::cpu()).to_vector<float>();
          int64_t mask_diff = 0;
          for (size_t i = 0; i < yc.size(); ++i) mask_diff += (yc[i] == 0) != (yg[i] == 0);
          CHECK_MESSAGE(mask_diff == 0, name, ": ", mask_diff, " mask positions differ");
        }
      }
    }
  }
}

RESONA_GPU_TEST("dropout on CUDA: identity cases draw nothing; float64 is refused untouched") {
  Tensor x = copy_to(Generator(1).uniform({5}), DType::kFloat32, Device::cuda());
  Generator gen(3);
  CHECK(dropout(x, 0.5, false, gen).is_same(x));
  CHECK(dropout(x, 0.0, true, gen).is_same(x));
  CHECK(gen.state().offset == 0);
  Tensor x64 = zeros({5}, DType::kFloat64, Device::cuda());
  CHECK_THROWS_WITH_AS(dropout(x64, 0.5, true, gen),
                       doctest::Contains("dropout: CUDA supports float32 and bfloat16"), Error);
  CHECK(gen.state().offset == 0);
}

}  // namespace resona::testing
