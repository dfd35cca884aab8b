// Inverted dropout (CPU: float32 and float64; CUDA: float32 and bfloat16, cuda/dropout.cu).
//
//   y[i] = keep(i) ? x[i] / (1 - p) : 0,   d_x[i] = keep(i) ? d_y[i] / (1 - p) : 0
//   keep(i) = uint_to_unit_float(word_at(seed, offset + i)) >= p
//
// i is the row-major flat position in x's logical shape (not in its storage), so the mask
// does not depend on x's strides. (seed, offset) are the generator's at the call; the
// call reserves numel words, which advances the generator. Nothing but (seed, offset, p)
// is saved: backward regenerates the mask. The uniform has 24 bits, u = k / 2^24, so
// keep(i) is exactly (word >> 8) >= ceil(p * 2^24), which a device kernel can test in
// integers to draw the same mask; the keep probability is 1 - ceil(p 2^24) / 2^24.
//
// When !training or p == 0 the op is the identity: it returns x itself and draws no words.
//
// CUDA draws the same words with a device Philox (cuda/philox.cuh) and tests them in
// integers against ceil(p 2^24), so its mask equals the CPU's for the same generator
// state; float32 kept values are the same single multiply by float(1/(1-p)). x may
// have any strides (rank <= 8 on CUDA); the output is contiguous.
#include "ops/dropout.h"

#include <cmath>

#include "autograd/function.h"
#include "core/dispatch.h"
#include "cuda/dropout.h"
#include "ops/device_util.h"

namespace resona {
namespace {

inline bool keep(uint64_t seed, uint64_t offset, int64_t i, double p) {
  return static_cast<double>(uint_to_unit_float(Generator::word_at(seed, offset + i))) >= p;
}

// out[i] = keep(i) ? in[i] * scale : 0 over contiguous `in` and `out`.
void masked_scale(const char* op, const Tensor& in, const Tensor& out, double p, uint64_t seed,
                  uint64_t offset) {
  dispatch_floating(op, in.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T scale = static_cast<T>(1.0 / (1.0 - p));
    const T* pi = in.data<T>();
    T* po = out.data<T>();
    for (int64_t i = 0, n = in.numel(); i < n; ++i) {
      po[i] = keep(seed, offset, i, p) ? pi[i] * scale : T(0);
    }
  });
}

// CUDA: out = in * mask * scale, in with any strides, out contiguous.
void masked_scale_cuda(const char* op, const Tensor& in, const Tensor& out, double p, uint64_t seed,
                       uint64_t offset) {
  cuda::DropoutParams dp{};
  dp.dtype =
      in.dtype() == DType::kBFloat16 ? cuda::KernelDType::kBFloat16 : cuda::KernelDType::kFloat32;
  dp.n = in.numel();
  dp.ndim = static_cast<int32_t>(in.dim());
  dp.in_contiguous = in.is_contiguous();
  for (int64_t d = 0; d < in.dim() && d < cuda::kDropoutMaxDims; ++d) {
    dp.shape[d] = in.shape()[d];
    dp.in_strides[d] = in.strides()[d];
  }
  dp.seed = seed;
  dp.offset = offset;
  dp.threshold = static_cast<uint32_t>(std::ceil(p * 16777216.0));  // exact: p * 2^24
  dp.scale = static_cast<float>(1.0 / (1.0 - p));
  dp.in = in.raw_data();
  dp.out = out.raw_data();
  const char* err = cuda::dropout_fwd_cuda(dp, launch_stream());
  RESONA_CHECK(err == nullptr) << op << " on " << in.describe() << ": " << err;
}

// The dtype and rank a CUDA dropout accepts, checked before the generator advances.
void check_cuda_input(const char* op, const Tensor& t) {
  RESONA_CHECK(t.dtype() == DType::kFloat32 || t.dtype() == DType::kBFloat16)
      << op << ": CUDA supports float32 and bfloat16, got " << t.describe();
  RESONA_CHECK(t.is_contiguous() || t.dim() <= cuda::kDropoutMaxDims)
      << op << " on CUDA: a strided input of at most " << cuda::kDropoutMaxDims << " dims, got "
      << t.describe();
}

struct DropoutOp {
  static constexpr const char* kName = "dropout";
  struct Saved {
    double p = 0;
    uint64_t seed = 0, offset = 0;
  };

  static Tensor forward(Ctx<Saved>& ctx, const Tensor& x, double p, uint64_t seed,
                        uint64_t offset) {
    if (x.device().is_cuda()) {
      Tensor y = empty(x.shape(), x.dtype(), x.device());
      masked_scale_cuda(kName, x, y, p, seed, offset);
      ctx.saved = {p, seed, offset};
      return y;
    }
    Tensor xc = x.contiguous();
    Tensor y = empty(x.shape(), x.dtype());
    masked_scale(kName, xc, y, p, seed, offset);
    ctx.saved = {p, seed, offset};
    return y;
  }

  static Grads backward(Ctx<Saved>& ctx, const Tensor& d_y) {
    const Saved& s = ctx.saved;
    if (d_y.device().is_cuda()) {
      check_cuda_input(kName, d_y);
      Tensor d_x = empty(d_y.shape(), d_y.dtype(), d_y.device());
      masked_scale_cuda(kName, d_y, d_x, s.p, s.seed, s.offset);
      return {d_x};
    }
    require_cpu(kName, d_y);
    Tensor d = d_y.contiguous();
    Tensor d_x = empty(d.shape(), d.dtype());
    masked_scale(kName, d, d_x, s.p, s.seed, s.offset);
    return {d_x};
  }
};

}  // namespace

Tensor dropout(const Tensor& x, double p, bool training, Generator& gen) {
  RESONA_CHECK(p >= 0.0 && p < 1.0)
      << "dropout: p must be in [0, 1), got " << p << " (for " << x.describe() << ")";
  if (!training || p == 0.0) return x;
  // Checked before reserving, so that a refused call leaves the generator untouched.
  if (x.device().is_cuda()) {
    check_cuda_input("dropout", x);
  } else {
    RESONA_CHECK(x.dtype() == DType::kFloat32 || x.dtype() == DType::kFloat64)
        << "dropout: float32 or float64 expected on the CPU, got " << x.describe();
    require_cpu("dropout", x);
  }
  const uint64_t offset = gen.reserve(static_cast<uint64_t>(x.numel()));
  return apply<DropoutOp>(x, p, gen.seed(), offset);
}

}  // namespace resona
