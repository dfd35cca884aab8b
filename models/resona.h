// The Resona layer: chunk-and-search over the input context and a knowledge-integration
// cross-attention, added to the token mixer's output of a block (../shared/DESIGN.md,
// "Resona"; the settings are model.resona in models/config.h).
//
// For a sequence of T tokens with embeddings e [B, T, D] (the embedding matrix's output)
// and the normed hidden state x [B, T, D] entering the block's mixer:
//   1. chunks: chunk j covers positions [j c, (j+1) c); NC = floor(T / c) (a trailing
//      partial chunk is never complete before any position, so never retrievable).
//   2. search (ops/resona.h chunk_search): per query block of b positions, the top_k
//      chunks by cosine similarity among those entirely at or before the block's first
//      position. Embeddings, by `encoder`:
//        shared    one encoder for both sides, the attention's key projection W_k
//                  (trained through the attention; the search itself passes no
//                  gradient): query = mean over heads of W_k x, chunk = mean over the
//                  chunk of the mean over heads of W_k e. One map on both sides makes
//                  the untrained search a similarity of like with like (at layer 0, x is
//                  the normed embedding, so a query finds the chunks holding its own
//                  token from the first step); with W_q on the query side instead, two
//                  independent random maps start the search at chance and nothing
//                  trains them to agree (on MQAR, T=128, 2 layers, top-1, 400 CPU steps:
//                  test accuracy 0.0005 with W_q, 0.80 with W_k, 0.93 after 1,000). At a
//                  deeper layer x is no longer like e, and neither map learns MQAR there
//                  (layer 2 of 4: 0.0006 after 750 steps); the lexical encoder does;
//        separate  query = W_qs x, chunk = mean over the chunk of W_ks e; the cosine of
//                  each retrieved chunk is added to the attention logits of its
//                  positions, so W_qs and W_ks receive gradient;
//        lexical   hashed bags of token n-grams (no parameters), identical to what
//                  `resona precompute-masks` computes offline.
//      With mask_source offline the chunk ids come from the batch (a mask file) instead.
//   3. cross-attention (ops/resona.h chunk_attention): q = W_q x, k = W_k e, v = W_v e in
//      H heads of size dh; each position attends to the k c positions of its retrieved
//      chunks plus the last local_window positions; o = W_o concat_heads(.).
//   4. mixing: the block adds alpha * o to the mixer's output, alpha = alpha_value
//      (fixed) or sigmoid(W_alpha x + b_alpha) (learned; one scalar or D channels).
//
// Parameters (under model.layers.{i}.resona): q_proj [H dh, D], k_proj [H dh, D],
// v_proj [H dh, D], o_proj [D, H dh] (no biases); separate: q_search [E, D] and
// k_search [E, D]; learned alpha: alpha_proj [1 or D, D] + bias, all ~ normal(0,
// init_std) (bias 0), drawn from a generator of the layer's own (models/blocks.h), so a
// backbone with Resona starts from the same backbone weights as without it.
#pragma once

#include <memory>

#include "models/config.h"
#include "models/module.h"

namespace resona::models {

// What the Resona layers of a forward pass read besides their block's input.
struct ResonaInputs {
  Tensor embeddings;  // e [B, T, D]
  Tensor ids;         // [B, T] token ids (the lexical encoder)
  Tensor chunk_ids;   // int32 [B, NQ, top_k] read offline, or undefined (search online)
};

class ResonaLayer : public Module {
 public:
  ResonaLayer(const ModelConfig& cfg, Generator& gen);
  // x [B, T, D] -> alpha * o [B, T, D], the term the block adds to its mixer's output.
  Tensor forward(const Tensor& x, const ResonaInputs& in) const;
  // The chunk ids this layer retrieves for x [B, T, D] (int32 [B, NQ, top_k], -1 for
  // none): the search of step 2 alone (the lexical encoder reads only in.ids and x's shape).
  Tensor search(const Tensor& x, const ResonaInputs& in) const;

 private:
  // Retrieved ids and, with the separate encoder, the differentiable logit bias
  // [B, NQ, top_k]. k: the attention's keys W_k e [B, T, H, dh] (the shared encoder's
  // chunk side; undefined for the other encoders).
  struct Retrieval {
    Tensor chunk_ids, bias;
  };
  Retrieval retrieve(const Tensor& x, const Tensor& k, const ResonaInputs& in) const;

  ResonaSection opt_;
  int64_t hidden_, heads_, head_dim_;
  Linear q_proj_, k_proj_, v_proj_, o_proj_;
  std::unique_ptr<Linear> q_search_, k_search_;  // separate encoder
  std::unique_ptr<Linear> alpha_proj_;           // learned alpha
};

// Mean over each complete chunk of c positions: x [B, T, E] -> [B, floor(T / c), E].
Tensor chunk_means(const Tensor& x, int64_t c);

// The lexical encoder's search (what the layer does online and `resona precompute-masks`
// offline): ids [B, T] on the CPU -> chunk ids int32 [B, NQ, top_k] on the CPU.
Tensor lexical_search(const Tensor& ids, const ResonaSection& opt);

// The same search over given embeddings: query = emb_i, chunk = mean of emb over the
// chunk (`resona precompute-masks --encoder embedding`). emb [B, T, E].
Tensor embedding_search(const Tensor& emb, const ResonaSection& opt);

// Throws naming the key (model.resona.*) when the settings do not fit the model.
void validate_resona_config(const ModelConfig& cfg);

// True when block `layer` has a Resona layer.
bool has_resona(const ModelConfig& cfg, int64_t layer);

}  // namespace resona::models
