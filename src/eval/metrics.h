// Scoring as lm-eval (v0.4.8) scores: per-document metric values from the model's answers (process_results),
// response filters (filter_list), and aggregation with standard errors.
#pragma once
#include <string>
#include <vector>

#include "eval/task.h"

namespace bamba::eval {

struct ChoiceScore {
  double logprob = 0;
  bool is_greedy = false;
};

// One document's metric values: name -> value; the perplexity family keeps (loglikelihood, count) pairs.
struct DocScore {
  std::vector<std::pair<std::string, double>> values;
  std::vector<std::pair<std::string, std::pair<double, double>>> pairs;
};

// multiple_choice: acc, acc_norm (log-likelihood / choice length in code points), exact_match (greedy gold);
// process_results truthfulqa_mc2 gives acc = the true answers' share of probability.
DocScore score_multiple_choice(const Task& task, const json& doc, const std::vector<ChoiceScore>& lls);
DocScore score_loglikelihood(const Task& task, const ChoiceScore& ll);
DocScore score_rolling(const Task& task, const json& doc, double loglikelihood);
// generate_until, after `filtered` = the response through one filter pipeline.
DocScore score_generation(const Task& task, const json& doc, const std::string& filtered);

// filter_list pipeline on one response (regex with group_select and fallback, take_first, strip, case).
std::string apply_filter(const FilterPipeline& f, const std::string& response);

// HF evaluate's exact_match with lm-eval's options (regexes_to_ignore applied to both sides, then case and
// punctuation).
bool exact_match(std::string prediction, std::string reference, const MetricSpec& m);

// Aggregation: value and standard error as lm-eval reports them (mean: sample stddev / sqrt(n); perplexity:
// exp(-mean); word/byte perplexity: exp(-Σll / Σcount); bits_per_byte: -Σll / Σbytes / ln 2; these have no
// stderr, reported as "N/A").
struct Aggregate {
  double value = 0;
  double stderr_ = -1;  // < 0: N/A
  size_t n = 0;
};
Aggregate aggregate(const std::string& metric, const std::vector<double>& values);
Aggregate aggregate_pairs(const std::string& metric, const std::vector<std::pair<double, double>>& pairs);
// A group's value: the size-weighted mean (or plain mean) of its subtasks, and lm-eval's pooled stderr.
Aggregate aggregate_group(const std::vector<Aggregate>& parts, bool weight_by_size);

// Open LLM Leaderboard v2: (value - lower) / (1 - lower) clipped at 0, times 100 (lower = 1 / num_choices).
double leaderboard_normalize(double value, double lower_bound);

}  // namespace bamba::eval
