#include "train/config.h"

#include <fstream>
#include <sstream>

namespace resona {

namespace config_detail {

std::string join(const std::string& prefix, const std::string& key) {
  return prefix.empty() ? key : prefix + "." + key;
}

std::string join_index(const std::string& prefix, size_t i) {
  return prefix + "[" + std::to_string(i) + "]";
}

std::string scalar_text(const YAML::Node& n) {
  if (n.IsScalar()) return "'" + n.Scalar() + "'";
  if (n.IsSequence()) return "a list";
  if (n.IsMap()) return "a mapping";
  return "nothing";
}

void fail(const ConfigDocument& doc, const std::string& path, const YAML::Node& node,
          const std::string& what) {
  throw ConfigError(doc.origin(path, node) + " key '" + path + "': " + what);
}

}  // namespace config_detail

std::string ConfigDocument::origin(const std::string& path, const YAML::Node& node) const {
  // The longest override that set this path, a part of it (`a` for `a.b`) or something
  // inside it (`a.b` for `a`).
  auto under = [](const std::string& a, const std::string& b) {
    return a == b || a.rfind(b + ".", 0) == 0 || a.rfind(b + "[", 0) == 0;
  };
  std::string best;
  for (const auto& [p, text] : override_text_) {
    bool covers = under(path, p) || under(p, path);
    if (covers && p.size() >= best.size()) best = p;
  }
  if (!best.empty()) return "override '" + override_text_.at(best) + "':";
  const YAML::Mark m = node.Mark();
  if (m.line >= 0) return name_ + ":" + std::to_string(m.line + 1) + ":";
  return name_ + ":";
}

ConfigDocument ConfigDocument::from_string(const std::string& yaml, const std::string& name,
                                           const std::vector<std::string>& overrides) {
  ConfigDocument doc;
  doc.name_ = name;
  try {
    doc.root_ = YAML::Load(yaml);
  } catch (const YAML::Exception& e) {
    throw ConfigError(name + ":" + std::to_string(e.mark.line + 1) + ":" +
                      std::to_string(e.mark.column + 1) + ": YAML syntax error: " + e.msg);
  }
  if (doc.root_.IsNull() || !doc.root_.IsDefined()) doc.root_ = YAML::Node(YAML::NodeType::Map);
  if (!doc.root_.IsMap()) {
    throw ConfigError(name + ":1: the config must be a mapping of settings, got " +
                      config_detail::scalar_text(doc.root_));
  }
  for (const std::string& o : overrides) doc.apply_override(o);
  return doc;
}

ConfigDocument ConfigDocument::from_file(const std::string& path,
                                         const std::vector<std::string>& overrides) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw ConfigError(path + ": cannot open the config file");
  std::ostringstream ss;
  ss << in.rdbuf();
  return from_string(ss.str(), path, overrides);
}

void ConfigDocument::apply_override(const std::string& text) {
  const size_t eq = text.find('=');
  if (eq == std::string::npos || eq == 0) {
    throw ConfigError("override '" + text + "': expected key.path=value");
  }
  const std::string path = text.substr(0, eq);
  const std::string value_text = text.substr(eq + 1);
  YAML::Node value;
  try {
    value = YAML::Load(value_text);
  } catch (const YAML::Exception& e) {
    throw ConfigError("override '" + text + "': value is not valid YAML: " + e.msg);
  }
  if (!value.IsDefined() || value.IsNull()) value = YAML::Node(value_text);

  std::vector<std::string> parts;
  std::stringstream ss(path);
  for (std::string p; std::getline(ss, p, '.');) {
    if (p.empty()) throw ConfigError("override '" + text + "': empty key in '" + path + "'");
    parts.push_back(p);
  }
  YAML::Node cur(root_);
  std::string walked;
  for (size_t i = 0; i + 1 < parts.size(); ++i) {
    walked = config_detail::join(walked, parts[i]);
    YAML::Node next;
    next.reset(cur[parts[i]]);
    if (!next.IsDefined() || next.IsNull()) {
      cur[parts[i]] = YAML::Node(YAML::NodeType::Map);
      next.reset(cur[parts[i]]);
    } else if (!next.IsMap()) {
      throw ConfigError("override '" + text + "': '" + walked + "' is a value, not a section");
    }
    cur.reset(next);
  }
  cur[parts.back()] = value;
  override_text_[path] = text;
}

}  // namespace resona
