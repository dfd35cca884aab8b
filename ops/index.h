// Indexing ops. Index tensors are int32 or int64; an index out of range is an error
// naming the tensor, the position and the value.
//
//   embedding(weight [V, D], ids [...]) -> [..., D]; backward scatters-adds rows into
//       d_weight in index order (deterministic).
//   index_select(x, dim, index [n]) -> x with dim replaced by n entries.
//   gather(x, dim, index) -> out[i][j][k] = x[i][index[i][j][k]][k] (dim = 1), index with
//       the same rank as x and sizes <= x's outside `dim` (as torch.gather).
#pragma once

#include "core/tensor.h"

namespace resona {

Tensor embedding(const Tensor& weight, const Tensor& ids);
Tensor index_select(const Tensor& x, int64_t dim, const Tensor& index);
Tensor gather(const Tensor& x, int64_t dim, const Tensor& index);

}  // namespace resona
