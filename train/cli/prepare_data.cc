// resona prepare-data: raw text -> SentencePiece tokens -> token shards + document index.
//
//   resona prepare-data wikitext103 --dir DIR --out OUT [--splits train,valid,test]
//       [--variant tokens|raw] [--verbatim] [--no-title] [--keep-headings]
//       [--min-heading-chars N] [common options]
//     reads DIR/wiki.<split>.<variant> (the official files, unchanged), one document per
//     article (consolidation rules in data/wikitext.h), writes OUT/<split>/.
//   resona prepare-data text --input FILE --out OUT [--format auto|lines|paragraphs|whole|jsonl]
//       [--json-field text] [common options]
//     plain text or JSON Lines through the same pipeline, writes OUT/.
//
// Common options: --tokenizer MODEL (default: the shipped Mistral model),
// --train-tokenizer VOCAB (train a SentencePiece BPE model on the training text first,
// saved as OUT/tokenizer.model), --threads N, --shard-mb MB, --no-progress.
// Re-running skips shards that are complete and verified; see data/prepare.h.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "core/check.h"
#include "data/hash.h"
#include "data/prepare.h"
#include "data/text_reader.h"
#include "data/wikitext.h"
#include "train/cli/command.h"

namespace resona::cli {
namespace {

namespace fs = std::filesystem;
using namespace resona::data;

struct PrepareOptions {
  // wikitext103
  std::string dir;
  std::vector<std::string> splits = {"train", "valid", "test"};
  std::string variant = "tokens";
  WikitextConfig wikitext;
  bool no_title = false;
  // text
  std::string input;
  std::string format = "auto";
  std::string json_field = "text";
  // common
  std::string out;
  std::string tokenizer;
  int train_vocab = 0;
  int threads = 0;
  double shard_mb = 64;
  bool no_progress = false;
};

// Relative paths are taken from where the user ran the command, also under `bazel run`.
std::string user_path(const std::string& p) {
  if (p.empty() || fs::path(p).is_absolute()) return p;
  if (const char* w = std::getenv("BUILD_WORKING_DIRECTORY")) return (fs::path(w) / p).string();
  return p;
}

void add_common(CLI::App* app, PrepareOptions* o) {
  app->add_option("--out", o->out, "Output folder")->required();
  app->add_option(
      "--tokenizer", o->tokenizer,
      "SentencePiece .model (default: data/samples/tokenizer/tokenizer.model, Mistral-7B v0.1)");
  app->add_option("--train-tokenizer", o->train_vocab,
                  "Train a SentencePiece BPE model of this vocabulary size on the training text "
                  "(saved as OUT/tokenizer.model, reused if present) instead of --tokenizer");
  app->add_option("--threads", o->threads, "Worker threads (default: all hardware threads)");
  app->add_option("--shard-mb", o->shard_mb, "Input text per shard, in MB")->capture_default_str();
  app->add_flag("--no-progress", o->no_progress, "No progress bar");
}

std::string fmt_count(uint64_t v) {
  std::string s = std::to_string(v);
  for (int i = static_cast<int>(s.size()) - 3; i > 0; i -= 3) s.insert(static_cast<size_t>(i), ",");
  return s;
}

Tokenizer resolve_tokenizer(const PrepareOptions& o, const Corpus* train_text) {
  if (o.train_vocab > 0) {
    RESONA_CHECK(o.tokenizer.empty()) << "--tokenizer and --train-tokenizer exclude each other";
    RESONA_CHECK(train_text != nullptr) << "--train-tokenizer needs the train split";
    const std::string prefix = user_path(o.out) + "/tokenizer";
    if (fs::exists(prefix + ".model")) {
      std::printf("reusing %s.model (delete it to train again)\n", prefix.c_str());
    } else {
      fs::create_directories(user_path(o.out));
      std::printf("training a SentencePiece BPE model (vocab %d) on %s\n", o.train_vocab,
                  train_text->source.c_str());
      TokenizerTrainConfig tc;
      tc.vocab_size = o.train_vocab;
      tc.threads = o.threads > 0 ? o.threads : 2;
      train_tokenizer(*train_text, prefix, tc);
    }
    return Tokenizer::load(prefix + ".model");
  }
  return Tokenizer::load(o.tokenizer.empty() ? default_tokenizer_path() : user_path(o.tokenizer));
}

int resolved_threads(const PrepareOptions& o) {
  return o.threads > 0 ? o.threads
                       : std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
}

void report(const std::string& name, const PrepareStats& s, const std::string& out) {
  std::printf(
      "%s: %s documents (%s dropped as empty), %s tokens, %.2f MB of text in %.2f s (%.2f MB/s "
      "tokenized); shards: %zu (%zu skipped as already complete, %zu redone) -> %s\n",
      name.c_str(), fmt_count(s.documents).c_str(), fmt_count(s.dropped_docs).c_str(),
      fmt_count(s.tokens).c_str(), s.input_bytes / 1e6, s.seconds, s.mb_per_s(), s.shards,
      s.shards_skipped, s.shards_redone, out.c_str());
  std::fflush(stdout);
}

PrepareConfig prepare_config(const PrepareOptions& o, const std::string& out,
                             const std::string& label) {
  RESONA_CHECK(o.shard_mb > 0) << "--shard-mb must be positive";
  PrepareConfig pc;
  pc.out_dir = out;
  pc.threads = o.threads;
  pc.shard_bytes = static_cast<uint64_t>(o.shard_mb * 1e6);
  pc.progress = !o.no_progress;
  pc.label = label;
  return pc;
}

int run_wikitext(PrepareOptions o) {
  o.wikitext.keep_title = !o.no_title;
  const std::string dir = user_path(o.dir);
  std::vector<std::pair<std::string, std::string>> files;  // split, path
  for (const std::string& split : o.splits) {
    const std::string path = wikitext_split_path(dir, split, o.variant);
    if (fs::exists(path)) {
      files.emplace_back(split, path);
    } else {
      std::printf("%s: not found, split '%s' skipped\n", path.c_str(), split.c_str());
    }
  }
  RESONA_CHECK(!files.empty()) << dir << ": none of the requested WikiText-103 files (wiki.{"
                               << "train,valid,test}." << o.variant << ") is there";
  std::printf("prepare-data wikitext103: dir=%s out=%s variant=%s threads=%d shard_mb=%g\n  %s\n",
              dir.c_str(), user_path(o.out).c_str(), o.variant.c_str(), resolved_threads(o),
              o.shard_mb, o.wikitext.describe().c_str());

  std::vector<Corpus> corpora;
  const Corpus* train = nullptr;
  for (const auto& [split, path] : files) {
    corpora.push_back(read_wikitext_corpus(path, o.wikitext));
    const WikitextCounts c = count_wikitext(*corpora.back().bytes);
    std::printf("%s: %s: %s articles, %s lines, %s words, %s tokens counting one <eos> a line\n",
                split.c_str(), path.c_str(), fmt_count(c.articles).c_str(),
                fmt_count(c.lines).c_str(), fmt_count(c.words).c_str(),
                fmt_count(c.tokens_with_eos()).c_str());
  }
  for (size_t i = 0; i < files.size(); ++i) {
    if (files[i].first == "train") train = &corpora[i];
  }
  const Tokenizer tok = resolve_tokenizer(o, train);
  std::printf("tokenizer: %s (vocab %d, hash %s)\n", tok.path().c_str(), tok.vocab_size(),
              hex64(tok.hash()).c_str());
  std::fflush(stdout);
  for (size_t i = 0; i < files.size(); ++i) {
    const std::string out = user_path(o.out) + "/" + files[i].first;
    report(files[i].first, prepare_dataset(corpora[i], tok, prepare_config(o, out, files[i].first)),
           out);
  }
  return 0;
}

int run_text(const PrepareOptions& o) {
  TextReaderConfig rc;
  rc.format = text_format_from_name(o.format);
  rc.json_field = o.json_field;
  const Corpus corpus = read_text_corpus(user_path(o.input), rc);
  std::printf("prepare-data text: input=%s (%s) out=%s threads=%d shard_mb=%g: %s documents\n",
              corpus.source.c_str(), corpus.settings.c_str(), user_path(o.out).c_str(),
              resolved_threads(o), o.shard_mb, fmt_count(corpus.docs.size()).c_str());
  const Tokenizer tok = resolve_tokenizer(o, &corpus);
  std::printf("tokenizer: %s (vocab %d, hash %s)\n", tok.path().c_str(), tok.vocab_size(),
              hex64(tok.hash()).c_str());
  std::fflush(stdout);
  const std::string out = user_path(o.out);
  report("text", prepare_dataset(corpus, tok, prepare_config(o, out, "text")), out);
  return 0;
}

std::function<int()> setup_prepare_data(CLI::App& cmd) {
  auto o = std::make_shared<PrepareOptions>();
  cmd.require_subcommand(1);
  CLI::App* wt = cmd.add_subcommand("wikitext103",
                                    "The official WikiText-103 files, one document per article");
  wt->add_option("--dir", o->dir, "Folder with wiki.{train,valid,test}.{tokens,raw}")->required();
  wt->add_option("--splits", o->splits, "Splits to prepare (comma-separated)")
      ->delimiter(',')
      ->capture_default_str();
  wt->add_option("--variant", o->variant, "tokens or raw")
      ->check(CLI::IsMember({"tokens", "raw"}))
      ->capture_default_str();
  wt->add_flag("--verbatim", o->wikitext.verbatim,
               "Each article's bytes unchanged (blank lines and headings kept)");
  wt->add_flag("--no-title", o->no_title, "Drop the article's title line");
  wt->add_flag("--keep-headings", o->wikitext.keep_headings, "Keep section headings");
  wt->add_option("--min-heading-chars", o->wikitext.min_heading_chars,
                 "Drop kept title/heading lines whose text is shorter than this")
      ->capture_default_str();
  add_common(wt, o.get());
  CLI::App* tx = cmd.add_subcommand("text", "Plain text or JSON Lines");
  tx->add_option("--input", o->input, "Input file")->required();
  tx->add_option("--format", o->format, "auto, lines, paragraphs, whole or jsonl")
      ->check(CLI::IsMember({"auto", "lines", "paragraphs", "whole", "jsonl"}))
      ->capture_default_str();
  tx->add_option("--json-field", o->json_field, "JSONL: the field holding the text")
      ->capture_default_str();
  add_common(tx, o.get());
  return [o, wt]() -> int { return wt->parsed() ? run_wikitext(*o) : run_text(*o); };
}

}  // namespace

RESONA_COMMAND(prepare_data, "prepare-data",
               "Tokenize a corpus into token shards with a document index", setup_prepare_data);

}  // namespace resona::cli
