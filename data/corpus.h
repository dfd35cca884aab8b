// Corpus: the documents of one input file, as the readers (wikitext.h, text_reader.h)
// hand them to the tokenizing pipeline (prepare.h).
//
// A document is a span of the file's bytes (or of text the reader decoded, for JSONL).
// `finish`, when set, turns that span into the text to tokenize (WikiText's article
// consolidation); it runs on the pipeline's worker threads, so it must be thread-safe
// and must not touch shared state. Documents whose finished text is empty are dropped.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace resona::data {

struct Corpus {
  std::string source;                        // the file it came from, for messages and the index
  std::shared_ptr<const std::string> bytes;  // keeps the spans below alive
  // Text a reader had to decode (JSONL); spans may point here. Shared, like `bytes`, so
  // that copies of a Corpus stay valid.
  std::shared_ptr<const std::vector<std::string>> decoded;
  std::vector<std::string_view> docs;  // one span per document, in file order
  std::function<void(std::string_view raw, std::string* out)> finish;  // null: the span as is
  // Describes the reader and its settings (e.g. "wikitext {...}"); part of every shard's
  // source hash, so that changing a setting redoes the shards.
  std::string settings;

  // The text to tokenize for document i (the span, or finish applied to it).
  void finished_text(size_t i, std::string* out) const {
    if (finish) {
      out->clear();
      finish(docs[i], out);
    } else {
      out->assign(docs[i]);
    }
  }
  uint64_t total_bytes() const {
    uint64_t n = 0;
    for (std::string_view d : docs) n += d.size();
    return n;
  }
};

// Reads a whole file into memory; a missing or unreadable file is an error naming it.
std::shared_ptr<const std::string> read_file_bytes(const std::string& path);

}  // namespace resona::data
