// bamba: run Bamba-family hybrid (Mamba2 + attention) models from Hugging Face checkpoint folders.
#include <iostream>

#include "cli/commands.h"
#include "core/error.h"

int main(int argc, char** argv) {
  CLI::App app{"bamba: run Bamba-family (Mamba2 + attention) language models from Hugging Face checkpoint folders"};
  app.require_subcommand(1);
  app.set_help_all_flag("--help-all", "Print the help of every command");
  bamba::cli::register_generate(app);
  bamba::cli::register_logits(app);
  bamba::cli::register_tokenize(app);
  bamba::cli::register_serve(app);
  bamba::cli::register_bench_serve(app);
  bamba::cli::register_bench(app);
  bamba::cli::register_bench_matrix(app);
  bamba::cli::register_merge(app);
  bamba::cli::register_eval(app);
  bamba::cli::register_tokenizer(app);
  bamba::cli::register_data(app);
  bamba::cli::register_train(app);
  bamba::cli::register_init(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const bamba::Error& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  } catch (const std::bad_alloc&) {
    std::cerr << "error: out of memory\n";
    return 1;
  } catch (const std::exception& e) {  // e.g. std::filesystem errors, which name the path
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
