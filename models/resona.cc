#include "models/resona.h"

#include <algorithm>
#include <cmath>
#include <set>
#include <unordered_map>

#include "autograd/grad_mode.h"
#include "models/blocks.h"
#include "ops/ops.h"
#include "ops/resona.h"

namespace resona::models {

namespace {

int64_t resolved_head_dim(const ModelConfig& cfg) {
  const ResonaSection& r = cfg.resona;
  return r.head_dim > 0 ? r.head_dim : cfg.hidden_size / r.num_heads;
}

ChunkSearchOptions search_options(const ResonaSection& r) {
  return {.chunk = r.chunk_size, .top_k = r.top_k, .query_block = r.query_block};
}

}  // namespace

Tensor chunk_means(const Tensor& x, int64_t c) {
  const int64_t B = x.size(0), T = x.size(1), E = x.size(2), NC = T / c;
  return mean(slice(x, 1, 0, NC * c).reshape({B, NC, c, E}), {2});
}

namespace {

// Hashed n-gram counts, sorted by bucket: the nonzeros of a lexical_features row.
using SparseCounts = std::vector<std::pair<int64_t, double>>;

// Adds the n-grams (n = 1..N) ending at t that start at or after `start` to `out`.
void add_ngrams(const int64_t* tok, int64_t t, int64_t start, const ResonaSection& r,
                std::vector<int64_t>& out) {
  for (int64_t n = 1; n <= r.lexical_ngram && t - n + 1 >= start; ++n) {
    out.push_back(static_cast<int64_t>(lexical_hash(tok + t - n + 1, n) %
                                       static_cast<uint64_t>(r.lexical_dim)));
  }
}

SparseCounts count_buckets(std::vector<int64_t>& buckets, double* norm) {
  std::sort(buckets.begin(), buckets.end());
  SparseCounts c;
  for (int64_t b : buckets) {
    if (!c.empty() && c.back().first == b) {
      c.back().second += 1;
    } else {
      c.emplace_back(b, 1.0);
    }
  }
  double n2 = 0;
  for (const auto& [b, v] : c) n2 += v * v;
  *norm = std::sqrt(n2);
  return c;
}

}  // namespace

// The lexical search without dense features: the same vectors as lexical_features (query
// n-grams clipped at position 0, chunk n-grams inside the chunk), cosine from the sparse
// counts in float64, then chunk_search's rule (eligible chunks only, descending cosine,
// ties and zero cosines to the smaller id, -1 beyond the eligible ones). Chunks sharing
// no bucket with the query have cosine 0; an inverted index (bucket -> chunks, in id
// order) scores only the others, so a query costs its postings, not NC.
Tensor lexical_search(const Tensor& ids_in, const ResonaSection& r) {
  RESONA_CHECK(ids_in.dim() == 2 && ids_in.device().is_cpu() &&
               (ids_in.dtype() == DType::kInt64 || ids_in.dtype() == DType::kInt32))
      << "lexical_search: ids " << ids_in.describe() << " must be int32/int64 [B, T] on the CPU";
  const Tensor ids = ids_in.to(DType::kInt64).contiguous();
  const int64_t B = ids.size(0), T = ids.size(1), c = r.chunk_size, b = r.query_block, k = r.top_k;
  const int64_t NC = T / c, NQ = (T + b - 1) / b;
  Tensor out = empty({B, NQ, k}, DType::kInt32);
  int32_t* po = out.data<int32_t>();
  std::vector<int64_t> scratch;
  std::vector<double> score(static_cast<size_t>(NC));
  std::vector<int64_t> touched;
  for (int64_t n = 0; n < B; ++n) {
    const int64_t* tok = ids.data<int64_t>() + n * T;
    // Chunk counts and the inverted index.
    std::vector<double> chunk_norm(static_cast<size_t>(NC));
    std::unordered_map<int64_t, std::vector<std::pair<int64_t, double>>> postings;
    for (int64_t j = 0; j < NC; ++j) {
      scratch.clear();
      for (int64_t t = j * c; t < (j + 1) * c; ++t) add_ngrams(tok, t, j * c, r, scratch);
      for (const auto& [bucket, v] : count_buckets(scratch, &chunk_norm[j]))
        postings[bucket].emplace_back(j, v);
    }
    for (int64_t q = 0; q < NQ; ++q) {
      int32_t* dst = po + (n * NQ + q) * k;
      const int64_t pos = q * b;
      const int64_t eligible = std::min(NC, (pos + 1) / c);  // (j+1) c - 1 <= pos
      scratch.clear();
      add_ngrams(tok, pos, 0, r, scratch);
      double qn = 0;
      const SparseCounts qc = count_buckets(scratch, &qn);
      touched.clear();
      for (const auto& [bucket, v] : qc) {
        auto it = postings.find(bucket);
        if (it == postings.end()) continue;
        for (const auto& [j, cv] : it->second) {
          if (j >= eligible) break;  // postings are in chunk order
          if (score[j] == 0) touched.push_back(j);
          score[j] += v * cv;
        }
      }
      std::vector<std::pair<double, int64_t>> ranked;
      for (int64_t j : touched) {
        const double den = qn * chunk_norm[j];
        ranked.emplace_back(den > 0 ? score[j] / den : 0.0, j);
        score[j] = 0;
      }
      std::sort(ranked.begin(), ranked.end(), [](const auto& x, const auto& y) {
        return x.first != y.first ? x.first > y.first : x.second < y.second;
      });
      // Chunks sharing a bucket have a positive cosine; then the zero-cosine ones in id
      // order.
      int64_t filled = 0;
      for (const auto& e : ranked) {
        if (filled == k) break;
        dst[filled++] = static_cast<int32_t>(e.second);
      }
      const int64_t positive = filled;
      for (int64_t j = 0; j < eligible && filled < k; ++j) {
        if (std::find(dst, dst + positive, static_cast<int32_t>(j)) == dst + positive) {
          dst[filled++] = static_cast<int32_t>(j);
        }
      }
      for (; filled < k; ++filled) dst[filled] = -1;
    }
  }
  return out;
}

Tensor embedding_search(const Tensor& emb, const ResonaSection& r) {
  return chunk_search(emb, chunk_means(emb, r.chunk_size), search_options(r));
}

bool has_resona(const ModelConfig& cfg, int64_t layer) {
  const std::vector<int64_t>& l = cfg.resona.layers;
  return std::find(l.begin(), l.end(), layer) != l.end();
}

void validate_resona_config(const ModelConfig& cfg) {
  const ResonaSection& r = cfg.resona;
  std::set<int64_t> seen;
  for (int64_t l : r.layers) {
    RESONA_CHECK(l >= 0 && l < cfg.num_layers)
        << "model.resona.layers: layer " << l << " does not exist (model.num_layers is "
        << cfg.num_layers << ")";
    RESONA_CHECK(seen.insert(l).second) << "model.resona.layers: layer " << l << " listed twice";
  }
  if (r.layers.empty()) return;
  RESONA_CHECK(cfg.name != "tiny")
      << "model.resona.layers: the tiny model has no Resona layers; choose a backbone "
         "(gla, deltanet, retnet, mamba, mamba2)";
  RESONA_CHECK(r.head_dim > 0 || cfg.hidden_size % r.num_heads == 0)
      << "model.resona.num_heads: " << r.num_heads << " does not divide hidden_size "
      << cfg.hidden_size << "; set model.resona.head_dim";
  RESONA_CHECK(r.mask_source == "online" || r.mask_source == "offline")
      << "model.resona.mask_source: unknown '" << r.mask_source << "'";
}

ResonaLayer::ResonaLayer(const ModelConfig& cfg, Generator& gen)
    : opt_(cfg.resona),
      hidden_(cfg.hidden_size),
      heads_(cfg.resona.num_heads),
      head_dim_(resolved_head_dim(cfg)),
      q_proj_(hidden_, heads_ * head_dim_, gen, {.bias = false, .init_std = cfg.init_std}),
      k_proj_(hidden_, heads_ * head_dim_, gen, {.bias = false, .init_std = cfg.init_std}),
      v_proj_(hidden_, heads_ * head_dim_, gen, {.bias = false, .init_std = cfg.init_std}),
      o_proj_(heads_ * head_dim_, hidden_, gen, {.bias = false, .init_std = cfg.init_std}) {
  register_module("q_proj", q_proj_);
  register_module("k_proj", k_proj_);
  register_module("v_proj", v_proj_);
  register_module("o_proj", o_proj_);
  if (opt_.encoder == "separate") {
    const int64_t E = opt_.search_dim > 0 ? opt_.search_dim : head_dim_;
    q_search_ = std::make_unique<Linear>(hidden_, E, gen,
                                         LinearOptions{.bias = false, .init_std = cfg.init_std});
    k_search_ = std::make_unique<Linear>(hidden_, E, gen,
                                         LinearOptions{.bias = false, .init_std = cfg.init_std});
    register_module("q_search", *q_search_);
    register_module("k_search", *k_search_);
  }
  if (opt_.alpha == "learned") {
    alpha_proj_ = std::make_unique<Linear>(hidden_, opt_.alpha_per_channel ? hidden_ : 1, gen,
                                           LinearOptions{.bias = true, .init_std = cfg.init_std});
    register_module("alpha_proj", *alpha_proj_);
  }
}

ResonaLayer::Retrieval ResonaLayer::retrieve(const Tensor& x, const Tensor& k,
                                             const ResonaInputs& in) const {
  const int64_t B = x.size(0), T = x.size(1);
  const ChunkSearchOptions so = search_options(opt_);
  const int64_t NQ = (T + opt_.query_block - 1) / opt_.query_block;
  if (opt_.mask_source == "offline") {
    RESONA_CHECK(in.chunk_ids.defined())
        << "resona: model.resona.mask_source is offline but the batch carries no chunk ids "
           "(data.masks)";
    RESONA_CHECK(in.chunk_ids.dim() == 3 && in.chunk_ids.size(0) == B &&
                 in.chunk_ids.size(1) == NQ && in.chunk_ids.size(2) == opt_.top_k)
        << "resona: offline chunk ids " << in.chunk_ids.describe() << " must be [" << B << ", "
        << NQ << ", " << opt_.top_k << "] for T = " << T << ", query_block " << opt_.query_block
        << ", top_k " << opt_.top_k;
    return {in.chunk_ids.to(x.device()), Tensor()};
  }
  if (opt_.encoder == "lexical") {
    RESONA_CHECK(in.ids.defined() && in.ids.dim() == 2 && in.ids.size(0) == B &&
                 in.ids.size(1) == T)
        << "resona: the lexical encoder needs the token ids [" << B << ", " << T << "]";
    Tensor ids = in.ids.device().is_cpu() ? in.ids : in.ids.to(Device::cpu());
    return {lexical_search(ids, opt_).to(x.device()), Tensor()};
  }
  if (opt_.encoder == "shared") {
    // The key projection on both sides (models/resona.h), mean over heads; no gradient.
    NoGradGuard no_grad;
    Tensor query = mean(k_proj_.forward(x).reshape({B, T, heads_, head_dim_}), {2});
    Tensor chunks = chunk_means(mean(k.detach(), {2}), opt_.chunk_size);
    return {chunk_search(query, chunks, so), Tensor()};
  }
  // separate: own encoders; the retrieved chunks' cosines become a logit bias.
  Tensor query = l2_normalize(q_search_->forward(x));  // [B, T, E]
  Tensor chunks = l2_normalize(chunk_means(k_search_->forward(in.embeddings), opt_.chunk_size));
  Tensor ids = chunk_search(query.detach(), chunks.detach(), so);  // [B, NQ, k]
  const int64_t NC = chunks.size(1), E = chunks.size(2);
  if (NC == 0) return {ids, Tensor()};
  // Rows b * NC + max(id, 0) of the flattened chunk embeddings; a -1 slot reads chunk 0,
  // whose bias chunk_attention never uses (the slot has no keys).
  Tensor flat_ids = ids.to(Device::cpu()).to(DType::kInt64).contiguous();
  int64_t* p = flat_ids.data<int64_t>();
  const int64_t per_seq = NQ * opt_.top_k;
  for (int64_t i = 0; i < flat_ids.numel(); ++i)
    p[i] = (i / per_seq) * NC + std::max<int64_t>(p[i], 0);
  Tensor picked = index_select(chunks.reshape({B * NC, E}), 0,
                               flat_ids.reshape({B * NQ * opt_.top_k}).to(x.device()))
                      .reshape({B, NQ, opt_.top_k, E});
  Tensor block_query = slice(query, 1, 0, T, opt_.query_block).unsqueeze(2);  // [B, NQ, 1, E]
  return {ids, sum(picked * block_query, {3})};
}

Tensor ResonaLayer::search(const Tensor& x, const ResonaInputs& in) const {
  const int64_t B = x.size(0), T = x.size(1);
  if (opt_.encoder != "shared") return retrieve(x, Tensor(), in).chunk_ids;
  NoGradGuard no_grad;
  Tensor k = k_proj_.forward(in.embeddings).reshape({B, T, heads_, head_dim_});
  return retrieve(x, k, in).chunk_ids;
}

Tensor ResonaLayer::forward(const Tensor& x, const ResonaInputs& in) const {
  RESONA_CHECK(x.dim() == 3 && x.size(2) == hidden_)
      << "resona: x " << x.describe() << " must be [B, T, " << hidden_ << "]";
  RESONA_CHECK(in.embeddings.defined() && in.embeddings.shape() == x.shape())
      << "resona: embeddings " << in.embeddings.describe() << " must match x " << x.describe();
  const int64_t B = x.size(0), T = x.size(1);
  Tensor q = q_proj_.forward(x).reshape({B, T, heads_, head_dim_});
  Tensor k = k_proj_.forward(in.embeddings).reshape({B, T, heads_, head_dim_});
  Tensor v = v_proj_.forward(in.embeddings).reshape({B, T, heads_, head_dim_});
  Retrieval r = retrieve(x, k, in);
  Tensor o = chunk_attention(q, k, v, r.chunk_ids, r.bias,
                             {.chunk = opt_.chunk_size,
                              .query_block = opt_.query_block,
                              .local_window = opt_.local_window,
                              .scale = 0});
  o = o_proj_.forward(o.reshape({B, T, heads_ * head_dim_}));
  if (alpha_proj_) return sigmoid(alpha_proj_->forward(x)) * o;
  return o * opt_.alpha_value;
}

}  // namespace resona::models
