// The prepare pipeline (readers -> tokenizer -> shards + index) and its re-run rules.
#include "data/prepare.h"

#include <filesystem>
#include <map>

#include "data/hash.h"
#include "data/text_reader.h"
#include "data/wikitext.h"
#include "tests/data/data_paths.h"

namespace resona::testing {
namespace {

using namespace resona::data;
namespace fs = std::filesystem;

const Tokenizer& mistral() {
  static const Tokenizer tok = Tokenizer::load(sample_tokenizer());
  return tok;
}

PrepareConfig quiet(const std::string& dir, int threads = 2, uint64_t shard_bytes = 64ull << 20) {
  PrepareConfig c;
  c.out_dir = dir;
  c.threads = threads;
  c.shard_bytes = shard_bytes;
  c.progress = false;
  return c;
}

// Every document of the dataset equals the tokenizer applied to the corpus's finished text.
void check_matches_corpus(const TokenDataset& ds, const Corpus& c) {
  uint64_t d = 0;
  std::string text;
  for (size_t i = 0; i < c.docs.size(); ++i) {
    c.finished_text(i, &text);
    if (text.empty()) continue;
    REQUIRE(d < ds.num_docs());
    CHECK(ds.doc_tokens(d) == mistral().encode(text));
    ++d;
  }
  CHECK(d == ds.num_docs());
}

std::map<std::string, uint64_t> checksums(const std::string& dir) {
  std::map<std::string, uint64_t> m;
  for (const ShardEntry& e : read_dataset_index(dir).shards) m[e.file] = e.checksum;
  return m;
}

TEST_CASE("prepare: the sample's validation split, one document per article") {
  const std::string out = fresh_temp_dir("prep_valid");
  const Corpus c = read_wikitext_corpus(sample_wikitext("valid"), WikitextConfig{});
  const PrepareStats s = prepare_dataset(c, mistral(), quiet(out));
  CHECK(s.documents == 4);
  CHECK(s.dropped_docs == 0);
  CHECK(s.tokens == 9539);
  CHECK(s.shards == 1);
  CHECK(s.shards_skipped == 0);
  CHECK(s.input_bytes == 36865);
  auto ds = TokenDataset::open(out);
  CHECK(ds->num_docs() == 4);
  CHECK(ds->num_tokens() == 9539);
  CHECK(ds->vocab_size() == 32000);
  CHECK(ds->eos_id() == 2);
  CHECK(ds->index().tokenizer_hash == mistral().hash());
  CHECK(ds->index().dtype == TokenDType::kUint16);
  check_matches_corpus(*ds, c);
  CHECK(mistral().decode(ds->doc_tokens(0)).substr(0, 40) ==
        "= Homarus gammarus =\nHomarus gammarus , ");
}

TEST_CASE("prepare: shards do not depend on the thread count") {
  const Corpus c = read_wikitext_corpus(sample_wikitext("train"), WikitextConfig{});
  const std::string one = fresh_temp_dir("prep_t1"), two = fresh_temp_dir("prep_t2");
  // Small shards: 13 articles of 150 KB in several shards.
  const PrepareStats a = prepare_dataset(c, mistral(), quiet(one, 1, 40000));
  const PrepareStats b = prepare_dataset(c, mistral(), quiet(two, 2, 40000));
  CHECK(a.shards > 2);
  CHECK(a.shards == b.shards);
  CHECK(a.tokens == 38314);
  CHECK(b.tokens == 38314);
  CHECK(checksums(one) == checksums(two));
  auto ds = TokenDataset::open(two);
  CHECK(ds->num_docs() == 13);
  CHECK(ds->shards().size() == a.shards);
  check_matches_corpus(*ds, c);
}

TEST_CASE("prepare: a re-run skips verified shards and redoes damaged ones") {
  const Corpus c = read_wikitext_corpus(sample_wikitext("train"), WikitextConfig{});
  const std::string out = fresh_temp_dir("prep_rerun");
  const PrepareStats first = prepare_dataset(c, mistral(), quiet(out, 2, 40000));
  const auto sums = checksums(out);
  REQUIRE(first.shards >= 3);

  const PrepareStats again = prepare_dataset(c, mistral(), quiet(out, 2, 40000));
  CHECK(again.shards_skipped == first.shards);
  CHECK(again.shards_redone == 0);
  CHECK(again.tokenized_bytes == 0);
  CHECK(again.tokens == first.tokens);
  CHECK(again.documents == first.documents);
  CHECK(checksums(out) == sums);

  // One shard corrupted, one truncated, one deleted: exactly those are redone.
  const std::string s0 = out + "/" + shard_file_name(0), s1 = out + "/" + shard_file_name(1),
                    s2 = out + "/" + shard_file_name(2);
  std::string b0 = slurp(s0);
  b0[b0.size() / 2] ^= 0x10;
  spit(s0, b0);
  const std::string b1 = slurp(s1);
  spit(s1, b1.substr(0, b1.size() - 100));
  fs::remove(s2);
  const PrepareStats fix = prepare_dataset(c, mistral(), quiet(out, 2, 40000));
  CHECK(fix.shards_redone == 2);  // s0 and s1; s2 was simply missing
  CHECK(fix.shards_skipped == first.shards - 3);
  CHECK(checksums(out) == sums);
  CHECK_NOTHROW(TokenDataset::open(out));

  // Other settings: every shard redone (its source hash differs).
  WikitextConfig headings;
  headings.keep_headings = true;
  const Corpus h = read_wikitext_corpus(sample_wikitext("train"), headings);
  const PrepareStats other = prepare_dataset(h, mistral(), quiet(out, 2, 40000));
  CHECK(other.shards_skipped == 0);
  CHECK(other.tokens == 39131);
  check_matches_corpus(*TokenDataset::open(out), h);

  // Fewer, larger shards: the stale ones of the earlier plan are removed.
  const PrepareStats big = prepare_dataset(h, mistral(), quiet(out, 2, 1 << 20));
  CHECK(big.shards == 1);
  CHECK(!fs::exists(s1));
  CHECK(TokenDataset::open(out)->num_tokens() == 39131);
}

TEST_CASE("prepare: documents that consolidate to nothing are dropped and counted") {
  const std::string dir = fresh_temp_dir("prep_drop");
  spit(dir + "/wiki.valid.tokens",
       " \n = Stub = \n \n \n = Real = \n \n Some text . \n \n \n = Another stub = \n \n");
  WikitextConfig cfg;
  cfg.keep_title = false;
  const Corpus c = read_wikitext_corpus(dir + "/wiki.valid.tokens", cfg);
  REQUIRE(c.docs.size() == 3);
  const PrepareStats s = prepare_dataset(c, mistral(), quiet(dir + "/out"));
  CHECK(s.documents == 1);
  CHECK(s.dropped_docs == 2);
  auto ds = TokenDataset::open(dir + "/out");
  CHECK(ds->index().dropped_docs == 2);
  CHECK(mistral().decode(ds->doc_tokens(0)) == "Some text .");
}

TEST_CASE("text reader: JSON Lines with a text field") {
  const std::string dir = fresh_temp_dir("jsonl");
  const std::string path = dir + "/docs.jsonl";
  spit(path,
       "{\"text\": \"First document.\\nWith two lines.\", \"id\": 1}\n"
       "\n"
       "{\"id\": 2, \"text\": \"Second: caf\\u00e9 \\\"quoted\\\"\"}\n"
       "{\"text\": \"\"}\n");
  const Corpus c = read_text_corpus(path);
  REQUIRE(c.docs.size() == 3);
  CHECK(c.docs[0] == "First document.\nWith two lines.");
  CHECK(c.docs[1] == "Second: café \"quoted\"");
  const Corpus copy = c;  // spans stay valid in copies
  CHECK(copy.docs[1] == "Second: café \"quoted\"");

  const PrepareStats s = prepare_dataset(c, mistral(), quiet(dir + "/out"));
  CHECK(s.documents == 2);
  CHECK(s.dropped_docs == 1);
  auto ds = TokenDataset::open(dir + "/out");
  CHECK(ds->doc_tokens(1) == mistral().encode("Second: café \"quoted\""));

  TextReaderConfig field;
  field.json_field = "body";
  spit(dir + "/other.jsonl", "{\"body\": \"x\"}\n{\"text\": \"y\"}\n");
  check_throws_with([&] { read_text_corpus(dir + "/other.jsonl", field); },
                    {dir + "/other.jsonl:2", "no field \"body\""});
  spit(dir + "/broken.jsonl", "{\"text\": \"ok\"}\n{\"text\": \"unterminated}\n");
  check_throws_with([&] { read_text_corpus(dir + "/broken.jsonl"); },
                    {dir + "/broken.jsonl:2", "JSON"});
  spit(dir + "/num.jsonl", "{\"text\": 5}\n");
  check_throws_with([&] { read_text_corpus(dir + "/num.jsonl"); },
                    {dir + "/num.jsonl:1", "string"});
  spit(dir + "/arr.jsonl", "[1, 2]\n");
  check_throws_with([&] { read_text_corpus(dir + "/arr.jsonl"); },
                    {dir + "/arr.jsonl:1", "object"});
}

TEST_CASE("text reader: plain text as lines, paragraphs or one document") {
  const std::string dir = fresh_temp_dir("plain");
  const std::string path = dir + "/book.txt";
  spit(path, "First line.\nSecond line.\n\n  \nThird, after a blank.\r\nFourth.\n");
  const Corpus lines = read_text_corpus(path);  // auto: lines for .txt
  REQUIRE(lines.docs.size() == 4);
  CHECK(lines.docs[0] == "First line.");
  CHECK(lines.docs[2] == "Third, after a blank.");
  TextReaderConfig para;
  para.format = TextFormat::kParagraphs;
  const Corpus p = read_text_corpus(path, para);
  REQUIRE(p.docs.size() == 2);
  CHECK(p.docs[0] == "First line.\nSecond line.");
  CHECK(p.docs[1] == "Third, after a blank.\r\nFourth.");
  TextReaderConfig whole;
  whole.format = TextFormat::kWhole;
  const Corpus w = read_text_corpus(path, whole);
  REQUIRE(w.docs.size() == 1);
  CHECK(w.docs[0] == slurp(path));
  CHECK(text_format_from_name("jsonl") == TextFormat::kJsonl);
  check_throws_with([] { text_format_from_name("csv"); }, {"csv"});
  check_throws_with([&] { read_text_corpus(dir + "/missing.txt"); }, {dir + "/missing.txt"});

  const PrepareStats s = prepare_dataset(p, mistral(), quiet(dir + "/out"));
  CHECK(s.documents == 2);
  check_matches_corpus(*TokenDataset::open(dir + "/out"), p);
}

TEST_CASE("prepare: real validation split, per article and as one document" *
          doctest::skip(!have_shared_data())) {
  const std::string out = fresh_temp_dir("prep_real");
  const std::string file = shared_wikitext("wiki.valid.tokens");
  const PrepareStats s = prepare_dataset(read_wikitext_corpus(file, WikitextConfig{}), mistral(),
                                         quiet(out + "/articles"));
  CHECK(s.documents == 60);
  CHECK(s.tokens == 277280);  // consolidated; see wikitext_test.cc for the difference
  WikitextConfig verbatim;
  verbatim.verbatim = true;
  const PrepareStats v =
      prepare_dataset(read_wikitext_corpus(file, verbatim), mistral(), quiet(out + "/verbatim"));
  CHECK(v.documents == 60);
  CHECK(v.tokens == 287539);
  // The generic reader, whole file as one document: the count of the tokenizer README.
  TextReaderConfig whole;
  whole.format = TextFormat::kWhole;
  const PrepareStats w =
      prepare_dataset(read_text_corpus(file, whole), mistral(), quiet(out + "/whole"));
  CHECK(w.documents == 1);
  CHECK(w.tokens == 287539);
}

}  // namespace
}  // namespace resona::testing
