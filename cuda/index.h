// Indexing kernels on the GPU (embedding, index_select, gather), behind plain params
// (no CUDA or framework headers). ops/index.cc owns the op contracts; here every op is
// one strided gather and its adjoint scatter-add over an "out-shaped" space:
//
//   forward  out[c]                      = x[x_off(c)]
//   backward d_x[contiguous x_off(c)]   += d_y[c]
//   x_off(c) = sum_{d != dim} c[d] * x_strides[d] + v(c) * x_strides[dim]
//   v(c)     = idx[flat(c)]   (gather: one index per element)
//            = idx[c[dim]]    (index_select; embedding is index_select of weight [V, D]
//                              along dim 0 with out viewed as [N, D])
//
// out and d_y are contiguous; x may have any strides (rank <= kIndexMaxDims). idx is a
// contiguous int64 array already checked against the bound (index_prepare_cuda).
//
// Backward, two modes:
//   atomic (default): float32 atomicAdd into d_x (or into a float32 scratch copy for
//     bfloat16, rounded once at the end). Fast; the summation order varies run to run.
//   deterministic: a stable radix sort of the (target, position) pairs, then one
//     segment per distinct target summed in float32 in increasing position order, i.e.
//     in the CPU's order (float32 results equal the CPU's bit for bit). Rows
//     (embedding, index_select) sort the n indices and sum whole rows; gather sorts one
//     flat target offset per element.
// Either way d_x is overwritten (zeroed first): gradients do not accumulate.
#pragma once

#include <cstddef>
#include <cstdint>

#include "cuda/elementwise.h"  // KernelDType

namespace resona::cuda {

constexpr int kIndexMaxDims = 8;

// Converts an index tensor (int32 or int64, any strides) to contiguous int64 and checks
// 0 <= value < bound. The smallest flat position holding a bad value is written to
// *bad_pos (-1 when all are good); out keeps the raw values, so out[*bad_pos] is the
// offending value.
struct IndexPrepareParams {
  const void* index;
  bool index_int32;  // else int64
  int32_t ndim;      // 0..kIndexMaxDims
  int64_t shape[kIndexMaxDims];
  int64_t strides[kIndexMaxDims];  // elements
  int64_t n;                       // numel
  int64_t bound;
  int64_t* out;      // [n]
  int64_t* bad_pos;  // one device word
};
const char* index_prepare_cuda(const IndexPrepareParams& p, void* stream);

struct IndexGatherParams {
  KernelDType dtype;
  int32_t ndim;  // of out (and d_y), 1..kIndexMaxDims
  int64_t out_shape[kIndexMaxDims];
  int32_t dim;         // the indexed dim of x
  bool per_element;    // gather (true) or index_select/embedding (false)
  const int64_t* idx;  // [numel(out)] if per_element, else [out_shape[dim]]
  // forward: x's strides (any); backward: ignored (d_x is contiguous in x_shape)
  int64_t x_strides[kIndexMaxDims];
  int64_t x_shape[kIndexMaxDims];  // backward: the shape of d_x (same rank as out)
  const void* src;                 // forward: x;   backward: d_y (contiguous)
  void* dst;                       // forward: out; backward: d_x (contiguous, overwritten)
  bool deterministic;              // backward only
  void* scratch;                   // backward: index_scatter_bwd_scratch_bytes(p) bytes
};

// out = gather(x): reads p.src with p.x_strides, writes p.dst contiguous.
const char* index_gather_fwd_cuda(const IndexGatherParams& p, void* stream);

// Device scratch the backward needs for `p` (0 when none; 256-byte aligned pointer).
size_t index_scatter_bwd_scratch_bytes(const IndexGatherParams& p);
// d_x = scatter_add(d_y), in the mode p.deterministic selects.
const char* index_scatter_bwd_cuda(const IndexGatherParams& p, void* stream);

}  // namespace resona::cuda
