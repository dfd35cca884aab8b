// The golden data of the backbones: what the "write the inputs" mode of
// tests/models/golden_test.cc writes, what tools/golden/backbones.py reads and answers,
// and what golden_test checks.
//
//   tests/golden/<name>.inputs.safetensors     (written by golden_test, C++)
//     every parameter of the model under its dotted name, float32 (F32)
//     "input_ids" [B, T] and "labels" [B, T], int64 (I64); labels are the next tokens,
//       a few of them -100 (ignored by the loss)
//     __metadata__: "config" = the resolved ModelConfig as JSON (model_config_to_json),
//                   "backbone" = its name, "seed" and "perturb_std" = where the weights
//                   came from
//   tests/golden/<name>.expected.safetensors   (written by backbones.py, PyTorch float64)
//     "logits" [B, T, vocab] and "loss" [1]; "grad.<parameter>" for every parameter,
//     the gradient of the mean cross-entropy of logits against labels; all float32
//     (the float64 results rounded once)
//
// The config travels inside the inputs file, so the test builds exactly the model the
// data was made with, whatever tests/models/small_config.h says later.
#pragma once

#include <nlohmann/json.hpp>

#include <set>
#include <string>
#include <type_traits>
#include <vector>

#include "core/check.h"
#include "core/config.h"
#include "models/config.h"

namespace resona::golden {

using Json = nlohmann::json;

// The backbones with golden data (every FLA backbone; "tiny" is ours alone).
inline const std::vector<std::string>& golden_backbones() {
  static const std::vector<std::string> names = {"gla", "deltanet", "retnet", "mamba", "mamba2"};
  return names;
}

// Every field that ModelConfig::visit lists, nested sections as nested objects.
class ConfigToJson {
 public:
  explicit ConfigToJson(Json& out) : out_(out) {}
  template <class F, class C = NoConstraint>
  void operator()(const char* key, F& field, const char* = "", const C& = {}) {
    if constexpr (is_config<F>::value) {
      Json sub = Json::object();
      ConfigToJson v(sub);
      field.visit(v);
      out_[key] = std::move(sub);
    } else {
      out_[key] = field;
    }
  }

 private:
  Json& out_;
};

inline Json model_config_to_json(models::ModelConfig cfg) {
  Json j = Json::object();
  ConfigToJson v(j);
  cfg.visit(v);
  return j;
}

// The reverse: sets each field the object has (a field it lacks keeps its default, as
// for a file written before the field existed); a key that ModelConfig does not have,
// or a value of the wrong type, is an error naming `source` and the key path.
class ConfigFromJson {
 public:
  ConfigFromJson(const Json& in, std::string source, std::string path)
      : in_(in), source_(std::move(source)), path_(std::move(path)) {
    RESONA_CHECK(in_.is_object()) << source_ << ": config " << (path_.empty() ? "" : path_ + " ")
                                  << "is " << in_.dump() << ", not a JSON object";
  }
  template <class F, class C = NoConstraint>
  void operator()(const char* key, F& field, const char* = "", const C& = {}) {
    known_.insert(key);
    if (!in_.contains(key)) return;
    const Json& v = in_.at(key);
    const std::string where = path_ + key;
    if constexpr (is_config<F>::value) {
      ConfigFromJson sub(v, source_, where + ".");
      field.visit(sub);
      sub.check_no_unknown_keys();
    } else {
      if constexpr (std::is_same_v<F, bool>) {
        RESONA_CHECK(v.is_boolean())
            << source_ << ": config " << where << " is " << v.dump() << ", not a boolean";
      } else if constexpr (std::is_arithmetic_v<F>) {
        RESONA_CHECK(v.is_number())
            << source_ << ": config " << where << " is " << v.dump() << ", not a number";
      }
      try {
        field = v.get<F>();
      } catch (const Json::exception& e) {
        RESONA_FAIL() << source_ << ": config " << where << " is " << v.dump() << ": " << e.what();
      }
    }
  }
  void check_no_unknown_keys() const {
    for (const auto& kv : in_.items()) {
      RESONA_CHECK(known_.count(kv.key()) == 1)
          << source_ << ": config key " << path_ << kv.key() << " is not a ModelConfig field";
    }
  }

 private:
  const Json& in_;
  std::string source_, path_;
  std::set<std::string> known_;
};

inline models::ModelConfig model_config_from_json(const Json& j, const std::string& source) {
  models::ModelConfig cfg;
  ConfigFromJson v(j, source, "model.");
  cfg.visit(v);
  v.check_no_unknown_keys();
  return cfg;
}

}  // namespace resona::golden
