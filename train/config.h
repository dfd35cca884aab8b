// Loading typed configs (core/config.h) from YAML files and `a.b.c=value` overrides.
//
//   ExperimentConfig cfg;
//   ConfigDocument doc = ConfigDocument::from_file("run.yaml", {"optimizer.lr=3e-4"});
//   doc.read_into(cfg);            // throws ConfigError naming key path, file and line
//   std::string yaml = to_yaml(cfg);  // the resolved config, every field
//
// Errors: YAML syntax, a key the struct does not have (with the keys it does have), a
// value of the wrong type, a number outside its Range, a string outside its OneOf, an
// override that is not `path=value`. The message starts with the source: `file:line:`
// for the file, `override 'a.b=c':` for the command line.
#pragma once

#include <yaml-cpp/yaml.h>

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <type_traits>
#include <vector>

#include "core/check.h"
#include "core/config.h"

namespace resona {

class ConfigError : public Error {
 public:
  using Error::Error;
};

class ConfigDocument {
 public:
  // Parses the file (an empty file gives all defaults) and applies the overrides in order.
  static ConfigDocument from_file(const std::string& path,
                                  const std::vector<std::string>& overrides = {});
  // Parses YAML text; `name` stands for the file in messages.
  static ConfigDocument from_string(const std::string& yaml, const std::string& name,
                                    const std::vector<std::string>& overrides = {});

  template <class C>
  void read_into(C& cfg) const;

  const YAML::Node& root() const { return root_; }

  // Where a key path's value came from, for messages: "file:line:" or "override '...':".
  std::string origin(const std::string& path, const YAML::Node& node) const;

 private:
  void apply_override(const std::string& text);

  std::string name_;
  YAML::Node root_;
  std::map<std::string, std::string> override_text_;  // key path -> "a.b=c"
};

namespace config_detail {

[[noreturn]] void fail(const ConfigDocument& doc, const std::string& path, const YAML::Node& node,
                       const std::string& what);
std::string scalar_text(const YAML::Node& n);
std::string join(const std::string& prefix, const std::string& key);
std::string join_index(const std::string& prefix, size_t i);

template <class T>
struct is_vector : std::false_type {};
template <class T>
struct is_vector<std::vector<T>> : std::true_type {};

template <class C>
void check_constraint(const ConfigDocument& doc, const std::string& path, const YAML::Node& n,
                      double value, const C& c) {
  if constexpr (std::is_same_v<C, Range>) {
    if (!c.contains(value)) {
      fail(doc, path, n, "value " + scalar_text(n) + " is outside " + c.str());
    }
  }
}

template <class F, class C>
void read_value(const ConfigDocument& doc, const std::string& path, const YAML::Node& n, F& out,
                const C& c);

template <class Cfg>
class Reader {
 public:
  Reader(const ConfigDocument& doc, std::string prefix, const YAML::Node& node)
      : doc_(doc), prefix_(std::move(prefix)), node_(node) {}

  template <class F, class C = NoConstraint>
  void operator()(const char* key, F& field, const char* = "", const C& c = {}) {
    keys_.push_back(key);
    const YAML::Node n = node_[key];
    if (!n.IsDefined()) return;  // keeps the default
    read_value(doc_, join(prefix_, key), n, field, c);
  }

  void finish() const {
    for (auto it = node_.begin(); it != node_.end(); ++it) {
      const std::string key = it->first.as<std::string>();
      bool known = false;
      for (const auto& k : keys_) known |= k == key;
      if (!known) {
        std::string valid;
        for (size_t i = 0; i < keys_.size(); ++i) valid += (i ? ", " : "") + keys_[i];
        fail(doc_, join(prefix_, key), it->first, "unknown key (valid keys here: " + valid + ")");
      }
    }
  }

