#include "data/loader.h"

#include <algorithm>
#include <nlohmann/json.hpp>

#include "core/check.h"
#include "core/rng.h"
#include "data/hash.h"

namespace resona::data {

PackMode pack_mode_from_name(const std::string& name) {
  if (name == "concat") return PackMode::kConcat;
  if (name == "padded") return PackMode::kPadded;
  RESONA_FAIL() << "packing mode '" << name << "': expected concat or padded";
  return PackMode::kConcat;
}

const char* pack_mode_name(PackMode m) {
  switch (m) {
    case PackMode::kConcat:
      return "concat";
    case PackMode::kPadded:
      return "padded";
  }
  RESONA_FAIL() << "unknown PackMode " << static_cast<int>(m);
  return "";
}

int64_t Batch::target_tokens() const {
  int64_t n = 0;
  for (float m : loss_mask) n += m != 0.0f;
  return n;
}

bool LoaderState::operator==(const LoaderState& o) const {
  return epoch == o.epoch && step == o.step && seed == o.seed &&
         dataset_fingerprint == o.dataset_fingerprint && seq_len == o.seq_len &&
         global_batch == o.global_batch && mode == o.mode && shuffle == o.shuffle &&
         add_bos == o.add_bos && add_eos == o.add_eos;
}

void LoaderState::check_same_settings(const LoaderState& saved) const {
  auto same = [&](bool eq, const char* key, const auto& then, const auto& now) {
    RESONA_CHECK(eq) << "data loader position was saved with " << key << " = " << then
                     << ", this loader has " << key << " = " << now;
  };
  same(saved.seed == seed, "seed", saved.seed, seed);
  same(saved.seq_len == seq_len, "seq_len", saved.seq_len, seq_len);
  same(saved.global_batch == global_batch, "global_batch", saved.global_batch, global_batch);
  same(saved.shuffle == shuffle, "shuffle", saved.shuffle, shuffle);
  same(saved.add_bos == add_bos, "add_bos", saved.add_bos, add_bos);
  same(saved.add_eos == add_eos, "add_eos", saved.add_eos, add_eos);
}

std::string LoaderState::to_json() const {
  nlohmann::json j = {{"epoch", epoch},     {"step", step},
                      {"seed", seed},       {"dataset_fingerprint", hex64(dataset_fingerprint)},
                      {"seq_len", seq_len}, {"global_batch", global_batch},
                      {"mode", mode},       {"shuffle", shuffle},
                      {"add_bos", add_bos}, {"add_eos", add_eos}};
  return j.dump();
}

LoaderState LoaderState::from_json(const std::string& text, const std::string& what) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    RESONA_FAIL() << what << ": data loader position is not valid JSON: " << e.what();
  }
  RESONA_CHECK(j.is_object()) << what << ": data loader position is not a JSON object";
  auto get = [&](const char* k) -> const nlohmann::json& {
    RESONA_CHECK(j.contains(k)) << what << ": data loader position lacks key " << k;
    return j[k];
  };
  LoaderState s;
  try {
    s.epoch = get("epoch").get<int64_t>();
    s.step = get("step").get<int64_t>();
    s.seed = get("seed").get<uint64_t>();
    s.dataset_fingerprint =
        parse_hex64(get("dataset_fingerprint").get<std::string>(), what + ": dataset_fingerprint");
    s.seq_len = get("seq_len").get<int64_t>();
    s.global_batch = get("global_batch").get<int64_t>();
    s.mode = get("mode").get<std::string>();
    s.shuffle = get("shuffle").get<bool>();
    s.add_bos = get("add_bos").get<bool>();
    s.add_eos = get("add_eos").get<bool>();
  } catch (const nlohmann::json::exception& e) {
    RESONA_FAIL() << what << ": data loader position has a key of the wrong type: " << e.what();
  }
  RESONA_CHECK(s.epoch >= 0 && s.step >= 0) << what << ": data loader position (epoch " << s.epoch
                                            << ", step " << s.step << ") is negative";
  return s;
}

