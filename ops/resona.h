// Retrieval ops of the Resona layer (DESIGN.md, "Resona: what we decided where the paper
// is silent"): the chunk-and-search step (chunk_search), the knowledge-integration
// cross-attention over the retrieved chunks (chunk_attention), and the parameter-free
// `lexical` encoder (lexical_features). Implementations: ops/resona.cc (CPU) and
// cuda/resona.cu (CUDA kernels).
//
// Chunks and query blocks. Chunk j covers positions [j*c, (j+1)*c); NC = floor(T / c)
// chunks exist (a trailing partial chunk is never retrieved). Query block q covers
// positions [q*b, min((q+1)*b, T)); NQ = ceil(T / b). Chunk j is eligible for block q iff
//   (j+1)*c - 1 <= q*b
// (every token of the chunk is at or before the block's first position), so retrieval is
// causal for every position of the block. Block q has n_el(q) = min(NC, floor((q*b+1)/c))
// eligible chunks: ids 0 .. n_el(q)-1.
#pragma once

#include <cstdint>

#include "core/tensor.h"

namespace resona {

struct ChunkSearchOptions {
  int64_t chunk = 64;       // c >= 1
  int64_t top_k = 1;        // k >= 1
  int64_t query_block = 1;  // b >= 1
};

// Cosine top-k over the eligible chunks of each query block.
//
//   query:     [B, T, E]   the query embedding at every position; block q uses row q*b
//   chunk_emb: [B, NC, E]  NC = floor(T / c), one embedding per complete chunk
//   returns    int32 [B, NQ, k] on the inputs' device: the ids of the k eligible chunks
//              of highest cos(query[n, q*b], chunk_emb[n, j]), by descending similarity,
//              ties to the smaller id, -1 in the slots past n_el(q) when fewer than k
//              chunks are eligible.
//
// Neither input needs to be normalised: cos(x, y) = x.y / (|x| |y|), and 0 when either is
// the zero vector. A NaN similarity ranks below every number. Not differentiable: the
// values are read as if detached (inputs may require grad; nothing flows back to them).
// Any strides; float32 or float64 on the CPU (similarities in float64), float32 or
// bfloat16 on CUDA (float32 arithmetic).
//
// CUDA: the similarities of a slab of (sequence, block) rows against all chunks are
// formed in a device scratch of at most 2^24 floats (64 MiB; at T = 4096, c = 2, b = 1
// that is two slabs per three sequences), by a tiled kernel that skips tiles of
// ineligible chunks; one block per row then extracts its top k by k passes of a block
// argmax below the previous pick. No host synchronisation.
Tensor chunk_search(const Tensor& query, const Tensor& chunk_emb, const ChunkSearchOptions& opt);

struct ChunkAttentionOptions {
  int64_t chunk = 64;        // c >= 1
  int64_t query_block = 1;   // b >= 1
  int64_t local_window = 0;  // w >= 0
  double scale = 0;          // 0: Dk^-1/2
  // CUDA with idx on the GPU: false skips reading the check's result back (no host
  // synchronisation; for ids straight from chunk_search). Entries that are not eligible
  // are then ignored (as -1) and a repeated id counts its chunk twice. The CPU and ids on
  // the CPU are always checked.
  bool check_ids = true;
};

// Knowledge-integration cross-attention over retrieved chunks (differentiable; listed in
// ops/op_list.h as chunk_attention). For position i in block q = floor(i / b), head h:
//
//   keys(i) = { j*c + r : j in idx[n, q, :], j >= 0, 0 <= r < c }          retrieved
//           U { p : max(0, i - w + 1) <= p <= i }                          local window
//             (a window position inside a retrieved chunk is counted once, as retrieved)
//   logit(i, p) = scale * q[n,i,h,:] . k[n,p,h,:] + bias[n, q, s]   (s: the slot of p's
//                 chunk in idx[n, q, :]; window-only positions get no bias)
//   o[n,i,h,:]  = sum_{p in keys(i)} softmax_p(logit(i, .)) v[n,p,h,:]   (no keys: o = 0)
//
//   q, k: [B, T, H, Dk]   v: [B, T, H, Dv]   idx: int32 or int64 [B, NQ, kk]
//   bias: [B, NQ, kk] or undefined        returns o [B, T, H, Dv]
//
// idx comes from chunk_search or from an offline mask file, so it is checked: every
// entry is -1 (an empty slot, anywhere in the row) or an id eligible for its block, and no
// id appears twice in one block; a violation throws naming the sequence, block, slot and
// id. On CUDA with idx on the GPU the check runs in a kernel and reads one word back (a
// host synchronisation, which check_ids = false skips); the kernels themselves skip any
// entry that is not eligible, so even unchecked ids cannot read out of bounds.
//
// Backward: d_q, d_k, d_v and d_bias, only those needed, as fresh tensors (idx gets
// none). With P = softmax, dP(i,p) = d_o[i] . v[p], D_i = sum_p P dP, dS = P (dP - D_i):
//   d_q[i] = scale sum_p dS(i,p) k[p]        d_k[p] = scale sum_i dS(i,p) q[i]
//   d_v[p] = sum_i P(i,p) d_o[i]             d_bias[n,q,s] = sum over the block's
//                                            positions, heads and slot-s keys of dS
// Memory is O(T (kk c + w)) at most: the key set of each position is enumerated, never a
// dense T x T mask. Saved for backward: q, k, v, the checked idx, bias, the per-(n, i, h)
// log-sum-exp of the logits.
//
// CPU: float32 and float64 (dot products in the input type; softmax sums and the scattered
// d_k, d_v, d_bias accumulated in float64 and rounded once). CUDA: float32 and bfloat16
// with float32 arithmetic, Dk, Dv <= 256, any strides of q, k, v, bias and d_o. One warp
// per (n, i, h) gathers its keys with an online softmax; backward recomputes the
// probabilities from the log-sum-exp. d_k and d_v are deterministic without atomics:
// each key position p enumerates the queries that see it (the blocks that retrieved p's
// chunk, from inverse lists built by a stable sort of idx, then the window queries
// p .. p+w-1) and sums their terms in that fixed order; d_bias sums per-position partials
// in position and head order.
Tensor chunk_attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& idx,
                       const Tensor& bias, const ChunkAttentionOptions& opt);

