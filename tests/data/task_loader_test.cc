// TaskLoader: rows in order (or shuffled per epoch), targets and loss mask from the labels,
// rank slices, leftover rows dropped, exact resume, and refusal of a position saved on
// other data or settings.
#include "data/task_loader.h"

#include <algorithm>
#include <set>

#include "data/hash.h"
#include "tests/data/data_paths.h"

namespace resona::testing {
namespace {

using namespace resona::data;

// Row r: inputs 1000 r + t, labels -100 at even t and 1000 r + t + 1 at odd t, so every
// id names its row and position.
std::shared_ptr<const TaskExamples> numbered(int64_t rows, int64_t T) {
  auto ex = std::make_shared<TaskExamples>();
  ex->rows = rows;
  ex->seq_len = T;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t t = 0; t < T; ++t) {
      ex->inputs.push_back(static_cast<int32_t>(1000 * r + t));
      ex->labels.push_back(t % 2 == 0 ? -100 : static_cast<int32_t>(1000 * r + t + 1));
    }
  }
  return ex;
}

LoaderConfig config(int64_t T, int64_t G, bool shuffle = false, int rank = 0, int world = 1) {
  LoaderConfig c;
  c.seq_len = T;
  c.global_batch = G;
  c.shuffle = shuffle;
  c.seed = 17;
  c.rank = rank;
  c.world_size = world;
  return c;
}

int64_t row_of(const Batch& b, int64_t j) { return b.inputs[j * b.seq_len] / 1000; }

bool same(const Batch& a, const Batch& b) {
  return a.rows == b.rows && a.inputs == b.inputs && a.targets == b.targets &&
         a.loss_mask == b.loss_mask && a.epoch == b.epoch && a.step == b.step;
}

TEST_CASE(
    "task loader: rows in order, targets = labels, mask = labels != -100, leftovers dropped") {
  auto ex = numbered(10, 6);
  TaskLoader l(ex, config(6, 3));
  CHECK(l.steps_per_epoch() == 3);  // 10 rows: 3 batches of 3, row 9 unused
  for (int64_t epoch = 0; epoch < 2; ++epoch) {
    for (int64_t step = 0; step < 3; ++step) {
      const Batch b = l.next();
      CHECK(b.epoch == epoch);
      CHECK(b.step == step);
      REQUIRE(b.rows == 3);
      REQUIRE(b.seq_len == 6);
      for (int64_t j = 0; j < 3; ++j) {
        const int64_t r = 3 * step + j;
        for (int64_t t = 0; t < 6; ++t) {
          const int64_t i = j * 6 + t;
          CHECK(b.inputs[i] == ex->inputs[r * 6 + t]);
          CHECK(b.targets[i] == ex->labels[r * 6 + t]);
          CHECK(b.loss_mask[i] == (t % 2 == 1 ? 1.0f : 0.0f));
        }
      }
      CHECK(b.target_tokens() == 9);
    }
  }
  // Every row for evaluation, the last partial batch included.
  const Batch all = task_rows(*ex, 8, 2);
  CHECK(all.rows == 2);
  CHECK(row_of(all, 0) == 8);
  CHECK(row_of(all, 1) == 9);
  CHECK(std::equal(all.targets.begin(), all.targets.end(), ex->labels.begin() + 8 * 6));
  check_throws_with([&] { task_rows(*ex, 8, 3); }, {"rows [8, 11) of a task of 10"});
}

TEST_CASE("task loader: shuffle draws a permutation per epoch from the seed") {
  auto ex = numbered(12, 4);
  TaskLoader a(ex, config(4, 4, true)), b(ex, config(4, 4, true));
  std::vector<std::vector<int64_t>> orders;
  for (int64_t epoch = 0; epoch < 3; ++epoch) {
    std::vector<int64_t> order;
    for (int64_t s = 0; s < 3; ++s) {
      const Batch x = a.next(), y = b.next();
      CHECK(same(x, y));
      for (int64_t j = 0; j < 4; ++j) order.push_back(row_of(x, j));
    }
    std::vector<int64_t> sorted = order;
    std::sort(sorted.begin(), sorted.end());
    for (int64_t i = 0; i < 12; ++i) CHECK(sorted[i] == i);
    orders.push_back(order);
  }
  CHECK(orders[0] != orders[1]);
  CHECK(orders[1] != orders[2]);
  LoaderConfig other = config(4, 4, true);
  other.seed = 18;
  TaskLoader c(ex, other);
  std::vector<int64_t> order_c;
  for (int64_t s = 0; s < 3; ++s) {
    const Batch x = c.next();
    for (int64_t j = 0; j < 4; ++j) order_c.push_back(row_of(x, j));
  }
  CHECK(order_c != orders[0]);
}

