// Generic readers: plain text and JSON Lines, into the same Corpus the WikiText reader
// produces, so they go through the same tokenizing pipeline and shard format.
//
//   kLines       one document per non-blank line (the line without its '\n')
//   kParagraphs  documents separated by one or more blank lines (inner '\n' kept)
//   kWhole       the whole file is one document, bytes unchanged
//   kJsonl       one JSON object per non-blank line; the document is its string field
//                `json_field` ("text" by default). A line that is not an object, or lacks
//                the field, or has a non-string value, is an error naming file and line.
//   kAuto        kJsonl for names ending in .jsonl, .ndjson or .json; kLines otherwise.
#pragma once

#include <string>

#include "data/corpus.h"

namespace resona::data {

enum class TextFormat { kAuto, kLines, kParagraphs, kWhole, kJsonl };

// "auto", "lines", "paragraphs", "whole", "jsonl"; anything else is an error.
TextFormat text_format_from_name(const std::string& name);
const char* text_format_name(TextFormat f);

struct TextReaderConfig {
  TextFormat format = TextFormat::kAuto;
  std::string json_field = "text";
};

Corpus read_text_corpus(const std::string& path, const TextReaderConfig& cfg = {});

}  // namespace resona::data
