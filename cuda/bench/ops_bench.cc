// ops_bench: times the framework's ops on one GPU, through the public ops API and the
// CUDA backend, at the sizes the models train at, and relates each time to ceilings
// measured in the same run.
//
// Ceilings (measured first):
//   copy      cudaMemcpyAsync device to device of 1 GiB; GB/s = 2 * bytes / time (each
//             byte is read once and written once).
//   gemm      cuBLAS, 8192 x 8192 x 8192, in bf16 (float32 accumulation) and in float32
//             with TF32 tensor cores (our matmul's float32 mode); TFLOP/s = 2 M N K / time.
//
// Per case (op, shape, dtype, pass = fwd or fwd+bwd):
//   ms        time per call (cuda/bench/timing.h): warm-up, then the median over 5
//             repeats of the mean of n back-to-back calls timed with CUDA events on the
//             default stream (where ops launch without a StreamGuard); n is chosen so a
//             repeat takes ~25 ms.
//   GB/s      ideal bytes / time, with ideal bytes what a perfect kernel reads and writes
//             (each input read once, each output written once; sizes in the case's
//             dtype; small vectors such as norm weights are left out). Written next to
//             each case below.
//   TFLOP/s   useful FLOPs / time for products and recurrences (the minimal FLOPs of the
//             algorithm, not counting recomputation a backward may do).
//   % copy, % gemm: the achieved rate over the ceiling (gemm of the case's dtype: bf16
//             or TF32).
//   floor ms  max(bytes / copy bandwidth, FLOPs / gemm ceiling) for tensor-core work;
//             bytes / copy bandwidth for memory-bound ops (linear_scan and selective_scan
//             count their per-element FLOPs for TFLOP/s but those are CUDA-core work that
//             a tensor-core ceiling says nothing about).
//   x floor   ms / floor ms (1 = at the floor).
// A forward is timed with grad mode off; forward+backward with it on, followed by
// autograd::grad of the output(s) with a fixed random d_out (so no leaf .grad buffer is
// allocated or accumulated into).
//
// Output: a Markdown table on stdout, and a CSV (--csv PATH) with the same columns plus
// the ideal bytes and FLOPs. --only=op,op times just the named ops (the table's names). A case the
// backend refuses (e.g. a dtype without a CUDA path) is reported on stderr and left out.
#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "autograd/engine.h"
#include "autograd/grad_mode.h"
#include "core/tensor.h"
#include "cuda/backend.h"
#include "cuda/bench/timing.h"
#include "ops/ops.h"
#include "ops/scan.h"
#include "train/optimizer.h"

