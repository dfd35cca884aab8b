#include "data/wikitext.h"

#include <cstdio>
#include <memory>
#include <sstream>

#include "core/check.h"

namespace resona::data {

namespace {

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; }

std::string_view trim(std::string_view s) {
  size_t b = 0, e = s.size();
  while (b < e && is_space(s[b])) ++b;
  while (e > b && is_space(s[e - 1])) --e;
  return s.substr(b, e - b);
}

// Lines of `text` as spans that include their '\n' (the last one may lack it).
template <class F>
void for_each_line(std::string_view text, F&& f) {
  size_t pos = 0;
  while (pos < text.size()) {
    size_t nl = text.find('\n', pos);
    size_t end = nl == std::string_view::npos ? text.size() : nl + 1;
    f(text.substr(pos, end - pos), pos);
    pos = end;
  }
}

std::string_view strip_newline(std::string_view line) {
  if (!line.empty() && line.back() == '\n') line.remove_suffix(1);
  return line;
}

bool is_blank(std::string_view line) { return trim(line).empty(); }

}  // namespace

int wikitext_heading_level(std::string_view line, std::string_view* title) {
  std::string_view t = trim(line);
  size_t i = 0;
  int k = 0;
  while (i + 1 < t.size() && t[i] == '=' && t[i + 1] == ' ') {
    ++k;
    i += 2;
  }
  if (k == 0) return 0;
  size_t j = t.size();
  int m = 0;
  while (m < k && j >= i + 2 && t[j - 1] == '=' && t[j - 2] == ' ') {
    ++m;
    j -= 2;
  }
  if (m != k || j <= i) return 0;
  std::string_view x = trim(t.substr(i, j - i));
  // Unbalanced markup (" = X = = ") leaves '=' at an edge of the title: not a heading.
  if (x.empty() || x.front() == '=' || x.back() == '=') return 0;
  if (title) *title = x;
  return k;
}

std::vector<WikitextArticle> split_wikitext_articles(std::string_view text) {
  struct Line {
    std::string_view s;
    size_t pos;
  };
  std::vector<Line> lines;
  for_each_line(text, [&](std::string_view l, size_t pos) { lines.push_back({l, pos}); });

  // starts[k]: byte offset where article k begins (its preceding blank line).
  std::vector<size_t> starts;
  std::vector<std::string_view> titles;
  for (size_t i = 0; i < lines.size(); ++i) {
    std::string_view x;
    if (wikitext_heading_level(strip_newline(lines[i].s), &x) != 1) continue;
    const bool blank_before = i == 0 || is_blank(lines[i - 1].s);
    const bool blank_after = i + 1 < lines.size() && is_blank(lines[i + 1].s);
    if (!blank_before || !blank_after) continue;
    starts.push_back(i == 0 ? lines[i].pos : lines[i - 1].pos);
    titles.push_back(x);
  }

  std::vector<WikitextArticle> out;
  const size_t first = starts.empty() ? text.size() : starts[0];
  if (!is_blank(text.substr(0, first))) out.push_back({std::string_view(), text.substr(0, first)});
  for (size_t k = 0; k < starts.size(); ++k) {
    const size_t end = k + 1 < starts.size() ? starts[k + 1] : text.size();
    out.push_back({titles[k], text.substr(starts[k], end - starts[k])});
  }
  return out;
}

void consolidate_wikitext_article(std::string_view article, const WikitextConfig& cfg,
                                  std::string* out) {
  if (cfg.verbatim) {
    out->append(article);
    return;
  }
  bool first_kept = true;
  bool title_seen = false;
  for_each_line(article, [&](std::string_view line, size_t) {
    std::string_view t = trim(line);
    if (t.empty()) return;  // empty lines: always dropped
    std::string_view x;
    const int level = wikitext_heading_level(t, &x);
    if (level > 0) {
      // The first level-1 heading is the article's title; any other heading is a section.
      const bool is_title = level == 1 && !title_seen;
      if (level == 1) title_seen = true;
      if (is_title ? !cfg.keep_title : !cfg.keep_headings) return;
      if (static_cast<int64_t>(x.size()) < cfg.min_heading_chars) return;
    }
    if (!first_kept) out->append(cfg.separator);
    out->append(t);
    first_kept = false;
  });
}

std::string WikitextConfig::describe() const {
  std::ostringstream os;
  os << "wikitext verbatim=" << verbatim << " keep_title=" << keep_title
     << " keep_headings=" << keep_headings << " min_heading_chars=" << min_heading_chars
     << " separator=";
  for (unsigned char c : separator) {
    char buf[8];
    std::snprintf(buf, sizeof buf, "\\x%02x", c);
    os << buf;
  }
  return os.str();
}

WikitextCounts count_wikitext(std::string_view text) {
  WikitextCounts c;
  c.articles = static_cast<int64_t>(split_wikitext_articles(text).size());
  for_each_line(text, [&](std::string_view line, size_t) {
    ++c.lines;
    size_t i = 0;
    while (i < line.size()) {
      while (i < line.size() && is_space(line[i])) ++i;
      size_t b = i;
      while (i < line.size() && !is_space(line[i])) ++i;
      if (i > b) {
        ++c.words;
        if (line.substr(b, i - b) == "<unk>") ++c.unk;
      }
    }
  });
  return c;
}

Corpus read_wikitext_corpus(const std::string& path, const WikitextConfig& cfg) {
  Corpus c;
  c.source = path;
  c.bytes = read_file_bytes(path);
  for (const WikitextArticle& a : split_wikitext_articles(*c.bytes)) c.docs.push_back(a.bytes);
  RESONA_CHECK(!c.docs.empty()) << path << ": no WikiText article found (empty file?)";
  c.finish = [cfg](std::string_view raw, std::string* out) {
    consolidate_wikitext_article(raw, cfg, out);
  };
  c.settings = cfg.describe();
  return c;
}

std::string wikitext_split_path(const std::string& dir, const std::string& split,
                                const std::string& variant) {
  RESONA_CHECK(split == "train" || split == "valid" || split == "test")
      << "WikiText split '" << split << "': expected train, valid or test";
  RESONA_CHECK(variant == "tokens" || variant == "raw")
      << "WikiText variant '" << variant << "': expected tokens or raw";
  return dir + "/wiki." + split + "." + variant;
}

}  // namespace resona::data
