// cross_entropy fused with log-softmax, one row of logits per sample:
//
//   lse_i  = m_i + log(sum_j exp(x_ij - m_i)),  m_i = max_j x_ij   (no overflow)
//   loss_i = lse_i - x_i[t_i]                   (0 where t_i == ignore_index)
//   d_x_ij = (exp(x_ij - lse_i) - [j == t_i]) * g_i
//
// with g_i = d_loss / count for kMean (count = the non-ignored rows), d_loss for kSum,
// d_loss[i] for kNone, and 0 at ignored rows. The exp sums and the total accumulate
// in double.
//
// On CUDA (cuda/loss.h) the same formulas run as fused kernels: one pass per row for
// lse and loss_i, a single-block fixed-order reduction for the count, the sum and the
// mean (no atomics, deterministic), and one backward kernel writing d_logits in the
// logits' dtype. The loss is float32 there whatever the logits' dtype (bf16 logits give
// an fp32 loss, DESIGN.md), and lse is kept in float32. Out-of-range targets are found
// by the kernels (an error row written to a small stats buffer) and reported after the
// launch: the host reads those 24 bytes back, which waits for the forward to finish.
//
// Saved for backward: the logits (contiguous), the targets and the per-row lse [N] (on
// CUDA also the stats buffer holding the count); backward writes the softmax straight
// into the one logits-sized gradient buffer. Gradients are fresh tensors; targets get
// none.
#include "ops/loss.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "autograd/function.h"
#include "core/dispatch.h"
#include "cuda/loss.h"
#include "ops/device_util.h"

namespace resona {
namespace {

// `t` contiguous, or an error naming the op and the tensor when a CUDA copy is missing.
Tensor contiguous_on_gpu(const char* op, const Tensor& t) {
  if (t.is_contiguous()) return t;
  try {
    return t.contiguous();
  } catch (const Error& e) {
    RESONA_FAIL() << op << " on CUDA needs " << t.describe() << " contiguous: " << e.what();
  }
  return Tensor();
}

cuda::LossReduction cuda_reduction(Reduction r) {
  switch (r) {
    case Reduction::kMean:
      return cuda::LossReduction::kMean;
    case Reduction::kSum:
      return cuda::LossReduction::kSum;
    case Reduction::kNone:
      return cuda::LossReduction::kNone;
  }
  RESONA_FAIL() << "cross_entropy: unknown reduction " << static_cast<int>(r);
  return cuda::LossReduction::kMean;
}

struct CrossEntropyOp {
  static constexpr const char* kName = "cross_entropy";
  struct Saved {
    Tensor logits, targets, lse;
    int64_t ignore_index = kIgnoreIndex;
    Reduction reduction = Reduction::kMean;
    int64_t count = 0;  // non-ignored rows
    Tensor stats;       // CUDA: int64 [3] from the forward kernels, count first
  };

  static Tensor forward_gpu(Ctx<Saved>& ctx, const Tensor& logits, const Tensor& targets,
                            int64_t ignore_index, Reduction reduction) {
    check_same_device(kName, {&logits, &targets});
    const cuda::KernelDType kd = cuda_kernel_dtype(kName, logits);
    const int64_t N = logits.size(0), V = logits.size(1);
    const Tensor x = contiguous_on_gpu(kName, logits);
    const Tensor t = contiguous_on_gpu(kName, targets);
    const Device dev = x.device();
    Tensor lse = empty({N}, DType::kFloat32, dev);
    Tensor per_row = empty({N}, DType::kFloat32, dev);
    Tensor stats = empty({3}, DType::kInt64, dev);
    Tensor total = empty({}, DType::kFloat32, dev);
    cuda::CrossEntropyFwdParams p{kd,
                                  t.dtype() == DType::kInt64,
                                  cuda_reduction(reduction),
                                  N,
                                  V,
                                  x.raw_data(),
                                  t.raw_data(),
                                  ignore_index,
                                  lse.data<float>(),
                                  per_row.data<float>(),
                                  stats.data<int64_t>(),
                                  total.data<float>()};
    const char* err = cuda::cross_entropy_fwd_cuda(p, launch_stream());
    RESONA_CHECK(err == nullptr) << "cross_entropy of " << logits.describe() << " on CUDA: " << err;
    const std::vector<int64_t> st = stats.to_vector<int64_t>();  // waits for the kernels
    RESONA_CHECK(st[1] < 0) << "cross_entropy: target " << st[2] << " at row " << st[1]
                            << " is out of range [0, " << V << ") for logits " << logits.describe()
                            << " (targets " << targets.describe() << ", ignore_index "
                            << ignore_index << ")";
    if (ctx.requires_grad) {
      Saved& s = ctx.saved;
      s.logits = x;
      s.targets = t;
      s.lse = lse;
      s.ignore_index = ignore_index;
      s.reduction = reduction;
      s.count = st[0];
      s.stats = stats;
    }
    return reduction == Reduction::kNone ? per_row : total;
  }

