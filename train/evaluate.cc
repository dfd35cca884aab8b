#include "train/evaluate.h"

#include <cctype>

#include "autograd/grad_mode.h"
#include "data/tokenizer.h"
#include "ops/loss.h"
#include "ops/reduce.h"

namespace resona::train {

int64_t count_words(const data::TokenDataset& dataset) {
  data::Tokenizer tok = data::Tokenizer::load(dataset.index().tokenizer_path);
  RESONA_CHECK(tok.hash() == dataset.index().tokenizer_hash)
      << dataset.dir() << ": the tokenizer at " << dataset.index().tokenizer_path
      << " is not the one the dataset was made with";
  int64_t words = 0;
  for (uint64_t d = 0; d < dataset.num_docs(); ++d) {
    const std::string text = tok.decode(dataset.doc_tokens(d));
    bool in_word = false;
    for (char c : text) {
      if (c == '\n') ++words;  // the line's <eos>
      const bool space = std::isspace(static_cast<unsigned char>(c));
      if (!space && !in_word) ++words;
      in_word = !space;
    }
    ++words;  // the document's last line end
  }
  return words;
}

EvalResult evaluate_perplexity(const models::LanguageModel& model,
                               const std::shared_ptr<const data::TokenDataset>& dataset,
                               int64_t seq_len, int64_t rows, int64_t max_batches) {
  RESONA_CHECK(seq_len >= 1 && rows >= 1)
      << "evaluate: seq_len " << seq_len << " and rows " << rows << " must be positive";
  NoGradGuard no_grad;
  const std::vector<Tensor> params = model.parameters();
  const Device device = params.empty() ? Device::cpu() : params.front().device();
  const int32_t eos = dataset->eos_id();
  // The stream: documents in order, each followed by EOS.
  std::vector<int32_t> stream;
  stream.reserve(dataset->num_tokens() + dataset->num_docs());
  for (uint64_t d = 0; d < dataset->num_docs(); ++d) {
    const std::vector<int32_t> t = dataset->doc_tokens(d);
    stream.insert(stream.end(), t.begin(), t.end());
    if (eos >= 0) stream.push_back(eos);
  }
  EvalResult r;
  const int64_t n_targets = static_cast<int64_t>(stream.size()) - 1;
  const int64_t n_rows = (n_targets + seq_len - 1) / seq_len;
  int64_t batches = 0;
  for (int64_t row0 = 0; row0 < n_rows; row0 += rows) {
    if (max_batches > 0 && batches == max_batches) break;
    const int64_t nr = std::min(rows, n_rows - row0);
    std::vector<int64_t> ids(nr * seq_len, eos >= 0 ? eos : 0), labels(nr * seq_len, kIgnoreIndex);
    for (int64_t r_ = 0; r_ < nr; ++r_) {
      for (int64_t t = 0; t < seq_len; ++t) {
        const int64_t pos = (row0 + r_) * seq_len + t;
        if (pos >= n_targets) break;
        ids[r_ * seq_len + t] = stream[pos];
        labels[r_ * seq_len + t] = stream[pos + 1];
      }
    }
    Tensor logits = model.forward(copy_to(from_vector(ids, {nr, seq_len}), DType::kInt64, device));
    Tensor nll = cross_entropy(logits.reshape({nr * seq_len, logits.size(2)}),
                               copy_to(from_vector(labels, {nr * seq_len}), DType::kInt64, device),
                               kIgnoreIndex, Reduction::kSum);
    r.total_nll += nll.item();
    for (int64_t v : labels) r.tokens += v != kIgnoreIndex;
    ++batches;
  }
  r.mean_nll = r.tokens > 0 ? r.total_nll / static_cast<double>(r.tokens) : 0.0;
  if (max_batches == 0 || batches * rows >= n_rows) {
    try {
      r.words = count_words(*dataset);
    } catch (const Error&) {
      r.words = 0;  // no tokenizer at hand: token-level only
    }
  }
  return r;
}

RowsEvalResult evaluate_rows(const models::LanguageModel& model, BatchSource& rows,
                             const data::MaskFile* masks, int64_t max_batches) {
  NoGradGuard no_grad;
  const std::vector<Tensor> params = model.parameters();
  const Device device = params.empty() ? Device::cpu() : params.front().device();
  rows.set_state([&] {
    data::LoaderState s = rows.state();
    s.epoch = 0;
    s.step = 0;
    return s;
  }());
  RowsEvalResult r;
  data::TaskAccuracyMeter meter;
  const int64_t steps =
      max_batches > 0 ? std::min(max_batches, rows.steps_per_epoch()) : rows.steps_per_epoch();
  // Every full batch of the epoch (or max_batches of them), then, over the whole epoch,
  // the rows left after the last full batch.
  const auto evaluate = [&](const data::Batch& b, int64_t first_row) {
    // Only the labelled positions count for the loss and the accuracy.
    const BatchLogits bl =
        batch_logits(model, b, batch_chunk_ids(masks, b, device, first_row), device, true);
    if (bl.positions.empty()) return;
    r.total_nll += cross_entropy(bl.logits, bl.labels, kIgnoreIndex, Reduction::kSum).item();
    const std::vector<int64_t> pred = argmax(bl.logits, 1).to(Device::cpu()).to_vector<int64_t>();
    std::vector<int32_t> pred_rows(b.targets.size(), -1);  // -1 matches no label
    for (size_t i = 0; i < pred.size(); ++i)
      pred_rows[bl.positions[i]] = static_cast<int32_t>(pred[i]);
    meter.add(pred_rows.data(), b.targets.data(), b.rows, b.seq_len);
    r.tokens += static_cast<int64_t>(bl.positions.size());
  };
  int64_t next_row = 0;
  for (int64_t i = 0; i < steps; ++i) {
    const data::Batch b = rows.next();
    evaluate(b, next_row);
    next_row += b.rows;
  }
  if (steps == rows.steps_per_epoch()) {
    if (const std::optional<data::Batch> rest = rows.remainder()) evaluate(*rest, next_row);
  }
  r.mean_nll = r.tokens > 0 ? r.total_nll / static_cast<double>(r.tokens) : 0.0;
  r.accuracy = meter.result();
  return r;
}

}  // namespace resona::train
