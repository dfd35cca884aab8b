// The `resona` binary end to end: bad input exits with code 2 and touches nothing;
// training survives SIGKILL at random moments and ends with the weights of an
// uninterrupted run; SIGTERM and SIGINT stop it after a step with a checkpoint of that
// step (exit codes 143 and 130); the source revision is printed and recorded.
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <regex>
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

std::string file_text(const std::string& path) {
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
  return {code, file_text(out)};
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

// The number of complete lines of a file (metrics.jsonl has one per step at log_every 1).
int64_t complete_lines(const std::string& path) {
  const std::string text = file_text(path);
  return std::count(text.begin(), text.end(), '\n');
}

// Waits until run folder `run` logged step `step` (its metrics.jsonl has that many
// lines), or the process ended; true when the step came while the process still ran.
bool wait_for_step(const Proc& p, const std::string& run, int64_t step) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  while (std::chrono::steady_clock::now() < deadline) {
    if (complete_lines(run + "/metrics.jsonl") >= step) return true;
    int status = 0;
    if (waitpid(p.pid, &status, WNOHANG) != 0) return false;  // ended (and reaped)
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return false;
}

// The step S of the line "stopped by signal <sig> at step S; resume with --resume auto"
// in `text`, or -1.
int64_t stopped_at(const std::string& text, int sig) {
  std::smatch m;
  const std::regex line("stopped by signal " + std::to_string(sig) +
                        " at step ([0-9]+); resume with --resume auto");
  return std::regex_search(text, m, line) ? std::stoll(m[1].str()) : -1;
}

// Byte-for-byte comparison of the latest checkpoints' weights of two runs.
void check_same_final_weights(const std::string& run_a, const std::string& run_b) {
  train::Checkpoint a = train::load_checkpoint(train::find_latest_checkpoint(run_a));
  train::Checkpoint b = train::load_checkpoint(train::find_latest_checkpoint(run_b));
  CHECK(a.state.step == b.state.step);
  REQUIRE(a.model.tensors.size() == b.model.tensors.size());
  for (size_t i = 0; i < a.model.tensors.size(); ++i) {
    const Tensor& x = a.model.tensors[i].second;
    const Tensor& y = b.model.tensors[i].second;
    INFO(a.model.tensors[i].first);
    CHECK(a.model.tensors[i].first == b.model.tensors[i].first);
    CHECK(std::memcmp(x.raw_data(), y.raw_data(), x.nbytes()) == 0);
  }
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
  const auto t0 = std::chrono::steady_clock::now();
  REQUIRE(run_resona({"train", "--config", straight_cfg, "--quiet"}).code == 0);
  const double straight_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();

  // Kill delays up to a tenth of the uninterrupted run (at least 60 ms): 20 runs killed at
  // such moments cover about one run's time with 20 start-ups in it, so the training cannot
  // finish before the 20th kill however fast this machine is (fixed delays up to 700 ms let
  // a fast machine finish after 17).
  std::mt19937 rng(20261126);
  std::uniform_int_distribution<int> delay_ms(20, std::max(60, static_cast<int>(straight_ms / 10)));
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
  MESSAGE("kills: " << kills << ", processes: " << runs << ", uninterrupted run " << straight_ms
                    << " ms");
}

TEST_CASE(
    "resona train: SIGTERM, then SIGINT twice, stop after a step with its checkpoint; "
    "resuming ends as one run") {
  const std::string dir = fresh_dir("signals");
  // Enough steps that the run is still going when a signal is sent a few steps in (the
  // tiny model takes milliseconds per step); no periodic checkpoints, so a stop's
  // checkpoint is the only one.
  const int64_t steps = 300, every = 1000;
  const std::string straight = dir + "/straight", stopped = dir + "/stopped";
  const std::string straight_cfg =
      write_config(dir + "/straight.yaml", tiny_yaml(straight, steps, every));
  const std::string stopped_cfg =
      write_config(dir + "/stopped.yaml", tiny_yaml(stopped, steps, every));
  REQUIRE(run_resona({"train", "--config", straight_cfg, "--quiet"}).code == 0);

  // Stops the run at least `after` steps past `from` with `sig` (sent `times` times in a
  // row); checks the exit code, the message and the checkpoint; returns the stop step.
  auto stop_with = [&](int sig, int times, int64_t from, int64_t after) {
    Proc p = spawn({"train", "--config", stopped_cfg, "--resume", "auto"}, dir + "/out.txt");
    REQUIRE(wait_for_step(p, stopped, from + after));
    for (int i = 0; i < times; ++i) REQUIRE(::kill(p.pid, sig) == 0);
    const int code = wait_exit(p);
    const std::string out = file_text(p.out_path);
    INFO("signal " << sig << ": exit " << code << ", output:\n" << out);
    CHECK(code == 128 + sig);
    const int64_t at = stopped_at(out, sig);
    CHECK(at >= from + after);
    CHECK(at < steps);
    CHECK(stopped_at(file_text(stopped + "/train.log"), sig) == at);
    // The checkpoint of the stop step is the latest, and it loads.
    CHECK(train::find_latest_checkpoint(stopped) ==
          train::checkpoints_dir(stopped) + "/" + train::step_folder_name(at));
    train::Checkpoint c = train::load_checkpoint(train::find_latest_checkpoint(stopped));
    CHECK(c.state.step == at);
    return at;
  };
  const int64_t first = stop_with(SIGTERM, 1, 0, 3);
  // A second SIGINT while the first is being handled changes nothing but the count.
  const int64_t second = stop_with(SIGINT, 2, first, 2);
  CHECK(second > first);
  Result rest = run_resona({"train", "--config", stopped_cfg, "--resume", "auto", "--quiet"});
  INFO(rest.output);
  REQUIRE(rest.code == 0);
  check_same_final_weights(straight, stopped);
  MESSAGE("stopped at steps " << first << " (SIGTERM) and " << second << " (2 x SIGINT) of "
                              << steps);
}

TEST_CASE("resona --version, resona info and every checkpoint name the source revision") {
  Result v = run_resona({"--version"});
  CHECK(v.code == 0);
  std::smatch m;
  const std::string out = v.output;
  // A git checkout gives the commit (and -dirty with uncommitted changes); a build
  // outside git, "unknown".
  REQUIRE(std::regex_match(out, m, std::regex("resona (([0-9a-f]{40}(-dirty)?)|unknown)\n")));
  const std::string rev = m[1].str();

  const std::string dir = fresh_dir("revision");
  const std::string cfg = write_config(dir + "/run.yaml", tiny_yaml(dir + "/run", 2, 1));
  Result info = run_resona({"info", "--config", cfg});
  CHECK(info.code == 0);
  CHECK(info.output.find("source revision: " + rev + "\n") != std::string::npos);

  REQUIRE(run_resona({"train", "--config", cfg, "--quiet"}).code == 0);
  for (int64_t step : {1, 2}) {
    const std::string ckpt =
        train::checkpoints_dir(dir + "/run") + "/" + train::step_folder_name(step);
    CHECK(train::load_checkpoint(ckpt).state.source_revision == rev);
  }
  CHECK(file_text(dir + "/run/train.log").find("source revision " + rev + "\n") !=
        std::string::npos);
}

}  // namespace resona::testing
