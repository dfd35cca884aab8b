#include "data/mqar.h"

#include <cmath>
#include <limits>
#include <unordered_map>

#include "core/check.h"
#include "core/rng.h"
#include "data/hash.h"
#include "data/loader.h"
#include "data/npy.h"

namespace resona::data {

namespace {

// k distinct integers drawn uniformly from [lo, hi), in draw order: the first k steps of
// a Fisher-Yates shuffle of lo..hi-1, with the swapped-out entries kept in a map so that
// the cost is O(k), not O(hi - lo).
void sample_distinct(Generator& g, int64_t lo, int64_t hi, int64_t k, int32_t* out) {
  const int64_t n = hi - lo;
  RESONA_CHECK(k <= n) << "sample_distinct: " << k << " values from a range of " << n;
  std::unordered_map<int64_t, int64_t> moved;  // position -> value, where not the identity
  auto at = [&](int64_t i) {
    auto it = moved.find(i);
    return it == moved.end() ? i : it->second;
  };
  for (int64_t j = 0; j < k; ++j) {
    const int64_t r = g.next_int(j, n);
    const int64_t vr = at(r);
    moved[r] = at(j);
    out[j] = static_cast<int32_t>(lo + vr);
  }
}

// k distinct indices of `weights` (all positive) drawn one after another, each with
// probability proportional to its weight among those not drawn yet.
void sample_weighted_distinct(Generator& g, std::vector<double> weights, int64_t k, int64_t* out) {
  double total = 0;
  for (double w : weights) total += w;
  const int64_t n = static_cast<int64_t>(weights.size());
  for (int64_t j = 0; j < k; ++j) {
    const double u = g.next_double() * total;
    int64_t pick = -1;
    double acc = 0;
    for (int64_t i = 0; i < n; ++i) {
      if (weights[i] == 0) continue;
      pick = i;  // rounding can leave u >= the sum: then the last remaining index
      acc += weights[i];
      if (u < acc) break;
    }
    RESONA_CHECK(pick >= 0) << "sample_weighted_distinct: nothing left to draw";
    out[j] = pick;
    total -= weights[pick];
    weights[pick] = 0;
  }
}

// splitmix64's finaliser: a bijection of 64-bit integers that mixes every bit.
uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

}  // namespace

TaskExamples generate_mqar(const MqarOptions& o) {
  const int64_t V = o.vocab_size, L = o.seq_len, kv = o.num_kv_pairs;
  RESONA_CHECK(o.num_examples > 0) << "mqar: num_examples must be positive, got " << o.num_examples;
  RESONA_CHECK(L > 0 && L % 2 == 0) << "mqar: seq_len must be even and positive, got " << L;
  RESONA_CHECK(V > L) << "mqar: vocab_size (" << V << ") must be larger than seq_len (" << L << ")";
  RESONA_CHECK(V <= std::numeric_limits<int32_t>::max())
      << "mqar: vocab_size " << V << " does not fit in int32 token ids";
  RESONA_CHECK(kv > 0) << "mqar: num_kv_pairs must be positive, got " << kv;
  RESONA_CHECK(4 * kv <= L) << "mqar: 4 * num_kv_pairs (" << 4 * kv << ") must be at most seq_len ("
                            << L
                            << "): the keys and values take 2 * num_kv_pairs positions and "
                               "the queries need as many gaps";
  RESONA_CHECK(o.power_a > 0 && std::isfinite(o.power_a))
      << "mqar: power_a must be positive, got " << o.power_a;
  RESONA_CHECK(o.num_examples <= std::numeric_limits<int64_t>::max() / L)
      << "mqar: num_examples * seq_len overflows";

  const int64_t ctx = 2 * kv;
  const int64_t half = V / 2;
  const int64_t space = (L - ctx) / 2;
  // p(g) ∝ a (g+1)^(a-1) for g in [0, space); the constant a cancels but is kept to read
  // like the definition.
  std::vector<double> p(static_cast<size_t>(space));
  for (int64_t g = 0; g < space; ++g) {
    p[g] = o.power_a * std::pow(static_cast<double>(g + 1), o.power_a - 1);
  }

  TaskExamples ex;
  ex.rows = o.num_examples;
  ex.seq_len = L;
  ex.inputs.assign(static_cast<size_t>(ex.rows * L), 0);
  ex.labels.assign(static_cast<size_t>(ex.rows * L), kIgnoreTarget);
  std::vector<int32_t> keys(kv), values(kv);
  std::vector<int64_t> gaps(kv);
  for (int64_t e = 0; e < ex.rows; ++e) {
    Generator g(hash_combine(o.seed, static_cast<uint64_t>(e)));
    sample_distinct(g, 1, half, kv, keys.data());
    sample_distinct(g, half, V, kv, values.data());
    sample_weighted_distinct(g, p, kv, gaps.data());
    int32_t* in = &ex.inputs[e * L];
    int32_t* lab = &ex.labels[e * L];
    for (int64_t j = 0; j < kv; ++j) {
      in[2 * j] = keys[j];
      in[2 * j + 1] = values[j];
      in[ctx + 2 * gaps[j]] = keys[j];
      lab[ctx + 2 * gaps[j]] = values[j];
    }
    if (o.random_non_queries) {
      // Keys and values are never 0, so the zeros are exactly the filler positions.
      for (int64_t t = ctx; t < L; ++t) {
        if (in[t] == 0) in[t] = static_cast<int32_t>(g.next_int(0, V));
      }
    }
  }
  return ex;
}

uint64_t mqar_train_seed(uint64_t seed) { return mix64(seed) >> 1; }
uint64_t mqar_test_seed(uint64_t seed) {
  return (mix64(seed + 0x9E3779B97F4A7C15ull) >> 1) | (1ull << 63);
}

TaskExamples read_task_npy(const std::string& inputs_path, const std::string& labels_path,
                           int64_t vocab_size) {
  RESONA_CHECK(vocab_size > 0 && vocab_size <= std::numeric_limits<int32_t>::max())
      << "read_task_npy: vocab_size " << vocab_size << " is not in [1, 2^31)";
  const NpyArray in = read_npy(inputs_path);
  const NpyArray lab = read_npy(labels_path);
  auto shape_text = [](const std::vector<int64_t>& s) {
    std::string t = "[";
    for (size_t i = 0; i < s.size(); ++i) t += (i ? ", " : "") + std::to_string(s[i]);
    return t + "]";
  };
  RESONA_CHECK(in.shape.size() == 2 && in.shape[0] > 0 && in.shape[1] > 0)
      << inputs_path << ": task inputs must be a non-empty [examples, seq_len] array, got shape "
      << shape_text(in.shape);
  RESONA_CHECK(lab.shape == in.shape)
      << labels_path << ": task labels have shape " << shape_text(lab.shape) << ", the inputs ("
      << inputs_path << ") " << shape_text(in.shape);
  TaskExamples ex;
  ex.rows = in.shape[0];
  ex.seq_len = in.shape[1];
  ex.inputs.resize(in.values.size());
  ex.labels.resize(lab.values.size());
  for (size_t i = 0; i < in.values.size(); ++i) {
    const int64_t v = in.values[i];
    RESONA_CHECK(v >= 0 && v < vocab_size)
        << inputs_path << ": token id " << v << " at [" << i / ex.seq_len << ", " << i % ex.seq_len
        << "] is outside the vocabulary [0, " << vocab_size << ")";
    ex.inputs[i] = static_cast<int32_t>(v);
  }
  for (size_t i = 0; i < lab.values.size(); ++i) {
    const int64_t v = lab.values[i];
    RESONA_CHECK(v == kIgnoreTarget || (v >= 0 && v < vocab_size))
        << labels_path << ": label " << v << " at [" << i / ex.seq_len << ", " << i % ex.seq_len
        << "] is neither -100 (ignored) nor in the vocabulary [0, " << vocab_size << ")";
    ex.labels[i] = static_cast<int32_t>(v);
  }
  return ex;
}

void write_task_npy(const TaskExamples& ex, const std::string& inputs_path,
                    const std::string& labels_path, bool int64) {
  const size_t n = static_cast<size_t>(ex.rows * ex.seq_len);
  RESONA_CHECK(ex.inputs.size() == n && ex.labels.size() == n)
      << "write_task_npy: " << ex.rows << " x " << ex.seq_len << " examples hold "
      << ex.inputs.size() << " inputs and " << ex.labels.size() << " labels";
  write_npy(inputs_path, {ex.rows, ex.seq_len},
            std::vector<int64_t>(ex.inputs.begin(), ex.inputs.end()), int64);
  write_npy(labels_path, {ex.rows, ex.seq_len},
            std::vector<int64_t>(ex.labels.begin(), ex.labels.end()), int64);
}

void TaskAccuracyMeter::add(const int32_t* pred, const int32_t* labels, int64_t rows,
                            int64_t seq_len) {
  RESONA_CHECK(rows >= 0 && seq_len > 0)
      << "TaskAccuracyMeter: bad batch shape [" << rows << ", " << seq_len << "]";
  for (int64_t r = 0; r < rows; ++r) {
    int64_t n = 0, c = 0;
    for (int64_t t = 0; t < seq_len; ++t) {
      const int64_t i = r * seq_len + t;
      if (labels[i] == kIgnoreTarget) continue;
      ++n;
      c += pred[i] == labels[i];
    }
    if (n == 0) continue;  // Zoology skips examples with nothing to predict (a 0/0 mean)
    sum_ += static_cast<double>(c) / static_cast<double>(n);
    ++examples_;
    correct_ += c;
    labelled_ += n;
  }
}

void TaskAccuracyMeter::merge(const TaskAccuracyMeter& o) {
  sum_ += o.sum_;
  examples_ += o.examples_;
  correct_ += o.correct_;
  labelled_ += o.labelled_;
}

TaskAccuracy TaskAccuracyMeter::result() const {
  TaskAccuracy a;
  a.examples = examples_;
  a.correct = correct_;
  a.labelled = labelled_;
  a.accuracy = examples_ > 0 ? sum_ / static_cast<double>(examples_) : 0.0;
  return a;
}

TaskAccuracy task_accuracy(const std::vector<int32_t>& predictions, const TaskExamples& ex) {
  RESONA_CHECK(static_cast<int64_t>(predictions.size()) == ex.rows * ex.seq_len &&
               static_cast<int64_t>(ex.labels.size()) == ex.rows * ex.seq_len)
      << "task_accuracy: predictions hold " << predictions.size() << " ids and labels "
      << ex.labels.size() << ", expected [" << ex.rows << ", " << ex.seq_len << "]";
  TaskAccuracyMeter m;
  m.add(predictions.data(), ex.labels.data(), ex.rows, ex.seq_len);
  return m.result();
}

}  // namespace resona::data
