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
//
// Precision (train.precision): fp32 computes and stores everything in float32; bf16 (CUDA
// only) keeps float32 master weights and AdamW state and computes in bfloat16, through
// models::MixedPrecision (models/module.h, where the whole scheme is described). The
// checkpoints of both hold the float32 masters, in the same format.
//
// Graceful stop: while a StopSignals object lives (`resona train` holds one), SIGTERM and
// SIGINT (what cluster schedulers send before pre-emption, and Ctrl-C) only record the
// signal. train() looks at the record after every optimizer step: the step that was
// running finishes, a checkpoint of it is written (atomically, like every checkpoint),
// "stopped by signal N at step S; resume with --resume auto" is logged, and train()
// returns with TrainResult::stop_signal = N; the CLI exits with 128 + N (143 for SIGTERM,
// 130 for SIGINT). A signal that comes before this process's first step stops it there,
// writing no checkpoint. More signals while stopping (a second Ctrl-C during the save)
// are counted and otherwise ignored: the save runs to its end, so `latest` names either
// the previous checkpoint or the new one, never a partial one.
//
// Every checkpoint records the binary's source revision (build_revision(),
// train/checkpoint.h), which is also logged at start.
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
  int stop_signal = 0;         // the signal that stopped the run early (0: none)
};

// Runs training; throws resona::Error (bad input: config, data, checkpoint, run folder)
// before anything is written, and NonFiniteError when the run stops on NaN/Inf.
TrainResult train(const RunConfig& cfg, const TrainOptions& opt);

class NonFiniteError : public Error {
 public:
  using Error::Error;
};

// Records SIGTERM and SIGINT for train() while it lives (see "Graceful stop" above). The
// handler only stores the signal number and a count in volatile sig_atomic_t variables,
// which is all an async-signal-safe handler may do; it is installed with SA_RESTART and
// with both signals blocked while it runs. One object at a time.
class StopSignals {
 public:
  StopSignals();   // installs the handlers
  ~StopSignals();  // restores the handlers that were there before and clears the record
  StopSignals(const StopSignals&) = delete;
  StopSignals& operator=(const StopSignals&) = delete;

  // The first signal received while the object lives (0: none, or no object), and how
  // many came.
  static int received();
  static int count();
};

}  // namespace resona::train
