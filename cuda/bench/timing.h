// Timing shared by the GPU benchmarks (ops_bench, layer_bench, cudnn_bench): one call of
// `fn` to warm up (first-use allocations, cuBLAS heuristics, caches), one timed call to
// size the repeats, then the median over `repeats` of the mean time of n back-to-back
// calls, timed with CUDA events on the default stream, n chosen so that a repeat takes
// about `repeat_ms` (at most `max_calls` calls).
#pragma once

#include <cuda_runtime_api.h>

#include <algorithm>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

namespace resona::bench {

struct Timing {
  int repeats = 5;
  double repeat_ms = 25.0;
  int max_calls = 200;
};

// Throws naming the call when a CUDA runtime call failed.
inline void check_cuda(cudaError_t err, const char* what) {
  if (err != cudaSuccess)
    throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(err));
}

// Milliseconds per call of `fn` (see the top of this file).
inline double time_ms(const std::function<void()>& fn, const Timing& timing = {}) {
  cudaEvent_t start, stop;
  check_cuda(cudaEventCreate(&start), "cudaEventCreate");
  check_cuda(cudaEventCreate(&stop), "cudaEventCreate");
  auto timed = [&](int n) {
    check_cuda(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
    check_cuda(cudaEventRecord(start, nullptr), "cudaEventRecord");
    for (int i = 0; i < n; ++i) fn();
    check_cuda(cudaEventRecord(stop, nullptr), "cudaEventRecord");
    check_cuda(cudaEventSynchronize(stop), "cudaEventSynchronize");
    float ms = 0;
    check_cuda(cudaEventElapsedTime(&ms, start, stop), "cudaEventElapsedTime");
    return static_cast<double>(ms) / n;
  };
  fn();
  const double once = std::max(timed(1), 1e-3);
  const int n = std::clamp(static_cast<int>(timing.repeat_ms / once), 1, timing.max_calls);
  std::vector<double> reps;
  for (int r = 0; r < timing.repeats; ++r) reps.push_back(timed(n));
  std::sort(reps.begin(), reps.end());
  check_cuda(cudaGetLastError(), "a timed call");
  check_cuda(cudaEventDestroy(start), "cudaEventDestroy");
  check_cuda(cudaEventDestroy(stop), "cudaEventDestroy");
  return reps[reps.size() / 2];
}

}  // namespace resona::bench
