// SentencePiece wrapper: the shipped Mistral model, errors, and training a model with
// the SentencePiece library.
#include "data/tokenizer.h"

#include "data/hash.h"
#include "data/wikitext.h"
#include "tests/data/data_paths.h"

namespace resona::testing {
namespace {

using namespace resona::data;

TEST_CASE("tokenizer: the shipped Mistral-7B v0.1 model") {
  Tokenizer tok = Tokenizer::load(sample_tokenizer());
  CHECK(tok.vocab_size() == 32000);
  CHECK(tok.unk_id() == 0);
  CHECK(tok.bos_id() == 1);
  CHECK(tok.eos_id() == 2);
  CHECK(tok.pad_id() == -1);
  // Mistral's ids (LLaMA-2 would give 15043, 3186).
  CHECK(tok.encode("Hello world") == std::vector<int32_t>{22557, 1526});
  const std::string text =
      " = Valkyria Chronicles III = \n Senjō no Valkyria 3 : <unk> Chronicles \n";
  CHECK(tok.decode(tok.encode(text)) == text);
  // The hash is hash64 of the file's bytes.
  CHECK(tok.hash() == hash64(slurp(sample_tokenizer())));
  CHECK(tok.clone().encode(text) == tok.encode(text));
}

TEST_CASE("tokenizer: the default path finds the shipped model") {
  Tokenizer tok = Tokenizer::load(default_tokenizer_path());
  CHECK(tok.hash() == Tokenizer::load(sample_tokenizer()).hash());
}

TEST_CASE("tokenizer: a missing or invalid model is an error naming the file") {
  check_throws_with([] { Tokenizer::load("/nonexistent/tok.model"); }, {"/nonexistent/tok.model"});
  const std::string bad = fresh_temp_dir("badmodel") + "/bad.model";
  spit(bad, "this is not a protobuf");
  check_throws_with([&] { Tokenizer::load(bad); }, {bad, "SentencePiece"});
}

TEST_CASE("tokenizer: a model trained with the SentencePiece library on the sample") {
  const Corpus c = read_wikitext_corpus(sample_wikitext("train"), WikitextConfig{});
  const std::string prefix = fresh_temp_dir("trained") + "/tok";
  TokenizerTrainConfig cfg;
  cfg.vocab_size = 1000;
  const std::string model = train_tokenizer(c, prefix, cfg);
  Tokenizer tok = Tokenizer::load(model);
  CHECK(tok.vocab_size() == 1000);
  CHECK(tok.eos_id() == 2);
  const std::string text = "Valkyria Chronicles III is a tactical role @-@ playing game .";
  const std::vector<int32_t> ids = tok.encode(text);
  CHECK(!ids.empty());
  for (int32_t id : ids) CHECK(id < 1000);
  CHECK(tok.decode(ids) == text);
  // Byte fallback: text it never saw still round-trips.
  CHECK(tok.decode(tok.encode("Ωmega ✓")) == "Ωmega ✓");
}

}  // namespace
}  // namespace resona::testing
