// Task: one evaluation task defined in a YAML file — the subset of lm-evaluation-harness's task config that its
// Open LLM Leaderboard tasks use — turned into requests exactly as lm-eval (v0.4.8) forms them.
//
//   task, include (a base file, then overridden), dataset_path / dataset_name (informative), data_files
//   ({split: file or glob, relative to <data dir>/<dataset_path>}), training_split / validation_split /
//   test_split / fewshot_split, process_docs (a built-in: docs/evaluation.md), description, doc_to_text,
//   doc_to_target, doc_to_choice (a field name, a Jinja template — rendered with StrictUndefined and
//   keep_trailing_newline as lm-eval does — or a literal), target_delimiter, fewshot_delimiter, num_fewshot,
//   fewshot_config {sampler: default | first_n, samples: [...]}, output_type (multiple_choice, loglikelihood,
//   loglikelihood_rolling, generate_until), generation_kwargs {until, max_gen_toks, do_sample, temperature},
//   filter_list, metric_list, process_results (a built-in), metadata {version}.
// A group file has `group:` and `task:` (a list of task names/files) and optional aggregate_metric_list.
// Unknown keys are an error naming the file and key (tag, task_alias, should_decontaminate, dataset_kwargs and
// doc_to_decontamination_query are accepted and ignored: they change nothing lm-eval scores).
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include <nlohmann/json.hpp>


namespace bamba::eval {

using json = nlohmann::ordered_json;
class PyRandom;

struct FilterStep {
  std::string function;  // regex, take_first, remove_whitespace, lowercase, uppercase, strip
  std::string regex_pattern;
  int group_select = 0;
  std::string fallback = "[invalid]";
};
struct FilterPipeline {
  std::string name = "none";
  std::vector<FilterStep> steps;
};
struct MetricSpec {
  std::string metric;  // acc, acc_norm, mc2, exact_match, perplexity, word_perplexity, byte_perplexity, bits_per_byte, ifeval, math
  bool higher_is_better = true;
  bool ignore_case = false, ignore_punctuation = false;
  std::vector<std::string> regexes_to_ignore;
};

struct TaskConfig {
  std::string file;  // where it was read (for errors)
  std::string task, dataset_path, dataset_name;
  json data_files = json::object();
  std::optional<std::string> training_split, validation_split, test_split, fewshot_split;
  std::string process_docs, process_results;
  json description = "";
  json doc_to_text, doc_to_target, doc_to_choice;  // string (field or template), int, or list
  std::string target_delimiter = " ", fewshot_delimiter = "\n\n";
  int num_fewshot = 0;
  std::string sampler = "default";
  json fewshot_samples;  // fewshot_config.samples, or null
  std::string output_type = "multiple_choice";
  std::vector<std::string> until;
  int max_gen_toks = 256;
  std::vector<FilterPipeline> filters;
  std::vector<MetricSpec> metrics;
  json version = 0;
  json raw;  // the merged YAML as JSON (reported under "configs")
};

struct GroupConfig {
  std::string file, group;
  std::vector<std::string> tasks;  // names or file paths
  bool weight_by_size = true;
  std::vector<std::string> aggregate_metrics;  // empty: every metric the subtasks share
};

// Reads a task or group file. Throws Error naming the file and key.
std::variant<TaskConfig, GroupConfig> load_task_file(const std::string& path);

// A document's rendered pieces (lm-eval's doc_to_text/target/choice return str, int or list).
struct Request {
  std::string context, continuation;  // loglikelihood (multiple choice: one per choice)
};

class Task {
 public:
  // Loads the documents (data_dir/<dataset_path>/<data_files[split]>) and applies process_docs.
  Task(TaskConfig cfg, const std::string& data_dir, std::optional<int> num_fewshot, uint64_t fewshot_seed = 1234);

  const TaskConfig& config() const { return cfg_; }
  int num_fewshot() const { return num_fewshot_; }
  const std::vector<json>& eval_docs() const { return eval_docs_; }
  size_t original_size() const { return eval_docs_.size(); }

  // Contexts for the first `limit` documents, in order (the few-shot sampler is stateful: call once).
  std::vector<std::string> build_contexts(size_t limit);
  // The requests of one document: multiple choice gives one per choice; loglikelihood one; rolling one
  // (context "" and the whole text); generate_until one (continuation unused).
  std::vector<Request> requests(const json& doc, const std::string& ctx) const;

  json doc_to_text(const json& doc) const;    // string or integer
  json doc_to_target(const json& doc) const;  // string, integer or list
  std::vector<std::string> doc_to_choice(const json& doc) const;
  bool multiple_input() const { return multiple_input_; }

 private:
  std::string render(const std::string& tpl, const json& doc, const char* what) const;
  json render_field(const json& spec, const json& doc, const char* what, int kind) const;
  std::string fewshot_context(const json& doc);

  TaskConfig cfg_;
  int num_fewshot_;
  std::vector<json> eval_docs_, fewshot_docs_;
  bool multiple_input_ = false;
  // lm-eval's few-shot generator, random.Random(fewshot_seed), advanced once per evaluated document in order.
  std::shared_ptr<PyRandom> rnd_;
};

// The built-in process_docs transforms (hellaswag, winogrande, gpqa, musr, mmlu_pro, math_hard): Error for an unknown name.
std::vector<json> process_docs(const std::string& name, std::vector<json> docs, const std::string& task);

}  // namespace bamba::eval
