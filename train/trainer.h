// The training loop behind `resona train`.
//
// One step: read grad_accum micro-batches (batch_size / grad_accum rows each) from the
// data loader, count their target tokens N, and for each micro-batch backpropagate
// sum(cross-entropy) / N, so the accumulated gradient is exactly that of the mean loss
// over the whole batch; then check the loss and gradient norm are finite, clip, set
// the lr for this step, and take one AdamW step.
//
// A non-finite loss or gradient stops the run (exit code 1, nothing written) or, with
// train.nan_policy: skip, discards the step's gradients and continues; a checkpoint is
// never written from non-finite weights.
//
// Exact resume: a checkpoint holds the weights, AdamW's moments and step count, the data
// loader's position and the RNG states, so N steps, stop, resume, M steps gives the same
// loss bits and weights as N + M steps straight (on the CPU; on a GPU in deterministic
// mode).
//
// Output in train.run_dir: checkpoints/ (train/checkpoint.h), metrics.jsonl (one JSON
// object per logged step: step, loss, lr, grad_norm, tokens, tokens_per_s, elapsed_s,
// mfu on a GPU with a known peak, and eval_loss/eval_ppl when evaluated), train.log (the console
// lines), config.yaml (the resolved config of the latest start). MFU = 6 N (tokens/s) / peak, N
// every parameter, peak the dense matrix-unit rate of the run's precision (TF32 for fp32, BF16 for
// bf16) from a table of H100/H200/A100.
#pragma once

#include <cmath>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/check.h"
#include "train/run_config.h"

namespace resona::train {

struct TrainOptions {
  // "none": start fresh (refused when the run folder already has checkpoints);
  // "auto": the latest valid checkpoint of the run folder, or fresh when there is none;
  // anything else: that checkpoint folder.
  std::string resume = "none";
  bool allow_config_change = false;
  // Stop after this many steps in this process (0: run to train.steps); for tests.
  int64_t stop_after = 0;
  bool quiet = false;  // no console output (the log file and metrics are still written)
};

struct TrainResult {
  int64_t steps_done = 0;      // the run's step count at the end
  double last_loss = 0;        // the last step's mean loss
  std::vector<double> losses;  // the mean loss of each step this process ran
  std::string last_checkpoint;
  double eval_loss = NAN;      // the last evaluation's mean loss (NaN: none ran)
  double eval_accuracy = NAN;  // and its task accuracy (tasks only)
};

// Runs training; throws resona::Error (bad input: config, data, checkpoint, run folder)
// before anything is written, and NonFiniteError when the run stops on NaN/Inf.
TrainResult train(const RunConfig& cfg, const TrainOptions& opt);

class NonFiniteError : public Error {
 public:
  using Error::Error;
};

}  // namespace resona::train