// The `lexical` encoder's features (no parameters; CPU only, the tokens are on the host).
//
//   tokens: int32 or int64 [B, T]      returns float32 [B, T, dim]
//   out[n, t, :] = sum over n-grams g ending at t of one_hot(lexical_hash(g) % dim)
//
// The n-grams ending at t are the token runs (t-n+1 .. t) for n = 1 .. max_ngram whose
// start is inside t's segment: t - n + 1 >= floor(t / segment) * segment. segment = c
// gives chunk features (a chunk's features depend only on its own tokens); segment = 1
// means no segmentation, the n-grams being clipped only at position 0 (query features,
// which may span chunk boundaries). With c = 1 the two calls thus coincide.
//
// lexical_hash of the n-gram (x_1 .. x_n) is data/hash.h's hash64 of the n token ids
// written as little-endian int64 words (8n bytes), seed 0; in closed form, with P1 =
// 0x9E3779B97F4A7C15, P2 = 0xC2B2AE3D27D4EB4F, P3 = 0x165667B19E3779F9, arithmetic mod 2^64:
//   h = 8n * P3;  for each x_m: h = rotl(h ^ (x_m * P1), 31) * P2
//   h ^= h >> 33; h *= P2; h ^= h >> 29; h *= P3; h ^= h >> 32
// Offline retrieval masks depend on these values: they must never change (a test pins
// some). dim >= 1, max_ngram >= 1, segment >= 1.
Tensor lexical_features(const Tensor& tokens, int64_t dim, int64_t max_ngram, int64_t segment);

// lexical_hash of the n-gram tokens[0 .. n) (the definition above).
uint64_t lexical_hash(const int64_t* tokens, int64_t n);

}  // namespace resona
