// RunConfig: everything a `resona train` / `eval` / `info` run reads from its YAML
// (plus `a.b.c=value` overrides). Each key is declared once, here or in the section's
// own struct (ModelConfig in models/config.h), with its default, meaning and range.
//
//   model:       the backbone (models/config.h)
//   data:        token datasets written by `resona prepare-data` and packing, or a
//                synthetic task (MQAR) or NumPy arrays; offline retrieval masks
//   optimizer:   AdamW
//   schedule:    learning rate over steps
//   train:       steps, batch, precision, seed, device, logging
//   checkpoint:  where and how often, how many to keep
//   eval:        held-out evaluation during and after training
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/config.h"
#include "models/config.h"

namespace resona::train {

// data.source: mqar -- Zoology's multi-query associative recall (data/mqar.h), generated
// at start from the run's settings: train and test examples from disjoint seeds.
struct MqarDataSection {
  int64_t num_kv_pairs = 8;
  int64_t train_examples = 100000;
  int64_t test_examples = 3000;
  double power_a = 0.01;
  bool random_non_queries = true;
  uint64_t seed = 123;
  template <class V>
  void visit(V& v) {
    v("num_kv_pairs", num_kv_pairs, "key-value pairs per example", Range::at_least(1));
    v("train_examples", train_examples, "training examples", Range::at_least(1));
    v("test_examples", test_examples, "test examples (data.valid's role)", Range::at_least(1));
    v("power_a", power_a, "query gaps drawn with p(i) ~ a i^(a-1)", Range::half_open(0, 1));
    v("random_non_queries", random_non_queries, "random tokens between the queries (else 0)");
    v("seed", seed, "data seed (train and test seeds are derived, disjoint)");
  }
};

// data.source: npy -- token and label arrays [N, T] from NumPy files (labels -100 =
// ignore; position t's label is what the model predicts there, already shifted).
struct NpyDataSection {
  std::string train_inputs, train_labels, valid_inputs, valid_labels;
  template <class V>
  void visit(V& v) {
    v("train_inputs", train_inputs, ".npy of int32/int64 [N, T] training inputs");
    v("train_labels", train_labels, ".npy of int32/int64 [N, T] training labels");
    v("valid_inputs", valid_inputs, ".npy test inputs (empty: none)");
    v("valid_labels", valid_labels, ".npy test labels");
  }
};

struct DataSection {
  std::string source = "tokens";
  std::string train;  // dataset folder (index.json + shards), e.g. OUT/train of prepare-data
  std::string valid;  // optional: held-out dataset folder for evaluation
  int64_t seq_len = 512;
  std::string pack = "concat";
  bool shuffle = true;
  bool add_bos = false;
  bool add_eos = true;
  MqarDataSection mqar;
  NpyDataSection npy;
  std::string masks;
  std::string valid_masks;
  template <class V>
  void visit(V& v) {
    v("source", source,
      "tokens (prepare-data folders), mqar (generated) or npy (input/label arrays)",
      OneOf{"tokens", "mqar", "npy"});
    v("train", train, "training dataset folder (from resona prepare-data)");
    v("valid", valid, "evaluation dataset folder (empty: none)");
    v("seq_len", seq_len, "tokens per row T", Range::at_least(2));
    v("pack", pack, "documents -> rows", OneOf{"concat", "padded"});
    v("shuffle", shuffle, "shuffle documents each epoch (by the run's seed)");
    v("add_bos", add_bos, "prepend BOS to each document");
    v("add_eos", add_eos, "append EOS to each document");
    v("mqar", mqar);
    v("npy", npy);
    v("masks", masks,
      "retrieval mask file of the training rows (resona precompute-masks), read when "
      "model.resona.mask_source is offline");
    v("valid_masks", valid_masks, "the same for the evaluation rows");
  }
};

struct OptimizerSection {
  double lr = 3e-4;
  std::vector<double> betas = {0.9, 0.95};
  double eps = 1e-8;
  double weight_decay = 0.1;
  bool decay_only_matrices = true;
  bool decay_embeddings = false;
  double grad_clip = 1.0;
  template <class V>
  void visit(V& v) {
    v("lr", lr, "peak learning rate", Range::positive());
    v("betas", betas, "AdamW (beta1, beta2)", Range::half_open(0, 1));
    v("eps", eps, "AdamW epsilon", Range::positive());
    v("weight_decay", weight_decay, "decoupled weight decay", Range::non_negative());
    v("decay_only_matrices", decay_only_matrices,
      "no weight decay on norms and biases (1-D parameters)");
    v("decay_embeddings", decay_embeddings, "weight decay on the embedding matrix too");
    v("grad_clip", grad_clip, "clip by global L2 norm (0: off)", Range::non_negative());
  }
};

struct ScheduleSection {
  std::string name = "cosine";
  double warmup_ratio = 0.01;
  double min_lr_ratio = 0.1;
  template <class V>
  void visit(V& v) {
    v("name", name, "lr schedule", OneOf{"cosine", "linear", "constant"});
    v("warmup_ratio", warmup_ratio, "fraction of steps in linear warmup", Range::half_open(0, 1));
    v("min_lr_ratio", min_lr_ratio, "final lr / peak lr", Range::closed(0, 1));
  }
};

struct TrainSection {
  int64_t steps = 1000;
  int64_t batch_size = 8;  // rows per optimizer step, summed over gradient accumulation
  int64_t grad_accum = 1;
  uint64_t seed = 42;
  std::string device = "auto";
  std::string precision = "fp32";
  bool deterministic = false;
  std::string nan_policy = "stop";
  int64_t log_every = 10;
  std::string run_dir = "runs/default";
  template <class V>
  void visit(V& v) {
    v("steps", steps, "optimizer steps", Range::at_least(1));
    v("batch_size", batch_size, "rows per optimizer step (all micro-batches)", Range::at_least(1));
    v("grad_accum", grad_accum, "micro-batches per step", Range::at_least(1));
    v("seed", seed, "initialisation, data order and dropout");
    v("device", device, "where to train", OneOf{"auto", "cpu", "cuda"});
    v("precision", precision, "fp32, or bf16 compute with fp32 master weights (CUDA)",
      OneOf{"fp32", "bf16"});
    v("deterministic", deterministic, "bit-identical reruns (no atomics in reductions)");
    v("nan_policy", nan_policy, "on a non-finite loss or gradient", OneOf{"stop", "skip"});
    v("log_every", log_every, "console/metrics line every N steps", Range::at_least(1));
    v("run_dir", run_dir, "folder for checkpoints, metrics.jsonl and train.log");
  }
};

struct CheckpointSection {
  int64_t every = 100;
  int64_t keep_last = 3;
  template <class V>
  void visit(V& v) {
    v("every", every, "save every N steps (and at the end)", Range::at_least(1));
    v("keep_last", keep_last, "checkpoints kept (older ones deleted)", Range::at_least(1));
  }
};

struct EvalSection {
  int64_t every = 0;
  int64_t batches = 0;
  template <class V>
  void visit(V& v) {
    v("every", every, "evaluate on data.valid every N steps (0: only at the end)",
      Range::non_negative());
    v("batches", batches, "batches per evaluation (0: the whole split)", Range::non_negative());
  }
};

struct RunConfig {
  models::ModelConfig model;
  DataSection data;
  OptimizerSection optimizer;
  ScheduleSection schedule;
  TrainSection train;
  CheckpointSection checkpoint;
  EvalSection eval;
  template <class V>
  void visit(V& v) {
    v("model", model);
    v("data", data);
    v("optimizer", optimizer);
    v("schedule", schedule);
    v("train", train);
    v("checkpoint", checkpoint);
    v("eval", eval);
  }
};

// Reads `path` and applies `overrides` ("a.b.c=value"); throws ConfigError (file, line,
// key path) for anything invalid, including cross-field rules (batch_size divisible by
// grad_accum, ...).
RunConfig load_run_config(const std::string& path, const std::vector<std::string>& overrides = {});
// The same from YAML text (`name` stands for the file in messages).
RunConfig parse_run_config(const std::string& yaml, const std::string& name,
                           const std::vector<std::string>& overrides = {});
// Cross-field checks (also run by the loaders above).
void validate_run_config(const RunConfig& cfg);

}  // namespace resona::train