namespace resona::bench {
namespace {

void check_cublas(cublasStatus_t st, const char* what) {
  RESONA_CHECK(st == CUBLAS_STATUS_SUCCESS) << what << ": cuBLAS status " << static_cast<int>(st);
}

// ---- inputs ----

std::mt19937_64& rng() {
  static std::mt19937_64 g(20261127);
  return g;
}

// Fills `t` (contiguous, on the GPU) with values uniform in [lo, hi): up to 4M values are
// drawn on the host and uploaded, and the rest of the tensor is filled by repeating that
// block on the device (doubling copies), which is enough for timing.
void fill_uniform(const Tensor& t, double lo, double hi) {
  NoGradGuard no_grad;
  RESONA_CHECK(t.is_contiguous()) << "fill_uniform: " << t.describe() << " must be contiguous";
  const int64_t n = t.numel();
  const int64_t block = std::min<int64_t>(n, int64_t{1} << 22);
  std::uniform_real_distribution<double> u(lo, hi);
  std::vector<float> host(block);
  for (float& v : host) v = static_cast<float>(u(rng()));
  Tensor flat = make_view(t, {n}, {1}, t.offset());
  flat.slice(0, 0, block).copy_(from_vector(host, {block}));
  for (int64_t done = block; done < n;) {
    const int64_t len = std::min(done, n - done);
    flat.slice(0, done, done + len).copy_(flat.slice(0, 0, len));
    done += len;
  }
}

Tensor rand_cuda(const Shape& shape, DType dtype, double lo = -1.0, double hi = 1.0) {
  Tensor t = empty(shape, dtype, Device::cuda());
  fill_uniform(t, lo, hi);
  return t;
}

Tensor rand_ids(int64_t n, int64_t vocab) {
  std::uniform_int_distribution<int64_t> u(0, vocab - 1);
  std::vector<int64_t> host(n);
  for (int64_t& v : host) v = u(rng());
  return from_vector(host, {n}).to(Device::cuda());
}

Tensor leaf(Tensor t) {
  t.set_requires_grad(true);
  return t;
}

// ---- ceilings ----

struct Ceilings {
  double copy_gbps = 0;
  double gemm_bf16_tflops = 0;
  double gemm_tf32_tflops = 0;
  double gemm_tflops(DType dt) const {
    return dt == DType::kBFloat16 ? gemm_bf16_tflops : gemm_tf32_tflops;
  }
};

Ceilings measure_ceilings() {
  Ceilings c;
  {
    const int64_t n = int64_t{1} << 28;  // 1 GiB of float32
    Tensor src = rand_cuda({n}, DType::kFloat32);
    Tensor dst = empty({n}, DType::kFloat32, Device::cuda());
    const double ms = time_ms([&] {
      check_cuda(
          cudaMemcpyAsync(dst.raw_data(), src.raw_data(), n * 4, cudaMemcpyDeviceToDevice, nullptr),
          "cudaMemcpyAsync");
    });
    c.copy_gbps = 2.0 * n * 4 / (ms * 1e-3) / 1e9;
  }
  cublasHandle_t h;
  check_cublas(cublasCreate(&h), "cublasCreate");
  const int64_t m = 8192;
  const double flops = 2.0 * m * m * m;
  for (DType dt : {DType::kBFloat16, DType::kFloat32}) {
    Tensor a = rand_cuda({m, m}, dt), b = rand_cuda({m, m}, dt);
    Tensor out = empty({m, m}, dt, Device::cuda());
    const cudaDataType type = dt == DType::kBFloat16 ? CUDA_R_16BF : CUDA_R_32F;
    const cublasComputeType_t compute =
        dt == DType::kBFloat16 ? CUBLAS_COMPUTE_32F : CUBLAS_COMPUTE_32F_FAST_TF32;
    const float alpha = 1.0f, beta = 0.0f;
    const double ms = time_ms([&] {
      check_cublas(cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, m, m, m, &alpha, a.raw_data(), type, m,
                                b.raw_data(), type, m, &beta, out.raw_data(), type, m, compute,
                                CUBLAS_GEMM_DEFAULT),
                   "cublasGemmEx");
    });
    (dt == DType::kBFloat16 ? c.gemm_bf16_tflops : c.gemm_tf32_tflops) = flops / (ms * 1e-3) / 1e12;
  }
  check_cublas(cublasDestroy(h), "cublasDestroy");
  return c;
}

// ---- the table ----

enum class Bound { kMemory, kTensorCore };

struct Row {
  std::string op, shape, dtype, pass;
  double ms, bytes, flops, floor_ms;
};

class Table {
 public:
  explicit Table(const Ceilings& c) : c_(c) {}

  // Ops to time (--only); empty: all.
  std::vector<std::string> only;

  // Times `fn` and records the row; a refused case (resona::Error) is reported on stderr.
  void add(const std::string& op, const std::string& shape, DType dt, const std::string& pass,
           double bytes, double flops, Bound bound, const std::function<void()>& fn) {
    if (!only.empty() && std::find(only.begin(), only.end(), op) == only.end()) return;
    const std::string dtype = dt == DType::kBFloat16 ? "bf16" : "f32";
    double ms = 0;
    try {
      ms = time_ms(fn);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "skipped %s %s %s %s: %s\n", op.c_str(), shape.c_str(), dtype.c_str(),
                   pass.c_str(), e.what());
      // A failed launch may leave a sticky error; make sure the next case starts clean.
      cudaGetLastError();
      return;
    }
    double floor_ms = bytes / (c_.copy_gbps * 1e9) * 1e3;
    if (bound == Bound::kTensorCore) {
      floor_ms = std::max(floor_ms, flops / (c_.gemm_tflops(dt) * 1e12) * 1e3);
    }
    rows_.push_back({op, shape, dtype, pass, ms, bytes, flops, floor_ms});
    std::fprintf(stderr, "%-16s %-24s %-5s %-8s %9.4f ms\n", op.c_str(), shape.c_str(),
                 dtype.c_str(), pass.c_str(), ms);
  }

