// Indexing ops: embedding, index_select, gather (CPU: float32 and float64; CUDA:
// float32 and bfloat16 with float32 accumulation, kernels in cuda/index.cu).
//
//   embedding:    y[n, :] = weight[ids[n], :]                     (n: flat position in ids)
//                 d_weight[v, :] = sum over n with ids[n] = v of d_y[n, :]
//   index_select: y[o, i, r] = x[o, index[i], r]   (x seen as [outer, x.size(dim), inner])
//                 d_x[o, v, r] = sum over i with index[i] = v of d_y[o, i, r]
//   gather:       y[..., i_dim, ...] = x[..., index[..., i_dim, ...], ...]
//                 d_x[..., v, ...] = sum over positions of index holding v of d_y there
//
// Index tensors (int32 or int64, any strides) are read once in forward, checked against
// their bound, and saved as int64 values: backward needs nothing else (it does not keep
// x or weight), and a later in-place change of the index tensor cannot send backward out
// of bounds. Index tensors are not differentiable: backward returns an undefined
// gradient for them.
//
// Backward writes fresh zero-initialised gradients and scatter-adds into them
// sequentially in row-major index order, so repeated indices accumulate and the result
// is bit-for-bit deterministic.
//
// CUDA: the floating input may have any strides (rank <= 8); the index tensor may live
// on the CPU (read and checked on the host, then uploaded; a bad index throws here) or on
// the same GPU (converted and checked by a kernel, without a host sync: a bad index is
// replaced by 0 so that nothing reads or writes outside x, and the error, naming the op,
// tensors, position and value, is thrown at the next synchronisation with that device:
// a copy to the host such as .cpu() or item(), or a device, stream or event synchronize;
// see cuda/backend.h). Embedding with ids on the GPU does the check, the copy of the
// rows (zeros for a bad id) and the int64 copy for backward in one launch. The int64
// device copy is what backward uses. Backward along dim 0 (embedding, index_select
// dim 0) sorts the indices and writes each row of d_x once, its run summed in index
// order, in both modes (the default mode splits runs of more than 32 equal indices over
// several warps that add in float32 with atomics). Other backwards scatter-add with
// float32 atomics, or, under set_deterministic(true) (ops/determinism.h), sort the
// indices and sum each run in index order. Under set_deterministic(true) every path is
// bit-identical run to run, and for float32 equal to the CPU's sums.
#include "ops/index.h"

#include <algorithm>
#include <vector>

#include "autograd/function.h"
#include "core/dispatch.h"
#include "cuda/backend.h"
#include "cuda/index.h"
#include "ops/determinism.h"
#include "ops/device_util.h"

