#include "data/prepare.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <mutex>
#include <thread>

#include "core/check.h"
#include "data/hash.h"

namespace resona::data {

namespace fs = std::filesystem;

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

// The progress bar: redrawn in place every 0.2 s on a terminal, one line every 10 s
// otherwise (logs), and a last line when done.
class Progress {
 public:
  Progress(bool enabled, std::string label, uint64_t total, size_t shards)
      : enabled_(enabled),
        tty_(::isatty(2) == 1),
        label_(std::move(label)),
        total_(total),
        shards_(shards),
        start_(Clock::now()) {
    if (enabled_) thread_ = std::thread([this] { loop(); });
  }
  ~Progress() { stop(); }

  void add(uint64_t bytes, bool tokenized) {
    done_ += bytes;
    if (tokenized) tokenized_ += bytes;
  }
  void set_shard(size_t k) { shard_ = k; }
  void start_tokenizing() {
    std::lock_guard<std::mutex> lock(mu_);
    if (!tokenizing_) {
      tokenizing_ = true;
      tok_start_ = Clock::now();
    }
  }
  // A line above the bar.
  void note(const std::string& line) {
    std::lock_guard<std::mutex> lock(mu_);
    if (tty_ && enabled_) std::fprintf(stderr, "\r%*s\r", 100, "");
    std::fprintf(stderr, "%s\n", line.c_str());
    if (tty_ && enabled_) draw_locked();
  }
  void stop() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stopped_) return;
      stopped_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
    if (enabled_) {
      std::lock_guard<std::mutex> lock(mu_);
      draw_locked();
      std::fprintf(stderr, "\n");
    }
  }

 private:
  void loop() {
    std::unique_lock<std::mutex> lock(mu_);
    auto last = Clock::now();
    while (!stopped_) {
      cv_.wait_for(lock, std::chrono::milliseconds(200));
      if (stopped_) break;
      if (tty_) {
        draw_locked();
      } else if (seconds_since(last) >= 10) {
        draw_locked();
        std::fprintf(stderr, "\n");
        last = Clock::now();
      }
    }
  }

  void draw_locked() {
    const uint64_t done = done_.load(), tok = tokenized_.load();
    const double frac = total_ ? static_cast<double>(done) / total_ : 1.0;
    const double t =
        tokenizing_ ? std::chrono::duration<double>(Clock::now() - tok_start_).count() : 0;
    const double rate = t > 0 ? tok / 1e6 / t : 0;
    char bar[31];
    const int filled = static_cast<int>(frac * 30);
    for (int i = 0; i < 30; ++i) bar[i] = i < filled ? '#' : '-';
    bar[30] = 0;
    char eta[32] = "--:--";
    if (rate > 0) {
      const long s = static_cast<long>((total_ - std::min(done, total_)) / 1e6 / rate);
      std::snprintf(eta, sizeof eta, "%ld:%02ld", s / 60, s % 60);
    }
    std::fprintf(stderr, "%s%s [%s] %3d%%  %.1f/%.1f MB  %.2f MB/s  ETA %s  shard %zu/%zu   ",
                 tty_ ? "\r" : "", label_.c_str(), bar, static_cast<int>(frac * 100), done / 1e6,
                 total_ / 1e6, rate, eta, std::min(shard_.load() + 1, shards_), shards_);
    std::fflush(stderr);
  }

  const bool enabled_, tty_;
  const std::string label_;
  const uint64_t total_;
  const size_t shards_;
  const Clock::time_point start_;
  std::atomic<uint64_t> done_{0}, tokenized_{0};
  std::atomic<size_t> shard_{0};
  bool tokenizing_ = false;
  Clock::time_point tok_start_;
  bool stopped_ = false;
  std::mutex mu_;
  std::condition_variable cv_;
  std::thread thread_;
};

struct PlannedShard {
  size_t first_doc = 0, end_doc = 0;
  uint64_t bytes = 0;
  uint64_t source_hash = 0;
};

// Why an existing shard file cannot be kept; empty when it can.
std::string check_existing(const std::string& path, const PlannedShard& p, const ShardMeta& meta,
                           ShardInfo* info) {
  std::unique_ptr<ShardReader> r;
  try {
    r = ShardReader::open(path, /*verify=*/true);
  } catch (const Error& e) {
    return e.what();
  }
  const ShardMeta& m = r->info().meta;
  if (m.source_hash != p.source_hash) return "made from other input or settings";
  if (m.tokenizer_hash != meta.tokenizer_hash || m.vocab_size != meta.vocab_size ||
      m.dtype != meta.dtype || m.eos_id != meta.eos_id) {
    return "made with another tokenizer";
  }
  *info = r->info();
  return "";
}

}  // namespace

