// Fused multi-tensor optimizer kernels on the GPU (train/optimizer.h has the contract),
// behind plain params (no CUDA or framework headers).
//
// A device array of MultiTensorEntry describes many tensors; each is cut into chunks of
// kMultiTensorChunk elements and one thread block handles one chunk (it finds its tensor
// by binary search over first_chunk), so one launch covers every tensor.
//
// adamw_step_cuda, per element (float32 throughout; g read as float32 or bfloat16):
//   m <- b1 m + (1 - b1) g
//   v <- b2 v + (1 - b2) g^2
//   p <- p * decay - step_size * m / (sqrt(v) * inv_sqrt_bc2 + eps)
// with decay = 1 - lr * wd for entries flagged `decay` (else 1), step_size = lr / bc1,
// inv_sqrt_bc2 = 1 / sqrt(bc2), the scalars formed on the host in double and rounded to
// float32, as the CPU path does.
//
// grad_clip_cuda: the global L2 norm of every gradient by a deterministic two-stage
// reduction (stage 1: one float32 sum of squares per chunk, a fixed tree inside the
// block; stage 2: one block sums the chunk partials in float64 in a fixed order), then
// scale = max_norm / (norm + 1e-6) when norm > max_norm and finite (else 1), written to
// the device, and every gradient multiplied by it in place on the device. The host reads
// the norm only when it asks for it.
#pragma once

#include <cstdint>
#include <type_traits>

namespace resona::cuda {

constexpr int64_t kMultiTensorChunk = 8192;

struct MultiTensorEntry {
  float* param;         // AdamW: float32 master weights (unused by grad_clip_cuda)
  void* grad;           // float32 or bfloat16, contiguous
  float* exp_avg;       // AdamW state m
  float* exp_avg_sq;    // AdamW state v
  int64_t n;            // elements
  int64_t first_chunk;  // chunks of the entries before this one (multi_tensor_layout)
  int32_t grad_bf16;    // 1: grad is bfloat16, 0: float32
  int32_t decay;        // AdamW: 1 when weight decay applies
};
static_assert(std::is_trivially_copyable_v<MultiTensorEntry> && sizeof(MultiTensorEntry) % 8 == 0,
              "MultiTensorEntry is copied to the device as raw 8-byte words");

// Fills first_chunk for entries[0..count) and returns the total number of chunks.
inline int64_t multi_tensor_layout(MultiTensorEntry* entries, int64_t count) {
  int64_t chunks = 0;
  for (int64_t i = 0; i < count; ++i) {
    entries[i].first_chunk = chunks;
    chunks += (entries[i].n + kMultiTensorChunk - 1) / kMultiTensorChunk;
  }
  return chunks;
}

struct AdamWStepParams {
  const MultiTensorEntry* entries;  // device array of `count`
  int64_t count;
  int64_t total_chunks;
  float b1, one_b1, b2, one_b2, step_size, inv_sqrt_bc2, eps, decay;
};
const char* adamw_step_cuda(const AdamWStepParams& p, void* stream);

struct GradClipParams {
  const MultiTensorEntry* entries;  // device array of `count` (grad, n, grad_bf16 read)
  int64_t count;
  int64_t total_chunks;
  float* partial;  // device scratch, total_chunks floats
  double* norm;    // device, one value: the norm before clipping
  float* scale;    // device, one value: the factor applied (1 when not clipped)
  double max_norm;
  bool apply;  // false: compute norm and scale only
};
const char* grad_clip_cuda(const GradClipParams& p, void* stream);

}  // namespace resona::cuda
