// TaskLoader: batches of a synthetic task's rows (TaskExamples, data/mqar.h) in the
// DataLoader's Batch format, deterministic, sliced by data-parallel rank, with a position
// that checkpoints save and restore exactly.
//
// Row r of the task gives inputs = inputs[r], targets = labels[r] (-100 = ignored) and
// loss_mask = (labels[r] != -100). Epoch e visits the rows in order perm_e: the identity
// without `shuffle` (Zoology's order: each data segment in order), otherwise a permutation
// drawn by a Generator seeded with hash_combine(seed, e) as in DataLoader. Note that
// LoaderConfig's shuffle defaults to true; set it to false for Zoology's order.
//
// Step i of an epoch reads perm_e rows [i·G, (i+1)·G), G = global_batch; rank r of W gets
// the r-th G/W of them. Rows left after the last full global batch of an epoch are not
// used. LoaderConfig::seq_len must equal the task's; mode, add_bos, add_eos and pad_id
// do not apply.
//
// The position goes through LoaderState with mode "task" and dataset_fingerprint =
// task_fingerprint(examples); restoring a state from other data, another loader kind or
// other settings is refused naming the field.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "data/loader.h"
#include "data/mqar.h"

namespace resona::data {

inline constexpr const char* kTaskLoaderMode = "task";

// hash64 of rows, seq_len, the inputs and the labels.
uint64_t task_fingerprint(const TaskExamples& ex);

// Rows [first, first + count) of `ex` in order, as one Batch (epoch and step 0): for
// evaluation over every row, the last partial batch included.
Batch task_rows(const TaskExamples& ex, int64_t first, int64_t count);

class TaskLoader {
 public:
  TaskLoader(std::shared_ptr<const TaskExamples> examples, const LoaderConfig& cfg);

  // The next batch of this rank; moves to the next epoch when one is exhausted.
  Batch next();

  int64_t rows_per_epoch() const { return examples_->rows; }
  int64_t steps_per_epoch() const { return examples_->rows / cfg_.global_batch; }
  const LoaderConfig& config() const { return cfg_; }
  const TaskExamples& examples() const { return *examples_; }

  LoaderState state() const;
  void set_state(const LoaderState& s);

 private:
  void prepare_epoch(int64_t epoch);

  std::shared_ptr<const TaskExamples> examples_;
  LoaderConfig cfg_;
  uint64_t fingerprint_ = 0;
  int64_t epoch_ = 0, step_ = 0;
  int64_t cache_epoch_ = -1;
  std::vector<int64_t> order_;  // row order of cache_epoch_
};

}  // namespace resona::data