  void print_markdown() const {
    std::printf("Ceilings: copy %.1f GB/s, cuBLAS GEMM bf16 %.1f TFLOP/s, TF32 %.1f TFLOP/s\n\n",
                c_.copy_gbps, c_.gemm_bf16_tflops, c_.gemm_tf32_tflops);
    std::printf(
        "| op | shape | dtype | pass | ms | GB/s | %% copy | TFLOP/s | %% gemm | floor ms | x "
        "floor "
        "|\n|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|\n");
    for (const Row& r : rows_) {
      const double gbps = r.bytes / (r.ms * 1e-3) / 1e9;
      const double tflops = r.flops / (r.ms * 1e-3) / 1e12;
      const double peak = c_.gemm_tflops(r.dtype == "bf16" ? DType::kBFloat16 : DType::kFloat32);
      std::printf("| %s | %s | %s | %s | %.4f | %.1f | %.1f | ", r.op.c_str(), r.shape.c_str(),
                  r.dtype.c_str(), r.pass.c_str(), r.ms, gbps, 100 * gbps / c_.copy_gbps);
      if (r.flops > 0) {
        std::printf("%.2f | %.1f | ", tflops, 100 * tflops / peak);
      } else {
        std::printf("- | - | ");
      }
      std::printf("%.4f | %.2f |\n", r.floor_ms, r.ms / r.floor_ms);
    }
  }

  void write_csv(const std::string& path) const {
    std::ofstream f(path);
    RESONA_CHECK(f.good()) << "--csv: cannot open " << path << " for writing";
    f << "op,shape,dtype,pass,ms,gbps,pct_copy,tflops,pct_gemm,floor_ms,x_floor,bytes,flops\n";
    // The ceilings as rows of their own (GB/s for the copy, TFLOP/s for the GEMMs).
    f << "ceiling_copy,\"1 GiB\",f32,copy,," << c_.copy_gbps << ",100,,,,,,\n";
    f << "ceiling_gemm,\"8192^3\",bf16,gemm,,,," << c_.gemm_bf16_tflops << ",100,,,,\n";
    f << "ceiling_gemm,\"8192^3\",f32,gemm,,,," << c_.gemm_tf32_tflops << ",100,,,,\n";
    for (const Row& r : rows_) {
      const double gbps = r.bytes / (r.ms * 1e-3) / 1e9;
      const double tflops = r.flops / (r.ms * 1e-3) / 1e12;
      const double peak = c_.gemm_tflops(r.dtype == "bf16" ? DType::kBFloat16 : DType::kFloat32);
      f << r.op << ",\"" << r.shape << "\"," << r.dtype << "," << r.pass << "," << r.ms << ","
        << gbps << "," << 100 * gbps / c_.copy_gbps << ",";
      if (r.flops > 0) {
        f << tflops << "," << 100 * tflops / peak;
      } else {
        f << ",";
      }
      f << "," << r.floor_ms << "," << r.ms / r.floor_ms << "," << r.bytes << "," << r.flops
        << "\n";
    }
    RESONA_CHECK(f.good()) << "--csv: writing " << path << " failed";
  }

 private:
  Ceilings c_;
  std::vector<Row> rows_;
};

// Times a forward (grad mode off) and a forward+backward (grad of the output w.r.t.
// `inputs` with a random d_out) of `fwd`.
void fwd_and_bwd(Table& t, const std::string& op, const std::string& shape, DType dt,
                 double fwd_bytes, double fwd_flops, double all_bytes, double all_flops,
                 Bound bound, const std::vector<Tensor>& inputs,
                 const std::function<Tensor()>& fwd) {
  t.add(op, shape, dt, "fwd", fwd_bytes, fwd_flops, bound, [&] {
    NoGradGuard no_grad;
    fwd();
  });
  Tensor d_out;
  t.add(op, shape, dt, "fwd+bwd", all_bytes, all_flops, bound, [&] {
    EnableGradGuard grad;
    Tensor out = fwd();
    if (!d_out.defined()) {
      d_out = out.numel() == 1 ? full(out.shape(), 1.0, out.dtype(), out.device())
                               : rand_cuda(out.shape(), out.dtype());
    }
    autograd::grad({out}, inputs, {d_out});
  });
}

