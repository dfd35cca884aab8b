// Counter-based random numbers (Philox-4x32-10, Salmon et al. 2011).
//
// A Generator is (seed, offset): element i of a draw of n values made at offset o is a
// pure function of (seed, o + i). Streams are therefore reproducible on any device and
// in any order, and the whole state is two integers that checkpoints save and restore.
// Each draw advances the offset by the number of 32-bit words it consumed, rounded up to
// a multiple of 4 (one Philox block).
#pragma once

#include <array>
#include <cstdint>

#include "core/tensor.h"

namespace resona {

// One Philox-4x32-10 block: four 32-bit words for counter `ctr` under `key`.
std::array<uint32_t, 4> philox4x32(std::array<uint32_t, 4> ctr, std::array<uint32_t, 2> key);

// Maps a 32-bit word to a float in [0, 1) with 24 random bits (never 1.0).
inline float uint_to_unit_float(uint32_t x) { return (x >> 8) * (1.0f / 16777216.0f); }
inline double uints_to_unit_double(uint32_t hi, uint32_t lo) {
  return ((static_cast<uint64_t>(hi) << 21) ^ (lo >> 11)) * (1.0 / 9007199254740992.0);
}

struct RngState {
  uint64_t seed = 0;
  uint64_t offset = 0;  // in 32-bit words, always a multiple of 4
  bool operator==(const RngState& o) const { return seed == o.seed && offset == o.offset; }
};

class Generator {
 public:
  explicit Generator(uint64_t seed = 0) : state_{seed, 0} {}

  RngState state() const { return state_; }
  void set_state(const RngState& s);
  uint64_t seed() const { return state_.seed; }

  // Reserves `words` 32-bit words of the stream and returns the offset where they start
  // (kernels generate them themselves from (seed, offset)).
  uint64_t reserve(uint64_t words);

  // Word `i` of the stream at absolute position `offset + i` for this seed.
  static uint32_t word_at(uint64_t seed, uint64_t position);

  // Fills new tensors (float32 or float64, CPU; CUDA tensors are filled on the host and
  // copied). uniform in [lo, hi), normal(mean, std) by Box-Muller.
  Tensor uniform(const Shape& shape, double lo = 0.0, double hi = 1.0,
                 DType dtype = DType::kFloat32, Device device = Device::cpu());
  Tensor normal(const Shape& shape, double mean = 0.0, double std = 1.0,
                DType dtype = DType::kFloat32, Device device = Device::cpu());
  // Uniform integers in [lo, hi) as int64.
  Tensor randint(const Shape& shape, int64_t lo, int64_t hi, Device device = Device::cpu());
  // A random permutation of 0..n-1 (Fisher-Yates driven by the stream).
  std::vector<int64_t> permutation(int64_t n);
  // One uniform double in [0, 1) and one integer in [lo, hi) (host-side helpers).
  double next_double();
  int64_t next_int(int64_t lo, int64_t hi);

 private:
  RngState state_;
};

}  // namespace resona
