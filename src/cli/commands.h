// The subcommands of the `bamba` front end; main.cpp registers each one with CLI11.
#pragma once

namespace CLI {
class App;
}

// `bamba merge CONFIG.yml --out DIR`: MergeKit-style checkpoint merging (src/cli/merge_command.cpp).
void register_merge(CLI::App& app);
