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
//
// The defaults of every backbone section are FLA's (fla-org/flash-linear-attention: the
// layer's constructor defaults, or the model config's where the two differ and the model
// config is what FLA's `*ForCausalLM` passes); where FLA's default cannot work at hidden
// 600 the comment says what we chose instead. Keys FLA has that we do not implement
// (feature maps, MQA `num_kv_heads`, clamp_min, hybrid attention layers) are absent, so a
// config that sets them is rejected rather than silently ignored.
//
// Two common keys have backbone-dependent defaults in FLA, written 0 here:
//   norm_eps      0: 1e-6 (tiny, gla, deltanet, retnet) or 1e-5 (mamba, mamba2)
//   hidden_ratio  0: 4 (gla, deltanet), 2 (retnet); only the backbones with an MLP use it
// resolved_norm_eps() and resolved_hidden_ratio() apply them.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/config.h"

namespace resona::models {

// Every backbone `model.name` accepts; build_model (models/language_model.cc) has one
// builder for each, and a test builds every one.
inline const std::vector<std::string>& backbone_names() {
  static const std::vector<std::string> names = {"tiny",   "gla",   "deltanet",
                                                 "retnet", "mamba", "mamba2"};
  return names;
}

// The small CPU model of `resona demo` and the quickstart (models/tiny_lm.h).
struct TinySection {
  int64_t window = 4;
  template <class V>
  void visit(V& v) {
    v("window", window, "tokens t-W+1..t feed the mixer at t", Range::closed(1, 64));
  }
};

// Gated linear attention (models/gla.h; FLA fla/layers/gla.py). Key width
// hidden*expand_k, value width hidden*expand_v, both split over num_heads.
struct GlaSection {
  int64_t num_heads = 4;
  double expand_k = 0.5;
  double expand_v = 1.0;
  bool use_output_gate = true;        // o = W_o(RMSNorm_head(o) * swish(W_g x)); off: no g_proj
  int64_t gate_low_rank_dim = 16;     // gk_proj: hidden -> this -> key width
  double gate_logit_normalizer = 16;  // log alpha = logsigmoid(gk) / this
  bool use_short_conv = false;
  int64_t conv_size = 4;
  bool conv_bias = false;
  int64_t chunk_size = 64;  // chunk length C of the chunked scan (ops/scan.h)
  template <class V>
  void visit(V& v) {
    v("num_heads", num_heads, "heads H (must divide both key and value widths)",
      Range::at_least(1));
    v("expand_k", expand_k, "key width / hidden_size", Range::positive());
    v("expand_v", expand_v, "value width / hidden_size", Range::positive());
    v("use_output_gate", use_output_gate, "swish output gate g_proj fused with the head norm");
    v("gate_low_rank_dim", gate_low_rank_dim, "rank of the forget-gate projection gk_proj",
      Range::at_least(1));
    v("gate_logit_normalizer", gate_logit_normalizer,
      "log alpha = logsigmoid(gk) / gate_logit_normalizer", Range::positive());
    v("use_short_conv", use_short_conv, "causal depthwise conv + SiLU on q, k, v");
    v("conv_size", conv_size, "short-conv kernel width", Range::closed(2, 8));
    v("conv_bias", conv_bias, "bias in the short convolutions");
    v("chunk_size", chunk_size, "chunk length of the chunked scan", Range::at_least(1));
  }
};

// DeltaNet (models/deltanet.h; FLA fla/layers/delta_net.py). FLA's DeltaNetConfig
// defaults to 16 heads, which does not divide hidden 600; the layer's own default, 4, is
// ours (the paper does not say; backbones.md 1.3).
struct DeltaNetSection {
  int64_t num_heads = 4;
  double expand_k = 1.0;
  double expand_v = 1.0;
  bool use_beta = true;   // beta = sigmoid(b_proj x); off: beta = 1 and no b_proj
  bool use_gate = false;  // swish output gate g_proj fused with the head norm
  bool use_short_conv = true;
  int64_t conv_size = 4;
  bool conv_bias = false;
  std::string qk_activation = "silu";
  std::string qk_norm = "l2";
  bool allow_neg_eigval = false;  // beta *= 2, eigenvalues of (I - beta k k^T) in [-1, 1]
  int64_t chunk_size = 64;
  template <class V>
  void visit(V& v) {
    v("num_heads", num_heads, "heads H (must divide both key and value widths)",
      Range::at_least(1));
    v("expand_k", expand_k, "key width / hidden_size", Range::positive());
    v("expand_v", expand_v, "value width / hidden_size", Range::positive());
    v("use_beta", use_beta, "learned writing strength beta = sigmoid(b_proj x) per head");
    v("use_gate", use_gate, "swish output gate g_proj fused with the head norm");
    v("use_short_conv", use_short_conv, "causal depthwise conv on q, k, v (FLA: crucial)");
    v("conv_size", conv_size, "short-conv kernel width", Range::closed(2, 8));
    v("conv_bias", conv_bias, "bias in the short convolutions");
    v("qk_activation", qk_activation, "activation of q and k",
      OneOf{"silu", "relu", "elu", "identity"});
    v("qk_norm", qk_norm, "normalisation of q and k per head", OneOf{"l2", "sum"});
    v("allow_neg_eigval", allow_neg_eigval, "beta in (0, 2) instead of (0, 1)");
    v("chunk_size", chunk_size, "chunk length of the chunked scan", Range::at_least(1));
  }
};

// RetNet's multi-scale retention (models/retnet.h; FLA fla/layers/multiscale_retention.py):
// fixed decay gamma_h = 1 - 2^(-5-h) per head, RoPE on q and k.
struct RetNetSection {
  int64_t num_heads = 8;
  double expand_k = 1.0;
  double expand_v = 2.0;
  bool use_output_gate = true;
  double rope_theta = 10000.0;
  int64_t chunk_size = 64;
  template <class V>
  void visit(V& v) {
    v("num_heads", num_heads, "heads H (must divide both key and value widths)",
      Range::at_least(1));
    v("expand_k", expand_k, "key width / hidden_size", Range::positive());
    v("expand_v", expand_v, "value width / hidden_size", Range::positive());
    v("use_output_gate", use_output_gate, "swish output gate g_proj fused with the head norm");
    v("rope_theta", rope_theta, "RoPE base", Range::positive());
    v("chunk_size", chunk_size, "chunk length of the chunked scan", Range::at_least(1));
  }
};

// Mamba's selective SSM mixer (models/mamba.h; FLA fla/layers/mamba.py, MambaConfig).
struct MambaSection {
  int64_t state_size = 16;  // N
  int64_t expand = 2;       // inner width di = expand * hidden_size
  int64_t conv_kernel = 4;
  bool use_bias = false;  // bias of in_proj and out_proj
  bool use_conv_bias = true;
  int64_t time_step_rank = 0;  // 0: "auto" = ceil(hidden_size / 16)
  double time_step_min = 0.001;
  double time_step_max = 0.1;
  double time_step_floor = 1e-4;
  double time_step_scale = 1.0;
  std::string time_step_init_scheme = "random";
  template <class V>
  void visit(V& v) {
    v("state_size", state_size, "SSM state size N per channel", Range::at_least(1));
    v("expand", expand, "inner width / hidden_size", Range::at_least(1));
    v("conv_kernel", conv_kernel, "causal depthwise conv width", Range::closed(2, 8));
    v("use_bias", use_bias, "bias in in_proj and out_proj");
    v("use_conv_bias", use_conv_bias, "bias in conv1d");
    v("time_step_rank", time_step_rank, "rank of dt_proj (0: ceil(hidden_size / 16))",
      Range::non_negative());
    v("time_step_min", time_step_min, "initial dt drawn log-uniform in [min, max]",
      Range::positive());
    v("time_step_max", time_step_max, "see time_step_min", Range::positive());
    v("time_step_floor", time_step_floor, "initial dt floored at this", Range::positive());
    v("time_step_scale", time_step_scale, "dt_proj.weight init bound = rank^-1/2 * scale",
      Range::positive());
    v("time_step_init_scheme", time_step_init_scheme,
      "dt_proj.weight init: uniform(+-bound) or the constant bound", OneOf{"random", "constant"});
  }
};

// Mamba2's SSD mixer (models/mamba2.h; FLA fla/layers/mamba2.py, Mamba2Config). Heads
// H = expand * hidden_size / head_dim must be whole: FLA's head_dim 64 does not divide
// 2 * 600, so the wikitext103 config sets head_dim 60.
struct Mamba2Section {
  int64_t head_dim = 64;     // P
  int64_t state_size = 128;  // N
  int64_t n_groups = 1;      // G: B and C shared by H/G heads each
  int64_t expand = 2;
  int64_t conv_kernel = 4;
  bool use_bias = false;
  bool use_conv_bias = true;
  bool norm_before_gate = false;  // false: norm(y * silu(z)); true: norm(y) * silu(z)
  double A_init_min = 1.0;        // A_log = log(uniform(A_init_min, A_init_max)) per head
  double A_init_max = 16.0;
  double time_step_min = 0.001;
  double time_step_max = 0.1;
  double time_step_floor = 1e-4;
  bool rescale_prenorm_residual = true;
  int64_t chunk_size = 256;
  template <class V>
  void visit(V& v) {
    v("head_dim", head_dim, "head size P (must divide expand * hidden_size)", Range::at_least(1));
    v("state_size", state_size, "SSM state size N per head", Range::at_least(1));
    v("n_groups", n_groups, "groups of heads sharing B and C (must divide the heads)",
      Range::at_least(1));
    v("expand", expand, "inner width / hidden_size", Range::at_least(1));
    v("conv_kernel", conv_kernel, "causal depthwise conv width", Range::closed(2, 8));
    v("use_bias", use_bias, "bias in in_proj and out_proj");
    v("use_conv_bias", use_conv_bias, "bias in conv1d");
    v("norm_before_gate", norm_before_gate, "gated output norm: norm then gate (else gate first)");
    v("A_init_min", A_init_min, "A_log init: log uniform(A_init_min, A_init_max)",
      Range::positive());
    v("A_init_max", A_init_max, "see A_init_min", Range::positive());
    v("time_step_min", time_step_min, "initial dt drawn log-uniform in [min, max]",
      Range::positive());
    v("time_step_max", time_step_max, "see time_step_min", Range::positive());
    v("time_step_floor", time_step_floor, "initial dt floored at this", Range::positive());
    v("rescale_prenorm_residual", rescale_prenorm_residual,
      "out_proj init kaiming-uniform / sqrt(num_layers) (FLA's Mamba2 default)");
    v("chunk_size", chunk_size, "chunk length of the chunked scan", Range::at_least(1));
  }
};

// Resona retrieval (models/resona.h; ../shared/DESIGN.md "Resona"): a chunk-and-search over
// the input context and a knowledge-integration cross-attention added to the token mixer's
// output of the blocks listed in `layers` (empty: the plain backbone):
//   out_i = y_i + alpha * W_o CrossAttn(q = W_q x_i; keys and values W_k e, W_v e at the
//           positions of the top_k chunks retrieved for i, plus the last local_window)
// x_i is the normed hidden state entering the mixer, y_i the mixer's output, e the token
// embeddings.
struct ResonaSection {
  std::vector<int64_t> layers;
  int64_t chunk_size = 64;
  int64_t top_k = 4;
  int64_t query_block = 1;
  std::string encoder = "shared";
  int64_t num_heads = 4;
  int64_t head_dim = 0;  // 0: hidden_size / num_heads
  int64_t local_window = 0;
  std::string alpha = "fixed";
  double alpha_value = 1.0;
  bool alpha_per_channel = false;
  int64_t search_dim = 0;  // separate encoder: 0 = head_dim
  int64_t lexical_dim = 1024;
  int64_t lexical_ngram = 2;
  std::string mask_source = "online";
  template <class V>
  void visit(V& v) {
    v("layers", layers, "block indices with Resona (empty: none)", Range::non_negative());
    v("chunk_size", chunk_size, "tokens per retrievable chunk c", Range::at_least(1));
    v("top_k", top_k, "chunks retrieved per query k", Range::at_least(1));
    v("query_block", query_block,
      "queries sharing one retrieved set b (1: per token; eligibility at the block's first "
      "position)",
      Range::at_least(1));
    v("encoder", encoder,
      "search encoder: shared (the attention's key projection on both sides), separate (own "
      "projections, score added to the logits), lexical (hashed n-grams of the token ids)",
      OneOf{"shared", "separate", "lexical"});
    v("num_heads", num_heads, "heads of the cross-attention", Range::at_least(1));
    v("head_dim", head_dim, "head size of the cross-attention (0: hidden_size / num_heads)",
      Range::non_negative());
    v("local_window", local_window, "also attend to the last w positions (0: off)",
      Range::non_negative());
    v("alpha", alpha, "mixing weight: fixed alpha_value, or learned sigmoid(w x + b)",
      OneOf{"fixed", "learned"});
    v("alpha_value", alpha_value, "the fixed mixing weight", Range::non_negative());
    v("alpha_per_channel", alpha_per_channel, "learned alpha per channel (else one scalar)");
    v("search_dim", search_dim, "separate encoder's embedding size (0: head_dim)",
      Range::non_negative());
    v("lexical_dim", lexical_dim, "lexical encoder's hashed feature size", Range::at_least(1));
    v("lexical_ngram", lexical_ngram, "lexical encoder's longest n-gram", Range::closed(1, 8));
    v("mask_source", mask_source,
      "online: search in the model; offline: read retrieved chunk ids from data.masks "
      "(written by resona precompute-masks)",
      OneOf{"online", "offline"});
  }
};

struct ModelConfig {
  std::string name = "tiny";
  int64_t vocab_size = 32000;
  int64_t hidden_size = 600;
  int64_t num_layers = 24;
  bool tie_embeddings = true;
  double norm_eps = 0;  // 0: the backbone's FLA default (see the top of this file)
  double init_std = 0.02;
  // SwiGLU width: intermediate_size, or when 0 FLA's rule,
  // int(hidden * hidden_ratio * 2/3) rounded up to a multiple of 256 (tiny: its own rule).
  int64_t hidden_ratio = 0;  // 0: the backbone's FLA default (see the top of this file)
  int64_t intermediate_size = 0;
  TinySection tiny;
  GlaSection gla;
  DeltaNetSection deltanet;
  RetNetSection retnet;
  MambaSection mamba;
  Mamba2Section mamba2;
  ResonaSection resona;

