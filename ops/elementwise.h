// Elementwise ops with broadcasting, and the activations.
//
// Binary ops broadcast like NumPy (shapes aligned on the right; a size-1 or missing dim
// stretches). Both operands must have the same dtype and device: there is no implicit
// type promotion, the error names both tensors. Scalar overloads take a double.
//
// Backward: each input's gradient is the output gradient times the local derivative,
// summed back over the dims that input was broadcast along (sum_to). Gradients are
// returned fresh (never aliasing an input).
//
// CPU: float32 and float64. CUDA (cuda/elementwise.cu): every op here, forward and
// backward, and add_/mul_, in float32 and bfloat16 (float32 arithmetic), on operands of
// any strides and broadcasting; float64, and views that keep more than 8 dims after
// merging contiguous ones, raise an error naming the op and the tensor.
#pragma once

#include "core/tensor.h"

namespace resona {

enum class BinaryKind : int32_t { kAdd = 0, kSub = 1, kMul = 2, kDiv = 3, kPow = 4 };

enum class UnaryKind : int32_t {
  kNeg,
  kExp,
  kLog,
  kSqrt,
  kRsqrt,
  kAbs,
  kSigmoid,
  kTanh,
  kSilu,
  kGelu,
  kSoftplus,
  kRelu,
  kAddScalar,
  kMulScalar,
  kPowScalar,
};

Tensor add(const Tensor& a, const Tensor& b);
Tensor sub(const Tensor& a, const Tensor& b);
Tensor mul(const Tensor& a, const Tensor& b);
Tensor div(const Tensor& a, const Tensor& b);
Tensor pow(const Tensor& a, const Tensor& b);  // a^b; d/db = a^b log a (needs a > 0)
Tensor add(const Tensor& a, double s);
Tensor mul(const Tensor& a, double s);
Tensor pow(const Tensor& a, double p);

Tensor neg(const Tensor& x);
Tensor exp(const Tensor& x);
Tensor log(const Tensor& x);
Tensor sqrt(const Tensor& x);
Tensor rsqrt(const Tensor& x);
Tensor abs(const Tensor& x);  // d/dx at 0 is 0

Tensor sigmoid(const Tensor& x);
Tensor tanh(const Tensor& x);
Tensor silu(const Tensor& x);      // x * sigmoid(x)
Tensor gelu(const Tensor& x);      // exact: x * Phi(x) with the normal CDF Phi
Tensor softplus(const Tensor& x);  // log(1 + e^x); x itself above 20, as PyTorch
Tensor relu(const Tensor& x);      // d/dx at 0 is 0

// Broadcast shape of two shapes, or an error naming both.
Shape broadcast_shapes(const char* op, const Shape& a, const Shape& b);
// Sums `g` down to `shape` (the inverse of broadcasting `shape` up to g's shape).
Tensor sum_to(const Tensor& g, const Shape& shape);

// In-place, not recorded by autograd: refused on a tensor that requires grad while grad
// mode is on. Used by the optimizer and gradient accumulation.
Tensor& add_(Tensor& dst, const Tensor& src, double alpha = 1.0);  // dst += alpha * src
Tensor& mul_(Tensor& dst, double s);

}  // namespace resona
