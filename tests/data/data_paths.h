// Where the data tests find their files.
//
// - The samples shipped in data/samples/ come as runfiles of //data (under bazel test:
//   $TEST_SRCDIR/resona/data/samples), or relative to the workspace when run by hand.
// - The real WikiText-103 files live outside the repository, in ../shared/data next to
//   the workspace (or /work/shared/data). The workspace is found by resolving the
//   runfile symlinks of the samples back to the source tree (they survive Bazel's
//   sandbox), or from $BUILD_WORKSPACE_DIRECTORY. Tests that need them skip themselves
//   (doctest::skip) when neither place has them. RESONA_TEST_SHARED_DATA, when set,
//   replaces the search (e.g. `bazel test --test_env=RESONA_TEST_SHARED_DATA=/none` to
//   see the skipping).
#pragma once

#include <doctest/doctest.h>

#include <unistd.h>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>

namespace resona::testing {

inline std::string samples_dir() {
  namespace fs = std::filesystem;
  for (const char* var : {"TEST_SRCDIR", "RUNFILES_DIR"}) {
    if (const char* d = std::getenv(var)) {
      fs::path p = fs::path(d) / "resona/data/samples";
      if (fs::exists(p / "wikitext-103/wiki.valid.tokens")) return p.string();
    }
  }
  if (const char* w = std::getenv("BUILD_WORKSPACE_DIRECTORY")) {
    fs::path p = fs::path(w) / "data/samples";
    if (fs::exists(p)) return p.string();
  }
  return "data/samples";
}

// The source workspace (the folder holding WORKSPACE), or "" if it cannot be found.
inline std::string workspace_dir() {
  namespace fs = std::filesystem;
  if (const char* w = std::getenv("BUILD_WORKSPACE_DIRECTORY")) return w;
  std::error_code ec;
  fs::path real = fs::canonical(fs::path(samples_dir()) / "wikitext-103/wiki.valid.tokens", ec);
  if (ec) return "";
  // <workspace>/data/samples/wikitext-103/wiki.valid.tokens
  fs::path ws = real.parent_path().parent_path().parent_path().parent_path();
  return fs::exists(ws / "WORKSPACE") ? ws.string() : "";
}

// ../shared/data next to the workspace, else /work/shared/data; "" when neither exists.
inline std::string shared_data_dir() {
  namespace fs = std::filesystem;
  if (const char* forced = std::getenv("RESONA_TEST_SHARED_DATA")) {
    return fs::is_directory(fs::path(forced) / "wikitext") ? std::string(forced) : "";
  }
  const std::string ws = workspace_dir();
  if (!ws.empty() && fs::is_directory(fs::path(ws) / "../shared/data/wikitext")) {
    return fs::canonical(fs::path(ws) / "../shared/data").string();
  }
  if (fs::is_directory("/work/shared/data/wikitext")) return "/work/shared/data";
  return "";
}
inline bool have_shared_data() { return !shared_data_dir().empty(); }
inline std::string shared_wikitext(const std::string& name) {
  return shared_data_dir() + "/wikitext/wikitext-103/" + name;
}

inline std::string sample_tokenizer() { return samples_dir() + "/tokenizer/tokenizer.model"; }
inline std::string sample_wikitext(const std::string& split) {
  return samples_dir() + "/wikitext-103/wiki." + split + ".tokens";
}

// A fresh empty folder under the test's temporary directory.
inline std::string fresh_temp_dir(const std::string& name) {
  namespace fs = std::filesystem;
  const char* t = std::getenv("TEST_TMPDIR");
  fs::path p = fs::path(t ? t : fs::temp_directory_path().string()) /
               ("resona_data_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(p);
  fs::create_directories(p);
  return p.string();
}

inline std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  REQUIRE_MESSAGE(f.good(), "cannot open ", path);
  return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}
inline void spit(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f << bytes;
}

// Runs `f` and checks that it throws an error whose message contains every `needle`.
template <class F>
void check_throws_with(F&& f, std::initializer_list<std::string> needles) {
  std::string msg;
  bool threw = false;
  try {
    f();
  } catch (const std::exception& e) {
    threw = true;
    msg = e.what();
  }
  CHECK_MESSAGE(threw, "expected an error");
  for (const std::string& n : needles) {
    CHECK_MESSAGE(msg.find(n) != std::string::npos, "error message \"", msg, "\" lacks \"", n,
                  "\"");
  }
}

}  // namespace resona::testing
