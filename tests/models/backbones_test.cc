// The FLA backbones (GLA, DeltaNet, RetNet, Mamba, Mamba2): parameter counts at the
// paper's shapes against FLA's, FLA's parameter names, initialisation, forward shapes,
// causality, and finite gradients for every parameter.
#include <algorithm>
#include <cmath>
#include <set>
#include <string>
#include <vector>

#include "autograd/grad_mode.h"
#include "models/blocks.h"
#include "models/language_model.h"
#include "models/mamba.h"
#include "models/retnet.h"
#include "ops/elementwise.h"
#include "ops/reduce.h"
#include "tests/models/small_config.h"
#include "tests/test_util.h"

namespace resona::testing {
namespace {

using namespace resona::models;

const std::vector<std::string> kFlaBackbones = {"gla", "deltanet", "retnet", "mamba", "mamba2"};

// The paper's pretraining shape (configs/wikitext103/*.yaml): hidden 600, 24 layers (Mamba
// and Mamba2 48), vocabulary 32,000, tied embeddings, FLA's defaults otherwise.
ModelConfig paper_config(const std::string& name) {
  ModelConfig c;
  c.name = name;
  c.vocab_size = 32000;
  c.hidden_size = 600;
  c.num_layers = (name == "mamba" || name == "mamba2") ? 48 : 24;
  c.tie_embeddings = true;
  c.mamba2.head_dim = 60;  // 64 does not divide 1200
  return c;
}

int64_t count(const ModelConfig& cfg) {
  Generator gen(0);
  return build_model(cfg, gen)->num_parameters();
}

Tensor random_ids(Generator& gen, int64_t B, int64_t T, int64_t vocab) {
  return gen.randint({B, T}, 0, vocab);
}

// ---- parameter counts ----

// Building a 131M-parameter model takes ~9 s on one core (initialisation draws every
// weight), so the counts are assembled from small models of the paper's width: one block
// with a 2-token vocabulary, the difference a second block makes, and the vocab x hidden
// embedding matrix (one more when untied: a lm_head of the same shape). `resona info
// --config configs/wikitext103/*.yaml` prints the direct counts of the full models.
struct PaperCounts {
  int64_t one_block;     // vocab 2, one block, tied
  int64_t block;         // what a second block adds
  int64_t untied_extra;  // vocab 2, one block: untied minus tied
  int64_t total(bool tied) const {
    const int64_t d = 600, vocab = 32000;
    return one_block + (layers - 1) * block + (vocab - 2) * d + (tied ? 0 : vocab * d);
  }
  int64_t layers;
};

PaperCounts paper_counts(const std::string& name) {
  ModelConfig c = paper_config(name);
  PaperCounts p;
  p.layers = c.num_layers;
  c.vocab_size = 2;
  c.num_layers = 1;
  p.one_block = count(c);
  c.tie_embeddings = false;
  p.untied_extra = count(c) - p.one_block;
  c.tie_embeddings = true;
  c.num_layers = 2;
  p.block = count(c) - p.one_block;
  return p;
}

// FLA's numbers for these configurations (backbones.md 1.7, checked against FLA's
// modules; Mamba's is derived in models/mamba.h), and the per-block sizes.
TEST_CASE("backbones: parameter counts at the paper's shapes equal FLA's") {
  struct Expected {
    const char* name;
    int64_t tied;
    int64_t per_block;
  };
  const Expected expected[] = {
      {"gla", 131'560'200, 4'681'650},
      {"deltanet", 131'437'800, 4'676'550},
      {"retnet", 132'589'800, 4'724'550},
      {"mamba", 130'455'000, 2'317'800},
      // 600*(2*1200 + 2*128 + 20) + (1456*4 + 1456) + 3*20 + 1200 + 1200*600 + 600
      {"mamba2", 131'268'120, 2'334'740},
  };
  for (const Expected& e : expected) {
    CAPTURE(std::string(e.name));
    const PaperCounts p = paper_counts(e.name);
    MESSAGE(e.name << ": " << p.total(true) << " parameters tied, " << p.total(false) << " untied");
    CHECK(p.total(true) == e.tied);
    CHECK(p.block == e.per_block);
    CHECK(p.one_block == 2 * 600 + e.per_block + 600);  // embeddings, block, final norm
    CHECK(p.untied_extra == 2 * 600);                   // lm_head [vocab, hidden]
  }
}

TEST_CASE("backbones: FLA's GatedMLP width rule") {
  CHECK(fla_intermediate_size(600, 4) == 1792);  // int(1600) -> 1792
  CHECK(fla_intermediate_size(600, 2) == 1024);  // int(800) -> 1024
  CHECK(fla_intermediate_size(1024, 4) == 2816);
  CHECK(fla_intermediate_size(2048, 4) == 5632);
}

// ---- names ----

std::vector<std::string> names_of(const LanguageModel& m) {
  std::vector<std::string> out;
  for (const auto& [n, t] : m.named_parameters()) out.push_back(n);
  return out;
}

// Names of layer 0 (relative to the block) in registration order.
std::vector<std::string> block0_names(const LanguageModel& m, const std::string& prefix) {
  std::vector<std::string> out;
  for (const std::string& n : names_of(m)) {
    if (n.rfind(prefix, 0) == 0) out.push_back(n.substr(prefix.size()));
  }
  return out;
}

// The paper's widths with a 2-token vocabulary and at most 4 blocks (fast to build).
ModelConfig paper_width(const std::string& name, int64_t layers) {
  ModelConfig c = paper_config(name);
  c.vocab_size = 2;
  c.num_layers = layers;
  return c;
}

TEST_CASE("backbones: parameter names follow FLA's") {
  Generator gen(0);
  SUBCASE("gla") {
    auto m = build_model(paper_width("gla", 4), gen);
    CHECK(block0_names(*m, "model.layers.3.") ==
          std::vector<std::string>{
              "attn_norm.weight", "attn.q_proj.weight", "attn.k_proj.weight", "attn.v_proj.weight",
              "attn.g_proj.weight", "attn.gk_proj.0.weight", "attn.gk_proj.1.weight",
              "attn.gk_proj.1.bias", "attn.o_proj.weight", "attn.g_norm_swish_gate.weight",
              "mlp_norm.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight",
              "mlp.down_proj.weight"});
    CHECK(m->parameter("model.layers.3.attn.q_proj.weight").shape() == Shape{300, 600});
    CHECK(m->parameter("model.layers.3.attn.gk_proj.1.weight").shape() == Shape{300, 16});
    CHECK(m->parameter("model.layers.3.attn.g_norm_swish_gate.weight").shape() == Shape{150});
    CHECK(m->parameter("model.layers.3.mlp.gate_proj.weight").shape() == Shape{1792, 600});
    const auto names = names_of(*m);
    CHECK(names.front() == "model.embeddings.weight");
    CHECK(names.back() == "model.norm.weight");
    CHECK(m->parameter("model.layers.0.attn.q_proj.weight").name() ==
          "model.layers.0.attn.q_proj.weight");
  }
  SUBCASE("gla with short conv, without output gate") {
    ModelConfig c = small_config("gla");
    c.gla.use_short_conv = true;
    c.gla.use_output_gate = false;
    auto m = build_model(c, gen);
    CHECK(block0_names(*m, "model.layers.0.attn.") ==
          std::vector<std::string>{"q_proj.weight", "k_proj.weight", "v_proj.weight",
                                   "q_conv1d.weight", "k_conv1d.weight", "v_conv1d.weight",
                                   "gk_proj.0.weight", "gk_proj.1.weight", "gk_proj.1.bias",
                                   "o_proj.weight", "g_norm.weight"});
    CHECK(m->parameter("model.layers.0.attn.q_conv1d.weight").shape() == Shape{16, 1, 4});
  }
  SUBCASE("deltanet") {
    auto m = build_model(paper_width("deltanet", 1), gen);
    CHECK(block0_names(*m, "model.layers.0.attn.") ==
          std::vector<std::string>{"q_proj.weight", "k_proj.weight", "v_proj.weight",
                                   "b_proj.weight", "q_conv1d.weight", "k_conv1d.weight",
                                   "v_conv1d.weight", "o_norm.weight", "o_proj.weight"});
    CHECK(m->parameter("model.layers.0.attn.b_proj.weight").shape() == Shape{4, 600});
    CHECK(m->parameter("model.layers.0.attn.v_conv1d.weight").shape() == Shape{600, 1, 4});
    CHECK(m->parameter("model.layers.0.attn.o_norm.weight").shape() == Shape{150});
  }
  SUBCASE("deltanet with gate") {
    ModelConfig c = small_config("deltanet");
    c.deltanet.use_gate = true;
    auto m = build_model(c, gen);
    const auto n = block0_names(*m, "model.layers.0.attn.");
    CHECK(std::find(n.begin(), n.end(), "g_proj.weight") != n.end());
    CHECK(std::find(n.begin(), n.end(), "o_norm.weight") != n.end());
  }
  SUBCASE("retnet") {
    auto m = build_model(paper_width("retnet", 1), gen);
    CHECK(block0_names(*m, "model.layers.0.") ==
          std::vector<std::string>{"attn_norm.weight", "attn.q_proj.weight", "attn.k_proj.weight",
                                   "attn.v_proj.weight", "attn.g_proj.weight", "attn.o_proj.weight",
                                   "attn.g_norm_swish_gate.weight", "mlp_norm.weight",
                                   "mlp.gate_proj.weight", "mlp.up_proj.weight",
                                   "mlp.down_proj.weight"});
    CHECK(m->parameter("model.layers.0.attn.v_proj.weight").shape() == Shape{1200, 600});
    CHECK(m->parameter("model.layers.0.mlp.up_proj.weight").shape() == Shape{1024, 600});
  }
  SUBCASE("mamba") {
    auto m = build_model(paper_width("mamba", 3), gen);
    CHECK(block0_names(*m, "backbone.layers.2.") ==
          std::vector<std::string>{"norm.weight", "mixer.conv1d.weight", "mixer.conv1d.bias",
                                   "mixer.in_proj.weight", "mixer.x_proj.weight",
                                   "mixer.dt_proj.weight", "mixer.dt_proj.bias", "mixer.A_log",
                                   "mixer.D", "mixer.out_proj.weight"});
    CHECK(m->parameter("backbone.layers.0.mixer.in_proj.weight").shape() == Shape{2400, 600});
    CHECK(m->parameter("backbone.layers.0.mixer.conv1d.weight").shape() == Shape{1200, 1, 4});
    CHECK(m->parameter("backbone.layers.0.mixer.x_proj.weight").shape() == Shape{38 + 32, 1200});
    CHECK(m->parameter("backbone.layers.0.mixer.dt_proj.weight").shape() == Shape{1200, 38});
    CHECK(m->parameter("backbone.layers.0.mixer.A_log").shape() == Shape{1200, 16});
    const auto names = names_of(*m);
    CHECK(names.front() == "backbone.embeddings.weight");
    CHECK(names.back() == "backbone.norm_f.weight");
  }
  SUBCASE("mamba2") {
    auto m = build_model(paper_width("mamba2", 1), gen);
    CHECK(block0_names(*m, "backbone.layers.0.") ==
          std::vector<std::string>{"norm.weight", "mixer.conv1d.weight", "mixer.conv1d.bias",
                                   "mixer.in_proj.weight", "mixer.dt_bias", "mixer.A_log",
                                   "mixer.norm.weight", "mixer.D", "mixer.out_proj.weight"});
    CHECK(m->parameter("backbone.layers.0.mixer.in_proj.weight").shape() ==
          Shape{1200 + 1456 + 20, 600});
    CHECK(m->parameter("backbone.layers.0.mixer.conv1d.weight").shape() == Shape{1456, 1, 4});
  }
  SUBCASE("untied lm_head") {
    for (const std::string& name : kFlaBackbones) {
      CAPTURE(name);
      ModelConfig c = small_config(name);
      c.tie_embeddings = false;
      auto m = build_model(c, gen);
      CHECK(names_of(*m).back() == "lm_head.weight");
      CHECK(m->parameter("lm_head.weight").shape() == Shape{37, 32});
      c.tie_embeddings = true;
      const auto tied = names_of(*build_model(c, gen));
      CHECK(std::find(tied.begin(), tied.end(), "lm_head.weight") == tied.end());
    }
  }
}

// ---- registry and validation ----

TEST_CASE("backbones: every name of backbone_names() builds, and only those") {
  Generator gen(0);
  for (const std::string& name : backbone_names()) {
    CAPTURE(name);
    CHECK(has_backbone(name));
    ModelConfig c = small_config(name);
    auto m = build_model(c, gen);
    CHECK(m->config().name == name);
  }
  ModelConfig c = small_config("gla");
  c.name = "transformer";
  CHECK_THROWS_WITH_AS(build_model(c, gen), doctest::Contains("model.name"), Error);
}

TEST_CASE("backbones: settings that do not fit are refused naming the key") {
  Generator gen(0);
  ModelConfig c = paper_width("deltanet", 1);
  c.deltanet.num_heads = 16;  // FLA's DeltaNetConfig default: 600 / 16 is not whole
  CHECK_THROWS_WITH_AS(build_model(c, gen), doctest::Contains("model.deltanet.num_heads"), Error);
  c = paper_config("mamba2");
  c.mamba2.head_dim = 64;  // FLA's default: 1200 / 64 is not whole
  CHECK_THROWS_WITH_AS(validate_model_config(c), doctest::Contains("model.mamba2.head_dim"), Error);
  c = small_config("gla");
  c.gla.expand_k = 0.3;  // 32 * 0.3 = 9.6
  CHECK_THROWS_WITH_AS(validate_model_config(c), doctest::Contains("model.gla.expand_k"), Error);
  c = small_config("mamba2");
  c.mamba2.n_groups = 3;
  CHECK_THROWS_WITH_AS(validate_model_config(c), doctest::Contains("model.mamba2.n_groups"), Error);
  c = small_config("tiny");
  c.tie_embeddings = false;
  CHECK_THROWS_WITH_AS(validate_model_config(c), doctest::Contains("model.tie_embeddings"), Error);
}

TEST_CASE("backbones: resolved settings") {
  ModelConfig c = paper_config("retnet");
  CHECK(resolved_model_config(c).hidden_ratio == 2);
  CHECK(resolved_model_config(c).intermediate_size == 1024);
  CHECK(resolved_model_config(c).norm_eps == 1e-6);
  c = paper_config("gla");
  CHECK(resolved_model_config(c).intermediate_size == 1792);
  c = paper_config("mamba");
  CHECK(resolved_model_config(c).norm_eps == 1e-5);
  CHECK(resolved_model_config(c).mamba.time_step_rank == 38);
}

// ---- initialisation ----

double std_of(const Tensor& t) {
  const std::vector<float> v = t.to_vector<float>();
  double s = 0, s2 = 0;
  for (float x : v) {
    s += x;
    s2 += static_cast<double>(x) * x;
  }
  const double m = s / v.size();
  return std::sqrt(s2 / v.size() - m * m);
}

TEST_CASE("backbones: FLA's initialisation") {
  Generator gen(1);
  ModelConfig c = small_config("gla");
  c.hidden_size = 64;
  c.gla.num_heads = 4;
  auto gla = build_model(c, gen);
  CHECK(std_of(gla->parameter("model.embeddings.weight")) == doctest::Approx(0.02).epsilon(0.05));
  CHECK(std_of(gla->parameter("model.layers.0.attn.v_proj.weight")) ==
        doctest::Approx(0.02).epsilon(0.05));
  CHECK(std_of(gla->parameter("model.layers.0.mlp.down_proj.weight")) ==
        doctest::Approx(0.02).epsilon(0.05));
  for (float b : gla->parameter("model.layers.0.attn.gk_proj.1.bias").to_vector<float>()) {
    CHECK(b == 0.0f);
  }
  for (float w :
       gla->parameter("model.layers.1.attn.g_norm_swish_gate.weight").to_vector<float>()) {
    CHECK(w == 1.0f);
  }

  ModelConfig mc = small_config("mamba");
  auto mamba = build_model(mc, gen);
  const std::vector<float> a_log =
      mamba->parameter("backbone.layers.0.mixer.A_log").to_vector<float>();
  for (int64_t d = 0; d < 64; ++d) {
    for (int64_t n = 0; n < 4; ++n) CHECK(a_log[d * 4 + n] == doctest::Approx(std::log(n + 1.0)));
  }
  for (float x : mamba->parameter("backbone.layers.0.mixer.D").to_vector<float>()) CHECK(x == 1.0f);
  // softplus(dt bias) is the initial step, log-uniform in [1e-3, 0.1]
  for (float b : mamba->parameter("backbone.layers.1.mixer.dt_proj.bias").to_vector<float>()) {
    const double dt = std::log1p(std::exp(static_cast<double>(b)));
    CHECK(dt >= 1e-3 * (1 - 1e-5));
    CHECK(dt <= 0.1 * (1 + 1e-5));
  }
  const double bound = std::pow(2.0, -0.5);  // rank ceil(32/16) = 2
  for (float w : mamba->parameter("backbone.layers.0.mixer.dt_proj.weight").to_vector<float>()) {
    CHECK(std::abs(w) <= bound);
  }
  for (float w : mamba->parameter("backbone.layers.0.mixer.conv1d.weight").to_vector<float>()) {
    CHECK(std::abs(w) <= 0.5);
  }
  CHECK(std_of(mamba->parameter("backbone.layers.0.mixer.conv1d.weight")) > 0.2);  // U(-.5,.5)

  ModelConfig m2 = small_config("mamba2");
  auto mamba2 = build_model(m2, gen);
  for (float a : mamba2->parameter("backbone.layers.0.mixer.A_log").to_vector<float>()) {
    CHECK(a >= 0.0f);
    CHECK(a <= std::log(16.0f) + 1e-6f);
  }
  // out_proj rescaled: U(+-1/sqrt(64)) / sqrt(2 layers)
  const double out_bound = 1.0 / 8.0 / std::sqrt(2.0);
  for (float w : mamba2->parameter("backbone.layers.0.mixer.out_proj.weight").to_vector<float>()) {
    CHECK(std::abs(w) <= out_bound + 1e-7);
  }
}

// ---- small composed pieces ----

TEST_CASE("backbones: logsigmoid, l2_normalize, elu_plus_one") {
  Tensor x = values({-30.0, -2.0, 0.0, 3.0, 25.0}, {5});
  check_close(logsigmoid(x),
              {-30.0 - std::log1p(std::exp(-30.0)), -std::log1p(std::exp(2.0)), -std::log(2.0),
               -std::log1p(std::exp(-3.0)), -std::log1p(std::exp(-25.0))},
              1e-12, 1e-12);
  check_close(elu_plus_one(x), {std::exp(-30.0), std::exp(-2.0), 1.0, 4.0, 26.0}, 1e-12, 1e-12);
  Tensor y = values({3.0, 4.0, 0.0, 0.0}, {2, 2});
  check_close(l2_normalize(y, 0.0 + 1e-300), {0.6, 0.8, 0.0, 0.0}, 1e-12, 1e-12);
}

TEST_CASE("backbones: RoPE rotates channel pairs by t * theta_i, odd last channel kept") {
  const int64_t K = 5, T = 4;  // R = 2 pairs: (0, 2), (1, 3); channel 4 passes through
  RotaryEmbedding rope(K, 10000.0);
  Generator gen(3);
  Tensor x = gen.normal({1, T, 2, K}, 0.0, 1.0, DType::kFloat64);
  Tensor y = rope.forward(x);
  REQUIRE(y.shape() == x.shape());
  const auto xv = x.to_vector<double>(), yv = y.to_vector<double>();
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t h = 0; h < 2; ++h) {
      const int64_t base = (t * 2 + h) * K;
      for (int64_t i = 0; i < 2; ++i) {
        const double theta =
            t * static_cast<double>(static_cast<float>(std::pow(10000.0, -2.0 * i / K)));
        const double c = std::cos(theta), s = std::sin(theta);
        CHECK(yv[base + i] ==
              doctest::Approx(xv[base + i] * c - xv[base + i + 2] * s).epsilon(1e-6));
        CHECK(yv[base + i + 2] ==
              doctest::Approx(xv[base + i] * s + xv[base + i + 2] * c).epsilon(1e-6));
      }
      CHECK(yv[base + 4] == xv[base + 4]);
    }
  }
  // The cos/sin cache of a longer sequence serves a shorter one unchanged.
  RotaryEmbedding cached(K, 10000.0);
  cached.forward(gen.normal({1, 2 * T, 2, K}, 0.0, 1.0, DType::kFloat64));
  check_close(cached.forward(x), y, 0.0, 0.0);
}

