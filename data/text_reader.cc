#include "data/text_reader.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>

#include "core/check.h"

namespace resona::data {

std::shared_ptr<const std::string> read_file_bytes(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  RESONA_CHECK(f != nullptr) << path << ": cannot open: " << std::strerror(errno);
  auto s = std::make_shared<std::string>();
  if (std::fseek(f, 0, SEEK_END) == 0) {
    long n = std::ftell(f);
    if (n > 0) s->reserve(static_cast<size_t>(n));
    std::fseek(f, 0, SEEK_SET);
  }
  char buf[1 << 16];
  size_t got;
  while ((got = std::fread(buf, 1, sizeof buf, f)) > 0) s->append(buf, got);
  const bool failed = std::ferror(f) != 0;
  std::fclose(f);
  RESONA_CHECK(!failed) << path << ": read error";
  return s;
}

TextFormat text_format_from_name(const std::string& name) {
  if (name == "auto") return TextFormat::kAuto;
  if (name == "lines") return TextFormat::kLines;
  if (name == "paragraphs") return TextFormat::kParagraphs;
  if (name == "whole") return TextFormat::kWhole;
  if (name == "jsonl") return TextFormat::kJsonl;
  RESONA_FAIL() << "text format '" << name << "': expected auto, lines, paragraphs, whole or jsonl";
  return TextFormat::kAuto;
}

const char* text_format_name(TextFormat f) {
  switch (f) {
    case TextFormat::kAuto:
      return "auto";
    case TextFormat::kLines:
      return "lines";
    case TextFormat::kParagraphs:
      return "paragraphs";
    case TextFormat::kWhole:
      return "whole";
    case TextFormat::kJsonl:
      return "jsonl";
  }
  RESONA_FAIL() << "unknown TextFormat " << static_cast<int>(f);
  return "";
}

namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

bool blank(std::string_view s) {
  for (char c : s)
    if (c != ' ' && c != '\t' && c != '\r' && c != '\n') return false;
  return true;
}

// Calls f(line without '\n', 1-based line number).
template <class F>
void for_each_line(std::string_view text, F&& f) {
  size_t pos = 0;
  int64_t no = 0;
  while (pos < text.size()) {
    size_t nl = text.find('\n', pos);
    size_t end = nl == std::string_view::npos ? text.size() : nl;
    f(text.substr(pos, end - pos), ++no);
    pos = end + 1;
  }
}

}  // namespace

Corpus read_text_corpus(const std::string& path, const TextReaderConfig& cfg) {
  TextFormat fmt = cfg.format;
  if (fmt == TextFormat::kAuto) {
    fmt = ends_with(path, ".jsonl") || ends_with(path, ".ndjson") || ends_with(path, ".json")
              ? TextFormat::kJsonl
              : TextFormat::kLines;
  }
  Corpus c;
  c.source = path;
  c.bytes = read_file_bytes(path);
  c.settings = std::string("text format=") + text_format_name(fmt);
  const std::string_view text = *c.bytes;

  switch (fmt) {
    case TextFormat::kWhole:
      if (!text.empty()) c.docs.push_back(text);
      break;
    case TextFormat::kLines:
      for_each_line(text, [&](std::string_view line, int64_t) {
        if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
        if (!blank(line)) c.docs.push_back(line);
      });
      break;
    case TextFormat::kParagraphs: {
      const char* begin = nullptr;
      const char* end = nullptr;
      auto flush = [&] {
        if (begin) c.docs.push_back(std::string_view(begin, end - begin));
        begin = nullptr;
      };
      for_each_line(text, [&](std::string_view line, int64_t) {
        if (blank(line)) {
          flush();
          return;
        }
        if (!begin) begin = line.data();
        end = line.data() + line.size();
      });
      flush();
      break;
    }
    case TextFormat::kJsonl: {
      c.settings += " field=" + cfg.json_field;
      auto decoded = std::make_shared<std::vector<std::string>>();
      for_each_line(text, [&](std::string_view line, int64_t no) {
        if (blank(line)) return;
        nlohmann::json j;
        try {
          j = nlohmann::json::parse(line.begin(), line.end());
        } catch (const nlohmann::json::parse_error& e) {
          RESONA_FAIL() << path << ":" << no << ": not valid JSON: " << e.what();
        }
        RESONA_CHECK(j.is_object())
            << path << ":" << no << ": expected a JSON object, got " << j.type_name();
        auto it = j.find(cfg.json_field);
        RESONA_CHECK(it != j.end())
            << path << ":" << no << ": no field \"" << cfg.json_field << "\"";
        RESONA_CHECK(it->is_string()) << path << ":" << no << ": field \"" << cfg.json_field
                                      << "\" is a " << it->type_name() << ", expected a string";
        decoded->push_back(it->get<std::string>());
      });
      // Spans are taken only now, once `decoded` no longer reallocates.
      for (const std::string& s : *decoded) c.docs.push_back(s);
      c.decoded = std::move(decoded);
      break;
    }
    case TextFormat::kAuto:
      RESONA_FAIL() << "unreachable";
  }
  return c;
}

}  // namespace resona::data
