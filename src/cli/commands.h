// One function per subcommand: each adds itself (options, --help, callback) to the app.
#pragma once
#include <CLI/CLI.hpp>

namespace bamba::cli {

void register_bench(CLI::App& app);

}  // namespace bamba::cli