TEST_CASE("backbones: RetNet decays gamma_h = 1 - 2^(-5-h)") {
  const auto g = MultiScaleRetention::log_decays(8);
  REQUIRE(g.size() == 8);
  CHECK(std::exp(g[0]) == doctest::Approx(1 - 1.0 / 32));
  CHECK(std::exp(g[7]) == doctest::Approx(1 - 1.0 / 4096));
}

// ---- forward, causality, backward (need the recurrence ops of ops/scan.h) ----

TEST_CASE("backbones: forward shape and causality") {
  const int64_t B = 2, T = 11, t_perturb = 6;
  for (const std::string& name : kFlaBackbones) {
    CAPTURE(name);
    Generator gen(7);
    auto m = build_model(small_config(name), gen);
    NoGradGuard no_grad;
    Tensor ids = random_ids(gen, B, T, 37);
    Tensor logits = m->forward(ids);
    REQUIRE(logits.shape() == Shape{B, T, 37});
    std::vector<int64_t> changed = ids.to_vector<int64_t>();
    for (int64_t b = 0; b < B; ++b)
      changed[b * T + t_perturb] = (changed[b * T + t_perturb] + 5) % 37;
    Tensor logits2 = m->forward(from_vector<int64_t>(changed, {B, T}));
    const auto a = logits.to_vector<float>(), c = logits2.to_vector<float>();
    double before = 0, at = 0;
    bool finite = true;
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t t = 0; t < T; ++t) {
        for (int64_t v = 0; v < 37; ++v) {
          const int64_t i = (b * T + t) * 37 + v;
          finite = finite && std::isfinite(a[i]);
          const double d = std::abs(static_cast<double>(a[i]) - c[i]);
          if (t < t_perturb) before = std::max(before, d);
          if (t == t_perturb) at = std::max(at, d);
        }
      }
    }
    CHECK(finite);
    // Positions before t see exactly the same inputs; the chunked scans may still sum in
    // a different order inside t's chunk, hence a float32 rounding allowance.
    CHECK(before <= 1e-6);
    CHECK(at > 1e-4);  // and the perturbation does reach position t
  }
}

