// Asynchronous global -> shared copies (cp.async, sm_80 and later) and the staging of a
// block of strided rows into shared memory with them. Device code only; included by .cu
// files.
//
// A thread's copies complete in the order of its commit groups: cp_async_commit() closes
// the group of copies issued since the last one, cp_async_wait<N>() returns once at most N
// of the thread's groups are still in flight. Other threads see the data after a barrier
// that follows the wait.
#pragma once

#include <cstdint>

#include "cuda/convert.cuh"

namespace resona::cuda {

__device__ __forceinline__ void cp_async4(void* smem, const void* gmem) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;" ::"r"(s), "l"(gmem) : "memory");
}
__device__ __forceinline__ void cp_async8(void* smem, const void* gmem) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 8;" ::"r"(s), "l"(gmem) : "memory");
}
// kBytes (4 or 8) into smem, the first src_bytes of them from gmem and the rest zeros
// (src_bytes 0: all zeros, nothing read).
template <int kBytes>
__device__ __forceinline__ void cp_async_zfill(void* smem, const void* gmem, int src_bytes) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;" ::"r"(s), "l"(gmem), "n"(kBytes),
               "r"(src_bytes)
               : "memory");
}
__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;" ::: "memory");
}
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
}

// Rows [0, L) x columns [0, n) of x(i, j) = src[i * rs + j * cs] into dst (row stride ds
// elements, 16-byte aligned), and zeros into rows [L, R) x [0, npad) and rows [0, L) x
// [n, npad), so that a product over the padded R x npad extent reads zeros there. Copies
// go through cp.async (8 bytes when the rows allow it, else 4) and join the caller's next
// commit group; a bfloat16 source that is not contiguous in pairs is copied with plain
// loads and stores (done on return). Called by every thread of the block with the same
// arguments; dst must not be read or written by anyone else until the group is waited for
// and the block has passed a barrier.
template <class T>
__device__ __forceinline__ void stage_rows(T* dst, int ds, const T* src, int64_t rs, int64_t cs,
                                           int L, int n, int R, int npad) {
  constexpr int kE8 = 8 / static_cast<int>(sizeof(T)), kE4 = 4 / static_cast<int>(sizeof(T));
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  const uintptr_t addr = reinterpret_cast<uintptr_t>(src);
  int w = 0;  // elements per copy; 0: plain loads
  if (cs == 1 && n % kE8 == 0 && rs % kE8 == 0 && addr % 8 == 0 && ds % kE8 == 0) {
    w = kE8;
  } else if (kE4 == 1 ||
             (cs == 1 && n % kE4 == 0 && rs % kE4 == 0 && addr % 4 == 0 && ds % kE4 == 0)) {
    w = kE4;
  }
  // A warp per row, its lanes along the row.
  if (w > 0) {
    const int per_row = n / w;
    const int64_t step = static_cast<int64_t>(w) * cs;
    for (int i = warp; i < L; i += warps) {
      T* d = dst + i * ds;
      const T* s = src + i * rs;
      for (int u = lane; u < per_row; u += 32) {
        if (w * sizeof(T) == 8) {
          cp_async8(d + u * w, s + u * step);
        } else {
          cp_async4(d + u * w, s + u * step);
        }
      }
    }
  } else {
    for (int i = warp; i < L; i += warps) {
      for (int j = lane; j < n; j += 32) dst[i * ds + j] = src[i * rs + j * cs];
    }
  }
  const T zero = from_f32<T>(0.f);
  for (int i = warp; i < R; i += warps) {
    const int j0 = i < L ? n : 0;
    for (int j = j0 + lane; j < npad; j += 32) dst[i * ds + j] = zero;
  }
}

