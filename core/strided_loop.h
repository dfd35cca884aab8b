// Iteration over K strided operands of one shape. Dimensions that are contiguous with
// each other in every operand are merged and size-1 dimensions dropped, so that the
// callback sees the longest possible innermost runs:
//
//   strided_loop<2>(shape, {out.strides(), in.strides()},
//                   [&](const std::array<int64_t, 2>& off, int64_t n,
//                       const std::array<int64_t, 2>& step) { ... });
//
// `off` are element offsets of the run's first element in each operand, `n` the run
// length and `step` each operand's innermost stride (often 1, which callers
// specialise for vectorisation).
#pragma once

#include <array>
#include <cstdint>
#include <vector>

#include "core/tensor.h"

namespace resona {

template <int K, class F>
void strided_loop(const Shape& shape, const std::array<Shape, K>& strides, F&& f) {
  // Collect the non-trivial dims, innermost last.
  std::vector<int64_t> sz;
  std::array<std::vector<int64_t>, K> st;
  for (size_t d = 0; d < shape.size(); ++d) {
    if (shape[d] == 0) return;
    if (shape[d] == 1) continue;
    sz.push_back(shape[d]);
    for (int k = 0; k < K; ++k) st[k].push_back(strides[k][d]);
  }
  // Merge dim i into i+1 when every operand is contiguous across them.
  for (int i = static_cast<int>(sz.size()) - 2; i >= 0; --i) {
    bool mergeable = true;
    for (int k = 0; k < K; ++k) mergeable &= st[k][i] == st[k][i + 1] * sz[i + 1];
    if (!mergeable) continue;
    sz[i + 1] *= sz[i];
    sz.erase(sz.begin() + i);
    for (int k = 0; k < K; ++k) st[k].erase(st[k].begin() + i);
  }
  std::array<int64_t, K> off{};
  std::array<int64_t, K> step{};
  if (sz.empty()) {
    f(off, int64_t{1}, step);
    return;
  }
  const int nd = static_cast<int>(sz.size());
  const int64_t inner = sz[nd - 1];
  for (int k = 0; k < K; ++k) step[k] = st[k][nd - 1];
  std::vector<int64_t> idx(nd, 0);
  while (true) {
    f(off, inner, step);
    int d = nd - 2;
    for (; d >= 0; --d) {
      ++idx[d];
      for (int k = 0; k < K; ++k) off[k] += st[k][d];
      if (idx[d] < sz[d]) break;
      for (int k = 0; k < K; ++k) off[k] -= st[k][d] * sz[d];
      idx[d] = 0;
    }
    if (d < 0) return;
  }
}

}  // namespace resona
