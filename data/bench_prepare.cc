// bench_prepare: prepare-data throughput on this machine.
//
//   bazel run //data:bench_prepare -- [--input FILE] [--tokenizer MODEL]
//                                     [--threads 1,2] [--repeat 3] [--replicate N]
//
// Reads FILE as a WikiText split (default: ../shared/data's train prefix, else the
// shipped sample), consolidates the articles, tokenizes them and writes shards into a
// temporary folder, for each thread count; prints the best of `repeat` runs as MB/s of
// input text (reading included) and the implied time for the full train split
// (540 MB). --replicate N first writes a temporary file holding N copies of FILE (whole
// articles, so the same text N times) and measures on it: with N = 189 the train
// prefix becomes 542 MB, a full-size run of the pipeline (several shards, the memory of
// a whole split).
#include <sys/resource.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "core/check.h"
#include "data/prepare.h"
#include "data/wikitext.h"

namespace fs = std::filesystem;
using namespace resona::data;

namespace {

// CPU seconds used by this process so far (all threads, user + system).
double cpu_seconds() {
  rusage u;
  getrusage(RUSAGE_SELF, &u);
  return u.ru_utime.tv_sec + u.ru_utime.tv_usec * 1e-6 + u.ru_stime.tv_sec +
         u.ru_stime.tv_usec * 1e-6;
}

std::string find_default_input() {
  std::vector<std::string> c;
  if (const char* w = std::getenv("BUILD_WORKSPACE_DIRECTORY")) {
    c.push_back(std::string(w) + "/../shared/data/wikitext/wikitext-103/wiki.train.tokens.prefix");
  }
  c.push_back("../shared/data/wikitext/wikitext-103/wiki.train.tokens.prefix");
  c.push_back("/work/shared/data/wikitext/wikitext-103/wiki.train.tokens.prefix");
  if (const char* w = std::getenv("BUILD_WORKSPACE_DIRECTORY")) {
    c.push_back(std::string(w) + "/data/samples/wikitext-103/wiki.train.tokens");
  }
  c.push_back("data/samples/wikitext-103/wiki.train.tokens");
  for (const std::string& p : c) {
    if (fs::is_regular_file(p)) return p;
  }
  RESONA_FAIL() << "no input found; pass --input FILE";
  return "";
}

}  // namespace

int main(int argc, char** argv) {
  try {
    std::string input, model;
    std::vector<int> threads = {1, 2};
    int repeat = 3;
    int replicate = 1;
    for (int i = 1; i < argc; ++i) {
      std::string a = argv[i];
      auto value = [&]() -> std::string {
        RESONA_CHECK(i + 1 < argc) << a << " needs a value";
        return argv[++i];
      };
      if (a == "--input") {
        input = value();
      } else if (a == "--tokenizer") {
        model = value();
      } else if (a == "--threads") {
        threads.clear();
        std::stringstream ss(value());
        std::string t;
        while (std::getline(ss, t, ',')) threads.push_back(std::stoi(t));
      } else if (a == "--replicate") {
        replicate = std::stoi(value());
      } else if (a == "--repeat") {
        repeat = std::stoi(value());
      } else {
        RESONA_FAIL() << "unknown argument " << a;
      }
    }
    if (input.empty()) input = find_default_input();
    if (model.empty()) model = default_tokenizer_path();
    const Tokenizer tok = Tokenizer::load(model);
    const fs::path tmp =
        fs::temp_directory_path() / ("resona_bench_prepare_" + std::to_string(::getpid()));
    const fs::path big = tmp.string() + ".input";
    if (replicate > 1) {
      const auto bytes = read_file_bytes(input);
      std::FILE* f = std::fopen(big.c_str(), "wb");
      RESONA_CHECK(f != nullptr) << big << ": cannot create";
      for (int r = 0; r < replicate; ++r) std::fwrite(bytes->data(), 1, bytes->size(), f);
      std::fclose(f);
      std::printf("replicated %d times into %s\n", replicate, big.c_str());
      input = big.string();
    }

    std::printf("input      %s (%.2f MB)\n", input.c_str(), fs::file_size(input) / 1e6);
    std::printf("tokenizer  %s (vocab %d)\n", model.c_str(), tok.vocab_size());
    std::printf("hardware   %u hardware threads\n", std::thread::hardware_concurrency());
    std::printf(
        "best of %d runs; MB/s of input text, reading, consolidating, tokenizing and writing\n\n",
        repeat);
    std::printf(
        "| threads | MB | docs | tokens | seconds | MB/s | full train split (540 MB) | CPU s | "
        "MB per CPU s |\n");
    std::printf("|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for (int t : threads) {
      double best = 1e30, best_cpu = 0;
      PrepareStats stats;
      for (int r = 0; r < repeat; ++r) {
        fs::remove_all(tmp);
        const auto t0 = std::chrono::steady_clock::now();
        const double c0 = cpu_seconds();
        const Corpus c = read_wikitext_corpus(input, WikitextConfig{});
        PrepareConfig cfg;
        cfg.out_dir = tmp.string();
        cfg.threads = t;
        cfg.progress = false;
        stats = prepare_dataset(c, tok, cfg);
        const double wall =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        if (wall < best) {
          best = wall;
          best_cpu = cpu_seconds() - c0;
        }
      }
      const double mb = fs::file_size(input) / 1e6;
      const double rate = mb / best;
      const double full = 540.0 / rate;
      std::printf("| %d | %.2f | %llu | %llu | %.3f | %.2f | %.0f s = %.1f min | %.2f | %.2f |\n",
                  t, mb, static_cast<unsigned long long>(stats.documents),
                  static_cast<unsigned long long>(stats.tokens), best, rate, full, full / 60,
                  best_cpu, mb / best_cpu);
    }
    fs::remove_all(tmp);
    if (replicate > 1) fs::remove(big);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_prepare: %s\n", e.what());
    return 1;
  }
}
