// cudnn_bench: our CUDA kernels against cuDNN on the same inputs, for the cases the
// models use, to decide where cuDNN would be worth wiring in behind an op.
//
// Cases:
//   softmax over the last dim, rows x n = 16384 x 4096 and 16384 x 32000, float32 and
//     bfloat16: our softmax_fwd_cuda / softmax_bwd_cuda against cudnnSoftmaxForward /
//     cudnnSoftmaxBackward (CUDNN_SOFTMAX_ACCURATE, CUDNN_SOFTMAX_MODE_INSTANCE over a
//     [rows, n, 1, 1] NCHW tensor).
//   Mamba's causal depthwise conv1d, x [B, T, D] = [8, 2048, 1200] channels last, W = 4:
//     our causal_conv1d_fwd_cuda / causal_conv1d_bwd_cuda against a grouped 2-D
//     convolution (groups = D, NHWC tensors [B, 1, T, D], filter [D, 1, 1, W] = our
//     w [D, W]). cuDNN pads symmetrically, so it runs with pad 3 on both sides and its
//     output has T + 3 positions: y[t] for t < T is the causal output (the last 3 are
//     dropped), and for the backward d_y is given T + 3 positions with the last 3 zero.
//     cuDNN's algorithms are chosen by cudnnFind*Algorithm (it times them itself);
//     BackwardData and BackwardFilter are timed separately and summed against our one
//     backward launch that writes d_x and d_w; our d_x-only and d_w-only launches are
//     timed too.
//   Layer norm through cuDNN's graph API is not measured: it needs cudnn_frontend (or
//   several hundred lines of raw backend descriptors), which this tree does not have.
//
// Agreement is checked before timing: max |ours - cuDNN| over every element, against a
// bound written next to each case. A case that disagrees is still timed but marked.
//
// Timing: two warm-up calls, then the median over 5 repeats of the mean of n
// back-to-back calls on the default stream, timed with CUDA events (n so that a repeat
// takes ~20 ms). GB/s = ideal bytes / time, ideal bytes being each input read once and
// each output written once in the case's dtype (the conv's filter is left out). cuDNN's
// conv is charged for its padded output as ideal bytes of the causal one.
//
// Output: a Markdown table on stdout.
#include <cuda_runtime_api.h>
#include <cudnn.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "cuda/bench/timing.h"
#include "cuda/conv.h"
#include "cuda/softmax.h"

namespace {

using resona::cuda::KernelDType;

#define BENCH_CUDA(call)                                                                         \
  do {                                                                                           \
    cudaError_t e_ = (call);                                                                     \
    if (e_ != cudaSuccess) {                                                                     \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(e_)); \
      std::exit(1);                                                                              \
    }                                                                                            \
  } while (0)

#define BENCH_CUDNN(call)                                                                         \
  do {                                                                                            \
    cudnnStatus_t s_ = (call);                                                                    \
    if (s_ != CUDNN_STATUS_SUCCESS) {                                                             \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #call, cudnnGetErrorString(s_)); \
      std::exit(1);                                                                               \
    }                                                                                             \
  } while (0)

void check_ours(const char* err, const char* what) {
  if (err != nullptr) {
    std::fprintf(stderr, "%s: %s\n", what, err);
    std::exit(1);
  }
}

// ---- host data ----

