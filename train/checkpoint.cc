#include "train/checkpoint.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/check.h"
#include "data/hash.h"

namespace resona::train {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr const char* kModelFile = "model.safetensors";
constexpr const char* kOptimizerFile = "optimizer.safetensors";
constexpr const char* kStateFile = "trainer_state.json";
constexpr const char* kLatestFile = "latest";
constexpr const char* kStepPrefix = "step_";

std::string errno_str() { return std::strerror(errno); }

void fsync_path(const std::string& path, bool directory) {
  int fd = ::open(path.c_str(), directory ? (O_RDONLY | O_DIRECTORY) : O_RDONLY);
  RESONA_CHECK(fd >= 0) << "cannot open '" << path << "' to sync it: " << errno_str();
  int rc = ::fsync(fd);
  ::close(fd);
  RESONA_CHECK(rc == 0) << "fsync of '" << path << "' failed: " << errno_str();
}

void write_file_synced(const std::string& path, const std::string& bytes) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  RESONA_CHECK(fd >= 0) << "cannot create '" << path << "': " << errno_str();
  size_t done = 0;
  while (done < bytes.size()) {
    ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      std::string err = errno_str();
      ::close(fd);
      RESONA_FAIL() << "writing '" << path << "' failed: " << err;
    }
    done += static_cast<size_t>(n);
  }
  int rc = ::fsync(fd);
  ::close(fd);
  RESONA_CHECK(rc == 0) << "fsync of '" << path << "' failed: " << errno_str();
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  RESONA_CHECK(in.good()) << "checkpoint file '" << path << "' is missing or unreadable";
  std::ostringstream ss;
  ss << in.rdbuf();
  RESONA_CHECK(!in.bad()) << "reading '" << path << "' failed";
  return ss.str();
}

json file_record(const std::string& bytes) {
  return {{"bytes", bytes.size()}, {"hash64", data::hex64(data::hash64(bytes))}};
}

json state_to_json(const TrainerState& s, const json& files) {
  return {{"format", "resona-checkpoint"},
          {"format_version", kCheckpointFormatVersion},
          {"step", s.step},
          {"tokens_seen", s.tokens_seen},
          {"skipped_steps", s.skipped_steps},
          {"loader_state", s.loader_state},
          {"dropout_rng", {{"seed", s.dropout_rng.seed}, {"offset", s.dropout_rng.offset}}},
          {"model_name", s.model_name},
          {"num_parameters", s.num_parameters},
          {"config", s.config_yaml},
          {"source_revision", s.source_revision},
          {"files", files}};
}

template <class T>
T field(const json& j, const char* key, const std::string& file) {
  RESONA_CHECK(j.contains(key)) << file << ": missing field '" << key << "'";
  try {
    return j.at(key).get<T>();
  } catch (const json::exception& e) {
    RESONA_FAIL() << file << ": field '" << key << "' has the wrong type: " << e.what();
    return T{};
  }
}

SafetensorsFile load_checked(const std::string& dir, const char* name, const json& files,
                             const std::string& state_path) {
  const std::string path = (fs::path(dir) / name).string();
  RESONA_CHECK(files.contains(name)) << state_path << ": no record of " << name;
  const json& rec = files.at(name);
  const uint64_t bytes = field<uint64_t>(rec, "bytes", state_path);
  const std::string hash = field<std::string>(rec, "hash64", state_path);
  const std::string data = read_file(path);
  RESONA_CHECK(data.size() == bytes) << path << ": " << data.size() << " bytes, but " << state_path
                                     << " records " << bytes << " (truncated?)";
  RESONA_CHECK(data::hex64(data::hash64(data)) == hash)
      << path << ": contents do not match the hash64 recorded in " << state_path << " (corrupted)";
  return parse_safetensors(data.data(), data.size(), path);
}

}  // namespace

std::string checkpoints_dir(const std::string& run_dir) {
  return (fs::path(run_dir) / "checkpoints").string();
}

std::string step_folder_name(int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%s%08lld", kStepPrefix, static_cast<long long>(step));
  return buf;
}

