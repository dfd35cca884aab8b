// softmax and log_softmax along one dim (default the last), computed with the max
// subtracted (no overflow).
//   softmax backward:     d_x = y * (d_y - sum(d_y * y))
//   log_softmax backward: d_x = d_y - softmax(x) * sum(d_y)
#pragma once

#include "core/tensor.h"

namespace resona {

Tensor softmax(const Tensor& x, int64_t dim = -1);
Tensor log_softmax(const Tensor& x, int64_t dim = -1);

}  // namespace resona
