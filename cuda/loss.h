// cross_entropy fused with log-softmax on the GPU. Plain params; no CUDA header here.
//
//   forward (one row of logits per warp or block, online max/sum in one pass):
//     lse_i  = m_i + log(sum_j exp(x_ij - m_i)),  loss_i = (m_i - x_i[t_i]) + log(sum)
//     lse and loss are float32 [N]; loss_i = 0 at ignored rows and at invalid targets
//   finalize (one block, fixed-order sums, no atomics):
//     stats[0] = count of rows whose target is neither ignore_index nor out of range
//     stats[1] = the first row whose target is out of range [0, V), or -1
//     stats[2] = that row's target
//     out[0]   = sum of loss_i (kSum) or that sum / count (kMean; 0 when count == 0)
//   backward (one logits-sized buffer in the logits' dtype, nothing else):
//     d_x_ij = (exp(x_ij - lse_i) - [j == t_i]) * g_i,  0 at ignored rows, with
//     g_i = d_loss[i] (kNone), d_loss[0] (kSum), d_loss[0] / stats[0] (kMean)
// Logits are float32 or bfloat16 (float32 arithmetic), targets int32 or int64, rows
// contiguous.
#pragma once

#include <cstdint>

#include "cuda/elementwise.h"  // KernelDType

namespace resona::cuda {

// Numbering shared with ops/loss.h's Reduction.
enum class LossReduction : int32_t { kMean = 0, kSum = 1, kNone = 2 };

struct CrossEntropyFwdParams {
  KernelDType dtype;
  bool targets_int64;
  LossReduction reduction;
  int64_t n, v;
  const void* logits;   // [n, v]
  const void* targets;  // [n]
  int64_t ignore_index;
  float* lse;      // [n]
  float* loss;     // [n]
  int64_t* stats;  // [3], see above
  float* out;      // [1]; written for kMean and kSum
};
// Returns nullptr on success, else a message naming what failed. Out-of-range targets
// are not an error here: the caller reads stats[1] after the launch.
const char* cross_entropy_fwd_cuda(const CrossEntropyFwdParams& p, void* stream);

struct CrossEntropyBwdParams {
  KernelDType dtype;
  bool targets_int64;
  LossReduction reduction;
  int64_t n, v;
  const void* logits;
  const void* targets;
  int64_t ignore_index;
  const float* lse;
  const int64_t* stats;  // the forward's
  const float* d_loss;   // [n] for kNone, else [1]
  void* d_logits;        // [n, v], logits' dtype
};
const char* cross_entropy_bwd_cuda(const CrossEntropyBwdParams& p, void* stream);

}  // namespace resona::cuda