std::string save_checkpoint(const std::string& run_dir, const TrainerState& state,
                            const NamedTensors& model, const NamedTensors& optimizer,
                            int64_t keep_last) {
  const fs::path root = checkpoints_dir(run_dir);
  std::error_code ec;
  fs::create_directories(root, ec);
  RESONA_CHECK(!ec) << "cannot create checkpoint folder '" << root.string()
                    << "': " << ec.message();
  const std::string name = step_folder_name(state.step);
  const fs::path final_dir = root / name;
  const fs::path tmp_dir = root / (".tmp-" + name);
  fs::remove_all(tmp_dir, ec);
  fs::create_directories(tmp_dir, ec);
  RESONA_CHECK(!ec) << "cannot create '" << tmp_dir.string() << "': " << ec.message();

  const std::string model_bytes = serialize_safetensors(model, {{"format", "pt"}});
  const std::string optim_bytes = serialize_safetensors(optimizer, {{"format", "pt"}});
  json files = {{kModelFile, file_record(model_bytes)}, {kOptimizerFile, file_record(optim_bytes)}};
  write_file_synced((tmp_dir / kModelFile).string(), model_bytes);
  write_file_synced((tmp_dir / kOptimizerFile).string(), optim_bytes);
  write_file_synced((tmp_dir / kStateFile).string(), state_to_json(state, files).dump(2) + "\n");
  fsync_path(tmp_dir.string(), true);

  if (fs::exists(final_dir)) fs::remove_all(final_dir, ec);  // a re-save of the same step
  RESONA_CHECK(::rename(tmp_dir.c_str(), final_dir.c_str()) == 0)
      << "cannot rename '" << tmp_dir.string() << "' to '" << final_dir.string()
      << "': " << errno_str();
  fsync_path(root.string(), true);

  const fs::path latest_tmp = root / ".tmp-latest";
  write_file_synced(latest_tmp.string(), name + "\n");
  RESONA_CHECK(::rename(latest_tmp.c_str(), (root / kLatestFile).c_str()) == 0)
      << "cannot update '" << (root / kLatestFile).string() << "': " << errno_str();
  fsync_path(root.string(), true);

  // Prune: keep the newest keep_last step folders (and never the one just written).
  std::vector<std::string> steps;
  for (const auto& e : fs::directory_iterator(root)) {
    const std::string n = e.path().filename().string();
    if (e.is_directory() && n.rfind(kStepPrefix, 0) == 0) steps.push_back(n);
  }
  std::sort(steps.begin(), steps.end());
  for (size_t i = 0; i + static_cast<size_t>(keep_last) < steps.size(); ++i) {
    if (steps[i] != name) fs::remove_all(root / steps[i], ec);
  }
  return final_dir.string();
}

Checkpoint load_checkpoint(const std::string& dir) {
  RESONA_CHECK(fs::is_directory(dir)) << "checkpoint '" << dir << "' is not a folder";
  const std::string state_path = (fs::path(dir) / kStateFile).string();
  json j;
  try {
    j = json::parse(read_file(state_path));
  } catch (const json::exception& e) {
    RESONA_FAIL() << state_path << ": not valid JSON (" << e.what() << ")";
  }
  RESONA_CHECK(j.is_object() && j.value("format", "") == "resona-checkpoint")
      << state_path << ": not a resona checkpoint state";
  const int version = field<int>(j, "format_version", state_path);
  RESONA_CHECK(version == kCheckpointFormatVersion)
      << state_path << ": format version " << version << ", this build reads "
      << kCheckpointFormatVersion;
  Checkpoint c;
  c.dir = dir;
  c.state.step = field<int64_t>(j, "step", state_path);
  c.state.tokens_seen = field<int64_t>(j, "tokens_seen", state_path);
  c.state.skipped_steps = field<int64_t>(j, "skipped_steps", state_path);
  c.state.loader_state = field<std::string>(j, "loader_state", state_path);
  const json rng = field<json>(j, "dropout_rng", state_path);
  c.state.dropout_rng.seed = field<uint64_t>(rng, "seed", state_path);
  c.state.dropout_rng.offset = field<uint64_t>(rng, "offset", state_path);
  c.state.model_name = field<std::string>(j, "model_name", state_path);
  c.state.num_parameters = field<int64_t>(j, "num_parameters", state_path);
  c.state.config_yaml = field<std::string>(j, "config", state_path);
  if (j.contains("source_revision")) {  // optional: older checkpoints lack it
    c.state.source_revision = field<std::string>(j, "source_revision", state_path);
  }
  const json files = field<json>(j, "files", state_path);
  c.model = load_checked(dir, kModelFile, files, state_path);
  c.optimizer = load_checked(dir, kOptimizerFile, files, state_path);
  return c;
}

std::string find_latest_checkpoint(const std::string& run_dir, std::vector<std::string>* warnings) {
  const fs::path root = checkpoints_dir(run_dir);
  if (!fs::is_directory(root)) return "";
  auto loads = [&](const fs::path& p) {
    try {
      load_checkpoint(p.string());
      return true;
    } catch (const Error& e) {
      if (warnings) warnings->push_back(e.what());
      return false;
    }
  };
  std::ifstream latest(root / kLatestFile);
  std::string name;
  if (latest && std::getline(latest, name) && !name.empty() &&
      name.find('/') == std::string::npos && fs::is_directory(root / name) && loads(root / name)) {
    return (root / name).string();
  }
  std::vector<std::string> steps;
  for (const auto& e : fs::directory_iterator(root)) {
    const std::string n = e.path().filename().string();
    if (e.is_directory() && n.rfind(kStepPrefix, 0) == 0 && n != name) steps.push_back(n);
  }
  std::sort(steps.rbegin(), steps.rend());
  for (const std::string& s : steps) {
    if (loads(root / s)) return (root / s).string();
  }
  return "";
}

}  // namespace resona::train