std::string dims(std::initializer_list<int64_t> d) {
  std::string s = "[";
  for (int64_t v : d) s += (s.size() > 1 ? ", " : "") + std::to_string(v);
  return s + "]";
}

// ---- the cases ----

void bench_elementwise(Table& t, DType dt) {
  const int64_t n = int64_t{1} << 26;  // 64M elements
  const double s = dtype_size(dt), ns = n * s;
  const std::string shape = dims({n});
  Tensor a = leaf(rand_cuda({n}, dt)), b = leaf(rand_cuda({n}, dt));
  // add: read a, b, write c; its gradient passes d_out through to both inputs unchanged,
  // so an ideal backward moves no bytes.
  fwd_and_bwd(t, "add", shape, dt, 3 * ns, 0, 3 * ns, 0, Bound::kMemory, {a, b},
              [&] { return add(a, b); });
  // mul: backward reads d_out, a, b and writes d_a, d_b.
  fwd_and_bwd(t, "mul", shape, dt, 3 * ns, 0, 8 * ns, 0, Bound::kMemory, {a, b},
              [&] { return mul(a, b); });
  // silu: read x, write y; backward reads d_out, x and writes d_x.
  fwd_and_bwd(t, "silu", shape, dt, 2 * ns, 0, 5 * ns, 0, Bound::kMemory, {a},
              [&] { return silu(a); });
}

void bench_reductions(Table& t, DType dt) {
  const int64_t rows = 16384, d = 4096;
  const double s = dtype_size(dt), xs = rows * d * s, rs = rows * s;
  const std::string shape = dims({rows, d});
  Tensor x = leaf(rand_cuda({rows, d}, dt));
  // sum, mean: read x, write one value per row; backward reads d_out per row and
  // writes d_x.
  fwd_and_bwd(t, "sum", shape, dt, xs + rs, 0, 2 * (xs + rs), 0, Bound::kMemory, {x},
              [&] { return sum(x, {-1}); });
  fwd_and_bwd(t, "mean", shape, dt, xs + rs, 0, 2 * (xs + rs), 0, Bound::kMemory, {x},
              [&] { return mean(x, {-1}); });
  // softmax: read x, write y; backward reads y and d_y, writes d_x.
  fwd_and_bwd(t, "softmax", shape, dt, 2 * xs, 0, 5 * xs, 0, Bound::kMemory, {x},
              [&] { return softmax(x, -1); });
}

void bench_norms(Table& t, DType dt) {
  // [131072, 600]: the model width at enough rows to fill the card (~315 MB of float32 x).
  for (auto [rows, d] : {std::pair<int64_t, int64_t>{16384, 4096}, {16384, 600}, {131072, 600}}) {
    const double s = dtype_size(dt), xs = rows * d * s;
    const double stats = rows * 4.0;  // float32 rstd (and mean) per row, saved for backward
    const std::string shape = dims({rows, d});
    Tensor x = leaf(rand_cuda({rows, d}, dt));
    Tensor w = leaf(rand_cuda({d}, dt, 0.5, 1.5)), bias = leaf(rand_cuda({d}, dt));
    // Forward reads x and writes y and the row statistics; backward reads x, d_y and the
    // statistics and writes d_x (the weight and bias gradients are [D], left out).
    fwd_and_bwd(t, "rms_norm", shape, dt, 2 * xs + stats, 0, 5 * xs + 2 * stats, 0, Bound::kMemory,
                {x, w}, [&] { return rms_norm(x, w, 1e-6); });
    fwd_and_bwd(t, "layer_norm", shape, dt, 2 * xs + 2 * stats, 0, 5 * xs + 4 * stats, 0,
                Bound::kMemory, {x, w, bias}, [&] { return layer_norm(x, w, bias, 1e-5); });
  }
}

void bench_cross_entropy(Table& t, DType dt) {
  const int64_t n = 16384, v = 32000;
  const double ls = n * v * static_cast<double>(dtype_size(dt));
  Tensor logits = leaf(rand_cuda({n, v}, dt, -4.0, 4.0));
  Tensor targets = rand_ids(n, v);
  // Forward reads the logits (and targets) once; the fused backward reads them again and
  // writes d_logits: 3 logits-sized passes in all.
  fwd_and_bwd(t, "cross_entropy", dims({n, v}), dt, ls + n * 8.0, 0, 3 * ls + n * 16.0, 0,
              Bound::kMemory, {logits}, [&] { return cross_entropy(logits, targets); });
}

