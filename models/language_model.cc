#include "models/language_model.h"

#include "models/tiny_lm.h"
#include "ops/loss.h"

namespace resona::models {
std::unique_ptr<LanguageModel> build_model(const ModelConfig& cfg, Generator& gen) {
  if (cfg.name == "tiny") return std::make_unique<TinyLM>(cfg, gen);
  RESONA_FAIL() << "model.name: unknown backbone '" << cfg.name << "'";
  return nullptr;
}

Tensor language_model_loss(const Tensor& logits, const Tensor& labels) {
  RESONA_CHECK(logits.dim() == 3 && labels.dim() == 2 && logits.size(0) == labels.size(0) &&
               logits.size(1) == labels.size(1))
      << "language_model_loss: logits " << logits.describe() << " and labels "
      << labels.describe() << " must be [B, T, V] and [B, T]";
  const int64_t n = logits.size(0) * logits.size(1);
  return cross_entropy(logits.reshape({n, logits.size(2)}), labels.reshape({n}));
}

}  // namespace resona::models
