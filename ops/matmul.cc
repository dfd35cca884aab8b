// Matrix products: Eigen on the CPU, cuBLAS on CUDA (cuda/blas.h).
//
//   matmul: out[i] = a[i] b[i]        for every index i of the broadcast batch shape
//   linear: out = x w^T + bias        with every leading dim of x folded into rows
//   backward: d_a[i] = d_out[i] b[i]^T, d_b[i] = a[i]^T d_out[i]   (summed over the batch
//             entries that share one a or b); linear: d_x = d_out w, d_w = d_out^T x,
//             d_bias = column sums of d_out
//
// Operands are read where they lie: a matrix with unit-stride rows or columns maps onto
// an Eigen row-major Map or the transpose of one, so w.transpose(0, 1) or any other
// transposed view costs no copy. Only a matrix with neither (e.g. a slice with step 2
// along both dims, or an expanded one) is copied, one batch entry at a time.
//
// When one side of a batched product is shared by the whole batch, the batch folds into
// one big product: into the rows when b is unbatched (x [B, T, D] @ w [D, N] is one
// [B*T, D] @ [D, N] product), and into the contraction dim when the result is shared
// (d_w = sum_i a[i]^T d_out[i] is one [K, B*M] @ [B*M, N] product).
//
// On CUDA the same plan runs through cuda::gemm_cuda (one strided batched cuBLAS call
// per plan step): row- or column-major operands are read in place through cuBLAS's op
// flags, a matrix shared by the batch gets batch stride 0, and the two folds above apply
// unchanged. Where no fold applies, the innermost batch dims go into one strided batched
// call and the outer ones are looped on the host; a gradient summed over the batch
// without a fold is accumulated by successive calls on one stream (beta = 1), so the
// result is deterministic. float32 products use TF32 tensor cores, bfloat16 ones BF16
// tensor cores, both accumulating in float32. linear's bias add and d_bias (a fixed-order
// two-stage column sum) are kernels of cuda/blas.cu.
//
// Saved for backward: a and b (x and w), each only when the other's gradient is needed.
// Gradients are fresh tensors; none is accumulated into an existing buffer.
#include "ops/matmul.h"
#include "ops/device_util.h"

#include <Eigen/Core>
#include <algorithm>
#include <array>
#include <vector>

#include "autograd/function.h"
#include "core/dispatch.h"
#include "core/strided_loop.h"
#include "cuda/blas.h"

namespace resona {
namespace {

template <class T>
using RowMajorMatrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class T>
using ConstRowMap = Eigen::Map<const RowMajorMatrix<T>, Eigen::Unaligned, Eigen::OuterStride<>>;
template <class T>
using RowMap = Eigen::Map<RowMajorMatrix<T>, Eigen::Unaligned, Eigen::OuterStride<>>;

// A matrix (or one per batch entry) inside a tensor: element (i, j) of the batch entry
// whose element offset is o lies at data<T>()[o + i * rs + j * cs]. `bs` holds the
// strides along the broadcast batch shape, 0 where this operand is broadcast.
struct Mat {
  Tensor t;  // the tensor whose storage holds the elements
  int64_t rows = 0, cols = 0, rs = 0, cs = 0;
  Shape bs;

