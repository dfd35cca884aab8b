// Device checks shared by the ops.
#pragma once

#include "core/tensor.h"

namespace resona {

// Throws naming the op when `t` is not on the CPU (an op without a CUDA path yet).
inline void require_cpu(const char* op, const Tensor& t) {
  RESONA_CHECK(t.device().is_cpu())
      << op << ": no CUDA path for this op yet; got " << t.describe();
}

}  // namespace resona