TEST_CASE("backbones: backward gives a finite, non-zero gradient for every parameter") {
  const int64_t B = 2, T = 11;
  for (const std::string& name : kFlaBackbones) {
    for (bool tied : {true, false}) {
      CAPTURE(name);
      CAPTURE(tied);
      Generator gen(11);
      ModelConfig c = small_config(name);
      c.tie_embeddings = tied;
      auto m = build_model(c, gen);
      Tensor ids = random_ids(gen, B, T + 1, 37);
      Tensor inputs = ids.slice(1, 0, T).contiguous();
      Tensor labels = ids.slice(1, 1, T + 1).contiguous();
      Tensor loss = language_model_loss(m->forward(inputs), labels);
      CHECK(std::isfinite(loss.item()));
      CHECK(loss.item() == doctest::Approx(std::log(37.0)).epsilon(0.05));  // near uniform at init
      loss.backward();
      for (const auto& [pname, p] : m->named_parameters()) {
        CAPTURE(pname);
        Tensor g = p.grad();
        REQUIRE(g.defined());
        CHECK(g.shape() == p.shape());
        double norm2 = 0;
        bool finite = true;
        for (float x : g.to_vector<float>()) {
          finite = finite && std::isfinite(x);
          norm2 += static_cast<double>(x) * x;
        }
        CHECK(finite);
        CHECK(norm2 > 0);
      }
    }
  }
}

}  // namespace
}  // namespace resona::testing
