#include "data/task_loader.h"

#include <algorithm>

#include "core/check.h"
#include "core/rng.h"
#include "data/hash.h"

namespace resona::data {

namespace {

void check_examples(const TaskExamples& ex, const char* who) {
  RESONA_CHECK(ex.rows > 0 && ex.seq_len > 0)
      << who << ": the task has shape [" << ex.rows << ", " << ex.seq_len
      << "], expected at least one row of at least one token";
  const size_t n = static_cast<size_t>(ex.rows * ex.seq_len);
  RESONA_CHECK(ex.inputs.size() == n && ex.labels.size() == n)
      << who << ": the task's inputs (" << ex.inputs.size() << ") and labels (" << ex.labels.size()
      << ") must each hold rows * seq_len = " << n << " ids";
}

// Row `row` of `ex` into the [T] buffers of a batch.
void copy_row(const TaskExamples& ex, int64_t row, int32_t* inputs, int32_t* targets, float* mask) {
  const int64_t T = ex.seq_len;
  const int32_t* in = &ex.inputs[row * T];
  const int32_t* lab = &ex.labels[row * T];
  std::copy(in, in + T, inputs);
  std::copy(lab, lab + T, targets);
  for (int64_t t = 0; t < T; ++t) mask[t] = lab[t] != kIgnoreTarget ? 1.0f : 0.0f;
}

Batch empty_batch(int64_t rows, int64_t T) {
  Batch b;
  b.rows = rows;
  b.seq_len = T;
  b.inputs.resize(rows * T);
  b.targets.resize(rows * T);
  b.loss_mask.resize(rows * T);
  return b;
}

}  // namespace

uint64_t task_fingerprint(const TaskExamples& ex) {
  uint64_t h = hash_combine(static_cast<uint64_t>(ex.rows), static_cast<uint64_t>(ex.seq_len));
  h = hash64(ex.inputs.data(), ex.inputs.size() * sizeof(int32_t), h);
  return hash64(ex.labels.data(), ex.labels.size() * sizeof(int32_t), h);
}

Batch task_rows(const TaskExamples& ex, int64_t first, int64_t count) {
  check_examples(ex, "task_rows");
  RESONA_CHECK(first >= 0 && count >= 0 && first + count <= ex.rows)
      << "task_rows: rows [" << first << ", " << first + count << ") of a task of " << ex.rows;
  Batch b = empty_batch(count, ex.seq_len);
  const int64_t T = ex.seq_len;
  for (int64_t j = 0; j < count; ++j) {
    copy_row(ex, first + j, &b.inputs[j * T], &b.targets[j * T], &b.loss_mask[j * T]);
  }
  return b;
}

TaskLoader::TaskLoader(std::shared_ptr<const TaskExamples> examples, const LoaderConfig& cfg)
    : examples_(std::move(examples)), cfg_(cfg) {
  RESONA_CHECK(examples_ != nullptr) << "TaskLoader: no examples";
  check_examples(*examples_, "TaskLoader");
  RESONA_CHECK(cfg_.seq_len == examples_->seq_len)
      << "task loader: seq_len " << cfg_.seq_len << " differs from the task's sequence length "
      << examples_->seq_len;
  RESONA_CHECK(cfg_.world_size > 0 && cfg_.rank >= 0 && cfg_.rank < cfg_.world_size)
      << "task loader: rank " << cfg_.rank << " is not in [0, world_size=" << cfg_.world_size
      << ")";
  RESONA_CHECK(cfg_.global_batch > 0 && cfg_.global_batch % cfg_.world_size == 0)
      << "task loader: global_batch " << cfg_.global_batch
      << " must be a positive multiple of world_size " << cfg_.world_size;
  RESONA_CHECK(steps_per_epoch() > 0)
      << "task loader: " << examples_->rows << " rows, fewer than one global batch of "
      << cfg_.global_batch;
  fingerprint_ = task_fingerprint(*examples_);
}

void TaskLoader::prepare_epoch(int64_t epoch) {
  if (cache_epoch_ == epoch) return;
  if (cfg_.shuffle) {
    Generator g(hash_combine(cfg_.seed, static_cast<uint64_t>(epoch)));
    order_ = g.permutation(examples_->rows);
  } else {
    order_.resize(examples_->rows);
    for (int64_t i = 0; i < examples_->rows; ++i) order_[i] = i;
  }
  cache_epoch_ = epoch;
}

Batch TaskLoader::next() {
  if (step_ >= steps_per_epoch()) {
    ++epoch_;
    step_ = 0;
  }
  prepare_epoch(epoch_);
  const int64_t T = examples_->seq_len;
  Batch b = empty_batch(cfg_.global_batch / cfg_.world_size, T);
  b.epoch = epoch_;
  b.step = step_;
  const int64_t first = step_ * cfg_.global_batch + cfg_.rank * b.rows;
  for (int64_t j = 0; j < b.rows; ++j) {
    copy_row(*examples_, order_[first + j], &b.inputs[j * T], &b.targets[j * T],
             &b.loss_mask[j * T]);
  }
  ++step_;
  return b;
}

LoaderState TaskLoader::state() const {
  LoaderState s;
  s.epoch = epoch_;
  s.step = step_;
  s.seed = cfg_.seed;
  s.dataset_fingerprint = fingerprint_;
  s.seq_len = cfg_.seq_len;
  s.global_batch = cfg_.global_batch;
  s.mode = kTaskLoaderMode;
  s.shuffle = cfg_.shuffle;
  s.add_bos = false;  // the task's rows are used as they are
  s.add_eos = false;
  return s;
}

void TaskLoader::set_state(const LoaderState& s) {
  const LoaderState mine = state();
  RESONA_CHECK(s.mode == mine.mode) << "data loader position was saved with mode = " << s.mode
                                    << ", this loader reads a task (mode = " << mine.mode << ")";
  RESONA_CHECK(s.dataset_fingerprint == mine.dataset_fingerprint)
      << "data loader position was saved on other task data (dataset_fingerprint "
      << hex64(s.dataset_fingerprint) << ", this task's rows have "
      << hex64(mine.dataset_fingerprint) << ")";
  mine.check_same_settings(s);
  RESONA_CHECK(s.epoch >= 0 && s.step >= 0 && s.step <= steps_per_epoch())
      << "data loader position (epoch " << s.epoch << ", step " << s.step
      << ") is outside an epoch of " << steps_per_epoch() << " steps";
  epoch_ = s.epoch;
  step_ = s.step;
}

}  // namespace resona::data
