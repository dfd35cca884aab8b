// DataLoader: token documents (a TokenDataset) -> batches of rows of T tokens for
// language-model training, deterministic by seed, sliced by data-parallel rank, with a
// position that checkpoints save and restore exactly.
//
// Epoch e visits the documents in order perm_e (a permutation drawn by a Philox
// Generator seeded with hash_combine(seed, e); the identity without `shuffle`). Each
// document becomes a unit: [BOS] tokens [EOS] (BOS/EOS by config). Then, by `mode`:
//
//   kConcat  the units of the epoch are concatenated into one stream s; global row r is
//            inputs s[rT, rT+T), targets s[rT+1, rT+T+1); every target counts. Rows per
//            epoch: floor((len(s) - 1) / T). Documents cross row boundaries.
//   kPadded  each unit u of length U gives ceil((U-1)/T) rows; row k has inputs
//            u[kT, kT+m) and targets u[kT+1, kT+m+1) with m = min(T, U-1-kT), then
//            padding: input pad_id, target -100, loss mask 0. No row mixes documents.
//
// Step i of an epoch reads global rows [i·G, (i+1)·G), G = global_batch; rank r of W
// gets rows i·G + r·G/W ... i·G + (r+1)·G/W - 1, so the ranks' slices are disjoint and
// together are the global batch. Rows left over after the last full global batch of an
// epoch are not used; the next epoch starts.
//
// The position is (epoch, step of the next batch), in global batches, so that a run
// can resume on another number of ranks with the same global batch. LoaderState also
// records the dataset fingerprint and the settings that shape the stream; restoring a
// state taken with other ones is an error naming the field.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "data/dataset.h"

namespace resona::data {

enum class PackMode { kConcat, kPadded };
PackMode pack_mode_from_name(const std::string& name);  // "concat" or "padded"
const char* pack_mode_name(PackMode m);

inline constexpr int32_t kIgnoreTarget = -100;

struct LoaderConfig {
  int64_t seq_len = 1024;    // T
  int64_t global_batch = 8;  // rows per step over all ranks (G)
  int rank = 0;
  int world_size = 1;
  PackMode mode = PackMode::kConcat;
  bool shuffle = true;
  uint64_t seed = 0;
  bool add_bos = false;
  bool add_eos = true;
  int32_t pad_id = -1;  // kPadded: input id at padding (-1: the EOS id); never a target
};

struct Batch {
  int64_t rows = 0;              // global_batch / world_size
  int64_t seq_len = 0;           // T
  std::vector<int32_t> inputs;   // [rows, T] row-major
  std::vector<int32_t> targets;  // [rows, T]; kIgnoreTarget where loss_mask is 0
  std::vector<float> loss_mask;  // [rows, T]; 1 where the target counts
  int64_t epoch = 0, step = 0;   // where this batch was read
  int64_t target_tokens() const;
};

struct LoaderState {
  int64_t epoch = 0;
  int64_t step = 0;  // the next batch to read
  uint64_t seed = 0;
  uint64_t dataset_fingerprint = 0;
  int64_t seq_len = 0;
  int64_t global_batch = 0;
  std::string mode;
  bool shuffle = true, add_bos = false, add_eos = true;

  bool operator==(const LoaderState& o) const;
  // Throws, naming the key and both values, unless `saved` was written by a loader with
  // this one's seed, seq_len, global_batch, shuffle, add_bos and add_eos (the settings
  // that fix the order of the batches; the dataset and the mode are each loader's own).
  void check_same_settings(const LoaderState& saved) const;
  std::string to_json() const;
  // `what` names the source (e.g. the checkpoint file) in errors.
  static LoaderState from_json(const std::string& text, const std::string& what);
};

class DataLoader {
 public:
  DataLoader(std::shared_ptr<const TokenDataset> dataset, const LoaderConfig& cfg);

  // The next batch of this rank; moves to the next epoch when one is exhausted.
  Batch next();

  int64_t rows_per_epoch() const { return rows_per_epoch_; }
  int64_t steps_per_epoch() const { return rows_per_epoch_ / cfg_.global_batch; }
  const LoaderConfig& config() const { return cfg_; }

  LoaderState state() const;
  void set_state(const LoaderState& s);

  // Global row `row` of epoch `epoch` into [T] buffers (any rank may read any row).
  void read_row(int64_t epoch, int64_t row, int32_t* inputs, int32_t* targets, float* mask);

 private:
  void prepare_epoch(int64_t epoch);
  uint64_t unit_size(uint64_t doc) const;
  // Tokens [begin, begin + count) of document doc's unit.
  void copy_unit(uint64_t doc, uint64_t begin, uint64_t count, int32_t* out) const;

  std::shared_ptr<const TokenDataset> ds_;
  LoaderConfig cfg_;
  int32_t pad_id_ = 0;
  int64_t rows_per_epoch_ = 0;
  int64_t epoch_ = 0, step_ = 0;

  // For the epoch in cache_epoch_: document order, and prefix sums over it of stream
  // tokens (kConcat) or rows (kPadded).
  int64_t cache_epoch_ = -1;
  std::vector<uint64_t> order_;
  std::vector<uint64_t> prefix_;
};

}  // namespace resona::data
