#include "train/trainer.h"

#include <signal.h>

#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdarg>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "autograd/grad_mode.h"
#include "data/dataset.h"
#include "data/loader.h"
#include "models/language_model.h"
#include "models/module.h"
#include "ops/determinism.h"
#include "ops/loss.h"
#include "train/checkpoint.h"
#include "train/config.h"
#include "train/evaluate.h"
#include "train/optimizer.h"
#include "train/run_data.h"
#include "train/schedule.h"

namespace resona::train {
namespace fs = std::filesystem;
using nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {

// Console (unless quiet) and train.log, line by line.
class RunLog {
 public:
  RunLog(const std::string& path, bool quiet) : file_(path, std::ios::app), quiet_(quiet) {
    RESONA_CHECK(file_.good()) << "cannot write the log file '" << path << "'";
  }
  void line(const std::string& s) {
    if (!quiet_) std::printf("%s\n", s.c_str()), std::fflush(stdout);
    file_ << s << "\n";
    file_.flush();
  }

 private:
  std::ofstream file_;
  bool quiet_;
};

std::string format(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
std::string format(const char* fmt, ...) {
  char buf[1024];
  va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(buf, sizeof(buf), fmt, ap);
  va_end(ap);
  return buf;
}

std::string duration_str(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  int64_t t = static_cast<int64_t>(s + 0.5);
  if (t >= 3600) return format("%lldh%02lldm", (long long)(t / 3600), (long long)(t / 60 % 60));
  if (t >= 60) return format("%lldm%02llds", (long long)(t / 60), (long long)(t % 60));
  return format("%llds", (long long)t);
}

Device choose_device(const std::string& name) {
  const bool have_gpu = backend_available(DeviceType::kCUDA);
  if (name == "cuda") {
    RESONA_CHECK(have_gpu) << "train.device is cuda but no CUDA device is visible";
    return Device::cuda();
  }
  return name == "auto" && have_gpu ? Device::cuda() : Device::cpu();
}

// Creates the run folder and proves it is writable before anything else happens.
void prepare_run_dir(const std::string& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  RESONA_CHECK(!ec && fs::is_directory(dir)) << "train.run_dir: cannot create the run folder '"
                                             << dir << "'" << (ec ? ": " + ec.message() : "");
  const fs::path probe = fs::path(dir) / ".write-probe";
  {
    std::ofstream f(probe);
    f << "ok";
    RESONA_CHECK(f.good()) << "train.run_dir: the run folder '" << dir << "' is not writable";
  }
  fs::remove(probe, ec);
}

// Keeps the metrics lines of steps <= `step` (the ones a resumed run does not redo).
void truncate_metrics(const std::string& path, int64_t step) {
  std::ifstream in(path);
  if (!in) return;
  std::vector<std::string> kept;
  for (std::string line; std::getline(in, line);) {
    try {
      if (json::parse(line).value("step", int64_t{0}) <= step) kept.push_back(line);
    } catch (const json::exception&) {
      // A line cut by a crash: dropped.
    }
  }
  in.close();
  std::ofstream out(path, std::ios::trunc);
  for (const auto& l : kept) out << l << "\n";
}

// The lines where two resolved configs differ ("- old" / "+ new"), for the refusal.
std::string config_diff(const std::string& a, const std::string& b) {
  std::istringstream sa(a), sb(b);
  std::vector<std::string> la, lb;
  for (std::string l; std::getline(sa, l);) la.push_back(l);
  for (std::string l; std::getline(sb, l);) lb.push_back(l);
  std::string out;
  for (size_t i = 0; i < std::max(la.size(), lb.size()); ++i) {
    const std::string x = i < la.size() ? la[i] : "", y = i < lb.size() ? lb[i] : "";
    if (x != y) out += "\n  - " + x + "\n  + " + y;
  }
  return out;
}

// Dense peak FLOP/s of the matrix units (no sparsity) for the precision the run uses:
// fp32 runs use TF32 tensor cores. 0 for an unknown device (no MFU is reported).
double peak_flops(const std::string& device_name, const std::string& precision) {
  struct Peak {
    const char* name;
    double bf16, tf32;
  };
  static const Peak kPeaks[] = {
      {"H200", 989.4e12, 494.7e12},  // SXM, as H100 SXM
      {"H100", 989.4e12, 494.7e12},  // SXM5
      {"A100", 312.0e12, 156.0e12},
  };
  for (const Peak& p : kPeaks) {
    if (device_name.find(p.name) != std::string::npos) return precision == "bf16" ? p.bf16 : p.tf32;
  }
  return 0;
}

bool all_finite(const NamedTensors& params) {
  for (const auto& [name, p] : params) {
    for (float v : p.to_vector<float>()) {
      if (!std::isfinite(v)) return false;
    }
  }
  return true;
}

// ---- graceful stop ----

volatile std::sig_atomic_t g_stop_signal = 0;
volatile std::sig_atomic_t g_stop_count = 0;

// Async-signal-safe: two stores to volatile sig_atomic_t, nothing else.
extern "C" void record_stop_signal(int sig) {
  if (g_stop_signal == 0) g_stop_signal = sig;
  g_stop_count = g_stop_count + 1;  // both signals are blocked while this runs
}

constexpr int kStopSignals[] = {SIGTERM, SIGINT};
struct sigaction g_previous[2];
bool g_installed = false;

}  // namespace

StopSignals::StopSignals() {
  RESONA_CHECK(!g_installed) << "StopSignals: only one may live at a time";
  g_stop_signal = 0;
  g_stop_count = 0;
  struct sigaction sa {};
  sa.sa_handler = record_stop_signal;
  sa.sa_flags = SA_RESTART;  // interrupted reads and writes (a checkpoint's) resume
  sigemptyset(&sa.sa_mask);
  for (int sig : kStopSignals) sigaddset(&sa.sa_mask, sig);
  for (int i = 0; i < 2; ++i) {
    RESONA_CHECK(::sigaction(kStopSignals[i], &sa, &g_previous[i]) == 0)
        << "StopSignals: cannot install a handler for signal " << kStopSignals[i];
  }
  g_installed = true;
}

StopSignals::~StopSignals() {
  for (int i = 0; i < 2; ++i) ::sigaction(kStopSignals[i], &g_previous[i], nullptr);
  g_installed = false;
  g_stop_signal = 0;  // a later train() in this process is not stopped by an old signal
  g_stop_count = 0;
}

int StopSignals::received() { return g_stop_signal; }
int StopSignals::count() { return g_stop_count; }

TrainResult train(const RunConfig& cfg_in, const TrainOptions& opt) {
  RunConfig cfg = cfg_in;
  validate_run_config(cfg);
  const std::string resolved = to_yaml(cfg);

  // ---- everything that can be refused, before anything is written ----
  const RunData data = open_run_data(cfg);
  const bool valid = data.has_valid();

  std::string resume_dir;
  std::vector<std::string> warnings;
  if (opt.resume == "auto") {
    resume_dir = find_latest_checkpoint(cfg.train.run_dir, &warnings);
  } else if (opt.resume != "none" && !opt.resume.empty()) {
    resume_dir = opt.resume;
  } else {
    RESONA_CHECK(find_latest_checkpoint(cfg.train.run_dir).empty() &&
                 !fs::exists(checkpoints_dir(cfg.train.run_dir) + "/latest"))
        << "train.run_dir '" << cfg.train.run_dir
        << "' already holds checkpoints: resume with --resume auto, or choose another run_dir";
  }
  Checkpoint ckpt;
  if (!resume_dir.empty()) {
    ckpt = load_checkpoint(resume_dir);
    RESONA_CHECK(ckpt.state.model_name == cfg.model.name)
        << resume_dir << ": a checkpoint of model '" << ckpt.state.model_name
        << "', but the config builds '" << cfg.model.name << "'";
    RESONA_CHECK(opt.allow_config_change || ckpt.state.config_yaml == resolved)
        << resume_dir << ": the config differs from the checkpoint's (pass "
        << "--allow-config-change to resume anyway):"
        << config_diff(ckpt.state.config_yaml, resolved);
  }
  const Device device = choose_device(cfg.train.device);
  const bool bf16 = cfg.train.precision == "bf16";
  RESONA_CHECK(!bf16 || device.is_cuda())
      << "train.precision: bf16 needs a CUDA device, and no CUDA device is visible (the CPU "
         "computes in float32 only; use precision fp32)";

  set_deterministic(cfg.train.deterministic);
  Generator init_gen(cfg.train.seed);
  std::unique_ptr<models::LanguageModel> model = models::build_model(cfg.model, init_gen);
  model->to(device);  // initialised on the CPU (the same weights on every device)
  // fp32: the masters are the model's own parameters. bf16: the model's parameters become
  // bf16 copies of float32 masters, which the optimizer and checkpoints use.
  models::MixedPrecision mixed(*model, bf16 ? DType::kBFloat16 : DType::kFloat32);
  const NamedTensors params = mixed.master_parameters();
  AdamWConfig acfg;
  acfg.lr = cfg.optimizer.lr;
  acfg.beta1 = cfg.optimizer.betas[0];
  acfg.beta2 = cfg.optimizer.betas[1];
  acfg.eps = cfg.optimizer.eps;
  acfg.weight_decay = cfg.optimizer.weight_decay;
  acfg.decay_only_matrices = cfg.optimizer.decay_only_matrices;
  acfg.decay_embeddings = cfg.optimizer.decay_embeddings;
  AdamW optimizer(params, acfg);

  ScheduleConfig sched;
  sched.kind = schedule_kind_from_name(cfg.schedule.name);
  sched.lr = cfg.optimizer.lr;
  sched.total_steps = cfg.train.steps;
  sched.warmup_steps =
      static_cast<int64_t>(std::llround(cfg.schedule.warmup_ratio * cfg.train.steps));
  sched.min_lr_ratio = cfg.schedule.min_lr_ratio;
  sched.validate();

  const int64_t micro_rows = cfg.train.batch_size / cfg.train.grad_accum;
  std::unique_ptr<BatchSource> loader = make_batch_source(cfg, data, micro_rows, false);
  RESONA_CHECK(loader->steps_per_epoch() > 0)
      << "data: the training rows are too few for one batch of " << micro_rows << " rows of "
      << cfg.data.seq_len << " tokens";
  Generator dropout_gen(cfg.train.seed ^ 0x5deece66dULL);

  TrainerState st;
  st.model_name = cfg.model.name;
  st.num_parameters = model->num_parameters();
  st.config_yaml = resolved;
  st.source_revision = build_revision();
  const std::string metrics_path = (fs::path(cfg.train.run_dir) / "metrics.jsonl").string();
  if (!resume_dir.empty()) {
    for (auto& [name, p] : params) {
      const Tensor& saved = ckpt.model.get(name);
      RESONA_CHECK(saved.shape() == p.shape() && saved.dtype() == p.dtype())
          << resume_dir << ": parameter " << name << " is " << saved.describe()
          << " in the checkpoint but " << p.describe() << " in the model";
      NoGradGuard no_grad;
      Tensor dst = p;
      dst.copy_(saved);
    }
    RESONA_CHECK(ckpt.model.tensors.size() == params.size())
        << resume_dir << ": the checkpoint has " << ckpt.model.tensors.size()
        << " parameters, the model " << params.size();
    optimizer.load_state(ckpt.optimizer.tensors, ckpt.state.step);
    loader->set_state(data::LoaderState::from_json(ckpt.state.loader_state, resume_dir));
    dropout_gen.set_state(ckpt.state.dropout_rng);
    st.step = ckpt.state.step;
    st.tokens_seen = ckpt.state.tokens_seen;
    st.skipped_steps = ckpt.state.skipped_steps;
  }
  mixed.refresh();  // the compute weights from the (loaded) masters

  // ---- everything is validated: from here on the run folder is ours ----
  prepare_run_dir(cfg.train.run_dir);
  RunLog log((fs::path(cfg.train.run_dir) / "train.log").string(), opt.quiet);
  for (const auto& w : warnings) log.line("skipped an unusable checkpoint: " + w);
  {
    std::ofstream f(fs::path(cfg.train.run_dir) / "config.yaml", std::ios::trunc);
    f << resolved << "\n";
  }
  if (cfg.train.device == "auto" && device.is_cpu()) {
    log.line("no CUDA device found: training on the CPU");
  }
  log.line(std::string("source revision ") + st.source_revision);
  if (!resume_dir.empty()) {
    truncate_metrics(metrics_path, st.step);
    log.line(format("resumed from %s at step %lld", resume_dir.c_str(), (long long)st.step));
    if (ckpt.state.source_revision != st.source_revision) {
      const std::string by =
          ckpt.state.source_revision.empty() ? "(not recorded)" : ckpt.state.source_revision;
      log.line("note: that checkpoint was written by source revision " + by);
    }
  } else {
    std::ofstream(metrics_path, std::ios::trunc);
  }
  std::ofstream metrics(metrics_path, std::ios::app);
  RESONA_CHECK(metrics.good()) << "cannot write '" << metrics_path << "'";

  log.line(format("model %s: %lld parameters; %lld steps of %lld x %lld tokens on %s, %s",
                  cfg.model.name.c_str(), (long long)st.num_parameters, (long long)cfg.train.steps,
                  (long long)cfg.train.batch_size, (long long)cfg.data.seq_len,
                  device.str().c_str(), bf16 ? "bf16 compute, float32 master weights" : "float32"));

  auto save = [&]() {
    RESONA_CHECK(all_finite(params))
        << "refusing to checkpoint non-finite weights at step " << st.step;
    st.loader_state = loader->state().to_json();
    st.dropout_rng = dropout_gen.state();
    return save_checkpoint(cfg.train.run_dir, st, params, optimizer.named_state(),
                           cfg.checkpoint.keep_last);
  };
  TrainResult result;
  // Token datasets without offline masks: perplexity over the whole stream; tasks (and
  // token rows with offline masks): loss and accuracy over the evaluation rows.
  std::unique_ptr<BatchSource> valid_rows;
  if (valid && (data.is_task() || data.valid_masks)) {
    valid_rows = make_batch_source(cfg, data, micro_rows, true);
  }
  auto run_eval = [&](json& rec) {
    if (!valid) return;
    if (!valid_rows) {
      EvalResult r = evaluate_perplexity(*model, data.valid_tokens, cfg.data.seq_len, micro_rows,
                                         cfg.eval.batches);
      rec["eval_loss"] = r.mean_nll;
      rec["eval_ppl"] = r.token_perplexity();
      result.eval_loss = r.mean_nll;
      log.line(format("eval at step %lld: loss %.4f, token perplexity %.2f over %lld tokens",
                      (long long)st.step, r.mean_nll, r.token_perplexity(), (long long)r.tokens));
      return;
    }
    RowsEvalResult r = evaluate_rows(*model, *valid_rows, data.valid_masks.get(), cfg.eval.batches);
    rec["eval_loss"] = r.mean_nll;
    rec["eval_accuracy"] = r.accuracy.accuracy;
    result.eval_loss = r.mean_nll;
    result.eval_accuracy = r.accuracy.accuracy;
    log.line(
        format("eval at step %lld: loss %.4f, accuracy %.4f over %lld examples "
               "(%lld/%lld labelled positions right)",
               (long long)st.step, r.mean_nll, r.accuracy.accuracy, (long long)r.accuracy.examples,
               (long long)r.accuracy.correct, (long long)r.accuracy.labelled));
  };

  // MFU = 6 N tokens/s / peak (N: every parameter; the recurrences' own FLOPs are not
  // counted yet, so this slightly understates the utilisation).
  const double peak = device.is_cuda() ? peak_flops(backend_for(device).device_name(device.index),
                                                    cfg.train.precision)
                                       : 0.0;
  const auto t0 = Clock::now();
  auto t_last = t0;
  int64_t tokens_since = 0;
  const int64_t end_step =
      opt.stop_after > 0 ? std::min(cfg.train.steps, st.step + opt.stop_after) : cfg.train.steps;
  auto stopped_by_signal = [&](int sig) {
    result.stop_signal = sig;
    std::string more;  // later signals only waited for the checkpoint
    if (StopSignals::count() > 1) more = format(" (%d signals in all)", StopSignals::count());
    log.line(format("stopped by signal %d at step %lld; resume with --resume auto%s", sig,
                    (long long)st.step, more.c_str()));
  };
  int64_t saved_step = st.step;  // the step of the newest checkpoint (or of the start)
  while (true) {
    // A signal recorded during the last step (or before the first): checkpoint that step
    // unless it just was, and stop. A finished run just ends.
    if (const int sig = StopSignals::received(); sig != 0 && st.step < cfg.train.steps) {
      if (st.step != saved_step) {
        result.last_checkpoint = save();
        log.line("checkpoint " + result.last_checkpoint);
      }
      stopped_by_signal(sig);
      break;
    }
    if (st.step >= end_step) break;
    // Read the step's micro-batches first: the loss is normalised by all their tokens.
    std::vector<data::Batch> batches;
    int64_t tokens = 0;
    for (int64_t m = 0; m < cfg.train.grad_accum; ++m) {
      batches.push_back(loader->next());
      tokens += batches.back().target_tokens();
    }
    optimizer.zero_grad();
    double loss_sum = 0;
    for (const data::Batch& b : batches) {
      const BatchLogits bl = batch_logits(
          *model, b, batch_chunk_ids(data.train_masks.get(), b, device), device, data.is_task());
      Tensor loss = cross_entropy(bl.logits, bl.labels, kIgnoreIndex, Reduction::kSum);
      loss_sum += loss.item();
      if (tokens > 0) (loss * (1.0 / static_cast<double>(tokens))).backward();
      mixed.accumulate_grads();
    }
    const double mean_loss = tokens > 0 ? loss_sum / static_cast<double>(tokens) : 0.0;
    const double max_norm = cfg.optimizer.grad_clip > 0 ? cfg.optimizer.grad_clip : INFINITY;
    const double grad_norm = clip_grad_norm(params, max_norm);
    const double lr = lr_at(sched, st.step);
    if (!std::isfinite(mean_loss) || !std::isfinite(grad_norm)) {
      if (cfg.train.nan_policy == "stop") {
        log.line(
            format("step %lld: non-finite %s (loss %g, grad norm %g): stopping; the last "
                   "checkpoint is intact",
                   (long long)st.step + 1, std::isfinite(mean_loss) ? "gradient" : "loss",
                   mean_loss, grad_norm));
        throw NonFiniteError(
            format("non-finite loss or gradient at step %lld", (long long)st.step + 1));
      }
      log.line(
          format("step %lld: non-finite loss or gradient: step skipped", (long long)st.step + 1));
      optimizer.zero_grad();
      ++st.skipped_steps;
    } else {
      optimizer.set_lr(lr);
      optimizer.step();
      mixed.refresh();
    }
    ++st.step;
    st.tokens_seen += tokens;
    tokens_since += tokens;
    result.losses.push_back(mean_loss);
    result.last_loss = mean_loss;

    const bool last = st.step == cfg.train.steps;
    const bool do_eval = valid && (last || (cfg.eval.every > 0 && st.step % cfg.eval.every == 0));
    if (st.step % cfg.train.log_every == 0 || last || do_eval) {
      const auto now = Clock::now();
      const double dt = std::chrono::duration<double>(now - t_last).count();
      const double elapsed = std::chrono::duration<double>(now - t0).count();
      const double tps = dt > 0 ? tokens_since / dt : 0;
      const double eta = tps > 0 ? (cfg.train.steps - st.step) * (tokens / tps) : NAN;
      const double mfu = peak > 0 ? 6.0 * st.num_parameters * tps / peak : 0.0;
      const std::string mfu_str = peak > 0 ? format(" | MFU %.1f%%", 100 * mfu) : "";
      log.line(format("step %lld/%lld | loss %.4f | lr %.3e | grad %.3f | %.0f tok/s%s | ETA %s",
                      (long long)st.step, (long long)cfg.train.steps, mean_loss, lr, grad_norm, tps,
                      mfu_str.c_str(), duration_str(eta).c_str()));
      json rec = {{"step", st.step},        {"loss", mean_loss},        {"lr", lr},
                  {"grad_norm", grad_norm}, {"tokens", st.tokens_seen}, {"tokens_per_s", tps},
                  {"elapsed_s", elapsed}};
      if (peak > 0) rec["mfu"] = mfu;
      if (do_eval) run_eval(rec);
      metrics << rec.dump() << "\n";
      metrics.flush();
      t_last = now;
      tokens_since = 0;
    }
    const bool stopping = st.step == end_step;  // also a stop requested by stop_after
    if (st.step % cfg.checkpoint.every == 0 || last || stopping) {
      result.last_checkpoint = save();
      saved_step = st.step;
      log.line("checkpoint " + result.last_checkpoint);
    }
  }
  result.steps_done = st.step;
  return result;
}

}  // namespace resona::train