PrepareStats prepare_dataset(const Corpus& corpus, const Tokenizer& tokenizer,
                             const PrepareConfig& cfg) {
  const auto t0 = Clock::now();
  RESONA_CHECK(!cfg.out_dir.empty()) << "prepare: no output folder given";
  RESONA_CHECK(cfg.shard_bytes > 0) << "prepare: shard_bytes must be positive";
  RESONA_CHECK(!corpus.docs.empty()) << corpus.source << ": no documents";
  std::error_code ec;
  fs::create_directories(cfg.out_dir, ec);
  RESONA_CHECK(!ec && fs::is_directory(cfg.out_dir))
      << cfg.out_dir << ": cannot create the output folder: " << ec.message();
  const std::string index_path = cfg.out_dir + "/" + kDatasetIndexFile;
  fs::remove(index_path, ec);  // an index only ever describes a finished run
  RESONA_CHECK(!ec) << index_path << ": cannot remove the previous index: " << ec.message();

  const int threads = cfg.threads > 0
                          ? cfg.threads
                          : std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
  ShardMeta meta;
  meta.dtype = token_dtype_for_vocab(tokenizer.vocab_size());
  meta.vocab_size = static_cast<uint32_t>(tokenizer.vocab_size());
  meta.eos_id = tokenizer.eos_id();
  meta.tokenizer_hash = tokenizer.hash();

  // The plan: consecutive documents, about shard_bytes of source text each.
  uint64_t base = hash64(corpus.settings);
  base = hash_combine(base, tokenizer.hash());
  base = hash_combine(base, static_cast<uint64_t>(meta.dtype));
  base = hash_combine(base, kShardVersion);
  std::vector<PlannedShard> plan;
  for (size_t d = 0; d < corpus.docs.size(); ++d) {
    if (plan.empty() || plan.back().bytes >= cfg.shard_bytes) {
      plan.push_back({d, d, 0, base});
    }
    PlannedShard& p = plan.back();
    p.end_doc = d + 1;
    p.bytes += corpus.docs[d].size();
    p.source_hash = hash64(corpus.docs[d], hash_combine(p.source_hash, corpus.docs[d].size()));
  }

  PrepareStats stats;
  stats.input_bytes = corpus.total_bytes();
  stats.shards = plan.size();
  DatasetIndex index;
  index.tokenizer_path = tokenizer.path();
  index.tokenizer_hash = tokenizer.hash();
  index.vocab_size = tokenizer.vocab_size();
  index.bos_id = tokenizer.bos_id();
  index.eos_id = tokenizer.eos_id();
  index.pad_id = tokenizer.pad_id();
  index.dtype = meta.dtype;
  index.source_file = corpus.source;
  index.source_bytes = stats.input_bytes;
  index.source_documents = corpus.docs.size();
  index.source_settings = corpus.settings;

  Progress progress(cfg.progress, cfg.label.empty() ? std::string("prepare") : cfg.label,
                    stats.input_bytes, plan.size());
  std::vector<Tokenizer> workers;  // created on first use: a run that skips everything loads none

  for (size_t k = 0; k < plan.size(); ++k) {
    const PlannedShard& p = plan[k];
    const std::string file = shard_file_name(k);
    const std::string path = cfg.out_dir + "/" + file;
    progress.set_shard(k);
    const size_t n = p.end_doc - p.first_doc;

    if (fs::exists(path, ec)) {
      ShardInfo info;
      const std::string why = check_existing(path, p, meta, &info);
      if (why.empty()) {
        ++stats.shards_skipped;
        stats.documents += info.num_docs;
        stats.dropped_docs += n - info.num_docs;
        stats.tokens += info.num_tokens;
        index.shards.push_back(
            {file, info.num_tokens, info.num_docs, info.checksum, p.source_hash});
        progress.add(p.bytes, false);
        continue;
      }
      ++stats.shards_redone;
      progress.note("prepare: redoing " + path + ": " + why);
    }

    if (workers.empty()) {
      for (int w = 0; w < threads; ++w) workers.push_back(tokenizer.clone());
    }
    progress.start_tokenizing();

    // Longest documents first, so that the workers finish together.
    std::vector<size_t> order(n);
    for (size_t i = 0; i < n; ++i) order[i] = i;
    std::stable_sort(order.begin(), order.end(), [&](size_t x, size_t y) {
      return corpus.docs[p.first_doc + x].size() > corpus.docs[p.first_doc + y].size();
    });
    std::vector<std::vector<int>> ids(n);
    std::atomic<size_t> next{0};
    std::mutex err_mu;
    std::exception_ptr err;
    auto work = [&](int w) {
      std::string text;
      try {
        for (;;) {
          const size_t i = next.fetch_add(1);
          if (i >= n) break;
          const size_t local = order[i];
          corpus.finished_text(p.first_doc + local, &text);
          if (!text.empty()) workers[w].encode(text, &ids[local]);
          progress.add(corpus.docs[p.first_doc + local].size(), true);
        }
      } catch (...) {
        std::lock_guard<std::mutex> lock(err_mu);
        if (!err) err = std::current_exception();
        next.store(n);
      }
    };
    std::vector<std::thread> pool;
    for (int w = 1; w < threads; ++w) pool.emplace_back(work, w);
    work(0);
    for (std::thread& t : pool) t.join();
    if (err) std::rethrow_exception(err);

    std::vector<int32_t> tokens;
    std::vector<uint64_t> offsets{0};
    size_t total = 0;
    for (const auto& v : ids) total += v.size();
    tokens.reserve(total);
    for (auto& v : ids) {
      if (v.empty()) {
        ++stats.dropped_docs;
        continue;
      }
      tokens.insert(tokens.end(), v.begin(), v.end());
      offsets.push_back(tokens.size());
      std::vector<int>().swap(v);
    }
    meta.source_hash = p.source_hash;
    const ShardInfo info = write_shard(path, meta, tokens, offsets);
    stats.documents += info.num_docs;
    stats.tokens += info.num_tokens;
    stats.tokenized_bytes += p.bytes;
    index.shards.push_back({file, info.num_tokens, info.num_docs, info.checksum, p.source_hash});
  }

  // Shards of an earlier run with more of them would be listed nowhere: remove them.
  for (size_t k = plan.size();; ++k) {
    const std::string stale = cfg.out_dir + "/" + shard_file_name(k);
    if (!fs::remove(stale, ec)) break;
  }

  index.num_tokens = stats.tokens;
  index.num_docs = stats.documents;
  index.dropped_docs = stats.dropped_docs;
  write_dataset_index(cfg.out_dir, index);
  progress.stop();
  stats.seconds = seconds_since(t0);
  return stats;
}

}  // namespace resona::data
