#include "train/run_config.h"

#include "train/config.h"

namespace resona::train {

void validate_run_config(const RunConfig& c) {
  auto fail = [](const std::string& msg) { throw ConfigError(msg); };
  if (c.train.batch_size % c.train.grad_accum != 0) {
    fail("key 'train.batch_size': " + std::to_string(c.train.batch_size) +
         " is not divisible by train.grad_accum = " + std::to_string(c.train.grad_accum));
  }
  if (c.optimizer.betas.size() != 2) {
    fail("key 'optimizer.betas': expected two values (beta1, beta2), got " +
         std::to_string(c.optimizer.betas.size()));
  }
  if (c.train.precision == "bf16" && c.train.device == "cpu") {
    fail("key 'train.precision': bf16 needs train.device cuda (or auto with a GPU)");
  }
  if (c.train.run_dir.empty()) fail("key 'train.run_dir': must not be empty");
}

RunConfig parse_run_config(const std::string& yaml, const std::string& name,
                           const std::vector<std::string>& overrides) {
  RunConfig cfg;
  ConfigDocument::from_string(yaml, name, overrides).read_into(cfg);
  validate_run_config(cfg);
  return cfg;
}

RunConfig load_run_config(const std::string& path, const std::vector<std::string>& overrides) {
  RunConfig cfg;
  ConfigDocument::from_file(path, overrides).read_into(cfg);
  validate_run_config(cfg);
  return cfg;
}

}  // namespace resona::train
