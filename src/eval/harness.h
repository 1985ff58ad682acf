// Harness: `bamba eval` — tasks (and groups) by name or file, their requests tokenized by lm-eval's rules and run
// through a ModelRunner, scored, aggregated and written in lm-eval's results layout.
//
// Tokenization (lm-eval's TemplateLM._encode_pair): the context's trailing whitespace moves to the front of the
// continuation; continuation tokens = encode(context + continuation)[len(encode(context)):]; an empty context is
// the prefix token (BOS, else the first EOS). Special tokens are added only with --add-bos (lm-eval's HF model
// before v0.4.10 added none; Bamba's published scores were made that way).
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "eval/model_runner.h"
#include "eval/task.h"

namespace bamba::eval {

struct EvalOptions {
  std::vector<std::string> tasks;  // task or group names (looked up in tasks_dir) or YAML paths
  std::string tasks_dir;
  std::string data_dir;
  std::optional<int> num_fewshot;
  std::optional<size_t> limit;  // first N documents of each task
  bool add_bos = false;
  uint64_t fewshot_seed = 1234;
  std::string samples_path;  // write the per-sample log here (JSONL), if set
  bool progress = true;
  std::string model_name;
};

// Resolves every task and group and reads their data (Error naming what is missing): before a model is loaded.
void check_tasks(const EvalOptions& opt);

// Runs the tasks and returns lm-eval's results JSON ("results", "groups", "group_subtasks", "configs",
// "versions", "n-shot", "higher_is_better", "n-samples", "config"), plus "bamba" (requests, tokens, timings).
json evaluate(ModelRunner& runner, const Tokenizer& tok, const EvalOptions& opt);

// lm-eval's make_table layout (| Tasks | Version | Filter | n-shot | Metric | | Value | | Stderr |) as Markdown.
std::string results_table(const json& results);
// The Open LLM Leaderboard v2 scores (normalized 0-100, docs/evaluation.md) of the leaderboard_* tasks present,
// and their average when all six are: a Markdown table, or "" when none is present.
std::string leaderboard_v2_table(const json& results);

// lm-eval's request tokens for (context, continuation); an empty context becomes the BOS token, else `eos`.
LoglikelihoodRequest encode_pair(const Tokenizer& tok, std::string context, std::string continuation, bool add_bos,
                                 std::optional<int32_t> eos = std::nullopt);

}  // namespace bamba::eval
