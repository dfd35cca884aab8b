// Tensor-core products through mma.sync with the fragment layouts of the PTX ISA, for
// kernels that load their operands and store their results element by element (odd sizes,
// strided or unaligned rows) instead of through wmma's opaque fragments. Device code only;
// included by .cu files (sm_80 and later).
//
// m16n8k8, TF32 inputs, float32 accumulation: D[16 x 8] += A[16 x 8] B[8 x 8]. With
// g = lane / 4 and t = lane % 4, lane holds
//   A: a[0] = (g, t), a[1] = (g + 8, t), a[2] = (g, t + 4), a[3] = (g + 8, t + 4)
//   B: b[0] = (t, g), b[1] = (t + 4, g)
//   D: d[0] = (g, 2t), d[1] = (g, 2t + 1), d[2] = (g + 8, 2t), d[3] = (g + 8, 2t + 1)
#pragma once

#include <cstdint>

namespace resona::cuda {

// x rounded to TF32 (to nearest, ties away from zero, as cvt.rna does for finite x), as
// the bits mma reads: an integer add and a mask, where sm_90 emulates cvt.rna.tf32 in
// about five instructions. An infinite x comes out NaN (so does a NaN).
__device__ __forceinline__ uint32_t to_tf32(float x) {
  return (__float_as_uint(x) + 0x1000u) & 0xffffe000u;
}

// x = hi + lo to about 2^-21 relative, both TF32: hi = x rounded, lo = x - hi (exact in
// float32, |lo| <= 2^-11 |x|) truncated to TF32.
__device__ __forceinline__ void split_tf32(float x, uint32_t& hi, uint32_t& lo) {
  hi = to_tf32(x);
  lo = __float_as_uint(x - __uint_as_float(hi)) & 0xffffe000u;
}

__device__ __forceinline__ void mma_tf32_m16n8k8(float d[4], const uint32_t a[4],
                                                 const uint32_t b[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// The same product to float32 accuracy (3xTF32): with A = Ah + Al and B = Bh + Bl split
// by split_tf32, D += Al Bh + Ah Bl + Ah Bh (the dropped Al Bl and the truncation of the
// low parts leave a relative error of about 2^-20 per term).
__device__ __forceinline__ void mma_3xtf32_m16n8k8(float d[4], const uint32_t a_hi[4],
                                                   const uint32_t a_lo[4], const uint32_t b_hi[2],
                                                   const uint32_t b_lo[2]) {
  mma_tf32_m16n8k8(d, a_lo, b_hi);
  mma_tf32_m16n8k8(d, a_hi, b_lo);
  mma_tf32_m16n8k8(d, a_hi, b_hi);
}

}  // namespace resona::cuda