// stage_rows for a destination npad columns wide, when the columns are contiguous (cs = 1),
// in 8-byte (else 4-byte) slots, one cp.async each. Where a row's slots fit the block
// (npad / slot <= blockDim.x), each thread keeps one column slot and walks rows
// blockDim.x / (slots per row) apart with two pointers, so a slot costs a few
// instructions and the test of the slot's columns against n is made once; the threads
// past the last whole row of slots idle. Wider rows are walked flat, a thread stepping
// blockDim.x slots at a time with its row and column carried from step to step. A slot
// that straddles column n, or lies past row L, is written with plain loads and zeros.
// Other layouts go to stage_rows.
template <int kBytes, class T>
__device__ __forceinline__ void stage_tile_slots(T* dst, int ds, const T* src, int64_t rs, int L,
                                                 int n, int R, int npad) {
  constexpr int kE = kBytes / static_cast<int>(sizeof(T));
  static_assert(kE >= 1, "whole elements per slot");
  const T zero = from_f32<T>(0.f);
  const int per = npad / kE, step = static_cast<int>(blockDim.x);
  auto copy = [&](T* d, const T* s) {
    if (kBytes == 8) {
      cp_async8(d, s);
    } else {
      cp_async4(d, s);
    }
  };
  if (per <= step) {
    const int rows = step / per, t = static_cast<int>(threadIdx.x);
    if (t >= rows * per) return;
    const int j = t % per * kE, Lr = L < R ? L : R;
    int i = t / per;
    T* d = dst + i * ds + j;
    const T* s = src + i * rs + j;
    const int d_step = rows * ds;
    if (j + kE <= n) {
      for (; i < Lr; i += rows, d += d_step, s += rows * rs) copy(d, s);
    } else if (j < n) {
      for (; i < Lr; i += rows, d += d_step, s += rows * rs) {
#pragma unroll
        for (int x = 0; x < kE; ++x) d[x] = j + x < n ? s[x] : zero;
      }
    }
    for (; i < R; i += rows, d += d_step) {  // past n, or past L
#pragma unroll
      for (int x = 0; x < kE; ++x) d[x] = zero;
    }
    return;
  }
  const int di = step / per, dj = step % per * kE;
  int i = static_cast<int>(threadIdx.x) / per, j = static_cast<int>(threadIdx.x) % per * kE;
  while (i < R) {
    T* d = dst + i * ds + j;
    const T* s = src + i * rs + j;
    if (i < L && j + kE <= n) {
      copy(d, s);
    } else {
#pragma unroll
      for (int x = 0; x < kE; ++x) d[x] = i < L && j + x < n ? s[x] : zero;
    }
    i += di;
    j += dj;
    if (j >= npad) {
      j -= npad;
      ++i;
    }
  }
}

// stage_rows' contract (rows [0, L) x columns [0, n) of x(i, j) = src[i * rs + j * cs]
// into dst, zeros over the rest of R x npad) through stage_tile_slots where the layout
// allows 8- or 4-byte slots (cs = 1, rows, dst stride and npad whole slots), else
// stage_rows.
template <class T>
__device__ __forceinline__ void stage_tile(T* dst, int ds, const T* src, int64_t rs, int64_t cs,
                                           int L, int n, int R, int npad) {
  constexpr int kE8 = 8 / static_cast<int>(sizeof(T)), kE4 = 4 / static_cast<int>(sizeof(T));
  const uintptr_t addr = reinterpret_cast<uintptr_t>(src);
  if (cs == 1 && rs % kE8 == 0 && addr % 8 == 0 && ds % kE8 == 0 && npad % kE8 == 0) {
    stage_tile_slots<8>(dst, ds, src, rs, L, n, R, npad);
  } else if (cs == 1 && rs % kE4 == 0 && addr % 4 == 0 && ds % kE4 == 0 && npad % kE4 == 0) {
    stage_tile_slots<4>(dst, ds, src, rs, L, n, R, npad);
  } else {
    stage_rows<T>(dst, ds, src, rs, cs, L, n, R, npad);
  }
}

