// WikiText-103 reader: article boundaries, consolidation rules, and the published
// counts of the real validation split (when ../shared/data is present).
#include "data/wikitext.h"

#include <numeric>

#include "data/tokenizer.h"
#include "tests/data/data_paths.h"

namespace resona::testing {
namespace {

using namespace resona::data;

// Two articles in the official layout: a title with blank lines around it, paragraphs
// with a leading and trailing space, section headings at two depths, blank lines
// between everything, and a level-1 heading that is not an article boundary because it
// has no blank line before it.
const std::string kSnippet =
    " \n"
    " = Alpha = \n"
    " \n"
    " Alpha is a letter . \n"
    " It has 2 @,@ 000 uses . \n"
    " = Not a title = \n"
    " \n"
    " = = History = = \n"
    " \n"
    " It was used . \n"
    " \n"
    " = = = Uses in maths = = = \n"
    " \n"
    " Angles . \n"
    " \n"
    " \n"
    " = Beta = \n"
    " \n"
    " Beta follows . \n"
    " \n";

std::string consolidate(std::string_view article, const WikitextConfig& cfg) {
  std::string out;
  consolidate_wikitext_article(article, cfg, &out);
  return out;
}

TEST_CASE("data tests: where the files are") {
  MESSAGE("samples: " << samples_dir() << "; workspace: " << workspace_dir() << "; shared data: "
                      << (have_shared_data() ? shared_data_dir() : "absent (cases skipped)"));
  CHECK(std::filesystem::exists(sample_tokenizer()));
}

TEST_CASE("wikitext: heading levels") {
  std::string_view x;
  CHECK(wikitext_heading_level(" = Valkyria Chronicles III = ", &x) == 1);
  CHECK(x == "Valkyria Chronicles III");
  CHECK(wikitext_heading_level(" = = Gameplay = = ", &x) == 2);
  CHECK(x == "Gameplay");
  CHECK(wikitext_heading_level(" = = = Music and soundtrack = = = ", &x) == 3);
  CHECK(x == "Music and soundtrack");
  CHECK(wikitext_heading_level(" The = sign = is used . ") == 0);
  CHECK(wikitext_heading_level(" = = ") == 0);
  CHECK(wikitext_heading_level(" ") == 0);
  CHECK(wikitext_heading_level(" = unbalanced = = ") == 0);
}

TEST_CASE("wikitext: articles tile the file and start at a blank-framed title") {
  auto arts = split_wikitext_articles(kSnippet);
  REQUIRE(arts.size() == 2);
  CHECK(arts[0].title == "Alpha");
  CHECK(arts[1].title == "Beta");
  CHECK(std::string(arts[0].bytes) + std::string(arts[1].bytes) == kSnippet);
  CHECK(arts[1].bytes.substr(0, 13) == " \n = Beta = \n");
  // A preamble before the first title is a document of its own.
  const std::string text = " Loose text . \n" + kSnippet;
  auto with_pre = split_wikitext_articles(text);
  REQUIRE(with_pre.size() == 3);
  CHECK(with_pre[0].title.empty());
  CHECK(with_pre[0].bytes == " Loose text . \n");
}

TEST_CASE("wikitext: consolidation rules") {
  const std::string_view alpha = split_wikitext_articles(kSnippet)[0].bytes;
  // Defaults: title kept; section headings (any heading after the title, "= Not a
  // title =" included) and empty lines dropped; lines trimmed and joined with "\n".
  WikitextConfig cfg;
  CHECK(consolidate(alpha, cfg) ==
        "= Alpha =\nAlpha is a letter .\nIt has 2 @,@ 000 uses .\nIt was used .\nAngles .");

  WikitextConfig no_title;
  no_title.keep_title = false;
  CHECK(consolidate(alpha, no_title) ==
        "Alpha is a letter .\nIt has 2 @,@ 000 uses .\nIt was used .\nAngles .");

  WikitextConfig headings;
  headings.keep_headings = true;
  CHECK(
      consolidate(alpha, headings) ==
      "= Alpha =\nAlpha is a letter .\nIt has 2 @,@ 000 uses .\n= Not a title =\n= = History = =\n"
      "It was used .\n= = = Uses in maths = = =\nAngles .");

  // The paper's "excessively short title lines": with a threshold of 8 bytes of title
  // text, "Alpha" (5) and "History" (7) go, "Not a title" (11) and "Uses in maths" (13) stay.
  WikitextConfig short_dropped = headings;
  short_dropped.min_heading_chars = 8;
  CHECK(consolidate(alpha, short_dropped) ==
        "Alpha is a letter .\nIt has 2 @,@ 000 uses .\n= Not a title =\nIt was used .\n"
        "= = = Uses in maths = = =\nAngles .");

  WikitextConfig spaces;
  spaces.separator = " ";
  CHECK(consolidate(split_wikitext_articles(kSnippet)[1].bytes, spaces) ==
        "= Beta = Beta follows .");

  WikitextConfig verbatim;
  verbatim.verbatim = true;
  CHECK(consolidate(alpha, verbatim) == alpha);

  // A title-only article consolidates to nothing without its title (dropped later).
  CHECK(consolidate(" \n = Stub = \n \n \n", no_title).empty());
  // Settings that change the text change the description (and so the shards' hash).
  CHECK(cfg.describe() != headings.describe());
  CHECK(cfg.describe() != spaces.describe());
}

TEST_CASE("wikitext: counts of a hand-made snippet") {
  const WikitextCounts c = count_wikitext(kSnippet);
  CHECK(c.articles == 2);
  CHECK(c.lines == 20);
  // Alpha is a letter . (5) It has 2 @,@ 000 uses . (7) = Not a title = (5) = = History = = (5)
  // It was used . (4) = = = Uses in maths = = = (9) Angles . (2) = Alpha = (3) = Beta = (3)
  // Beta follows . (3)
  CHECK(c.words == 46);
  CHECK(c.tokens_with_eos() == 66);
}

TEST_CASE("wikitext: the shipped sample is whole articles of the real files") {
  struct Expect {
    const char* split;
    int64_t articles, lines, eos_count, mistral_tokens;
  };
  Tokenizer tok = Tokenizer::load(sample_tokenizer());
  for (const Expect& e :
       {Expect{"train", 13, 627, 29771, 39934}, Expect{"valid", 4, 131, 7076, 9881},
        Expect{"test", 5, 256, 11126, 14613}}) {
    INFO("split " << std::string(e.split));
    const std::string text = slurp(sample_wikitext(e.split));
    const WikitextCounts c = count_wikitext(text);
    CHECK(c.articles == e.articles);
    CHECK(c.lines == e.lines);
    CHECK(c.tokens_with_eos() == e.eos_count);
    CHECK(text.substr(0, 5) == " \n = ");               // starts at an article
    CHECK(text.substr(text.size() - 6) == " . \n \n");  // ends after a paragraph and its blank line
    CHECK(static_cast<int64_t>(tok.encode(text).size()) == e.mistral_tokens);
  }
}

TEST_CASE("wikitext: the sample's bytes are cut from the shared files unchanged" *
          doctest::skip(!have_shared_data())) {
  const std::string valid = slurp(shared_wikitext("wiki.valid.tokens"));
  const std::string train = slurp(shared_wikitext("wiki.train.tokens.prefix"));
  const std::string s_train = slurp(sample_wikitext("train"));
  const std::string s_valid = slurp(sample_wikitext("valid"));
  const std::string s_test = slurp(sample_wikitext("test"));
  CHECK(train.compare(0, s_train.size(), s_train) == 0);
  CHECK(valid.compare(0, s_valid.size(), s_valid) == 0);
  // test stands in for the unshipped test split: validation articles 6 to 10.
  auto arts = split_wikitext_articles(valid);
  REQUIRE(arts.size() == 60);
  std::string five;
  for (int i = 5; i < 10; ++i) five += arts[i].bytes;
  CHECK(five == s_test);
}

TEST_CASE("wikitext: real validation split: 60 articles, 217,646 tokens with <eos>" *
          doctest::skip(!have_shared_data())) {
  const std::string valid = slurp(shared_wikitext("wiki.valid.tokens"));
  CHECK(valid.size() == 1142309);
  const WikitextCounts c = count_wikitext(valid);
  CHECK(c.articles == 60);
  CHECK(c.lines == 3760);
  CHECK(c.words == 213886);
  CHECK(c.tokens_with_eos() == 217646);
  CHECK(c.unk == 1657);  // 0.77% of the words

  const WikitextCounts t = count_wikitext(slurp(shared_wikitext("wiki.train.tokens.prefix")));
  CHECK(t.articles == 154);
  CHECK(t.lines == 9702);
  CHECK(t.tokens_with_eos() == 548410);

  // The articles tile the file exactly.
  std::string joined;
  for (const WikitextArticle& a : split_wikitext_articles(valid)) joined += a.bytes;
  CHECK(joined == valid);
}

TEST_CASE("wikitext: Mistral token counts of the real validation split" *
          doctest::skip(!have_shared_data())) {
  const std::string valid = slurp(shared_wikitext("wiki.valid.tokens"));
  Tokenizer tok = Tokenizer::load(sample_tokenizer());
  // The whole file as one string (../shared/data/tokenizer/README.md).
  CHECK(tok.encode(valid).size() == 287539);

  auto per_article = [&](const WikitextConfig& cfg) {
    size_t n = 0;
    std::string text;
    for (const WikitextArticle& a : split_wikitext_articles(valid)) {
      text.clear();
      consolidate_wikitext_article(a.bytes, cfg, &text);
      n += tok.encode(text).size();
    }
    return n;
  };
  // Per article, bytes unchanged: exactly the whole-file count. Each article begins with
  // " \n", which encodes the same at the start of a string (dummy prefix) as after the
  // previous article's last "\n".
  WikitextConfig verbatim;
  verbatim.verbatim = true;
  CHECK(per_article(verbatim) == 287539);
  // Consolidated (the default): 10,259 fewer (3.6%), for the dropped blank lines and
  // section headings and the trimmed line-edge spaces.
  CHECK(per_article(WikitextConfig{}) == 277280);
  WikitextConfig headings;
  headings.keep_headings = true;
  CHECK(per_article(headings) == 282909);
}

}  // namespace
}  // namespace resona::testing
