// bamba tokenize / detokenize: the model's tokenizer on stdin. With --jsonl, one JSON string (or id array) per
// line in, one result per line out: batch tokenization for data preparation.
#include <iostream>
#include <iterator>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "cli/common.h"
#include "core/error.h"

namespace bamba::cli {

namespace {
struct TokenizeOptions {
  std::string model, tokenizer;
  bool add_special = false, jsonl = false, skip_special = false;
};

Tokenizer open(const TokenizeOptions& o) {
  if (!o.tokenizer.empty()) return Tokenizer::from_file(o.tokenizer);
  if (!o.model.empty()) return load_tokenizer(o.model);
  fail("give --model DIR or --tokenizer FILE");
}

std::string read_stdin() { return {std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>()}; }

void tokenize(const TokenizeOptions& o) {
  Tokenizer tok = open(o);
  if (!o.jsonl) {
    std::cout << nlohmann::json(tok.encode(read_stdin(), o.add_special)).dump() << "\n";
    return;
  }
  std::string line;
  for (size_t n = 1; std::getline(std::cin, line); ++n) {
    auto j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_discarded() || !j.is_string()) fail("stdin line ", n, ": expected a JSON string");
    std::cout << nlohmann::json(tok.encode(j.get<std::string>(), o.add_special)).dump() << "\n";
  }
}

std::vector<int32_t> to_ids(const nlohmann::json& j, const std::string& where) {
  if (!j.is_array()) fail(where, ": expected a JSON array of token ids");
  std::vector<int32_t> ids;
  for (auto& x : j) {
    if (!x.is_number_integer() || x.get<int64_t>() < 0 || x.get<int64_t>() > INT32_MAX)
      fail(where, ": ", x.dump(), " is not a token id");
    ids.push_back(x.get<int32_t>());
  }
  return ids;
}

void detokenize(const TokenizeOptions& o) {
  Tokenizer tok = open(o);
  if (!o.jsonl) {
    auto j = nlohmann::json::parse(read_stdin(), nullptr, false);
    std::cout << tok.decode(to_ids(j, "stdin"), o.skip_special);
    return;
  }
  std::string line;
  for (size_t n = 1; std::getline(std::cin, line); ++n) {
    std::string where = "stdin line " + std::to_string(n);
    std::cout << nlohmann::json(tok.decode(to_ids(nlohmann::json::parse(line, nullptr, false), where), o.skip_special)).dump()
              << "\n";
  }
}

void add_common(CLI::App* cmd, TokenizeOptions& o) {
  auto* m = cmd->add_option("--model,-m", o.model, "Model folder holding tokenizer.json");
  auto* t = cmd->add_option("--tokenizer", o.tokenizer, "A tokenizer.json file");
  m->excludes(t);
  cmd->add_flag("--jsonl", o.jsonl, "One JSON value per input line, one result per output line");
}
}  // namespace

void register_tokenize(CLI::App& app) {
  auto o = std::make_shared<TokenizeOptions>();
  CLI::App* tok = app.add_subcommand("tokenize", "Text on stdin -> token ids (JSON array)");
  add_common(tok, *o);
  tok->add_flag("--add-special", o->add_special, "Apply the post-processor (adds BOS)");
  tok->callback([o] { tokenize(*o); });

  auto d = std::make_shared<TokenizeOptions>();
  CLI::App* det = app.add_subcommand("detokenize", "Token ids (JSON array) on stdin -> text; with --jsonl, JSON strings");
  add_common(det, *d);
  det->add_flag("--skip-special", d->skip_special, "Leave out special tokens");
  det->callback([d] { detokenize(*d); });
}

}  // namespace bamba::cli
