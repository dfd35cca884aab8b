// Device checks shared by the ops.
#pragma once

#include "core/tensor.h"
#include "cuda/elementwise.h"  // KernelDType

namespace resona {

// Throws naming the op when `t` is not on the CPU (an op without a CUDA path yet).
inline void require_cpu(const char* op, const Tensor& t) {
  RESONA_CHECK(t.device().is_cpu()) << op << ": no CUDA path for this op yet; got " << t.describe();
}

// The storage dtype of a CUDA kernel for `t`: float32 or bfloat16; anything else throws
// naming the op.
inline cuda::KernelDType cuda_kernel_dtype(const char* op, const Tensor& t) {
  switch (t.dtype()) {
    case DType::kFloat32:
      return cuda::KernelDType::kFloat32;
    case DType::kBFloat16:
      return cuda::KernelDType::kBFloat16;
    default:
      break;
  }
  RESONA_FAIL() << op << ": CUDA supports float32 and bfloat16, got " << t.describe();
  return cuda::KernelDType::kFloat32;
}

// The stream an op's CUDA kernels launch on: this thread's current stream (cuda/backend.h
// StreamGuard), the default stream (nullptr) unless a guard says otherwise.
inline void* launch_stream() { return backend_for(Device::cuda()).current_stream(); }

}  // namespace resona