DataLoader::DataLoader(std::shared_ptr<const TokenDataset> dataset, const LoaderConfig& cfg)
    : ds_(std::move(dataset)), cfg_(cfg) {
  RESONA_CHECK(ds_ != nullptr) << "DataLoader: no dataset";
  const std::string& dir = ds_->dir();
  RESONA_CHECK(cfg_.seq_len > 0) << "loader: seq_len must be positive, got " << cfg_.seq_len;
  RESONA_CHECK(cfg_.world_size > 0 && cfg_.rank >= 0 && cfg_.rank < cfg_.world_size)
      << "loader: rank " << cfg_.rank << " is not in [0, world_size=" << cfg_.world_size << ")";
  RESONA_CHECK(cfg_.global_batch > 0 && cfg_.global_batch % cfg_.world_size == 0)
      << "loader: global_batch " << cfg_.global_batch
      << " must be a positive multiple of world_size " << cfg_.world_size;
  RESONA_CHECK(!cfg_.add_eos || ds_->eos_id() >= 0)
      << dir << ": add_eos is set but the tokenizer has no EOS id";
  RESONA_CHECK(!cfg_.add_bos || ds_->bos_id() >= 0)
      << dir << ": add_bos is set but the tokenizer has no BOS id";
  pad_id_ = cfg_.pad_id >= 0 ? cfg_.pad_id : ds_->eos_id();
  RESONA_CHECK(cfg_.mode != PackMode::kPadded || (pad_id_ >= 0 && pad_id_ < ds_->vocab_size()))
      << dir << ": padded rows need a pad id in [0, " << ds_->vocab_size() << "), got " << pad_id_
      << " (set pad_id)";
  RESONA_CHECK(ds_->num_docs() > 0) << dir << ": the dataset has no documents";

  const uint64_t T = static_cast<uint64_t>(cfg_.seq_len);
  uint64_t rows = 0;
  if (cfg_.mode == PackMode::kConcat) {
    uint64_t len = 0;
    for (uint64_t d = 0; d < ds_->num_docs(); ++d) len += unit_size(d);
    rows = len > 0 ? (len - 1) / T : 0;
  } else {
    for (uint64_t d = 0; d < ds_->num_docs(); ++d) {
      const uint64_t pairs = unit_size(d) - std::min<uint64_t>(unit_size(d), 1);
      rows += (pairs + T - 1) / T;
    }
  }
  rows_per_epoch_ = static_cast<int64_t>(rows);
  RESONA_CHECK(steps_per_epoch() > 0)
      << dir << ": " << rows_per_epoch_ << " rows of " << cfg_.seq_len << " tokens per epoch ("
      << pack_mode_name(cfg_.mode) << "), fewer than one global batch of " << cfg_.global_batch;
}

uint64_t DataLoader::unit_size(uint64_t doc) const {
  return ds_->doc_size(doc) + (cfg_.add_bos ? 1 : 0) + (cfg_.add_eos ? 1 : 0);
}

void DataLoader::copy_unit(uint64_t doc, uint64_t begin, uint64_t count, int32_t* out) const {
  const uint64_t bos = cfg_.add_bos ? 1 : 0;
  const uint64_t n = ds_->doc_size(doc);
  uint64_t i = begin;
  const uint64_t end = begin + count;
  if (i < bos && i < end) {
    *out++ = ds_->bos_id();
    ++i;
  }
  if (i < end && i < bos + n) {
    const uint64_t m = std::min(end, bos + n) - i;
    ds_->copy_doc(doc, i - bos, m, out);
    out += m;
    i += m;
  }
  if (i < end) {
    RESONA_DCHECK(cfg_.add_eos && i == bos + n && end == i + 1);
    *out++ = ds_->eos_id();
  }
}

void DataLoader::prepare_epoch(int64_t epoch) {
  if (cache_epoch_ == epoch) return;
  const uint64_t n = ds_->num_docs();
  order_.resize(n);
  if (cfg_.shuffle) {
    Generator g(hash_combine(cfg_.seed, static_cast<uint64_t>(epoch)));
    std::vector<int64_t> p = g.permutation(static_cast<int64_t>(n));
    for (uint64_t i = 0; i < n; ++i) order_[i] = static_cast<uint64_t>(p[i]);
  } else {
    for (uint64_t i = 0; i < n; ++i) order_[i] = i;
  }
  const uint64_t T = static_cast<uint64_t>(cfg_.seq_len);
  prefix_.assign(n + 1, 0);
  for (uint64_t i = 0; i < n; ++i) {
    const uint64_t u = unit_size(order_[i]);
    const uint64_t rows = (u - std::min<uint64_t>(u, 1) + T - 1) / T;
    prefix_[i + 1] = prefix_[i] + (cfg_.mode == PackMode::kConcat ? u : rows);
  }
  cache_epoch_ = epoch;
}

