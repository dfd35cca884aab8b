// The rows a run trains and evaluates on, whatever `data.source` says (train/run_config.h):
//
//   tokens  prepare-data folders (data/dataset.h) read by the DataLoader (data/loader.h):
//           next-token prediction over packed rows; evaluation: perplexity.
//   mqar    Zoology's MQAR (data/mqar.h), generated at start: data.mqar.train_examples
//           from the train seed, test_examples from the disjoint test seed, T = data.seq_len,
//           V = model.vocab_size; evaluation: loss and accuracy over the test examples.
//   npy     input/label arrays from .npy files (data/npy.h), as mqar otherwise.
//
// Tasks are read by the TaskLoader (data/task_loader.h); both loaders give data::Batch
// rows and a LoaderState that checkpoints keep. With model.resona.mask_source offline,
// the rows' retrieved chunk ids come from data.masks / data.valid_masks (data/masks.h):
// the file must have been computed from exactly these rows and the model's settings.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "core/tensor.h"
#include "data/dataset.h"
#include "data/loader.h"
#include "data/masks.h"
#include "data/mqar.h"
#include "models/language_model.h"
#include "train/run_config.h"

namespace resona::train {

struct RunData {
  std::shared_ptr<const data::TokenDataset> train_tokens, valid_tokens;
  std::shared_ptr<const data::TaskExamples> train_task, valid_task;
  std::shared_ptr<const data::MaskFile> train_masks, valid_masks;
  bool is_task() const { return train_task != nullptr; }
  bool has_valid() const { return valid_tokens != nullptr || valid_task != nullptr; }
};

// Opens (or generates) everything data.* names and checks it against the model: ids below
// model.vocab_size, sequence lengths, and mask files against the loader rows and
// model.resona. Throws naming the key or file.
// with_masks false: leave the mask files unread (what precompute-masks itself needs).
RunData open_run_data(const RunConfig& cfg, bool with_masks = true);

// Rows of one split, in the order of one unshuffled epoch, batched `rows` at a time.
class BatchSource {
 public:
  virtual ~BatchSource() = default;
  virtual data::Batch next() = 0;
  virtual int64_t steps_per_epoch() const = 0;
  virtual data::LoaderState state() const = 0;
  virtual void set_state(const data::LoaderState& s) = 0;
  // The rows an epoch leaves after its last full batch (fewer than a batch), as one
  // batch whose first row is the global row steps_per_epoch() * rows, so that an
  // evaluation covers every row; none when the epoch divides evenly. Task rows only:
  // token sources return none (their rows are cut from a stream).
  virtual std::optional<data::Batch> remainder() const { return std::nullopt; }
};

// The training rows (valid = false) or the evaluation rows (valid = true, never shuffled).
std::unique_ptr<BatchSource> make_batch_source(const RunConfig& cfg, const RunData& d, int64_t rows,
                                               bool valid);

// The mask header a model with cfg.model.resona expects for the rows of `rows` (a source
// from make_batch_source; rows left 0). Its source hash is the dataset or task
// fingerprint and the settings that shape the rows, read from the source's state.
data::MaskHeader expected_mask_header(const RunConfig& cfg, const BatchSource& rows);

// The chunk ids of a batch's rows from `masks` (int32 [rows, NQ, top_k] on `device`), or
// undefined without masks. Batch row j is the global row first_row + j of an unshuffled
// epoch; first_row -1 means step * rows (every batch of next()).
Tensor batch_chunk_ids(const data::MaskFile* masks, const data::Batch& b, Device device,
                       int64_t first_row = -1);

// A batch's logits and labels as the loss sees them: [n, vocab] and int64 [n] on `device`.
// Token batches (most positions labelled): every position, n = rows * T. Task batches
// (labels at a few query positions): only the labelled positions, whose hidden states are
// gathered before the lm_head, so no [rows, T, vocab] logits are formed; the summed loss
// is the same. `positions` lists the flat row * T + t of each of the n rows.
struct BatchLogits {
  Tensor logits, labels;
  std::vector<int64_t> positions;
};
BatchLogits batch_logits(const models::LanguageModel& model, const data::Batch& b,
                         const Tensor& chunk_ids, Device device, bool labelled_only);

}  // namespace resona::train