void bench_embedding(Table& t, DType dt) {
  // [32000, 600] x 16384 ids: the model's vocabulary and width at the paper's batch;
  // x 131072 ids: the same table at enough positions to fill the card (~630 MB of float32
  // forward traffic, ~4 ids per d_weight row in the backward).
  const int64_t vocab = 32000, d = 600;
  for (int64_t n : {int64_t{16384}, int64_t{131072}}) {
    const double s = dtype_size(dt);
    Tensor w = leaf(rand_cuda({vocab, d}, dt));
    Tensor ids = rand_ids(n, vocab);
    // Forward reads the ids and n rows and writes n rows; backward reads d_out and the ids
    // and writes the whole dense d_weight (zeros where no id points).
    const double fwd = n * 8.0 + 2.0 * n * d * s;
    const double bwd = n * 8.0 + n * d * s + vocab * d * s;
    fwd_and_bwd(t, "embedding", dims({vocab, d}) + " x " + std::to_string(n), dt, fwd, 0, fwd + bwd,
                0, Bound::kMemory, {w}, [&] { return embedding(w, ids); });
  }
}

void bench_conv(Table& t, DType dt) {
  // [8, 2048, 1200] W=4: the model's channels and width at the paper's batch (39 MB of
  // bfloat16 x, which fits in the L2 of an H100/H200); [64, 2048, 1200]: the same channels
  // and width at 131072 tokens, the positions of the other full-card rows, so x alone
  // (629 MB float32, 315 MB bfloat16) is many times the L2 and every pass goes to DRAM.
  const int64_t len = 2048, d = 1200, width = 4;
  for (int64_t b : {int64_t{8}, int64_t{64}}) {
    const double xs = b * len * d * static_cast<double>(dtype_size(dt));
    Tensor x = leaf(rand_cuda({b, len, d}, dt));
    Tensor w = leaf(rand_cuda({d, width}, dt)), bias = leaf(rand_cuda({d}, dt));
    // Forward reads x and writes y; backward reads d_y and x, writes d_x (the [D, W]
    // weight and [D] bias gradients are left out).
    fwd_and_bwd(t, "causal_conv1d", dims({b, len, d}) + " W=4", dt, 2 * xs, 0, 5 * xs, 0,
                Bound::kMemory, {x, w, bias}, [&] { return causal_conv1d(x, w, bias); });
  }
}

void bench_matmul(Table& t, DType dt) {
  const int64_t m = 16384, k = 600, n = 1792;
  const double s = dtype_size(dt);
  const double io = (m * k + k * n + m * n) * s;
  const double flops = 2.0 * m * k * n;
  Tensor a = leaf(rand_cuda({m, k}, dt)), b = leaf(rand_cuda({k, n}, dt));
  // Backward is two products of the forward's size (d_a = d_c b^T, d_b = a^T d_c), each
  // reading two of the three matrices and writing the third.
  fwd_and_bwd(t, "matmul", dims({m, k}) + " x " + dims({k, n}), dt, io, flops, 3 * io, 3 * flops,
              Bound::kTensorCore, {a, b}, [&] { return matmul(a, b); });
}

void bench_adamw(Table& t) {
  // 16 float32 matrices of 2048 x 4000: 131,072,000 parameters, float32 gradients.
  const int64_t count = 16, rows = 2048, cols = 4000;
  train::NamedTensors params;
  for (int64_t i = 0; i < count; ++i) {
    Tensor p = leaf(rand_cuda({rows, cols}, DType::kFloat32));
    p.set_grad(rand_cuda({rows, cols}, DType::kFloat32));
    params.emplace_back("layers." + std::to_string(i) + ".weight", p);
  }
  train::AdamWConfig cfg;
  cfg.lr = 1e-4;
  train::AdamW opt(params, cfg);
  // Per parameter: read p, g, m, v and write p, m, v, all float32: 28 bytes.
  const double n = static_cast<double>(count) * rows * cols;
  t.add("adamw", dims({count * rows * cols}), DType::kFloat32, "step", 28 * n, 0, Bound::kMemory,
        [&] { opt.step(); });
}

