// Philox-4x32-10 on the device, bit for bit the generator of core/rng.cc (which .cu
// files cannot include): the same multipliers, Weyl increments, round function and
// (seed, position) -> word mapping, so that a kernel drawing word `position` of a
// stream gets exactly Generator::word_at(seed, position).
//
//   block = position / 4,  counter = {lo(block), hi(block), 0, 0},  key = {lo(seed), hi(seed)}
//   round: (hi0, lo0) = M0 * c0, (hi1, lo1) = M1 * c2 (64-bit products)
//          c = {hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0};  k0 += W0;  k1 += W1
//   word_at(seed, position) = philox(counter, key)[position % 4]
//
// tests/cuda/dropout_cuda_test.cc compares these words with the host's.
#pragma once

#include <cstdint>

namespace resona::cuda {

struct PhiloxWords {
  uint32_t w[4];
};

__host__ __device__ __forceinline__ PhiloxWords philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2,
                                                              uint32_t c3, uint32_t k0,
                                                              uint32_t k1) {
  constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u;
  constexpr uint32_t kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;
#pragma unroll
  for (int round = 0; round < 10; ++round) {
    const uint64_t p0 = static_cast<uint64_t>(kM0) * c0;
    const uint64_t p1 = static_cast<uint64_t>(kM1) * c2;
    const uint32_t hi0 = static_cast<uint32_t>(p0 >> 32), lo0 = static_cast<uint32_t>(p0);
    const uint32_t hi1 = static_cast<uint32_t>(p1 >> 32), lo1 = static_cast<uint32_t>(p1);
    const uint32_t n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
    k0 += kW0;
    k1 += kW1;
  }
  return {{c0, c1, c2, c3}};
}

// The four words of Philox block `block` (stream positions 4*block .. 4*block + 3).
__host__ __device__ __forceinline__ PhiloxWords philox_block(uint64_t seed, uint64_t block) {
  return philox4x32_10(static_cast<uint32_t>(block), static_cast<uint32_t>(block >> 32), 0u, 0u,
                       static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
}

// Generator::word_at(seed, position).
__host__ __device__ __forceinline__ uint32_t philox_word_at(uint64_t seed, uint64_t position) {
  return philox_block(seed, position / 4).w[position % 4];
}

}  // namespace resona::cuda
