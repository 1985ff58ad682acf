// One function per subcommand: each adds itself (options, --help, callback) to the app.
#pragma once
#include <CLI/CLI.hpp>

namespace bamba::cli {

void register_generate(CLI::App& app);
void register_logits(CLI::App& app);
void register_tokenize(CLI::App& app);  // tokenize and detokenize
void register_serve(CLI::App& app);
void register_bench_serve(CLI::App& app);
void register_bench(CLI::App& app);
void register_bench_matrix(CLI::App& app);  // hybrid vs transformer: bench + serve + bench-serve per cell
void register_merge(CLI::App& app);
void register_eval(CLI::App& app);
void register_tokenizer(CLI::App& app);  // tokenizer train
void register_data(CLI::App& app);       // data prepare, data inspect
void register_train(CLI::App& app);
void register_init(CLI::App& app);       // a preset shape with generated weights as an HF folder

}  // namespace bamba::cli