uint16_t to_bf16(float f) {  // round to nearest even
  uint32_t u;
  std::memcpy(&u, &f, 4);
  u += 0x7fff + ((u >> 16) & 1);
  return static_cast<uint16_t>(u >> 16);
}
float from_bf16(uint16_t h) {
  uint32_t u = uint32_t{h} << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Uniform values in [lo, hi) from a xorshift generator (fast enough for 2^29 values).
std::vector<float> uniform(size_t n, uint64_t seed, float lo, float hi) {
  std::vector<float> v(n);
  uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
  for (size_t i = 0; i < n; ++i) {
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    v[i] = lo + (hi - lo) * static_cast<float>((s >> 40) * (1.0 / 16777216.0));
  }
  return v;
}

struct DevBuf {
  void* p = nullptr;
  size_t bytes = 0;
  DevBuf() = default;
  explicit DevBuf(size_t n) : bytes(n) { BENCH_CUDA(cudaMalloc(&p, std::max<size_t>(n, 1))); }
  ~DevBuf() {
    if (p) cudaFree(p);
  }
  DevBuf(const DevBuf&) = delete;
  DevBuf& operator=(const DevBuf&) = delete;
};

size_t elem_size(KernelDType t) { return t == KernelDType::kFloat32 ? 4 : 2; }
const char* dtype_name(KernelDType t) { return t == KernelDType::kFloat32 ? "float32" : "bf16"; }
cudnnDataType_t cudnn_type(KernelDType t) {
  return t == KernelDType::kFloat32 ? CUDNN_DATA_FLOAT : CUDNN_DATA_BFLOAT16;
}

// Host floats -> device buffer in dtype.
void upload(DevBuf& d, const std::vector<float>& v, KernelDType t) {
  if (t == KernelDType::kFloat32) {
    BENCH_CUDA(cudaMemcpy(d.p, v.data(), v.size() * 4, cudaMemcpyHostToDevice));
    return;
  }
  std::vector<uint16_t> h(v.size());
  for (size_t i = 0; i < v.size(); ++i) h[i] = to_bf16(v[i]);
  BENCH_CUDA(cudaMemcpy(d.p, h.data(), h.size() * 2, cudaMemcpyHostToDevice));
}

// Device buffer (n elements of dtype, or a strided subset) -> host floats.
std::vector<float> download(const DevBuf& d, size_t n, KernelDType t) {
  std::vector<float> v(n);
  if (t == KernelDType::kFloat32) {
    BENCH_CUDA(cudaMemcpy(v.data(), d.p, n * 4, cudaMemcpyDeviceToHost));
    return v;
  }
  std::vector<uint16_t> h(n);
  BENCH_CUDA(cudaMemcpy(h.data(), d.p, n * 2, cudaMemcpyDeviceToHost));
  for (size_t i = 0; i < n; ++i) v[i] = from_bf16(h[i]);
  return v;
}

// max |a - b| / (1 + |b|): absolute for small values, relative for large ones.
double max_err(const std::vector<float>& a, const std::vector<float>& b) {
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double d = std::abs(double{a[i]} - double{b[i]}) / (1.0 + std::abs(double{b[i]}));
    if (!(d <= m)) m = std::isnan(d) ? INFINITY : d;
  }
  return m;
}

// ---- timing ----

// cuda/bench/timing.h, with more and shorter calls per repeat (the cases are short).
double time_ms(const std::function<void()>& f) {
  return resona::bench::time_ms(f, {5, 20.0, 1000});
}

struct Row {
  std::string name, dtype, pass;
  double ours_ms, cudnn_ms, bytes, err, bound;
};
std::vector<Row> g_rows;

void add_row(const std::string& name, KernelDType t, const std::string& pass, double ours_ms,
             double cudnn_ms, double bytes, double err, double bound) {
  g_rows.push_back({name, dtype_name(t), pass, ours_ms, cudnn_ms, bytes, err, bound});
  std::fprintf(stderr, "%s %s %s: ours %.3f ms, cuDNN %.3f ms, max err %.2e (bound %.1e)\n",
               name.c_str(), dtype_name(t), pass.c_str(), ours_ms, cudnn_ms, err, bound);
}

// ---- softmax ----

