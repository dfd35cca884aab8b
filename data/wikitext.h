// WikiText-103 (Merity et al. 2016): the official files `wiki.{train,valid,test}.{tokens,raw}`,
// read unchanged, split into articles and consolidated into one document per article.
//
// File format (see ../shared/data/wikitext/README.md): UTF-8, `\n` endings, every line
// starts with a space and ends with ` \n`, a blank line is ` \n`. An article starts with
// the three lines ` \n = Title = \n \n`; section headings are ` = = X = = ` (deeper
// levels add `=` pairs).
//
// Article boundaries: a level-1 heading line (` = X = `) with a blank line before it (or
// the start of the file) and a blank line after it. The article's bytes run from that
// preceding blank line up to the next article's preceding blank line, so the articles
// of a file tile it exactly. Text before the first title (none in the official files)
// is a document of its own.
//
// Consolidation (the paper: "consolidate all samples from the same Wikipedia entry into
// a single sample, eliminating excessively short title lines or empty lines"). With the
// defaults below a document is the article's paragraphs, each trimmed of its leading and
// trailing space, joined with "\n", preceded by the article's title line ("= Title =");
// empty lines and section headings are dropped. `verbatim` keeps the article's bytes
// unchanged instead (every line, blank ones and headings included).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "data/corpus.h"

namespace resona::data {

struct WikitextConfig {
  // The article exactly as in the file; the options below are then ignored.
  bool verbatim = false;
  // Keep the article's title line ("= Title =", trimmed) as its first line.
  bool keep_title = true;
  // Keep section headings ("= = Section = =", any depth >= 2, trimmed).
  bool keep_headings = false;
  // Among the kept title/heading lines, drop those whose text (without the `=` markup)
  // is shorter than this many bytes: the paper's "excessively short title lines".
  int min_heading_chars = 0;
  // Placed between the kept lines of an article.
  std::string separator = "\n";

  std::string describe() const;  // one line, stable: part of the shards' source hash
};

struct WikitextArticle {
  std::string_view title;  // "Homarus gammarus"; empty for a preamble before the first title
  std::string_view bytes;  // the article's lines, unchanged
};

// The articles of a WikiText file, in order; their `bytes` tile `text` exactly (a
// whitespace-only preamble is skipped).
std::vector<WikitextArticle> split_wikitext_articles(std::string_view text);

// Heading level of one line (without its '\n'): 1 for " = X = ", 2 for " = = X = = ", ...;
// 0 for anything else. `title`, when given, receives X.
int wikitext_heading_level(std::string_view line, std::string_view* title = nullptr);

// Appends the consolidated text of one article (its `bytes`) to `out`.
void consolidate_wikitext_article(std::string_view article, const WikitextConfig& cfg,
                                  std::string* out);

// The counts WikiText papers report: every whitespace-separated word plus one `<eos>` a
// line (blank lines included), on the file as given.
struct WikitextCounts {
  int64_t articles = 0;
  int64_t lines = 0;
  int64_t words = 0;
  int64_t unk = 0;  // words equal to "<unk>"
  int64_t tokens_with_eos() const { return words + lines; }
};
WikitextCounts count_wikitext(std::string_view text);

// One split of an official WikiText-103 directory as a corpus, one document per article.
// `path` is e.g. DIR/wiki.valid.tokens.
Corpus read_wikitext_corpus(const std::string& path, const WikitextConfig& cfg);

// DIR/wiki.<split>.<variant> for split in {train, valid, test} and variant in
// {tokens, raw}; anything else is an error.
std::string wikitext_split_path(const std::string& dir, const std::string& split,
                                const std::string& variant);

}  // namespace resona::data
