// Layout ops. Views (reshape of a contiguous tensor, view, permute, transpose, slice,
// select, expand, squeeze, unsqueeze, flatten) share the input's storage; their
// backward maps d_out back to the input's geometry (expand sums over the stretched
// dims, slice scatters into zeros). Tensor's methods of the same names call these.
//
//   concat(xs, dim)        copies; backward slices d_out
//   split(x, sizes, dim)   views; backward concatenates (missing gradients as zeros)
//   cast(x, dtype)         converts; backward converts d_out back
//   to_device(x, device)   copies across devices; backward copies back
//   contiguous(x)          a contiguous copy (or x itself); backward is the identity
#pragma once

#include <vector>

#include "core/tensor.h"

namespace resona {

Tensor reshape(const Tensor& x, const Shape& shape);  // one -1 allowed
Tensor permute(const Tensor& x, const Shape& dims);
Tensor slice(const Tensor& x, int64_t dim, int64_t start, int64_t end, int64_t step = 1);
Tensor expand(const Tensor& x, const Shape& shape);  // -1 keeps a dim
Tensor squeeze(const Tensor& x, int64_t dim);
Tensor unsqueeze(const Tensor& x, int64_t dim);
Tensor contiguous(const Tensor& x, bool force_copy = false);
Tensor cast(const Tensor& x, DType dtype);
Tensor to_device(const Tensor& x, Device device);

Tensor concat(const std::vector<Tensor>& xs, int64_t dim);
std::vector<Tensor> split(const Tensor& x, const std::vector<int64_t>& sizes, int64_t dim);
// Equal pieces of `size` (the last one may be shorter), as torch.split with an int.
std::vector<Tensor> split(const Tensor& x, int64_t size, int64_t dim);

}  // namespace resona
