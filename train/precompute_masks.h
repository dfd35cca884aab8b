// The offline half of Resona's chunk-and-search (`resona precompute-masks`): for every row
// a run reads (data.*, one unshuffled epoch, train/run_data.h), the chunk ids its Resona
// layers would retrieve with model.resona's chunk_size, top_k and query_block, written as
// a mask file (data/masks.h) that training reads with model.resona.mask_source: offline.
//
// Encoders:
//   lexical    the model's own lexical encoder (ops/resona.h lexical_features with
//              model.resona.lexical_dim and lexical_ngram): the masks equal what a model
//              with encoder lexical retrieves online, bit for bit (tested).
//   embedding  the token embeddings of a checkpoint: query = e_i, chunk = mean of e over
//              the chunk, cosine top-k under the same causal rule.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "core/tensor.h"
#include "data/masks.h"
#include "train/run_config.h"

namespace resona::train {

struct PrecomputeOptions {
  bool valid = false;  // the evaluation rows instead of the training rows
  std::string encoder = "lexical";
  Tensor embedding;  // [V, D] float, for encoder "embedding"
  int64_t rows_per_batch = 64;
  // Called after each batch with (rows done, rows in all); may print progress.
  std::function<void(int64_t, int64_t)> progress;
};

struct PrecomputeResult {
  data::MaskHeader header;
  int64_t rows = 0;
  double seconds = 0;
};

// Computes the masks and writes them to `out` atomically.
PrecomputeResult precompute_masks(const RunConfig& cfg, const PrecomputeOptions& opt,
                                  const std::string& out);

}  // namespace resona::train
