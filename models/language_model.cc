#include "models/language_model.h"

#include "models/deltanet.h"
#include "models/gla.h"
#include "models/mamba.h"
#include "models/mamba2.h"
#include "models/resona.h"
#include "models/retnet.h"
#include "models/tiny_lm.h"
#include "ops/loss.h"

namespace resona::models {

namespace {

struct BackboneEntry {
  const char* name;
  void (*validate)(const ModelConfig&);
  std::unique_ptr<LanguageModel> (*build)(const ModelConfig&, Generator&);
};

void validate_tiny_config(const ModelConfig& cfg) {
  RESONA_CHECK(cfg.tie_embeddings)
      << "model.tie_embeddings: the tiny model always ties its lm_head to the embeddings";
}
std::unique_ptr<LanguageModel> build_tiny(const ModelConfig& cfg, Generator& gen) {
  return std::make_unique<TinyLM>(cfg, gen);
}

// The registry: one row per name of backbone_names() (models/config.h), which the YAML
// loader accepts; tests/models/backbones_test.cc builds every one of them.
constexpr BackboneEntry kBackbones[] = {
    {"tiny", validate_tiny_config, build_tiny},
    {"gla", validate_gla_config, build_gla},
    {"deltanet", validate_deltanet_config, build_deltanet},
    {"retnet", validate_retnet_config, build_retnet},
    {"mamba", validate_mamba_config, build_mamba},
    {"mamba2", validate_mamba2_config, build_mamba2},
};

const BackboneEntry& find_backbone(const std::string& name) {
  for (const BackboneEntry& b : kBackbones) {
    if (name == b.name) return b;
  }
  std::string known;
  for (const BackboneEntry& b : kBackbones)
    known += std::string(known.empty() ? "" : ", ") + b.name;
  RESONA_FAIL() << "model.name: unknown backbone '" << name << "' (known: " << known << ")";
  return kBackbones[0];
}

}  // namespace

void validate_model_config(const ModelConfig& cfg) {
  const BackboneEntry& b = find_backbone(cfg.name);
  RESONA_CHECK(cfg.vocab_size >= 2) << "model.vocab_size must be >= 2, got " << cfg.vocab_size;
  RESONA_CHECK(cfg.hidden_size >= 1) << "model.hidden_size must be >= 1, got " << cfg.hidden_size;
  RESONA_CHECK(cfg.num_layers >= 1) << "model.num_layers must be >= 1, got " << cfg.num_layers;
  RESONA_CHECK(cfg.norm_eps >= 0) << "model.norm_eps must be >= 0, got " << cfg.norm_eps;
  RESONA_CHECK(cfg.init_std > 0) << "model.init_std must be positive, got " << cfg.init_std;
  b.validate(cfg);
  validate_resona_config(cfg);
}

std::unique_ptr<LanguageModel> build_model(const ModelConfig& cfg, Generator& gen) {
  validate_model_config(cfg);
  return find_backbone(cfg.name).build(cfg, gen);
}

ModelConfig resolved_model_config(const ModelConfig& cfg) {
  ModelConfig r = cfg;
  r.norm_eps = cfg.resolved_norm_eps();
  if (cfg.name == "gla" || cfg.name == "deltanet" || cfg.name == "retnet") {
    r.hidden_ratio = cfg.resolved_hidden_ratio();
    if (r.intermediate_size == 0) {
      r.intermediate_size = fla_intermediate_size(cfg.hidden_size, r.hidden_ratio);
    }
  } else if (cfg.name == "tiny") {
    TinyLMConfig t;
    t.d_model = cfg.hidden_size;
    t.mlp_hidden = cfg.intermediate_size;
    r.intermediate_size = t.resolved_mlp_hidden();
  } else if (cfg.name == "mamba") {
    r.mamba.time_step_rank = MambaMixer::time_step_rank(cfg);
  }
  return r;
}

bool has_backbone(const std::string& name) {
  for (const BackboneEntry& b : kBackbones) {
    if (name == b.name) return true;
  }
  return false;
}

Tensor language_model_loss(const Tensor& logits, const Tensor& labels) {
  RESONA_CHECK(logits.dim() == 3 && labels.dim() == 2 && logits.size(0) == labels.size(0) &&
               logits.size(1) == labels.size(1))
      << "language_model_loss: logits " << logits.describe() << " and labels " << labels.describe()
      << " must be [B, T, V] and [B, T]";
  const int64_t n = logits.size(0) * logits.size(1);
  return cross_entropy(logits.reshape({n, logits.size(2)}), labels.reshape({n}));
}

}  // namespace resona::models
