// `resona train`: trains a model from a YAML config (train/run_config.h) with
// `a.b.c=value` overrides; see train/trainer.h for what it writes, how it resumes and how
// SIGTERM/SIGINT stop it (after the current step, with a checkpoint; exit code 128 + N).
#include <cstdio>

#include "train/cli/command.h"
#include "train/config.h"
#include "train/run_config.h"
#include "train/trainer.h"

namespace resona::cli {
namespace {

Setup setup_train = [](CLI::App& cmd) -> std::function<int()> {
  auto config = std::make_shared<std::string>();
  auto overrides = std::make_shared<std::vector<std::string>>();
  auto opt = std::make_shared<train::TrainOptions>();
  cmd.add_option("--config", *config, "run config (YAML)")->required();
  cmd.add_option("--resume", opt->resume,
                 "none (default; refused if the run folder has checkpoints), auto (the latest "
                 "valid checkpoint of train.run_dir, or fresh), or a checkpoint folder");
  cmd.add_flag("--allow-config-change", opt->allow_config_change,
               "resume even though the config differs from the checkpoint's");
  cmd.add_option("--stop-after", opt->stop_after,
                 "stop (with a checkpoint) after this many steps in this process");
  cmd.add_flag("--quiet", opt->quiet, "no console output (train.log and metrics still written)");
  cmd.add_option("overrides", *overrides, "key.path=value settings applied after the file");
  cmd.footer(
      "Exit codes: 0 done; 2 bad input (config, data, checkpoint, run folder), nothing "
      "written; 1 stopped on a non-finite loss or gradient, or another failure; 143 "
      "(SIGTERM) or 130 (SIGINT) stopped by that signal after finishing the current step and "
      "writing its checkpoint (resume with --resume auto).");
  return [=]() {
    // From here on SIGTERM/SIGINT are only recorded; train() acts on them between steps.
    train::StopSignals signals;
    train::RunConfig cfg = train::load_run_config(*config, *overrides);
    if (!opt->quiet) std::printf("resolved config:\n%s\n\n", to_yaml(cfg).c_str());
    try {
      train::TrainResult r = train::train(cfg, *opt);
      if (r.stop_signal != 0) return 128 + r.stop_signal;  // train() logged why
      if (!opt->quiet) {
        std::printf("done: step %lld, last loss %.4f, checkpoint %s\n",
                    static_cast<long long>(r.steps_done), r.last_loss, r.last_checkpoint.c_str());
      }
    } catch (const train::NonFiniteError& e) {
      std::fprintf(stderr, "resona train: %s\n", e.what());
      return 1;
    }
    return 0;
  };
};

}  // namespace
}  // namespace resona::cli

RESONA_COMMAND(train, "train", "Train a model from a YAML config", resona::cli::setup_train);
