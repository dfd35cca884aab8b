// layer_bench: tokens per second of whole GLA and DeltaNet layers on one GPU, at the
// paper's pretraining shape (configs/wikitext103/{gla,deltanet}.yaml: hidden 600, 4 heads;
// by default batch 8 x 2048 tokens), through the models' own modules.
//
// Per backbone, dtype and pass it times two units:
//   attn   the token mixer alone (models::GatedLinearAttention / models::DeltaNet):
//          projections, short convolutions, the chunked recurrence, the per-head norm and
//          gate, o_proj;
//   block  the pre-norm block around it (attn_norm, attn, mlp_norm, SwiGLU MLP, residuals),
//          one of the 24 the model stacks.
// Passes: fwd (grad mode off) and fwd+bwd (autograd::grad of the output with a fixed
// random d_out, to the input and every parameter). dtypes: float32 (TF32 matmuls, as
// training runs) and bf16 (the parameters converted the way train.precision=bf16 does,
// models::MixedPrecision; float32 recurrent state).
//
// Timing: cuda/bench/timing.h (up to 50 calls a repeat of ~50 ms).
// Output: a Markdown table (ms, tokens/s); its PyTorch twin is tools/bench_torch_layers.py,
// results in RESULTS.md.
//
//   layer_bench [--batch 8] [--seq 2048] [--configs DIR] [--csv PATH]
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "autograd/engine.h"
#include "autograd/grad_mode.h"
#include "core/check.h"
#include "core/rng.h"
#include "core/tensor.h"
#include "cuda/backend.h"
#include "cuda/bench/timing.h"
#include "models/blocks.h"
#include "models/deltanet.h"
#include "models/gla.h"
#include "models/module.h"
#include "models/resona.h"
#include "train/run_config.h"

