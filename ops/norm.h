// Normalisations over the last dim D.
//
//   rms_norm(x [..., D], weight [D] or undefined, eps)
//       y = x * rsqrt(mean(x^2) + eps) * weight
//   layer_norm(x [..., D], weight [D] or undefined, bias [D] or undefined, eps)
//       y = (x - mean) * rsqrt(var + eps) * weight + bias   (biased variance)
//
// Forward saves x and the per-row rstd (and mean); backward is fused per row.
#pragma once

#include "core/tensor.h"

namespace resona {

Tensor rms_norm(const Tensor& x, const Tensor& weight, double eps = 1e-6);
Tensor layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps = 1e-5);

}  // namespace resona