  Mat transposed() const {
    Mat m = *this;
    std::swap(m.rows, m.cols);
    std::swap(m.rs, m.cs);
    return m;
  }
};

// The last two dims of `t` as a matrix per entry of `batch` (t's leading dims aligned to
// the right of `batch`, as in broadcasting).
Mat last_two(const Tensor& t, const Shape& batch) {
  const int64_t nd = t.dim();
  Mat m;
  m.t = t;
  m.rows = t.shape()[nd - 2];
  m.cols = t.shape()[nd - 1];
  m.rs = t.strides()[nd - 2];
  m.cs = t.strides()[nd - 1];
  m.bs.assign(batch.size(), 0);
  const size_t lead = batch.size() - static_cast<size_t>(nd - 2);
  for (int64_t i = 0; i < nd - 2; ++i) {
    m.bs[lead + i] = t.shape()[i] == 1 ? 0 : t.strides()[i];
  }
  return m;
}

// Whether dims (`sizes`, `strides`, outermost first) walk memory like one dim of their
// total size; if so `*stride` is its stride. Size-1 dims never matter.
bool fold_dims(const Shape& sizes, const Shape& strides, int64_t* stride) {
  *stride = 1;
  bool first = true;
  int64_t expect = 0;  // the stride the next outer dim needs
  for (int i = static_cast<int>(sizes.size()) - 1; i >= 0; --i) {
    if (sizes[i] == 1) continue;
    if (first) {
      *stride = strides[i];
      first = false;
    } else if (strides[i] != expect) {
      return false;
    }
    expect = strides[i] * sizes[i];
  }
  return true;
}

// A tensor [..., C] as one matrix [R, C], R the product of the leading dims; copies only
// when the leading dims cannot fold into one stride.
Mat rows_of(const Tensor& t) {
  Shape lead_sizes(t.shape().begin(), t.shape().end() - 1);
  Shape lead_strides(t.strides().begin(), t.strides().end() - 1);
  Mat m;
  m.rows = shape_numel(lead_sizes);
  m.cols = t.shape().back();
  int64_t rs = 1;
  if (fold_dims(lead_sizes, lead_strides, &rs)) {
    m.t = t;
    m.rs = rs;
    m.cs = t.strides().back();
  } else {
    m.t = t.contiguous();
    m.rs = m.cols;
    m.cs = 1;
  }
  return m;
}

// Calls f with an Eigen expression for the matrix at `p`: a row-major Map when rows are
// unit-stride, the transpose of one when columns are, else a Map of a copy in `buf`.
template <class T, class F>
void with_eigen(const T* p, const Mat& m, std::vector<T>& buf, F&& f) {
  if ((m.cols <= 1 || m.cs == 1) && (m.rows <= 1 || m.rs >= m.cols)) {
    const int64_t ld = m.rows <= 1 ? std::max<int64_t>(m.cols, 1) : m.rs;
    f(ConstRowMap<T>(p, m.rows, m.cols, Eigen::OuterStride<>(ld)));
  } else if ((m.rows <= 1 || m.rs == 1) && (m.cols <= 1 || m.cs >= m.rows)) {
    const int64_t ld = m.cols <= 1 ? std::max<int64_t>(m.rows, 1) : m.cs;
    f(ConstRowMap<T>(p, m.cols, m.rows, Eigen::OuterStride<>(ld)).transpose());
  } else {
    buf.resize(static_cast<size_t>(m.rows * m.cols));
    for (int64_t i = 0; i < m.rows; ++i) {
      for (int64_t j = 0; j < m.cols; ++j) buf[i * m.cols + j] = p[i * m.rs + j * m.cs];
    }
    f(ConstRowMap<T>(buf.data(), m.rows, m.cols,
                     Eigen::OuterStride<>(std::max<int64_t>(m.cols, 1))));
  }
}

// Scratch for operands that must be copied, reused across batch entries.
template <class T>
struct GemmScratch {
  std::vector<T> a, b;
};

// c = a b (or c += a b when `accumulate`) for single matrices; c has unit-stride rows.
template <class T>
void gemm(T* pc, const Mat& c, const T* pa, const Mat& a, const T* pb, const Mat& b,
          bool accumulate, GemmScratch<T>& scratch) {
  RESONA_DCHECK(c.cols <= 1 || c.cs == 1);
  RowMap<T> C(pc, c.rows, c.cols,
              Eigen::OuterStride<>(c.rows <= 1 ? std::max<int64_t>(c.cols, 1) : c.rs));
  if (!accumulate) C.setZero();
  with_eigen(pa, a, scratch.a, [&](const auto& A) {
    with_eigen(pb, b, scratch.b, [&](const auto& B) { C.noalias() += A * B; });
  });
}

// Whether one matrix serves every batch entry (stride 0 along every non-trivial dim).
bool shared_by_batch(const Shape& batch, const Shape& bs) {
  for (size_t i = 0; i < batch.size(); ++i) {
    if (batch[i] != 1 && bs[i] != 0) return false;
  }
  return true;
}

// Whether some batch entries share one matrix (stride 0 along a non-trivial dim).
bool broadcast_somewhere(const Shape& batch, const Shape& bs) {
  for (size_t i = 0; i < batch.size(); ++i) {
    if (batch[i] != 1 && bs[i] == 0) return true;
  }
  return false;
}

Shape with_last(Shape s, int64_t v) {
  s.push_back(v);
  return s;
}

// The two ways a batched product folds into one GEMM (shared by the CPU and CUDA paths).
// One b for all entries: the entries of a and c stacked along their rows (c's entries must
// be distinct, or the rows of one product would alias each other). False when the batch
// strides do not allow it.
bool fold_shared_b(const Shape& batch, const Mat& a, const Mat& c, Mat* a2, Mat* c2) {
  if (shape_numel(batch) <= 1 || broadcast_somewhere(batch, c.bs)) return false;
  int64_t ars = 0, crs = 0;
  const Shape sizes = with_last(batch, c.rows);
  if (!fold_dims(sizes, with_last(a.bs, a.rs), &ars) ||
      !fold_dims(sizes, with_last(c.bs, c.rs), &crs)) {
    return false;
  }
  *a2 = a;
  *c2 = c;
  a2->rows = c2->rows = shape_numel(batch) * c.rows;
  a2->rs = ars;
  c2->rs = crs;
  return true;
}

// One c for all entries (a gradient summed over the batch): the columns of a and the rows
// of b stacked along the contraction dim.
bool fold_shared_c(const Shape& batch, const Mat& a, const Mat& b, Mat* a2, Mat* b2) {
  if (shape_numel(batch) <= 1) return false;
  int64_t acs = 0, brs = 0;
  const Shape sizes = with_last(batch, a.cols);
  if (!fold_dims(sizes, with_last(a.bs, a.cs), &acs) ||
      !fold_dims(sizes, with_last(b.bs, b.rs), &brs)) {
    return false;
  }
  *a2 = a;
  *b2 = b;
  a2->cols = b2->rows = shape_numel(batch) * a.cols;
  a2->cs = acs;
  b2->rs = brs;
  return true;
}

// c[i] = a[i] b[i] (+= when `accumulate`) for every index i of `batch`. `c` is a fresh
// tensor with unit-stride rows; where it is broadcast along the batch, the products of
// the entries sharing it are summed into it, which needs `accumulate` (and c zeroed).
template <class T>
void batched_gemm(const Shape& batch, const Mat& c, const Mat& a, const Mat& b, bool accumulate) {
  RESONA_DCHECK(a.rows == c.rows && b.cols == c.cols && a.cols == b.rows);
  const int64_t nb = shape_numel(batch);
  if (nb == 0 || c.rows == 0 || c.cols == 0) return;
  T* pc = c.t.data<T>();
  const T* pa = a.t.data<T>();
  const T* pb = b.t.data<T>();
  GemmScratch<T> scratch;
  Mat a2, b2, c2;
  if (shared_by_batch(batch, b.bs) && fold_shared_b(batch, a, c, &a2, &c2)) {
    gemm(pc, c2, pa, a2, pb, b, accumulate, scratch);
    return;
  }
  if (shared_by_batch(batch, c.bs) && fold_shared_c(batch, a, b, &a2, &b2)) {
    gemm(pc, c, pa, a2, pb, b2, accumulate, scratch);
    return;
  }
  strided_loop<3>(
      batch, {c.bs, a.bs, b.bs},
      [&](const std::array<int64_t, 3>& off, int64_t n, const std::array<int64_t, 3>& step) {
        for (int64_t i = 0; i < n; ++i) {
          gemm(pc + off[0] + i * step[0], c, pa + off[1] + i * step[1], a,
               pb + off[2] + i * step[2], b, accumulate, scratch);
        }
      });
}

// A gradient buffer for an operand of shape `shape` whose batch dims may be broadcast
// up to `batch`: zeroed when several batch entries sum into it.
Tensor grad_buffer(const Shape& shape, const Shape& batch, DType dtype, Device device,
                   bool* summed) {
  const Shape own_batch(shape.begin(), shape.end() - 2);
  *summed = own_batch != batch;
  return *summed ? zeros(shape, dtype, device) : empty(shape, dtype, device);
}

// ---- CUDA ----

bool gemm_ok(const Mat& m) { return cuda::gemm_operand_ok(m.rows, m.cols, m.rs, m.cs); }

// last_two / rows_of for a CUDA operand: a copy only when cuBLAS cannot read the matrix
// where it lies (neither dim unit-stride, e.g. an expanded tensor).
Mat cuda_last_two(const Tensor& t, const Shape& batch) {
  Mat m = last_two(t, batch);
  return gemm_ok(m) ? m : last_two(t.contiguous(), batch);
}
Mat cuda_rows_of(const Tensor& t) {
  Mat m = rows_of(t);
  return gemm_ok(m) ? m : rows_of(t.contiguous());
}

void run_gemm(const char* op, int64_t batch, const Mat& c, int64_t c_bs, int64_t c_off,
              const Mat& a, int64_t a_bs, int64_t a_off, const Mat& b, int64_t b_bs, int64_t b_off,
              bool accumulate) {
  const size_t es = c.t.element_size();
  cuda::GemmParams p;
  p.dtype = cuda_kernel_dtype(op, c.t);
  p.device = c.t.device().index;
  p.batch = batch;
  p.m = c.rows;
  p.n = c.cols;
  p.k = a.cols;
  p.a = static_cast<const char*>(a.t.raw_data()) + a_off * es;
  p.a_rs = a.rs;
  p.a_cs = a.cs;
  p.a_bs = a_bs;
  p.b = static_cast<const char*>(b.t.raw_data()) + b_off * es;
  p.b_rs = b.rs;
  p.b_cs = b.cs;
  p.b_bs = b_bs;
  p.c = static_cast<char*>(c.t.raw_data()) + c_off * es;
  p.c_rs = c.rs;
  p.c_bs = c_bs;
  p.accumulate = accumulate;
  const char* err = cuda::gemm_cuda(p, launch_stream());
  RESONA_CHECK(err == nullptr) << op << " on CUDA (c " << c.t.describe() << ", a " << a.t.describe()
                               << ", b " << b.t.describe() << "): " << err;
}

// batched_gemm on CUDA, with the same contract (accumulate: beta = 1; a c broadcast
// along the batch must arrive zeroed with accumulate set). Operands are gemm_ok.
void batched_gemm_cuda(const char* op, const Shape& batch, const Mat& c, const Mat& a, const Mat& b,
                       bool accumulate) {
  RESONA_DCHECK(a.rows == c.rows && b.cols == c.cols && a.cols == b.rows);
  const int64_t nb = shape_numel(batch);
  if (nb == 0 || c.rows == 0 || c.cols == 0) return;
  Mat a2, b2, c2;
  if (shared_by_batch(batch, b.bs) && fold_shared_b(batch, a, c, &a2, &c2) && gemm_ok(a2) &&
      (c2.cols <= 1 || c2.cs == 1) && (c2.rows <= 1 || c2.rs >= c2.cols)) {
    run_gemm(op, 1, c2, 0, 0, a2, 0, 0, b, 0, 0, accumulate);
    return;
  }
  if (shared_by_batch(batch, c.bs) && fold_shared_c(batch, a, b, &a2, &b2) && gemm_ok(a2) &&
      gemm_ok(b2)) {
    run_gemm(op, 1, c, 0, 0, a2, 0, 0, b2, 0, 0, accumulate);
    return;
  }
  // The batch dims of size > 1, adjacent ones merged where every operand's strides chain
  // (outer stride = inner stride * inner size); strides ordered c, a, b.
  std::vector<int64_t> sizes;
  std::vector<std::array<int64_t, 3>> strides;
  for (size_t i = 0; i < batch.size(); ++i) {
    if (batch[i] == 1) continue;
    const std::array<int64_t, 3> st = {c.bs[i], a.bs[i], b.bs[i]};
    if (!sizes.empty()) {
      const std::array<int64_t, 3>& prev = strides.back();
      bool chain = true;
      for (int k = 0; k < 3; ++k) chain = chain && prev[k] == st[k] * batch[i];
      if (chain) {
        sizes.back() *= batch[i];
        strides.back() = st;
        continue;
      }
    }
    sizes.push_back(batch[i]);
    strides.push_back(st);
  }
  // The innermost dim goes into one strided batched call unless c is shared along it
  // (entries of one call must write distinct c's); the rest is looped here, in order.
  int64_t inner = 1;
  std::array<int64_t, 3> inner_st = {0, 0, 0};
  if (!sizes.empty() && strides.back()[0] != 0) {
    inner = sizes.back();
    inner_st = strides.back();
    sizes.pop_back();
    strides.pop_back();
  }
  const int64_t outer = shape_numel(sizes);
  std::vector<int64_t> idx(sizes.size(), 0);
  for (int64_t o = 0; o < outer; ++o) {
    std::array<int64_t, 3> off = {0, 0, 0};
    for (size_t d = 0; d < sizes.size(); ++d) {
      for (int k = 0; k < 3; ++k) off[k] += idx[d] * strides[d][k];
    }
    run_gemm(op, inner, c, inner_st[0], off[0], a, inner_st[1], off[1], b, inner_st[2], off[2],
             accumulate);
    for (int64_t d = static_cast<int64_t>(sizes.size()) - 1; d >= 0; --d) {
      if (++idx[d] < sizes[d]) break;
      idx[d] = 0;
    }
  }
}

// out [R, N] += bias [N] on the GPU.
void bias_add_cuda(const char* op, const Tensor& out, const Tensor& bias) {
  const Tensor bc = bias.contiguous();
  cuda::BiasAddParams p{cuda_kernel_dtype(op, out),
                        out.numel() / std::max<int64_t>(out.size(-1), 1), out.size(-1),
                        out.raw_data(), bc.raw_data()};
  const char* err = cuda::bias_add_fwd_cuda(p, launch_stream());
  RESONA_CHECK(err == nullptr) << op << ": bias add of " << bias.describe() << " on CUDA: " << err;
}

// The column sums of the matrix m, as a fresh [m.cols] tensor on m's device.
Tensor gpu_column_sum(const char* op, const Mat& m) {
  Tensor out = empty({m.cols}, m.t.dtype(), m.t.device());
  Tensor partial = empty({cuda::column_sum_chunks(m.rows), m.cols}, DType::kFloat32, m.t.device());
  cuda::ColumnSumParams p{
      cuda_kernel_dtype(op, m.t), m.rows,        m.cols, m.t.raw_data(), m.rs, m.cs,
      partial.data<float>(),      out.raw_data()};
  const char* err = cuda::column_sum_cuda(p, launch_stream());
  RESONA_CHECK(err == nullptr) << op << ": column sum of " << m.t.describe() << " on CUDA: " << err;
  return out;
}

void check_operands(const char* op, std::initializer_list<const Tensor*> ts) {
  for (const Tensor* t : ts) {
    if (!t->defined()) continue;
    check_floating(op, *t);
    if (t->device().is_cuda()) cuda_kernel_dtype(op, *t);
  }
  check_same_device(op, ts);
  check_same_dtype(op, ts);
}

struct MatmulOp {
  static constexpr const char* kName = "matmul";
  struct Saved {
    Tensor a, b;
    Shape a_shape, b_shape, batch;
  };

