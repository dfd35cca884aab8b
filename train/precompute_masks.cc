#include "train/precompute_masks.h"

#include <chrono>

#include "autograd/grad_mode.h"
#include "models/resona.h"
#include "ops/ops.h"
#include "train/run_data.h"

namespace resona::train {

PrecomputeResult precompute_masks(const RunConfig& cfg_in, const PrecomputeOptions& opt,
                                  const std::string& out) {
  RunConfig cfg = cfg_in;
  cfg.data.shuffle = false;  // masks are per row of the unshuffled epoch
  const models::ResonaSection& r = cfg.model.resona;
  RESONA_CHECK(opt.encoder == "lexical" || opt.encoder == "embedding")
      << "precompute-masks: unknown encoder '" << opt.encoder << "' (lexical or embedding)";
  RESONA_CHECK(opt.encoder != "embedding" || (opt.embedding.defined() && opt.embedding.dim() == 2 &&
                                              opt.embedding.size(0) >= cfg.model.vocab_size))
      << "precompute-masks: the embedding encoder needs the checkpoint's [vocab, D] embedding "
         "matrix";
  RESONA_CHECK(opt.rows_per_batch >= 1) << "precompute-masks: rows per batch must be >= 1";
  const auto t0 = std::chrono::steady_clock::now();
  NoGradGuard no_grad;
  const RunData d = open_run_data(cfg, /*with_masks=*/false);
  auto rows = make_batch_source(cfg, d, 1, opt.valid);
  const int64_t total = rows->steps_per_epoch();
  RESONA_CHECK(total > 0) << "precompute-masks: the " << (opt.valid ? "evaluation" : "training")
                          << " split has no rows of " << cfg.data.seq_len << " tokens";
  data::MaskHeader h = expected_mask_header(cfg, *rows);
  h.rows = static_cast<uint32_t>(total);
  h.encoder = opt.encoder;
  h.encoder_dim =
      static_cast<uint32_t>(opt.encoder == "lexical" ? r.lexical_dim : opt.embedding.size(1));
  h.encoder_ngram = static_cast<uint32_t>(opt.encoder == "lexical" ? r.lexical_ngram : 0);
  const int64_t T = cfg.data.seq_len;
  std::vector<int32_t> ids;
  ids.reserve(static_cast<size_t>(total * h.ids_per_row()));
  for (int64_t done = 0; done < total;) {
    const int64_t n = std::min(opt.rows_per_batch, total - done);
    std::vector<int32_t> tokens;
    tokens.reserve(static_cast<size_t>(n * T));
    for (int64_t i = 0; i < n; ++i) {
      const data::Batch b = rows->next();
      tokens.insert(tokens.end(), b.inputs.begin(), b.inputs.end());
    }
    Tensor tok = from_vector(tokens, {n, T});
    Tensor found =
        opt.encoder == "lexical"
            ? models::lexical_search(tok, r)
            : models::embedding_search(embedding(opt.embedding, tok.to(DType::kInt64)), r);
    const std::vector<int32_t> got = found.to_vector<int32_t>();
    ids.insert(ids.end(), got.begin(), got.end());
    done += n;
    if (opt.progress) opt.progress(done, total);
  }
  data::write_masks(out, h, ids);
  PrecomputeResult res;
  res.header = h;
  res.rows = total;
  res.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return res;
}

}  // namespace resona::train
