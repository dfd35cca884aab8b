// `resona info --config FILE [a.b.c=value ...]`: builds the configured model on the CPU
// and prints, after a line naming the config and one with the binary's source revision
// (`source revision: <git commit>`, train/checkpoint.h: build_revision()),
//   1. the resolved `model:` section (defaults applied; only the chosen backbone's
//      sub-section),
//   2. the module tree: each module's name, type and parameter count, each parameter's
//      shape; runs of identical blocks (same types, names and shapes) are printed once,
//   3. a line `parameters: N` (unique parameters; a tied lm_head counts once).
// The whole run config is read and checked (train/run_config.h), so `info` is also a dry
// check of a config before `resona train`. A bad config exits with code 2 and a message
// naming the key (main.cc turns resona::Error into exit code 2).
//
// The model is built with its real initialisation (131M parameters are 0.5 GB in float32
// and take a few seconds); nothing else is allocated.
#include <cxxabi.h>
#include <yaml-cpp/yaml.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <typeinfo>
#include <vector>

#include "core/rng.h"
#include "models/language_model.h"
#include "train/checkpoint.h"
#include "train/cli/command.h"
#include "train/config.h"
#include "train/run_config.h"

namespace resona::cli {
namespace {

// Relative paths are taken from the folder `bazel run` was started in.
std::string resolve_path(const std::string& path) {
  std::filesystem::path p(path);
  if (p.is_absolute()) return path;
  const char* base = std::getenv("BUILD_WORKING_DIRECTORY");
  return base ? (std::filesystem::path(base) / p).string() : path;
}

std::string with_commas(int64_t n) {
  std::string digits = std::to_string(n < 0 ? -n : n), out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return (n < 0 ? "-" : "") + out;
}

std::string shape_text(const Shape& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

// The dynamic type's name without namespaces ("ModuleList<SequenceModule>").
std::string type_name(const models::Module& m) {
  const char* mangled = typeid(m).name();
  int status = 0;
  char* demangled = abi::__cxa_demangle(mangled, nullptr, nullptr, &status);
  std::string name = status == 0 && demangled ? demangled : mangled;
  std::free(demangled);
  for (const std::string ns : {"resona::models::", "resona::"}) {
    for (size_t at; (at = name.find(ns)) != std::string::npos;) name.erase(at, ns.size());
  }
  return name;
}

// What makes two blocks "the same" for printing: type, parameter names and shapes.
std::string signature(const models::Module& m) {
  std::string s = type_name(m);
  for (const auto& [name, t] : m.named_parameters()) s += "|" + name + shape_text(t.shape());
  return s;
}

void print_row(int depth, const std::string& name, const std::string& type, int64_t count) {
  const std::string left = std::string(2 * depth, ' ') + name;
  std::printf("%-48s %-28s %14s\n", left.c_str(), type.c_str(), with_commas(count).c_str());
}

void print_tree(const models::Module& m, const std::string& name, int depth) {
  print_row(depth, name, type_name(m), m.num_parameters());
  // Direct parameters (relative names without a dot), in registration order.
  for (const auto& [pname, t] : m.named_parameters()) {
    if (pname.find('.') != std::string::npos) continue;
    const std::string left = std::string(2 * (depth + 1), ' ') + pname;
    std::printf("%-48s %-28s %14s\n", left.c_str(), shape_text(t.shape()).c_str(),
                with_commas(t.numel()).c_str());
  }
  const auto& children = m.children();
  for (size_t i = 0; i < children.size();) {
    const auto& [cname, child] = children[i];
    print_tree(*child, cname, depth + 1);
    // Collapse the run of following siblings identical to this one (repeated blocks).
    size_t j = i + 1;
    if (child->num_parameters() > 0) {
      const std::string sig = signature(*child);
      while (j < children.size() && signature(*children[j].second) == sig) ++j;
    }
    if (j > i + 2) {
      const std::string range = children[i + 1].first + ".." + children[j - 1].first;
      const std::string what =
          std::to_string(j - i - 1) + " x " + type_name(*child) + " as " + cname;
      print_row(depth + 1, range, what, child->num_parameters() * static_cast<int64_t>(j - i - 1));
      i = j;
    } else {
      ++i;
    }
  }
}

// to_yaml writes doubles with 17 digits (1e-06 as 9.9999999999999995e-07); for reading,
// rewrite each number in the shortest form that parses back to the same double.
void shorten_numbers(YAML::Node node) {
  if (node.IsMap()) {
    for (auto it = node.begin(); it != node.end(); ++it) shorten_numbers(it->second);
  } else if (node.IsSequence()) {
    for (size_t i = 0; i < node.size(); ++i) shorten_numbers(node[i]);
  } else if (node.IsScalar()) {
    const std::string text = node.Scalar();
    char* end = nullptr;
    const double v = std::strtod(text.c_str(), &end);
    if (text.empty() || *end != '\0' || text.find_first_of(".eE") == std::string::npos) return;
    for (int digits = 1; digits <= 17; ++digits) {
      char buf[64];
      std::snprintf(buf, sizeof buf, "%.*g", digits, v);
      if (std::strtod(buf, nullptr) == v) {
        node = std::string(buf);
        return;
      }
    }
  }
}

// The resolved model section as YAML, keeping only the settings the backbone reads.
std::string model_yaml(const models::ModelConfig& cfg) {
  models::ModelConfig resolved = models::resolved_model_config(cfg);
  YAML::Node node = YAML::Load(to_yaml(resolved));
  for (const std::string& other : models::backbone_names()) {
    if (other != cfg.name) node.remove(other);
  }
  if (cfg.name == "mamba" || cfg.name == "mamba2") {
    node.remove("hidden_ratio");
    node.remove("intermediate_size");
  } else if (cfg.name == "tiny") {
    node.remove("hidden_ratio");
  }
  shorten_numbers(node);
  YAML::Node root;
  root["model"] = node;
  YAML::Emitter out;
  out << root;
  return out.c_str();
}

int run_info(const std::string& config_path, const std::vector<std::string>& overrides) {
  const std::string path = resolve_path(config_path);
  train::RunConfig run = train::load_run_config(path, overrides);
  const models::ModelConfig& cfg = run.model;
  models::validate_model_config(cfg);

  std::printf("resona info: %s\n", path.c_str());
  std::printf("source revision: %s\n", train::build_revision());
  for (const std::string& o : overrides) std::printf("  override %s\n", o.c_str());
  std::printf("%s\n\n", model_yaml(cfg).c_str());
  std::fflush(stdout);

  Generator gen(run.train.seed);
  std::unique_ptr<models::LanguageModel> model = models::build_model(cfg, gen);

  std::printf("%-48s %-28s %14s\n", "module / parameter", "type / shape", "parameters");
  for (const auto& [name, child] : model->children()) print_tree(*child, name, 0);
  if (cfg.tie_embeddings) {
    std::printf("%-48s %-28s %14s\n", "lm_head", "tied to the embeddings", "0");
  }
  std::printf("\nparameters: %lld\n", static_cast<long long>(model->num_parameters()));
  return 0;
}

std::function<int()> setup_info(CLI::App& cmd) {
  auto config = std::make_shared<std::string>();
  auto overrides = std::make_shared<std::vector<std::string>>();
  cmd.add_option("--config", *config, "Run config (YAML)")->required();
  cmd.add_option("overrides", *overrides, "Overrides a.b.c=value");
  return [config, overrides] { return run_info(*config, *overrides); };
}

RESONA_COMMAND(info, "info", "Print a config's model: settings, module tree, parameter counts",
               setup_info);

}  // namespace
}  // namespace resona::cli
