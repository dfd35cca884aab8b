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
  if (c.data.source == "npy" &&
      (c.data.npy.train_inputs.empty() || c.data.npy.train_labels.empty())) {
    fail("key 'data.npy.train_inputs': data.source npy needs train_inputs and train_labels");
  }
  if (c.data.source == "npy" &&
      c.data.npy.valid_inputs.empty() != c.data.npy.valid_labels.empty()) {
    fail("key 'data.npy.valid_labels': give both valid_inputs and valid_labels, or neither");
  }
  const bool offline = !c.model.resona.layers.empty() && c.model.resona.mask_source == "offline";
  if (offline && c.data.masks.empty()) {
    fail(
        "key 'data.masks': model.resona.mask_source is offline, so the training rows' "
        "retrieval masks (resona precompute-masks) are required");
  }
  if (offline && c.data.source == "tokens" && c.data.shuffle) {
    fail(
        "key 'data.shuffle': offline retrieval masks are computed for the unshuffled rows; "
        "set data.shuffle false (or search online)");
  }
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
