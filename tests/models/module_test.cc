// Module: dotted parameter names in registration order, counts, tied weights, name
// checks, and the layers' initialisation statistics and forward values.
#include <algorithm>
#include <cmath>
#include <numeric>

#include "autograd/grad_mode.h"
#include "models/module.h"
#include "tests/test_util.h"

namespace resona::testing {
namespace {

using namespace resona::models;

// A two-level tree: attn (with bias) -> layers.{0,1} -> norm, and a tied alias.
class Block : public Module {
 public:
  explicit Block(Generator& gen) : q_proj_(4, 3, gen), o_proj_(3, 4, gen, {.bias = true}) {
    register_module("q_proj", q_proj_);
    register_module("o_proj", o_proj_);
  }
  Linear q_proj_, o_proj_;
};

class Tree : public Module {
 public:
  explicit Tree(Generator& gen) : embeddings_(10, 4, gen), norm_(4) {
    register_module("embeddings", embeddings_);
    scale_ = register_parameter("scale", ones({1}));
    for (int i = 0; i < 2; ++i) layers_.push_back(std::make_unique<Block>(gen));
    register_module("layers", layers_);
    register_module("norm", norm_);
  }
  void tie() { register_parameter("lm_head_weight", embeddings_.weight()); }
  Embedding embeddings_;
  Tensor scale_;
  ModuleList<Block> layers_;
  RMSNorm norm_;
};

class Outer : public Module {
 public:
  explicit Outer(Generator& gen) : model_(gen) { register_module("model", model_); }
  Tree model_;
};

std::vector<std::string> names_of(const NamedTensors& named) {
  std::vector<std::string> out;
  for (auto& [n, t] : named) out.push_back(n);
  return out;
}

TEST_CASE("Module: dotted names in registration order, with and without prefix") {
  Generator gen(0);
  Outer outer(gen);
  const std::vector<std::string> expected = {
      "model.embeddings.weight",
      "model.scale",
      "model.layers.0.q_proj.weight",
      "model.layers.0.o_proj.weight",
      "model.layers.0.o_proj.bias",
      "model.layers.1.q_proj.weight",
      "model.layers.1.o_proj.weight",
      "model.layers.1.o_proj.bias",
      "model.norm.weight",
  };
  CHECK(names_of(outer.named_parameters()) == expected);
  auto inner = names_of(outer.model_.named_parameters());
  CHECK(inner.front() == "embeddings.weight");
  CHECK(names_of(outer.model_.named_parameters("backbone")).back() == "backbone.norm.weight");
  // 10*4 + 1 + 2 * (3*4 + 4*3 + 4) + 4
  CHECK(outer.num_parameters() == 40 + 1 + 2 * 28 + 4);
  CHECK(outer.parameters().size() == expected.size());

  CHECK(outer.parameter("model.layers.1.o_proj.bias").shape() == Shape{4});
  CHECK(outer.parameter("model.layers.1.o_proj.bias")
            .is_same(outer.model_.layers_[1].o_proj_.bias()));
  CHECK_THROWS_WITH_AS(outer.parameter("model.layers.2.o_proj.bias"),
                       doctest::Contains("model.layers.2.o_proj.bias"), Error);

  outer.name_parameters();
  CHECK(outer.model_.norm_.weight().name() == "model.norm.weight");
  REQUIRE(outer.children().size() == 1);
  CHECK(outer.children()[0].first == "model");
}

TEST_CASE("Module: a tied tensor is listed once, under its first name") {
  Generator gen(0);
  Tree tree(gen);
  const int64_t before = tree.num_parameters();
  tree.tie();
  CHECK(tree.num_parameters() == before);
  auto names = names_of(tree.named_parameters());
  CHECK(std::find(names.begin(), names.end(), "lm_head_weight") == names.end());
  CHECK(names.front() == "embeddings.weight");
}

class Bad : public Module {
 public:
  void add(const std::string& name, Tensor t) { register_parameter(name, std::move(t)); }
  template <class M>
  void child(const std::string& name, M& m) {
    register_module(name, m);
  }
};

TEST_CASE("Module: bad names and bad parameters are refused") {
  Bad m;
  m.add("w", zeros({2}));
  CHECK_THROWS_WITH_AS(m.add("w", zeros({2})), doctest::Contains("registered twice"), Error);
  CHECK_THROWS_WITH_AS(m.add("a.b", zeros({2})), doctest::Contains("no dot"), Error);
  CHECK_THROWS_AS(m.add("", zeros({2})), Error);
  CHECK_THROWS_WITH_AS(m.add("ids", arange(3)), doctest::Contains("floating point"), Error);
  CHECK_THROWS_AS(m.add("undef", Tensor()), Error);
  RMSNorm norm(2);
  CHECK_THROWS_AS(m.child("w", norm), Error);
  m.child("norm", norm);
  CHECK(names_of(m.named_parameters()) == std::vector<std::string>{"w", "norm.weight"});
}

TEST_CASE("Module: set_training reaches every descendant") {
  Generator gen(0);
  Outer outer(gen);
  CHECK(outer.model_.layers_[1].q_proj_.is_training());
  outer.set_training(false);
  CHECK_FALSE(outer.is_training());
  CHECK_FALSE(outer.model_.layers_[1].q_proj_.is_training());
}

// Sample mean and standard deviation of a tensor's elements.
std::pair<double, double> moments(const Tensor& t) {
  auto v = t.to_vector<double>();
  double mean = std::accumulate(v.begin(), v.end(), 0.0) / v.size();
  double sq = 0;
  for (double x : v) sq += (x - mean) * (x - mean);
  return {mean, std::sqrt(sq / (v.size() - 1))};
}

TEST_CASE("Layers: FLA initialisation statistics, reproducible from the seed") {
  Generator gen(42);
  Linear lin(512, 256, gen, {.bias = true});
  const int64_t n = 512 * 256;
  auto [mean, std] = moments(lin.weight());
  // Standard errors: mean 0.02 / sqrt(n) = 5.5e-5, std about 0.02 / sqrt(2n) = 3.9e-5;
  // the bounds are about 5 of them.
  CHECK(std::abs(mean) < 5 * 0.02 / std::sqrt(double(n)));
  CHECK(std::abs(std - 0.02) < 5 * 0.02 / std::sqrt(2.0 * n));
  check_close(lin.bias(), std::vector<double>(256, 0.0), 0.0);
  CHECK(lin.weight().requires_grad());
  CHECK(lin.weight().shape() == Shape{256, 512});
  CHECK(lin.weight().dtype() == DType::kFloat32);

  Embedding emb(1000, 64, gen, 0.05);
  auto [emean, estd] = moments(emb.weight());
  CHECK(std::abs(emean) < 5 * 0.05 / std::sqrt(64000.0));
  CHECK(std::abs(estd - 0.05) < 5 * 0.05 / std::sqrt(128000.0));

  RMSNorm norm(8);
  check_close(norm.weight(), std::vector<double>(8, 1.0), 0.0);

  Generator a(7), b(7), c(8);
  Linear la(5, 3, a), lb(5, 3, b), lc(5, 3, c);
  CHECK(la.weight().to_vector<float>() == lb.weight().to_vector<float>());
  CHECK(la.weight().to_vector<float>() != lc.weight().to_vector<float>());

  Tensor t = zeros({3, 4}, DType::kFloat64);
  init_normal(t, a, 1.0, 5.0);
  CHECK(moments(t).first > 3.0);  // mean 5, 12 samples of std 1
  init_ones(t);
  check_close(t, std::vector<double>(12, 1.0), 0.0);
  init_zeros(t);
  check_close(t, std::vector<double>(12, 0.0), 0.0);
  Tensor ints = zeros({2}, DType::kInt64);
  CHECK_THROWS_AS(init_ones(ints), Error);
}

TEST_CASE("Layers: forward values of Linear, Embedding and RMSNorm") {
  Generator gen(0);
  Linear lin(2, 3, gen, {.bias = true, .dtype = DType::kFloat64});
  {
    NoGradGuard no_grad;
    lin.parameter("weight").copy_(values({1, 2, 3, 4, 5, 6}, {3, 2}));
    lin.parameter("bias").copy_(values({0.5, -0.5, 1}, {3}));
  }
  // [1, -1] W^T + b = [1-2, 3-4, 5-6] + b
  check_close(lin.forward(values({1, -1}, {1, 2})), {-0.5, -1.5, 0.0}, 1e-12);
  CHECK_THROWS_AS(lin.forward(values({1, 2, 3}, {1, 3})), Error);

  Embedding emb(3, 2, gen, 0.02, DType::kFloat64);
  {
    NoGradGuard no_grad;
    emb.parameter("weight").copy_(values({0, 1, 10, 11, 20, 21}, {3, 2}));
  }
  check_close(emb.forward(from_vector<int64_t>({2, 0, 2}, {3})), {20, 21, 0, 1, 20, 21}, 0.0);

  RMSNorm norm(2, 1e-6, DType::kFloat64);
  // x = [3, 4]: mean(x^2) = 12.5, y = x / sqrt(12.5 + 1e-6)
  const double r = 1.0 / std::sqrt(12.5 + 1e-6);
  check_close(norm.forward(values({3, 4}, {2})), {3 * r, 4 * r}, 1e-12);
}

}  // namespace
}  // namespace resona::testing
