// Resona retrieval kernels on the GPU (ops/resona.h has the ops' contracts), behind
// plain params (no CUDA or framework headers). Notation: chunk j covers positions
// [j*c, (j+1)*c), NC = floor(T / c); query block q covers [q*b, min((q+1)*b, T)),
// NQ = ceil(T / b); chunk j is eligible for block q iff 0 <= j and (j+1)*c - 1 <= q*b.
//
// chunk_search_cuda: ids[n, q, :] = the top k eligible chunks by
//   sim(j) = (query[n, q*b] . e[n, j]) * inv|query[n, q*b]| * inv|e[n, j]|   (inv|0| = 0)
// descending, ties to the smaller id, NaN as -inf, -1 past the eligible ones. Rows
// (n, q) are processed in slabs; each row's similarities go to a slice of the scratch
// (float32), then k passes of a block argmax pick the ids, pass r taking the best entry
// strictly below pass r-1's pick in that order. Deterministic; float32 arithmetic.
//
// chunk_attention_fwd_cuda: one warp per (n, i, h), lanes over the head dims (Dk, Dv <=
// kChunkAttnMaxHeadDim), keys enumerated as in ops/resona.h (retrieved chunks in slot
// order, then window positions whose chunk was not retrieved), an online softmax in
// float32. Writes o (contiguous, input dtype) and lse[n, i, h] (float32; -inf for an empty
// key set, where o = 0).
//
// chunk_attention_bwd_cuda, with P = exp(logit - lse), dP = d_o[i] . v[p] and
// D_i = sum_p P dP (= d_o[i] . o[i], formed from the keys so that bfloat16's rounding of
// o does not enter the gradients):
//   1. warp per (n, i, h): D_i and d_q[i] = scale sum_p P (dP - D_i) k[p] in one pass
//      over the keys, and per slot (sum P dP, sum P) for d_bias.
//   2. inverse lists: the entries (n, q, s) with an eligible id, stably radix-sorted by
//      n*NC + id, so each chunk's readers come in (q, s) order.
//   3. warp per (n, p, h): d_k[p], d_v[p] summed over the queries that see p, in a fixed
//      order: the blocks that retrieved p's chunk (sorted entries), then the window
//      queries p .. p+w-1 that did not retrieve it.
//   4. thread per (n, q, s): d_bias = sum over the block's positions and heads, in order,
//      of (sum P dP - D_i sum P).
// No float atomics: every gradient is bit-identical run to run. Gradients are contiguous
// in the input dtype and overwritten.
//
// Block kernels (ChunkAttnKernel::kBlock; kAuto picks them for b >= 16 and w <= 256, where
// a query block's positions share their kk c retrieved keys). One thread block per (n,
// query tile, h), a query tile being up to 64 consecutive positions of one query block. The
// tile's key list is the kk c retrieved positions (slot s, offset r at list index s c + r;
// slots without an eligible id masked) followed by the window candidates
// [max(0, t0 - w + 1), t1) whose chunk was not retrieved, each visible to position i iff
// i - w < p <= i. The tile's Q (scaled) and d_o, and the keys' K and V, 32 keys a step,
// are staged in shared memory as float32 rounded to TF32 and zero-padded to a multiple of
// 16 head dims; the six tile products (S = scale Q K^T, o = P V, dP = d_o V^T, d_q = dS K,
// d_k = dS^T scale Q, d_v = P^T d_o) run on tensor cores (TF32 16 x 16 x 8 fragments,
// float32 accumulators) for both dtypes (bfloat16 values are exact in TF32), P and dS
// being rounded to TF32 as operands. Softmax statistics, masks, bias and all other sums
// are float32.
//   forward: pass 1 forms each row's max and sum of exp over the key steps (online) and
//     lse; pass 2 forms o = sum_p P v with P = exp(S + bias - lse), so the accumulators are
//     never rescaled.
//   backward: pass 1 forms D_i = sum_p P dP over the keys, pass 2 forms dS = P (dP - D_i),
//     d_q (complete within the tile), and per-tile partial sums of d_k, d_v (one row per
//     key of the list, padded to a multiple of 32 keys) and d_bias (one per slot) into the
//     scratch, float32; a reduction kernel then sums each key position's partials in a
//     fixed order (the tiles of the blocks that retrieved its chunk, by the inverse lists
//     above, then the tiles whose window holds it), and d_bias over tiles and heads in order.
// Same contract and determinism as the warp kernels; the results differ from theirs by the
// TF32 rounding of the product operands (2^-11 relative each) and float32 rounding. Entries
// of ids that are not eligible for their block
// are skipped by every kernel (treated as -1), so unchecked ids cannot read out of bounds.
#pragma once

