// `resona precompute-masks`: the Resona chunk-and-search run offline over a run's rows,
// written as a retrieval mask file (train/precompute_masks.h, data/masks.h).
//
//   resona precompute-masks --config RUN.yaml [key=value ...] --out FILE
//       [--split train|valid] [--encoder lexical|embedding --checkpoint DIR]
//       [--rows-per-batch N] [--no-progress]
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>

#include "train/checkpoint.h"
#include "train/cli/command.h"
#include "train/precompute_masks.h"
#include "train/run_config.h"

namespace resona::cli {
namespace {

Setup setup_precompute = [](CLI::App& cmd) -> std::function<int()> {
  auto config = std::make_shared<std::string>();
  auto overrides = std::make_shared<std::vector<std::string>>();
  auto out = std::make_shared<std::string>();
  auto split = std::make_shared<std::string>("train");
  auto encoder = std::make_shared<std::string>("lexical");
  auto checkpoint = std::make_shared<std::string>();
  auto rows_per_batch = std::make_shared<int64_t>(64);
  auto no_progress = std::make_shared<bool>(false);
  cmd.add_option("--config", *config,
                 "the run config whose rows (data.*) and retrieval settings (model.resona: "
                 "chunk_size, top_k, query_block, lexical_dim, lexical_ngram) to use")
      ->required();
  cmd.add_option("--out", *out, "mask file to write (atomically)")->required();
  cmd.add_option("--split", *split, "train (data.masks) or valid (data.valid_masks)")
      ->check(CLI::IsMember({"train", "valid"}));
  cmd.add_option("--encoder", *encoder,
                 "lexical (hashed token n-grams, equal to the model's online lexical search) or "
                 "embedding (a checkpoint's token embeddings)")
      ->check(CLI::IsMember({"lexical", "embedding"}));
  cmd.add_option("--checkpoint", *checkpoint, "checkpoint folder for --encoder embedding");
  cmd.add_option("--rows-per-batch", *rows_per_batch, "rows searched at a time")
      ->check(CLI::PositiveNumber);
  cmd.add_flag("--no-progress", *no_progress, "no progress bar on stderr");
  cmd.add_option("overrides", *overrides, "key.path=value settings applied after the file");
  cmd.footer("Exit codes: 0 done; 2 bad input (config, data, checkpoint), nothing written.");
  return [=]() {
    train::RunConfig cfg = train::load_run_config(*config, *overrides);
    train::PrecomputeOptions opt;
    opt.valid = *split == "valid";
    opt.encoder = *encoder;
    opt.rows_per_batch = *rows_per_batch;
    if (*encoder == "embedding") {
      RESONA_CHECK(!checkpoint->empty()) << "--encoder embedding needs --checkpoint";
      train::Checkpoint ckpt = train::load_checkpoint(*checkpoint);
      for (const char* name : {"model.embeddings.weight", "backbone.embeddings.weight"}) {
        if (ckpt.model.contains(name)) opt.embedding = ckpt.model.get(name);
      }
      RESONA_CHECK(opt.embedding.defined())
          << *checkpoint << ": no model.embeddings.weight or backbone.embeddings.weight";
    } else {
      RESONA_CHECK(checkpoint->empty()) << "--checkpoint is only read by --encoder embedding";
    }
    const bool tty = isatty(fileno(stderr));
    const auto t0 = std::chrono::steady_clock::now();
    auto last = t0 - std::chrono::hours(1);
    if (!*no_progress) {
      opt.progress = [=](int64_t done, int64_t total) mutable {
        const auto now = std::chrono::steady_clock::now();
        const double since = std::chrono::duration<double>(now - last).count();
        if (done < total && since < (tty ? 0.2 : 10.0)) return;
        last = now;
        const double s = std::chrono::duration<double>(now - t0).count();
        const double rate = s > 0 ? done / s : 0;
        const double eta = rate > 0 ? (total - done) / rate : 0;
        std::fprintf(stderr, "%smasks %3d%% | %lld/%lld rows | %.0f rows/s | ETA %.0fs%s",
                     tty ? "\r" : "", static_cast<int>(100.0 * done / total),
                     static_cast<long long>(done), static_cast<long long>(total), rate, eta,
                     tty && done < total ? "" : "\n");
      };
    }
    const train::PrecomputeResult r = train::precompute_masks(cfg, opt, *out);
    std::printf("wrote %s: %lld rows of %lld tokens (%s) in %.2f s, %.0f rows/s, %.0f tokens/s\n",
                out->c_str(), static_cast<long long>(r.rows),
                static_cast<long long>(r.header.seq_len), r.header.describe().c_str(), r.seconds,
                r.rows / std::max(r.seconds, 1e-9),
                r.rows * double(r.header.seq_len) / std::max(r.seconds, 1e-9));
    return 0;
  };
};

}  // namespace
}  // namespace resona::cli

RESONA_COMMAND(precompute_masks, "precompute-masks",
               "Offline chunk-and-search: write the retrieval masks of a run's rows",
               resona::cli::setup_precompute);