 private:
  const ConfigDocument& doc_;
  std::string prefix_;
  const YAML::Node node_;  // const: operator[] must not insert missing keys
  std::vector<std::string> keys_;
};

template <class F, class C>
void read_value(const ConfigDocument& doc, const std::string& path, const YAML::Node& n, F& out,
                const C& c) {
  if constexpr (is_config<F>::value) {
    if (n.IsNull()) return;
    if (!n.IsMap()) fail(doc, path, n, "expected a mapping of settings");
    Reader<F> r(doc, path, n);
    out.visit(r);
    r.finish();
  } else if constexpr (is_vector<F>::value) {
    if (!n.IsSequence()) fail(doc, path, n, "expected a list, got " + scalar_text(n));
    F v;
    for (size_t i = 0; i < n.size(); ++i) {
      typename F::value_type e{};
      read_value(doc, join_index(path, i), n[i], e, c);
      v.push_back(std::move(e));
    }
    out = std::move(v);
  } else {
    if (!n.IsScalar()) fail(doc, path, n, "expected a single value, got a list or mapping");
    const std::string text = n.Scalar();
    if constexpr (std::is_same_v<F, bool>) {
      if (text == "true")
        out = true;
      else if (text == "false")
        out = false;
      else
        fail(doc, path, n, "expected true or false, got '" + text + "'");
    } else if constexpr (std::is_integral_v<F>) {
      errno = 0;
      char* end = nullptr;
      long long v = std::strtoll(text.c_str(), &end, 10);
      if (text.empty() || *end != '\0' || errno == ERANGE) {
        fail(doc, path, n, "expected an integer, got '" + text + "'");
      }
      if (std::is_unsigned_v<F> && v < 0) {
        fail(doc, path, n, "expected a non-negative integer, got '" + text + "'");
      }
      check_constraint(doc, path, n, static_cast<double>(v), c);
      out = static_cast<F>(v);
    } else if constexpr (std::is_floating_point_v<F>) {
      double v = 0;
      if (!YAML::convert<double>::decode(n, v)) {
        fail(doc, path, n, "expected a number, got '" + text + "'");
      }
      check_constraint(doc, path, n, v, c);
      out = static_cast<F>(v);
    } else if constexpr (std::is_same_v<F, std::string>) {
      if constexpr (std::is_same_v<C, OneOf>) {
        if (!c.contains(text)) {
          fail(doc, path, n, "'" + text + "' is not one of: " + c.str());
        }
      }
      out = text;
    } else {
      static_assert(sizeof(F) == 0, "unsupported config field type");
    }
  }
}

class Writer {
 public:
  explicit Writer(YAML::Emitter& e) : e_(e) {}
  template <class F, class C = NoConstraint>
  void operator()(const char* key, F& field, const char* = "", const C& = {}) {
    e_ << YAML::Key << key << YAML::Value;
    write(field);
  }
  template <class F>
  void write(F& v) {
    if constexpr (is_config<F>::value) {
      e_ << YAML::BeginMap;
      v.visit(*this);
      e_ << YAML::EndMap;
    } else if constexpr (is_vector<F>::value) {
      e_ << YAML::Flow << YAML::BeginSeq;
      for (auto& x : v) write(x);
      e_ << YAML::EndSeq;
    } else if constexpr (std::is_same_v<F, bool>) {
      e_ << (v ? "true" : "false");
    } else if constexpr (std::is_floating_point_v<F>) {
      e_ << YAML::Precision(17) << static_cast<double>(v);
    } else {
      e_ << v;
    }
  }

 private:
  YAML::Emitter& e_;
};

}  // namespace config_detail

template <class C>
void ConfigDocument::read_into(C& cfg) const {
  static_assert(is_config<C>::value, "read_into needs a struct with a visit member");
  config_detail::read_value(*this, "", root_, cfg, NoConstraint{});
}

// The resolved config as YAML text (every field, in declaration order).
template <class C>
std::string to_yaml(C& cfg) {
  YAML::Emitter e;
  config_detail::Writer w(e);
  w.write(cfg);
  return e.c_str();
}

}  // namespace resona
