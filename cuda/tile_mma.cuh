// Tensor-core products of tiles staged in shared memory: a warp's 16 x 8 NT unit of
// accumulators times a contraction over ksteps steps of 8, operands read element by element
// (any row stride, either orientation) and split into TF32 parts as they are loaded; the
// walk over a unit's elements (for_each_frag) and its store to global memory (store_tile).
// Built on cuda/mma.cuh's m16n8k8 fragments. Device code only; included by .cu files.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>
#include <type_traits>

#include "cuda/convert.cuh"
#include "cuda/mma.cuh"

namespace resona::cuda {

// The TF32 high and low parts of an operand element: split from float32, or exact from a
// bfloat16 value (low part zero).
__device__ __forceinline__ void tf32_parts(float x, uint32_t& hi, uint32_t& lo) {
  split_tf32(x, hi, lo);
}
__device__ __forceinline__ void tf32_parts(__nv_bfloat16 x, uint32_t& hi, uint32_t& lo) {
  hi = __float_as_uint(__bfloat162float(x));
  lo = 0;
}

// A B operand held pre-split in row pairs (the delta rule's recurrences hold their state and V'
// tiles so): element (x, j) of a tile sits in pair row 4 (x / 8) + x % 4, column j, of a [rows /
// 2][ld] array of uint4, as {hi(x, j), hi(x + 4, j), lo(x, j), lo(x + 4, j)} for x % 8 < 4, so that
// one 16-byte load gives a lane both TF32 parts of its m16n8k8 B fragment (rows t and t + 4). A row
// offset of 8 s in the tile is 4 s pair rows.
using SplitPairs = uint4;

// The TF32 parts of a lane's B fragment (rows t and t + 4 of a k-step, one column), from p
// at column offset c: from two elements b4 apart, or from one SplitPairs element.
template <class TB>
__device__ __forceinline__ void b_frag(const TB* p, int b4, int c, uint32_t (&bh)[2],
                                       uint32_t (&bl)[2]) {
  if constexpr (std::is_same_v<TB, SplitPairs>) {
    const SplitPairs v = p[c];
    bh[0] = v.x;
    bh[1] = v.y;
    bl[0] = v.z;
    bl[1] = v.w;
  } else {
    tf32_parts(p[c], bh[0], bl[0]);
    tf32_parts(p[b4 + c], bh[1], bl[1]);
  }
}

// acc[c] (column tile c of the warp's 16 x 8 NT unit) += A B over 8 ksteps contraction
// steps, A(i, x) = a[i * a_ld + x] (a[x * a_ld + i] when kATrans) for the unit's 16 rows,
// B(x, j) = b[x * b_ld + j] (b[j * b_ld + x] when kBTrans) for its 8 NT columns, or B in
// SplitPairs (not transposed; b_ld in pairs). Elements are float32 (split here) or bfloat16
// (exact: no low part); with kSplit 3xTF32, Ah Bh + (Al Bh + Ah Bl), less the products of a
// zero low part, the low-part products summed apart (a second dependency chain) and added at
// the end; without, Ah Bh alone (the operands rounded to TF32). Each lane walks one pointer
// per operand.
template <int NT, bool kATrans, bool kBTrans = false, bool kSplit = true, class TA, class TB>
__device__ __forceinline__ void warp_mma(float (&acc)[NT][4], int ksteps, const TA* a, int a_ld,
                                         const TB* b, int b_ld) {
  constexpr bool kAExact = !kSplit || std::is_same_v<TA, __nv_bfloat16>;
  constexpr bool kBExact = !kSplit || std::is_same_v<TB, __nv_bfloat16>;
  constexpr bool kBPairs = std::is_same_v<TB, SplitPairs>;
  static_assert(!kBPairs || !kBTrans, "a SplitPairs operand is read as it is laid out");
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const TA* pa = kATrans ? a + t * a_ld + g : a + g * a_ld + t;
  const int a8 = kATrans ? 8 : 8 * a_ld;  // row i + 8
  const int a4 = kATrans ? 4 * a_ld : 4;  // column x + 4
  const int a_step = kATrans ? 8 * a_ld : 8;
  const TB* pb = kBTrans ? b + g * b_ld + t : b + t * b_ld + g;
  const int b4 = kBTrans ? 4 : 4 * b_ld;  // row x + 4
  const int b8 = kBTrans ? 8 * b_ld : 8;  // column tile c + 1
  const int b_step = kBTrans ? 8 : (kBPairs ? 4 : 8) * b_ld;
  float lo[NT][4] = {};
  for (int s = 0; s < ksteps; ++s, pa += a_step, pb += b_step) {
    uint32_t ah[4], al[4];
    tf32_parts(pa[0], ah[0], al[0]);
    tf32_parts(pa[a8], ah[1], al[1]);
    tf32_parts(pa[a4], ah[2], al[2]);
    tf32_parts(pa[a8 + a4], ah[3], al[3]);
#pragma unroll
    for (int c = 0; c < NT; ++c) {
      uint32_t bh[2], bl[2];
      b_frag(pb, b4, b8 * c, bh, bl);
      if (!kAExact) mma_tf32_m16n8k8(lo[c], al, bh);
      if (!kBExact) mma_tf32_m16n8k8(lo[c], ah, bl);
      mma_tf32_m16n8k8(acc[c], ah, bh);
    }
  }
  if (!kAExact || !kBExact) {
#pragma unroll
    for (int c = 0; c < NT; ++c) {
#pragma unroll
      for (int r = 0; r < 4; ++r) acc[c][r] += lo[c][r];
    }
  }
}
// f(i, j, r, c) over the thread's elements of a warp's 16 x 8 NT unit: element r of column
// tile c sits at row g + 8 (r / 2), column 8 c + 2 t + r % 2 (cuda/mma.cuh).
// With an origin, i and j count from row row0 and column col0 of a larger tile.
template <int NT, class F>
__device__ __forceinline__ void for_each_frag(int row0, int col0, const F& f) {
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
#pragma unroll
  for (int c = 0; c < NT; ++c) {
#pragma unroll
    for (int r = 0; r < 4; ++r) f(g + 8 * (r / 2) + row0, 8 * c + 2 * t + r % 2 + col0, r, c);
  }
}
template <int NT, class F>
__device__ __forceinline__ void for_each_frag(const F& f) {
  for_each_frag<NT>(0, 0, f);
}

// out[i * ld + j] = v[c][r] (rounded to T) for the thread's elements (i, j) of a warp's
// 16 x 8 NT tile at (row0, col0) (as in for_each_frag) with i < rows and j < cols. Where ld
// and col0 are even and out is aligned to two elements, a lane's two adjacent columns go out
// in one store, so that a warp's store fills whole 32-byte sectors (one store per element
// leaves every sector half written).
template <int NT, class T>
__device__ __forceinline__ void store_tile(T* out, int64_t ld, int row0, int col0, int rows,
                                           int cols, const float (&v)[NT][4]) {
  const bool pairs =
      ld % 2 == 0 && col0 % 2 == 0 && reinterpret_cast<uintptr_t>(out) % (2 * sizeof(T)) == 0;
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
#pragma unroll
  for (int c = 0; c < NT; ++c) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int i = row0 + g + 8 * h, j = col0 + 8 * c + 2 * t;
      if (i >= rows) continue;
      T* const p = out + i * ld + j;
      const float a = v[c][2 * h], b = v[c][2 * h + 1];
      if (pairs && j + 1 < cols) {
        store_pair(p, a, b);
      } else {
        if (j < cols) store(p, a);
        if (j + 1 < cols) store(p + 1, b);
      }
    }
  }
}

}  // namespace resona::cuda
