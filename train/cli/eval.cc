// `resona eval`: perplexity of a checkpoint on a token dataset (train/evaluate.h).
#include <cstdio>
#include <filesystem>

#include "autograd/grad_mode.h"
#include "data/dataset.h"
#include "models/language_model.h"
#include "train/checkpoint.h"
#include "train/cli/command.h"
#include "train/evaluate.h"
#include "train/run_config.h"

namespace resona::cli {
namespace {

Setup setup_eval = [](CLI::App& cmd) -> std::function<int()> {
  auto checkpoint = std::make_shared<std::string>();
  auto dataset = std::make_shared<std::string>();
  auto rows = std::make_shared<int64_t>(8);
  auto batches = std::make_shared<int64_t>(0);
  cmd.add_option("--checkpoint", *checkpoint,
                 "a checkpoint folder, or a run folder (its latest valid checkpoint)")
      ->required();
  cmd.add_option("--data", *dataset,
                 "dataset folder to evaluate on (default: the run config's data.valid)");
  cmd.add_option("--rows", *rows, "rows per forward pass")->check(CLI::PositiveNumber);
  cmd.add_option("--batches", *batches, "evaluate only this many batches (0: all)")
      ->check(CLI::NonNegativeNumber);
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
    const std::string data_dir = dataset->empty() ? cfg.data.valid : *dataset;
    RESONA_CHECK(!data_dir.empty()) << "no dataset: pass --data (the run config has no data.valid)";
    auto ds = data::TokenDataset::open(data_dir);
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
    train::EvalResult r = train::evaluate_perplexity(*model, ds, cfg.data.seq_len, *rows, *batches);
    std::printf("checkpoint: %s (step %lld)\n", dir.c_str(),
                static_cast<long long>(ckpt.state.step));
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

RESONA_COMMAND(eval, "eval", "Perplexity of a checkpoint on a token dataset",
               resona::cli::setup_eval);
