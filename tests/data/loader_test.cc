// DataLoader: packing (concat / padded), shuffling by seed, rank slices, and exact
// resume from a saved position.
#include "data/loader.h"

#include <algorithm>
#include <set>

#include "data/prepare.h"
#include "data/wikitext.h"
#include "tests/data/data_paths.h"

namespace resona::testing {
namespace {

using namespace resona::data;

constexpr int kDocs = 60;
constexpr int32_t kEos = 2;

// Document d: ids 3 + 64 d + i for i < len(d), so that every token names its document
// and position; lengths 1..50.
int doc_len(int d) { return 1 + (d * 37) % 50; }
int32_t doc_token(int d, int i) { return 3 + 64 * d + i; }
int token_doc(int32_t t) { return (t - 3) / 64; }

std::shared_ptr<const TokenDataset> synthetic(const std::string& name,
                                              uint64_t tokenizer_hash = 7) {
  const std::string dir = fresh_temp_dir(name);
  ShardMeta m;
  m.vocab_size = 32000;
  m.eos_id = kEos;
  m.tokenizer_hash = tokenizer_hash;
  DatasetIndex x;
  x.tokenizer_hash = tokenizer_hash;
  x.vocab_size = 32000;
  x.bos_id = 1;
  x.eos_id = kEos;
  for (int s = 0; s < 2; ++s) {
    std::vector<int32_t> tokens;
    std::vector<uint64_t> offsets{0};
    for (int d = s * kDocs / 2; d < (s + 1) * kDocs / 2; ++d) {
      for (int i = 0; i < doc_len(d); ++i) tokens.push_back(doc_token(d, i));
      offsets.push_back(tokens.size());
    }
    const ShardInfo info = write_shard(dir + "/" + shard_file_name(s), m, tokens, offsets);
    x.shards.push_back({shard_file_name(s), info.num_tokens, info.num_docs, info.checksum, 0});
    x.num_tokens += info.num_tokens;
    x.num_docs += info.num_docs;
  }
  write_dataset_index(dir, x);
  return TokenDataset::open(dir);
}

LoaderConfig config(int64_t T, int64_t G, uint64_t seed = 1, PackMode mode = PackMode::kConcat) {
  LoaderConfig c;
  c.seq_len = T;
  c.global_batch = G;
  c.seed = seed;
  c.mode = mode;
  return c;
}

bool same(const Batch& a, const Batch& b) {
  return a.inputs == b.inputs && a.targets == b.targets && a.loss_mask == b.loss_mask &&
         a.epoch == b.epoch && a.step == b.step;
}

// The epoch's stream, rebuilt from its rows: inputs of every row, then the last target.
std::vector<int32_t> epoch_stream(DataLoader& l, int64_t epoch) {
  const int64_t T = l.config().seq_len;
  std::vector<int32_t> in(T), tg(T), s;
  std::vector<float> m(T);
  for (int64_t r = 0; r < l.rows_per_epoch(); ++r) {
    l.read_row(epoch, r, in.data(), tg.data(), m.data());
    if (r > 0) CHECK(s.back() == in[0]);  // last target of the previous row (pushed below)
    if (r > 0) s.pop_back();
    s.insert(s.end(), in.begin(), in.end());
    CHECK(std::equal(tg.begin(), tg.end() - 1, in.begin() + 1));  // targets are shifted inputs
    s.push_back(tg.back());
  }
  return s;
}

// Splits a stream into documents at EOS and returns the document order; checks each
// unit is a whole document (the last one may be cut).
std::vector<int> doc_order(const std::vector<int32_t>& s) {
  std::vector<int> order;
  size_t i = 0;
  while (i < s.size()) {
    const int d = token_doc(s[i]);
    for (int k = 0; k < doc_len(d) && i < s.size(); ++k, ++i) REQUIRE(s[i] == doc_token(d, k));
    if (i < s.size()) REQUIRE(s[i++] == kEos);
    order.push_back(d);
  }
  return order;
}

TEST_CASE("loader: concat rows are consecutive slices of documents joined by EOS") {
  auto ds = synthetic("ld_concat");
  LoaderConfig c = config(16, 4);
  c.shuffle = false;
  DataLoader l(ds, c);
  int64_t total = 0;
  for (int d = 0; d < kDocs; ++d) total += doc_len(d) + 1;
  CHECK(l.rows_per_epoch() == (total - 1) / 16);
  CHECK(l.steps_per_epoch() == l.rows_per_epoch() / 4);
  std::vector<int32_t> expect;
  for (int d = 0; d < kDocs; ++d) {
    for (int i = 0; i < doc_len(d); ++i) expect.push_back(doc_token(d, i));
    expect.push_back(kEos);
  }
  const std::vector<int32_t> s = epoch_stream(l, 0);
  REQUIRE(s.size() == static_cast<size_t>(l.rows_per_epoch() * 16 + 1));
  CHECK(std::equal(s.begin(), s.end(), expect.begin()));
  // next() reads the same rows, in order, every target counting.
  const Batch b = l.next();
  CHECK(b.rows == 4);
  CHECK(b.seq_len == 16);
  CHECK(std::equal(b.inputs.begin(), b.inputs.end(), expect.begin()));
  CHECK(std::equal(b.targets.begin(), b.targets.end(), expect.begin() + 1));
  CHECK(b.target_tokens() == 64);
}

TEST_CASE("loader: shuffling is a permutation of whole documents, fixed by the seed") {
  auto ds = synthetic("ld_shuffle");
  DataLoader a(ds, config(16, 4, 42)), b(ds, config(16, 4, 42)), other(ds, config(16, 4, 43));
  const std::vector<int> a0 = doc_order(epoch_stream(a, 0));
  const std::vector<int> a1 = doc_order(epoch_stream(a, 1));
  CHECK(doc_order(epoch_stream(b, 0)) == a0);
  CHECK(doc_order(epoch_stream(other, 0)) != a0);
  CHECK(a1 != a0);  // reshuffled every epoch
  // Each order holds every document once, but for the tail that did not fill a row.
  for (const auto& order : {a0, a1}) {
    std::set<int> seen(order.begin(), order.end());
    CHECK(seen.size() == order.size());
    CHECK(order.size() + 8 >= kDocs);  // the unused tail (< 16 tokens) holds at most 8 units
  }
  for (int i = 0; i < 10; ++i) CHECK(same(a.next(), b.next()));
}

TEST_CASE("loader: rank slices are disjoint and together make the global batch") {
  auto ds = synthetic("ld_ranks");
  DataLoader global(ds, config(8, 8, 5));
  std::vector<DataLoader> ranks;
  for (int r = 0; r < 4; ++r) {
    LoaderConfig c = config(8, 8, 5);
    c.rank = r;
    c.world_size = 4;
    ranks.emplace_back(ds, c);
  }
  const int64_t steps = global.steps_per_epoch() + 5;  // into the second epoch
  for (int64_t s = 0; s < steps; ++s) {
    const Batch g = global.next();
    std::vector<int32_t> joined;
    std::set<std::vector<int32_t>> rows;
    for (DataLoader& r : ranks) {
      const Batch b = r.next();
      CHECK(b.rows == 2);
      CHECK(b.epoch == g.epoch);
      joined.insert(joined.end(), b.inputs.begin(), b.inputs.end());
      for (int j = 0; j < 2; ++j)
        rows.insert(std::vector<int32_t>(b.inputs.begin() + 8 * j, b.inputs.begin() + 8 * (j + 1)));
    }
    CHECK(joined == g.inputs);
    CHECK(rows.size() == 8);  // no row given to two ranks
  }
}

TEST_CASE("loader: a position saved mid-epoch resumes with exactly the same batches") {
  auto ds = synthetic("ld_resume");
  for (PackMode mode : {PackMode::kConcat, PackMode::kPadded}) {
    INFO(pack_mode_name(mode));
    const LoaderConfig c = config(12, 4, 9, mode);
    DataLoader straight(ds, c);
    const int64_t spe = straight.steps_per_epoch();
    const int64_t total = 2 * spe + 3;
    std::vector<Batch> expect;
    for (int64_t i = 0; i < total; ++i) expect.push_back(straight.next());

    for (int64_t k : {int64_t{1}, spe / 2, spe, spe + 3}) {
      INFO("saved after " << k << " steps of " << spe << " per epoch");
      DataLoader first(ds, c);
      for (int64_t i = 0; i < k; ++i) CHECK(same(first.next(), expect[i]));
      const std::string saved = first.state().to_json();
      const LoaderState st = LoaderState::from_json(saved, "trainer_state.json");
      CHECK(st == first.state());
      DataLoader resumed(ds, c);
      resumed.set_state(st);
      for (int64_t i = k; i < total; ++i) CHECK(same(resumed.next(), expect[i]));
      // And on two ranks: each gets its half of the same global batches.
      for (int r = 0; r < 2; ++r) {
        LoaderConfig rc = c;
        rc.rank = r;
        rc.world_size = 2;
        DataLoader half(ds, rc);
        half.set_state(st);
        const Batch b = half.next();
        const size_t n = b.inputs.size();
        CHECK(b.epoch == expect[k].epoch);
        CHECK(b.step == expect[k].step);
        CHECK(std::equal(b.inputs.begin(), b.inputs.end(), expect[k].inputs.begin() + r * n));
        CHECK(std::equal(b.targets.begin(), b.targets.end(), expect[k].targets.begin() + r * n));
      }
    }
  }
}

TEST_CASE("loader: padded rows hold one document each, padding masked out") {
  auto ds = synthetic("ld_padded");
  const int64_t T = 16;
  LoaderConfig c = config(T, 2, 3, PackMode::kPadded);
  DataLoader l(ds, c);
  int64_t rows = 0, pairs = 0;
  for (int d = 0; d < kDocs; ++d) {
    rows += (doc_len(d) + T - 1) / T;  // doc + EOS: doc_len(d) input/target pairs
    pairs += doc_len(d);
  }
  CHECK(l.rows_per_epoch() == rows);
  // Over an epoch: every (input, target) pair of every document exactly once.
  std::multiset<std::pair<int32_t, int32_t>> seen;
  std::vector<int32_t> in(T), tg(T);
  std::vector<float> m(T);
  for (int64_t r = 0; r < rows; ++r) {
    l.read_row(0, r, in.data(), tg.data(), m.data());
    const int d = token_doc(in[0]);
    CHECK((in[0] - doc_token(d, 0)) % T == 0);  // rows start at multiples of T in the document
    for (int64_t t = 0; t < T; ++t) {
      if (m[t] == 1.0f) {
        CHECK(token_doc(in[t]) == d);
        CHECK((tg[t] == kEos || token_doc(tg[t]) == d));
        seen.insert({in[t], tg[t]});
      } else {
        CHECK(m[t] == 0.0f);
        CHECK(in[t] == kEos);  // pad id defaults to EOS
        CHECK(tg[t] == kIgnoreTarget);
        if (t + 1 < T) CHECK(m[t + 1] == 0.0f);  // padding only at the end
      }
    }
  }
  CHECK(static_cast<int64_t>(seen.size()) == pairs);
  for (int d = 0; d < kDocs; ++d) {
    for (int i = 0; i < doc_len(d); ++i) {
      const int32_t next = i + 1 < doc_len(d) ? doc_token(d, i + 1) : kEos;
      CHECK(seen.count({doc_token(d, i), next}) == 1);
    }
  }
  const Batch b = l.next();
  CHECK(b.target_tokens() < 2 * T + 1);
}

TEST_CASE("loader: BOS and EOS per config") {
  auto ds = synthetic("ld_bos");
  LoaderConfig c = config(8, 1, 0);
  c.shuffle = false;
  c.add_bos = true;
  c.add_eos = false;
  DataLoader l(ds, c);
  const Batch b = l.next();
  CHECK(b.inputs[0] == 1);
  CHECK(b.inputs[1] == doc_token(0, 0));
  // Document 0 has one token: the next unit starts right after it, with its BOS.
  CHECK(b.inputs[2] == 1);
  CHECK(b.inputs[3] == doc_token(1, 0));
}

TEST_CASE("loader: positions from other settings or data are refused") {
  auto ds = synthetic("ld_refuse");
  auto copy = synthetic("ld_refuse_copy");
  auto other = synthetic("ld_refuse_other", 8);
  DataLoader l(ds, config(16, 4, 1));
  l.next();
  const LoaderState st = l.state();
  DataLoader seed2(ds, config(16, 4, 2));
  check_throws_with([&] { seed2.set_state(st); }, {"seed = 1", "seed = 2"});
  DataLoader longer(ds, config(32, 4, 1));
  check_throws_with([&] { longer.set_state(st); }, {"seq_len"});
  // Same content elsewhere is the same dataset; different content is not.
  DataLoader same_content(copy, config(16, 4, 1));
  CHECK_NOTHROW(same_content.set_state(st));
  DataLoader other_content(other, config(16, 4, 1));
  check_throws_with([&] { other_content.set_state(st); }, {"another dataset", other->dir()});
  check_throws_with([] { LoaderState::from_json("{\"epoch\": 1}", "ckpt/trainer_state.json"); },
                    {"ckpt/trainer_state.json", "step"});
  check_throws_with([] { LoaderState::from_json("{not json", "ckpt/trainer_state.json"); },
                    {"ckpt/trainer_state.json"});
  check_throws_with([&] { DataLoader too_big(ds, config(16, 100000)); },
                    {ds->dir(), "fewer than one global batch"});
  LoaderConfig bad = config(16, 6);
  bad.world_size = 4;
  check_throws_with([&] { DataLoader bad_loader(ds, bad); }, {"multiple of world_size"});
}

TEST_CASE("loader: batches from the prepared sample") {
  const std::string out = fresh_temp_dir("ld_sample");
  const Tokenizer tok = Tokenizer::load(sample_tokenizer());
  PrepareConfig pc;
  pc.out_dir = out;
  pc.progress = false;
  prepare_dataset(read_wikitext_corpus(sample_wikitext("valid"), WikitextConfig{}), tok, pc);
  auto ds = TokenDataset::open(out);
  DataLoader l(ds, config(128, 4, 0));
  CHECK(l.rows_per_epoch() == (9539 + 4 - 1) / 128);
  int eos = 0;
  for (int i = 0; i < l.steps_per_epoch(); ++i) {
    const Batch b = l.next();
    for (int32_t t : b.inputs) {
      CHECK(t >= 0);
      CHECK(t < 32000);
      eos += t == 2;
    }
  }
  CHECK(eos >= 2);  // four articles, joined by EOS
}

}  // namespace
}  // namespace resona::testing