void bench_softmax(cudnnHandle_t h, int64_t rows, int64_t n, KernelDType t) {
  const size_t count = static_cast<size_t>(rows * n), es = elem_size(t);
  const std::string name = "softmax [" + std::to_string(rows) + ", " + std::to_string(n) + "]";
  DevBuf x(count * es), y(count * es), y2(count * es), dy(count * es), dx(count * es),
      dx2(count * es);
  upload(x, uniform(count, 1, -4.f, 4.f), t);
  upload(dy, uniform(count, 2, -1.f, 1.f), t);

  cudnnTensorDescriptor_t desc;
  BENCH_CUDNN(cudnnCreateTensorDescriptor(&desc));
  BENCH_CUDNN(cudnnSetTensor4dDescriptor(desc, CUDNN_TENSOR_NCHW, cudnn_type(t),
                                         static_cast<int>(rows), static_cast<int>(n), 1, 1));
  const float one = 1.f, zero = 0.f;
  auto cudnn_fwd = [&] {
    return cudnnSoftmaxForward(h, CUDNN_SOFTMAX_ACCURATE, CUDNN_SOFTMAX_MODE_INSTANCE, &one, desc,
                               x.p, &zero, desc, y2.p);
  };
  auto cudnn_bwd = [&] {
    return cudnnSoftmaxBackward(h, CUDNN_SOFTMAX_ACCURATE, CUDNN_SOFTMAX_MODE_INSTANCE, &one, desc,
                                y.p, desc, dy.p, &zero, desc, dx2.p);
  };
  resona::cuda::SoftmaxParams fp{t, false, rows, n, x.p, y.p};
  resona::cuda::SoftmaxBwdParams bp{t, false, rows, n, y.p, dy.p, dx.p};
  auto ours_fwd = [&] { check_ours(resona::cuda::softmax_fwd_cuda(fp, nullptr), "softmax fwd"); };
  auto ours_bwd = [&] { check_ours(resona::cuda::softmax_bwd_cuda(bp, nullptr), "softmax bwd"); };

  ours_fwd();
  cudnnStatus_t st = cudnn_fwd();
  if (st != CUDNN_STATUS_SUCCESS) {
    std::fprintf(stderr, "%s %s: cuDNN refuses: %s\n", name.c_str(), dtype_name(t),
                 cudnnGetErrorString(st));
    cudnnDestroyTensorDescriptor(desc);
    return;
  }
  BENCH_CUDA(cudaDeviceSynchronize());
  // Both from the same y (ours) so that the backward compares like with like.
  ours_bwd();
  BENCH_CUDNN(cudnn_bwd());
  BENCH_CUDA(cudaDeviceSynchronize());
  // float32: both sum n exponentials in float32 (error ~ n * 2^-24 relative, well under
  // 1e-4 for n <= 32000); bf16: one rounding of the output (2^-8 relative) on each side.
  const double bound = t == KernelDType::kFloat32 ? 1e-4 : 1.0 / 64;
  const double ef = max_err(download(y, count, t), download(y2, count, t));
  const double eb = max_err(download(dx, count, t), download(dx2, count, t));
  const double tf_ours = time_ms(ours_fwd), tf_cudnn = time_ms([&] { BENCH_CUDNN(cudnn_fwd()); });
  const double tb_ours = time_ms(ours_bwd), tb_cudnn = time_ms([&] { BENCH_CUDNN(cudnn_bwd()); });
  add_row(name, t, "fwd", tf_ours, tf_cudnn, 2.0 * count * es, ef, bound);
  add_row(name, t, "bwd", tb_ours, tb_cudnn, 3.0 * count * es, eb, bound);
  cudnnDestroyTensorDescriptor(desc);
}

// ---- causal depthwise conv1d ----

