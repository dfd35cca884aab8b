#include "ops/reduce.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

#include "autograd/function.h"
#include "core/dispatch.h"
#include "cuda/reduce.h"
#include "ops/device_util.h"
#include "ops/elementwise.h"

namespace resona {
namespace {

// A reduction seen as rows: the input permuted to [kept..., reduced...] and made
// contiguous, so that row r (of `inner` elements) feeds output element r.
struct ReducePlan {
  Shape out_shape;            // without keepdim
  Shape keep_shape;           // with keepdim (reduced dims = 1)
  Shape perm;                 // kept dims, then reduced dims
  Shape permuted_shape;       // the input's shape in that order
  int64_t outer = 1;          // number of output elements
  int64_t inner = 1;          // elements reduced into each
  std::vector<bool> reduced;  // per input dim
  Tensor rows;                // contiguous [outer, inner] (when asked for)
};

// `rows`: whether to build p.rows (the CPU path reads them; the CUDA path first tries to
// reduce x in place, see cuda_rows).
ReducePlan plan_reduce(const char* op, const Tensor& x, const std::vector<int64_t>& dims_in,
                       bool rows = true) {
  const int64_t nd = x.dim();
  std::vector<bool> reduced(nd, dims_in.empty());
  for (int64_t d : dims_in) {
    const int64_t w = wrap_dim(op, d, x);
    if (nd == 0) continue;  // dim 0 or -1 of a 0-D tensor: its one element, as PyTorch
    RESONA_CHECK(!reduced[w]) << op << " of " << x.describe() << ": dim " << d
                              << " given twice in dims " << shape_str(dims_in);
    reduced[w] = true;
  }
  ReducePlan p;
  Shape perm;
  for (int64_t d = 0; d < nd; ++d) {
    if (!reduced[d]) {
      perm.push_back(d);
      p.out_shape.push_back(x.shape()[d]);
      p.outer *= x.shape()[d];
    }
    p.keep_shape.push_back(reduced[d] ? 1 : x.shape()[d]);
  }
  for (int64_t d = 0; d < nd; ++d) {
    if (reduced[d]) {
      perm.push_back(d);
      p.inner *= x.shape()[d];
    }
  }
  for (int64_t d : perm) p.permuted_shape.push_back(x.shape()[d]);
  p.perm = perm;
  p.reduced = reduced;
  if (rows) {
    Tensor xp = x.detach();
    if (nd > 0) xp = xp.permute(perm);
    p.rows = xp.contiguous().reshape({p.outer, p.inner});
  }
  return p;
}

// ---------------------------------------------------------------- CUDA path

// x's data as the contiguous [A, R, C] that cuda/reduce.h reduces along R. When x is
// contiguous and its reduced dims (size-1 dims aside) are one block, that is x itself
// (C = 1: rows; A = 1: the outer dim without a transpose); otherwise the plan's permuted
// copy [outer, inner] (C = 1).
struct CudaRows {
  Tensor src;
  int64_t A = 1, R = 1, C = 1;
  bool permuted = false;
};

CudaRows cuda_rows(const char* op, const Tensor& x, const ReducePlan& p) {
  CudaRows r;
  if (x.is_contiguous()) {
    int phase = 0;  // 0: kept dims before the reduced block, 1: in it, 2: after it
    bool one_block = true;
    for (int64_t d = 0; d < x.dim(); ++d) {
      const int64_t n = x.shape()[d];
      if (n == 1) continue;
      if (p.reduced[d]) {
        if (phase == 2) one_block = false;
        phase = 1;
        r.R *= n;
      } else {
        if (phase == 1) phase = 2;
        (phase == 0 ? r.A : r.C) *= n;
      }
    }
    if (one_block) {
      r.src = x;
      return r;
    }
    r = CudaRows{};
  }
  Tensor xp = x.detach();
  if (x.dim() > 0) xp = xp.permute(p.perm);
  try {
    r.src = xp.contiguous();
  } catch (const Error& e) {  // e.g. more dims than the copy kernel indexes
    RESONA_FAIL() << op << " on CUDA of " << x.describe() << ": " << e.what();
  }
  r.A = p.outer;
  r.R = p.inner;
  r.C = 1;
  r.permuted = true;
  return r;
}

// Runs the reduction kernel: values of x's dtype (unless `values` is false) and, when
// `index` is given, the first maximising position along R (kMax), both of `out_shape`.
Tensor reduce_cuda(const char* op, cuda::ReduceKernelKind kind, const Tensor& x, const CudaRows& r,
                   const Shape& out_shape, bool values = true, Tensor* index = nullptr) {
  cuda::ReduceParams prm;
  prm.kind = kind;
  prm.dtype = cuda_kernel_dtype(op, x);
  prm.A = r.A;
  prm.R = r.R;
  prm.C = r.C;
  prm.x = r.src.raw_data();
  Tensor out;
  if (values) {
    out = empty(out_shape, x.dtype(), x.device());
    prm.out = out.raw_data();
  }
  if (index != nullptr) {
    *index = empty(out_shape, DType::kInt64, x.device());
    prm.index = index->data<int64_t>();
  }
  Tensor workspace;
  const int64_t ws = cuda::reduce_workspace_bytes(r.A, r.R, r.C);
  if (ws > 0) {
    workspace = empty({(ws + 7) / 8}, DType::kInt64, x.device());
    prm.workspace = workspace.raw_data();
  }
  const char* err = cuda::reduce_fwd_cuda(prm, launch_stream());
  RESONA_CHECK(err == nullptr) << op << " on CUDA (" << x.describe() << "): " << err;
  return out;
}

// Reduces each row with `f(const T* row, int64_t n) -> T` into a new tensor.
template <class F>
Tensor reduce_rows(const char* op, const ReducePlan& p, DType dtype, F&& f) {
  Tensor out = empty(p.out_shape, dtype);
  dispatch_floating(op, dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* src = p.rows.data<T>();
    T* dst = out.data<T>();
    for (int64_t r = 0; r < p.outer; ++r) dst[r] = f(src + r * p.inner, p.inner, T{});
  });
  return out;
}

// Index of the first maximum of row[0..n) (n > 0); a NaN counts as larger than any
// number, so max propagates it and argmax points at it.
template <class T>
int64_t first_max(const T* row, int64_t n) {
  int64_t best = 0;
  for (int64_t i = 1; i < n; ++i) {
    if (row[i] > row[best] || (std::isnan(row[i]) && !std::isnan(row[best]))) best = i;
  }
  return best;
}

struct ReduceSaved {
  Shape in_shape, keep_shape, perm, permuted_shape;
  int64_t count = 1;
  Tensor x, out_keep, index;
  CudaRows layout;  // max on CUDA: the [A, R, C] layout `index` refers to (src not kept)
};

Tensor finish(Tensor out, const ReducePlan& p, bool keepdim) {
  return keepdim ? out.reshape(p.keep_shape) : out;
}

// d_out seen with the reduced dims as size 1, so it broadcasts against the input.
Tensor keep(const Tensor& d, const ReduceSaved& s) { return d.reshape(s.keep_shape); }

// sum / mean backward on CUDA: d_x = scale * d_out broadcast over the reduced dims, written
// by one kernel when those dims (size-1 dims aside) are one block of the input's shape,
// i.e. d_x is [A, R, C] and d_out [A, C]. Returns an undefined tensor otherwise.
Tensor sum_bwd_cuda(const char* op, const Tensor& d, const ReduceSaved& s, double scale) {
  int64_t A = 1, R = 1, C = 1;
  int phase = 0;  // 0: kept dims before the reduced block, 1: in it, 2: after it
  for (size_t i = 0; i < s.in_shape.size(); ++i) {
    const int64_t n = s.in_shape[i];
    if (n == 1) continue;
    if (s.keep_shape[i] == 1) {
      if (phase == 2) return Tensor();
      phase = 1;
      R *= n;
    } else {
      if (phase == 1) phase = 2;
      (phase == 0 ? A : C) *= n;
    }
  }
  const Tensor dc = d.contiguous();
  Tensor d_x = empty(s.in_shape, d.dtype(), d.device());
  cuda::SumBwdParams prm;
  prm.dtype = cuda_kernel_dtype(op, d);
  prm.A = A;
  prm.R = R;
  prm.C = C;
  prm.scale = static_cast<float>(scale);
  prm.d_out = dc.raw_data();
  prm.d_x = d_x.raw_data();
  const char* err = cuda::sum_bwd_cuda(prm, launch_stream());
  RESONA_CHECK(err == nullptr) << op << " backward on CUDA (" << d.describe() << "): " << err;
  return d_x;
}

struct SumOp {
  static constexpr const char* kName = "sum";
  using Saved = ReduceSaved;
  static Tensor forward(Ctx<Saved>& ctx, const Tensor& x, const std::vector<int64_t>& dims,
                        bool keepdim) {
    check_floating(kName, x);
    const bool cuda = x.device().is_cuda();
    ReducePlan p = plan_reduce(kName, x, dims, !cuda);
    Tensor out;
    if (cuda) {
      out =
          reduce_cuda(kName, cuda::ReduceKernelKind::kSum, x, cuda_rows(kName, x, p), p.out_shape);
    } else {
      out = reduce_rows(kName, p, x.dtype(), [](const auto* r, int64_t n, auto zero) {
        decltype(zero) acc = 0;
        for (int64_t i = 0; i < n; ++i) acc += r[i];
        return acc;
      });
    }
    ctx.saved.in_shape = x.shape();
    ctx.saved.keep_shape = p.keep_shape;
    return finish(out, p, keepdim);
  }
  static Grads backward(Ctx<Saved>& ctx, const Tensor& d) {
    if (d.device().is_cuda()) {
      Tensor d_x = sum_bwd_cuda(kName, d, ctx.saved, 1.0);
      if (d_x.defined()) return {d_x};
    }
    return {keep(d, ctx.saved).expand(ctx.saved.in_shape).contiguous()};
  }
};

struct MeanOp {
  static constexpr const char* kName = "mean";
  using Saved = ReduceSaved;
  static Tensor forward(Ctx<Saved>& ctx, const Tensor& x, const std::vector<int64_t>& dims,
                        bool keepdim) {
    check_floating(kName, x);
    const bool cuda = x.device().is_cuda();
    ReducePlan p = plan_reduce(kName, x, dims, !cuda);
    RESONA_CHECK(p.inner > 0) << "mean over an empty dim of " << x.describe();
    Tensor out;
    if (cuda) {
      out =
          reduce_cuda(kName, cuda::ReduceKernelKind::kMean, x, cuda_rows(kName, x, p), p.out_shape);
    } else {
      out = reduce_rows(kName, p, x.dtype(), [](const auto* r, int64_t n, auto zero) {
        decltype(zero) acc = 0;
        for (int64_t i = 0; i < n; ++i) acc += r[i];
        return acc / static_cast<decltype(zero)>(n);
      });
    }
    ctx.saved.in_shape = x.shape();
    ctx.saved.keep_shape = p.keep_shape;
    ctx.saved.count = p.inner;
    return finish(out, p, keepdim);
  }
  static Grads backward(Ctx<Saved>& ctx, const Tensor& d) {
    if (d.device().is_cuda()) {
      Tensor d_x = sum_bwd_cuda(kName, d, ctx.saved, 1.0 / static_cast<double>(ctx.saved.count));
      if (d_x.defined()) return {d_x};
    }
    Tensor g = mul(keep(d, ctx.saved), 1.0 / static_cast<double>(ctx.saved.count));
    return {g.expand(ctx.saved.in_shape).contiguous()};
  }
};

struct MaxOp {
  static constexpr const char* kName = "max";
  using Saved = ReduceSaved;
  static Tensor forward(Ctx<Saved>& ctx, const Tensor& x, const std::vector<int64_t>& dims,
                        bool keepdim) {
    check_floating(kName, x);
    const bool cuda = x.device().is_cuda();
    ReducePlan p = plan_reduce(kName, x, dims, !cuda);
    RESONA_CHECK(p.inner > 0) << "max over an empty dim of " << x.describe();
    if (cuda) {
      CudaRows rows = cuda_rows(kName, x, p);
      Tensor index;
      Tensor out = reduce_cuda(kName, cuda::ReduceKernelKind::kMax, x, rows, p.out_shape,
                               /*values=*/true, &index);
      if (ctx.requires_grad) {
        rows.src = Tensor();  // only the geometry is needed
        ctx.saved.in_shape = x.shape();
        ctx.saved.index = index;
        ctx.saved.perm = p.perm;
        ctx.saved.permuted_shape = p.permuted_shape;
        ctx.saved.layout = rows;
      }
      return finish(out, p, keepdim);
    }
    Tensor index = empty(p.out_shape, DType::kInt64);
    int64_t* idx = index.data<int64_t>();
    Tensor out = empty(p.out_shape, x.dtype());
    dispatch_floating(kName, x.dtype(), [&](auto tag) {
      using T = typename decltype(tag)::type;
      const T* src = p.rows.data<T>();
      T* dst = out.data<T>();
      for (int64_t r = 0; r < p.outer; ++r) {
        const T* row = src + r * p.inner;
        const int64_t best = first_max(row, p.inner);
        dst[r] = row[best];
        idx[r] = best;
      }
    });
    if (ctx.requires_grad) {
      ctx.saved.in_shape = x.shape();
      ctx.saved.keep_shape = p.keep_shape;
      ctx.saved.index = index;
      ctx.saved.count = p.inner;
      ctx.saved.perm = p.perm;
      ctx.saved.permuted_shape = p.permuted_shape;
    }
    return finish(out, p, keepdim);
  }
  static Grads backward(Ctx<Saved>& ctx, const Tensor& d);
};

struct LogsumexpOp {
  static constexpr const char* kName = "logsumexp";
  using Saved = ReduceSaved;
  static Tensor forward(Ctx<Saved>& ctx, const Tensor& x, const std::vector<int64_t>& dims,
                        bool keepdim) {
    check_floating(kName, x);
    const bool cuda = x.device().is_cuda();
    ReducePlan p = plan_reduce(kName, x, dims, !cuda);
    Tensor out;
    if (cuda) {
      out = reduce_cuda(kName, cuda::ReduceKernelKind::kLogsumexp, x, cuda_rows(kName, x, p),
                        p.out_shape);
    } else {
      out = reduce_rows(kName, p, x.dtype(), [](const auto* r, int64_t n, auto zero) {
        using T = decltype(zero);
        T m = -std::numeric_limits<T>::infinity();
        for (int64_t i = 0; i < n; ++i) m = std::max(m, r[i]);
        if (!std::isfinite(m)) return m;  // all -inf (or empty), or +inf / NaN present
        T acc = 0;
        for (int64_t i = 0; i < n; ++i) acc += std::exp(r[i] - m);
        return m + std::log(acc);
      });
    }
    if (ctx.requires_grad) {
      ctx.saved.keep_shape = p.keep_shape;
      ctx.saved.x = x;
      ctx.saved.out_keep = out.reshape(p.keep_shape);
    }
    return finish(out, p, keepdim);
  }
  static Grads backward(Ctx<Saved>& ctx, const Tensor& d) {
    const Saved& s = ctx.saved;
    return {mul(keep(d, s), exp(sub(s.x, s.out_keep)))};
  }
};

// Scatters d_out into the saved argmax positions: the gradient rows are built in the
// permuted [outer, inner] layout of the forward, then permuted back.
Grads MaxOp::backward(Ctx<Saved>& ctx, const Tensor& d) {
  const Saved& s = ctx.saved;
  if (s.index.device().is_cuda()) {
    check_same_device(kName, {&d, &s.index});
    const CudaRows& l = s.layout;
    Tensor dc = d.contiguous();
    Tensor g = empty(l.permuted ? Shape{l.A, l.R} : s.in_shape, d.dtype(), d.device());
    cuda::MaxBwdParams prm;
    prm.dtype = cuda_kernel_dtype("max backward", d);
    prm.A = l.A;
    prm.R = l.R;
    prm.C = l.C;
    prm.d_out = dc.raw_data();
    prm.index = s.index.data<int64_t>();
    prm.d_x = g.raw_data();
    const char* err = cuda::max_bwd_cuda(prm, launch_stream());
    RESONA_CHECK(err == nullptr) << "max backward on CUDA (" << d.describe() << "): " << err;
    if (!l.permuted) return {g};
    const int64_t nd = static_cast<int64_t>(s.perm.size());
    if (nd == 0) return {g.reshape(s.in_shape)};
    Shape inv(nd);
    for (int64_t i = 0; i < nd; ++i) inv[s.perm[i]] = i;
    return {g.reshape(s.permuted_shape).permute(inv).contiguous()};
  }
  const int64_t outer = s.index.numel();
  Tensor dc = d.contiguous();
  Tensor g = zeros({outer, s.count}, d.dtype());
  const int64_t* idx = s.index.data<int64_t>();
  dispatch_floating(kName, d.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* pd = dc.data<T>();
    T* pg = g.data<T>();
    for (int64_t r = 0; r < outer; ++r) pg[r * s.count + idx[r]] = pd[r];
  });
  const int64_t nd = static_cast<int64_t>(s.perm.size());
  if (nd == 0) return {g.reshape(s.in_shape)};
  Shape inv(nd);
  for (int64_t i = 0; i < nd; ++i) inv[s.perm[i]] = i;
  return {g.reshape(s.permuted_shape).permute(inv).contiguous()};
}

}  // namespace

