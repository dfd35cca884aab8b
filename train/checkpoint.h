// Checkpoints: one folder per step under RUN_DIR/checkpoints/, written atomically.
//
//   RUN_DIR/checkpoints/step_00000100/model.safetensors       parameters, FLA names
//                                     optimizer.safetensors   "<param>.exp_avg", ...
//                                     trainer_state.json      step, tokens, data-loader
//                                         position, RNG states, resolved config, format
//                                         version, size and hash64 of both files, the
//                                         source revision of the binary that wrote it
//   RUN_DIR/checkpoints/latest        "step_00000100\n", replaced atomically
//
// Writing: the three files go to a temporary folder (.tmp-step_...), each fsync'd, the
// folder renamed into place and the parent fsync'd, then `latest` is replaced (tmp +
// rename), then folders beyond the newest `keep_last` are deleted. A crash at any point
// leaves either the previous checkpoint or the new one as `latest`, never a partial one.
//
// Loading validates everything before anything is used: the JSON and its format
// version, both files' sizes and hashes, the safetensors headers. A checkpoint that
// fails is refused with a message naming the file and the problem. Optional fields added
// after format version 1 was fixed ("source_revision") may be absent: checkpoints
// written before them load, with the field empty.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/rng.h"
#include "core/safetensors.h"

namespace resona::train {

inline constexpr int kCheckpointFormatVersion = 1;

struct TrainerState {
  int64_t step = 0;         // optimizer steps completed
  int64_t tokens_seen = 0;  // target tokens consumed
  int64_t skipped_steps = 0;
  std::string loader_state;  // data::LoaderState::to_json()
  RngState dropout_rng;
  std::string config_yaml;  // the resolved run config
  std::string model_name;
  int64_t num_parameters = 0;
  // build_revision() of the binary that wrote the checkpoint; empty when read from a
  // checkpoint written before the field existed.
  std::string source_revision;
};

// The source revision this binary was built from: the git commit of the source tree
// (40 hex digits, "-dirty" appended when tracked files had uncommitted changes), or
// "unknown" when built outside a git checkout. Stamped at build time (train/BUILD:
// revision, from tools/workspace_status.sh).
const char* build_revision();

// Writes step folder `step_<8 digits>` under run_dir/checkpoints, updates `latest` and
// prunes; returns the folder's path.
std::string save_checkpoint(const std::string& run_dir, const TrainerState& state,
                            const NamedTensors& model, const NamedTensors& optimizer,
                            int64_t keep_last);

struct Checkpoint {
  std::string dir;
  TrainerState state;
  SafetensorsFile model;
  SafetensorsFile optimizer;
};

// Loads and validates a checkpoint folder (or throws naming what is wrong).
Checkpoint load_checkpoint(const std::string& dir);

// The newest loadable checkpoint of a run: the one `latest` names when it validates,
// else the newest step folder that does (each one refused is reported in `warnings`).
// Empty when there is none.
std::string find_latest_checkpoint(const std::string& run_dir,
                                   std::vector<std::string>* warnings = nullptr);

// The checkpoints folder of a run, and a step folder's name ("step_00000100").
std::string checkpoints_dir(const std::string& run_dir);
std::string step_folder_name(int64_t step);

}  // namespace resona::train
