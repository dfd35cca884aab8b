// Helpers shared by the CUDA-vs-CPU tests: rounding constants, bf16 rounding of CPU
// inputs (what the GPU sees), and an elementwise bound check.
#pragma once

#include <cmath>
#include <string>
#include <vector>

#include "tests/test_util.h"

namespace resona::testing {

inline constexpr double kU = 1.0 / (1 << 24);  // float32 unit roundoff, 2^-24
inline constexpr double kBf = 1.0 / 256;  // rounding to bf16 moves a value by <= 2^-8 of itself

// float32 CPU values rounded to bfloat16 and back.
inline Tensor round_to_bf16(const Tensor& x) {
  return copy_to(copy_to(x, DType::kBFloat16, Device::cpu()), DType::kFloat32, Device::cpu());
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
