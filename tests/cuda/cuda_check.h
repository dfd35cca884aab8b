// Helpers shared by the CUDA-vs-CPU tests: rounding constants, bf16 rounding of CPU
// inputs (what the GPU sees), inputs moved to the GPU (contiguous or as strided views),
// bit patterns for rerun comparisons, and an elementwise bound check.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "tests/test_util.h"

namespace resona::testing {

inline constexpr double kU = 1.0 / (1 << 24);  // float32 unit roundoff, 2^-24
inline constexpr double kBf = 1.0 / 256;  // rounding to bf16 moves a value by <= 2^-8 of itself

// float32 CPU values rounded to bfloat16 and back.
inline Tensor round_to_bf16(const Tensor& x) {
  return copy_to(copy_to(x, DType::kBFloat16, Device::cpu()), DType::kFloat32, Device::cpu());
}

// t (any device, detached) as float32 on the CPU.
inline Tensor host_f32(const Tensor& t) {
  return copy_to(t.detach(), DType::kFloat32, Device::cpu());
}

// The bit patterns of t's elements (any device): bfloat16 as stored, anything else as
// float32. Two runs that should be bit-identical compare equal here.
inline std::vector<uint32_t> bits(const Tensor& t) {
  std::vector<uint32_t> out;
  if (t.dtype() == DType::kBFloat16) {
    for (bfloat16 v : t.to_vector<bfloat16>()) out.push_back(v.bits);
  } else {
    for (float v : t.to_vector<float>()) {
      uint32_t b;
      std::memcpy(&b, &v, 4);
      out.push_back(b);
    }
  }
  return out;
}

// x (CPU) on the GPU as `dtype`: contiguous, or a non-contiguous view of the same values
// (the last two dims' strides swapped, e.g. x [B, T, D] from a [B, D, T] copy; a 1-D
// tensor every other element of a buffer twice as long).
inline Tensor to_cuda(const Tensor& x, DType dtype, bool strided) {
  if (!strided) return copy_to(x, dtype, Device::cuda());
  const int64_t n = x.dim();
  if (n == 1) {
    Tensor wide = zeros({x.shape()[0], 2});
    wide.slice(1, 0, 1).copy_(x.unsqueeze(1));
    Tensor base = copy_to(wide, dtype, Device::cuda());
    return make_view(base, x.shape(), {2}, 0);
  }
  Tensor base = copy_to(x.transpose(n - 2, n - 1).contiguous(), dtype, Device::cuda());
  Shape strides = base.strides();
  std::swap(strides[n - 2], strides[n - 1]);
  return make_view(base, x.shape(), strides, 0);
}

// t, now a leaf that requires grad.
inline Tensor grad_leaf(Tensor t) {
  t.set_requires_grad(true);
  return t;
}

inline std::vector<double> values_of(const Tensor& t) { return t.detach().to_vector<double>(); }

// |got - want| <= bound elementwise, reporting the first element outside it.
inline void check_bound(const std::string& what, const Tensor& got, const std::vector<double>& want,
                        const std::vector<double>& bound) {
  INFO(what);
  REQUIRE(got.defined());
  const std::vector<double> g = values_of(got);
  REQUIRE(g.size() == want.size());
  for (size_t i = 0; i < g.size(); ++i) {
    const double err = std::abs(g[i] - want[i]);
    if (!(err <= bound[i]) && g[i] != want[i]) {
      INFO("element " << i << " of " << g.size() << ": got " << g[i] << ", expected " << want[i]
                      << " (error " << err << ", allowed " << bound[i] << ")");
      CHECK(false);
      return;
    }
  }
  CHECK(true);
}

}  // namespace resona::testing