namespace resona::bench {
namespace {

// The whole layers take milliseconds: fewer calls per repeat than the ops.
constexpr Timing kLayerTiming{5, 50.0, 50};

Tensor rand_cuda(const Shape& shape, DType dtype, std::mt19937_64& gen) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  std::normal_distribution<double> normal(0.0, 1.0);
  std::vector<float> host(n);
  for (float& v : host) v = static_cast<float>(normal(gen));
  NoGradGuard no_grad;
  return from_vector(host, shape).to(dtype).to(Device::cuda());
}

struct Row {
  std::string backbone, unit, dtype, pass;
  double ms, tokens_per_s;
  int64_t params;
};

// The attention layer of `backbone` built from the run config's model section.
std::unique_ptr<models::SequenceModule> make_attn(const std::string& backbone,
                                                  const models::ModelConfig& cfg, Generator& gen) {
  if (backbone == "gla") return std::make_unique<models::GatedLinearAttention>(cfg, gen);
  if (backbone == "deltanet") return std::make_unique<models::DeltaNet>(cfg, gen);
  RESONA_FAIL() << "layer_bench: no layer for backbone '" << backbone << "'";
  return nullptr;
}

void bench_unit(const std::string& backbone, const std::string& unit, models::Module& module,
                const std::function<Tensor(const Tensor&)>& fwd, DType dtype, int64_t batch,
                int64_t seq, int64_t hidden, std::mt19937_64& gen, std::vector<Row>& rows) {
  module.to(Device::cuda());
  models::MixedPrecision mixed(module, dtype);  // converts the parameters for bf16
  Tensor x = rand_cuda({batch, seq, hidden}, dtype, gen);
  x.set_requires_grad(true);
  std::vector<Tensor> inputs = module.parameters();
  inputs.push_back(x);
  const double tokens = static_cast<double>(batch * seq);
  const std::string dt = dtype == DType::kBFloat16 ? "bf16" : "f32";
  const double fwd_ms = time_ms(
      [&] {
        NoGradGuard no_grad;
        fwd(x);
      },
      kLayerTiming);
  rows.push_back(
      {backbone, unit, dt, "fwd", fwd_ms, tokens / fwd_ms * 1e3, module.num_parameters()});
  Tensor d_out = rand_cuda({batch, seq, hidden}, dtype, gen);
  const double all_ms = time_ms(
      [&] {
        EnableGradGuard grad;
        Tensor out = fwd(x);
        autograd::grad({out}, inputs, {d_out});
      },
      kLayerTiming);
  rows.push_back(
      {backbone, unit, dt, "fwd+bwd", all_ms, tokens / all_ms * 1e3, module.num_parameters()});
}

int run(int argc, char** argv) {
  int64_t batch = 8, seq = 2048;
  std::string configs = "configs/wikitext103", csv;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      RESONA_CHECK(i + 1 < argc) << "layer_bench: " << a << " needs a value";
      return argv[++i];
    };
    if (a == "--batch") {
      batch = std::stoll(value());
    } else if (a == "--seq") {
      seq = std::stoll(value());
    } else if (a == "--configs") {
      configs = value();
    } else if (a == "--csv") {
      csv = value();
    } else {
      RESONA_FAIL() << "layer_bench: unknown argument '" << a
                    << "' (expected --batch N, --seq N, --configs DIR, --csv PATH)";
    }
  }
  RESONA_CHECK(batch > 0 && seq > 0) << "layer_bench: --batch and --seq must be positive";
  int devices = 0;
  RESONA_CHECK(cudaGetDeviceCount(&devices) == cudaSuccess && devices > 0)
      << "layer_bench: no CUDA device";
  cudaDeviceProp prop{};
  check_cuda(cudaGetDeviceProperties(&prop, 0), "cudaGetDeviceProperties");
  std::printf("device: %s\nshape: batch %lld x %lld tokens\n\n", prop.name,
              static_cast<long long>(batch), static_cast<long long>(seq));

  std::mt19937_64 gen(20261127);
  std::vector<Row> rows;
  for (const std::string backbone : {"gla", "deltanet"}) {
    const models::ModelConfig cfg =
        train::load_run_config(configs + "/" + backbone + ".yaml").model;
    for (DType dtype : {DType::kFloat32, DType::kBFloat16}) {
      {
        Generator g(1);
        std::unique_ptr<models::SequenceModule> attn = make_attn(backbone, cfg, g);
        bench_unit(
            backbone, "attn", *attn, [&](const Tensor& x) { return attn->forward(x); }, dtype,
            batch, seq, cfg.hidden_size, gen, rows);
      }
      {
        Generator g(1);
        models::PrenormBlock block(make_attn(backbone, cfg, g), cfg, /*layer=*/1, g);
        const models::ResonaInputs none;
        bench_unit(
            backbone, "block", block, [&](const Tensor& x) { return block.forward(x, none); },
            dtype, batch, seq, cfg.hidden_size, gen, rows);
      }
    }
  }

  std::printf("| backbone | unit | parameters | dtype | pass | ms | tokens/s |\n");
  std::printf("|---|---|---:|---|---|---:|---:|\n");
  for (const Row& r : rows) {
    std::printf("| %s | %s | %lld | %s | %s | %.3f | %.0f |\n", r.backbone.c_str(), r.unit.c_str(),
                static_cast<long long>(r.params), r.dtype.c_str(), r.pass.c_str(), r.ms,
                r.tokens_per_s);
  }
  if (!csv.empty()) {
    std::ofstream f(csv);
    RESONA_CHECK(f.good()) << "layer_bench: cannot write --csv " << csv;
    f << "backbone,unit,parameters,dtype,pass,ms,tokens_per_s\n";
    for (const Row& r : rows) {
      f << r.backbone << ',' << r.unit << ',' << r.params << ',' << r.dtype << ',' << r.pass << ','
        << r.ms << ',' << r.tokens_per_s << '\n';
    }
  }
  return 0;
}

}  // namespace
}  // namespace resona::bench

int main(int argc, char** argv) {
  try {
    return resona::bench::run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "layer_bench: %s\n", e.what());
    return 1;
  }
}
