// Causal depthwise 1-D convolution over time, channels last.
//
//   causal_conv1d(x [B, T, D], weight [D, W], bias [D] or undefined) -> [B, T, D]
//   y[b, t, d] = bias[d] + sum_{j=0}^{W-1} weight[d, j] * x[b, t - (W-1) + j, d]
//   (x before t = 0 is zero). W in 2..8.
//
// The weight layout is that of causal-conv1d / FLA's ShortConvolution (weight[d, W-1]
// multiplies the current step). Backward: d_x by the transposed (anti-causal) filter,
// d_weight and d_bias summed over B and T.
#pragma once

#include "core/tensor.h"

namespace resona {

Tensor causal_conv1d(const Tensor& x, const Tensor& weight, const Tensor& bias = Tensor());

}  // namespace resona