namespace resona {
namespace {

void check_index_tensor(const char* op, const char* role, const Tensor& index) {
  RESONA_CHECK(index.dtype() == DType::kInt32 || index.dtype() == DType::kInt64)
      << op << ": " << role << " must be int32 or int64, got " << index.describe();
  require_cpu(op, index);
}

// The values of `index` in row-major order, each checked to lie in [0, src.size(dim)).
std::vector<int64_t> read_indices(const char* op, const char* role, const Tensor& index,
                                  const Tensor& src, int64_t dim) {
  const int64_t bound = src.shape()[dim];
  Tensor c = index.contiguous();
  std::vector<int64_t> out(c.numel());
  dispatch_index(op, c.dtype(), [&](auto tag) {
    using I = typename decltype(tag)::type;
    const I* p = c.data<I>();
    for (int64_t n = 0, N = c.numel(); n < N; ++n) {
      const int64_t v = static_cast<int64_t>(p[n]);
      RESONA_CHECK(v >= 0 && v < bound)
          << op << ": " << role << " " << index.describe() << " holds " << v << " at flat position "
          << n << ", outside [0, " << bound << ") (size of dim " << dim << " of " << src.describe()
          << ")";
      out[n] = v;
    }
  });
  return out;
}

// x's shape as [outer, size(dim), inner].
struct Split3 {
  int64_t outer = 1, mid = 1, inner = 1;
};
Split3 split_at(const Shape& shape, int64_t dim) {
  Split3 s;
  for (int64_t d = 0; d < static_cast<int64_t>(shape.size()); ++d) {
    if (d < dim) s.outer *= shape[d];
    if (d == dim) s.mid = shape[d];
    if (d > dim) s.inner *= shape[d];
  }
  return s;
}

// ---------------------------------------------------------------- CUDA helpers

void check_cuda_rank(const char* op, const Tensor& t) {
  RESONA_CHECK(t.dim() <= cuda::kIndexMaxDims)
      << op << " on CUDA: at most " << cuda::kIndexMaxDims << " dims, got " << t.describe();
}

// An int32/int64 CUDA index tensor as the kernels read it in place.
cuda::RawIndex raw_index(const Tensor& index) {
  cuda::RawIndex r{};
  r.data = index.raw_data();
  r.int32 = index.dtype() == DType::kInt32;
  r.ndim = static_cast<int32_t>(index.dim());
  for (int64_t d = 0; d < index.dim(); ++d) {
    r.shape[d] = index.shape()[d];
    r.strides[d] = index.strides()[d];
  }
  r.n = index.numel();
  return r;
}

// Registers the asynchronous check of `index` against dim `dim` of src (its message is
// read_indices' message) and returns where the checking launch reports.
cuda::IndexReport begin_index_check(const char* op, const char* role, const Tensor& index,
                                    const Tensor& src, int64_t dim) {
  return cuda::index_check_begin(
      src.device().index, std::string(op) + ": " + role + " " + index.describe(),
      "outside [0, " + std::to_string(src.shape()[dim]) + ") (size of dim " + std::to_string(dim) +
          " of " + src.describe() + ")");
}

// The values of `index` (CPU or CUDA, int32 or int64, any strides) as a contiguous int64
// tensor on `device`, each checked to lie in [0, src.size(dim)) with read_indices' message.
// CPU index: checked on the host, throws here. CUDA index: checked by the prepare kernel
// without the host waiting; a bad value becomes 0 in the result (the gather stays inside
// src) and the error, with the same message, is thrown at the next synchronisation
// (cuda/backend.h raise_index_errors).
Tensor device_indices(const char* op, const char* role, const Tensor& index, const Tensor& src,
                      int64_t dim) {
  RESONA_CHECK(index.dtype() == DType::kInt32 || index.dtype() == DType::kInt64)
      << op << ": " << role << " must be int32 or int64, got " << index.describe();
  const Device device = src.device();
  if (index.device().is_cpu()) {
    std::vector<int64_t> v = read_indices(op, role, index, src, dim);
    return copy_to(from_vector(v, {static_cast<int64_t>(v.size())}), DType::kInt64, device);
  }
  RESONA_CHECK(index.device() == device) << op << ": " << role << " " << index.describe()
                                         << " is on another device than " << src.describe();
  check_cuda_rank(op, index);
  const int64_t n = index.numel(), bound = src.shape()[dim];
  Tensor out = empty({n}, DType::kInt64, device);
  if (n == 0) return out;
  Tensor scratch = empty({2}, DType::kInt64, device);
  cuda::IndexPrepareParams p{};
  p.index = raw_index(index);
  p.bound = bound;
  p.out = out.data<int64_t>();
  p.scratch = scratch.data<int64_t>();
  p.report = begin_index_check(op, role, index, src, dim);
  const char* err = cuda::index_prepare_cuda(p, launch_stream());
  RESONA_CHECK(err == nullptr) << op << ": reading " << role << " " << index.describe() << ": "
                               << err;
  return out;
}

void fill_geometry(cuda::IndexGatherParams& p, const Shape& out_shape, const Shape& x_shape,
                   int64_t dim, bool per_element, const Tensor& idx) {
  p.ndim = static_cast<int32_t>(out_shape.size());
  for (size_t d = 0; d < out_shape.size(); ++d) {
    p.out_shape[d] = out_shape[d];
    p.x_shape[d] = x_shape[d];
  }
  p.dim = static_cast<int32_t>(dim);
  p.per_element = per_element;
  p.idx = idx.data<int64_t>();
}

// out (contiguous, `out_shape`) = x gathered along `dim` by idx; kernel_out_shape is
// out_shape seen with x's rank (embedding: [N, D]).
Tensor gather_cuda(const char* op, const Tensor& x, const Tensor& idx, const Shape& out_shape,
                   const Shape& kernel_out_shape, int64_t dim, bool per_element) {
  cuda::IndexGatherParams p{};
  p.dtype = cuda_kernel_dtype(op, x);
  fill_geometry(p, kernel_out_shape, x.shape(), dim, per_element, idx);
  for (int64_t d = 0; d < x.dim(); ++d) p.x_strides[d] = x.strides()[d];
  if (x.shape()[dim] == 0) {
    // Every index is outside [0, 0): the check reports it at the next synchronisation;
    // no gather reads the empty x.
    return zeros(out_shape, x.dtype(), x.device());
  }
  Tensor out = empty(out_shape, x.dtype(), x.device());
  p.src = x.raw_data();
  p.dst = out.raw_data();
  const char* err = cuda::index_gather_fwd_cuda(p, launch_stream());
  RESONA_CHECK(err == nullptr) << op << " on " << x.describe() << ": " << err;
  return out;
}

// The adjoint: a fresh contiguous d_x of x_shape.
Tensor scatter_cuda(const char* op, const Tensor& d_y_in, const Tensor& idx, const Shape& x_shape,
                    const Shape& kernel_out_shape, int64_t dim, bool per_element) {
  RESONA_CHECK(d_y_in.device() == idx.device())
      << op << " backward: the gradient " << d_y_in.describe() << " is not on "
      << idx.device().str() << " with the forward's indices";
  cuda::IndexGatherParams p{};
  p.dtype = cuda_kernel_dtype(op, d_y_in);
  Tensor d_y = d_y_in.contiguous();
  fill_geometry(p, kernel_out_shape, x_shape, dim, per_element, idx);
  Tensor d_x = empty(x_shape, d_y.dtype(), d_y.device());
  p.src = d_y.raw_data();
  p.dst = d_x.raw_data();
  p.deterministic = deterministic();
  const size_t bytes = cuda::index_scatter_bwd_scratch_bytes(p);
  Tensor scratch;
  if (bytes > 0) {
    scratch = empty({static_cast<int64_t>((bytes + 7) / 8)}, DType::kInt64, d_y.device());
    p.scratch = scratch.raw_data();
  }
  const char* err = cuda::index_scatter_bwd_cuda(p, launch_stream());
  RESONA_CHECK(err == nullptr) << op << " backward on " << d_y_in.describe() << ": " << err;
  return d_x;
}

// ---------------------------------------------------------------- embedding

struct EmbeddingOp {
  static constexpr const char* kName = "embedding";
  struct Saved {
    std::vector<int64_t> rows;  // ids, row-major (CPU)
    int64_t V = 0, D = 0;
    Tensor idx_dev;  // ids as int64 on the device (CUDA)
  };

