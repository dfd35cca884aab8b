// The process-wide deterministic switch (DESIGN.md, "Numerics and devices").
//
// Off (the default): CUDA backward passes may scatter-add with float32 atomics, whose
// order, and so whose rounding, changes from run to run. On: every CUDA op that would
// use atomics takes an ordered path instead (sort, then sum each segment in index
// order), so that the same inputs give bit-identical results on every run. The CPU
// paths are deterministic either way. The trainer sets it from `deterministic: true`.
//
// Read when an op runs (its backward included), so set it before the first step.
#pragma once

#include <atomic>

namespace resona {

namespace detail {
inline std::atomic<bool>& deterministic_flag() {
  static std::atomic<bool> flag{false};
  return flag;
}
}  // namespace detail

inline void set_deterministic(bool on) { detail::deterministic_flag().store(on); }
inline bool deterministic() { return detail::deterministic_flag().load(); }

// Sets the switch for a scope and restores the previous value (tests).
class DeterministicGuard {
 public:
  explicit DeterministicGuard(bool on) : prev_(deterministic()) { set_deterministic(on); }
  ~DeterministicGuard() { set_deterministic(prev_); }
  DeterministicGuard(const DeterministicGuard&) = delete;
  DeterministicGuard& operator=(const DeterministicGuard&) = delete;

 private:
  bool prev_;
};

}  // namespace resona
