// The fused CUDA AdamW step and CUDA clip_grad_norm against the CPU path on the same
// inputs: parameters of odd sizes (1 to 33153 elements, across the 8192-element chunks),
// matrices decayed and vectors not, float32 and bfloat16 gradients, a parameter without
// a gradient, learning-rate changes between steps.
//
// Tolerances. Both sides evaluate the same float32 expressions from the same float32
// scalars; they differ only where one compiler contracts a multiply-add into an FMA and
// the other does not (one rounding more or less per operation), so each step adds at
// most a few float32 ulps to m, v and the update:
//   m, v: 4 ulp (2^-22 relative) of the larger of the terms per step, accumulated over
//         the steps;
//   p:    2 ulp of |p| per step for the decay product and the final subtraction, plus
//         about 1e-6 relative to the update (Adam's normalised step is at most a few
//         lr = 1e-2): 3e-8 per step.
// clip_grad_norm: the device sums squares in float32 within a chunk of 8192 (32 terms
// per thread then an 8-level tree: at most 40 u relative, all terms being positive) and
// in float64 across chunks, the CPU all in float64: the norms agree to 40 u = 2.4e-6
// relative (1.2e-6 after the square root); the scaled gradients to that plus one
// rounding, and bfloat16 ones to 2^-8 more.
#include <cmath>
#include <cstring>
#include <iterator>
#include <string>
#include <vector>

#include "tests/cuda/cuda_check.h"
#include "tests/test_util.h"
#include "train/optimizer.h"

