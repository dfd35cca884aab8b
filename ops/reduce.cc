#include "ops/reduce.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

#include "autograd/function.h"
#include "core/dispatch.h"
#include "ops/device_util.h"
#include "ops/elementwise.h"

namespace resona {
namespace {

// A reduction seen as rows: the input permuted to [kept..., reduced...] and made
// contiguous, so that row r (of `inner` elements) feeds output element r.
struct ReducePlan {
  Shape out_shape;      // without keepdim
  Shape keep_shape;     // with keepdim (reduced dims = 1)
  Shape perm;           // kept dims, then reduced dims
  Shape permuted_shape; // the input's shape in that order
  int64_t outer = 1;    // number of output elements
  int64_t inner = 1;    // elements reduced into each
  Tensor rows;          // contiguous [outer, inner]
};

ReducePlan plan_reduce(const char* op, const Tensor& x, const std::vector<int64_t>& dims_in) {
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
  Tensor xp = x.detach();
  if (nd > 0) xp = xp.permute(perm);
  p.rows = xp.contiguous().reshape({p.outer, p.inner});
  return p;
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
};

Tensor finish(Tensor out, const ReducePlan& p, bool keepdim) {
  return keepdim ? out.reshape(p.keep_shape) : out;
}

// d_out seen with the reduced dims as size 1, so it broadcasts against the input.
Tensor keep(const Tensor& d, const ReduceSaved& s) { return d.reshape(s.keep_shape); }

struct SumOp {
  static constexpr const char* kName = "sum";
  using Saved = ReduceSaved;
  static Tensor forward(Ctx<Saved>& ctx, const Tensor& x, const std::vector<int64_t>& dims,
                        bool keepdim) {
    check_floating(kName, x);
    require_cpu(kName, x);
    ReducePlan p = plan_reduce(kName, x, dims);
    Tensor out = reduce_rows(kName, p, x.dtype(), [](const auto* r, int64_t n, auto zero) {
      decltype(zero) acc = 0;
      for (int64_t i = 0; i < n; ++i) acc += r[i];
      return acc;
    });
    ctx.saved.in_shape = x.shape();
    ctx.saved.keep_shape = p.keep_shape;
    return finish(out, p, keepdim);
  }
  static Grads backward(Ctx<Saved>& ctx, const Tensor& d) {
    return {keep(d, ctx.saved).expand(ctx.saved.in_shape).contiguous()};
  }
};

struct MeanOp {
  static constexpr const char* kName = "mean";
  using Saved = ReduceSaved;
  static Tensor forward(Ctx<Saved>& ctx, const Tensor& x, const std::vector<int64_t>& dims,
                        bool keepdim) {
    check_floating(kName, x);
    require_cpu(kName, x);
    ReducePlan p = plan_reduce(kName, x, dims);
    RESONA_CHECK(p.inner > 0) << "mean over an empty dim of " << x.describe();
    Tensor out = reduce_rows(kName, p, x.dtype(), [](const auto* r, int64_t n, auto zero) {
      decltype(zero) acc = 0;
      for (int64_t i = 0; i < n; ++i) acc += r[i];
      return acc / static_cast<decltype(zero)>(n);
    });
    ctx.saved.in_shape = x.shape();
    ctx.saved.keep_shape = p.keep_shape;
    ctx.saved.count = p.inner;
    return finish(out, p, keepdim);
  }
  static Grads backward(Ctx<Saved>& ctx, const Tensor& d) {
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
    require_cpu(kName, x);
    ReducePlan p = plan_reduce(kName, x, dims);
    RESONA_CHECK(p.inner > 0) << "max over an empty dim of " << x.describe();
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
    require_cpu(kName, x);
    ReducePlan p = plan_reduce(kName, x, dims);
    Tensor out = reduce_rows(kName, p, x.dtype(), [](const auto* r, int64_t n, auto zero) {
      using T = decltype(zero);
      T m = -std::numeric_limits<T>::infinity();
      for (int64_t i = 0; i < n; ++i) m = std::max(m, r[i]);
      if (!std::isfinite(m)) return m;  // all -inf (or empty), or +inf / NaN present
      T acc = 0;
      for (int64_t i = 0; i < n; ++i) acc += std::exp(r[i] - m);
      return m + std::log(acc);
    });
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
  require_cpu("argmax", x);
  ReducePlan p = plan_reduce("argmax", x, {dim});
  RESONA_CHECK(p.inner > 0) << "argmax over an empty dim of " << x.describe();
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
