// `resona eval`: a checkpoint on its run's evaluation data (train/evaluate.h): token and
// word perplexity on a token dataset, or loss and accuracy on a task's test rows (MQAR,
// .npy arrays).
#include <cstdio>
#include <filesystem>

#include "autograd/grad_mode.h"
#include "data/dataset.h"
#include "models/language_model.h"
#include "train/checkpoint.h"
#include "train/cli/command.h"
#include "train/evaluate.h"
#include "train/run_config.h"
#include "train/run_data.h"

namespace resona::cli {
namespace {

Setup setup_eval = [](CLI::App& cmd) -> std::function<int()> {
  auto checkpoint = std::make_shared<std::string>();
  auto dataset = std::make_shared<std::string>();
  auto rows = std::make_shared<int64_t>(8);
  auto batches = std::make_shared<int64_t>(0);
  auto device_name = std::make_shared<std::string>("auto");
  cmd.add_option("--checkpoint", *checkpoint,
                 "a checkpoint folder, or a run folder (its latest valid checkpoint)")
      ->required();
  cmd.add_option("--data", *dataset,
                 "dataset folder to evaluate on (default: the run config's data.valid)");
  cmd.add_option("--rows", *rows, "rows per forward pass")->check(CLI::PositiveNumber);
  cmd.add_option("--batches", *batches, "evaluate only this many batches (0: all)")
      ->check(CLI::NonNegativeNumber);
  cmd.add_option("--device", *device_name, "auto (a GPU when there is one), cpu or cuda")
      ->check(CLI::IsMember({"auto", "cpu", "cuda"}));
  return [=]() {
    std::string dir = *checkpoint;
    if (!std::filesystem::exists(std::filesystem::path(dir) / "trainer_state.json")) {
      const std::string latest = train::find_latest_checkpoint(dir);
      RESONA_CHECK(!latest.empty())
          << "--checkpoint " << dir << ": neither a checkpoint nor a run folder with one";
      dir = latest;
    }
    train::Checkpoint ckpt = train::load_checkpoint(dir);
    train::RunConfig cfg =
        train::parse_run_config(ckpt.state.config_yaml, dir + "/trainer_state.json");
    const bool task = cfg.data.source != "tokens";
    RESONA_CHECK(!task || dataset->empty())
        << "--data: the run trains on data.source " << cfg.data.source
        << "; its evaluation rows come from its config";
    const bool offline =
        !cfg.model.resona.layers.empty() && cfg.model.resona.mask_source == "offline";
    const std::string data_dir = dataset->empty() ? cfg.data.valid : *dataset;
    RESONA_CHECK(task || offline || !data_dir.empty())
        << "no dataset: pass --data (the run config has no data.valid)";
    const bool have_gpu = backend_available(DeviceType::kCUDA);
    RESONA_CHECK(*device_name != "cuda" || have_gpu) << "--device cuda: no CUDA device is visible";
    const Device device = *device_name == "cpu" || !have_gpu ? Device::cpu() : Device::cuda();
    Generator gen(cfg.train.seed);
    auto model = models::build_model(cfg.model, gen);
    for (auto& [name, p] : model->named_parameters()) {
      const Tensor& saved = ckpt.model.get(name);
      RESONA_CHECK(saved.shape() == p.shape() && saved.dtype() == p.dtype())
          << dir << ": parameter " << name << " is " << saved.describe() << ", the model has "
          << p.describe();
      NoGradGuard no_grad;
      Tensor dst = p;
      dst.copy_(saved);
    }
    model->set_training(false);
    model->to(device);
    std::printf("checkpoint: %s (step %lld)\n", dir.c_str(),
                static_cast<long long>(ckpt.state.step));
    std::printf("device: %s\n", device.str().c_str());
    if (task || offline) {
      // The run's own evaluation rows (with their offline masks when the model reads them).
      const train::RunData d = train::open_run_data(cfg);
      RESONA_CHECK(d.has_valid()) << "the run config has no evaluation rows";
      auto src = train::make_batch_source(cfg, d, *rows, true);
      train::RowsEvalResult r = train::evaluate_rows(*model, *src, d.valid_masks.get(), *batches);
      std::printf("data: %s\n", cfg.data.source.c_str());
      std::printf("tokens: %lld\nnll: %.6f\ntoken perplexity: %.4f\n",
                  static_cast<long long>(r.tokens), r.mean_nll, r.token_perplexity());
      std::printf("examples: %lld\naccuracy: %.6f\n", static_cast<long long>(r.accuracy.examples),
                  r.accuracy.accuracy);
      return 0;
    }
    auto ds = data::TokenDataset::open(data_dir);
    train::EvalResult r = train::evaluate_perplexity(*model, ds, cfg.data.seq_len, *rows, *batches);
    std::printf("dataset: %s\n", data_dir.c_str());
    std::printf("tokens: %lld\nnll: %.6f\ntoken perplexity: %.4f\n",
                static_cast<long long>(r.tokens), r.mean_nll, r.token_perplexity());
    if (r.words > 0) {
      std::printf("words: %lld\nword perplexity: %.4f\n", static_cast<long long>(r.words),
                  r.word_perplexity());
    }
    return 0;
  };
};

}  // namespace
}  // namespace resona::cli

RESONA_COMMAND(eval, "eval", "Evaluate a checkpoint: perplexity, or a task's loss and accuracy",
               resona::cli::setup_eval);
