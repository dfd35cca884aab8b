// `resona demo`: trains models/tiny_lm.h on the CPU on the raw bytes of a text file, in
// about two minutes on 2 cores with the defaults, and prints the loss as it falls.
//
// Tokens are bytes (vocabulary 256, so the untrained loss is ln 256 = 5.545 nats). The
// first 90% of the file is for training; each batch is B random windows of seq+1 bytes
// from it, drawn with a Generator seeded from --seed + 1 (the weights use --seed). The
// last 10% is held out: its loss is measured on consecutive windows before and after
// training, and a greedy continuation of a prompt is printed at the end.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "autograd/grad_mode.h"
#include "core/rng.h"
#include "models/tiny_lm.h"
#include "train/cli/command.h"
#include "train/optimizer.h"
#include "train/schedule.h"

namespace resona::cli {
namespace {

constexpr const char* kDefaultData = "data/samples/wikitext-103/wiki.train.tokens";

struct DemoOptions {
  std::string data = kDefaultData;
  int64_t steps = 400;
  int64_t batch = 16;
  int64_t seq = 128;
  int64_t d_model = 128;
  int64_t layers = 4;
  int64_t window = 4;
  double lr = 3e-3;
  double weight_decay = 0.1;
  double clip = 1.0;
  int64_t warmup = 0;  // 0: 5% of the steps
  uint64_t seed = 0;
  int64_t log_every = 0;  // 0: about 20 lines
  int64_t eval_batches = 8;
  int64_t sample_bytes = 160;
  std::string prompt = "The game was ";
};

// Relative paths given by the user are taken from the folder `bazel run` was started in;
// the default one from the workspace root (bazel run changes the working directory).
std::filesystem::path resolve_data_path(const std::string& path) {
  std::filesystem::path p(path);
  if (p.is_absolute()) return p;
  const char* base =
      std::getenv(path == kDefaultData ? "BUILD_WORKSPACE_DIRECTORY" : "BUILD_WORKING_DIRECTORY");
  return base ? std::filesystem::path(base) / p : p;
}

std::vector<uint8_t> read_bytes(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  RESONA_CHECK(in.good()) << "demo: cannot open --data file '" << path.string()
                          << "' (give a text file with --data)";
  std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(in)),
                             std::istreambuf_iterator<char>());
  RESONA_CHECK(!in.bad()) << "demo: reading '" << path.string() << "' failed";
  return bytes;
}

// B windows of seq+1 bytes starting at the given offsets, as int64 ids [B, seq+1].
Tensor windows(const std::vector<uint8_t>& bytes, const std::vector<int64_t>& starts, int64_t seq) {
  std::vector<int64_t> ids;
  ids.reserve(starts.size() * (seq + 1));
  for (int64_t s : starts) {
    for (int64_t i = 0; i <= seq; ++i) ids.push_back(bytes[s + i]);
  }
  return from_vector<int64_t>(ids, {static_cast<int64_t>(starts.size()), seq + 1});
}

// Mean loss over up to `max_batches` batches of consecutive windows in [begin, end).
double held_out_loss(const models::TinyLM& model, const std::vector<uint8_t>& bytes, int64_t begin,
                     int64_t end, int64_t batch, int64_t seq, int64_t max_batches) {
  NoGradGuard no_grad;
  double total = 0.0;
  int64_t n = 0;
  int64_t pos = begin;
  for (int64_t b = 0; b < max_batches; ++b) {
    std::vector<int64_t> starts;
    for (int64_t i = 0; i < batch && pos + seq + 1 <= end; ++i, pos += seq + 1) {
      starts.push_back(pos);
    }
    if (starts.empty()) break;
    total += model.loss(windows(bytes, starts, seq)).item() * starts.size();
    n += static_cast<int64_t>(starts.size());
  }
  return n ? total / n : std::nan("");
}

std::string printable(const std::vector<int64_t>& ids, size_t from) {
  std::string s;
  for (size_t i = from; i < ids.size(); ++i) {
    const int64_t c = ids[i];
    s += (c == '\n' || (c >= 32 && c < 127)) ? static_cast<char>(c) : '?';
  }
  return s;
}

