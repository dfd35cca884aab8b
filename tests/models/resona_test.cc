// The Resona layer inside every backbone: causality (perturbing token t changes no output
// before t), that it is a pure addition to the backbone (same backbone weights; no
// eligible chunk = the plain backbone), gradients reaching its parameters by encoder,
// the lexical search against a brute-force retrieval, and config errors.
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "autograd/grad_mode.h"
#include "models/blocks.h"
#include "models/language_model.h"
#include "models/resona.h"
#include "ops/elementwise.h"
#include "ops/index.h"
#include "ops/matmul.h"
#include "ops/reduce.h"
#include "ops/resona.h"
#include "ops/shape.h"
#include "tests/models/small_config.h"
#include "tests/test_util.h"

namespace resona::testing {
namespace {

using namespace resona::models;

const std::vector<std::string> kBackbones = {"gla", "deltanet", "retnet", "mamba", "mamba2"};

ModelConfig resona_config(const std::string& name, const std::string& encoder, int64_t query_block,
                          int64_t window) {
  ModelConfig c = small_config(name);
  c.resona.layers = {0, 1};
  c.resona.chunk_size = 3;
  c.resona.top_k = 2;
  c.resona.num_heads = 2;
  c.resona.encoder = encoder;
  c.resona.query_block = query_block;
  c.resona.local_window = window;
  c.resona.lexical_dim = 64;
  c.resona.alpha = encoder == "separate" ? "learned" : "fixed";
  c.resona.alpha_per_channel = true;
  return c;
}

// Largest |difference| of two logits tensors [B, T, V] at positions t in [t0, t1).
double max_diff(const Tensor& a, const Tensor& b, int64_t t0, int64_t t1) {
  const int64_t B = a.size(0), T = a.size(1), V = a.size(2);
  const auto x = a.to_vector<float>(), y = b.to_vector<float>();
  double d = 0;
  for (int64_t n = 0; n < B; ++n)
    for (int64_t t = t0; t < t1; ++t)
      for (int64_t v = 0; v < V; ++v) {
        const int64_t i = (n * T + t) * V + v;
        d = std::max(d, std::abs(static_cast<double>(x[i]) - y[i]));
      }
  return d;
}

TEST_CASE("resona: perturbing token t changes no output before t, for every backbone") {
  const int64_t B = 2, T = 17;
  for (const std::string& name : kBackbones) {
    for (const std::string encoder : {"shared", "separate", "lexical"}) {
      for (int64_t block : {1, 4}) {
        const int64_t window = block == 1 ? 0 : 2;
        CAPTURE(name);
        CAPTURE(encoder);
        CAPTURE(block);
        Generator gen(11);
        auto m = build_model(resona_config(name, encoder, block, window), gen);
        NoGradGuard no_grad;
        Tensor ids = gen.randint({B, T}, 0, 37);
        Tensor base = m->forward(ids);
        for (int64_t t : {0, 5, 9, 16}) {
          std::vector<int64_t> changed = ids.to_vector<int64_t>();
          for (int64_t n = 0; n < B; ++n) changed[n * T + t] = (changed[n * T + t] + 7) % 37;
          Tensor other = m->forward(from_vector<int64_t>(changed, {B, T}));
          CAPTURE(t);
          // Positions before t see the same inputs; the backbones' chunked scans may sum in
          // another order inside t's chunk (float32 rounding, ~1e-7 here), while anything
          // leaking through the retrieval would move the logits by ~1e-2.
          CHECK(max_diff(base, other, 0, t) <= 1e-6);
          CHECK(max_diff(base, other, t, t + 1) > 1e-4);
        }
      }
    }
  }
}

TEST_CASE("resona: an addition to the backbone (same backbone weights; no chunk = plain model)") {
  for (const std::string& name : kBackbones) {
    CAPTURE(name);
    ModelConfig plain = small_config(name);
    ModelConfig with = resona_config(name, "shared", 1, 0);
    with.resona.chunk_size = 8;
    Generator g1(5), g2(5);
    auto a = build_model(plain, g1);
    auto b = build_model(with, g2);
    // Every backbone parameter is drawn before the Resona layers', so it is the same.
    NamedTensors pa = a->named_parameters(), pb = b->named_parameters();
    int64_t resona_params = 0;
    for (const auto& [n, p] : pb) {
      if (n.find(".resona.") != std::string::npos) {
        ++resona_params;
        continue;
      }
      REQUIRE(std::any_of(pa.begin(), pa.end(), [&](const auto& e) { return e.first == n; }));
      const Tensor& q =
          std::find_if(pa.begin(), pa.end(), [&](const auto& e) { return e.first == n; })->second;
      CHECK(q.to_vector<float>() == p.to_vector<float>());
    }
    CHECK(resona_params == 2 * 4);  // q, k, v, o projections in layers 0 and 1
    // T = 7 < chunk 8: no chunk is ever complete, the cross-attention has no keys, o = 0.
    NoGradGuard no_grad;
    Tensor ids = g1.randint({2, 7}, 0, 37);
    CHECK(max_diff(a->forward(ids), b->forward(ids), 0, 7) == 0.0);
  }
}

TEST_CASE("resona: parameter names and gradients by encoder") {
  for (const std::string encoder : {"shared", "separate", "lexical"}) {
    CAPTURE(encoder);
    Generator gen(3);
    ModelConfig cfg = resona_config("gla", encoder, 1, 0);
    auto m = build_model(cfg, gen);
    Tensor ids = gen.randint({2, 13}, 0, 37);
    Tensor loss = mean(m->forward(ids) * m->forward(ids));
    loss.backward();
    std::vector<std::string> names;
    for (const auto& [n, p] : m->named_parameters()) {
      if (n.rfind("model.layers.0.resona.", 0) != 0) continue;
      names.push_back(n);
      CAPTURE(n);
      REQUIRE(p.grad().defined());
      double g = 0;
      for (float v : p.grad().to_vector<float>()) g += std::abs(v);
      CHECK(g > 0);  // every Resona parameter learns, the separate search encoders too
    }
    std::vector<std::string> want = {
        "model.layers.0.resona.q_proj.weight", "model.layers.0.resona.k_proj.weight",
        "model.layers.0.resona.v_proj.weight", "model.layers.0.resona.o_proj.weight"};
    if (encoder == "separate") {
      for (const char* n :
           {"model.layers.0.resona.q_search.weight", "model.layers.0.resona.k_search.weight",
            "model.layers.0.resona.alpha_proj.weight", "model.layers.0.resona.alpha_proj.bias"})
        want.push_back(n);
    }
    std::sort(want.begin(), want.end());
    std::sort(names.begin(), names.end());
    CHECK(names == want);
  }
}

// A brute-force retrieval over the lexical features: per query block, every eligible chunk's
// cosine, sorted descending (ties to the smaller id), the first top_k.
TEST_CASE("resona: the lexical search retrieves the chunk holding the query's token") {
  // MQAR-like rows: pairs (key, value) in chunks of 2, then the keys queried again. A key
  // query at an even position sees only complete earlier chunks, and the one sharing its
  // token is the most similar (cosine 1/2 against 0 for the others, barring hash clashes
  // of the few ids used here).
  ResonaSection r;
  r.chunk_size = 2;
  r.top_k = 1;
  r.lexical_dim = 4096;
  r.lexical_ngram = 1;
  const std::vector<int64_t> row = {11, 101, 12, 102, 13, 103, 14, 104, 13, 0, 11, 0, 14, 0, 12, 0};
  Tensor ids = from_vector<int64_t>(row, {1, 16});
  const std::vector<int32_t> got = lexical_search(ids, r).to_vector<int32_t>();
  REQUIRE(got.size() == 16);
  CHECK(got[0] == -1);  // position 0: no complete chunk yet
  CHECK(got[8] == 2);   // key 13 -> chunk 2 (13, 103)
  CHECK(got[10] == 0);  // key 11 -> chunk 0
  CHECK(got[12] == 3);  // key 14 -> chunk 3
  CHECK(got[14] == 1);  // key 12 -> chunk 1
}

// lexical_search runs on sparse counts; it must retrieve what the dense features
// (ops/resona.h lexical_features + chunk_search) retrieve.
TEST_CASE("resona: the sparse lexical search equals chunk_search over the dense features") {
  Generator gen(17);
  for (int64_t block : {1, 4}) {
    for (int64_t ngram : {1, 2}) {
      ResonaSection r;
      r.chunk_size = 3;
      r.top_k = 3;
      r.query_block = block;
      r.lexical_ngram = ngram;
      r.lexical_dim = 512;
      CAPTURE(block);
      CAPTURE(ngram);
      Tensor ids = gen.randint({3, 41}, 0, 12);  // few ids: shared tokens, ties and zeros
      Tensor q = lexical_features(ids, r.lexical_dim, r.lexical_ngram, 1);
      Tensor ch = chunk_means(lexical_features(ids, r.lexical_dim, r.lexical_ngram, r.chunk_size),
                              r.chunk_size);
      const std::vector<int32_t> dense =
          chunk_search(q, ch, {.chunk = 3, .top_k = 3, .query_block = block}).to_vector<int32_t>();
      CHECK(lexical_search(ids, r).to_vector<int32_t>() == dense);
    }
  }
}

// mean over heads of x W^T: [B, T, D] -> [B, T, dh], W [H dh, D].
Tensor head_mean(const Tensor& x, const Tensor& w, int64_t heads) {
  Tensor y = matmul(x, w.transpose(0, 1));
  return mean(y.reshape({x.size(0), x.size(1), heads, w.size(0) / heads}), {2});
}

TEST_CASE("resona: the shared encoder searches with the key projection on both sides") {
  ModelConfig cfg = resona_config("gla", "shared", 1, 0);
  for (int64_t block : {1, 4}) {
    CAPTURE(block);
    cfg.resona.query_block = block;
    Generator gen(11);
    ResonaLayer layer(cfg, gen);
    Tensor x = gen.uniform({2, 17, 32}, -1, 1), e = gen.uniform({2, 17, 32}, -1, 1);
    const ResonaInputs in{.embeddings = e, .ids = Tensor(), .chunk_ids = Tensor()};
    const std::vector<int32_t> got = layer.search(x, in).to_vector<int32_t>();
    const Tensor wk = layer.parameter("k_proj.weight"), wq = layer.parameter("q_proj.weight");
    const ChunkSearchOptions so{.chunk = 3, .top_k = 2, .query_block = block};
    Tensor chunks = chunk_means(head_mean(e, wk, 2), 3);
    CHECK(got == chunk_search(head_mean(x, wk, 2), chunks, so).to_vector<int32_t>());
    // Not the query projection (the two differ on these inputs).
    CHECK(got != chunk_search(head_mean(x, wq, 2), chunks, so).to_vector<int32_t>());
  }
}

TEST_CASE(
    "resona: untrained, the shared search at layer 0 finds the chunk with the query's token") {
  // Chunks of 2, top-1; token ids[6] (chunk 3 = positions 6, 7) comes again at position
  // 20, the first of its chunk (so that its own chunk is not yet complete). The layer's
  // input at layer 0 is the normed embedding, a per-row rescaling of e that no cosine
  // sees, so x = e here.
  for (uint64_t seed : {1, 2, 3, 4, 5}) {
    CAPTURE(seed);
    ModelConfig cfg = small_config("gla");
    cfg.vocab_size = 512;
    cfg.hidden_size = 64;
    cfg.resona.layers = {0};
    cfg.resona.chunk_size = 2;
    cfg.resona.top_k = 1;
    cfg.resona.num_heads = 1;
    Generator gen(seed);
    auto model = build_model(cfg, gen);
    const auto& layer = dynamic_cast<const CausalLM&>(*model).backbone().layers()[0];
    REQUIRE(layer.resona() != nullptr);
    std::vector<int64_t> tokens(32);
    for (int64_t t = 0; t < 32; ++t) tokens[t] = 10 + 15 * t;  // distinct
    tokens[20] = tokens[6];
    Tensor ids = from_vector(tokens, {1, 32});
    NoGradGuard no_grad;
    Tensor e = embedding(model->parameter("model.embeddings.weight"), ids);
    const ResonaInputs in{.embeddings = e, .ids = ids, .chunk_ids = Tensor()};
    const std::vector<int32_t> got = layer.resona()->search(e, in).to_vector<int32_t>();
    CHECK(got[20] == 3);
  }
}

TEST_CASE("resona: config errors name the key") {
  Generator gen(1);
  ModelConfig c = resona_config("gla", "shared", 1, 0);
  c.resona.layers = {0, 2};
  CHECK_THROWS_WITH_AS(build_model(c, gen), doctest::Contains("model.resona.layers: layer 2"),
                       Error);
  c.resona.layers = {1, 1};
  CHECK_THROWS_WITH_AS(build_model(c, gen), doctest::Contains("listed twice"), Error);
  c.resona.layers = {0};
  c.resona.num_heads = 5;  // does not divide 32
  CHECK_THROWS_WITH_AS(build_model(c, gen), doctest::Contains("model.resona.num_heads"), Error);
  ModelConfig t;
  t.name = "tiny";
  t.hidden_size = 32;
  t.num_layers = 2;
  t.vocab_size = 37;
  t.resona.layers = {0};
  CHECK_THROWS_WITH_AS(build_model(t, gen), doctest::Contains("tiny model has no Resona"), Error);
}

}  // namespace
}  // namespace resona::testing
