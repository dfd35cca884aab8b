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
// contiguous int64 array inside [0, x_shape[dim]) (index_prepare_cuda replaces bad values
// by 0 and reports them asynchronously).
//
// Backward along dim 0 of a row gather (embedding, index_select dim 0), either mode:
//   one atomic pass links the positions of each id into a list (count and head per row
//   of d_x, zeroed by a memset; next per position), then a warp per row of d_x writes
//   the row once: its d_y rows summed in float32 in increasing position order (the list
//   of at most 32 positions sorted in the warp; longer lists, deterministic mode, by a
//   scan of the ids in order), or zeros: no zeroing pass of d_x, float32 equal to the
//   CPU's sums. In atomic mode, rows of more than 32 ids are summed by several warps
//   with float32 atomics into scratch and written once (see index_rows_list_kernel).
// Otherwise, two modes:
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

// The error record of the asynchronous index check, one per device, in page-locked
// host memory mapped into the device (cuda/backend.h index_check_begin allocates it and
// reads it at every synchronisation). Protocol, device side: the reporting thread first
// claims the record with atomicCAS(claim, 0, launch) on a word in device memory (atomics
// on host memory are not guaranteed over PCIe), then stores launch, pos, value and bound,
// __threadfence_system(), and stores set = 1 last. The host reads `set`; when it is 1 the
// other fields are complete. Only the first claimed launch is kept until the host resets
// the record and the claim word.
struct IndexErrorRecord {
  int64_t launch;  // the launch id given to index_prepare_cuda (> 0)
  int64_t pos;     // flat row-major position in the index tensor
  int64_t value;   // the value found there
  int64_t bound;   // the allowed range was [0, bound)
  int32_t set;     // 1 once the fields above are written
};

// Where one checking launch reports (cuda/backend.h index_check_begin hands it out).
struct IndexReport {
  int64_t launch;             // > 0, names this launch in the record
  IndexErrorRecord* record;   // device alias of the mapped host record
  unsigned long long* claim;  // device word: 0 free, else the launch holding the record
};

// An index tensor as the kernels read it in place: int32 or int64, any strides.
struct RawIndex {
  const void* data;
  bool int32;    // else int64
  int32_t ndim;  // 0..kIndexMaxDims
  int64_t shape[kIndexMaxDims];
  int64_t strides[kIndexMaxDims];  // elements
  int64_t n;                       // numel
};

// Converts an index tensor (int32 or int64, any strides) to contiguous int64 and checks
// 0 <= value < bound without the host waiting. Every value outside [0, bound) is written
// to out as 0, so that a gather or scatter that uses out stays inside x whenever
// bound > 0 (the caller launches none when bound == 0). The smallest flat position holding
// a bad value, that value and the launch id go to the record (protocol above) once per launch.
struct IndexPrepareParams {
  RawIndex index;
  int64_t bound;
  int64_t* out;      // [index.n]
  int64_t* scratch;  // two device words, zeroed by index_prepare_cuda on the stream
  IndexReport report;
};
const char* index_prepare_cuda(const IndexPrepareParams& p, void* stream);

// Embedding forward in one launch, ids read raw (no index_prepare_cuda):
//   out[n, :] = weight[ids[n], :]   for 0 <= ids[n] < V
//   out[n, :] = 0                   otherwise, reported like index_prepare_cuda does
// and, when ids_out is given, ids_out[n] = ids[n] (0 for a bad one): the int64 copy
// the backward scatters with. A warp per position; rows move in 16-byte vectors where
// weight's row and out's row share their offset from a 16-byte boundary. Rows of at most
// 128 16-byte vectors that all start 16-byte aligned (D * elem and weight's row stride
// multiples of 16 bytes, aligned bases) take a warp per 4 positions instead, all loads
// issued before the stores.
// Bytes per call: n * (ids size + 8 if ids_out) + 2 * n * D * elem; one launch.
// The report: block b handles positions 8b .. 8b+7 (32b .. 32b+31 on the 4-position path;
// a grid-stride loop beyond 2^20 blocks) and keeps its smallest bad position in shared memory; at
// its end one thread of each block that saw a bad id tries atomicCAS(claim, 0, launch), and the
// block that claims writes the record (protocol above). So the position reported is the smallest of
// one block, the first to claim: the smallest of the tensor when the bad ids share a
// block (always for n <= 8), otherwise any of the blocks' smallest. Reporting the
// smallest of the whole launch would need a per-launch word zeroed before the launch (a
// second launch, as index_prepare_cuda does), which is what this path saves.
struct EmbeddingFwdParams {
  KernelDType dtype;
  RawIndex ids;
  const void* weight;  // [V, D], strides w_stride0, w_stride1 (elements)
  int64_t V, D, w_stride0, w_stride1;
  void* out;         // [ids.n, D] contiguous
  int64_t* ids_out;  // [ids.n] or nullptr
  IndexReport report;
};
const char* embedding_fwd_cuda(const EmbeddingFwdParams& p, void* stream);

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