  static Tensor forward(Ctx<Saved>& ctx, const Tensor& weight, const Tensor& ids) {
    check_floating(kName, weight);
    if (weight.device().is_cuda()) return forward_cuda(ctx, weight, ids);
    require_cpu(kName, weight);
    check_index_tensor(kName, "ids", ids);
    RESONA_CHECK(weight.dim() == 2)
        << "embedding: weight must be [V, D], got " << weight.describe();
    const int64_t V = weight.shape()[0], D = weight.shape()[1];
    std::vector<int64_t> rows = read_indices(kName, "ids", ids, weight, 0);
    Shape out_shape = ids.shape();
    out_shape.push_back(D);  // [..., D]
    Tensor out = empty(out_shape, weight.dtype());
    dispatch_floating(kName, weight.dtype(), [&](auto tag) {
      using T = typename decltype(tag)::type;
      const T* w = weight.data<T>();
      const int64_t s0 = weight.strides()[0], s1 = weight.strides()[1];
      T* o = out.data<T>();
      for (size_t n = 0; n < rows.size(); ++n) {
        const T* src = w + rows[n] * s0;
        T* dst = o + static_cast<int64_t>(n) * D;
        if (s1 == 1) {
          std::copy(src, src + D, dst);
        } else {
          for (int64_t j = 0; j < D; ++j) dst[j] = src[j * s1];
        }
      }
    });
    if (ctx.requires_grad) ctx.saved = {std::move(rows), V, D, Tensor()};
    return out;
  }

