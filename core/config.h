// Typed configuration structs.
//
// Every component declares a plain struct with defaults and one `visit` member that
// lists its fields, so that a single loader (train/config.h) maps YAML onto any of them,
// rejects unknown keys, wrong types and out-of-range values with the key path and the
// file and line, and prints or stores the resolved values:
//
//   struct AdamWConfig {
//     double lr = 1e-3;
//     std::string schedule = "cosine";
//     template <class V> void visit(V& v) {
//       v("lr", lr, "peak learning rate", Range::positive());
//       v("schedule", schedule, "lr schedule", OneOf{"cosine", "linear", "constant"});
//     }
//   };
//
// Field types: bool, int, int64_t, uint64_t, double, std::string, std::vector of those,
// and nested structs that have a visit member. The constraint argument is optional.
#pragma once

#include <cmath>
#include <initializer_list>
#include <limits>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

namespace resona {

// A closed/open interval for numeric fields (and for each element of numeric lists).
struct Range {
  double lo = -std::numeric_limits<double>::infinity();
  double hi = std::numeric_limits<double>::infinity();
  bool lo_open = false;
  bool hi_open = false;

  static Range positive() { return {0, std::numeric_limits<double>::infinity(), true, false}; }
  static Range non_negative() { return {0, std::numeric_limits<double>::infinity(), false, false}; }
  static Range at_least(double lo) {
    return {lo, std::numeric_limits<double>::infinity(), false, false};
  }
  static Range closed(double lo, double hi) { return {lo, hi, false, false}; }
  static Range half_open(double lo, double hi) { return {lo, hi, false, true}; }  // [lo, hi)
  static Range any() { return {}; }

  bool contains(double x) const {
    if (std::isnan(x)) return false;
    if (lo_open ? !(x > lo) : !(x >= lo)) return false;
    if (hi_open ? !(x < hi) : !(x <= hi)) return false;
    return true;
  }
  std::string str() const {
    std::ostringstream os;
    os << (lo_open ? "(" : "[") << lo << ", " << hi << (hi_open ? ")" : "]");
    return os.str();
  }
};

// The allowed values of a string field.
struct OneOf {
  std::vector<std::string> values;
  OneOf(std::initializer_list<const char*> v) : values(v.begin(), v.end()) {}
  explicit OneOf(std::vector<std::string> v) : values(std::move(v)) {}
  bool contains(const std::string& s) const {
    for (const auto& v : values) {
      if (v == s) return true;
    }
    return false;
  }
  std::string str() const {
    std::string s;
    for (size_t i = 0; i < values.size(); ++i) s += (i ? ", " : "") + values[i];
    return s;
  }
};

struct NoConstraint {};

template <class T, class = void>
struct is_config : std::false_type {};

// Detects a `visit` member template by calling it with a visitor that accepts anything.
struct AnyFieldVisitor {
  template <class F, class C = NoConstraint>
  void operator()(const char*, F&, const char* = "", const C& = {}) {}
};
template <class T>
struct is_config<T,
                 std::void_t<decltype(std::declval<T&>().visit(std::declval<AnyFieldVisitor&>()))>>
    : std::true_type {};

}  // namespace resona