void bench_conv(cudnnHandle_t h, int64_t B, int64_t T, int64_t D, int64_t W, KernelDType t) {
  const std::string name = "causal_conv1d [" + std::to_string(B) + ", " + std::to_string(T) + ", " +
                           std::to_string(D) + "] W=" + std::to_string(W);
  const size_t es = elem_size(t), n = static_cast<size_t>(B * T * D);
  const int64_t Tp = T + W - 1;  // cuDNN's output length with symmetric padding W - 1
  const size_t np = static_cast<size_t>(B * Tp * D);
  const std::vector<float> hx = uniform(n, 3, -1.f, 1.f), hw = uniform(D * W, 4, -0.5f, 0.5f);
  std::vector<float> hdy = uniform(n, 5, -1.f, 1.f);
  std::vector<float> hdyp(np, 0.f);  // d_y over T + W - 1 positions, the last W - 1 zero
  for (int64_t b = 0; b < B; ++b)
    std::copy(hdy.begin() + b * T * D, hdy.begin() + (b + 1) * T * D, hdyp.begin() + b * Tp * D);

  DevBuf x(n * es), w(D * W * es), w_t(D * W * es), y(n * es), dy(n * es), dx(n * es),
      dw(D * W * es);
  DevBuf y2(np * es), dyp(np * es), dx2(n * es), dw2(D * W * es);
  upload(x, hx, t);
  upload(w, hw, t);
  upload(dy, hdy, t);
  upload(dyp, hdyp, t);

  cudnnTensorDescriptor_t xd, yd;
  cudnnFilterDescriptor_t wd;
  cudnnConvolutionDescriptor_t cd;
  BENCH_CUDNN(cudnnCreateTensorDescriptor(&xd));
  BENCH_CUDNN(cudnnCreateTensorDescriptor(&yd));
  BENCH_CUDNN(cudnnCreateFilterDescriptor(&wd));
  BENCH_CUDNN(cudnnCreateConvolutionDescriptor(&cd));
  const cudnnDataType_t ct = cudnn_type(t);
  BENCH_CUDNN(cudnnSetTensor4dDescriptor(xd, CUDNN_TENSOR_NHWC, ct, static_cast<int>(B),
                                         static_cast<int>(D), 1, static_cast<int>(T)));
  // NHWC filter [K, R, S, C/groups] = [D, 1, W, 1]: the bytes of our w [D, W].
  BENCH_CUDNN(cudnnSetFilter4dDescriptor(wd, ct, CUDNN_TENSOR_NHWC, static_cast<int>(D), 1, 1,
                                         static_cast<int>(W)));
  BENCH_CUDNN(cudnnSetConvolution2dDescriptor(cd, 0, static_cast<int>(W - 1), 1, 1, 1, 1,
                                              CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT));
  BENCH_CUDNN(cudnnSetConvolutionGroupCount(cd, static_cast<int>(D)));
  // float32: plain FMA (no TF32), the arithmetic of our kernel.
  BENCH_CUDNN(cudnnSetConvolutionMathType(
      cd, t == KernelDType::kFloat32 ? CUDNN_FMA_MATH : CUDNN_DEFAULT_MATH));
  int on, oc, oh, ow;
  BENCH_CUDNN(cudnnGetConvolution2dForwardOutputDim(cd, xd, wd, &on, &oc, &oh, &ow));
  if (ow != Tp || oc != D || oh != 1) {
    std::fprintf(stderr, "%s: cuDNN output dims [%d, %d, %d, %d], expected width %lld\n",
                 name.c_str(), on, oc, oh, ow, static_cast<long long>(Tp));
    std::exit(1);
  }
  BENCH_CUDNN(cudnnSetTensor4dDescriptor(yd, CUDNN_TENSOR_NHWC, ct, static_cast<int>(B),
                                         static_cast<int>(D), 1, static_cast<int>(Tp)));

  // cuDNN's own timing picks each algorithm (workspace up to what it asks for).
  int got = 0;
  cudnnConvolutionFwdAlgoPerf_t fperf[CUDNN_CONVOLUTION_FWD_ALGO_COUNT];
  cudnnConvolutionBwdDataAlgoPerf_t dperf[CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT];
  cudnnConvolutionBwdFilterAlgoPerf_t wperf[CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT];
  cudnnStatus_t st = cudnnFindConvolutionForwardAlgorithm(
      h, xd, wd, cd, yd, CUDNN_CONVOLUTION_FWD_ALGO_COUNT, &got, fperf);
  if (st != CUDNN_STATUS_SUCCESS || got == 0 || fperf[0].status != CUDNN_STATUS_SUCCESS) {
    std::fprintf(stderr, "%s %s: cuDNN has no forward algorithm: %s\n", name.c_str(), dtype_name(t),
                 cudnnGetErrorString(st != CUDNN_STATUS_SUCCESS ? st : fperf[0].status));
    return;
  }
  BENCH_CUDNN(cudnnFindConvolutionBackwardDataAlgorithm(
      h, wd, yd, cd, xd, CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT, &got, dperf));
  BENCH_CUDNN(dperf[0].status);
  BENCH_CUDNN(cudnnFindConvolutionBackwardFilterAlgorithm(
      h, xd, yd, cd, wd, CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT, &got, wperf));
  BENCH_CUDNN(wperf[0].status);
  std::fprintf(
      stderr,
      "%s %s: cuDNN algorithms fwd %d (%zu B), bwd data %d (%zu B), bwd filter %d (%zu B)\n",
      name.c_str(), dtype_name(t), static_cast<int>(fperf[0].algo), fperf[0].memory,
      static_cast<int>(dperf[0].algo), dperf[0].memory, static_cast<int>(wperf[0].algo),
      wperf[0].memory);
  DevBuf ws(std::max({fperf[0].memory, dperf[0].memory, wperf[0].memory}));
  const float one = 1.f, zero = 0.f;
  auto cudnn_fwd = [&] {
    BENCH_CUDNN(cudnnConvolutionForward(h, &one, xd, x.p, wd, w.p, cd, fperf[0].algo, ws.p,
                                        ws.bytes, &zero, yd, y2.p));
  };
  auto cudnn_bwd_data = [&] {
    BENCH_CUDNN(cudnnConvolutionBackwardData(h, &one, wd, w.p, yd, dyp.p, cd, dperf[0].algo, ws.p,
                                             ws.bytes, &zero, xd, dx2.p));
  };
  auto cudnn_bwd_filter = [&] {
    BENCH_CUDNN(cudnnConvolutionBackwardFilter(h, &one, xd, x.p, yd, dyp.p, cd, wperf[0].algo, ws.p,
                                               ws.bytes, &zero, wd, dw2.p));
  };

  resona::cuda::CausalConv1dFwdParams fp{};
  fp.dtype = t;
  fp.B = B, fp.T = T, fp.D = D, fp.W = W;
  fp.x = x.p;
  fp.x_strides[0] = T * D, fp.x_strides[1] = D, fp.x_strides[2] = 1;
  fp.w = w.p;
  fp.w_strides[0] = W, fp.w_strides[1] = 1;
  fp.bias = nullptr;
  fp.y = y.p;
  fp.w_t = w_t.p;
  resona::cuda::CausalConv1dBwdParams bp{};
  bp.dtype = t;
  bp.B = B, bp.T = T, bp.D = D, bp.W = W;
  bp.d_y = dy.p;
  bp.x = x.p;
  for (int i = 0; i < 3; ++i) bp.d_y_strides[i] = bp.x_strides[i] = fp.x_strides[i];
  bp.w_t = w_t.p;
  bp.d_x = dx.p;
  bp.d_w = dw.p;
  bp.d_bias = nullptr;
  DevBuf scratch(resona::cuda::causal_conv1d_bwd_scratch_bytes(bp));
  bp.scratch = scratch.p;
  auto ours_fwd = [&] {
    check_ours(resona::cuda::causal_conv1d_fwd_cuda(fp, nullptr), "conv fwd");
  };
  auto ours_bwd = [&] {
    check_ours(resona::cuda::causal_conv1d_bwd_cuda(bp, nullptr), "conv bwd");
  };
  resona::cuda::CausalConv1dBwdParams bp_dx = bp, bp_dw = bp;
  bp_dx.d_w = nullptr;
  bp_dw.d_x = nullptr;
  auto ours_dx = [&] {
    check_ours(resona::cuda::causal_conv1d_bwd_cuda(bp_dx, nullptr), "conv d_x");
  };
  auto ours_dw = [&] {
    check_ours(resona::cuda::causal_conv1d_bwd_cuda(bp_dw, nullptr), "conv d_w");
  };

  ours_fwd();
  ours_bwd();
  cudnn_fwd();
  cudnn_bwd_data();
  cudnn_bwd_filter();
  BENCH_CUDA(cudaDeviceSynchronize());
  // y: cuDNN's first T of T + W - 1 positions per sequence.
  const std::vector<float> y_all = download(y2, np, t);
  std::vector<float> y_causal(n);
  for (int64_t b = 0; b < B; ++b)
    std::copy(y_all.begin() + b * Tp * D, y_all.begin() + (b * Tp + T) * D,
              y_causal.begin() + b * T * D);
  // y and d_x: W products in float32 on both sides; bf16 adds one output rounding (2^-8).
  // d_w: sums of B * T = 16384 products in different orders: float32 ~1e-4 of the sum's
  // scale; bf16 output rounding again.
  const bool f32 = t == KernelDType::kFloat32;
  const double b_pt = f32 ? 1e-5 : 1.0 / 64, b_w = f32 ? 1e-3 : 1.0 / 32;
  const double e_y = max_err(download(y, n, t), y_causal);
  const double e_dx = max_err(download(dx, n, t), download(dx2, n, t));
  // Compared relative to the column sums' scale: divide by sqrt(B T) ~ the spread of a sum
  // of B T products of unit-scale values, so the bound reads as a relative error.
  std::vector<float> dw_a = download(dw, D * W, t), dw_b = download(dw2, D * W, t);
  const float scale = static_cast<float>(std::sqrt(double(B * T)));
  for (auto* v : {&dw_a, &dw_b})
    for (float& e : *v) e /= scale;
  const double e_dw = max_err(dw_a, dw_b);

  const double t_fwd = time_ms(ours_fwd), t_fwd_c = time_ms(cudnn_fwd);
  const double t_dx = time_ms(ours_dx), t_dx_c = time_ms(cudnn_bwd_data);
  const double t_dw = time_ms(ours_dw), t_dw_c = time_ms(cudnn_bwd_filter);
  const double t_bwd = time_ms(ours_bwd);
  const double nb = static_cast<double>(n * es);
  add_row(name, t, "fwd", t_fwd, t_fwd_c, 2 * nb, e_y, b_pt);
  add_row(name, t, "bwd d_x (BackwardData)", t_dx, t_dx_c, 2 * nb, e_dx, b_pt);
  add_row(name, t, "bwd d_w (BackwardFilter)", t_dw, t_dw_c, 2 * nb, e_dw, b_w);
  add_row(name, t, "bwd d_x+d_w (ours one launch)", t_bwd, t_dx_c + t_dw_c, 3 * nb,
          std::max(e_dx, e_dw), b_w);
  cudnnDestroyTensorDescriptor(xd);
  cudnnDestroyTensorDescriptor(yd);
  cudnnDestroyFilterDescriptor(wd);
  cudnnDestroyConvolutionDescriptor(cd);
}

}  // namespace

