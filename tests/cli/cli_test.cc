// The `resona` binary end to end: bad input exits with code 2 and touches nothing;
// training survives SIGKILL at random moments and ends with the weights of an
// uninterrupted run.
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <thread>

#include "tests/test_util.h"
#include "tests/train/train_fixture.h"
#include "train/checkpoint.h"
#include "train/config.h"

extern char** environ;

namespace resona::testing {
namespace fs = std::filesystem;

namespace {

std::string resona_binary() {
  for (const char* var : {"TEST_SRCDIR", "RUNFILES_DIR"}) {
    const char* d = std::getenv(var);
    if (d && fs::exists(fs::path(d) / "resona/train/resona")) {
      return (fs::path(d) / "resona/train/resona").string();
    }
  }
  return "bazel-bin/train/resona";
}

struct Proc {
  pid_t pid = -1;
  std::string out_path;
};

Proc spawn(const std::vector<std::string>& args, const std::string& out_path) {
  std::vector<std::string> full = {resona_binary()};
  full.insert(full.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : full) argv.push_back(a.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 1, out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_adddup2(&fa, 1, 2);
  Proc p;
  p.out_path = out_path;
  REQUIRE(posix_spawn(&p.pid, argv[0], &fa, nullptr, argv.data(), environ) == 0);
  posix_spawn_file_actions_destroy(&fa);
  return p;
}

int wait_exit(const Proc& p) {
  int status = 0;
  REQUIRE(waitpid(p.pid, &status, 0) == p.pid);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

std::string slurp(const std::string& path) {
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

struct Result {
  int code;
  std::string output;
};

Result run_resona(const std::vector<std::string>& args) {
  const std::string out = fresh_dir("cli-out") + "/out.txt";
  Proc p = spawn(args, out);
  int code = wait_exit(p);
  return {code, slurp(out)};
}

std::string write_config(const std::string& path, const std::string& text) {
  std::ofstream(path) << text;
  return path;
}

// A tiny run's YAML over the sample dataset (what tiny_run() sets, as text).
std::string tiny_yaml(const std::string& run_dir, int64_t steps, int64_t every) {
  const std::string ds = sample_dataset();
  return "model: {name: tiny, vocab_size: 32000, hidden_size: 16, num_layers: 1}\n"
         "data: {train: " +
         ds + "/train, valid: " + ds +
         "/valid, seq_len: 16}\n"
         "optimizer: {lr: 0.01}\n"
         "train: {steps: " +
         std::to_string(steps) +
         ", batch_size: 4, device: cpu, "
         "log_every: 1, run_dir: " +
         run_dir +
         "}\n"
         "checkpoint: {every: " +
         std::to_string(every) +
         ", keep_last: 2}\n"
         "eval: {batches: 1}\n";
}

std::vector<std::pair<std::string, uintmax_t>> snapshot(const std::string& dir) {
  std::vector<std::pair<std::string, uintmax_t>> s;
  if (!fs::exists(dir)) return s;
  for (const auto& e : fs::recursive_directory_iterator(dir)) {
    s.push_back({e.path().string(), e.is_regular_file() ? fs::file_size(e.path()) : 0});
  }
  std::sort(s.begin(), s.end());
  return s;
}

}  // namespace

TEST_CASE("resona train: bad input exits with code 2, names the problem, writes nothing") {
  const std::string dir = fresh_dir("bad-input");
  const std::string run = dir + "/run";
  const std::string good = write_config(dir + "/good.yaml", tiny_yaml(run, 4, 2));
  REQUIRE(run_resona({"train", "--config", good, "--quiet"}).code == 0);
  const auto before = snapshot(dir);

  struct Case {
    const char* name;
    std::vector<std::string> args;
    const char* message;
  };
  const std::string other_run = dir + "/other";
  const std::string ckpt = train::checkpoints_dir(run) + "/step_00000004";
  const std::vector<Case> cases = {
      {"YAML syntax error",
       {"--config", write_config(dir + "/c1.yaml", "model: [1\n")},
       "c1.yaml:2:1: YAML syntax error"},
      {"unknown key", {"--config", good, "train.stepz=3"}, "key 'train.stepz': unknown key"},
      {"wrong type",
       {"--config", good, "train.steps=many"},
       "key 'train.steps': expected an integer, got 'many'"},
      {"negative learning rate",
       {"--config", good, "optimizer.lr=-0.1"},
       "key 'optimizer.lr': value '-0.1' is outside (0, inf]"},
      {"missing data path",
       {"--config", good, "data.train=" + dir + "/no-such-data", "train.run_dir=" + other_run},
       "no-such-data"},
      {"unwritable run folder",
       {"--config", good, "train.run_dir=/proc/resona-run"},
       "train.run_dir: cannot create the run folder"},
      {"missing config file",
       {"--config", dir + "/nope.yaml"},
       "nope.yaml: cannot open the config file"},
      {"checkpoints exist, no --resume", {"--config", good}, "already holds checkpoints"},
      {"changed config on resume",
       {"--config", good, "--resume", "auto", "optimizer.lr=0.02"},
       "the config differs from the checkpoint's"},
      {"checkpoint of another model",
       {"--config", good, "--resume", ckpt, "--allow-config-change", "model.hidden_size=32"},
       "in the checkpoint but"},
      {"batch not divisible by accumulation",
       {"--config", good, "train.grad_accum=3"},
       "is not divisible by train.grad_accum"},
      {"resume from a missing folder",
       {"--config", good, "--resume", dir + "/no-ckpt"},
       "is not a folder"},
      {"bad option value", {"--config", good, "--stop-after", "x"}, "stop-after"},
  };
  for (const Case& c : cases) {
    std::vector<std::string> args = {"train"};
    args.insert(args.end(), c.args.begin(), c.args.end());
    Result r = run_resona(args);
    INFO(c.name << ": exit " << r.code << ", output:\n" << r.output);
    CHECK(r.code == 2);
    CHECK(r.output.find(c.message) != std::string::npos);
  }
  // A truncated checkpoint, and a corrupted one, named as such.
  fs::resize_file(ckpt + "/model.safetensors", 64);
  Result t = run_resona({"train", "--config", good, "--resume", ckpt});
  CHECK(t.code == 2);
  CHECK(t.output.find("(truncated?)") != std::string::npos);
  CHECK(fs::file_size(ckpt + "/model.safetensors") == 64);  // left as it was
  std::vector<std::pair<std::string, uintmax_t>> after = snapshot(dir);
  after.erase(std::remove_if(after.begin(), after.end(),
                             [&](const auto& e) { return e.first.find(dir + "/c1.yaml") == 0; }),
              after.end());
  auto expected = before;
  for (auto& e : expected) {
    if (e.first == ckpt + "/model.safetensors") e.second = 64;
  }
  CHECK(after == expected);
}

TEST_CASE("resona train: 20 SIGKILLs at random moments, resumed each time, end as one run") {
  const std::string dir = fresh_dir("crash");
  const int64_t steps = 40, every = 2;
  const std::string straight_cfg =
      write_config(dir + "/straight.yaml", tiny_yaml(dir + "/straight", steps, every));
  const std::string crash_cfg =
      write_config(dir + "/crash.yaml", tiny_yaml(dir + "/crash", steps, every));
  REQUIRE(run_resona({"train", "--config", straight_cfg, "--quiet"}).code == 0);

  std::mt19937 rng(20261126);
  std::uniform_int_distribution<int> delay_ms(30, 700);
  int kills = 0, runs = 0;
  int64_t last_step = 0;
  while (true) {
    Proc p =
        spawn({"train", "--config", crash_cfg, "--resume", "auto", "--quiet"}, dir + "/out.txt");
    ++runs;
    bool killed = false;
    if (kills < 20) {
      std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms(rng)));
      killed = ::kill(p.pid, SIGKILL) == 0;
    }
    const int code = wait_exit(p);
    if (killed && code == 128 + SIGKILL) ++kills;
    // After every ending, the latest checkpoint loads, and progress never goes back
    // (a kill loses at most the steps since the last checkpoint).
    const std::string latest = train::find_latest_checkpoint(dir + "/crash");
    if (!latest.empty()) {
      train::Checkpoint c = train::load_checkpoint(latest);
      CHECK(c.state.step >= last_step);
      last_step = c.state.step;
    }
    if (code == 0) break;
    REQUIRE(code == 128 + SIGKILL);  // anything else is a failure of its own
    REQUIRE(runs < 200);
  }
  CHECK(kills >= 20);
  CHECK(last_step == steps);
  train::Checkpoint a = train::load_checkpoint(train::find_latest_checkpoint(dir + "/straight"));
  train::Checkpoint b = train::load_checkpoint(train::find_latest_checkpoint(dir + "/crash"));
  REQUIRE(a.model.tensors.size() == b.model.tensors.size());
  for (size_t i = 0; i < a.model.tensors.size(); ++i) {
    const Tensor& x = a.model.tensors[i].second;
    const Tensor& y = b.model.tensors[i].second;
    INFO(a.model.tensors[i].first);
    CHECK(std::memcmp(x.raw_data(), y.raw_data(), x.nbytes()) == 0);
  }
  MESSAGE("kills: " << kills << ", processes: " << runs);
}

}  // namespace resona::testing