  static Tensor forward(Ctx<Saved>& ctx, const Tensor& a, const Tensor& b) {
    RESONA_CHECK(a.dim() >= 2 && b.dim() >= 2)
        << "matmul: both operands must be at least 2-D ([..., M, K] and [..., K, N]), got a = "
        << a.describe() << " and b = " << b.describe();
    check_operands(kName, {&a, &b});
    const int64_t M = a.size(-2), K = a.size(-1), N = b.size(-1);
    RESONA_CHECK(b.size(-2) == K) << "matmul: a = " << a.describe() << " and b = " << b.describe()
                                  << " do not chain: a [..., M, K] needs b [..., K, N] with K = "
                                  << K << ", got " << b.size(-2);
    const Shape a_batch(a.shape().begin(), a.shape().end() - 2);
    const Shape b_batch(b.shape().begin(), b.shape().end() - 2);
    Shape batch(std::max(a_batch.size(), b_batch.size()));
    for (size_t i = 0; i < batch.size(); ++i) {
      const size_t from_end = batch.size() - i;
      const int64_t da = from_end <= a_batch.size() ? a_batch[a_batch.size() - from_end] : 1;
      const int64_t db = from_end <= b_batch.size() ? b_batch[b_batch.size() - from_end] : 1;
      RESONA_CHECK(da == db || da == 1 || db == 1)
          << "matmul: batch dims of a = " << a.describe() << " and b = " << b.describe()
          << " do not broadcast (" << shape_str(a_batch) << " vs " << shape_str(b_batch) << ")";
      batch[i] = da == 1 ? db : da;
    }
    Shape out_shape = batch;
    out_shape.push_back(M);
    out_shape.push_back(N);
    Tensor out = empty(out_shape, a.dtype(), a.device());
    if (a.device().is_cuda()) {
      batched_gemm_cuda(kName, batch, last_two(out, batch), cuda_last_two(a, batch),
                        cuda_last_two(b, batch), /*accumulate=*/false);
    } else {
      dispatch_floating(kName, a.dtype(), [&](auto tag) {
        using T = typename decltype(tag)::type;
        batched_gemm<T>(batch, last_two(out, batch), last_two(a, batch), last_two(b, batch),
                        /*accumulate=*/false);
      });
    }
    if (ctx.requires_grad) {
      Saved& s = ctx.saved;
      if (ctx.needs(1)) s.a = a;  // d_b = a^T d_out
      if (ctx.needs(0)) s.b = b;  // d_a = d_out b^T
      s.a_shape = a.shape();
      s.b_shape = b.shape();
      s.batch = batch;
    }
    return out;
  }