void bench_linear_scan(Table& t, DType dt) {
  const int64_t b = 8, len = 2048, d = 1200;
  const double n = static_cast<double>(b) * len * d, ns = n * dtype_size(dt);
  Tensor a = leaf(rand_cuda({b, len, d}, dt, 0.9, 1.0)), x = leaf(rand_cuda({b, len, d}, dt));
  // h_t = a_t h_{t-1} + b_t: forward reads a, b and writes h (2 FLOP per element);
  // backward reads a, h and d_h and writes d_a, d_b (a reverse scan and a product:
  // 4 FLOP per element).
  fwd_and_bwd(t, "linear_scan", dims({b, len, d}), dt, 3 * ns, 2 * n, 8 * ns, 6 * n, Bound::kMemory,
              {a, x}, [&] { return linear_scan(a, x); });
}

void bench_selective_scan(Table& t, DType dt) {
  const int64_t b = 8, len = 2048, d = 1200, n = 16;
  const double s = dtype_size(dt);
  const double btd = static_cast<double>(b) * len * d, btn = static_cast<double>(b) * len * n;
  Tensor x = leaf(rand_cuda({b, len, d}, dt)), delta = leaf(rand_cuda({b, len, d}, dt, 0.01, 0.1));
  Tensor A = leaf(rand_cuda({d, n}, dt, -1.0, -0.1));
  Tensor B = leaf(rand_cuda({b, len, n}, dt)), C = leaf(rand_cuda({b, len, n}, dt));
  Tensor D_skip = leaf(rand_cuda({d}, dt));
  // Forward reads x, delta, B, C and writes y and the float32 final state [B, D, N];
  // backward reads x, delta, B, C, d_y and writes d_x, d_delta, d_B, d_C (A, D_skip and
  // their gradients are small). Per (b, t, d, n) the forward does ~7 FLOP (delta A,
  // exp, the decay product, delta B x, the add, C h and its sum); backward about twice.
  const double fwd = (3 * btd + 2 * btn) * s + b * d * n * 4.0;
  const double bwd = (5 * btd + 4 * btn) * s;
  const double flops = 7.0 * btd * n;
  fwd_and_bwd(t, "selective_scan", dims({b, len, d}) + " N=16", dt, fwd, flops, fwd + bwd,
              3 * flops, Bound::kMemory, {x, delta, A, B, C, D_skip},
              [&] { return selective_scan(x, delta, A, B, C, D_skip).out; });
}

// FLOPs of one 64-step chunk of one head, for the chunked forward of GLA and DeltaNet
// (C chunk length). The backward of each product costs two products of its size, so
// forward+backward is 3x the forward.
constexpr double kChunk = 64;

void bench_gla(Table& t, DType dt) {
  const int64_t b = 8, len = 2048, h = 4, k = 75, v = 150;
  const double s = dtype_size(dt);
  const double btk = static_cast<double>(b) * len * h * k,
               btv = static_cast<double>(b) * len * h * v;
  Tensor q = leaf(rand_cuda({b, len, h, k}, dt)), kk = leaf(rand_cuda({b, len, h, k}, dt));
  Tensor vv = leaf(rand_cuda({b, len, h, v}, dt)),
         g = leaf(rand_cuda({b, len, h, k}, dt, -0.1, -0.001));
  // Per chunk and head: Q K^T (2 C^2 K), the masked product with V (2 C^2 V), the
  // inter-chunk output Q S (2 C K V) and the state update K^T V (2 C K V).
  const double per_chunk = 2 * kChunk * kChunk * (k + v) + 4 * kChunk * k * v;
  const double flops = per_chunk * b * h * (len / kChunk);
  // Forward reads q, k, g, v and writes o and the float32 final state; backward reads
  // q, k, g, v, d_o and writes d_q, d_k, d_g, d_v (the ideal kernel keeps the chunk
  // states on chip or recomputes them).
  const double fwd = (3 * btk + 2 * btv) * s + b * h * k * v * 4.0;
  const double bwd = (6 * btk + 3 * btv) * s;
  fwd_and_bwd(t, "gla", "B=8 T=2048 H=4 K=75 V=150", dt, fwd, flops, fwd + bwd, 3 * flops,
              Bound::kTensorCore, {q, kk, vv, g}, [&] { return gla(q, kk, vv, g).out; });
}

