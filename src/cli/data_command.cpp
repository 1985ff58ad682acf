// bamba data prepare: text / JSONL -> token shards for training; bamba data inspect: check and describe shards.
#include <cstdio>

#include "cli/commands.h"
#include "core/error.h"
#include "core/progress.h"
#include "data/data_prepare.h"
#include "data/token_shard.h"
#include "tokenizer/tokenizer.h"

namespace bamba::cli {

namespace {

struct PrepareArgs {
  PrepareOptions o;
  std::string model, tokenizer;
  bool quiet = false;
};

void prepare(PrepareArgs& a) {
  if (a.tokenizer.empty() && a.model.empty()) fail("give --tokenizer FILE or --model DIR");
  Tokenizer tok = Tokenizer::from_file(a.tokenizer.empty() ? a.model + "/tokenizer.json" : a.tokenizer);
  a.o.progress = !a.quiet;
  PrepareSummary s = prepare_token_shards(tok, a.o);
  std::printf("%llu documents, %llu tokens (%llu of text + %llu separators), %s of text, %.2f bytes per token, "
              "%zu shard(s) in %s, %.1fs (%.0f tokens/s)\n",
              (unsigned long long)s.documents, (unsigned long long)s.tokens, (unsigned long long)s.text_tokens,
              (unsigned long long)(s.tokens - s.text_tokens), human_bytes(double(s.text_bytes)).c_str(),
              s.text_tokens ? double(s.text_bytes) / double(s.text_tokens) : 0.0, s.shards.size(), a.o.out_dir.c_str(),
              s.seconds, double(s.text_tokens) / std::max(s.seconds, 1e-9));
  if (s.empty_skipped) std::printf("%llu empty documents skipped\n", (unsigned long long)s.empty_skipped);
}

void inspect(const std::vector<std::string>& paths) {
  for (const std::string& p : paths) {
    TokenShard shard(p);
    shard.check_tokens();
    std::printf("%s: %llu documents, %llu tokens, vocab size %u, separator %s\n", p.c_str(),
                (unsigned long long)shard.n_documents(), (unsigned long long)shard.n_tokens(), shard.vocab_size(),
                shard.separator() == kNoSeparator ? "none" : std::to_string(shard.separator()).c_str());
  }
}

}  // namespace

void register_data(CLI::App& app) {
  CLI::App* data = app.add_subcommand("data", "Training data: prepare, inspect");
  data->require_subcommand(1);

  auto a = std::make_shared<PrepareArgs>();
  CLI::App* cmd = data->add_subcommand("prepare", "Tokenize text / JSONL files into token shards (docs/data.md)");
  cmd->add_option("inputs", a->o.inputs, "Text files (one document each), JSONL files (one per line), folders")
      ->required();
  cmd->add_option("--out,-o", a->o.out_dir, "Folder for the shards and manifest.json")->required();
  auto* m = cmd->add_option("--model,-m", a->model, "Model folder holding tokenizer.json");
  auto* t = cmd->add_option("--tokenizer", a->tokenizer, "A tokenizer.json file");
  m->excludes(t);
  cmd->add_option("--separator", a->o.separator, "Token in front of every document (\"\": none)")
      ->capture_default_str();
  cmd->add_option("--format", a->o.format, "auto (.jsonl is JSONL), text or jsonl")->capture_default_str();
  cmd->add_option("--field", a->o.field, "The JSONL field holding the document")->capture_default_str();
  cmd->add_option("--shard-tokens", a->o.shard_tokens, "Start a new shard after this many tokens")
      ->capture_default_str();
  cmd->add_option("--threads", a->o.threads, "Tokenizing threads (0: all cores)")->capture_default_str();
  cmd->add_flag("--force", a->o.force, "Replace the shards of an earlier run in --out");
  cmd->add_flag("--quiet,-q", a->quiet, "No progress bar");
  cmd->callback([a] { prepare(*a); });

  auto paths = std::make_shared<std::vector<std::string>>();
  CLI::App* ins = data->add_subcommand("inspect", "Check token shards (header, sizes, index, every token)");
  ins->add_option("shards", *paths, "Shard files")->required();
  ins->callback([paths] { inspect(*paths); });
}

}  // namespace bamba::cli