int run_demo(const DemoOptions& o) {
  using Clock = std::chrono::steady_clock;
  RESONA_CHECK(o.steps >= 1) << "demo: --steps must be >= 1, got " << o.steps;
  RESONA_CHECK(o.batch >= 1) << "demo: --batch must be >= 1, got " << o.batch;
  RESONA_CHECK(o.seq >= 2) << "demo: --seq must be >= 2, got " << o.seq;
  RESONA_CHECK(o.clip > 0) << "demo: --clip must be positive, got " << o.clip;
  RESONA_CHECK(o.eval_batches >= 1) << "demo: --eval-batches must be >= 1";

  const std::filesystem::path path = resolve_data_path(o.data);
  const std::vector<uint8_t> bytes = read_bytes(path);
  const int64_t n = static_cast<int64_t>(bytes.size());
  const int64_t split = n - n / 10;  // last 10% held out
  RESONA_CHECK(n / 10 >= o.seq + 1 && split >= o.seq + 1)
      << "demo: '" << path.string() << "' has " << n << " bytes; --seq " << o.seq
      << " needs at least " << 10 * (o.seq + 1) << " (10% of the file is held out)";

  models::TinyLMConfig cfg;
  cfg.d_model = o.d_model;
  cfg.n_layers = o.layers;
  cfg.window = o.window;
  Generator init_gen(o.seed);
  models::TinyLM model(cfg, init_gen);

  train::AdamWConfig opt_cfg;
  opt_cfg.lr = o.lr;
  opt_cfg.beta2 = 0.99;  // short run: forget the first large gradients sooner
  opt_cfg.weight_decay = o.weight_decay;
  train::AdamW opt(model.named_parameters(), opt_cfg);
  train::ScheduleConfig sched;
  sched.kind = train::ScheduleKind::kCosine;
  sched.lr = o.lr;
  sched.total_steps = o.steps;
  sched.warmup_steps =
      o.warmup > 0 ? std::min(o.warmup, o.steps) : std::max<int64_t>(1, o.steps / 20);
  sched.min_lr_ratio = 0.1;
  sched.validate();
  const int64_t log_every = o.log_every > 0 ? o.log_every : std::max<int64_t>(1, o.steps / 20);

  std::printf("resona demo: byte-level TinyLM on the CPU\n");
  std::printf("  data        %s (%lld bytes: %lld train, %lld held out)\n", path.string().c_str(),
              static_cast<long long>(n), static_cast<long long>(split),
              static_cast<long long>(n - split));
  std::printf(
      "  model       d_model=%lld layers=%lld window=%lld mlp_hidden=%lld vocab=256, "
      "%lld parameters, receptive field %lld bytes\n",
      static_cast<long long>(cfg.d_model), static_cast<long long>(cfg.n_layers),
      static_cast<long long>(cfg.window), static_cast<long long>(cfg.resolved_mlp_hidden()),
      static_cast<long long>(model.num_parameters()),
      static_cast<long long>(model.receptive_field()));
  std::printf(
      "  training    steps=%lld batch=%lld seq=%lld (%lld tokens/step), AdamW lr=%g "
      "betas=(%g, %g) wd=%g, cosine to %g after %lld warmup steps, clip=%g, seed=%llu\n",
      static_cast<long long>(o.steps), static_cast<long long>(o.batch),
      static_cast<long long>(o.seq), static_cast<long long>(o.batch * o.seq), o.lr, opt_cfg.beta1,
      opt_cfg.beta2, o.weight_decay, o.lr * sched.min_lr_ratio,
      static_cast<long long>(sched.warmup_steps), o.clip, static_cast<unsigned long long>(o.seed));

  const double initial_eval = held_out_loss(model, bytes, split, n, o.batch, o.seq, o.eval_batches);
  std::printf("held-out loss before training: %.4f (uniform: ln 256 = %.4f)\n", initial_eval,
              std::log(256.0));
  std::printf("loss = mean training loss over the steps since the previous line\n");
  std::fflush(stdout);

  Generator data_gen(o.seed + 1);
  const auto t0 = Clock::now();
  auto t_last = t0;
  double loss_sum = 0.0;
  int64_t loss_count = 0;
  for (int64_t step = 0; step < o.steps; ++step) {
    std::vector<int64_t> starts(o.batch);
    for (int64_t& s : starts) s = data_gen.next_int(0, split - o.seq);  // window in [0, split)
    Tensor ids = windows(bytes, starts, o.seq);

    const double lr = train::lr_at(sched, step);
    opt.set_lr(lr);
    opt.zero_grad();
    Tensor loss = model.loss(ids);
    loss.backward();
    const double grad_norm = train::clip_grad_norm(opt.params(), o.clip);
    const double loss_value = loss.item();
    RESONA_CHECK(std::isfinite(loss_value) && std::isfinite(grad_norm))
        << "demo: training diverged at step " << step + 1 << " (loss " << loss_value
        << ", grad norm " << grad_norm << "); try a lower --lr";
    opt.step();
    loss_sum += loss_value;
    ++loss_count;

    if ((step + 1) % log_every == 0 || step + 1 == o.steps) {
      const auto now = Clock::now();
      const double dt = std::chrono::duration<double>(now - t_last).count();
      const double elapsed = std::chrono::duration<double>(now - t0).count();
      std::printf(
          "step %5lld/%lld  loss %.4f  lr %.2e  grad_norm %.3f  tokens/s %.0f  "
          "elapsed %.1fs\n",
          static_cast<long long>(step + 1), static_cast<long long>(o.steps), loss_sum / loss_count,
          lr, grad_norm, static_cast<double>(loss_count * o.batch * o.seq) / dt, elapsed);
      std::fflush(stdout);
      t_last = now;
      loss_sum = 0.0;
      loss_count = 0;
    }
  }
  const double train_seconds = std::chrono::duration<double>(Clock::now() - t0).count();

  const double final_eval = held_out_loss(model, bytes, split, n, o.batch, o.seq, o.eval_batches);
  std::printf(
      "held-out loss after %lld steps: %.4f nats/byte (%.3f bits/byte; before: %.4f), "
      "trained in %.1fs\n",
      static_cast<long long>(o.steps), final_eval, final_eval / std::log(2.0), initial_eval,
      train_seconds);

  std::vector<int64_t> prompt(o.prompt.begin(), o.prompt.end());
  RESONA_CHECK(!prompt.empty()) << "demo: --prompt must not be empty";
  for (int64_t& c : prompt) c = static_cast<uint8_t>(c);
  const std::vector<int64_t> text = model.generate_greedy(prompt, o.sample_bytes);
  std::printf("greedy sample:\n%s%s\n", o.prompt.c_str(), printable(text, prompt.size()).c_str());
  return 0;
}