  static Tensor backward_gpu(const Saved& s, const Tensor& d) {
    RESONA_CHECK(d.dtype() == DType::kFloat32 && d.device() == s.logits.device())
        << "cross_entropy backward on CUDA: the loss gradient must be float32 on "
        << s.logits.device().str() << " (the loss is float32 there), got " << d.describe();
    const int64_t N = s.logits.size(0), V = s.logits.size(1);
    const Tensor dc = contiguous_on_gpu(kName, d);
    Tensor d_logits = empty({N, V}, s.logits.dtype(), s.logits.device());
    cuda::CrossEntropyBwdParams p{cuda_kernel_dtype(kName, s.logits),
                                  s.targets.dtype() == DType::kInt64,
                                  cuda_reduction(s.reduction),
                                  N,
                                  V,
                                  s.logits.raw_data(),
                                  s.targets.raw_data(),
                                  s.ignore_index,
                                  s.lse.data<float>(),
                                  s.stats.data<int64_t>(),
                                  dc.data<float>(),
                                  d_logits.raw_data()};
    const char* err = cuda::cross_entropy_bwd_cuda(p, launch_stream());
    RESONA_CHECK(err == nullptr) << "cross_entropy backward of " << s.logits.describe()
                                 << " on CUDA: " << err;
    return d_logits;
  }

