// prepare: a Corpus (from any reader) -> tokenized documents -> token shards + index.json
// in one dataset folder (dataset.h). The engine behind `resona prepare-data`.
//
// Documents are grouped, in file order, into shards of about `shard_bytes` of input
// text (a document is never split), so the shard plan depends only on the input and
// the settings, never on the thread count. Each shard's documents are tokenized by
// `threads` workers (each with its own SentencePiece processor; the longest documents
// are started first so that the workers finish together) and the shard is written
// atomically. A progress bar (MB done, MB/s, ETA, shard) goes to stderr.
//
// Re-running: a shard file that already exists, passes its checksum and carries the
// expected source hash (hash of its documents' bytes, the reader's settings, the
// tokenizer and the format) is kept and not tokenized again; anything else in its place
// (truncated, corrupted, from other settings) is redone. index.json is removed first and
// written last, so a folder with an index is always complete.
#pragma once

#include <cstdint>
#include <string>

#include "data/corpus.h"
#include "data/dataset.h"
#include "data/tokenizer.h"

namespace resona::data {

struct PrepareConfig {
  std::string out_dir;                 // the dataset folder (created if missing)
  int threads = 0;                     // 0: every hardware thread
  uint64_t shard_bytes = 64ull << 20;  // input text per shard (approximate)
  bool progress = true;                // progress bar on stderr
  std::string label;                   // shown before the bar, e.g. "valid"
};

struct PrepareStats {
  uint64_t documents = 0;     // written to the shards
  uint64_t dropped_docs = 0;  // empty after the reader's `finish` (e.g. a title-only article)
  uint64_t tokens = 0;
  uint64_t input_bytes = 0;      // bytes of the documents' source text
  uint64_t tokenized_bytes = 0;  // of those, in shards tokenized by this run (not skipped)
  size_t shards = 0;
  size_t shards_skipped = 0;  // already complete and verified
  size_t shards_redone = 0;   // present but failed verification or had other settings
  double seconds = 0;
  // Throughput over what this run tokenized.
  double mb_per_s() const { return seconds > 0 ? tokenized_bytes / 1e6 / seconds : 0; }
};

PrepareStats prepare_dataset(const Corpus& corpus, const Tokenizer& tokenizer,
                             const PrepareConfig& cfg);

}  // namespace resona::data
