// LanguageModel: what the trainer, evaluation and `resona info` see of any backbone, and
// the registry that builds one from its config by name.
//
// Parameter names follow FLA/Hugging Face ("model.embeddings.weight",
// "model.layers.3.attn.q_proj.weight", "model.norm.weight", "lm_head.weight" when untied;
// Mamba and Mamba2, as FLA's copies of Hugging Face's Mamba, "backbone.embeddings.weight",
// "backbone.layers.3.mixer.in_proj.weight", "backbone.norm_f.weight").
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "core/rng.h"
#include "core/tensor.h"
#include "models/config.h"
#include "models/module.h"

namespace resona::models {

class LanguageModel : public Module {
 public:
  // ids [B, T] (int32/int64 in [0, vocab)) -> the final normed hidden states [B, T, D].
  // chunk_ids: the Resona layers' retrieved chunk ids read offline (int32 [B, NQ, top_k],
  // model.resona.mask_source: offline); undefined: they search online.
  virtual Tensor hidden_states(const Tensor& ids, const Tensor& chunk_ids = Tensor()) const = 0;
  // hidden [..., D] -> logits [..., vocab] (the lm_head, or the tied embedding matrix).
  // Applied to a subset of positions it gives their logits alone (task losses that label
  // few positions need no [B, T, vocab] logits).
  virtual Tensor logits(const Tensor& hidden) const = 0;
  virtual const ModelConfig& config() const = 0;

  // ids [B, T] -> logits [B, T, vocab]
  Tensor forward(const Tensor& ids, const Tensor& chunk_ids = Tensor()) const {
    return logits(hidden_states(ids, chunk_ids));
  }
};

// `cfg` with every "0: default" setting replaced by the value the backbone uses: norm_eps,
// hidden_ratio and intermediate_size (backbones with an MLP), mamba.time_step_rank.
// Settings a backbone does not read are left as they are.
ModelConfig resolved_model_config(const ModelConfig& cfg);

// True when build_model knows `name` (the registry behind backbone_names()).
bool has_backbone(const std::string& name);

// Builds the backbone `cfg.name`, drawing every initial weight from `gen` in
// construction order. Throws naming the field for an invalid configuration.
std::unique_ptr<LanguageModel> build_model(const ModelConfig& cfg, Generator& gen);

// Mean next-token cross-entropy: position t predicts labels[:, t] (labels already
// shifted by the caller; -100 = ignore). logits [B, T, V], labels [B, T].
Tensor language_model_loss(const Tensor& logits, const Tensor& labels);

}  // namespace resona::models
