// Inverted dropout (CPU, float32 and float64).
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
#include "ops/dropout.h"

#include <cmath>

#include "autograd/function.h"
#include "core/dispatch.h"
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

struct DropoutOp {
  static constexpr const char* kName = "dropout";
  struct Saved {
    double p = 0;
    uint64_t seed = 0, offset = 0;
  };

  static Tensor forward(Ctx<Saved>& ctx, const Tensor& x, double p, uint64_t seed,
                        uint64_t offset) {
    Tensor xc = x.contiguous();
    Tensor y = empty(x.shape(), x.dtype());
    masked_scale(kName, xc, y, p, seed, offset);
    ctx.saved = {p, seed, offset};
    return y;
  }

  static Grads backward(Ctx<Saved>& ctx, const Tensor& d_y) {
    const Saved& s = ctx.saved;
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
  RESONA_CHECK(x.dtype() == DType::kFloat32 || x.dtype() == DType::kFloat64)
      << "dropout: float32 or float64 expected on the CPU, got " << x.describe();
  require_cpu("dropout", x);
  const uint64_t offset = gen.reserve(static_cast<uint64_t>(x.numel()));
  return apply<DropoutOp>(x, p, gen.seed(), offset);
}

}  // namespace resona
