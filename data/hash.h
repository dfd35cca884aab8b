// hash64: the 64-bit checksum of token shards, tokenizer models and source text.
//
// Not cryptographic; it detects truncation and accidental corruption. Definition (so
// that other tools can recompute it), with P1 = 0x9E3779B97F4A7C15, P2 = 0xC2B2AE3D27D4EB4F,
// P3 = 0x165667B19E3779F9, all arithmetic mod 2^64:
//
//   h = seed ^ (n * P3)                             n = number of bytes
//   for each full 8-byte little-endian word w:      h = rotl(h ^ (w * P1), 31) * P2
//   the last n % 8 bytes, zero-extended to a word:  h = rotl(h ^ (w * P1), 31) * P2
//   finish: h ^= h >> 33; h *= P2; h ^= h >> 29; h *= P3; h ^= h >> 32
//
// Every step is a bijection of h for a fixed word, so a change confined to one word
// always changes the result.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace resona::data {

uint64_t hash64(const void* data, size_t n, uint64_t seed = 0);
inline uint64_t hash64(std::string_view s, uint64_t seed = 0) {
  return hash64(s.data(), s.size(), seed);
}
// Mixes one more value into a running hash (order matters).
uint64_t hash_combine(uint64_t h, uint64_t v);

// "0123456789abcdef": 16 lower-case hex digits, and back (throws on anything else).
std::string hex64(uint64_t v);
uint64_t parse_hex64(const std::string& s, const std::string& what);

}  // namespace resona::data