TEST_CASE("task loader: rank slices are disjoint and together the global batch") {
  auto ex = numbered(25, 5);
  for (bool shuffle : {false, true}) {
    TaskLoader whole(ex, config(5, 8, shuffle));
    std::vector<std::unique_ptr<TaskLoader>> ranks;
    for (int r = 0; r < 4; ++r) {
      ranks.push_back(std::make_unique<TaskLoader>(ex, config(5, 8, shuffle, r, 4)));
    }
    for (int64_t s = 0; s < 7; ++s) {  // crosses two epochs of 3 steps
      const Batch g = whole.next();
      for (int r = 0; r < 4; ++r) {
        const Batch b = ranks[r]->next();
        REQUIRE(b.rows == 2);
        CHECK(b.epoch == g.epoch);
        CHECK(b.step == g.step);
        CHECK(std::equal(b.inputs.begin(), b.inputs.end(), g.inputs.begin() + r * 2 * 5));
        CHECK(std::equal(b.targets.begin(), b.targets.end(), g.targets.begin() + r * 2 * 5));
      }
    }
  }
}

TEST_CASE("task loader: a restored position continues exactly, also on other rank counts") {
  auto ex = numbered(30, 4);
  for (bool shuffle : {false, true}) {
    TaskLoader straight(ex, config(4, 4, shuffle));
    std::vector<Batch> expect;
    for (int i = 0; i < 20; ++i) expect.push_back(straight.next());
    for (int stop : {0, 1, 6, 7, 13}) {
      TaskLoader first(ex, config(4, 4, shuffle));
      for (int i = 0; i < stop; ++i) CHECK(same(first.next(), expect[i]));
      const std::string saved = first.state().to_json();
      const LoaderState s = LoaderState::from_json(saved, "trainer_state.json");
      CHECK(s == first.state());
      CHECK(s.mode == "task");
      TaskLoader resumed(ex, config(4, 4, shuffle));
      resumed.set_state(s);
      for (int i = stop; i < 20; ++i) CHECK(same(resumed.next(), expect[i]));
      // Two ranks resumed from the same position read the halves of the same batches.
      TaskLoader r1(ex, config(4, 4, shuffle, 1, 2));
      r1.set_state(s);
      for (int i = stop; i < stop + 5; ++i) {
        const Batch b = r1.next();
        CHECK(std::equal(b.inputs.begin(), b.inputs.end(), expect[i].inputs.begin() + 2 * 4));
      }
    }
  }
}

TEST_CASE("task loader: a position from other data or settings is refused naming the field") {
  auto ex = numbered(16, 4);
  TaskLoader l(ex, config(4, 4));
  l.next();
  const LoaderState s = l.state();

  auto changed = numbered(16, 4);
  std::const_pointer_cast<TaskExamples>(changed)->labels[5] = 3;  // one label differs
  TaskLoader other_data(changed, config(4, 4));
  check_throws_with([&] { other_data.set_state(s); },
                    {"dataset_fingerprint " + hex64(s.dataset_fingerprint), "other task data"});
  CHECK(task_fingerprint(*changed) != task_fingerprint(*ex));

  TaskLoader other_batch(ex, config(4, 2));
  check_throws_with([&] { other_batch.set_state(s); }, {"global_batch = 4", "global_batch = 2"});
  TaskLoader shuffled(ex, config(4, 4, true));
  check_throws_with([&] { shuffled.set_state(s); }, {"shuffle = 0", "shuffle = 1"});
  LoaderState seed = s;
  seed.seed = 99;
  check_throws_with([&] { l.set_state(seed); }, {"seed = 99"});
  LoaderState concat = s;
  concat.mode = "concat";
  check_throws_with([&] { l.set_state(concat); }, {"mode = concat", "reads a task"});
  LoaderState past = s;
  past.step = 5;
  check_throws_with([&] { l.set_state(past); }, {"step 5", "epoch of 4 steps"});
  // The loader is untouched by the refusals.
  CHECK(l.state() == s);
}

TEST_CASE("task loader: bad configurations are refused") {
  auto ex = numbered(6, 4);
  check_throws_with([&] { TaskLoader x(ex, config(8, 2)); },
                    {"seq_len 8 differs from the task's sequence length 4"});
  check_throws_with([&] { TaskLoader x(ex, config(4, 7)); },
                    {"6 rows, fewer than one global batch of 7"});
  check_throws_with([&] { TaskLoader x(ex, config(4, 3, false, 0, 2)); },
                    {"global_batch 3 must be a positive multiple of world_size 2"});
  check_throws_with([&] { TaskLoader x(ex, config(4, 2, false, 2, 2)); },
                    {"rank 2 is not in [0, world_size=2)"});
  auto broken = std::make_shared<TaskExamples>(*ex);
  broken->labels.pop_back();
  check_throws_with([&] { TaskLoader x(broken, config(4, 2)); }, {"labels (23)"});
}

}  // namespace
}  // namespace resona::testing
