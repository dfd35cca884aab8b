// resona make-task: synthetic task data as NumPy .npy files.
//
//   resona make-task mqar --out DIR [--vocab-size 8192] [--seq-len 64] [--num-kv-pairs 8]
//       [--power-a 0.01] [--no-random-non-queries] [--train-examples 100000]
//       [--test-examples 3000] [--seed 123] [--int32] [--force]
//
// writes DIR/train_inputs.npy, DIR/train_labels.npy, DIR/test_inputs.npy and
// DIR/test_labels.npy, each [examples, seq_len] ('<i8', or '<i4' with --int32; labels -100
// where nothing is predicted), each written to a temporary file and renamed. Train and
// test are drawn with mqar_train_seed(seed) and mqar_test_seed(seed) (disjoint seeds; the
// generator is data/mqar.h). A DIR that exists and is not empty is refused unless --force
// (which replaces those four files and leaves anything else in DIR alone).
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>

#include "core/check.h"
#include "data/mqar.h"
#include "train/cli/command.h"

namespace resona::cli {
namespace {

namespace fs = std::filesystem;
using namespace resona::data;

struct MakeTaskOptions {
  std::string out;
  MqarOptions mqar;
  bool no_random_non_queries = false;
  int64_t train_examples = 100000;
  int64_t test_examples = 3000;
  uint64_t seed = 123;
  bool int32 = false;
  bool force = false;
};

// Relative paths are taken from where the user ran the command, also under `bazel run`.
std::string user_path(const std::string& p) {
  if (p.empty() || fs::path(p).is_absolute()) return p;
  if (const char* w = std::getenv("BUILD_WORKING_DIRECTORY")) return (fs::path(w) / p).string();
  return p;
}

int run_mqar(const MakeTaskOptions& o) {
  const std::string dir = user_path(o.out);
  RESONA_CHECK(o.train_examples > 0 && o.test_examples > 0)
      << "--train-examples and --test-examples must be positive, got " << o.train_examples
      << " and " << o.test_examples;
  MqarOptions base = o.mqar;
  base.random_non_queries = !o.no_random_non_queries;
  std::error_code ec;
  if (fs::exists(dir, ec)) {
    RESONA_CHECK(fs::is_directory(dir, ec)) << "--out " << dir << ": exists and is not a folder";
    RESONA_CHECK(o.force || fs::is_empty(dir, ec))
        << "--out " << dir << ": the folder is not empty (pass --force to replace the task files)";
  }
  // Check every option before creating anything.
  MqarOptions train = base, test = base;
  train.num_examples = o.train_examples;
  train.seed = mqar_train_seed(o.seed);
  test.num_examples = o.test_examples;
  test.seed = mqar_test_seed(o.seed);
  MqarOptions probe = base;
  probe.num_examples = 1;
  generate_mqar(probe);

  std::printf(
      "make-task mqar: vocab_size=%lld seq_len=%lld num_kv_pairs=%lld power_a=%g "
      "random_non_queries=%s seed=%llu (train seed %llu, test seed %llu) -> %s\n",
      static_cast<long long>(base.vocab_size), static_cast<long long>(base.seq_len),
      static_cast<long long>(base.num_kv_pairs), base.power_a,
      base.random_non_queries ? "true" : "false", static_cast<unsigned long long>(o.seed),
      static_cast<unsigned long long>(train.seed), static_cast<unsigned long long>(test.seed),
      dir.c_str());
  std::fflush(stdout);
  fs::create_directories(dir, ec);
  RESONA_CHECK(!ec) << "--out " << dir << ": cannot create the folder: " << ec.message();
  for (const auto& [name, opt] : {std::pair{"train", train}, std::pair{"test", test}}) {
    const TaskExamples ex = generate_mqar(opt);
    const std::string inputs = dir + "/" + name + "_inputs.npy";
    const std::string labels = dir + "/" + name + "_labels.npy";
    write_task_npy(ex, inputs, labels, !o.int32);
    std::printf("%s: %lld examples x %lld tokens -> %s, %s\n", name,
                static_cast<long long>(ex.rows), static_cast<long long>(ex.seq_len), inputs.c_str(),
                labels.c_str());
    std::fflush(stdout);
  }
  return 0;
}

std::function<int()> setup_make_task(CLI::App& cmd) {
  auto o = std::make_shared<MakeTaskOptions>();
  cmd.require_subcommand(1);
  CLI::App* mq = cmd.add_subcommand(
      "mqar",
      "Zoology's multi-query associative recall: key-value pairs, then queries of the keys at "
      "power-law distributed gaps; the label at a query key is its value");
  mq->add_option("--out", o->out, "Output folder (created; must be empty unless --force)")
      ->required();
  mq->add_option("--vocab-size", o->mqar.vocab_size,
                 "Vocabulary size V: keys from [1, V/2), values from [V/2, V); V > seq-len")
      ->capture_default_str();
  mq->add_option("--seq-len", o->mqar.seq_len, "Sequence length L (even)")->capture_default_str();
  mq->add_option("--num-kv-pairs", o->mqar.num_kv_pairs,
                 "Key-value pairs per example, all queried (4 * pairs <= L)")
      ->capture_default_str();
  mq->add_option("--power-a", o->mqar.power_a, "Gap distribution p(g) ∝ a (g+1)^(a-1), a > 0")
      ->capture_default_str();
  mq->add_flag("--no-random-non-queries", o->no_random_non_queries,
               "Leave 0 at positions that are not queries (default: uniform random ids)");
  mq->add_option("--train-examples", o->train_examples, "Training examples")->capture_default_str();
  mq->add_option("--test-examples", o->test_examples, "Test examples")->capture_default_str();
  mq->add_option("--seed", o->seed, "Seed; train and test use disjoint seeds derived from it")
      ->capture_default_str();
  mq->add_flag("--int32", o->int32, "Write '<i4' arrays (default '<i8', like torch.int64)");
  mq->add_flag("--force", o->force, "Write into a non-empty folder, replacing the task files");
  return [o]() -> int { return run_mqar(*o); };
}

}  // namespace

RESONA_COMMAND(make_task, "make-task",
               "Generate synthetic task data (MQAR) as NumPy .npy inputs and labels",
               setup_make_task);

}  // namespace resona::cli
