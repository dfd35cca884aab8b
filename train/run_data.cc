#include "train/run_data.h"

#include <cstring>
#include <string>
#include <type_traits>

#include "data/hash.h"
#include "data/task_loader.h"
#include "ops/index.h"

namespace resona::train {

namespace {

// `values` as a [shape] tensor on `device`. For a GPU they are staged in page-locked host
// memory, so the upload is queued on the current stream and the host goes on building
// the step while the GPU finishes the work before it (a pageable copy would wait for
// that work first); the bytes are the same either way.
template <class T>
Tensor upload(const std::vector<T>& values, const Shape& shape, Device device) {
  if (device.is_cpu()) return from_vector(values, shape);
  const size_t nbytes = values.size() * sizeof(T);
  Storage staging = host_staging_storage(nbytes, device);
  if (nbytes != 0) std::memcpy(staging->data(), values.data(), nbytes);
  Tensor host(std::make_shared<TensorImpl>(std::move(staging), shape, contiguous_strides(shape), 0,
                                           DTypeOf<T>::value));
  return host.to(device);
}

data::LoaderConfig loader_config(const RunConfig& cfg, int64_t rows, bool valid) {
  data::LoaderConfig l;
  l.seq_len = cfg.data.seq_len;
  l.global_batch = rows;
  l.mode = data::pack_mode_from_name(cfg.data.pack);
  l.shuffle = valid ? false : cfg.data.shuffle;
  l.seed = cfg.train.seed;
  l.add_bos = cfg.data.add_bos;
  l.add_eos = cfg.data.add_eos;
  return l;
}

template <class L>
class LoaderSource : public BatchSource {
 public:
  template <class D>
  LoaderSource(D data, const data::LoaderConfig& c) : loader_(std::move(data), c) {}
  data::Batch next() override { return loader_.next(); }
  int64_t steps_per_epoch() const override { return loader_.steps_per_epoch(); }
  data::LoaderState state() const override { return loader_.state(); }
  void set_state(const data::LoaderState& s) override { loader_.set_state(s); }
  std::optional<data::Batch> remainder() const override {
    if constexpr (std::is_same_v<L, data::TaskLoader>) {
      const int64_t first = loader_.steps_per_epoch() * loader_.config().global_batch;
      const int64_t left = loader_.rows_per_epoch() - first;
      if (left > 0) return data::task_rows(loader_.examples(), first, left);
    }
    return std::nullopt;
  }