  static Tensor forward(Ctx<Saved>& ctx, const Tensor& logits, const Tensor& targets,
                        int64_t ignore_index, Reduction reduction) {
    RESONA_CHECK(logits.dim() == 2)
        << "cross_entropy: logits must be [N, V], got " << logits.describe();
    check_floating(kName, logits);
    RESONA_CHECK(targets.dtype() == DType::kInt64 || targets.dtype() == DType::kInt32)
        << "cross_entropy: targets must be int32 or int64 class indices, got "
        << targets.describe();
    const int64_t N = logits.size(0), V = logits.size(1);
    RESONA_CHECK(targets.dim() == 1 && targets.size(0) == N)
        << "cross_entropy: targets " << targets.describe() << " must be [" << N
        << "] to match logits " << logits.describe();
    RESONA_CHECK(V > 0 || N == 0) << "cross_entropy: logits " << logits.describe()
                                  << " have no classes";
    if (logits.device().is_cuda()) {
      return forward_gpu(ctx, logits, targets, ignore_index, reduction);
    }
    require_cpu(kName, logits);
    require_cpu(kName, targets);

    const Tensor x = logits.contiguous();
    const Tensor t = targets.contiguous();
    Tensor lse = empty({N}, x.dtype());
    Tensor per_row = empty({N}, x.dtype());
    double total = 0;
    int64_t count = 0;
    dispatch_floating(kName, x.dtype(), [&](auto tag) {
      using T = typename decltype(tag)::type;
      dispatch_index(kName, t.dtype(), [&](auto itag) {
        using I = typename decltype(itag)::type;
        const T* px = x.data<T>();
        const I* pt = t.data<I>();
        T* pl = lse.data<T>();
        T* pr = per_row.data<T>();
        for (int64_t i = 0; i < N; ++i) {
          const int64_t target = static_cast<int64_t>(pt[i]);
          if (target == ignore_index) {
            pl[i] = 0;  // never read: backward skips ignored rows
            pr[i] = 0;
            continue;
          }
          RESONA_CHECK(target >= 0 && target < V)
              << "cross_entropy: target " << target << " at row " << i << " is out of range [0, "
              << V << ") for logits " << logits.describe() << " (targets " << targets.describe()
              << ", ignore_index " << ignore_index << ")";
          const T* row = px + i * V;
          T m = -std::numeric_limits<T>::infinity();
          for (int64_t j = 0; j < V; ++j) m = std::max(m, row[j]);
          double s = 0;
          for (int64_t j = 0; j < V; ++j) s += std::exp(row[j] - m);
          const double log_s = std::log(s);
          pl[i] = static_cast<T>(m + log_s);
          // (m - x_t) first: both large for large logits, their difference is exact-ish.
          const double loss = static_cast<double>(m - row[target]) + log_s;
          pr[i] = static_cast<T>(loss);
          total += loss;
          ++count;
        }
      });
    });

    if (ctx.requires_grad) {
      Saved& s = ctx.saved;
      s.logits = x;
      s.targets = t;
      s.lse = lse;
      s.ignore_index = ignore_index;
      s.reduction = reduction;
      s.count = count;
    }
    switch (reduction) {
      case Reduction::kNone:
        return per_row;
      case Reduction::kSum:
        return scalar_tensor(total, x.dtype());
      case Reduction::kMean:
        return scalar_tensor(count > 0 ? total / static_cast<double>(count) : 0.0, x.dtype());
    }
    RESONA_FAIL() << "cross_entropy: unknown reduction " << static_cast<int>(reduction);
    return Tensor();
  }

  static Grads backward(Ctx<Saved>& ctx, const Tensor& d) {
    if (!ctx.needs(0)) return {Tensor(), Tensor()};
    const Saved& s = ctx.saved;
    if (s.logits.device().is_cuda()) return {backward_gpu(s, d), Tensor()};
    const int64_t N = s.logits.size(0), V = s.logits.size(1);
    Tensor d_logits = empty({N, V}, s.logits.dtype());
    const Tensor dc = d.contiguous();
    dispatch_floating(kName, d.dtype(), [&](auto tag) {
      using T = typename decltype(tag)::type;
      dispatch_index(kName, s.targets.dtype(), [&](auto itag) {
        using I = typename decltype(itag)::type;
        const T* px = s.logits.data<T>();
        const I* pt = s.targets.data<I>();
        const T* pl = s.lse.data<T>();
        const T* pd = dc.data<T>();
        T* pg = d_logits.data<T>();
        T scale = 0;  // the row weight g_i for kMean and kSum
        if (s.reduction == Reduction::kSum) scale = pd[0];
        if (s.reduction == Reduction::kMean && s.count > 0) scale = pd[0] / static_cast<T>(s.count);
        for (int64_t i = 0; i < N; ++i) {
          T* grow = pg + i * V;
          const int64_t target = static_cast<int64_t>(pt[i]);
          if (target == s.ignore_index) {
            std::fill(grow, grow + V, T(0));
            continue;
          }
          const T g = s.reduction == Reduction::kNone ? pd[i] : scale;
          const T* row = px + i * V;
          const T lse = pl[i];
          for (int64_t j = 0; j < V; ++j) grow[j] = std::exp(row[j] - lse) * g;
          grow[target] -= g;
        }
      });
    });
    return {d_logits, Tensor()};
  }
};

}  // namespace

Tensor cross_entropy(const Tensor& logits, const Tensor& targets, int64_t ignore_index,
                     Reduction reduction) {
  return apply<CrossEntropyOp>(logits, targets, ignore_index, reduction);
}

}  // namespace resona
