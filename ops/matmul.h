// Matrix products (Eigen on the CPU).
//
//   matmul(a [..., M, K], b [..., K, N]) -> [..., M, N]
//     batch dims broadcast like NumPy (b may be plain [K, N]); both operands at least 2-D.
//     Transposed operands (e.g. w.transpose(0, 1)) are used in place, without a copy.
//   linear(x [..., in], w [out, in], bias [out] or undefined) -> [..., out] = x w^T + bias
//
// Backward: d_a = d_out b^T, d_b = a^T d_out, each summed over broadcast batch dims.
#pragma once

#include "core/tensor.h"

namespace resona {

Tensor matmul(const Tensor& a, const Tensor& b);
Tensor linear(const Tensor& x, const Tensor& w, const Tensor& bias = Tensor());

}  // namespace resona
