// Synthetic tasks: Zoology's multi-query associative recall (MQAR), task data read from
// .npy files, and Zoology's accuracy.
//
// MQAR (Arora et al. 2023, zoology/data/multiquery_ar.py), the same algorithm as Zoology's
// generator with V = vocab_size, L = seq_len, kv = num_kv_pairs, ctx = 2 kv:
//
//   keys    kv distinct ids drawn uniformly from [1, V/2)       (V/2 rounded down)
//   values  kv distinct ids drawn uniformly from [V/2, V)
//   context positions [0, ctx):  k_1 v_1 k_2 v_2 ... k_kv v_kv
//   gaps    g_1..g_kv distinct in [0, S), S = (L - ctx) / 2, drawn without replacement
//           with p(g) ∝ a (g+1)^(a-1)  (a = power_a; a < 1 favours small gaps)
//   queries input[ctx + 2 g_j] = k_j, label[ctx + 2 g_j] = v_j: at the query key the
//           model must predict its value next. Every other label is -100 (ignored).
//   filler  every other query-region position holds 0, or with random_non_queries a
//           uniform id in [0, V) (which may by chance equal a key; Zoology does the same).
//
// Without-replacement weighted draws are successive: each gap is drawn from the weights of
// the gaps not yet drawn, renormalised. numpy's choice(replace=False, p=...) draws
// batches and discards repeats, which yields the same distribution of ordered samples.
//
// The random numbers come from our Philox Generator (core/rng.h), not NumPy's Mersenne
// Twister, so a seed gives other examples than Zoology's; the distribution is the same.
// Example i is drawn from a Generator seeded with hash_combine(seed, i) (data/hash.h), so
// the first n examples do not depend on num_examples and can be made in parallel.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace resona::data {

struct MqarOptions {
  int64_t vocab_size = 8192, seq_len = 64, num_kv_pairs = 8, num_examples = 1000;
  double power_a = 0.01;
  bool random_non_queries = true;
  uint64_t seed = 0;
};

// Rows of token ids and labels for a sequence task.
struct TaskExamples {
  int64_t rows = 0, seq_len = 0;
  std::vector<int32_t> inputs;  // [rows, seq_len] row-major
  std::vector<int32_t> labels;  // [rows, seq_len]; -100 where nothing is to be predicted
};

// Checks Zoology's conditions (seq_len even, vocab_size > seq_len, 4 num_kv_pairs <=
// seq_len) and ours (positive sizes, power_a > 0, ids fit in int32), each error naming the
// option.
TaskExamples generate_mqar(const MqarOptions& opt);

// Train and test seeds in disjoint halves of [0, 2^64): train_seed(s) < 2^63 <=
// test_seed(s), each a fixed mix of s (Zoology uses disjoint halves of [0, 2^32)).
uint64_t mqar_train_seed(uint64_t seed);
uint64_t mqar_test_seed(uint64_t seed);

// Reads inputs and labels from two .npy files, each [N, L] with N, L > 0 and the same
// shape; inputs in [0, vocab_size), labels in [0, vocab_size) or -100. Errors name the
// file (and the first offending index).
TaskExamples read_task_npy(const std::string& inputs_path, const std::string& labels_path,
                           int64_t vocab_size);
// Writes a TaskExamples as two .npy files of shape [rows, seq_len] ('<i8', or '<i4' when
// int64 is false), each atomically.
void write_task_npy(const TaskExamples& ex, const std::string& inputs_path,
                    const std::string& labels_path, bool int64 = true);

// Zoology's accuracy: for each example, the fraction of its labelled positions (label !=
// -100) where the prediction equals the label; `accuracy` is the mean of that over the
// examples with at least one labelled position (`examples` of them). `correct` and
// `labelled` count positions over all examples (correct / labelled is the per-token
// accuracy).
struct TaskAccuracy {
  double accuracy = 0;
  int64_t examples = 0;
  int64_t correct = 0, labelled = 0;
};

// predictions: [rows, seq_len] argmax ids, matching ex.labels.
TaskAccuracy task_accuracy(const std::vector<int32_t>& predictions, const TaskExamples& ex);

// The same accumulated over batches (and over ranks with merge()); the result does not
// depend on how the rows were split.
class TaskAccuracyMeter {
 public:
  // pred and labels: [rows, seq_len] row-major.
  void add(const int32_t* pred, const int32_t* labels, int64_t rows, int64_t seq_len);
  void merge(const TaskAccuracyMeter& other);
  void reset() { *this = TaskAccuracyMeter(); }
  TaskAccuracy result() const;
  // The sum over counted examples of their accuracy (what merge() adds up).
  double accuracy_sum() const { return sum_; }

 private:
  double sum_ = 0;
  int64_t examples_ = 0, correct_ = 0, labelled_ = 0;
};

}  // namespace resona::data
