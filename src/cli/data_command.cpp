// bamba data prepare: text / JSONL -> token shards for training; bamba data inspect: check and describe shards.
#include <cstdio>
#include <ctime>
#include <optional>

#include "chat/chat_template.h"
#include "core/mapped_file.h"

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
  std::string model, tokenizer, chat_template;
  bool chat = false, quiet = false;
};

// The chat template of --chat: a Jinja file given with --chat-template, else the model folder's.
ChatTemplate load_chat_template(const PrepareArgs& a) {
  std::optional<ChatTemplate> t;
  if (!a.chat_template.empty()) {
    t = ChatTemplate::parse(read_text_file(a.chat_template), a.chat_template);
    if (!a.model.empty()) {  // bos/eos tokens from the model folder, when there is one
      if (auto m = ChatTemplate::from_model_dir(a.model)) t->bos_token = m->bos_token, t->eos_token = m->eos_token;
    }
  } else {
    if (a.model.empty())
      fail("--chat needs the chat template: give --model DIR (its template) or --chat-template FILE");
    t = ChatTemplate::from_model_dir(a.model);
    if (!t) fail(a.model, ": has no chat template (chat_template.jinja, or chat_template in tokenizer_config.json)");
  }
  t->now = std::time(nullptr);  // one clock for every conversation: strftime_now() renders alike in all prefixes
  return std::move(*t);
}

void prepare(PrepareArgs& a) {
  if (a.tokenizer.empty() && a.model.empty()) fail("give --tokenizer FILE or --model DIR");
  Tokenizer tok = Tokenizer::from_file(a.tokenizer.empty() ? a.model + "/tokenizer.json" : a.tokenizer);
  a.o.progress = !a.quiet;
  std::optional<ChatTemplate> tmpl;
  if (a.chat) {
    tmpl = load_chat_template(a);
    a.o.chat = &*tmpl;
  } else if (!a.chat_template.empty()) {
    fail("--chat-template is for --chat data");
  }
  PrepareSummary s = prepare_token_shards(tok, a.o);
  std::printf("%llu documents, %llu tokens (%llu of text + %llu separators), %s of text, %.2f bytes per token, "
              "%zu shard(s) in %s, %.1fs (%.0f tokens/s)\n",
              (unsigned long long)s.documents, (unsigned long long)s.tokens, (unsigned long long)s.text_tokens,
              (unsigned long long)(s.tokens - s.text_tokens), human_bytes(double(s.text_bytes)).c_str(),
              s.text_tokens ? double(s.text_bytes) / double(s.text_tokens) : 0.0, s.shards.size(), a.o.out_dir.c_str(),
              s.seconds, double(s.text_tokens) / std::max(s.seconds, 1e-9));
  if (a.chat)
    std::printf("chat: %llu conversations, %llu assistant turns; %llu tokens are targets (%.1f%% of the text)\n",
                (unsigned long long)s.documents, (unsigned long long)s.assistant_turns,
                (unsigned long long)s.target_tokens,
                s.text_tokens ? 100.0 * double(s.target_tokens) / double(s.text_tokens) : 0.0);
  if (s.empty_skipped) std::printf("%llu empty documents skipped\n", (unsigned long long)s.empty_skipped);
}

void inspect(const std::vector<std::string>& paths) {
  for (const std::string& p : paths) {
    TokenShard shard(p);
    shard.check_tokens();
    uint64_t targets = 0;
    for (uint8_t m : shard.label_mask()) targets += m;
    std::printf("%s: %llu documents, %llu tokens, vocab size %u, separator %s%s\n", p.c_str(),
                (unsigned long long)shard.n_documents(), (unsigned long long)shard.n_tokens(), shard.vocab_size(),
                shard.separator() == kNoSeparator ? "none" : std::to_string(shard.separator()).c_str(),
                shard.has_label_mask() ? cat(", label mask (", targets, " target tokens)").c_str() : "");
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
  cmd->add_flag("--chat", a->chat,
                "SFT data: JSONL conversations {\"messages\": [...], \"tools\": [...]} rendered with the chat "
                "template, the loss on the assistant's tokens only (a label mask in the shards)");
  cmd->add_option("--chat-template", a->chat_template, "A Jinja chat template file (default: the --model folder's)");
  cmd->add_flag("--force", a->o.force, "Replace the shards of an earlier run in --out");
  cmd->add_flag("--quiet,-q", a->quiet, "No progress bar");
  cmd->callback([a] { prepare(*a); });

  auto paths = std::make_shared<std::vector<std::string>>();
  CLI::App* ins = data->add_subcommand("inspect", "Check token shards (header, sizes, index, every token)");
  ins->add_option("shards", *paths, "Shard files")->required();
  ins->callback([paths] { inspect(*paths); });
}

}  // namespace bamba::cli
