// Reductions over chosen dims (negative dims count from the end; an empty list reduces
// over every dim). keepdim keeps the reduced dims with size 1.
//
//   sum, mean       backward broadcasts d_out back (mean divides by the count)
//   max             values only; the gradient goes to the first maximal element (in
//                   row-major order of the reduced dims); a NaN counts as the maximum
//   logsumexp       m + log(sum(exp(x - m))) with m the max (no overflow);
//                   backward d_out * exp(x - out)
//
// CPU: float32 and float64, accumulating in the element type (float64 for gradchecks).
// CUDA (cuda/reduce.cu): float32 and bfloat16, accumulating in float32, deterministic (a
// fixed blocked order that depends only on the shape; no atomics); float64 raises an
// error naming the op and the tensor.
#pragma once

#include <vector>

#include "core/tensor.h"

namespace resona {

Tensor sum(const Tensor& x, const std::vector<int64_t>& dims = {}, bool keepdim = false);
Tensor mean(const Tensor& x, const std::vector<int64_t>& dims = {}, bool keepdim = false);
Tensor max(const Tensor& x, const std::vector<int64_t>& dims = {}, bool keepdim = false);
Tensor logsumexp(const Tensor& x, const std::vector<int64_t>& dims = {}, bool keepdim = false);

// Index of the first maximum along one dim, by max's rule (int64, not differentiable).
Tensor argmax(const Tensor& x, int64_t dim, bool keepdim = false);

}  // namespace resona