int main() {
  cudaDeviceProp prop{};
  BENCH_CUDA(cudaGetDeviceProperties(&prop, 0));
  cudnnHandle_t h;
  BENCH_CUDNN(cudnnCreate(&h));
  std::printf("device: %s, cuDNN %zu (headers %d)\n\n", prop.name, cudnnGetVersion(),
              CUDNN_VERSION);
  for (KernelDType t : {KernelDType::kFloat32, KernelDType::kBFloat16}) {
    bench_softmax(h, 16384, 4096, t);
    bench_softmax(h, 16384, 32000, t);
    bench_conv(h, 8, 2048, 1200, 4, t);
  }
  std::printf(
      "| case | dtype | pass | ours ms | cuDNN ms | ours GB/s | cuDNN GB/s | max err (bound) | "
      "winner |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|\n");
  for (const Row& r : g_rows) {
    const bool agree = r.err <= r.bound;
    const char* winner = !agree ? "MISMATCH" : r.ours_ms <= r.cudnn_ms ? "ours" : "cuDNN";
    std::printf("| %s | %s | %s | %.3f | %.3f | %.0f | %.0f | %.1e (%.0e) | %s x%.2f |\n",
                r.name.c_str(), r.dtype.c_str(), r.pass.c_str(), r.ours_ms, r.cudnn_ms,
                r.bytes / r.ours_ms / 1e6, r.bytes / r.cudnn_ms / 1e6, r.err, r.bound, winner,
                std::max(r.ours_ms, r.cudnn_ms) / std::min(r.ours_ms, r.cudnn_ms));
  }
  cudnnDestroy(h);
  return 0;
}
