// LanguageModel: what the trainer, evaluation and `resona info` see of any backbone, and
// the registry that builds one from its config by name.
//
// Parameter names follow FLA/Hugging Face ("model.embeddings.weight",
// "model.layers.3.attn.q_proj.weight", "model.norm.weight", "lm_head.weight" when untied).
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
  // ids [B, T] (int64 in [0, vocab)) -> logits [B, T, vocab]
  virtual Tensor forward(const Tensor& ids) const = 0;
  virtual const ModelConfig& config() const = 0;
};

// Builds the backbone `cfg.name`, drawing every initial weight from `gen` in
// construction order. Throws naming the field for an invalid configuration.
std::unique_ptr<LanguageModel> build_model(const ModelConfig& cfg, Generator& gen);

// Mean next-token cross-entropy: position t predicts labels[:, t] (labels already
// shifted by the caller; -100 = ignore). logits [B, T, V], labels [B, T].
Tensor language_model_loss(const Tensor& logits, const Tensor& labels);

}  // namespace resona::models