RESONA_COMMAND(
    demo, "demo", "Train a small byte-level language model on the CPU",
    [](CLI::App& cmd) -> std::function<int()> {
      auto o = std::make_shared<DemoOptions>();
      cmd.add_option("--data", o->data, "Text file to train on (bytes are tokens)")
          ->capture_default_str();
      cmd.add_option("--steps", o->steps, "Optimizer steps")->capture_default_str();
      cmd.add_option("--batch", o->batch, "Windows per batch")->capture_default_str();
      cmd.add_option("--seq", o->seq, "Bytes per window")->capture_default_str();
      cmd.add_option("--d-model", o->d_model, "Model width")->capture_default_str();
      cmd.add_option("--layers", o->layers, "Blocks")->capture_default_str();
      cmd.add_option("--window", o->window, "Token-mixer window (bytes)")->capture_default_str();
      cmd.add_option("--lr", o->lr, "Peak learning rate")->capture_default_str();
      cmd.add_option("--weight-decay", o->weight_decay, "AdamW weight decay")
          ->capture_default_str();
      cmd.add_option("--clip", o->clip, "Gradient-norm clipping threshold")->capture_default_str();
      cmd.add_option("--warmup", o->warmup, "Warmup steps (0: 5% of --steps)")
          ->capture_default_str();
      cmd.add_option("--seed", o->seed, "Seed of the weights (data: seed + 1)")
          ->capture_default_str();
      cmd.add_option("--log-every", o->log_every, "Steps per progress line (0: auto)")
          ->capture_default_str();
      cmd.add_option("--eval-batches", o->eval_batches, "Batches of held-out windows to evaluate")
          ->capture_default_str();
      cmd.add_option("--sample-bytes", o->sample_bytes, "Bytes of greedy sample")
          ->capture_default_str();
      cmd.add_option("--prompt", o->prompt, "Prompt of the greedy sample")->capture_default_str();
      return [o] { return run_demo(*o); };
    });

}  // namespace
}  // namespace resona::cli
