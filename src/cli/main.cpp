// Stand-in front end of the merge branch, so that `bamba merge` runs end to end; the real main.cpp registers
// every subcommand the same way.
#include <CLI/CLI.hpp>

#include "cli/commands.h"

int main(int argc, char** argv) {
  CLI::App app{"bamba: Bamba (Mamba2 + attention) language models from Hugging Face checkpoint folders"};
  app.require_subcommand(1);
  register_merge(app);
  CLI11_PARSE(app, argc, argv);
  return 0;
}
