#include "eval/metrics.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "eval/ifeval.h"
#include "eval/math_answer.h"
#include "eval/py_re.h"
#include "eval/py_str.h"

namespace bamba::eval {
namespace {

bool wants(const Task& t, const char* metric) {
  for (const MetricSpec& m : t.config().metrics)
    if (m.metric == metric) return true;
  return false;
}

// lm-eval's gold: an int index, or a string looked up among the choices (-100 when out of range / absent).
int64_t gold_index(const json& gold, const std::vector<std::string>& choices) {
  if (gold.is_number_integer()) return gold.get<int64_t>() < int64_t(choices.size()) ? gold.get<int64_t>() : -100;
  if (gold.is_string()) {
    auto it = std::find(choices.begin(), choices.end(), gold.get<std::string>());
    return it == choices.end() ? -100 : int64_t(it - choices.begin());
  }
  return -100;
}

std::string as_text(const json& v) { return v.is_string() ? v.get<std::string>() : v.dump(); }

}  // namespace

DocScore score_multiple_choice(const Task& task, const json& doc, const std::vector<ChoiceScore>& lls) {
  DocScore s;
  if (task.config().process_results == "truthfulqa_mc2") {
    // Everything before the first 0 label is true; p = exp(ll) renormalised over all choices.
    const json& labels = doc.at("mc2_targets").at("labels");
    size_t split = 0;
    while (split < labels.size() && labels[split].get<int>() != 0) ++split;
    BAMBA_CHECK(labels.size() == lls.size(), task.config().task, ": mc2_targets.labels and choices differ in length");
    double t = 0, all = 0;
    for (size_t i = 0; i < lls.size(); ++i) {
      const double p = std::exp(lls[i].logprob);
      all += p;
      if (i < split) t += p;
    }
    s.values.push_back({"acc", t / all});
    return s;
  }
  BAMBA_CHECK(task.config().process_results.empty(), task.config().task, ": unknown process_results '",
              task.config().process_results, "' for multiple_choice (built-in: truthfulqa_mc2)");
  const std::vector<std::string> choices = task.doc_to_choice(doc);
  BAMBA_CHECK(choices.size() == lls.size(), "internal: choice count mismatch");
  size_t pred = 0, pred_norm = 0;
  for (size_t i = 1; i < lls.size(); ++i) {  // np.argmax: the first maximum wins ties
    if (lls[i].logprob > lls[pred].logprob) pred = i;
    const double a = lls[i].logprob / double(py::code_point_count(choices[i]));
    const double b = lls[pred_norm].logprob / double(py::code_point_count(choices[pred_norm]));
    if (a > b) pred_norm = i;
  }
  const json gold_v = task.multiple_input() ? task.doc_to_text(doc) : task.doc_to_target(doc);
  if (gold_v.is_array()) {  // multiple targets: right if the prediction is any of them
    bool acc = false, norm = false, em = false;
    for (const json& g : gold_v) {
      const int64_t gi = gold_index(g, choices);
      acc = acc || gi == int64_t(pred);
      norm = norm || gi == int64_t(pred_norm);
      em = em || (gi >= 0 && lls[size_t(gi)].is_greedy);
    }
    if (wants(task, "acc")) s.values.push_back({"acc", acc});
    if (wants(task, "acc_norm")) s.values.push_back({"acc_norm", norm});
    if (wants(task, "exact_match")) s.values.push_back({"exact_match", em});
    return s;
  }
  const int64_t gold = gold_index(gold_v, choices);
  if (wants(task, "acc")) s.values.push_back({"acc", gold == int64_t(pred)});
  if (wants(task, "acc_norm")) s.values.push_back({"acc_norm", gold == int64_t(pred_norm)});
  if (wants(task, "exact_match")) s.values.push_back({"exact_match", gold >= 0 && lls[size_t(gold)].is_greedy});
  return s;
}

DocScore score_loglikelihood(const Task& task, const ChoiceScore& ll) {
  DocScore s;
  if (wants(task, "perplexity")) s.values.push_back({"perplexity", ll.logprob});
  if (wants(task, "acc")) s.values.push_back({"acc", ll.is_greedy});
  return s;
}

DocScore score_rolling(const Task& task, const json& doc, double ll) {
  const std::string text = as_text(task.doc_to_target(doc));
  static const PyRegex ws("\\s+", PyRegex::kNone, "word count");
  const double words = double(ws.split(text).size()), bytes = double(text.size());  // len(re.split(r"\s+", doc))
  DocScore s;
  if (wants(task, "word_perplexity")) s.pairs.push_back({"word_perplexity", {ll, words}});
  if (wants(task, "byte_perplexity")) s.pairs.push_back({"byte_perplexity", {ll, bytes}});
  if (wants(task, "bits_per_byte")) s.pairs.push_back({"bits_per_byte", {ll, bytes}});
  return s;
}

bool exact_match(std::string p, std::string r, const MetricSpec& m) {
  for (const std::string& re : m.regexes_to_ignore) {
    const PyRegex x(re, PyRegex::kNone, "regexes_to_ignore '" + re + "'");
    p = x.sub(p, ""), r = x.sub(r, "");
  }
  if (m.ignore_case) p = py::lower(p), r = py::lower(r);
  if (m.ignore_punctuation) {
    auto drop = [](std::string s) {
      static const std::string punct = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~";  // string.punctuation
      s.erase(std::remove_if(s.begin(), s.end(), [](char c) { return punct.find(c) != std::string::npos; }), s.end());
      return s;
    };
    p = drop(p), r = drop(r);
  }
  return p == r;
}

DocScore score_generation(const Task& task, const json& doc, const std::string& filtered) {
  DocScore s;
  const std::string& pr = task.config().process_results;
  if (pr == "ifeval") {
    const IfevalOutcome o = ifeval_score(doc, filtered);
    s.values.push_back({"prompt_level_strict_acc", o.prompt_strict});
    s.values.push_back({"prompt_level_loose_acc", o.prompt_loose});
    // Instruction-level metrics are means over all instructions of all prompts: kept as one value per
    // instruction, flattened by the harness ("inst_level_*" with several values per document).
    for (bool b : o.inst_strict) s.values.push_back({"inst_level_strict_acc", b});
    for (bool b : o.inst_loose) s.values.push_back({"inst_level_loose_acc", b});
    return s;
  }
  if (pr == "minerva_math") {
    const std::string cand = math_candidate_answer(filtered), gold = math_gold_answer(as_text(doc.at("solution")));
    s.values.push_back({"exact_match", math_answers_equal(cand, gold)});
    return s;
  }
  BAMBA_CHECK(pr.empty(), task.config().task, ": unknown process_results '", pr, "' (built-ins: truthfulqa_mc2, ifeval, minerva_math)");
  json gold = task.doc_to_target(doc);
  if (!task.config().doc_to_choice.is_null()) gold = task.doc_to_choice(doc).at(size_t(gold.get<int64_t>()));
  for (const MetricSpec& m : task.config().metrics) {
    BAMBA_CHECK(m.metric == "exact_match", task.config().task, ": metric '", m.metric, "' is not supported for generate_until");
    bool hit = false;
    if (gold.is_array()) for (const json& g : gold) hit = hit || exact_match(filtered, as_text(g), m);
    else hit = exact_match(filtered, as_text(gold), m);
    s.values.push_back({"exact_match", hit});
  }
  return s;
}

std::string apply_filter(const FilterPipeline& f, const std::string& response) {
  std::string r = response;
  for (const FilterStep& st : f.steps) {
    if (st.function == "regex") {
      const PyRegex re(st.regex_pattern, PyRegex::kNone, "filter " + f.name + " regex");
      const auto ms = re.finditer(r);
      if (ms.empty()) {
        r = st.fallback;
        continue;
      }
      const int64_t n = int64_t(ms.size());
      const int64_t k = st.group_select < 0 ? n + st.group_select : st.group_select;
      BAMBA_CHECK(k >= 0 && k < n, "filter ", f.name, ": group_select ", st.group_select, " out of range");
      const PyRegex::Match& m = ms[size_t(k)];
      // re.findall: the whole match without groups, group 1 with one, else the first non-empty group.
      std::string_view v;
      if (m.groups.size() <= 1) v = m.groups[0];
      else if (m.groups.size() == 2) v = m.groups[1];
      else {
        bool found = false;
        for (size_t g = 1; g < m.groups.size() && !found; ++g)
          if (!m.groups[g].empty()) v = m.groups[g], found = true;
        if (!found) {
          r = st.fallback;
          continue;
        }
      }
      r = std::string(py::strip(v));
    } else if (st.function == "strip") {
      r = std::string(py::strip(r));
    } else if (st.function == "remove_whitespace") {
      r = std::string(py::lstrip(r));  // lm-eval's WhitespaceFilter removes leading whitespace
    } else if (st.function == "lowercase") {
      r = py::lower(r);
    } else if (st.function == "uppercase") {
      for (char& c : r) c = char(std::toupper(static_cast<unsigned char>(c)));
    }  // take_first: one response per request already
  }
  return r;
}

Aggregate aggregate(const std::string& metric, const std::vector<double>& v) {
  Aggregate a;
  a.n = v.size();
  if (v.empty()) return a;
  double mean = 0;
  for (double x : v) mean += x;
  mean /= double(v.size());
  if (metric == "perplexity") {
    a.value = std::exp(-mean);
    return a;
  }
  a.value = mean;
  if (v.size() > 1) {
    double ss = 0;
    for (double x : v) ss += (x - mean) * (x - mean);
    a.stderr_ = std::sqrt(ss / double(v.size() - 1)) / std::sqrt(double(v.size()));
  }
  return a;
}

Aggregate aggregate_pairs(const std::string& metric, const std::vector<std::pair<double, double>>& p) {
  Aggregate a;
  a.n = p.size();
  double ll = 0, count = 0;
  for (auto& [l, c] : p) ll += l, count += c;
  if (count <= 0) return a;
  a.value = metric == "bits_per_byte" ? -ll / count / std::log(2.0) : std::exp(-ll / count);
  return a;
}

Aggregate aggregate_group(const std::vector<Aggregate>& parts, bool weight_by_size) {
  Aggregate g;
  double w = 0, var = 0;
  size_t n = 0;
  bool have_stderr = true;
  for (const Aggregate& p : parts) {
    const double wi = weight_by_size ? double(p.n) : 1.0;
    g.value += wi * p.value;
    w += wi;
    n += p.n;
    have_stderr = have_stderr && p.stderr_ >= 0;
    var += (double(p.n) - 1) * p.stderr_ * p.stderr_ * double(p.n);
  }
  g.n = n;
  if (w > 0) g.value /= w;
  if (have_stderr && n > parts.size()) g.stderr_ = std::sqrt(var / double(n - parts.size()) / double(n));
  return g;
}

double leaderboard_normalize(double value, double lower) {
  if (value < lower) return 0;
  return (value - lower) / (1.0 - lower) * 100.0;
}

}  // namespace bamba::eval