  static Tensor forward_cuda(Ctx<Saved>& ctx, const Tensor& weight, const Tensor& ids) {
    cuda_kernel_dtype(kName, weight);
    RESONA_CHECK(weight.dim() == 2)
        << "embedding: weight must be [V, D], got " << weight.describe();
    const int64_t V = weight.shape()[0], D = weight.shape()[1];
    Shape out_shape = ids.shape();
    out_shape.push_back(D);  // [..., D]
    if (ids.device().is_cuda()) return forward_cuda_ids(ctx, weight, ids, out_shape);
    Tensor idx = device_indices(kName, "ids", ids, weight, 0);
    Tensor out = gather_cuda(kName, weight, idx, out_shape, {ids.numel(), D}, 0, false);
    if (ctx.requires_grad) ctx.saved = {{}, V, D, idx};
    return out;
  }

  // ids on the GPU: one launch reads the raw ids, checks them (asynchronously, as
  // device_indices does), copies the rows (zeros for a bad id) and, when backward will
  // run, writes the int64 ids it scatters with. Per call: 1 launch; bytes: the ids
  // (+ 8 per id written when saved), n rows of weight read and n rows of out written.
  // (Before: a memset of two scratch words, the prepare kernel and the gather: 3
  // launches, and the int64 ids written and read again on every call.)
  static Tensor forward_cuda_ids(Ctx<Saved>& ctx, const Tensor& weight, const Tensor& ids,
                                 const Shape& out_shape) {
    RESONA_CHECK(ids.dtype() == DType::kInt32 || ids.dtype() == DType::kInt64)
        << kName << ": ids must be int32 or int64, got " << ids.describe();
    RESONA_CHECK(ids.device() == weight.device())
        << kName << ": ids " << ids.describe() << " is on another device than "
        << weight.describe();
    check_cuda_rank(kName, ids);
    const int64_t V = weight.shape()[0], D = weight.shape()[1], n = ids.numel();
    const Device device = weight.device();
    Tensor out = empty(out_shape, weight.dtype(), device);
    Tensor idx;
    if (ctx.requires_grad) {
      idx = empty({n}, DType::kInt64, device);
      ctx.saved = {{}, V, D, idx};
    }
    if (n == 0) return out;
    cuda::EmbeddingFwdParams p{};
    p.dtype = cuda_kernel_dtype(kName, weight);
    p.ids = raw_index(ids);
    p.weight = weight.raw_data();
    p.V = V;
    p.D = D;
    p.w_stride0 = weight.strides()[0];
    p.w_stride1 = weight.strides()[1];
    p.out = out.raw_data();
    p.ids_out = ctx.requires_grad ? idx.data<int64_t>() : nullptr;
    p.report = begin_index_check(kName, "ids", ids, weight, 0);
    const char* err = cuda::embedding_fwd_cuda(p, launch_stream());
    RESONA_CHECK(err == nullptr) << kName << " on " << weight.describe() << " with ids "
                                 << ids.describe() << ": " << err;
    return out;
  }

  static Grads backward(Ctx<Saved>& ctx, const Tensor& d_y) {
    if (!ctx.needs(0)) return {Tensor(), Tensor()};
    const Saved& s = ctx.saved;
    if (s.idx_dev.defined()) {
      return {scatter_cuda(kName, d_y, s.idx_dev, {s.V, s.D}, {s.idx_dev.numel(), s.D}, 0, false),
              Tensor()};
    }
    require_cpu(kName, d_y);
    Tensor d = d_y.contiguous();
    Tensor d_weight = zeros({s.V, s.D}, d.dtype());
    dispatch_floating(kName, d.dtype(), [&](auto tag) {
      using T = typename decltype(tag)::type;
      const T* pd = d.data<T>();
      T* pw = d_weight.data<T>();
      for (size_t n = 0; n < s.rows.size(); ++n) {
        const T* src = pd + static_cast<int64_t>(n) * s.D;
        T* dst = pw + s.rows[n] * s.D;
        for (int64_t j = 0; j < s.D; ++j) dst[j] += src[j];
      }
    });
    return {d_weight, Tensor()};
  }
};

// ---------------------------------------------------------------- index_select

struct IndexSelectOp {
  static constexpr const char* kName = "index_select";
  struct Saved {
    std::vector<int64_t> idx;
    Shape x_shape;
    int64_t dim = 0;
    Tensor idx_dev;  // CUDA
  };

