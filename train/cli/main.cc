// resona: one binary, one subcommand per stage (see README.md and DESIGN.md).
// `resona --version` prints "resona <source revision>" (train/checkpoint.h:
// build_revision()).
#include <cstdio>
#include <exception>
#include <memory>
#include <string>

#include "core/check.h"
#include "train/checkpoint.h"
#include "train/cli/command.h"

namespace resona::cli {

namespace {
std::vector<Command>& registry() {
  static std::vector<Command> r;
  return r;
}
}  // namespace

bool register_command(Command c) {
  registry().push_back(std::move(c));
  return true;
}

const std::vector<Command>& commands() { return registry(); }

}  // namespace resona::cli

int main(int argc, char** argv) {
  CLI::App app{"resona: train linear recurrent language models with Resona retrieval"};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string("resona ") + resona::train::build_revision(),
                       "print the source revision this binary was built from and exit");
  std::function<int()> action;
  std::vector<std::pair<CLI::App*, std::function<int()>>> actions;
  for (const auto& c : resona::cli::commands()) {
    CLI::App* sub = app.add_subcommand(c.name, c.description);
    actions.emplace_back(sub, nullptr);
    try {
      actions.back().second = c.setup(*sub);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "resona: setting up '%s' failed: %s\n", c.name.c_str(), e.what());
      return 1;
    }
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int rc = app.exit(e);
    return rc == 0 ? 0 : 2;
  }
  for (auto& [sub, act] : actions) {
    if (!sub->parsed()) continue;
    try {
      return act();
    } catch (const resona::Error& e) {
      std::fprintf(stderr, "resona %s: error: %s\n", sub->get_name().c_str(), e.what());
      return 2;
    } catch (const std::exception& e) {
      std::fprintf(stderr, "resona %s: error: %s\n", sub->get_name().c_str(), e.what());
      return 1;
    }
  }
  return 1;
}