// stage_tile's contract for a padded extent kR x kNpad and a block of kThreads threads known
// at compile time, in slots of kBytes (cs = 1; rows, source and dst stride whole slots):
// thread t keeps one column slot (t % slots per row) and walks rows kThreads / (slots per row)
// apart in an unrolled loop (threads past the last whole row of slots idle), every slot one
// cp.async that zero-fills what lies past row L or column n (no separate zero stores, no
// branches). About 9% off gla's d_q/d_k/d_g kernel and 4% off the delta rule's K-gradient
// kernel against stage_tile, whose set-up and zero loops it skips.
template <int kR, int kNpad, int kThreads, int kBytes, class T>
__device__ __forceinline__ void stage_tile_fixed_slots(T* dst, int ds, const T* src, int64_t rs,
                                                       int L, int n) {
  constexpr int kE = kBytes / static_cast<int>(sizeof(T)), kPer = kNpad / kE;
  static_assert(kNpad % kE == 0 && kPer <= kThreads, "whole slots, a whole row per pass");
  constexpr int kRowStep = kThreads / kPer, kIters = (kR + kRowStep - 1) / kRowStep;
  const int t = static_cast<int>(threadIdx.x), j = t % kPer * kE, i0 = t / kPer;
  if (t >= kRowStep * kPer) return;                        // past the last whole row of slots
  const int left = (n - j) * static_cast<int>(sizeof(T));  // bytes of this slot's columns below n
  const int col_bytes = left < 0 ? 0 : (left > kBytes ? kBytes : left);
  T* d = dst + i0 * ds + j;
  const T* s = src + i0 * rs + j;
#pragma unroll
  for (int u = 0; u < kIters; ++u) {
    const int i = i0 + u * kRowStep;
    if (kR % kRowStep != 0 && i >= kR) break;
    const int bytes = i < L ? col_bytes : 0;
    cp_async_zfill<kBytes>(d + u * kRowStep * ds, bytes > 0 ? s + u * kRowStep * rs : src, bytes);
  }
}

// stage_tile for a padded extent kR x kNpad and kThreads (= blockDim.x) threads known at
// compile time: 8- or 4-byte slots through stage_tile_fixed_slots where the layout allows them,
// else stage_rows. (16-byte slots, where rows allow them, measured no faster.)
template <int kR, int kNpad, int kThreads, class T>
__device__ __forceinline__ void stage_tile(T* dst, int ds, const T* src, int64_t rs, int64_t cs,
                                           int L, int n) {
  constexpr int kSize = static_cast<int>(sizeof(T));
  const uintptr_t addr = reinterpret_cast<uintptr_t>(src);
  auto fits = [&](int bytes) {
    const int e = bytes / kSize;
    return cs == 1 && rs % e == 0 && addr % bytes == 0 && ds % e == 0 &&
           reinterpret_cast<uintptr_t>(dst) % bytes == 0;
  };
  if constexpr (kNpad * kSize % 8 == 0 && kNpad * kSize / 8 <= kThreads) {
    if (fits(8)) return stage_tile_fixed_slots<kR, kNpad, kThreads, 8>(dst, ds, src, rs, L, n);
  }
  if constexpr (kNpad * kSize % 4 == 0 && kNpad * kSize / 4 <= kThreads) {
    if (fits(4)) return stage_tile_fixed_slots<kR, kNpad, kThreads, 4>(dst, ds, src, rs, L, n);
  }
  stage_rows<T>(dst, ds, src, rs, cs, L, n, kR, kNpad);
}

// The pieces [y0, y0 + kPiece) of a contraction of length n, double-buffered: the next
// piece is staged (stage(y0, buf) issuing cp.async copies) while the current one is
// multiplied (mul(y0, buf)). Called by every thread of the block; any cp.async group the
// caller committed before is complete by the first mul, and on return the buffers are free
// and no copy is in flight.
template <int kPiece, class StageFn, class MulFn>
__device__ __forceinline__ void pipelined_pieces(int n, unsigned char* buf0, unsigned char* buf1,
                                                 const StageFn& stage, const MulFn& mul) {
  unsigned char* cur = buf0;
  unsigned char* nxt = buf1;
  if (n > 0) stage(0, cur);
  cp_async_commit();
  for (int y0 = 0; y0 < n; y0 += kPiece) {
    if (y0 + kPiece < n) stage(y0 + kPiece, nxt);
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    mul(y0, static_cast<const unsigned char*>(cur));
    __syncthreads();  // cur is read: it takes the piece after next
    unsigned char* const t = cur;
    cur = nxt;
    nxt = t;
  }
  cp_async_wait<0>();
  __syncthreads();
}

// mul(p0) for the pieces [p0, p0 + piece) of a length n in one buffer: the first piece is
// staged and waited for by the caller, each later one is staged (stage(p0)) once the
// previous one is read. Called by every thread of the block.
template <class StageFn, class MulFn>
__device__ __forceinline__ void staged_pieces(int n, int piece, const StageFn& stage,
                                              const MulFn& mul) {
  for (int p0 = 0; p0 < n; p0 += piece) {
    if (p0 > 0) {
      __syncthreads();  // the previous piece is read
      stage(p0);
      cp_async_commit();
      cp_async_wait<0>();
      __syncthreads();
    }
    mul(p0);
  }
}

}  // namespace resona::cuda