 private:
  L loader_;
};

std::shared_ptr<const data::TaskExamples> checked_task(data::TaskExamples ex, const RunConfig& cfg,
                                                       const std::string& what) {
  RESONA_CHECK(ex.seq_len == cfg.data.seq_len)
      << what << ": rows of " << ex.seq_len << " tokens, but data.seq_len is " << cfg.data.seq_len;
  return std::make_shared<const data::TaskExamples>(std::move(ex));
}

std::shared_ptr<const data::MaskFile> open_masks(const RunConfig& cfg, const RunData& d,
                                                 const std::string& path, bool valid) {
  auto m = std::make_shared<const data::MaskFile>(data::read_masks(path));
  const auto rows = make_batch_source(cfg, d, 1, valid);  // one row per step: the row count
  const data::MaskHeader want = expected_mask_header(cfg, *rows);
  const data::MaskHeader& got = m->header;
  RESONA_CHECK(got.chunk == want.chunk && got.top_k == want.top_k &&
               got.query_block == want.query_block && got.seq_len == want.seq_len)
      << path << ": masks for " << got.describe() << ", but the run needs chunk " << want.chunk
      << ", top_k " << want.top_k << ", query_block " << want.query_block << ", seq_len "
      << want.seq_len << " (model.resona, data.seq_len)";
  RESONA_CHECK(got.source_hash == want.source_hash)
      << path << ": computed from other rows (source hash " << std::hex << got.source_hash
      << ", these rows " << want.source_hash << std::dec
      << "); rerun resona precompute-masks with this config";
  RESONA_CHECK(int64_t{got.rows} >= rows->steps_per_epoch())
      << path << ": " << got.rows << " rows, the data has " << rows->steps_per_epoch();
  return m;
}

}  // namespace

RunData open_run_data(const RunConfig& cfg, bool with_masks) {
  RunData d;
  const int64_t V = cfg.model.vocab_size;
  if (cfg.data.source == "tokens") {
    RESONA_CHECK(!cfg.data.train.empty()) << "data.train: no training dataset given";
    d.train_tokens = data::TokenDataset::open(cfg.data.train);
    RESONA_CHECK(d.train_tokens->vocab_size() <= V)
        << "model.vocab_size " << V << " is smaller than the vocabulary of " << cfg.data.train
        << " (" << d.train_tokens->vocab_size() << ")";
    if (!cfg.data.valid.empty()) d.valid_tokens = data::TokenDataset::open(cfg.data.valid);
  } else if (cfg.data.source == "mqar") {
    data::MqarOptions o;
    o.vocab_size = V;
    o.seq_len = cfg.data.seq_len;
    o.num_kv_pairs = cfg.data.mqar.num_kv_pairs;
    o.power_a = cfg.data.mqar.power_a;
    o.random_non_queries = cfg.data.mqar.random_non_queries;
    o.num_examples = cfg.data.mqar.train_examples;
    o.seed = data::mqar_train_seed(cfg.data.mqar.seed);
    d.train_task = checked_task(data::generate_mqar(o), cfg, "data.mqar");
    o.num_examples = cfg.data.mqar.test_examples;
    o.seed = data::mqar_test_seed(cfg.data.mqar.seed);
    d.valid_task = checked_task(data::generate_mqar(o), cfg, "data.mqar");
  } else {
    RESONA_CHECK(cfg.data.source == "npy") << "data.source: unknown '" << cfg.data.source << "'";
    const NpyDataSection& n = cfg.data.npy;
    d.train_task =
        checked_task(data::read_task_npy(n.train_inputs, n.train_labels, V), cfg, n.train_inputs);
    if (!n.valid_inputs.empty()) {
      d.valid_task =
          checked_task(data::read_task_npy(n.valid_inputs, n.valid_labels, V), cfg, n.valid_inputs);
    }
  }
  const models::ResonaSection& r = cfg.model.resona;
  if (with_masks && !r.layers.empty() && r.mask_source == "offline") {
    d.train_masks = open_masks(cfg, d, cfg.data.masks, false);
    if (d.has_valid()) {
      RESONA_CHECK(!cfg.data.valid_masks.empty())
          << "data.valid_masks: model.resona.mask_source is offline and there are evaluation "
             "rows, so their masks are needed too (resona precompute-masks --split valid)";
      d.valid_masks = open_masks(cfg, d, cfg.data.valid_masks, true);
    }
  }
  return d;
}

std::unique_ptr<BatchSource> make_batch_source(const RunConfig& cfg, const RunData& d, int64_t rows,
                                               bool valid) {
  const data::LoaderConfig l = loader_config(cfg, rows, valid);
  if (d.is_task()) {
    auto ex = valid ? d.valid_task : d.train_task;
    RESONA_CHECK(ex) << "no evaluation rows (data.npy.valid_inputs)";
    return std::make_unique<LoaderSource<data::TaskLoader>>(ex, l);
  }
  auto ds = valid ? d.valid_tokens : d.train_tokens;
  RESONA_CHECK(ds) << "no evaluation dataset (data.valid)";
  return std::make_unique<LoaderSource<data::DataLoader>>(ds, l);
}

data::MaskHeader expected_mask_header(const RunConfig& cfg, const BatchSource& rows) {
  const data::LoaderState s = rows.state();
  const std::string shape = std::to_string(s.dataset_fingerprint) + "|" +
                            std::to_string(cfg.data.seq_len) + "|" + s.mode + "|" +
                            std::to_string(s.add_bos) + std::to_string(s.add_eos);
  const models::ResonaSection& r = cfg.model.resona;
  data::MaskHeader h;
  h.chunk = static_cast<uint32_t>(r.chunk_size);
  h.top_k = static_cast<uint32_t>(r.top_k);
  h.query_block = static_cast<uint32_t>(r.query_block);
  h.seq_len = static_cast<uint32_t>(cfg.data.seq_len);
  h.source_hash = data::hash64(shape);
  return h;
}

Tensor batch_chunk_ids(const data::MaskFile* masks, const data::Batch& b, Device device,
                       int64_t first_row) {
  if (masks == nullptr) return Tensor();
  const int64_t first = first_row >= 0 ? first_row : b.step * b.rows;
  const data::MaskHeader& h = masks->header;
  const int64_t per_row = h.ids_per_row();
  std::vector<int32_t> ids(static_cast<size_t>(b.rows * per_row));
  for (int64_t j = 0; j < b.rows; ++j) {
    const int64_t row = first + j;
    RESONA_CHECK(row < int64_t{h.rows})
        << "retrieval masks: row " << row << " requested, the mask file has " << h.rows;
    std::copy(masks->row(row), masks->row(row) + per_row, ids.begin() + j * per_row);
  }
  return upload(ids, {b.rows, h.query_blocks(), int64_t{h.top_k}}, device);
}

BatchLogits batch_logits(const models::LanguageModel& model, const data::Batch& b,
                         const Tensor& chunk_ids, Device device, bool labelled_only) {
  const int64_t n = b.rows * b.seq_len;
  std::vector<int64_t> ids(b.inputs.begin(), b.inputs.end());
  Tensor h = model.hidden_states(upload(ids, {b.rows, b.seq_len}, device), chunk_ids);
  h = h.reshape({n, h.size(2)});
  BatchLogits out;
  std::vector<int64_t> labels;
  if (labelled_only) {
    for (int64_t i = 0; i < n; ++i) {
      if (b.targets[i] == data::kIgnoreTarget) continue;
      out.positions.push_back(i);
      labels.push_back(b.targets[i]);
    }
    h = index_select(h, 0,
                     upload(out.positions, {static_cast<int64_t>(out.positions.size())}, device));
  } else {
    out.positions.resize(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) out.positions[i] = i;
    labels.assign(b.targets.begin(), b.targets.end());
  }
  out.logits = model.logits(h);
  out.labels = upload(labels, {static_cast<int64_t>(labels.size())}, device);
  return out;
}

}  // namespace resona::train
