// CUDA against CPU for copies (core's copy_into/copy_to through the backend's strided
// copy and fill kernels, cuda/copy.h) and the layout ops built on them: every pair of the
// five dtypes, strided sources and destinations (transposes, slices with a step,
// expands), host <-> device copies into and out of views, contiguous(), clone(), to(),
// fill_/zero_/copy_ on views, slice, concat and split forward and backward.
//
// Copies and conversions involve no arithmetic: the GPU must match the CPU bit for bit
// (values are kept inside int32's range so that float -> int casts are defined on both).
#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "autograd/engine.h"
#include "core/dispatch.h"
#include "ops/elementwise.h"
#include "ops/reduce.h"
#include "ops/shape.h"
#include "tests/test_util.h"

namespace resona::testing {
namespace {

constexpr DType kAllDTypes[] = {DType::kFloat32, DType::kFloat64, DType::kBFloat16, DType::kInt32,
                                DType::kInt64};

// Exact comparison through float64 (every value of the five dtypes converts exactly,
// int64 ones here are below 2^53).
void check_equal(const std::string& what, const Tensor& got, const Tensor& want) {
  INFO(what);
  REQUIRE(got.shape() == want.shape());
  REQUIRE(got.dtype() == want.dtype());
  const std::vector<double> g = got.to_vector<double>();
  const std::vector<double> w = want.to_vector<double>();
  for (size_t i = 0; i < g.size(); ++i) {
    if (!(g[i] == w[i])) {
      INFO("element " << i << ": got " << g[i] << ", expected " << w[i]);
      CHECK(false);
      return;
    }
  }
  CHECK(true);
}

// Random values in [-1000, 1000) with fractions, as `dtype` on the CPU.
Tensor random_as(Generator& gen, const Shape& shape, DType dtype) {
  return copy_to(gen.uniform(shape, -1000, 1000, DType::kFloat64), dtype, Device::cpu());
}

Tensor on_gpu(const Tensor& t) { return copy_to(t, t.dtype(), Device::cuda()); }

// Views of a tensor of shape [r, c] (the base), by name.
enum class View { kPlain, kTranspose, kStep, kExpand };
const char* view_name(View v) {
  switch (v) {
    case View::kPlain:
      return "contiguous";
    case View::kTranspose:
      return "transposed";
    case View::kStep:
      return "step3 from 1";
    case View::kExpand:
      return "expanded";
  }
  return "?";
}
Tensor view_of(const Tensor& base, View v) {
  switch (v) {
    case View::kPlain:
      return base;
    case View::kTranspose:
      return base.transpose(0, 1);
    case View::kStep:
      return base.slice(1, 1, base.size(1), 3);
    case View::kExpand:
      return base.slice(0, 0, 1).expand({5, base.size(1)});
  }
  return base;
}

}  // namespace

RESONA_GPU_TEST("CUDA tensors round-trip through device memory unchanged") {
  Generator gen(5);
  Tensor x = gen.normal({3, 1001});
  Tensor back = copy_to(copy_to(x, x.dtype(), Device::cuda()), x.dtype(), Device::cpu());
  check_equal("round trip [3,1001] float32", back, x);
}

RESONA_GPU_TEST(
    "strided copy with conversion CUDA vs CPU (every dtype pair of float32, float64, "
    "bfloat16, int32, int64; source [37,53] contiguous, transposed, step3 from 1, "
    "expanded; into contiguous and into a transposed destination)") {
  Generator gen(11);
  for (DType from : kAllDTypes) {
    for (DType to : kAllDTypes) {
      for (View v : {View::kPlain, View::kTranspose, View::kStep, View::kExpand}) {
        const std::string what =
            std::string(dtype_name(from)) + " -> " + dtype_name(to) + ", source " + view_name(v);
        Tensor base = random_as(gen, {37, 53}, from);
        Tensor src = view_of(base, v);
        Tensor gsrc = view_of(on_gpu(base), v);
        // copy_to: a fresh contiguous tensor converted on the device.
        Tensor want = copy_to(src, to, Device::cpu());
        Tensor got = copy_to(gsrc, to, Device::cuda());
        REQUIRE(got.device().is_cuda());
        check_equal(what + " (copy_to)", got, want);
        // copy_into a transposed destination view on the device.
        Tensor want_t = empty({src.size(1), src.size(0)}, to).transpose(0, 1);
        copy_into(want_t, src);
        Tensor got_t = empty({src.size(1), src.size(0)}, to, Device::cuda()).transpose(0, 1);
        copy_into(got_t, gsrc);
        check_equal(what + " (into a transposed destination)", got_t, want_t);
      }
    }
  }
}

RESONA_GPU_TEST(
    "contiguous/clone/to(dtype) of CUDA views (n = 1, 7, 4097, 1000003 as [n] and as a "
    "step-2 slice; [129,67] transposed; [1,300] expanded to [40,300]; float32, bfloat16)") {
  Generator gen(12);
  for (DType dt : {DType::kFloat32, DType::kBFloat16}) {
    std::vector<std::pair<std::string, Shape>> bases;
    for (int64_t n : {1, 7, 4097, 1000003}) {
      bases.push_back({"[" + std::to_string(n) + "]", {n}});
      bases.push_back({"[" + std::to_string(2 * n + 1) + "] step2", {2 * n + 1}});
    }
    bases.push_back({"[129,67] transposed", {129, 67}});
    bases.push_back({"[1,300] expanded to [40,300]", {1, 300}});
    for (const auto& [name, shape] : bases) {
      const std::string what = name + " " + dtype_name(dt);
      Tensor base = random_as(gen, shape, dt);
      auto view = [&](const Tensor& t) {
        if (name.find("step2") != std::string::npos) return t.slice(0, 1, t.size(0), 2);
        if (name.find("transposed") != std::string::npos) return t.transpose(0, 1);
        if (name.find("expanded") != std::string::npos) return t.expand({40, 300});
        return t;
      };
      Tensor gbase = on_gpu(base);
      Tensor src = view(base), gsrc = view(gbase);
      Tensor c = gsrc.contiguous();
      CHECK(c.is_contiguous());
      check_equal(what + " contiguous()", c, src.contiguous());
      Tensor k = gsrc.clone();
      CHECK(k.is_contiguous());
      CHECK(!k.shares_storage(gbase));
      check_equal(what + " clone()", k, src.clone());
      const DType other = dt == DType::kFloat32 ? DType::kBFloat16 : DType::kFloat32;
      check_equal(what + " to(" + dtype_name(other) + ")", gsrc.to(other),
                  copy_to(src, other, Device::cpu()));
      check_equal(what + " to(float64)", gsrc.to(DType::kFloat64),
                  copy_to(src, DType::kFloat64, Device::cpu()));
    }
  }
}

RESONA_GPU_TEST(
    "fill_/zero_/copy_ on strided CUDA views against the CPU ([41,67]: a transposed "
    "window, a step-3 column slice; copy_ from the host, from the device, broadcast; "
    "float32, bfloat16, int64)") {
  Generator gen(13);
  for (DType dt : {DType::kFloat32, DType::kBFloat16, DType::kInt64}) {
    const std::string d = dtype_name(dt);
    Tensor cpu = random_as(gen, {41, 67}, dt);
    Tensor gpu = on_gpu(cpu);
    auto window = [](const Tensor& t) { return t.slice(0, 3, 30).transpose(0, 1); };
    auto cols = [](const Tensor& t) { return t.slice(1, 2, 67, 3); };

    window(cpu).fill_(-2.75);
    window(gpu).fill_(-2.75);
    check_equal("fill_(-2.75) of a transposed window, " + d, gpu, cpu);

    cols(cpu).zero_();
    cols(gpu).zero_();
    check_equal("zero_() of a step-3 column slice, " + d, gpu, cpu);

    Tensor patch = random_as(gen, {67, 27}, DType::kFloat64);  // converted by copy_
    window(cpu).copy_(patch);
    window(gpu).copy_(patch);  // host float64 -> device view of dt
    check_equal("copy_ from a host float64 tensor into a transposed window, " + d, gpu, cpu);

    Tensor row = random_as(gen, {22}, dt);
    cols(cpu).copy_(row);          // broadcast over the 41 rows
    cols(gpu).copy_(on_gpu(row));  // device -> device view, broadcast
    check_equal("copy_ of a broadcast row into a step-3 column slice, " + d, gpu, cpu);

    Tensor out_cpu = zeros({67, 27}, dt), out_from_gpu = zeros({67, 27}, dt);
    out_cpu.copy_(window(cpu));
    out_from_gpu.copy_(window(gpu));  // device view -> host
    check_equal("copy_ from a device window into a host tensor, " + d, out_from_gpu, out_cpu);
    Tensor host_t = zeros({27, 67}, dt).transpose(0, 1),
           want_t = zeros({27, 67}, dt).transpose(0, 1);
    want_t.copy_(window(cpu));
    host_t.copy_(window(gpu));  // device view -> transposed host view
    check_equal("copy_ from a device window into a transposed host view, " + d, host_t, want_t);
  }
  // Filling a float32 view with a value that float32 rounds: both sides round alike.
  Tensor a = zeros({3, 5}), ga = zeros({3, 5}, DType::kFloat32, Device::cuda());
  a.transpose(0, 1).fill_(0.1);
  ga.transpose(0, 1).fill_(0.1);
  check_equal("fill_(0.1) float32", ga, a);
}

namespace {

// Runs f on CPU float32 leaves and on CUDA leaves of `dtype`, backward with the same
// random gradient, and checks outputs and gradients are equal: layout ops do no
// arithmetic, and the bf16 values are exact in float32. The one exception is an expand,
// whose backward adds `n_terms` gradients per input element: in float32 two summation
// orders differ by at most 2 (n - 1) u of the terms' absolute sum S, and bf16 rounds the
// sum once more (2^-8 of it <= 2^-8 S).
void check_layout_op(const std::string& what, const std::vector<Shape>& shapes, DType dtype,
                     const std::function<std::vector<Tensor>(const std::vector<Tensor>&)>& f,
                     uint64_t seed, int64_t n_terms = 1) {
  INFO(what << " " << std::string(dtype_name(dtype)));
  Generator gen(seed);
  std::vector<Tensor> cpu, gpu;
  for (const Shape& s : shapes) {
    Tensor v = copy_to(copy_to(gen.uniform(s, -3, 3), dtype, Device::cpu()), DType::kFloat32,
                       Device::cpu());
    cpu.push_back(v.clone().set_requires_grad(true));
    gpu.push_back(copy_to(v, dtype, Device::cuda()).set_requires_grad(true));
  }
  std::vector<Tensor> ys = f(cpu), gys = f(gpu);
  REQUIRE(ys.size() == gys.size());
  // Gradients flow from every output but the last (a missing gradient is zeros).
  std::vector<Tensor> roots, groots, ds, gds;
  for (size_t i = 0; i < ys.size(); ++i) {
    check_equal(what + ": output " + std::to_string(i),
                copy_to(gys[i], DType::kFloat32, Device::cpu()), ys[i].detach());
    if (ys.size() > 1 && i + 1 == ys.size()) continue;
    Tensor d = copy_to(copy_to(gen.uniform(ys[i].shape(), -1, 1), dtype, Device::cpu()),
                       DType::kFloat32, Device::cpu());
    roots.push_back(ys[i]);
    groots.push_back(gys[i]);
    ds.push_back(d);
    gds.push_back(copy_to(d, dtype, Device::cuda()));
  }
  autograd::backward(roots, ds);
  autograd::backward(groots, gds);
  // S: backward of |d| (the layout ops' gradients have weights 0 and 1).
  std::vector<Tensor> abs_leaves;
  for (const Tensor& c : cpu) abs_leaves.push_back(c.detach().clone().set_requires_grad(true));
  std::vector<Tensor> abs_ys = f(abs_leaves), abs_roots, abs_ds;
  for (size_t i = 0; i < ds.size(); ++i) {
    abs_roots.push_back(abs_ys[i]);
    abs_ds.push_back(abs(ds[i]));
  }
  autograd::backward(abs_roots, abs_ds);
  const double rel =
      n_terms > 1 ? 2.0 * n_terms / (1 << 24) + (dtype == DType::kBFloat16 ? 1.0 / 256 : 0) : 0.0;
  for (size_t i = 0; i < cpu.size(); ++i) {
    REQUIRE(gpu[i].grad().defined());
    CHECK(gpu[i].grad().device().is_cuda());
    const std::string label = what + ": gradient of input " + std::to_string(i);
    Tensor got = copy_to(gpu[i].grad(), DType::kFloat32, Device::cpu());
    if (rel == 0) {
      check_equal(label, got, cpu[i].grad());
      continue;
    }
    INFO(label);
    const std::vector<double> g = got.to_vector<double>(), w = cpu[i].grad().to_vector<double>(),
                              s = abs_leaves[i].grad().to_vector<double>();
    for (size_t j = 0; j < g.size(); ++j) {
      if (!(std::abs(g[j] - w[j]) <= rel * s[j])) {
        INFO("element " << j << ": got " << g[j] << ", expected " << w[j] << ", allowed "
                        << rel * s[j]);
        CHECK(false);
        break;
      }
    }
  }
}

}  // namespace

RESONA_GPU_TEST(
    "slice/concat/split/expand/permute/contiguous/cast forward and backward CUDA vs CPU "
    "(slice [4097] 1:4000:7, [37,53] dim 1 2:50:3; concat of [5,3],[5,1],[5,7] dim 1 and "
    "[2,3],[4097,3] dim 0; split [9,12] into 5,0,7 on dim 1 and 4s on dim 0; expand "
    "[1,7] to [3,5,7]; permute+contiguous [3,4,5]; cast to float64 and back; float32, "
    "bfloat16)") {
  uint64_t seed = 300;
  for (DType dt : {DType::kFloat32, DType::kBFloat16}) {
    check_layout_op(
        "slice([4097], 1:4000:7)", {{4097}}, dt,
        [](const std::vector<Tensor>& x) { return std::vector<Tensor>{x[0].slice(0, 1, 4000, 7)}; },
        seed++);
    check_layout_op(
        "slice([37,53], dim 1, 2:50:3)", {{37, 53}}, dt,
        [](const std::vector<Tensor>& x) { return std::vector<Tensor>{x[0].slice(1, 2, 50, 3)}; },
        seed++);
    check_layout_op(
        "concat([5,3],[5,1],[5,7] transposed, dim 1)", {{5, 3}, {5, 1}, {7, 5}}, dt,
        [](const std::vector<Tensor>& x) {
          return std::vector<Tensor>{concat({x[0], x[1], x[2].transpose(0, 1)}, 1)};
        },
        seed++);
    check_layout_op(
        "concat([2,3],[4097,3], dim 0)", {{2, 3}, {4097, 3}}, dt,
        [](const std::vector<Tensor>& x) {
          return std::vector<Tensor>{concat({x[0], x[1]}, 0)};
        },
        seed++);
    check_layout_op(
        "split([9,12], {5,0,7}, dim 1)", {{9, 12}}, dt,
        [](const std::vector<Tensor>& x) {
          return split(x[0], {5, 0, 7}, 1);
        },
        seed++);
    check_layout_op(
        "split([9,12], 4, dim 0), each made contiguous", {{9, 12}}, dt,
        [](const std::vector<Tensor>& x) {
          std::vector<Tensor> parts = split(x[0], 4, 0);
          for (Tensor& p : parts) p = p.contiguous();
          return parts;
        },
        seed++);
    check_layout_op(
        "expand([1,7] to [3,5,7]) made contiguous", {{1, 7}}, dt,
        [](const std::vector<Tensor>& x) {
          return std::vector<Tensor>{x[0].expand({3, 5, 7}).contiguous()};
        },
        seed++, /*n_terms=*/15);
    check_layout_op(
        "permute([3,4,5], {2,0,1}) made contiguous", {{3, 4, 5}}, dt,
        [](const std::vector<Tensor>& x) {
          return std::vector<Tensor>{x[0].permute({2, 0, 1}).contiguous()};
        },
        seed++);
    check_layout_op(
        "cast to float64 and back of a transposed [6,9]", {{6, 9}}, dt,
        [dt](const std::vector<Tensor>& x) {
          return std::vector<Tensor>{x[0].transpose(0, 1).to(DType::kFloat64).to(x[0].dtype())};
        },
        seed++);
  }
}

TEST_CASE("CUDA copies refuse what the kernels cannot index, naming the tensors") {
  if (!cuda_available()) return;  // the elementwise test checks the no-GPU message
  // Nine dims that no merging shortens: the source steps through them in the opposite
  // order to the contiguous destination.
  Tensor base = zeros({2, 2, 2, 2, 2, 2, 2, 2, 2}, DType::kFloat32, Device::cuda());
  Tensor x = base.permute({8, 7, 6, 5, 4, 3, 2, 1, 0});
  x.set_name("x9");
  CHECK_THROWS_WITH_AS(x.contiguous(), doctest::Contains("x9 [2, 2, 2, 2, 2, 2, 2, 2, 2]"), Error);
  CHECK_THROWS_WITH_AS(x.contiguous(), doctest::Contains("more than 8 dims"), Error);
  // One operand alone is put in stride order first, so filling the same view works.
  x.fill_(1.5);
  check_equal("fill_ of the reversed 9-D view", base, full(base.shape(), 1.5));
}

}  // namespace resona::testing