  // norm_eps and hidden_ratio with the backbone's default applied.
  double resolved_norm_eps() const {
    if (norm_eps > 0) return norm_eps;
    return (name == "mamba" || name == "mamba2") ? 1e-5 : 1e-6;
  }
  int64_t resolved_hidden_ratio() const {
    if (hidden_ratio > 0) return hidden_ratio;
    return name == "retnet" ? 2 : 4;
  }

  template <class V>
  void visit(V& v) {
    v("name", name, "backbone", OneOf(backbone_names()));
    v("vocab_size", vocab_size, "vocabulary size", Range::at_least(2));
    v("hidden_size", hidden_size, "model width D", Range::at_least(1));
    v("num_layers", num_layers, "number of blocks", Range::at_least(1));
    v("tie_embeddings", tie_embeddings, "lm_head shares the embedding matrix");
    v("norm_eps", norm_eps, "RMSNorm epsilon (0: 1e-6, mamba/mamba2 1e-5)", Range::non_negative());
    v("init_std", init_std, "std of the normal initialisation", Range::positive());
    v("hidden_ratio", hidden_ratio, "MLP expansion (0: 4, retnet 2)", Range::non_negative());
    v("intermediate_size", intermediate_size, "MLP width (0: from hidden_ratio)",
      Range::non_negative());
    v("tiny", tiny);
    v("gla", gla);
    v("deltanet", deltanet);
    v("retnet", retnet);
    v("mamba", mamba);
    v("mamba2", mamba2);
    v("resona", resona);
  }
};

// Throws naming the key (`model.gla.num_heads: ...`) for settings that are each in range
// but do not fit together (heads that do not divide a width, ...). build_model calls it.
void validate_model_config(const ModelConfig& cfg);

}  // namespace resona::models