  static Grads backward(Ctx<Saved>& ctx, const Tensor& d) {
    const Saved& s = ctx.saved;
    Tensor d_a, d_b;
    if (d.device().is_cuda()) {
      const Mat md = cuda_last_two(d, s.batch);
      bool summed = false;
      if (ctx.needs(0)) {
        d_a = grad_buffer(s.a_shape, s.batch, d.dtype(), d.device(), &summed);
        batched_gemm_cuda(kName, s.batch, last_two(d_a, s.batch), md,
                          cuda_last_two(s.b, s.batch).transposed(), summed);
      }
      if (ctx.needs(1)) {
        d_b = grad_buffer(s.b_shape, s.batch, d.dtype(), d.device(), &summed);
        batched_gemm_cuda(kName, s.batch, last_two(d_b, s.batch),
                          cuda_last_two(s.a, s.batch).transposed(), md, summed);
      }
      return {d_a, d_b};
    }
    dispatch_floating(kName, d.dtype(), [&](auto tag) {
      using T = typename decltype(tag)::type;
      const Mat md = last_two(d, s.batch);
      bool summed = false;
      if (ctx.needs(0)) {
        d_a = grad_buffer(s.a_shape, s.batch, d.dtype(), d.device(), &summed);
        batched_gemm<T>(s.batch, last_two(d_a, s.batch), md, last_two(s.b, s.batch).transposed(),
                        summed);
      }
      if (ctx.needs(1)) {
        d_b = grad_buffer(s.b_shape, s.batch, d.dtype(), d.device(), &summed);
        batched_gemm<T>(s.batch, last_two(d_b, s.batch), last_two(s.a, s.batch).transposed(), md,
                        summed);
      }
    });
    return {d_a, d_b};
  }
};

struct LinearOp {
  static constexpr const char* kName = "linear";
  struct Saved {
    Tensor x, w;
    Shape x_shape;
  };

