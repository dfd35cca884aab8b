// ModelConfig: the `model:` section of a run's YAML. Common shape settings at the top,
// one sub-section per backbone; only the section named by `name` is used (the others
// keep their defaults and may be omitted).
//
//   model:
//     name: gla            # tiny | gla | deltanet | retnet | mamba | mamba2
//     vocab_size: 32000
//     hidden_size: 600
//     num_layers: 24
//     tie_embeddings: true
//     gla: {num_heads: 4}
#pragma once

#include <cstdint>
#include <string>

#include "core/config.h"

namespace resona::models {

// The small CPU model of `resona demo` and the quickstart (models/tiny_lm.h).
struct TinySection {
  int64_t window = 4;
  template <class V>
  void visit(V& v) {
    v("window", window, "tokens t-W+1..t feed the mixer at t", Range::closed(1, 64));
  }
};

struct ModelConfig {
  std::string name = "tiny";
  int64_t vocab_size = 32000;
  int64_t hidden_size = 600;
  int64_t num_layers = 24;
  bool tie_embeddings = true;
  double norm_eps = 1e-6;
  double init_std = 0.02;
  // SwiGLU width: 0 means FLA's rule, int(hidden * hidden_ratio * 2/3) rounded up to 256.
  int64_t hidden_ratio = 4;
  int64_t intermediate_size = 0;
  TinySection tiny;

  template <class V>
  void visit(V& v) {
    v("name", name, "backbone", OneOf{"tiny"});
    v("vocab_size", vocab_size, "vocabulary size", Range::at_least(2));
    v("hidden_size", hidden_size, "model width D", Range::at_least(1));
    v("num_layers", num_layers, "number of blocks", Range::at_least(1));
    v("tie_embeddings", tie_embeddings, "lm_head shares the embedding matrix");
    v("norm_eps", norm_eps, "RMSNorm epsilon", Range::positive());
    v("init_std", init_std, "std of the normal initialisation", Range::positive());
    v("hidden_ratio", hidden_ratio, "MLP expansion", Range::at_least(1));
    v("intermediate_size", intermediate_size, "MLP width (0: from hidden_ratio)",
      Range::non_negative());
    v("tiny", tiny);
  }
};

}  // namespace resona::models
