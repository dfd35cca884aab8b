// Resona retrieval ops (ops/resona.h) on the CPU:
//   chunk_search against a brute-force float64 search written here (random inputs, exact
//     ties, zero vectors, fewer than k eligible, b > 1, T not a multiple of c, T < c);
//   chunk_attention against a float64 dense reference that builds the T x T mask
//     explicitly (window 0 and > 0 overlapping retrieved chunks, b = 1 and 4, empty key
//     sets, -1 slots between ids, bias or not), float32 against it, finite differences in
//     float64 for q, k, v and bias, causality, and the errors for ineligible ids;
//   lexical_features: pinned hash values and the segment rule.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "ops/elementwise.h"
#include "ops/reduce.h"
#include "ops/resona.h"
#include "tests/test_util.h"

namespace resona::testing {
namespace {

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// ---------------------------------------------------------------- chunk_search reference

// For every (n, block): the eligible chunks by the definition ((j+1) c - 1 <= q b, j <
// floor(T / c)), each scored by x.y / (|x| |y|) in float64 (0 for a zero vector), sorted
// by descending score then ascending id, padded with -1 to k.
std::vector<int32_t> reference_search(const Tensor& query, const Tensor& chunk_emb, int64_t c,
                                      int64_t k, int64_t b) {
  const int64_t B = query.shape()[0], T = query.shape()[1], E = query.shape()[2];
  const int64_t NC = T / c, NQ = ceil_div(T, b);
  const std::vector<double> qv = query.to_vector<double>(), ev = chunk_emb.to_vector<double>();
  std::vector<int32_t> out;
  for (int64_t n = 0; n < B; ++n) {
    for (int64_t q = 0; q < NQ; ++q) {
      const int64_t p0 = q * b;
      std::vector<std::pair<double, int64_t>> cand;
      for (int64_t j = 0; j < NC; ++j) {
        if ((j + 1) * c - 1 > p0) continue;
        double dot = 0, nq = 0, ne = 0;
        for (int64_t d = 0; d < E; ++d) {
          const double x = qv.at((n * T + p0) * E + d), y = ev.at((n * NC + j) * E + d);
          dot += x * y;
          nq += x * x;
          ne += y * y;
        }
        cand.push_back({nq > 0 && ne > 0 ? dot / (std::sqrt(nq) * std::sqrt(ne)) : 0.0, j});
      }
      std::sort(cand.begin(), cand.end(), [](const auto& x, const auto& y) {
        return x.first > y.first || (x.first == y.first && x.second < y.second);
      });
      for (int64_t s = 0; s < k; ++s) {
        out.push_back(s < static_cast<int64_t>(cand.size()) ? static_cast<int32_t>(cand[s].second)
                                                            : -1);
      }
    }
  }
  return out;
}

struct SearchCase {
  int64_t B, T, E, c, k, b;
};

std::string search_name(const SearchCase& s) {
  return "chunk_search(B=" + std::to_string(s.B) + ",T=" + std::to_string(s.T) +
         ",E=" + std::to_string(s.E) + ",c=" + std::to_string(s.c) + ",k=" + std::to_string(s.k) +
         ",b=" + std::to_string(s.b) + ")";
}

// ---------------------------------------------------------------- chunk_attention reference

struct AttnCase {
  int64_t B, T, H, Dk, Dv, c, b, w, kk;
  bool bias;
  double empty_rate = 0.3;  // chance that an idx slot is -1 (anywhere in the row)
};

std::string attn_name(const AttnCase& a) {
  return "chunk_attention(B=" + std::to_string(a.B) + ",T=" + std::to_string(a.T) +
         ",H=" + std::to_string(a.H) + ",Dk=" + std::to_string(a.Dk) +
         ",Dv=" + std::to_string(a.Dv) + ",c=" + std::to_string(a.c) + ",b=" + std::to_string(a.b) +
         ",w=" + std::to_string(a.w) + ",kk=" + std::to_string(a.kk) +
         ",bias=" + (a.bias ? "yes" : "no") + ")";
}

// Random ids valid for every block: each slot -1 with probability empty_rate, else a
// distinct eligible chunk (favouring the chunks near the block, so that windows overlap
// retrieved chunks), in random slot order.
Tensor random_ids(Generator& gen, const AttnCase& a) {
  const int64_t NQ = ceil_div(a.T, a.b), NC = a.T / a.c;
  std::vector<int32_t> ids;
  for (int64_t n = 0; n < a.B; ++n) {
    for (int64_t q = 0; q < NQ; ++q) {
      const int64_t m = std::min(NC, (q * a.b + 1) / a.c);
      std::vector<int64_t> pool;
      for (int64_t j = m - 1; j >= 0; --j) pool.push_back(j);
      for (int64_t s = 0; s < a.kk; ++s) {
        if (pool.empty() || gen.next_double() < a.empty_rate) {
          ids.push_back(-1);
          continue;
        }
        // The most recent chunk half of the time, else any remaining one.
        const int64_t at = gen.next_double() < 0.5 ? 0 : gen.next_int(0, pool.size());
        ids.push_back(static_cast<int32_t>(pool[at]));
        pool.erase(pool.begin() + at);
      }
    }
  }
  return from_vector(ids, {a.B, NQ, a.kk});
}

// o by the definition in ops/resona.h with the mask built explicitly: allowed[i][p] and
// the bias slot of p, over all T x T pairs, in float64.
std::vector<double> reference_attention(const AttnCase& a, const Tensor& q, const Tensor& k,
                                        const Tensor& v, const Tensor& idx, const Tensor& bias,
                                        double scale) {
  const int64_t T = a.T, H = a.H, Dk = a.Dk, Dv = a.Dv, NQ = ceil_div(a.T, a.b);
  const std::vector<double> qv = q.to_vector<double>(), kv = k.to_vector<double>(),
                            vv = v.to_vector<double>();
  const std::vector<int64_t> iv = idx.to_vector<int64_t>();
  const std::vector<double> bv = bias.defined() ? bias.to_vector<double>() : std::vector<double>();
  std::vector<double> o(a.B * T * H * Dv, 0.0);
  for (int64_t n = 0; n < a.B; ++n) {
    for (int64_t i = 0; i < T; ++i) {
      const int64_t blk = i / a.b;
      std::vector<bool> allowed(T, false);
      std::vector<int64_t> slot(T, -1);
      for (int64_t s = 0; s < a.kk; ++s) {
        const int64_t j = iv.at((n * NQ + blk) * a.kk + s);
        if (j < 0) continue;
        for (int64_t r = 0; r < a.c; ++r) {
          allowed.at(j * a.c + r) = true;
          slot.at(j * a.c + r) = s;
        }
      }
      for (int64_t p = 0; p < T; ++p) {
        if (p <= i && p > i - a.w) allowed[p] = true;
      }
      for (int64_t h = 0; h < H; ++h) {
        std::vector<double> logit(T, -std::numeric_limits<double>::infinity());
        double mx = -std::numeric_limits<double>::infinity();
        for (int64_t p = 0; p < T; ++p) {
          if (!allowed[p]) continue;
          double l = 0;
          for (int64_t d = 0; d < Dk; ++d) {
            l += qv.at(((n * T + i) * H + h) * Dk + d) * kv.at(((n * T + p) * H + h) * Dk + d);
          }
          l *= scale;
          if (!bv.empty() && slot[p] >= 0) l += bv.at((n * NQ + blk) * a.kk + slot[p]);
          logit[p] = l;
          mx = std::max(mx, l);
        }
        if (mx == -std::numeric_limits<double>::infinity()) continue;  // no keys: o = 0
        double sum = 0;
        for (int64_t p = 0; p < T; ++p) sum += allowed[p] ? std::exp(logit[p] - mx) : 0.0;
        for (int64_t p = 0; p < T; ++p) {
          if (!allowed[p]) continue;
          const double w = std::exp(logit[p] - mx) / sum;
          for (int64_t d = 0; d < Dv; ++d) {
            o.at(((n * T + i) * H + h) * Dv + d) += w * vv.at(((n * T + p) * H + h) * Dv + d);
          }
        }
      }
    }
  }
  return o;
}

const std::vector<AttnCase> kAttnCases = {
    // B, T, H, Dk, Dv, c, b, w, kk, bias
    {2, 13, 2, 3, 2, 2, 1, 0, 2, true},       // retrieval only; block 0 has no keys
    {1, 13, 2, 3, 4, 2, 1, 3, 2, true},       // window overlapping retrieved chunks
    {2, 17, 1, 4, 3, 3, 4, 2, 3, false},      // b = 4, T not a multiple of c or b
    {1, 16, 2, 2, 2, 4, 4, 0, 1, true},       // b = 4 = c, kk = 1
    {1, 11, 1, 3, 2, 2, 1, 5, 3, true, 0.0},  // every eligible slot filled
    {2, 9, 1, 2, 3, 1, 2, 1, 2, true},        // chunk 1
    {1, 5, 2, 3, 2, 8, 1, 2, 2, true},        // T < c: no chunks, window only
    {1, 6, 1, 2, 2, 2, 1, 0, 2, false, 1.0},  // every slot empty: o = 0 everywhere
};

}  // namespace

// ---------------------------------------------------------------- chunk_search

TEST_CASE("chunk_search against a brute-force float64 search (random inputs, float64/float32)") {
  const SearchCase cases[] = {
      {2, 37, 5, 4, 3, 1},   // T not a multiple of c; early blocks with fewer than k
      {1, 40, 3, 2, 5, 4},   // b = 4
      {3, 29, 4, 3, 2, 3},   // b = 3, T not a multiple of b
      {1, 9, 2, 1, 4, 1},    // c = 1
      {2, 64, 8, 8, 1, 16},  // top-1, large blocks
      {1, 5, 3, 8, 2, 1},    // T < c: no chunk at all
  };
  uint64_t seed = 100;
  for (const SearchCase& s : cases) {
    INFO(search_name(s));
    Generator gen(seed++);
    Tensor query = gen.uniform({s.B, s.T, s.E}, -1, 1, DType::kFloat64);
    Tensor chunks = gen.uniform({s.B, s.T / s.c, s.E}, -1, 1, DType::kFloat64);
    const std::vector<int32_t> want = reference_search(query, chunks, s.c, s.k, s.b);
    const ChunkSearchOptions opt{.chunk = s.c, .top_k = s.k, .query_block = s.b};
    Tensor got = chunk_search(query, chunks, opt);
    CHECK(got.dtype() == DType::kInt32);
    CHECK(got.shape() == Shape{s.B, ceil_div(s.T, s.b), s.k});
    CHECK(got.to_vector<int32_t>() == want);
    // float32 inputs (the scores of random vectors are far apart compared with float32
    // rounding, so the same ids come out).
    CHECK(chunk_search(query.to(DType::kFloat32), chunks.to(DType::kFloat32), opt)
              .to_vector<int32_t>() == want);
    // Not normalised, and strided: scaling a row changes nothing, nor do the strides.
    Tensor q_t = (query * 3.0).transpose(1, 2).contiguous().transpose(1, 2);
    CHECK(!q_t.is_contiguous());
    CHECK(chunk_search(q_t, chunks * 0.25, opt).to_vector<int32_t>() == want);
  }
}

TEST_CASE("chunk_search: ties go to the smaller id; zero vectors score 0; inputs needing grad") {
  // E = 2, c = 2, T = 12: chunks 0..5. Chunks 1, 4 and 5 are the query direction exactly
  // (identical rows, so their scores are bit-identical ties); chunk 2 is zero.
  const std::vector<double> ch = {1, 0, 0.6, 0.8, 0, 0, -1, 0, 0.6, 0.8, 0.6, 0.8};
  Tensor chunks = values(ch, {1, 6, 2});
  std::vector<double> qv;
  for (int64_t t = 0; t < 12; ++t) {
    qv.push_back(t == 4 ? 0.0 : 0.6);  // position 4: a zero query, every chunk scores 0
    qv.push_back(t == 4 ? 0.0 : 0.8);
  }
  Tensor query = values(qv, {1, 12, 2}, /*grad=*/true);
  Tensor got = chunk_search(query, chunks, {.chunk = 2, .top_k = 4, .query_block = 1});
  const std::vector<int32_t> ids = got.to_vector<int32_t>();
  auto row = [&](int64_t t) {
    return std::vector<int32_t>(ids.begin() + t * 4, ids.begin() + t * 4 + 4);
  };
  CHECK(row(0) == std::vector<int32_t>{-1, -1, -1, -1});  // nothing eligible at position 0
  CHECK(row(1) == std::vector<int32_t>{0, -1, -1, -1});
  CHECK(row(3) == std::vector<int32_t>{1, 0, -1, -1});  // scores 0.6, 1
  CHECK(row(4) == std::vector<int32_t>{0, 1, -1, -1});  // zero query: a tie at 0
  // Position 9: chunks 0..4 with scores 0.6, 1, 0, -0.6, 1: the tie 1 vs 4 goes to 1.
  CHECK(row(9) == std::vector<int32_t>{1, 4, 0, 2});
  // Position 11: chunk 5 joins the tie after 1 and 4.
  CHECK(row(11) == std::vector<int32_t>{1, 4, 5, 0});
  CHECK_FALSE(got.requires_grad());
  // All chunks identical: every rank is a tie, resolved in id order. Block 0 (b = 11)
  // starts at 0 (nothing eligible), block 1 at 11 (all six chunks).
  Tensor same = values(std::vector<double>(6 * 2, 0.5), {1, 6, 2});
  CHECK(
      chunk_search(query, same, {.chunk = 2, .top_k = 3, .query_block = 11}).to_vector<int32_t>() ==
      std::vector<int32_t>{-1, -1, -1, 0, 1, 2});
}

TEST_CASE("chunk_search rejects bad shapes and options, naming them") {
  Tensor q = zeros({1, 8, 3}), e = zeros({1, 4, 3});
  CHECK_THROWS_WITH_AS(chunk_search(q, zeros({1, 3, 3}), {.chunk = 2}),
                       doctest::Contains("chunk_emb must be [B, floor(T / chunk), E]"), Error);
  CHECK_THROWS_WITH_AS(chunk_search(q, e, {.chunk = 2, .top_k = 0}),
                       doctest::Contains("top_k must be >= 1"), Error);
  CHECK_THROWS_WITH_AS(chunk_search(q, e, {.chunk = 0}), doctest::Contains("chunk must be >= 1"),
                       Error);
  CHECK_THROWS_WITH_AS(chunk_search(q, e.to(DType::kFloat64), {.chunk = 2}),
                       doctest::Contains("dtype mismatch"), Error);
}

// ---------------------------------------------------------------- chunk_attention

RESONA_OP_TEST(chunk_attention, values,
               "chunk_attention vs a dense float64 reference with an explicit T x T mask "
               "(w = 0 and > 0, b = 1 and 4, c = 1..8, empty key sets, bias or not); float32") {
  uint64_t seed = 200;
  for (const AttnCase& a : kAttnCases) {
    INFO(attn_name(a));
    Generator gen(seed++);
    Tensor q = gen.uniform({a.B, a.T, a.H, a.Dk}, -1, 1, DType::kFloat64);
    Tensor k = gen.uniform({a.B, a.T, a.H, a.Dk}, -1, 1, DType::kFloat64);
    Tensor v = gen.uniform({a.B, a.T, a.H, a.Dv}, -1, 1, DType::kFloat64);
    Tensor idx = random_ids(gen, a);
    Tensor bias =
        a.bias ? gen.uniform({a.B, ceil_div(a.T, a.b), a.kk}, -1, 1, DType::kFloat64) : Tensor();
    const double scale = a.Dk == 3 ? 0.7 : 0;  // explicit scale and the Dk^-1/2 default
    const ChunkAttentionOptions opt{
        .chunk = a.c, .query_block = a.b, .local_window = a.w, .scale = scale};
    const std::vector<double> want =
        reference_attention(a, q, k, v, idx, bias, scale != 0 ? scale : 1 / std::sqrt(a.Dk));
    Tensor o = chunk_attention(q, k, v, idx, bias, opt);
    REQUIRE(o.shape() == Shape{a.B, a.T, a.H, a.Dv});
    // Sums of at most T terms of magnitude <= 1 in another order: a few float64 ulps.
    check_close(o, want, 1e-13, 1e-12);
    // idx as int64 and q, k, v as strided views give the same.
    Tensor q_t = q.transpose(1, 2).contiguous().transpose(1, 2);
    check_close(chunk_attention(q_t, k, v, idx.to(DType::kInt64), bias, opt), want, 1e-13, 1e-12);
    // float32: logits of |.| <= Dk + 1 and outputs <= 1, each with a relative error of a
    // few float32 ulps (6e-8) per operation; 2e-5 leaves a wide margin and is far below
    // any wrong key or weight.
    Tensor o32 =
        chunk_attention(q.to(DType::kFloat32), k.to(DType::kFloat32), v.to(DType::kFloat32), idx,
                        a.bias ? bias.to(DType::kFloat32) : Tensor(), opt);
    CHECK(o32.dtype() == DType::kFloat32);
    check_close(o32, want, 2e-5, 2e-5);
  }
}

RESONA_OP_TEST(chunk_attention, values,
               "chunk_attention(T=4,c=2,w=1) by hand, with its gradients") {
  // B = H = 1, Dk = Dv = 1, scale 1, q = [1, 1, 1, 1], k = [0, ln 2, 0, 0] (per position),
  // v = [1, 2, 3, 4], idx for positions 2 and 3: chunk 0 (slot 0) with bias [.., 0], and
  // none for positions 0, 1. Window w = 1 (the position itself).
  //   i = 0, 1: keys {i}: o = v_i = 1, 2.
  //   i = 2: keys {0, 1} (retrieved) U {2}: logits 0, ln 2, 0 -> weights 1/4, 1/2, 1/4:
  //          o = 1/4 + 1 + 3/4 = 2.
  //   i = 3: keys {0, 1, 3}: o = 1/4 + 1 + 1 = 2.25.
  const double ln2 = std::log(2.0);
  Tensor q = values({1, 1, 1, 1}, {1, 4, 1, 1}, true);
  Tensor k = values({0, ln2, 0, 0}, {1, 4, 1, 1}, true);
  Tensor v = values({1, 2, 3, 4}, {1, 4, 1, 1}, true);
  Tensor idx = from_vector(std::vector<int32_t>{-1, -1, 0, 0}, {1, 4, 1});
  Tensor bias = values({5, 5, 0, 0}, {1, 4, 1}, true);  // rows 0, 1 have no retrieved keys
  const ChunkAttentionOptions opt{.chunk = 2, .query_block = 1, .local_window = 1, .scale = 1};
  Tensor o = chunk_attention(q, k, v, idx, bias, opt);
  check_close(o, {1, 2, 2, 2.25}, 1e-14);
  // d_o = [0, 0, 1, 0]: only i = 2. P = (1/4, 1/2, 1/4) over keys (0, 1, 2), dP = v =
  // (1, 2, 3), D = 2, dS = P (dP - D) = (-1/4, 0, 1/4).
  //   d_v[0, 1, 2] = P;  d_k[p] = q_2 dS_p = (-1/4, 0, 1/4);  d_q[2] = sum dS k = 0 * ... =
  //   -1/4 * 0 + 0 * ln2 + 1/4 * 0 = 0;  d_bias[2] = dS_0 + dS_1 = -1/4 (slot 0 keys only).
  o.backward(values({0, 0, 1, 0}, {1, 4, 1, 1}));
  check_close(v.grad(), {0.25, 0.5, 0.25, 0}, 1e-14);
  check_close(k.grad(), {-0.25, 0, 0.25, 0}, 1e-14);
  check_close(q.grad(), {0, 0, 0, 0}, 1e-14);
  check_close(bias.grad(), {0, 0, -0.25, 0}, 1e-14);
}

RESONA_OP_TEST(chunk_attention, gradcheck,
               "chunk_attention d_q, d_k, d_v, d_bias (w = 0 and > 0, b = 1 and 4, empty key "
               "sets, T < c, subsets of inputs)") {
  uint64_t seed = 300;
  for (const AttnCase& a : kAttnCases) {
    INFO(attn_name(a));
    Generator gen(seed++);
    Tensor q = leaf(gen, {a.B, a.T, a.H, a.Dk});
    Tensor k = leaf(gen, {a.B, a.T, a.H, a.Dk});
    Tensor v = leaf(gen, {a.B, a.T, a.H, a.Dv});
    Tensor idx = random_ids(gen, a);
    const ChunkAttentionOptions opt{.chunk = a.c, .query_block = a.b, .local_window = a.w};
    if (a.bias) {
      Tensor bias = leaf(gen, {a.B, ceil_div(a.T, a.b), a.kk});
      check_gradients(
          [&](const std::vector<Tensor>& x) {
            return chunk_attention(x[0], x[1], x[2], idx, x[3], opt);
          },
          {q, k, v, bias});
    } else {
      check_gradients(
          [&](const std::vector<Tensor>& x) {
            return chunk_attention(x[0], x[1], x[2], idx, Tensor(), opt);
          },
          {q, k, v});
    }
  }
  // Only some inputs need grad (each gradient is computed on its own path), and strided q.
  Generator gen(399);
  const AttnCase a{1, 10, 2, 3, 2, 2, 2, 2, 2, true};
  Tensor idx = random_ids(gen, a);
  Tensor q_thd = leaf(gen, {1, 2, 10, 3});  // [B, H, T, Dk], viewed as [B, T, H, Dk]
  Tensor k = gen.uniform({1, 10, 2, 3}, -1, 1, DType::kFloat64);
  Tensor v = leaf(gen, {1, 10, 2, 2});
  Tensor bias = leaf(gen, {1, 5, 2});
  const ChunkAttentionOptions opt{.chunk = 2, .query_block = 2, .local_window = 2};
  check_gradients(
      [&](const std::vector<Tensor>& x) {
        return chunk_attention(x[0].transpose(1, 2), k, x[1], idx, x[2], opt);
      },
      {q_thd, v, bias});
  Tensor k_leaf = leaf(gen, {1, 10, 2, 3});
  check_gradients(
      [&](const std::vector<Tensor>& x) {
        return chunk_attention(q_thd.detach().transpose(1, 2), x[0], v.detach(), idx, Tensor(),
                               opt);
      },
      {k_leaf});
}

TEST_CASE("chunk_attention is causal: changing k, v at position t changes no output before t") {
  const AttnCase a{1, 24, 2, 3, 3, 2, 4, 3, 3, true, 0.0};
  Generator gen(500);
  Tensor q = gen.uniform({1, 24, 2, 3}, -1, 1, DType::kFloat64);
  Tensor k = gen.uniform({1, 24, 2, 3}, -1, 1, DType::kFloat64);
  Tensor v = gen.uniform({1, 24, 2, 3}, -1, 1, DType::kFloat64);
  Tensor idx = random_ids(gen, a);
  Tensor bias = gen.uniform({1, 6, 3}, -1, 1, DType::kFloat64);
  const ChunkAttentionOptions opt{.chunk = 2, .query_block = 4, .local_window = 3};
  const std::vector<double> base = chunk_attention(q, k, v, idx, bias, opt).to_vector<double>();
  for (int64_t t : {0, 5, 13, 23}) {
    INFO("perturbed position " << t);
    Tensor k2 = k.clone(), v2 = v.clone();
    k2.slice(1, t, t + 1).fill_(3.0);
    v2.slice(1, t, t + 1).fill_(-2.0);
    const std::vector<double> o = chunk_attention(q, k2, v2, idx, bias, opt).to_vector<double>();
    const size_t before = static_cast<size_t>(t * 2 * 3);  // outputs of positions < t
    CHECK(std::equal(o.begin(), o.begin() + before, base.begin()));
    CHECK(!std::equal(o.begin() + before, o.end(), base.begin() + before));
  }
}

TEST_CASE("chunk_attention refuses ineligible, out-of-range and repeated ids, naming the block") {
  Tensor q = zeros({1, 8, 1, 2}), v = zeros({1, 8, 1, 2});
  const ChunkAttentionOptions opt{.chunk = 2, .query_block = 2};
  // NQ = 4 blocks starting at 0, 2, 4, 6: block q may use ids 0 .. floor((2q+1)/2) - 1.
  auto ids = [](std::vector<int32_t> v) { return from_vector(v, {1, 4, 2}); };
  CHECK_NOTHROW(chunk_attention(q, q, v, ids({-1, -1, 0, -1, -1, 1, 2, 0}), Tensor(), opt));
  // Block 0 starts at position 0: chunk 0 ends at position 1 -> not eligible.
  CHECK_THROWS_WITH_AS(chunk_attention(q, q, v, ids({0, -1, 0, -1, 1, 0, 2, 0}), Tensor(), opt),
                       doctest::Contains("chunk id 0 for sequence 0, query block 0, slot 0"),
                       Error);
  // Block 1 starts at 2: chunk 1 (positions 2, 3) is not eligible yet.
  CHECK_THROWS_WITH_AS(chunk_attention(q, q, v, ids({-1, -1, 0, 1, 1, 0, 2, 0}), Tensor(), opt),
                       doctest::Contains("chunk id 1 for sequence 0, query block 1, slot 1"),
                       Error);
  // Ids past the last chunk, and negative ids other than -1.
  CHECK_THROWS_WITH_AS(chunk_attention(q, q, v, ids({-1, -1, 0, -1, 1, 0, 4, 0}), Tensor(), opt),
                       doctest::Contains("chunk id 4 for sequence 0, query block 3, slot 0"),
                       Error);
  CHECK_THROWS_WITH_AS(chunk_attention(q, q, v, ids({-2, -1, 0, -1, 1, 0, 2, 0}), Tensor(), opt),
                       doctest::Contains("chunk id -2"), Error);
  CHECK_THROWS_WITH_AS(chunk_attention(q, q, v, ids({-1, -1, 0, -1, 1, 1, 2, 0}), Tensor(), opt),
                       doctest::Contains("chunk id 1 twice for sequence 0, query block 2"), Error);
  // Shapes.
  CHECK_THROWS_WITH_AS(
      chunk_attention(q, q, v, from_vector(std::vector<int32_t>(6, -1), {1, 3, 2}), Tensor(), opt),
      doctest::Contains("idx must be [B, NQ, kk] = [1, 4, kk]"), Error);
  CHECK_THROWS_WITH_AS(
      chunk_attention(q, q, v, ids(std::vector<int32_t>(8, -1)), zeros({1, 4, 3}), opt),
      doctest::Contains("bias must be [B, NQ, kk]"), Error);
  CHECK_THROWS_WITH_AS(
      chunk_attention(q, zeros({1, 8, 1, 3}), v, ids(std::vector<int32_t>(8, -1)), Tensor(), opt),
      doctest::Contains("must have q's shape"), Error);
  CHECK_THROWS_WITH_AS(chunk_attention(q, q, v, ids(std::vector<int32_t>(8, -1)), Tensor(),
                                       {.chunk = 2, .query_block = 2, .local_window = -1}),
                       doctest::Contains("local_window must be >= 0"), Error);
}

// ---------------------------------------------------------------- lexical_features

TEST_CASE("lexical_hash: pinned values (offline masks depend on them)") {
  // data/hash.h's hash64 of the tokens as little-endian int64 words, computed with
  // data/hash.cc when these pins were written.
  struct Pin {
    std::vector<int64_t> gram;
    uint64_t hash;
  };
  const Pin pins[] = {
      {{0}, 0x4f57a79a2e60d7afull},    {{1}, 0x9742bac22d3c8497ull},
      {{5, 7}, 0x2805ca0413d9306full}, {{1, 2, 3}, 0x7948815f7537c386ull},
      {{-1}, 0x14b24dc0e0e6a77dull},   {{31999, 2, 17, 4}, 0x6c5c268f2b222a84ull},
  };
  for (const Pin& p : pins) {
    CHECK(lexical_hash(p.gram.data(), static_cast<int64_t>(p.gram.size())) == p.hash);
  }
}

TEST_CASE("lexical_features: n-grams ending at t, clipped at the segment start (or at 0)") {
  // tokens 3 1 4 1 5 9 2 (B = 1) and a second sequence with its own values.
  const std::vector<int64_t> tok = {3, 1, 4, 1, 5, 9, 2, 2, 7, 1, 8, 2, 8, 1};
  Tensor tokens = from_vector(tok, {2, 7});
  const int64_t E = 1 << 16, N = 3;
  for (int64_t segment : {1, 3, 7}) {
    INFO("segment " << segment);
    Tensor f = lexical_features(tokens.to(DType::kInt32), E, N, segment);
    REQUIRE(f.shape() == Shape{2, 7, E});
    CHECK(f.dtype() == DType::kFloat32);
    const std::vector<float> fv = f.to_vector<float>();
    std::vector<float> want(2 * 7 * E, 0.0f);
    for (int64_t n = 0; n < 2; ++n) {
      for (int64_t t = 0; t < 7; ++t) {
        const int64_t start = segment == 1 ? 0 : t - t % segment;
        for (int64_t g = 1; g <= N; ++g) {
          if (t - g + 1 < start) continue;
          const uint64_t h = lexical_hash(tok.data() + n * 7 + t - g + 1, g);
          want[(n * 7 + t) * E + static_cast<int64_t>(h % E)] += 1.0f;
        }
      }
    }
    CHECK(fv == want);
    // Row sums: the number of n-grams, min(N, t - start + 1).
    Tensor counts = sum(f, {2});
    std::vector<double> want_counts;
    for (int64_t n = 0; n < 2; ++n) {
      for (int64_t t = 0; t < 7; ++t) {
        const int64_t start = segment == 1 ? 0 : t - t % segment;
        want_counts.push_back(static_cast<double>(std::min(N, t - start + 1)));
      }
    }
    check_close(counts, want_counts);
  }
  // A chunk's features depend only on its own tokens: changing token 2 (chunk 0 of c = 3)
  // leaves positions 3.. of the chunk features unchanged, but not the query features of
  // positions 3 and 4 (whose bigrams and trigrams reach back to it).
  std::vector<int64_t> tok2 = tok;
  tok2[2] = 100;
  Tensor tokens2 = from_vector(tok2, {2, 7});
  auto rows = [&](const Tensor& f, int64_t t0, int64_t t1) {
    return f.slice(1, t0, t1).contiguous().to_vector<float>();
  };
  Tensor c1 = lexical_features(tokens, 64, 3, 3), c2 = lexical_features(tokens2, 64, 3, 3);
  CHECK(rows(c1, 3, 7) == rows(c2, 3, 7));
  CHECK(rows(c1, 0, 2) == rows(c2, 0, 2));
  CHECK(rows(c1, 2, 3) != rows(c2, 2, 3));
  Tensor q1 = lexical_features(tokens, 64, 3, 1), q2 = lexical_features(tokens2, 64, 3, 1);
  CHECK(rows(q1, 3, 4) != rows(q2, 3, 4));
  CHECK(rows(q1, 4, 5) != rows(q2, 4, 5));
  CHECK(rows(q1, 5, 7) == rows(q2, 5, 7));
  // Errors.
  CHECK_THROWS_WITH_AS(lexical_features(tokens.to(DType::kFloat32), 8, 2, 1),
                       doctest::Contains("tokens must be int32 or int64"), Error);
  CHECK_THROWS_WITH_AS(lexical_features(tokens, 0, 2, 1), doctest::Contains("dim must be >= 1"),
                       Error);
  CHECK_THROWS_WITH_AS(lexical_features(tokens, 8, 0, 1),
                       doctest::Contains("max_ngram must be >= 1"), Error);
}

}  // namespace resona::testing