  static Tensor forward(Ctx<Saved>& ctx, const Tensor& x, const Tensor& w, const Tensor& bias) {
    RESONA_CHECK(x.dim() >= 1 && w.dim() == 2)
        << "linear: expected x [..., in] and w [out, in], got x = " << x.describe()
        << " and w = " << w.describe();
    check_operands(kName, {&x, &w, &bias});
    const int64_t in = w.size(1), out_features = w.size(0);
    RESONA_CHECK(x.size(-1) == in)
        << "linear: x = " << x.describe() << " has " << x.size(-1)
        << " features but w = " << w.describe() << " expects " << in << " (w is [out, in])";
    if (bias.defined()) {
      RESONA_CHECK(bias.dim() == 1 && bias.size(0) == out_features)
          << "linear: bias = " << bias.describe() << " must be [" << out_features
          << "] to match w = " << w.describe();
    }
    Shape out_shape = x.shape();
    out_shape.back() = out_features;
    Tensor out = empty(out_shape, x.dtype(), x.device());
    if (x.device().is_cuda()) {
      batched_gemm_cuda(kName, {}, rows_of(out), cuda_rows_of(x), cuda_last_two(w, {}).transposed(),
                        /*accumulate=*/false);
      if (bias.defined()) bias_add_cuda(kName, out, bias);
    } else {
      dispatch_floating(kName, x.dtype(), [&](auto tag) {
        using T = typename decltype(tag)::type;
        const Mat mo = rows_of(out);
        if (bias.defined()) {
          // Start every row from the bias and add x w^T onto it.
          const Tensor bc = bias.contiguous();
          RowMap<T>(out.data<T>(), mo.rows, mo.cols,
                    Eigen::OuterStride<>(std::max<int64_t>(mo.cols, 1)))
              .rowwise() =
              Eigen::Map<const Eigen::Matrix<T, 1, Eigen::Dynamic>>(bc.data<T>(), mo.cols);
        }
        batched_gemm<T>({}, mo, rows_of(x), last_two(w, {}).transposed(), bias.defined());
      });
    }
    if (ctx.requires_grad) {
      if (ctx.needs(1)) ctx.saved.x = x;  // d_w = d_out^T x
      if (ctx.needs(0)) ctx.saved.w = w;  // d_x = d_out w
      ctx.saved.x_shape = x.shape();
    }
    return out;
  }