#include <cstddef>
#include <cstdint>

#include "cuda/elementwise.h"  // KernelDType

namespace resona::cuda {

constexpr int64_t kChunkAttnMaxHeadDim = 256;

struct ChunkSearchParams {
  KernelDType dtype;  // of query and chunk_emb
  int64_t B, T, E, NC, c, b, k;
  const void* query;
  int64_t query_strides[3];  // [B, T, E], elements, any
  const void* chunk_emb;
  int64_t chunk_strides[3];  // [B, NC, E], any
  int32_t* out;              // [B, NQ, k] contiguous
  void* scratch;             // chunk_search_scratch_bytes(p) bytes
};
size_t chunk_search_scratch_bytes(const ChunkSearchParams& p);
const char* chunk_search_cuda(const ChunkSearchParams& p, void* stream);

// Converts idx (int32 or int64, any strides, [B, NQ, kk]) to contiguous int32 `out`, and
// writes the smallest flat position of an entry that is neither -1 nor an eligible id
// not repeated earlier in its block to *bad_pos (B*NQ*kk when all are good).
struct ChunkIdsCheckParams {
  const void* idx;
  bool idx_int32;  // else int64
  int64_t idx_strides[3];
  int64_t B, NQ, kk, NC, c, b;
  int32_t* out;
  int64_t* bad_pos;  // one device word
};
const char* chunk_ids_check_cuda(const ChunkIdsCheckParams& p, void* stream);

// Which chunk_attention kernels run: kAuto chooses (see above), the others force one set
// (both handle every case; forcing is for tests and timing).
enum class ChunkAttnKernel { kAuto, kWarp, kBlock };

struct ChunkAttentionParams {
  KernelDType dtype;  // of q, k, v, bias, o, d_o and the gradients
  ChunkAttnKernel kernel;
  int64_t B, T, H, Dk, Dv, NQ, kk, NC, c, b, w;
  float scale;
  const void* q;
  int64_t q_strides[4];  // [B, T, H, Dk], elements, any
  const void* k;
  int64_t k_strides[4];
  const void* v;
  int64_t v_strides[4];
  const int32_t* ids;  // [B, NQ, kk] contiguous
  const void* bias;    // [B, NQ, kk] or nullptr
  int64_t bias_strides[3];
  float* lse;  // [B, T, H]: written by forward, read by backward
  void* o;     // forward: [B, T, H, Dv] contiguous
  // [B, T, H, Dv] contiguous float32: o unrounded. The block backward reads it for
  // D_i = d_o[i] . o[i] (= sum_p P dP, see the kernel), so it must be set there whenever
  // chunk_attention_bwd_reads_o(p): o itself for float32, for bfloat16 a buffer the
  // forward fills when given (nullptr: not written).
  float* o_f32;
  // backward
  const void* d_o;
  int64_t d_o_strides[4];  // any
  void* d_q;               // [B, T, H, Dk] contiguous, or nullptr when not wanted
  void* d_k;               // [B, T, H, Dk] contiguous, or nullptr
  void* d_v;               // [B, T, H, Dv] contiguous, or nullptr
  void* d_bias;            // [B, NQ, kk] contiguous, or nullptr
  void* scratch;           // chunk_attention_bwd_scratch_bytes(p) bytes
};
const char* chunk_attention_fwd_cuda(const ChunkAttentionParams& p, void* stream);
size_t chunk_attention_bwd_scratch_bytes(const ChunkAttentionParams& p);
// True when the backward for these shapes (the block kernels) reads p.o_f32.
bool chunk_attention_bwd_reads_o(const ChunkAttentionParams& p);
const char* chunk_attention_bwd_cuda(const ChunkAttentionParams& p, void* stream);

}  // namespace resona::cuda
