// The training loop: exact resume, gradient accumulation, checkpoints, refusals, the
// source revision in checkpoints, a stop signal before the first step.
#include <csignal>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "tests/test_util.h"
#include "tests/train/train_fixture.h"
#include "train/checkpoint.h"
#include "train/config.h"
#include "train/trainer.h"

namespace resona::testing {
namespace fs = std::filesystem;
using train::TrainOptions;

namespace {

TrainOptions quiet(const std::string& resume = "none", int64_t stop_after = 0) {
  TrainOptions o;
  o.resume = resume;
  o.stop_after = stop_after;
  o.quiet = true;
  return o;
}

// The latest checkpoint's model tensors as raw bytes, name by name.
std::vector<std::pair<std::string, std::vector<float>>> final_weights(const std::string& run) {
  train::Checkpoint c = train::load_checkpoint(train::find_latest_checkpoint(run));
  std::vector<std::pair<std::string, std::vector<float>>> w;
  for (const auto& [name, t] : c.model.tensors) w.push_back({name, t.to_vector<float>()});
  return w;
}

bool same_bits(double a, double b) { return std::memcmp(&a, &b, sizeof a) == 0; }

}  // namespace

TEST_CASE("trainer: N+M steps straight equal N, stop, resume, M (loss bits and weights)") {
  const std::string straight = fresh_dir("resume-straight"), split = fresh_dir("resume-split");
  train::TrainResult a = train::train(tiny_run(straight), quiet());
  REQUIRE(a.losses.size() == 8);
  CHECK(a.losses.back() < a.losses.front());  // it learns

  train::TrainResult b1 = train::train(tiny_run(split), quiet("none", 3));
  CHECK(b1.steps_done == 3);
  train::TrainResult b2 = train::train(tiny_run(split), quiet("auto"));
  CHECK(b2.steps_done == 8);
  std::vector<double> b = b1.losses;
  b.insert(b.end(), b2.losses.begin(), b2.losses.end());
  REQUIRE(b.size() == a.losses.size());
  for (size_t i = 0; i < b.size(); ++i) {
    INFO("step " << i + 1 << ": " << a.losses[i] << " vs " << b[i]);
    CHECK(same_bits(a.losses[i], b[i]));
  }
  auto wa = final_weights(straight), wb = final_weights(split);
  REQUIRE(wa.size() == wb.size());
  for (size_t i = 0; i < wa.size(); ++i) {
    INFO(wa[i].first);
    CHECK(wa[i].first == wb[i].first);
    CHECK(std::memcmp(wa[i].second.data(), wb[i].second.data(), wa[i].second.size() * 4) == 0);
  }
  // metrics.jsonl of the split run has each step once, as the straight run's.
  auto count_lines = [](const std::string& run) {
    std::ifstream f(run + "/metrics.jsonl");
    int n = 0;
    for (std::string l; std::getline(f, l);) ++n;
    return n;
  };
  CHECK(count_lines(split) == count_lines(straight));
}

TEST_CASE("trainer: gradient accumulation gives the loss of the whole batch") {
  train::RunConfig one = tiny_run(fresh_dir("accum-1"));
  train::RunConfig two = tiny_run(fresh_dir("accum-2"));
  two.train.grad_accum = 2;
  one.train.steps = two.train.steps = 3;
  train::TrainResult r1 = train::train(one, quiet()), r2 = train::train(two, quiet());
  REQUIRE(r1.losses.size() == 3);
  // Same rows, same weights: the first step's loss differs only by summation order
  // (float32 logits, double sums): far below 1e-5.
  CHECK(r2.losses[0] == doctest::Approx(r1.losses[0]).epsilon(1e-5));
  CHECK(r2.losses[2] == doctest::Approx(r1.losses[2]).epsilon(1e-3));
}

TEST_CASE("trainer: keeps the last N checkpoints and `latest` names the newest") {
  const std::string run = fresh_dir("keep-last");
  train::train(tiny_run(run), quiet());
  std::vector<std::string> steps;
  for (const auto& e : fs::directory_iterator(train::checkpoints_dir(run))) {
    steps.push_back(e.path().filename().string());
  }
  std::sort(steps.begin(), steps.end());
  CHECK(steps == std::vector<std::string>{"latest", "step_00000006", "step_00000008"});
  CHECK(train::find_latest_checkpoint(run) == train::checkpoints_dir(run) + "/step_00000008");
}

TEST_CASE("trainer: a damaged latest checkpoint is refused and the previous one used") {
  const std::string run = fresh_dir("damaged");
  train::train(tiny_run(run), quiet());
  const std::string newest = train::checkpoints_dir(run) + "/step_00000008/model.safetensors";
  {
    std::fstream f(newest, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(200);
    f.put('\x55');
  }
  CHECK_THROWS_WITH_AS(train::load_checkpoint(train::checkpoints_dir(run) + "/step_00000008"),
                       doctest::Contains("do not match the hash64"), Error);
  std::vector<std::string> warnings;
  CHECK(train::find_latest_checkpoint(run, &warnings) ==
        train::checkpoints_dir(run) + "/step_00000006");
  CHECK(warnings.size() == 1);
  fs::resize_file(train::checkpoints_dir(run) + "/step_00000006/optimizer.safetensors", 100);
  CHECK_THROWS_WITH_AS(train::load_checkpoint(train::checkpoints_dir(run) + "/step_00000006"),
                       doctest::Contains("(truncated?)"), Error);
  CHECK(train::find_latest_checkpoint(run).empty());
}

TEST_CASE("trainer: a non-finite loss stops the run or skips the step, never checkpointed") {
  train::RunConfig c = tiny_run(fresh_dir("nan-stop"));
  c.optimizer.lr = 1e30;  // the first update blows the weights up
  c.optimizer.grad_clip = 0;
  c.checkpoint.every = 1;
  CHECK_THROWS_AS(train::train(c, quiet()), train::NonFiniteError);
  // Whatever was checkpointed before the stop is finite and loadable.
  const std::string latest = train::find_latest_checkpoint(c.train.run_dir);
  if (!latest.empty()) {
    for (const auto& [n, t] : train::load_checkpoint(latest).model.tensors) {
      for (float v : t.to_vector<float>()) REQUIRE(std::isfinite(v));
    }
  }
  // With skip, the non-finite steps are dropped (weights untouched) and the run ends
  // with a finite checkpoint that counts them.
  train::RunConfig s = c;
  s.train.run_dir = fresh_dir("nan-skip");
  s.train.nan_policy = "skip";
  train::TrainResult r = train::train(s, quiet());
  CHECK(r.steps_done == s.train.steps);
  train::Checkpoint last = train::load_checkpoint(train::find_latest_checkpoint(s.train.run_dir));
  CHECK(last.state.skipped_steps > 0);
  for (const auto& [n, t] : last.model.tensors) {
    for (float v : t.to_vector<float>()) REQUIRE(std::isfinite(v));
  }
}

TEST_CASE("trainer: refuses bad runs before writing anything") {
  const std::string run = fresh_dir("refuse");
  train::train(tiny_run(run), quiet());
  auto snapshot = [&] {
    std::vector<std::pair<std::string, uintmax_t>> s;
    for (const auto& e : fs::recursive_directory_iterator(run)) {
      s.push_back({e.path().string(), e.is_regular_file() ? fs::file_size(e.path()) : 0});
    }
    std::sort(s.begin(), s.end());
    return s;
  };
  const auto before = snapshot();
  // Checkpoints exist and no resume was asked for.
  CHECK_THROWS_WITH_AS(train::train(tiny_run(run), quiet()),
                       doctest::Contains("already holds checkpoints"), Error);
  // A changed config on resume.
  train::RunConfig changed = tiny_run(run);
  changed.optimizer.lr = 5e-3;
  changed.train.steps = 12;
  CHECK_THROWS_WITH_AS(train::train(changed, quiet("auto")),
                       doctest::Contains("the config differs from the checkpoint's"), Error);
  // A checkpoint of another shape of model, even with config changes allowed.
  train::RunConfig wider = tiny_run(run);
  wider.model.hidden_size = 24;
  TrainOptions allow = quiet("auto");
  allow.allow_config_change = true;
  CHECK_THROWS_WITH_AS(train::train(wider, allow), doctest::Contains("in the checkpoint but"),
                       Error);
  // A vocabulary smaller than the data's.
  train::RunConfig small_vocab = tiny_run(run);
  small_vocab.model.vocab_size = 1000;
  CHECK_THROWS_WITH_AS(train::train(small_vocab, quiet("auto")),
                       doctest::Contains("is smaller than the vocabulary"), Error);
  // A missing dataset.
  train::RunConfig no_data = tiny_run(run);
  no_data.data.train = run + "/nonexistent";
  CHECK_THROWS_AS(train::train(no_data, quiet("auto")), Error);
  CHECK(snapshot() == before);
}

TEST_CASE("trainer: checkpoints record the source revision; older ones without it resume") {
  const std::string run = fresh_dir("revision");
  train::train(tiny_run(run), quiet("none", 3));
  const std::string ckpt = train::checkpoints_dir(run) + "/step_00000003";
  CHECK(train::load_checkpoint(ckpt).state.source_revision == train::build_revision());
  CHECK(!std::string(train::build_revision()).empty());

  // The same checkpoint as a build before the field existed wrote it: no source_revision
  // in trainer_state.json (which no hash covers).
  const std::string state_path = ckpt + "/trainer_state.json";
  nlohmann::json j;
  {
    std::ifstream in(state_path);
    in >> j;
  }
  REQUIRE(j.erase("source_revision") == 1);
  std::ofstream(state_path, std::ios::trunc) << j.dump(2) << "\n";
  train::Checkpoint old = train::load_checkpoint(ckpt);
  CHECK(old.state.source_revision.empty());
  CHECK(old.state.step == 3);

  train::TrainResult r = train::train(tiny_run(run), quiet("auto"));
  CHECK(r.steps_done == 8);
  std::ifstream log(run + "/train.log");
  std::stringstream text;
  text << log.rdbuf();
  CHECK(text.str().find("note: that checkpoint was written by source revision (not recorded)") !=
        std::string::npos);
  CHECK(train::load_checkpoint(train::find_latest_checkpoint(run)).state.source_revision ==
        train::build_revision());
}

TEST_CASE("trainer: a stop signal recorded before the first step stops the run there") {
  const std::string run = fresh_dir("signal-early");
  train::TrainResult r;
  {
    train::StopSignals signals;
    CHECK_THROWS_WITH_AS(train::StopSignals(), doctest::Contains("only one may live"), Error);
    REQUIRE(std::raise(SIGTERM) == 0);  // recorded, not fatal
    CHECK(train::StopSignals::received() == SIGTERM);
    CHECK(train::StopSignals::count() == 1);
    r = train::train(tiny_run(run), quiet());
  }
  CHECK(r.stop_signal == SIGTERM);
  CHECK(r.steps_done == 0);
  CHECK(r.losses.empty());
  CHECK(train::find_latest_checkpoint(run).empty());  // no step: nothing new to save
  std::ifstream log(run + "/train.log");
  std::stringstream text;
  text << log.rdbuf();
  CHECK(text.str().find("stopped by signal 15 at step 0; resume with --resume auto") !=
        std::string::npos);
  // The record went with the object: the next run is not stopped by that signal.
  CHECK(train::StopSignals::received() == 0);
  train::TrainResult full = train::train(tiny_run(run), quiet("auto"));
  CHECK(full.stop_signal == 0);
  CHECK(full.steps_done == 8);
}

}  // namespace resona::testing

namespace resona::testing {

RESONA_GPU_TEST("trainer on CUDA, deterministic: N+M straight equals N, resume, M bit for bit") {
  auto cuda_run = [](const std::string& dir) {
    train::RunConfig c = tiny_run(dir);
    c.train.device = "cuda";
    c.train.deterministic = true;
    return c;
  };
  const std::string straight = fresh_dir("cuda-straight"), split = fresh_dir("cuda-split");
  train::TrainResult a = train::train(cuda_run(straight), quiet());
  REQUIRE(a.losses.size() == 8);
  CHECK(a.losses.back() < a.losses.front());
  train::TrainResult b1 = train::train(cuda_run(split), quiet("none", 3));
  train::TrainResult b2 = train::train(cuda_run(split), quiet("auto"));
  std::vector<double> b = b1.losses;
  b.insert(b.end(), b2.losses.begin(), b2.losses.end());
  REQUIRE(b.size() == a.losses.size());
  for (size_t i = 0; i < b.size(); ++i) {
    INFO("step " << i + 1 << ": " << a.losses[i] << " vs " << b[i]);
    CHECK(same_bits(a.losses[i], b[i]));
  }
  auto wa = final_weights(straight), wb = final_weights(split);
  REQUIRE(wa.size() == wb.size());
  for (size_t i = 0; i < wa.size(); ++i) {
    INFO(wa[i].first);
    CHECK(std::memcmp(wa[i].second.data(), wb[i].second.data(), wa[i].second.size() * 4) == 0);
  }
  // The same run on the CPU starts from the same weights and data: the first loss agrees
  // up to TF32 matrix products (10-bit mantissa: ~1e-3 relative per product).
  train::TrainResult cpu = train::train(tiny_run(fresh_dir("cpu-ref")), quiet());
  CHECK(a.losses[0] == doctest::Approx(cpu.losses[0]).epsilon(5e-3));
  MESSAGE("first loss: cuda " << a.losses[0] << ", cpu " << cpu.losses[0] << "; last: cuda "
                              << a.losses.back() << ", cpu " << cpu.losses.back());
}

}  // namespace resona::testing