void bench_delta_rule(Table& t, DType dt) {
  const int64_t b = 8, len = 2048, h = 4, k = 150, v = 150;
  const double s = dtype_size(dt);
  const double btk = static_cast<double>(b) * len * h * k,
               btv = static_cast<double>(b) * len * h * v;
  const double bth = static_cast<double>(b) * len * h;
  // k uniform in +-sqrt(3/K) has |k| ~ 1 (callers L2-normalise k), beta in (0, 1).
  const double ka = std::sqrt(3.0 / k);
  Tensor q = leaf(rand_cuda({b, len, h, k}, dt)), kk = leaf(rand_cuda({b, len, h, k}, dt, -ka, ka));
  Tensor vv = leaf(rand_cuda({b, len, h, v}, dt)),
         beta = leaf(rand_cuda({b, len, h}, dt, 0.05, 0.95));
  // Per chunk and head (WY form): beta K K^T (2 C^2 K), the unit-lower-triangular solve
  // for W and U (C^2 (K + V)), W S (2 C K V), Q K^T (2 C^2 K), Q S (2 C K V), the masked
  // product with U - W S (2 C^2 V) and the state update K^T (U - W S) (2 C K V).
  const double per_chunk = 4 * kChunk * kChunk * k + kChunk * kChunk * (k + v) +
                           2 * kChunk * kChunk * v + 6 * kChunk * k * v;
  const double flops = per_chunk * b * h * (len / kChunk);
  const double fwd = (2 * btk + 2 * btv + bth) * s + b * h * k * v * 4.0;
  const double bwd = (4 * btk + 3 * btv + 2 * bth) * s;
  fwd_and_bwd(t, "delta_rule", "B=8 T=2048 H=4 K=V=150", dt, fwd, flops, fwd + bwd, 3 * flops,
              Bound::kTensorCore, {q, kk, vv, beta},
              [&] { return delta_rule(q, kk, vv, beta).out; });
}

int run(int argc, char** argv) {
  std::string csv;
  std::vector<std::string> only;  // --only op1,op2: time just these ops (names as in the table)
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--csv" && i + 1 < argc) {
      csv = argv[++i];
    } else if (arg.rfind("--csv=", 0) == 0) {
      csv = arg.substr(6);
    } else if (arg.rfind("--only=", 0) == 0) {
      for (size_t a = 7, b; a <= arg.size(); a = b + 1) {
        b = std::min(arg.find(',', a), arg.size());
        if (b > a) only.push_back(arg.substr(a, b - a));
      }
    } else {
      std::fprintf(stderr, "usage: %s [--csv PATH] [--only=op,op,...]\n  unknown argument: %s\n",
                   argv[0], arg.c_str());
      return 2;
    }
  }
  cuda::register_cuda_backend();
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::fprintf(stderr, "ops_bench: no CUDA device\n");
    return 1;
  }
  cudaDeviceProp prop;
  check_cuda(cudaGetDeviceProperties(&prop, 0), "cudaGetDeviceProperties");
  std::printf("Device: %s (%d SMs, %.0f MiB)\n\n", prop.name, prop.multiProcessorCount,
              prop.totalGlobalMem / 1048576.0);

  Table table(measure_ceilings());
  table.only = only;
  for (DType dt : {DType::kFloat32, DType::kBFloat16}) {
    bench_elementwise(table, dt);
    bench_reductions(table, dt);
    bench_norms(table, dt);
    bench_cross_entropy(table, dt);
    bench_embedding(table, dt);
    bench_conv(table, dt);
    bench_matmul(table, dt);
    bench_linear_scan(table, dt);
    bench_selective_scan(table, dt);
    bench_gla(table, dt);
    bench_delta_rule(table, dt);
  }
  bench_adamw(table);
  table.print_markdown();
  if (!csv.empty()) table.write_csv(csv);
  return 0;
}

}  // namespace
}  // namespace resona::bench

int main(int argc, char** argv) {
  try {
    return resona::bench::run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ops_bench: %s\n", e.what());
    return 1;
  }
}
