// A tokenized copy of the shipped WikiText-103 sample and a tiny run config over it,
// shared by the trainer and CLI tests.
#pragma once

#include <filesystem>
#include <string>

#include "data/prepare.h"
#include "data/tokenizer.h"
#include "data/wikitext.h"
#include "tests/data/data_paths.h"
#include "train/run_config.h"

namespace resona::testing {

// A fresh folder under the test's temp dir.
inline std::string fresh_dir(const std::string& name) {
  const char* tmp = std::getenv("TEST_TMPDIR");
  std::filesystem::path p = std::filesystem::path(tmp ? tmp : "/tmp") / name;
  std::filesystem::remove_all(p);
  std::filesystem::create_directories(p);
  return p.string();
}

// Tokenizes the shipped sample's train and valid splits once per process; returns the
// folder holding train/ and valid/.
inline const std::string& sample_dataset() {
  static const std::string dir = [] {
    const std::string out = fresh_dir("sample-dataset");
    data::Tokenizer tok = data::Tokenizer::load(sample_tokenizer());
    for (const char* split : {"train", "valid"}) {
      data::WikitextConfig wcfg;
      data::Corpus corpus = data::read_wikitext_corpus(
          samples_dir() + "/wikitext-103/wiki." + split + ".tokens", wcfg);
      data::PrepareConfig pcfg;
      pcfg.out_dir = out + "/" + split;
      pcfg.threads = 2;
      pcfg.progress = false;
      data::prepare_dataset(corpus, tok, pcfg);
    }
    return out;
  }();
  return dir;
}

// A tiny model and run that take milliseconds per step on the CPU.
inline train::RunConfig tiny_run(const std::string& run_dir) {
  train::RunConfig c;
  c.model.name = "tiny";
  c.model.vocab_size = 32000;
  c.model.hidden_size = 16;
  c.model.num_layers = 1;
  c.data.train = sample_dataset() + "/train";
  c.data.valid = sample_dataset() + "/valid";
  c.data.seq_len = 16;
  c.optimizer.lr = 1e-2;
  c.train.steps = 8;
  c.train.batch_size = 4;
  c.train.device = "cpu";
  c.train.log_every = 1;
  c.train.run_dir = run_dir;
  c.checkpoint.every = 2;
  c.checkpoint.keep_last = 2;
  c.eval.every = 0;
  c.eval.batches = 2;
  return c;
}

}  // namespace resona::testing
