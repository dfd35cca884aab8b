// Tokenizer: a SentencePiece model (Debian's libsentencepiece), loaded from a `.model`
// file. By default the Mistral-7B v0.1 model (32,000 pieces, byte fallback, BOS 1,
// EOS 2, no pad id) that the paper's FLA backbones use, shipped in
// data/samples/tokenizer/ with its Apache-2.0 license.
//
// The tokenizer hash is hash64 (data/hash.h) of the model file's bytes; shards record
// it, and a dataset tokenized with another model is refused.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "data/corpus.h"

namespace sentencepiece {
class SentencePieceProcessor;
}

namespace resona::data {

class Tokenizer {
 public:
  // Loads `path`; a missing file or one that is not a SentencePiece model is an error
  // naming it.
  static Tokenizer load(const std::string& path);

  // Ids of `text`, with no BOS/EOS added.
  void encode(std::string_view text, std::vector<int>* ids) const;
  std::vector<int32_t> encode(std::string_view text) const;
  std::string decode(const std::vector<int32_t>& ids) const;

  // A Tokenizer with its own SentencePiece processor over the same model, for a worker
  // thread (the processor is then never shared between threads).
  Tokenizer clone() const;

  const std::string& path() const { return path_; }
  uint64_t hash() const { return hash_; }
  int vocab_size() const { return vocab_size_; }
  int bos_id() const { return bos_id_; }
  int eos_id() const { return eos_id_; }
  int pad_id() const { return pad_id_; }  // -1 when the model has none (Mistral)
  int unk_id() const { return unk_id_; }

 private:
  Tokenizer() = default;
  void init_from_bytes();

  std::string path_;
  std::shared_ptr<const std::string> model_bytes_;
  std::shared_ptr<sentencepiece::SentencePieceProcessor> sp_;
  uint64_t hash_ = 0;
  int vocab_size_ = 0, bos_id_ = -1, eos_id_ = -1, pad_id_ = -1, unk_id_ = -1;
};

// The shipped Mistral model: data/samples/tokenizer/tokenizer.model, looked up in the
// runfiles of the running binary or test, under $BUILD_WORKSPACE_DIRECTORY (bazel run),
// and relative to the current directory. An error listing where it looked if absent.
std::string default_tokenizer_path();

// Trains a SentencePiece model on the documents of `corpus` (finished text, one
// sentence per line of it) and writes `<model_prefix>.model` and `.vocab`.
// Returns the .model path.
struct TokenizerTrainConfig {
  int vocab_size = 8000;
  std::string model_type = "bpe";  // bpe or unigram
  bool byte_fallback = true;       // no input is ever out of vocabulary
  double character_coverage = 0.9995;
  int threads = 2;
  int64_t max_sentences = 2000000;  // SentencePiece's input_sentence_size (sampled beyond)
};
std::string train_tokenizer(const Corpus& corpus, const std::string& model_prefix,
                            const TokenizerTrainConfig& cfg = {});

}  // namespace resona::data