  static Grads backward(Ctx<Saved>& ctx, const Tensor& d) {
    const Saved& s = ctx.saved;
    Tensor d_x, d_w, d_bias;
    if (d.device().is_cuda()) {
      const Mat md = cuda_rows_of(d);  // [R, out]
      if (ctx.needs(0)) {
        d_x = empty(s.x_shape, d.dtype(), d.device());
        batched_gemm_cuda(kName, {}, rows_of(d_x), md, cuda_last_two(s.w, {}), false);
      }
      if (ctx.needs(1)) {
        d_w = empty({md.cols, s.x_shape.back()}, d.dtype(), d.device());
        batched_gemm_cuda(kName, {}, last_two(d_w, {}), md.transposed(), cuda_rows_of(s.x), false);
      }
      if (ctx.needs(2)) d_bias = gpu_column_sum(kName, md);
      return {d_x, d_w, d_bias};
    }
    dispatch_floating(kName, d.dtype(), [&](auto tag) {
      using T = typename decltype(tag)::type;
      const Mat md = rows_of(d);  // [R, out]
      if (ctx.needs(0)) {
        d_x = empty(s.x_shape, d.dtype());
        batched_gemm<T>({}, rows_of(d_x), md, last_two(s.w, {}), false);
      }
      if (ctx.needs(1)) {
        d_w = empty({md.cols, s.x_shape.back()}, d.dtype());
        batched_gemm<T>({}, last_two(d_w, {}), md.transposed(), rows_of(s.x), false);
      }
      if (ctx.needs(2)) {
        d_bias = zeros({md.cols}, d.dtype());
        T* pb = d_bias.data<T>();
        const T* pd = md.t.data<T>();
        for (int64_t r = 0; r < md.rows; ++r) {
          const T* row = pd + r * md.rs;
          if (md.cs == 1) {
            for (int64_t j = 0; j < md.cols; ++j) pb[j] += row[j];
          } else {
            for (int64_t j = 0; j < md.cols; ++j) pb[j] += row[j * md.cs];
          }
        }
      }
    });
    return {d_x, d_w, d_bias};
  }
};

}  // namespace

Tensor matmul(const Tensor& a, const Tensor& b) { return apply<MatmulOp>(a, b); }

Tensor linear(const Tensor& x, const Tensor& w, const Tensor& bias) {
  return apply<LinearOp>(x, w, bias);
}

}  // namespace resona
