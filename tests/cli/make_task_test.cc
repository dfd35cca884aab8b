// `resona make-task mqar` end to end: the four .npy files hold exactly what the library
// generates for the derived train and test seeds; a non-empty folder is refused unless
// --force; bad options exit with code 2 and create nothing.
#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>

#include <filesystem>
#include <tuple>

#include "data/mqar.h"
#include "tests/data/data_paths.h"

extern char** environ;

namespace resona::testing {
namespace {

namespace fs = std::filesystem;
using namespace resona::data;

std::string resona_path() {
  for (const char* var : {"TEST_SRCDIR", "RUNFILES_DIR"}) {
    const char* d = std::getenv(var);
    if (d && fs::exists(fs::path(d) / "resona/train/resona")) {
      return (fs::path(d) / "resona/train/resona").string();
    }
  }
  return "bazel-bin/train/resona";
}

struct Run {
  int code;
  std::string output;
};

// Runs `resona args...` with stdout and stderr captured.
Run resona(const std::vector<std::string>& args, const std::string& log) {
  std::vector<std::string> full = {resona_path()};
  full.insert(full.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : full) argv.push_back(a.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 1, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_adddup2(&fa, 1, 2);
  pid_t pid = -1;
  REQUIRE(posix_spawn(&pid, argv[0], &fa, nullptr, argv.data(), environ) == 0);
  posix_spawn_file_actions_destroy(&fa);
  int status = 0;
  REQUIRE(waitpid(pid, &status, 0) == pid);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status), slurp(log)};
}

TEST_CASE("resona make-task mqar: writes the library's train and test sets as .npy") {
  const std::string root = fresh_temp_dir("make_task");
  const std::string log = root + "/log.txt";
  const std::string out = root + "/mqar";
  const std::vector<std::string> args = {
      "make-task",      "mqar", "--out",  out, "--vocab-size",     "128", "--seq-len",       "32",
      "--num-kv-pairs", "4",    "--seed", "5", "--train-examples", "40",  "--test-examples", "10"};
  Run r = resona(args, log);
  INFO(r.output);
  REQUIRE(r.code == 0);
  MqarOptions o;
  o.vocab_size = 128;
  o.seq_len = 32;
  o.num_kv_pairs = 4;
  for (const auto& [split, n, seed] :
       {std::tuple{"train", 40, mqar_train_seed(5)}, std::tuple{"test", 10, mqar_test_seed(5)}}) {
    const std::string prefix = out + "/" + split;
    const TaskExamples got = read_task_npy(prefix + "_inputs.npy", prefix + "_labels.npy", 128);
    o.num_examples = n;
    o.seed = seed;
    const TaskExamples want = generate_mqar(o);
    CHECK(got.rows == n);
    CHECK(got.seq_len == 32);
    CHECK(got.inputs == want.inputs);
    CHECK(got.labels == want.labels);
    CHECK(slurp(prefix + "_inputs.npy").find("'descr': '<i8'") != std::string::npos);
  }
  // The folder is no longer empty: refused, then replaced with --force (and --int32).
  Run again = resona(args, log);
  CHECK(again.code == 2);
  CHECK(again.output.find("not empty (pass --force") != std::string::npos);
  std::vector<std::string> forced = args;
  forced.insert(forced.end(), {"--force", "--int32"});
  CHECK(resona(forced, log).code == 0);
  CHECK(slurp(out + "/test_labels.npy").find("'descr': '<i4'") != std::string::npos);
  int files = 0;
  for (const auto& e : fs::directory_iterator(out)) files += e.is_regular_file();
  CHECK(files == 4);  // no temporary files left
}

TEST_CASE("resona make-task: bad options exit with code 2, name the problem, create nothing") {
  const std::string root = fresh_temp_dir("make_task_bad");
  const std::string log = root + "/log.txt";
  const std::string out = root + "/never";
  struct Case {
    std::vector<std::string> args;
    const char* message;
  };
  const std::vector<Case> cases = {
      {{"--seq-len", "31"}, "seq_len must be even"},
      {{"--seq-len", "abc"}, "--seq-len"},
      {{"--vocab-size", "64"}, "vocab_size (64) must be larger than seq_len (64)"},
      {{"--num-kv-pairs", "17"}, "4 * num_kv_pairs (68)"},
      {{"--power-a", "0"}, "power_a must be positive"},
      {{"--train-examples", "0"}, "--train-examples and --test-examples must be positive"},
      {{"--no-such-option"}, "--no-such-option"},
  };
  for (const Case& c : cases) {
    std::vector<std::string> args = {"make-task", "mqar", "--out", out};
    args.insert(args.end(), c.args.begin(), c.args.end());
    Run r = resona(args, log);
    INFO(c.message << ": exit " << r.code << ", output:\n" << r.output);
    CHECK(r.code == 2);
    CHECK(r.output.find(c.message) != std::string::npos);
    CHECK(!fs::exists(out));
  }
  Run missing = resona({"make-task", "mqar"}, log);
  CHECK(missing.code == 2);
  CHECK(missing.output.find("--out is required") != std::string::npos);
  Run no_task = resona({"make-task"}, log);
  CHECK(no_task.code == 2);
  Run help = resona({"make-task", "mqar", "--help"}, log);
  CHECK(help.code == 0);
  for (const char* opt : {"--out", "--vocab-size", "--seq-len", "--num-kv-pairs", "--power-a",
                          "--no-random-non-queries", "--train-examples", "--test-examples",
                          "--seed", "--int32", "--force"}) {
    CHECK_MESSAGE(help.output.find(opt) != std::string::npos, "--help lacks ", opt);
  }
}

}  // namespace
}  // namespace resona::testing