  static Tensor forward(Ctx<Saved>& ctx, const Tensor& x, int64_t dim, const Tensor& index) {
    check_floating(kName, x);
    if (x.device().is_cuda()) return forward_cuda(ctx, x, dim, index);
    require_cpu(kName, x);
    check_index_tensor(kName, "index", index);
    RESONA_CHECK(x.dim() >= 1) << "index_select: x must have at least one dim, got "
                               << x.describe();
    RESONA_CHECK(index.dim() <= 1) << "index_select: index must be 1-D, got " << index.describe();
    dim = wrap_dim(kName, dim, x.dim());
    std::vector<int64_t> idx = read_indices(kName, "index", index, x, dim);
    const int64_t n = static_cast<int64_t>(idx.size());
    const Split3 s = split_at(x.shape(), dim);
    Shape out_shape = x.shape();
    out_shape[dim] = n;
    Tensor xc = x.contiguous();
    Tensor out = empty(out_shape, x.dtype());
    dispatch_floating(kName, x.dtype(), [&](auto tag) {
      using T = typename decltype(tag)::type;
      const T* px = xc.data<T>();
      T* po = out.data<T>();
      for (int64_t o = 0; o < s.outer; ++o) {
        for (int64_t i = 0; i < n; ++i) {
          const T* src = px + (o * s.mid + idx[i]) * s.inner;
          std::copy(src, src + s.inner, po + (o * n + i) * s.inner);
        }
      }
    });
    if (ctx.requires_grad) ctx.saved = {std::move(idx), x.shape(), dim, Tensor()};
    return out;
  }

  static Tensor forward_cuda(Ctx<Saved>& ctx, const Tensor& x, int64_t dim, const Tensor& index) {
    cuda_kernel_dtype(kName, x);
    RESONA_CHECK(x.dim() >= 1) << "index_select: x must have at least one dim, got "
                               << x.describe();
    check_cuda_rank(kName, x);
    RESONA_CHECK(index.dim() <= 1) << "index_select: index must be 1-D, got " << index.describe();
    dim = wrap_dim(kName, dim, x.dim());
    Tensor idx = device_indices(kName, "index", index, x, dim);
    Shape out_shape = x.shape();
    out_shape[dim] = idx.numel();
    Tensor out = gather_cuda(kName, x, idx, out_shape, out_shape, dim, false);
    if (ctx.requires_grad) ctx.saved = {{}, x.shape(), dim, idx};
    return out;
  }

  static Grads backward(Ctx<Saved>& ctx, const Tensor& d_y) {
    if (!ctx.needs(0)) return {Tensor(), Tensor()};
    const Saved& sv = ctx.saved;
    if (sv.idx_dev.defined()) {
      Shape y_shape = sv.x_shape;
      y_shape[sv.dim] = sv.idx_dev.numel();
      return {scatter_cuda(kName, d_y, sv.idx_dev, sv.x_shape, y_shape, sv.dim, false), Tensor()};
    }
    require_cpu(kName, d_y);
    Tensor d = d_y.contiguous();
    const int64_t n = static_cast<int64_t>(sv.idx.size());
    const Split3 s = split_at(sv.x_shape, sv.dim);
    Tensor d_x = zeros(sv.x_shape, d.dtype());
    dispatch_floating(kName, d.dtype(), [&](auto tag) {
      using T = typename decltype(tag)::type;
      const T* pd = d.data<T>();
      T* px = d_x.data<T>();
      for (int64_t o = 0; o < s.outer; ++o) {
        for (int64_t i = 0; i < n; ++i) {
          const T* src = pd + (o * n + i) * s.inner;
          T* dst = px + (o * s.mid + sv.idx[i]) * s.inner;
          for (int64_t r = 0; r < s.inner; ++r) dst[r] += src[r];
        }
      }
    });
    return {d_x, Tensor()};
  }
};

// ---------------------------------------------------------------- gather

// Calls f(n, base) for each flat row-major position n of `index_shape`, where base is
// the element offset of that position in a tensor with `strides`, leaving out `dim`
// (the caller adds index[n] * strides[dim]).
template <class F>
void for_each_gather_position(const Shape& index_shape, const Shape& strides, int64_t dim, F&& f) {
  const int64_t nd = static_cast<int64_t>(index_shape.size());
  const int64_t total = shape_numel(index_shape);
  std::vector<int64_t> coord(nd, 0);
  int64_t base = 0;
  for (int64_t n = 0; n < total; ++n) {
    f(n, base);
    for (int64_t d = nd - 1; d >= 0; --d) {
      const int64_t st = d == dim ? 0 : strides[d];
      ++coord[d];
      base += st;
      if (coord[d] < index_shape[d]) break;
      base -= st * index_shape[d];
      coord[d] = 0;
    }
  }
}

struct GatherOp {
  static constexpr const char* kName = "gather";
  struct Saved {
    std::vector<int64_t> idx;  // row-major over index_shape
    Shape x_shape, index_shape;
    int64_t dim = 0;
    Tensor idx_dev;  // CUDA
  };

