// cross_entropy(logits [N, V], targets int32/int64 [N]) fused with log-softmax.
//
// loss_i = logsumexp(logits_i) - logits_i[target_i] for targets != ignore_index;
// reduction kMean averages over the non-ignored rows (0 when every row is ignored),
// kSum adds them, kNone returns [N] (0 at ignored rows). A target outside [0, V) that
// is not ignore_index is an error naming the row and value.
//
// Forward saves only the per-row logsumexp [N]; backward writes
// d_logits = (softmax - onehot(target)) * d_loss_i into one logits-sized buffer
// (never a second probabilities buffer).
#pragma once

#include "core/tensor.h"

namespace resona {

enum class Reduction { kMean, kSum, kNone };

inline constexpr int64_t kIgnoreIndex = -100;

Tensor cross_entropy(const Tensor& logits, const Tensor& targets,
                     int64_t ignore_index = kIgnoreIndex, Reduction reduction = Reduction::kMean);

}  // namespace resona