Tensor sum(const Tensor& x, const std::vector<int64_t>& dims, bool keepdim) {
  return apply<SumOp>(x, dims, keepdim);
}
Tensor mean(const Tensor& x, const std::vector<int64_t>& dims, bool keepdim) {
  return apply<MeanOp>(x, dims, keepdim);
}
Tensor max(const Tensor& x, const std::vector<int64_t>& dims, bool keepdim) {
  return apply<MaxOp>(x, dims, keepdim);
}
Tensor logsumexp(const Tensor& x, const std::vector<int64_t>& dims, bool keepdim) {
  return apply<LogsumexpOp>(x, dims, keepdim);
}

Tensor argmax(const Tensor& x, int64_t dim, bool keepdim) {
  const bool cuda = x.device().is_cuda();
  ReducePlan p = plan_reduce("argmax", x, {dim}, !cuda);
  RESONA_CHECK(p.inner > 0) << "argmax over an empty dim of " << x.describe();
  if (cuda) {
    Tensor index;
    reduce_cuda("argmax", cuda::ReduceKernelKind::kMax, x, cuda_rows("argmax", x, p), p.out_shape,
                /*values=*/false, &index);
    return keepdim ? index.reshape(p.keep_shape) : index;
  }
  Tensor index = empty(p.out_shape, DType::kInt64);
  int64_t* idx = index.data<int64_t>();
  dispatch_floating("argmax", x.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* src = p.rows.data<T>();
    for (int64_t r = 0; r < p.outer; ++r) idx[r] = first_max(src + r * p.inner, p.inner);
  });
  return keepdim ? index.reshape(p.keep_shape) : index;
}

}  // namespace resona
