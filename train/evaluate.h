// Perplexity of a language model on a token dataset.
//
// Every document is read in order, each followed by EOS (as in training), into one
// stream cut into rows of T tokens; the last row is padded with ignored targets, so
// every token after the first is predicted exactly once. The negative log-likelihoods
// are float32 per token (the model's logits) summed in float64.
//
//   token perplexity = exp(total NLL / predicted tokens)
//   word perplexity  = exp(total NLL / words), words counted on the detokenized documents
//                      as WikiText counts them: whitespace-separated words plus one <eos>
//                      per line end (the final line of a document included).
#pragma once

#include <cmath>
#include <cstdint>
#include <memory>

#include "data/dataset.h"
#include "data/masks.h"
#include "data/mqar.h"
#include "models/language_model.h"
#include "train/run_data.h"

namespace resona::train {

struct EvalResult {
  int64_t tokens = 0;  // predicted tokens
  int64_t words = 0;   // 0 when the dataset's tokenizer could not be loaded
  double total_nll = 0;
  double mean_nll = 0;
  double token_perplexity() const { return std::exp(mean_nll); }
  double word_perplexity() const { return words > 0 ? std::exp(total_nll / words) : NAN; }
};

// `rows` rows of `seq_len` tokens per forward pass; max_batches 0 evaluates everything
// (word counts then apply; with a limit, word perplexity is not reported).
EvalResult evaluate_perplexity(const models::LanguageModel& model,
                               const std::shared_ptr<const data::TokenDataset>& dataset,
                               int64_t seq_len, int64_t rows, int64_t max_batches = 0);

// Loss and Zoology's accuracy (data/mqar.h) over the rows of a batch source: every row of
// one epoch in order, the rows after the last full batch included (or max_batches full
// batches), predictions argmax of the logits, NLL in
// float32 per labelled position summed in float64. `masks`: the rows' offline retrieval
// (train/run_data.h), or null.
struct RowsEvalResult {
  int64_t tokens = 0;  // labelled positions
  double total_nll = 0, mean_nll = 0;
  data::TaskAccuracy accuracy;
  double token_perplexity() const { return std::exp(mean_nll); }
};
RowsEvalResult evaluate_rows(const models::LanguageModel& model, BatchSource& rows,
                             const data::MaskFile* masks, int64_t max_batches = 0);

// Words in the dataset's documents, WikiText style (see above); needs the tokenizer the
// dataset records.
int64_t count_words(const data::TokenDataset& dataset);

}  // namespace resona::train
