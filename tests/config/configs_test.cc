// Every run config shipped under configs/ loads through the typed loader and describes a
// model that can be built (its cross-field checks pass).
#include <filesystem>
#include <string>
#include <vector>

#include "models/language_model.h"
#include "tests/test_util.h"
#include "train/run_config.h"

namespace resona::testing {
namespace {

namespace fs = std::filesystem;

TEST_CASE("configs: every shipped YAML loads and its model validates") {
  // Bazel runs the test in its runfiles tree, where configs/ is a data dependency.
  REQUIRE(fs::is_directory("configs"));
  std::vector<std::string> files;
  for (const auto& e : fs::recursive_directory_iterator("configs")) {
    if (e.path().extension() == ".yaml") files.push_back(e.path().string());
  }
  CHECK(files.size() >= 240 + 6);  // configs/mqar (240), quickstart and wikitext103 (5)
  for (const std::string& f : files) {
    CAPTURE(f);
    train::RunConfig cfg;
    REQUIRE_NOTHROW(cfg = train::load_run_config(f));
    CHECK_NOTHROW(models::validate_model_config(cfg.model));
  }
}

}  // namespace
}  // namespace resona::testing