void DataLoader::read_row(int64_t epoch, int64_t row, int32_t* inputs, int32_t* targets,
                          float* mask) {
  RESONA_CHECK(row >= 0 && row < rows_per_epoch_)
      << ds_->dir() << ": row " << row << " of an epoch of " << rows_per_epoch_;
  prepare_epoch(epoch);
  const uint64_t T = static_cast<uint64_t>(cfg_.seq_len);
  // The unit holding stream position (or row) x: the last i with prefix_[i] <= x, which
  // skips units that contribute nothing.
  auto locate = [&](uint64_t x) -> size_t {
    return std::upper_bound(prefix_.begin(), prefix_.end(), x) - prefix_.begin() - 1;
  };
  if (cfg_.mode == PackMode::kConcat) {
    // T + 1 consecutive stream tokens starting at row * T.
    std::vector<int32_t> buf(T + 1);
    uint64_t pos = static_cast<uint64_t>(row) * T;
    size_t i = locate(pos);
    uint64_t filled = 0;
    while (filled < T + 1) {
      RESONA_CHECK(i < order_.size()) << ds_->dir() << ": stream ended inside row " << row;
      const uint64_t off = pos - prefix_[i];
      const uint64_t take = std::min<uint64_t>(T + 1 - filled, prefix_[i + 1] - pos);
      copy_unit(order_[i], off, take, buf.data() + filled);
      filled += take;
      pos += take;
      ++i;
    }
    std::copy(buf.begin(), buf.begin() + T, inputs);
    std::copy(buf.begin() + 1, buf.end(), targets);
    std::fill(mask, mask + T, 1.0f);
    return;
  }
  const size_t i = locate(static_cast<uint64_t>(row));
  const uint64_t doc = order_[i];
  const uint64_t k = static_cast<uint64_t>(row) - prefix_[i];
  const uint64_t u = unit_size(doc);
  const uint64_t m = std::min<uint64_t>(T, u - 1 - k * T);
  std::vector<int32_t> buf(m + 1);
  copy_unit(doc, k * T, m + 1, buf.data());
  for (uint64_t t = 0; t < T; ++t) {
    const bool real = t < m;
    inputs[t] = real ? buf[t] : pad_id_;
    targets[t] = real ? buf[t + 1] : kIgnoreTarget;
    mask[t] = real ? 1.0f : 0.0f;
  }
}

Batch DataLoader::next() {
  if (step_ >= steps_per_epoch()) {
    ++epoch_;
    step_ = 0;
  }
  Batch b;
  b.rows = cfg_.global_batch / cfg_.world_size;
  b.seq_len = cfg_.seq_len;
  b.epoch = epoch_;
  b.step = step_;
  const size_t T = static_cast<size_t>(cfg_.seq_len);
  b.inputs.resize(b.rows * T);
  b.targets.resize(b.rows * T);
  b.loss_mask.resize(b.rows * T);
  const int64_t first = step_ * cfg_.global_batch + cfg_.rank * b.rows;
  for (int64_t j = 0; j < b.rows; ++j) {
    read_row(epoch_, first + j, &b.inputs[j * T], &b.targets[j * T], &b.loss_mask[j * T]);
  }
  ++step_;
  return b;
}

LoaderState DataLoader::state() const {
  LoaderState s;
  s.epoch = epoch_;
  s.step = step_;
  s.seed = cfg_.seed;
  s.dataset_fingerprint = ds_->fingerprint();
  s.seq_len = cfg_.seq_len;
  s.global_batch = cfg_.global_batch;
  s.mode = pack_mode_name(cfg_.mode);
  s.shuffle = cfg_.shuffle;
  s.add_bos = cfg_.add_bos;
  s.add_eos = cfg_.add_eos;
  return s;
}

void DataLoader::set_state(const LoaderState& s) {
  const LoaderState mine = state();
  const std::string dir = ds_->dir();
  RESONA_CHECK(s.dataset_fingerprint == mine.dataset_fingerprint)
      << "data loader position was saved on another dataset (fingerprint "
      << hex64(s.dataset_fingerprint) << ", " << dir << " has " << hex64(mine.dataset_fingerprint)
      << ")";
  RESONA_CHECK(s.mode == mine.mode) << "data loader position was saved with mode = " << s.mode
                                    << ", this loader has mode = " << mine.mode;
  mine.check_same_settings(s);
  RESONA_CHECK(s.step <= steps_per_epoch())
      << "data loader position step " << s.step << " is past the end of an epoch of "
      << steps_per_epoch() << " steps";
  epoch_ = s.epoch;
  step_ = s.step;
}

}  // namespace resona::data