namespace resona::testing {
namespace {

using train::AdamW;
using train::AdamWConfig;
using train::NamedTensors;

// Sets p's gradient to `g` even when its dtype differs from p's (a bfloat16 gradient of
// float32 master weights, as a mixed-precision backward leaves it); set_grad insists
// on p's dtype.
void put_grad(Tensor& p, const Tensor& g) { p.autograd_meta().grad = g.impl_ptr(); }

void check_within(const Tensor& got, const Tensor& expected, double rtol, double atol,
                  const std::string& what) {
  INFO(what);
  REQUIRE(got.shape() == expected.shape());
  const std::vector<double> g = copy_to(got, DType::kFloat64, Device::cpu()).to_vector<double>();
  const std::vector<double> e = expected.to_vector<double>();
  for (size_t i = 0; i < g.size(); ++i) {
    const double bound = atol + rtol * std::abs(e[i]);
    if (!(std::abs(g[i] - e[i]) <= bound)) {
      INFO("element " << i << ": got " << g[i] << ", expected " << e[i] << ", bound " << bound);
      CHECK(std::abs(g[i] - e[i]) <= bound);
      return;
    }
  }
  CHECK(true);
}

const Shape kShapes[] = {{1}, {7}, {33, 17}, {8193}, {3, 5000}, {257, 129}, {5, 5}};

}  // namespace

RESONA_GPU_TEST(
    "AdamW fused CUDA step vs CPU (7 params: [1],[7],[33,17],[8193],[3,5000],"
    "[257,129],[5,5] without grad; 6 steps, lr changes; float32 and bfloat16 grads)") {
  for (DType grad_dtype : {DType::kFloat32, DType::kBFloat16}) {
    INFO("gradients " << dtype_name(grad_dtype));
    Generator gen(800 + static_cast<int>(grad_dtype));
    AdamWConfig cfg;
    cfg.lr = 1e-2;
    cfg.weight_decay = 0.1;
    std::vector<std::pair<std::string, Tensor>> cpu, gpu;
    for (size_t i = 0; i < std::size(kShapes); ++i) {
      Tensor init = gen.normal(kShapes[i]);
      Tensor pc = init.clone(), pg = copy_to(init, DType::kFloat32, Device::cuda());
      pc.set_requires_grad(true);
      pg.set_requires_grad(true);
      cpu.emplace_back("p" + std::to_string(i), pc);
      gpu.emplace_back("p" + std::to_string(i), pg);
    }
    AdamW opt_cpu(cpu, cfg), opt_gpu(gpu, cfg);
    const size_t no_grad = std::size(kShapes) - 1;  // the last parameter never gets one
    const int steps = 6;
    for (int step = 1; step <= steps; ++step) {
      if (step == 4) {
        opt_cpu.set_lr(3e-3);
        opt_gpu.set_lr(3e-3);
      }
      for (size_t i = 0; i < no_grad; ++i) {
        Tensor g = gen.normal(kShapes[i], 0.0, 0.5 * step);
        if (grad_dtype == DType::kBFloat16) g = round_to_bf16(g);
        cpu[i].second.set_grad(g);
        put_grad(gpu[i].second, copy_to(g, grad_dtype, Device::cuda()));
      }
      opt_cpu.step();
      opt_gpu.step();
      const NamedTensors sc = opt_cpu.named_state(), sg = opt_gpu.named_state();
      for (size_t i = 0; i < cpu.size(); ++i) {
        const std::string name =
            cpu[i].first + shape_str(kShapes[i]) + " step " + std::to_string(step);
        REQUIRE(gpu[i].second.device().is_cuda());
        REQUIRE(sg[2 * i].second.device().is_cuda());
        check_within(gpu[i].second, cpu[i].second, step * 2.4e-7, step * 3e-8, name + " p");
        // m and v relative to the scale of the gradients so far (0.5 step).
        check_within(sg[2 * i].second, sc[2 * i].second, step * 2.4e-7, step * 2.4e-7 * 0.5 * step,
                     name + " exp_avg");
        check_within(sg[2 * i + 1].second, sc[2 * i + 1].second, step * 2.4e-7,
                     step * 2.4e-7 * 0.25 * step * step, name + " exp_avg_sq");
      }
    }
    // The parameter without a gradient is untouched, its state still zero.
    const Tensor untouched = gpu[no_grad].second;
    CHECK(copy_to(untouched, DType::kFloat32, Device::cpu()).to_vector<float>() ==
          cpu[no_grad].second.to_vector<float>());
    CHECK(opt_gpu.step_count() == steps);
  }
}

RESONA_GPU_TEST("AdamW on CUDA refuses bfloat16 parameters and float64 gradients") {
  Tensor p = zeros({3}, DType::kBFloat16, Device::cuda());
  p.set_requires_grad(true);
  CHECK_THROWS_WITH_AS(AdamW({{"w", p}}, AdamWConfig()), doctest::Contains("CUDA parameter 'w'"),
                       Error);
  Tensor q = zeros({3}, DType::kFloat32, Device::cuda());
  q.set_requires_grad(true);
  AdamW opt({{"q", q}}, AdamWConfig());
  put_grad(q, zeros({3}, DType::kFloat64, Device::cuda()));
  CHECK_THROWS_WITH_AS(opt.step(), doctest::Contains("must be float32 or bfloat16"), Error);
}

RESONA_GPU_TEST(
    "clip_grad_norm on CUDA vs CPU (grads [1],[7],[33,17],[8193],[3,5000],[257,129]; "
    "float32 and mixed bfloat16; clipped, not clipped, non-finite; reruns identical)") {
  for (bool mixed : {false, true}) {
    INFO((mixed ? "every other gradient bfloat16" : "float32 gradients"));
    Generator gen(900 + mixed);
    std::vector<Tensor> pc, pg;
    for (size_t i = 0; i + 1 < std::size(kShapes); ++i) {
      const DType dt = mixed && i % 2 == 1 ? DType::kBFloat16 : DType::kFloat32;
      Tensor g = round_to_bf16(gen.normal(kShapes[i]));  // exactly representable either way
      Tensor a = zeros(kShapes[i]), b = zeros(kShapes[i], DType::kFloat32, Device::cuda());
      a.set_requires_grad(true);
      b.set_requires_grad(true);
      a.set_grad(g.clone());
      put_grad(b, copy_to(g, dt, Device::cuda()));
      pc.push_back(a);
      pg.push_back(b);
    }
    // Not clipped: the norm, the gradients untouched, bit-identical reruns.
    const double big = 1e9;
    const double n_cpu = train::clip_grad_norm(pc, big);
    const double n_gpu = train::clip_grad_norm(pg, big);
    CHECK(std::abs(n_gpu - n_cpu) <= 1.2e-6 * n_cpu);
    Tensor nt = train::clip_grad_norm_tensor(pg, big);
    CHECK(nt.device().is_cuda());
    CHECK(nt.item() == n_gpu);  // the same reduction, the same bits
    for (size_t i = 0; i < pg.size(); ++i) {
      check_within(pg[i].grad(), pc[i].grad(), 0, 0, "untouched gradient " + std::to_string(i));
    }
    // Clipped to a tenth.
    const double max_norm = n_cpu / 10;
    train::clip_grad_norm(pc, max_norm);
    const double before = train::clip_grad_norm(pg, max_norm);
    CHECK(before == n_gpu);
    for (size_t i = 0; i < pg.size(); ++i) {
      const bool bf16 = pg[i].grad().dtype() == DType::kBFloat16;
      check_within(pg[i].grad(), pc[i].grad(), (bf16 ? 1.0 / 256 : 0) + 3e-6, 0,
                   "clipped gradient " + std::to_string(i));
    }
    const double after = train::clip_grad_norm(pg, big);
    CHECK(std::abs(after - max_norm) <= (mixed ? 4e-3 : 4e-6) * max_norm);
  }
  // A non-finite norm is returned and nothing is scaled.
  Tensor p = zeros({2}, DType::kFloat32, Device::cuda());
  p.set_requires_grad(true);
  p.set_grad(copy_to(from_vector<float>({INFINITY, 1.0f}, {2}), DType::kFloat32, Device::cuda()));
  CHECK(std::isinf(train::clip_grad_norm(std::vector<Tensor>{p}, 1.0)));
  CHECK(p.grad().to_vector<float>()[1] == 1.0f);
  // CPU and CUDA gradients in one call are refused, naming both.
  Tensor c = zeros({2});
  c.set_requires_grad(true);
  c.set_grad(zeros({2}));
  c.set_name("cpu_param");
  CHECK_THROWS_WITH_AS(train::clip_grad_norm(std::vector<Tensor>{p, c}, 1.0),
                       doctest::Contains("'cpu_param'"), Error);
}

}  // namespace resona::testing
