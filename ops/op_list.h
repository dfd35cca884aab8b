// The one list of differentiable ops. Everything that enumerates ops is generated from
// it: the op-name table below, and the coverage test (tests/ops/coverage_test.cc) that
// fails when an op here lacks a finite-difference case or a hand-computed-values case.
// Adding an op: write its struct and function in its family's file, add it here, and
// register its tests with RESONA_OP_TEST in tests/ops/.
#pragma once

#include <array>
#include <string_view>

// One family per line (clang-format would reflow the list into one block).
// clang-format off
#define RESONA_OPS(X)                                                                      \
  /* elementwise, broadcasting (ops/elementwise.h) */                                      \
  X(add) X(sub) X(mul) X(div) X(neg) X(pow) X(exp) X(log) X(sqrt) X(rsqrt) X(abs)           \
  /* activations (ops/elementwise.h) */                                                    \
  X(sigmoid) X(tanh) X(silu) X(gelu) X(softplus) X(relu)                                    \
  /* reductions (ops/reduce.h) */                                                          \
  X(sum) X(mean) X(max) X(logsumexp)                                                        \
  /* dense math (ops/matmul.h, ops/softmax.h, ops/loss.h, ops/norm.h) */                   \
  X(matmul) X(softmax) X(log_softmax) X(cross_entropy) X(rms_norm) X(layer_norm)            \
  /* indexing and layout (ops/index.h, ops/shape.h) */                                     \
  X(embedding) X(index_select) X(gather) X(concat) X(split)                                 \
  X(reshape) X(permute) X(slice) X(expand) X(squeeze) X(unsqueeze) X(contiguous)       \
  X(cast) X(to_device)                                                                      \
  /* sequence and regularisation (ops/conv.h, ops/dropout.h) */                            \
  X(causal_conv1d) X(dropout)                                                               \
  /* recurrences (ops/scan.h) */                                                           \
  X(linear_scan) X(selective_scan) X(gla) X(delta_rule)                                     \
  /* retrieval (ops/resona.h) */                                                           \
  X(chunk_attention)
// clang-format on

namespace resona {

#define RESONA_OP_NAME_(name) #name,
inline constexpr std::array kOpNames = {RESONA_OPS(RESONA_OP_NAME_)};
#undef RESONA_OP_NAME_

constexpr bool is_registered_op(std::string_view name) {
  for (std::string_view n : kOpNames) {
    if (n == name) return true;
  }
  return false;
}

}  // namespace resona
