// MQAR: the structure of every example, the gap distribution against its float64
// definition, determinism and seeds, the option checks, .npy task files, and Zoology's
// accuracy against hand-computed values.
#include "data/mqar.h"

#include <cmath>
#include <map>
#include <set>

#include "data/npy.h"
#include "tests/data/data_paths.h"

namespace resona::testing {
namespace {

using namespace resona::data;

MqarOptions opts(int64_t V, int64_t L, int64_t kv, int64_t n, uint64_t seed = 5,
                 bool random_non_queries = true, double a = 0.01) {
  MqarOptions o;
  o.vocab_size = V;
  o.seq_len = L;
  o.num_kv_pairs = kv;
  o.num_examples = n;
  o.seed = seed;
  o.random_non_queries = random_non_queries;
  o.power_a = a;
  return o;
}

// The gap of each key of example e, in key order (checks the example's structure on the
// way; see the header for what it must be).
std::vector<int64_t> check_example(const TaskExamples& ex, const MqarOptions& o, int64_t e) {
  const int64_t V = o.vocab_size, L = o.seq_len, kv = o.num_kv_pairs, ctx = 2 * kv;
  const int32_t* in = &ex.inputs[e * L];
  const int32_t* lab = &ex.labels[e * L];
  std::map<int32_t, int64_t> key_index;
  std::set<int32_t> values;
  for (int64_t j = 0; j < kv; ++j) {
    REQUIRE(in[2 * j] >= 1);
    REQUIRE(in[2 * j] < V / 2);
    REQUIRE(in[2 * j + 1] >= V / 2);
    REQUIRE(in[2 * j + 1] < V);
    REQUIRE(key_index.emplace(in[2 * j], j).second);  // keys distinct
    REQUIRE(values.insert(in[2 * j + 1]).second);     // values distinct
    REQUIRE(lab[2 * j] == -100);
    REQUIRE(lab[2 * j + 1] == -100);
  }
  std::vector<int64_t> gap(kv, -1);
  for (int64_t t = ctx; t < L; ++t) {
    if (lab[t] == -100) {
      if (!o.random_non_queries) REQUIRE(in[t] == 0);
      REQUIRE(in[t] >= 0);
      REQUIRE(in[t] < V);
      continue;
    }
    REQUIRE((t - ctx) % 2 == 0);  // queries sit at ctx + 2 g
    auto it = key_index.find(in[t]);
    REQUIRE(it != key_index.end());  // the query is a key of the context ...
    const int64_t j = it->second;
    REQUIRE(lab[t] == in[2 * j + 1]);  // ... labelled with that key's value
    REQUIRE(gap[j] == -1);             // each key queried once
    gap[j] = (t - ctx) / 2;
  }
  for (int64_t j = 0; j < kv; ++j) REQUIRE(gap[j] >= 0);  // every key queried
  return gap;
}

TEST_CASE("mqar: every example has Zoology's structure") {
  for (const MqarOptions& o :
       {opts(64, 32, 4, 200, 1, false), opts(64, 32, 8, 200, 2, true), opts(8192, 64, 8, 100, 3),
        opts(101, 100, 25, 50, 4, false), opts(33, 4, 1, 50, 5)}) {
    INFO("V=" << o.vocab_size << " L=" << o.seq_len << " kv=" << o.num_kv_pairs
              << " random_non_queries=" << o.random_non_queries);
    const TaskExamples ex = generate_mqar(o);
    REQUIRE(ex.rows == o.num_examples);
    REQUIRE(ex.seq_len == o.seq_len);
    REQUIRE(ex.inputs.size() == static_cast<size_t>(o.num_examples * o.seq_len));
    REQUIRE(ex.labels.size() == ex.inputs.size());
    for (int64_t e = 0; e < ex.rows; ++e) check_example(ex, o, e);
  }
}

TEST_CASE("mqar: filler ids are uniform in [0, V) with random_non_queries") {
  const MqarOptions o = opts(1000, 64, 4, 2000);
  const TaskExamples ex = generate_mqar(o);
  double sum = 0;
  int64_t n = 0, low = 0;
  for (int64_t e = 0; e < ex.rows; ++e) {
    for (int64_t t = 8; t < 64; ++t) {
      const int64_t i = e * 64 + t;
      if (ex.labels[i] != -100) continue;
      sum += ex.inputs[i];
      low += ex.inputs[i] < 500;
      ++n;
    }
  }
  REQUIRE(n == 2000 * (56 - 4));
  // Uniform on 0..999: mean 499.5, sd 288.7; over n = 104000 draws the mean's sd is 0.9.
  CHECK(std::abs(sum / n - 499.5) < 5);
  CHECK(std::abs(static_cast<double>(low) / n - 0.5) < 0.01);
}

// P(first gap = g) = p_g and P(second gap = g) = sum_{i != g} p_i p_g / (1 - p_i) for
// successive sampling with p_g ∝ a (g+1)^(a-1); the empirical frequencies over n examples
// must be within 5 binomial standard deviations.
void check_gap_distribution(double a) {
  const int64_t V = 1024, L = 64, kv = 4, space = (L - 2 * kv) / 2, n = 20000;
  const MqarOptions o = opts(V, L, kv, n, 11, false, a);
  const TaskExamples ex = generate_mqar(o);
  std::vector<double> p(space);
  double z = 0;
  for (int64_t g = 0; g < space; ++g) z += p[g] = a * std::pow(g + 1.0, a - 1.0);
  for (double& x : p) x /= z;
  std::vector<double> second(space, 0.0);
  for (int64_t g = 0; g < space; ++g) {
    for (int64_t i = 0; i < space; ++i) {
      if (i != g) second[g] += p[i] * p[g] / (1 - p[i]);
    }
  }
  // The gaps of keys 0 and 1 (the structure is checked by the test above; plain loops
  // here keep 2 x 20000 examples fast).
  std::vector<int64_t> c0(space, 0), c1(space, 0);
  int64_t found = 0;
  for (int64_t e = 0; e < n; ++e) {
    const int32_t* in = &ex.inputs[e * L];
    const int32_t* lab = &ex.labels[e * L];
    for (int64_t t = 2 * kv; t < L; t += 2) {
      if (lab[t] == -100) continue;
      const int64_t g = (t - 2 * kv) / 2;
      if (in[t] == in[0] && lab[t] == in[1]) ++c0[g], ++found;
      if (in[t] == in[2] && lab[t] == in[3]) ++c1[g], ++found;
    }
  }
  REQUIRE(found == 2 * n);
  for (int64_t g = 0; g < space; ++g) {
    INFO("a=" << a << " gap " << g);
    for (auto [count, prob] : {std::pair{c0[g], p[g]}, std::pair{c1[g], second[g]}}) {
      const double f = static_cast<double>(count) / n;
      CHECK(std::abs(f - prob) <= 5 * std::sqrt(prob * (1 - prob) / n) + 1e-12);
    }
  }
}

TEST_CASE("mqar: gaps follow the power law without replacement (small gaps favoured)") {
  check_gap_distribution(0.01);
  check_gap_distribution(1.0);  // uniform
  // The skew itself: with a = 0.01, gap 0 is ~27x as likely as gap 27 as a first draw.
  const TaskExamples ex = generate_mqar(opts(1024, 64, 4, 5000, 3, false));
  int64_t first0 = 0, first27 = 0;
  for (int64_t e = 0; e < ex.rows; ++e) {
    const int32_t* lab = &ex.labels[e * 64];
    first0 += lab[8] != -100;
    first27 += lab[8 + 54] != -100;
  }
  CHECK(first0 > 5 * first27);
}

TEST_CASE("mqar: deterministic by seed; the first n examples do not depend on num_examples") {
  const TaskExamples a = generate_mqar(opts(512, 64, 8, 300, 9));
  const TaskExamples b = generate_mqar(opts(512, 64, 8, 300, 9));
  CHECK(a.inputs == b.inputs);
  CHECK(a.labels == b.labels);
  const TaskExamples c = generate_mqar(opts(512, 64, 8, 300, 10));
  CHECK(a.inputs != c.inputs);
  const TaskExamples d = generate_mqar(opts(512, 64, 8, 100, 9));
  CHECK(std::equal(d.inputs.begin(), d.inputs.end(), a.inputs.begin()));
  CHECK(std::equal(d.labels.begin(), d.labels.end(), a.labels.begin()));
  // Different examples within one set.
  CHECK(!std::equal(a.inputs.begin(), a.inputs.begin() + 64, a.inputs.begin() + 64));
}

TEST_CASE("mqar: train and test seeds come from disjoint halves and give different data") {
  std::set<uint64_t> seen;
  for (uint64_t s : {uint64_t{0}, uint64_t{1}, uint64_t{123}, uint64_t{1} << 63, ~uint64_t{0}}) {
    const uint64_t tr = mqar_train_seed(s), te = mqar_test_seed(s);
    CHECK(tr < (uint64_t{1} << 63));
    CHECK(te >= (uint64_t{1} << 63));
    CHECK(tr == mqar_train_seed(s));
    CHECK(te == mqar_test_seed(s));
    CHECK(seen.insert(tr).second);
    CHECK(seen.insert(te).second);
  }
  MqarOptions o = opts(512, 64, 8, 50);
  o.seed = mqar_train_seed(123);
  const TaskExamples train = generate_mqar(o);
  o.seed = mqar_test_seed(123);
  const TaskExamples test = generate_mqar(o);
  std::set<std::vector<int32_t>> rows;
  for (int64_t e = 0; e < 50; ++e) {
    rows.insert({train.inputs.begin() + e * 64, train.inputs.begin() + (e + 1) * 64});
  }
  for (int64_t e = 0; e < 50; ++e) {
    CHECK(rows.count({test.inputs.begin() + e * 64, test.inputs.begin() + (e + 1) * 64}) == 0);
  }
}

TEST_CASE("mqar: bad options are refused naming the option") {
  check_throws_with([] { generate_mqar(opts(128, 63, 4, 1)); }, {"seq_len must be even", "63"});
  check_throws_with([] { generate_mqar(opts(64, 64, 4, 1)); },
                    {"vocab_size (64) must be larger than seq_len (64)"});
  check_throws_with([] { generate_mqar(opts(128, 64, 17, 1)); },
                    {"4 * num_kv_pairs (68) must be at most seq_len (64)"});
  check_throws_with([] { generate_mqar(opts(128, 64, 0, 1)); }, {"num_kv_pairs must be positive"});
  check_throws_with([] { generate_mqar(opts(128, 64, 4, 0)); }, {"num_examples must be positive"});
  check_throws_with([] { generate_mqar(opts(128, 64, 4, 1, 0, true, 0.0)); },
                    {"power_a must be positive"});
  check_throws_with([] { generate_mqar(opts(int64_t{1} << 32, 64, 4, 1)); },
                    {"vocab_size 4294967296 does not fit in int32"});
  // The boundary cases Zoology allows.
  CHECK_NOTHROW(generate_mqar(opts(65, 64, 16, 3)));
}

TEST_CASE("mqar: tasks through .npy files, and the checks of read_task_npy") {
  const std::string dir = fresh_temp_dir("mqar_npy");
  const TaskExamples ex = generate_mqar(opts(256, 32, 4, 10));
  for (bool int64 : {true, false}) {
    write_task_npy(ex, dir + "/in.npy", dir + "/lab.npy", int64);
    const TaskExamples back = read_task_npy(dir + "/in.npy", dir + "/lab.npy", 256);
    CHECK(back.rows == 10);
    CHECK(back.seq_len == 32);
    CHECK(back.inputs == ex.inputs);
    CHECK(back.labels == ex.labels);
  }
  const std::string in = dir + "/in.npy", lab = dir + "/lab.npy";
  check_throws_with([&] { read_task_npy(in, lab, 200); }, {in, "outside the vocabulary [0, 200)"});
  write_npy(dir + "/lab_short.npy", {10, 31}, std::vector<int64_t>(310, -100));
  check_throws_with([&] { read_task_npy(in, dir + "/lab_short.npy", 256); },
                    {dir + "/lab_short.npy", "have shape [10, 31]", "[10, 32]"});
  std::vector<int64_t> bad(320, -100);
  bad[37] = -1;
  write_npy(dir + "/lab_bad.npy", {10, 32}, bad);
  check_throws_with([&] { read_task_npy(in, dir + "/lab_bad.npy", 256); },
                    {dir + "/lab_bad.npy", "label -1 at [1, 5]", "neither -100"});
  write_npy(dir + "/flat.npy", {320}, std::vector<int64_t>(320, 1));
  check_throws_with([&] { read_task_npy(dir + "/flat.npy", lab, 256); },
                    {dir + "/flat.npy", "[examples, seq_len]", "got shape [320]"});
  write_npy(dir + "/empty.npy", {0, 32}, {});
  check_throws_with([&] { read_task_npy(dir + "/empty.npy", dir + "/empty.npy", 256); },
                    {dir + "/empty.npy", "non-empty"});
  check_throws_with([&] { read_task_npy(dir + "/none.npy", lab, 256); },
                    {dir + "/none.npy", "cannot open"});
}

TEST_CASE("mqar: Zoology's accuracy, per example then averaged, against hand-computed values") {
  // 4 examples of 4 positions. Example 0: 1 of 2 right; 1: nothing labelled (skipped);
  // 2: 3 of 3; 3: 0 of 1. Accuracy (1/2 + 1 + 0) / 3 = 0.5; per token 4 / 6.
  TaskExamples ex;
  ex.rows = 4;
  ex.seq_len = 4;
  ex.labels = {-100, 5,    -100, 7,  //
               -100, -100, -100, -100, 1, 2, 3, -100, 9, -100, -100, -100};
  ex.inputs.assign(16, 0);
  const std::vector<int32_t> pred = {5, 5, 7, 8,  //
                                     1, 1, 1, 1,  //
                                     1, 2, 3, 4,  //
                                     8, 9, 9, 9};
  const TaskAccuracy a = task_accuracy(pred, ex);
  CHECK(a.accuracy == doctest::Approx(0.5).epsilon(1e-15));
  CHECK(a.examples == 3);
  CHECK(a.correct == 4);
  CHECK(a.labelled == 6);
  // Batches of 1 and 3 rows, and two meters merged, give the same.
  TaskAccuracyMeter m1, m2;
  m1.add(pred.data(), ex.labels.data(), 1, 4);
  m2.add(pred.data() + 4, ex.labels.data() + 4, 3, 4);
  TaskAccuracyMeter m = m1;
  m.merge(m2);
  const TaskAccuracy b = m.result();
  CHECK(b.accuracy == doctest::Approx(0.5).epsilon(1e-15));
  CHECK(b.examples == 3);
  CHECK(b.correct == 4);
  CHECK(b.labelled == 6);
  CHECK(m1.result().accuracy == doctest::Approx(0.5));
  CHECK(m2.result().accuracy == doctest::Approx(0.5));  // (1 + 0) / 2
  m.reset();
  CHECK(m.result().examples == 0);
  CHECK(m.result().accuracy == 0);
  // Perfect predictions score 1, a shift by one scores 0.
  const TaskExamples task = generate_mqar(opts(256, 32, 4, 20));
  std::vector<int32_t> perfect(task.labels.size()), wrong(task.labels.size());
  for (size_t i = 0; i < perfect.size(); ++i) {
    perfect[i] = task.labels[i] == -100 ? 0 : task.labels[i];
    wrong[i] = perfect[i] + 1;
  }
  CHECK(task_accuracy(perfect, task).accuracy == 1.0);
  CHECK(task_accuracy(perfect, task).labelled == 20 * 4);
  CHECK(task_accuracy(wrong, task).accuracy == 0.0);
  check_throws_with([&] { task_accuracy(std::vector<int32_t>(15), ex); },
                    {"predictions hold 15 ids", "[4, 4]"});
}

}  // namespace
}  // namespace resona::testing