  static Tensor forward(Ctx<Saved>& ctx, const Tensor& x, int64_t dim, const Tensor& index) {
    check_floating(kName, x);
    const bool on_cuda = x.device().is_cuda();
    if (on_cuda) {
      cuda_kernel_dtype(kName, x);
      check_cuda_rank(kName, x);
      RESONA_CHECK(index.dtype() == DType::kInt32 || index.dtype() == DType::kInt64)
          << kName << ": index must be int32 or int64, got " << index.describe();
    } else {
      require_cpu(kName, x);
      check_index_tensor(kName, "index", index);
    }
    RESONA_CHECK(x.dim() >= 1) << "gather: x must have at least one dim, got " << x.describe();
    RESONA_CHECK(index.dim() == x.dim())
        << "gather: index " << index.describe() << " must have as many dims as x " << x.describe();
    dim = wrap_dim(kName, dim, x.dim());
    for (int64_t d = 0; d < x.dim(); ++d) {
      RESONA_CHECK(d == dim || index.shape()[d] <= x.shape()[d])
          << "gather: index " << index.describe() << " is larger than x " << x.describe()
          << " along dim " << d << " (" << index.shape()[d] << " > " << x.shape()[d]
          << "); only dim " << dim << " may be larger";
    }
    if (on_cuda) {
      Tensor idx = device_indices(kName, "index", index, x, dim);
      Tensor out = gather_cuda(kName, x, idx, index.shape(), index.shape(), dim, true);
      if (ctx.requires_grad) ctx.saved = {{}, x.shape(), index.shape(), dim, idx};
      return out;
    }
    std::vector<int64_t> idx = read_indices(kName, "index", index, x, dim);
    Tensor out = empty(index.shape(), x.dtype());
    dispatch_floating(kName, x.dtype(), [&](auto tag) {
      using T = typename decltype(tag)::type;
      const T* px = x.data<T>();
      T* po = out.data<T>();
      const int64_t sdim = x.strides()[dim];
      for_each_gather_position(index.shape(), x.strides(), dim,
                               [&](int64_t n, int64_t base) { po[n] = px[base + idx[n] * sdim]; });
    });
    if (ctx.requires_grad) ctx.saved = {std::move(idx), x.shape(), index.shape(), dim, Tensor()};
    return out;
  }

  static Grads backward(Ctx<Saved>& ctx, const Tensor& d_y) {
    if (!ctx.needs(0)) return {Tensor(), Tensor()};
    const Saved& sv = ctx.saved;
    if (sv.idx_dev.defined()) {
      return {scatter_cuda(kName, d_y, sv.idx_dev, sv.x_shape, sv.index_shape, sv.dim, true),
              Tensor()};
    }
    require_cpu(kName, d_y);
    Tensor d = d_y.contiguous();
    Tensor d_x = zeros(sv.x_shape, d.dtype());
    const Shape strides = contiguous_strides(sv.x_shape);
    dispatch_floating(kName, d.dtype(), [&](auto tag) {
      using T = typename decltype(tag)::type;
      const T* pd = d.data<T>();
      T* px = d_x.data<T>();
      const int64_t sdim = strides[sv.dim];
      for_each_gather_position(sv.index_shape, strides, sv.dim, [&](int64_t n, int64_t base) {
        px[base + sv.idx[n] * sdim] += pd[n];
      });
    });
    return {d_x, Tensor()};
  }
};

}  // namespace

Tensor embedding(const Tensor& weight, const Tensor& ids) {
  return apply<EmbeddingOp>(weight, ids);
}
Tensor index_select(const Tensor& x, int64_t dim, const Tensor& index) {
  return apply<IndexSelectOp>(x, dim, index);
}
Tensor gather(const Tensor& x, int64_t dim, const Tensor& index) {
  return apply<GatherOp>(x, dim, index);
}

}  // namespace resona
