// Subcommands of the `resona` binary. Each lives in its own file in train/cli/ and
// registers itself:
//
//   RESONA_COMMAND(prepare_data, "prepare-data", "Tokenize a corpus into token shards",
//                  [](CLI::App& cmd) -> std::function<int()> { ...add options...;
//                                                             return [=] { ...; return 0; }; });
//
// The setup function adds the options to `cmd` and returns the action to run once the
// command line has been parsed. Actions return the process exit code: 0 on success,
// 2 for bad input (config, arguments, files), 1 for anything else.
#pragma once

#include <CLI/CLI.hpp>

#include <functional>
#include <string>
#include <vector>

namespace resona::cli {

using Setup = std::function<std::function<int()>(CLI::App&)>;

struct Command {
  std::string name;
  std::string description;
  Setup setup;
};

bool register_command(Command c);
const std::vector<Command>& commands();

}  // namespace resona::cli

#define RESONA_COMMAND(id, name, description, setup) \
  static const bool resona_command_##id = ::resona::cli::register_command({name, description, setup})
