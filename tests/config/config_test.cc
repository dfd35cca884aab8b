// The typed config loader: YAML and overrides onto structs, and every kind of bad input
// refused with the key path and where it came from.
#include "train/config.h"
#include "tests/test_util.h"

namespace resona::testing {
namespace {

struct OptimCfg {
  double lr = 1e-3;
  std::vector<double> betas = {0.9, 0.95};
  std::string schedule = "cosine";
  template <class V>
  void visit(V& v) {
    v("lr", lr, "peak learning rate", Range::positive());
    v("betas", betas, "Adam betas", Range::half_open(0, 1));
    v("schedule", schedule, "lr schedule", OneOf{"cosine", "linear", "constant"});
  }
};

struct RunCfg {
  int64_t steps = 100;
  bool deterministic = false;
  uint64_t seed = 0;
  std::vector<int64_t> layers = {0};
  std::string name = "run";
  OptimCfg optimizer;
  template <class V>
  void visit(V& v) {
    v("steps", steps, "number of steps", Range::at_least(1));
    v("deterministic", deterministic);
    v("seed", seed);
    v("layers", layers, "layer indices", Range::non_negative());
    v("name", name);
    v("optimizer", optimizer);
  }
};

RunCfg load(const std::string& yaml, const std::vector<std::string>& overrides = {}) {
  RunCfg cfg;
  ConfigDocument::from_string(yaml, "run.yaml", overrides).read_into(cfg);
  return cfg;
}

}  // namespace

TEST_CASE("config: values from YAML, defaults elsewhere, overrides last") {
  RunCfg c =
      load("steps: 20\noptimizer:\n  lr: 3.0e-4\n  betas: [0.8, 0.99]\nlayers: [0, 11, 23]\n",
           {"optimizer.schedule=linear", "deterministic=true", "seed=7"});
  CHECK(c.steps == 20);
  CHECK(c.optimizer.lr == doctest::Approx(3e-4));
  CHECK(c.optimizer.betas == std::vector<double>{0.8, 0.99});
  CHECK(c.optimizer.schedule == "linear");
  CHECK(c.deterministic);
  CHECK(c.seed == 7);
  CHECK(c.layers == std::vector<int64_t>{0, 11, 23});
  CHECK(c.name == "run");
  RunCfg empty = load("");
  CHECK(empty.steps == 100);
  RunCfg over = load("optimizer:\n  lr: 1\n", {"optimizer.lr=0.5", "layers=[1, 2]"});
  CHECK(over.optimizer.lr == 0.5);
  CHECK(over.layers == std::vector<int64_t>{1, 2});
}

TEST_CASE("config: the resolved config round-trips through to_yaml") {
  RunCfg c = load("steps: 3\noptimizer: {lr: 0.1234567890123}\n", {"name=x"});
  std::string text = to_yaml(c);
  RunCfg back = load(text);
  CHECK(back.steps == 3);
  CHECK(back.optimizer.lr == c.optimizer.lr);  // 17 significant digits: exact
  CHECK(back.name == "x");
  CHECK(text.find("schedule: cosine") != std::string::npos);
}

TEST_CASE("config: bad input names the key path and the file and line") {
  auto err = [](const std::string& yaml, const std::vector<std::string>& ov = {}) {
    try {
      load(yaml, ov);
    } catch (const ConfigError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  CHECK(err("steps: [1\n").find("run.yaml:2") != std::string::npos);
  CHECK(err("steps: [1\n").find("YAML syntax error") != std::string::npos);
  CHECK(err("steps: 1\nstepz: 2\n") ==
        "run.yaml:2: key 'stepz': unknown key (valid keys here: steps, deterministic, seed, "
        "layers, name, optimizer)");
  CHECK(err("optimizer:\n  lr: fast\n") ==
        "run.yaml:2: key 'optimizer.lr': expected a number, got 'fast'");
  CHECK(err("optimizer:\n  lr: -0.1\n") ==
        "run.yaml:2: key 'optimizer.lr': value '-0.1' is outside (0, inf]");
  CHECK(err("steps: 1.5\n") == "run.yaml:1: key 'steps': expected an integer, got '1.5'");
  CHECK(err("steps: 0\n") == "run.yaml:1: key 'steps': value '0' is outside [1, inf]");
  CHECK(err("deterministic: maybe\n") ==
        "run.yaml:1: key 'deterministic': expected true or false, got 'maybe'");
  CHECK(err("seed: -3\n") == "run.yaml:1: key 'seed': expected a non-negative integer, got '-3'");
  CHECK(err("optimizer:\n  schedule: cosin\n") ==
        "run.yaml:2: key 'optimizer.schedule': 'cosin' is not one of: cosine, linear, constant");
  CHECK(err("optimizer:\n  betas: [0.9, 1.0]\n") ==
        "run.yaml:2: key 'optimizer.betas[1]': value '1.0' is outside [0, 1)");
  CHECK(err("layers: 3\n") == "run.yaml:1: key 'layers': expected a list, got '3'");
  CHECK(err("optimizer: 3\n") == "run.yaml:1: key 'optimizer': expected a mapping of settings");
  CHECK(err("- 1\n- 2\n") == "run.yaml:1: the config must be a mapping of settings, got a list");
  CHECK(err("", {"optimizer.lr=-1"}) ==
        "override 'optimizer.lr=-1': key 'optimizer.lr': value '-1' is outside (0, inf]");
  CHECK(err("", {"optimizer.lrr=1"})
            .find("override 'optimizer.lrr=1': key 'optimizer.lrr': unknown key") == 0);
  CHECK(err("", {"steps"}) == "override 'steps': expected key.path=value");
  CHECK(err("steps: 2\n", {"steps.x=1"}) ==
        "override 'steps.x=1': 'steps' is a value, not a section");
  CHECK(err("", {"steps.x=1"}) ==
        "override 'steps.x=1': key 'steps': expected a single value, got a list or mapping");
}

TEST_CASE("config: a missing file is refused naming it") {
  CHECK_THROWS_WITH_AS(ConfigDocument::from_file("/nonexistent/run.yaml"),
                       "/nonexistent/run.yaml: cannot open the config file", ConfigError);
}

}  // namespace resona::testing
