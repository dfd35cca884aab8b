#include "data/tokenizer.h"

#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <cstdlib>
#include <filesystem>
#include <sstream>
#include <unordered_map>

#include "core/check.h"
#include "data/hash.h"

namespace resona::data {

namespace fs = std::filesystem;

Tokenizer Tokenizer::load(const std::string& path) {
  Tokenizer t;
  t.path_ = path;
  t.model_bytes_ = read_file_bytes(path);
  t.init_from_bytes();
  return t;
}

void Tokenizer::init_from_bytes() {
  sp_ = std::make_shared<sentencepiece::SentencePieceProcessor>();
  auto st = sp_->LoadFromSerializedProto(*model_bytes_);
  RESONA_CHECK(st.ok()) << path_ << ": not a SentencePiece model: " << st.ToString();
  hash_ = hash64(*model_bytes_);
  vocab_size_ = sp_->GetPieceSize();
  bos_id_ = sp_->bos_id();
  eos_id_ = sp_->eos_id();
  pad_id_ = sp_->pad_id();
  unk_id_ = sp_->unk_id();
  RESONA_CHECK(vocab_size_ > 0) << path_ << ": empty vocabulary";
}

Tokenizer Tokenizer::clone() const {
  Tokenizer t;
  t.path_ = path_;
  t.model_bytes_ = model_bytes_;
  t.init_from_bytes();
  return t;
}

void Tokenizer::encode(std::string_view text, std::vector<int>* ids) const {
  auto st = sp_->Encode(text, ids);
  RESONA_CHECK(st.ok()) << path_ << ": encoding failed: " << st.ToString();
}

std::vector<int32_t> Tokenizer::encode(std::string_view text) const {
  std::vector<int> ids;
  encode(text, &ids);
  return std::vector<int32_t>(ids.begin(), ids.end());
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids) const {
  std::vector<int> v(ids.begin(), ids.end());
  std::string out;
  auto st = sp_->Decode(v, &out);
  RESONA_CHECK(st.ok()) << path_ << ": decoding failed: " << st.ToString();
  return out;
}

std::string default_tokenizer_path() {
  const std::string rel = "data/samples/tokenizer/tokenizer.model";
  std::vector<std::string> candidates;
  for (const char* var : {"RUNFILES_DIR", "TEST_SRCDIR"}) {
    if (const char* d = std::getenv(var)) candidates.push_back(std::string(d) + "/resona/" + rel);
  }
  std::error_code ec;
  fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (!ec) candidates.push_back(exe.string() + ".runfiles/resona/" + rel);
  if (const char* w = std::getenv("BUILD_WORKSPACE_DIRECTORY"))
    candidates.push_back(std::string(w) + "/" + rel);
  candidates.push_back(rel);
  for (const std::string& c : candidates) {
    if (fs::is_regular_file(c, ec)) {
      // The source file behind the runfiles link: a stable path for messages and the index.
      fs::path real = fs::canonical(c, ec);
      return ec ? c : real.string();
    }
  }
  std::ostringstream os;
  for (const std::string& c : candidates) os << "\n  " << c;
  RESONA_FAIL() << "the default tokenizer (" << rel << ") was not found; looked at:" << os.str()
                << "\npass a SentencePiece model with --tokenizer";
  return "";
}

namespace {

// Feeds the finished documents to the trainer, one line of text a sentence.
class CorpusSentences : public sentencepiece::SentenceIterator {
 public:
  explicit CorpusSentences(const Corpus& c) : c_(c) { advance(); }
  bool done() const override { return done_; }
  void Next() override { advance(); }
  const std::string& value() const override { return value_; }
  sentencepiece::util::Status status() const override { return sentencepiece::util::Status(); }

 private:
  void advance() {
    for (;;) {
      if (pos_ >= text_.size()) {
        if (doc_ >= c_.docs.size()) {
          done_ = true;
          value_.clear();
          return;
        }
        c_.finished_text(doc_++, &text_);
        pos_ = 0;
        continue;
      }
      size_t nl = text_.find('\n', pos_);
      size_t end = nl == std::string::npos ? text_.size() : nl;
      value_.assign(text_, pos_, end - pos_);
      pos_ = end + 1;
      if (!value_.empty()) return;
    }
  }

  const Corpus& c_;
  size_t doc_ = 0;
  std::string text_;
  size_t pos_ = 0;
  std::string value_;
  bool done_ = false;
};

}  // namespace

std::string train_tokenizer(const Corpus& corpus, const std::string& model_prefix,
                            const TokenizerTrainConfig& cfg) {
  RESONA_CHECK(cfg.vocab_size > 0) << "tokenizer training: vocab_size must be positive";
  RESONA_CHECK(cfg.model_type == "bpe" || cfg.model_type == "unigram")
      << "tokenizer training: model_type '" << cfg.model_type << "': expected bpe or unigram";
  std::unordered_map<std::string, std::string> args = {
      {"model_prefix", model_prefix},
      {"vocab_size", std::to_string(cfg.vocab_size)},
      {"model_type", cfg.model_type},
      {"byte_fallback", cfg.byte_fallback ? "true" : "false"},
      {"character_coverage", std::to_string(cfg.character_coverage)},
      {"num_threads", std::to_string(cfg.threads)},
      {"input_sentence_size", std::to_string(cfg.max_sentences)},
      {"shuffle_input_sentence", "true"},
      // Same special ids as the Mistral model: <unk> 0, <s> 1, </s> 2, no pad.
      {"unk_id", "0"},
      {"bos_id", "1"},
      {"eos_id", "2"},
      {"pad_id", "-1"},
      {"split_digits", "true"},
      {"minloglevel", "1"},
  };
  CorpusSentences it(corpus);
  auto st = sentencepiece::SentencePieceTrainer::Train(args, &it);
  RESONA_CHECK(st.ok()) << "training a SentencePiece model on " << corpus.source
                        << " failed: " << st.ToString();
  return model_prefix + ".model";
}

}  // namespace resona::data
