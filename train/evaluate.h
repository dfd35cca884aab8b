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
#include "models/language_model.h"

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

// Words in the dataset's documents, WikiText style (see above); needs the tokenizer the
// dataset records.
int64_t count_words(const data::TokenDataset& dataset);

}  // namespace resona::train
