#include "eval/harness.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "core/error.h"
#include "core/progress.h"
#include "eval/metrics.h"
#include "eval/py_str.h"

namespace bamba::eval {
namespace fs = std::filesystem;

LoglikelihoodRequest encode_pair(const Tokenizer& tok, std::string ctx, std::string cont, bool add_bos,
                                 std::optional<int32_t> eos) {
  LoglikelihoodRequest r;
  if (ctx.empty()) {
    // lm-eval's prefix_token_id: the BOS token, else the end-of-text token.
    std::optional<int32_t> prefix = tok.bos_id() ? tok.bos_id() : eos;
    BAMBA_CHECK(prefix.has_value(), "eval: an empty context needs a BOS or EOS token, and the model has neither");
    r.context = {*prefix};
    r.continuation = tok.encode(cont, add_bos);
    if (add_bos && !r.continuation.empty() && r.continuation[0] == *prefix) r.continuation.erase(r.continuation.begin());
    return r;
  }
  const size_t keep = py::rstrip(ctx).size();
  if (keep < ctx.size()) cont = ctx.substr(keep) + cont, ctx.resize(keep);
  std::vector<int32_t> whole = tok.encode(ctx + cont, add_bos);
  r.context = tok.encode(ctx, add_bos);
  BAMBA_CHECK(r.context.size() < whole.size(), "eval: the continuation ", json(cont).dump(), " encodes to no tokens");
  r.continuation.assign(whole.begin() + int64_t(r.context.size()), whole.end());
  return r;
}

namespace {

// Every *.yaml under dir, indexed by its task or group name.
std::map<std::string, std::string> index_tasks(const std::string& dir) {
  std::map<std::string, std::string> idx;
  if (dir.empty() || !fs::is_directory(dir)) return idx;
  for (const auto& e : fs::recursive_directory_iterator(dir)) {
    if (!e.is_regular_file() || e.path().extension() != ".yaml") continue;
    try {
      auto v = load_task_file(e.path().string());
      const std::string name = std::holds_alternative<TaskConfig>(v) ? std::get<TaskConfig>(v).task : std::get<GroupConfig>(v).group;
      idx.emplace(name, e.path().string());
    } catch (const Error&) {
      // A base file meant for `include:` (no task name): not addressable by name.
    }
  }
  return idx;
}

struct Leaf {
  TaskConfig cfg;
  std::string parent;  // group name, or ""
};

void expand(const std::string& name_or_file, const std::map<std::string, std::string>& idx, const std::string& parent,
            std::vector<Leaf>& leaves, std::vector<GroupConfig>& groups, int depth = 0) {
  BAMBA_CHECK(depth < 6, "eval: groups nested too deeply at ", name_or_file);
  std::string path = name_or_file;
  if (!fs::is_regular_file(path)) {
    auto it = idx.find(name_or_file);
    BAMBA_CHECK(it != idx.end(), "eval: no task or group named '", name_or_file, "' (and no such file); see --tasks-dir");
    path = it->second;
  }
  auto v = load_task_file(path);
  if (auto* t = std::get_if<TaskConfig>(&v)) {
    leaves.push_back({*t, parent});
    return;
  }
  GroupConfig g = std::get<GroupConfig>(v);
  groups.push_back(g);
  for (const std::string& t : g.tasks) {
    const fs::path rel = fs::path(path).parent_path() / t;
    expand(fs::is_regular_file(rel) ? rel.string() : t, idx, g.group, leaves, groups, depth + 1);
  }
}

std::string fmt(double v) {
  char b[32];
  std::snprintf(b, sizeof b, "%.4f", v);
  return b;
}

}  // namespace

void check_tasks(const EvalOptions& opt) {
  const auto idx = index_tasks(opt.tasks_dir);
  std::vector<Leaf> leaves;
  std::vector<GroupConfig> groups;
  for (const std::string& t : opt.tasks) expand(t, idx, "", leaves, groups);
  for (const Leaf& l : leaves) Task(l.cfg, opt.data_dir, opt.num_fewshot, opt.fewshot_seed);
}

json evaluate(ModelRunner& runner, const Tokenizer& tok, const EvalOptions& opt) {
  const auto t_start = std::chrono::steady_clock::now();
  const auto idx = index_tasks(opt.tasks_dir);
  std::vector<Leaf> leaves;
  std::vector<GroupConfig> groups;
  for (const std::string& t : opt.tasks) expand(t, idx, "", leaves, groups);

  json out = {{"results", json::object()}, {"groups", json::object()}, {"group_subtasks", json::object()},
              {"configs", json::object()}, {"versions", json::object()}, {"n-shot", json::object()},
              {"higher_is_better", json::object()}, {"n-samples", json::object()}};
  std::ofstream samples;
  if (!opt.samples_path.empty()) {
    samples.open(opt.samples_path);
    BAMBA_CHECK(samples.good(), "eval: cannot write the sample log ", opt.samples_path);
  }
  std::map<std::string, std::map<std::string, Aggregate>> per_task;  // task -> "metric,filter" -> aggregate
  json timing = json::object();

  for (const Leaf& leaf : leaves) {
    const auto t0 = std::chrono::steady_clock::now();
    const RunnerStats before = runner.stats();
    Task task(leaf.cfg, opt.data_dir, opt.num_fewshot, opt.fewshot_seed);
    const TaskConfig& c = task.config();
    const size_t n = std::min(opt.limit.value_or(task.eval_docs().size()), task.eval_docs().size());
    const std::vector<std::string> ctxs = task.build_contexts(n);
    const std::vector<json>& docs = task.eval_docs();

    std::map<std::string, std::vector<double>> values;
    std::map<std::string, std::vector<std::pair<double, double>>> pairs;
    auto add = [&](const DocScore& s, const std::string& filter) {
      for (auto& [k, v] : s.values) values[k + "," + filter].push_back(v);
      for (auto& [k, v] : s.pairs) pairs[k + "," + filter].push_back(v);
    };
    auto bar_cb = [&](ProgressBar& bar) {
      return [&bar, t0](size_t done, size_t total) {
        const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        char note[64];
        std::snprintf(note, sizeof note, "%zu/%zu requests, %.1f req/s", done, total, secs > 0 ? double(done) / secs : 0.0);
        bar.update(done, note);
      };
    };

    if (c.output_type == "generate_until") {
      std::vector<GenerateRequest> reqs;
      const int32_t max_ctx = runner.options().max_model_len - c.max_gen_toks;
      BAMBA_CHECK(max_ctx > 0, c.task, ": max_gen_toks ", c.max_gen_toks, " leaves no room under --max-model-len");
      for (size_t i = 0; i < n; ++i) {
        GenerateRequest g;
        g.context = tok.encode(ctxs[i], opt.add_bos);
        if (int32_t(g.context.size()) > max_ctx) g.context.erase(g.context.begin(), g.context.end() - max_ctx);
        g.until = c.until;
        g.max_gen_toks = c.max_gen_toks;
        reqs.push_back(std::move(g));
      }
      ProgressBar bar(c.task, reqs.size(), opt.progress, ProgressUnit::Count);
      const std::vector<std::string> resp = runner.generate(reqs, bar_cb(bar));
      bar.finish();
      for (size_t i = 0; i < n; ++i) {
        json filtered = json::object();
        for (const FilterPipeline& f : c.filters) {
          const std::string r = apply_filter(f, resp[i]);
          filtered[f.name] = r;
          add(score_generation(task, docs[i], r), f.name);
        }
        if (samples.is_open())
          samples << json({{"task", c.task}, {"doc_id", i}, {"doc", docs[i]}, {"arguments", {{"context", ctxs[i]}}},
                           {"resps", resp[i]}, {"filtered_resps", filtered}, {"target", task.doc_to_target(docs[i])}})
                         .dump()
                  << "\n";
      }
    } else {
      std::vector<LoglikelihoodRequest> reqs;
      std::vector<std::vector<Request>> per_doc(n);
      std::vector<size_t> first(n + 1, 0);
      for (size_t i = 0; i < n; ++i) {
        per_doc[i] = task.requests(docs[i], ctxs[i]);
        first[i] = reqs.size();
        for (const Request& r : per_doc[i]) {
          if (c.output_type == "loglikelihood_rolling") {
            // lm-eval's rolling windows: [prefix] + tokens, scored in windows of max_model_len with context 1.
            const auto& eos = runner.options().eos;
            LoglikelihoodRequest whole = encode_pair(tok, "", r.continuation, opt.add_bos,
                                                     eos.empty() ? std::nullopt : std::optional<int32_t>(eos[0]));
            const std::vector<int32_t>& t = whole.continuation;
            const size_t L = size_t(runner.options().max_model_len);
            size_t pred = std::min(L, t.size());
            BAMBA_CHECK(pred > 0, c.task, ": document ", i, " has no tokens to score");
            reqs.push_back({whole.context, std::vector<int32_t>(t.begin(), t.begin() + int64_t(pred))});
            while (pred < t.size()) {
              const size_t wlen = std::min(t.size() - pred, L), end = pred + wlen;
              // make_disjoint_window: context = the L - wlen + 1 tokens before the window's predictions.
              const size_t ctx_begin = end > L + 1 ? end - L - 1 : 0;
              reqs.push_back({std::vector<int32_t>(t.begin() + int64_t(ctx_begin), t.begin() + int64_t(pred)),
                              std::vector<int32_t>(t.begin() + int64_t(pred), t.begin() + int64_t(end))});
              pred = end;
            }
          } else {
            reqs.push_back(encode_pair(tok, r.context, r.continuation, opt.add_bos));
          }
        }
      }
      first[n] = reqs.size();
      // Left-truncate contexts that overflow the model length, as lm-eval does.
      for (LoglikelihoodRequest& r : reqs) {
        const size_t L = size_t(runner.options().max_model_len) + 1;
        BAMBA_CHECK(r.continuation.size() < L, c.task, ": a continuation of ", r.continuation.size(),
                    " tokens does not fit --max-model-len");
        if (r.context.size() + r.continuation.size() > L)
          r.context.erase(r.context.begin(), r.context.begin() + int64_t(r.context.size() + r.continuation.size() - L));
      }
      ProgressBar bar(c.task, reqs.size(), opt.progress, ProgressUnit::Count);
      const std::vector<LoglikelihoodResult> res = runner.loglikelihood(reqs, bar_cb(bar));
      bar.finish();
      for (size_t i = 0; i < n; ++i) {
        std::vector<ChoiceScore> lls;
        for (size_t k = first[i]; k < first[i + 1]; ++k) lls.push_back({res[k].logprob, res[k].is_greedy});
        DocScore s;
        if (c.output_type == "multiple_choice") s = score_multiple_choice(task, docs[i], lls);
        else if (c.output_type == "loglikelihood") s = score_loglikelihood(task, lls.at(0));
        else {
          double total = 0;
          for (const ChoiceScore& x : lls) total += x.logprob;
          s = score_rolling(task, docs[i], total);
        }
        add(s, "none");
        if (samples.is_open()) {
          json args = json::array(), resps = json::array();
          for (const Request& r : per_doc[i]) args.push_back({r.context, r.continuation});
          for (const ChoiceScore& x : lls) resps.push_back({x.logprob, x.is_greedy});
          json m = json::object();
          for (auto& [k, v] : s.values) m[k] = v;
          samples << json({{"task", c.task}, {"doc_id", i}, {"doc", docs[i]}, {"target", task.doc_to_target(docs[i])},
                           {"arguments", args}, {"resps", resps}, {"metrics", m}})
                         .dump()
                  << "\n";
        }
      }
    }

    json r = {{"alias", leaf.parent.empty() ? c.task : " - " + c.task}};
    json hib = json::object();
    for (const MetricSpec& m : c.metrics) hib[m.metric] = m.higher_is_better;
    for (auto& [key, v] : values) {
      const std::string metric = key.substr(0, key.find(','));
      const Aggregate a = aggregate(metric, v);
      per_task[c.task][key] = a;
      r[key] = a.value;
      r[metric + "_stderr" + key.substr(key.find(','))] = a.stderr_ >= 0 ? json(a.stderr_) : json("N/A");
      if (!hib.contains(metric)) hib[metric] = true;
    }
    for (auto& [key, v] : pairs) {
      const std::string metric = key.substr(0, key.find(','));
      const Aggregate a = aggregate_pairs(metric, v);
      per_task[c.task][key] = a;
      r[key] = a.value;
      r[metric + "_stderr" + key.substr(key.find(','))] = "N/A";
    }
    out["results"][c.task] = r;
    out["configs"][c.task] = c.raw;
    out["versions"][c.task] = c.version;
    out["n-shot"][c.task] = task.num_fewshot();
    out["higher_is_better"][c.task] = hib;
    out["n-samples"][c.task] = {{"original", task.eval_docs().size()}, {"effective", n}};
    const RunnerStats& after = runner.stats();
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    timing[c.task] = {{"seconds", secs}, {"tokens_fed", after.tokens_fed - before.tokens_fed},
                      {"tokens_requested", after.tokens_requested - before.tokens_requested},
                      {"forks", after.forks - before.forks}, {"steps", after.steps - before.steps}};
  }

  // Groups, innermost first (their members are tasks or groups already aggregated).
  for (auto g = groups.rbegin(); g != groups.rend(); ++g) {
    std::vector<std::string> members;
    for (const Leaf& l : leaves)
      if (l.parent == g->group) members.push_back(l.cfg.task);
    for (const GroupConfig& sub : groups)
      if (std::find(g->tasks.begin(), g->tasks.end(), sub.group) != g->tasks.end()) members.push_back(sub.group);
    std::set<std::string> keys;
    for (const std::string& m : members)
      for (auto& [k, a] : per_task[m]) keys.insert(k);
    json r = {{"alias", g->group}};
    for (const std::string& k : keys) {
      const std::string metric = k.substr(0, k.find(','));
      if (!g->aggregate_metrics.empty() &&
          std::find(g->aggregate_metrics.begin(), g->aggregate_metrics.end(), metric) == g->aggregate_metrics.end())
        continue;
      std::vector<Aggregate> parts;
      for (const std::string& m : members)
        if (per_task[m].count(k)) parts.push_back(per_task[m][k]);
      if (parts.size() != members.size()) continue;  // a metric not every member has
      const Aggregate a = aggregate_group(parts, g->weight_by_size);
      per_task[g->group][k] = a;
      r[k] = a.value;
      r[metric + "_stderr" + k.substr(k.find(','))] = a.stderr_ >= 0 ? json(a.stderr_) : json("N/A");
    }
    out["groups"][g->group] = r;
    out["group_subtasks"][g->group] = members;
  }
  const RunnerStats& st = runner.stats();
  out["config"] = {{"model", "bamba"}, {"model_args", opt.model_name}, {"num_fewshot", opt.num_fewshot ? json(*opt.num_fewshot) : json(nullptr)},
                   {"limit", opt.limit ? json(*opt.limit) : json(nullptr)}, {"add_bos", opt.add_bos},
                   {"fewshot_seed", opt.fewshot_seed}, {"max_model_len", runner.options().max_model_len},
                   {"share_prefixes", runner.options().share}};
  out["bamba"] = {{"tasks", timing}, {"tokens_fed", st.tokens_fed}, {"tokens_requested", st.tokens_requested},
                  {"forks", st.forks}, {"steps", st.steps},
                  {"seconds", std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count()}};
  return out;
}

std::string results_table(const json& res) {
  std::ostringstream s;
  s << "|Tasks|Version|Filter|n-shot|Metric| |Value| |Stderr|\n|---|---|---|---|---|---|---:|---|---:|\n";
  auto rows = [&](const json& block, bool group) {
    for (auto& [name, r] : block.items()) {
      bool first = true;
      for (auto& [key, v] : r.items()) {
        if (key == "alias" || key.find("_stderr,") != std::string::npos || !v.is_number()) continue;
        const std::string metric = key.substr(0, key.find(',')), filter = key.substr(key.find(',') + 1);
        const std::string se_key = metric + "_stderr," + filter;
        const json& se = r.contains(se_key) ? r[se_key] : json("N/A");
        bool hib = true;
        if (!group && res["higher_is_better"].contains(name) && res["higher_is_better"][name].contains(metric))
          hib = res["higher_is_better"][name][metric];
        s << "|" << (first ? r.value("alias", name) : "") << "|"
          << (first && !group && res["versions"].contains(name) ? res["versions"][name].dump() : "") << "|" << filter
          << "|" << (first && !group && res["n-shot"].contains(name) ? res["n-shot"][name].dump() : "") << "|" << metric
          << "|" << (hib ? "↑" : "↓") << "|" << fmt(v.get<double>()) << "|±|"
          << (se.is_number() ? fmt(se.get<double>()) : "N/A") << "|\n";
        first = false;
      }
    }
  };
  rows(res["results"], false);
  if (!res["groups"].empty()) {
    s << "\n|Groups|Version|Filter|n-shot|Metric| |Value| |Stderr|\n|---|---|---|---|---|---|---:|---|---:|\n";
    rows(res["groups"], true);
  }
  return s.str();
}

std::string leaderboard_v2_table(const json& res) {
  // (docs/evaluation.md §4; the bounds as the Open LLM Leaderboard and Bamba's normalizations.py use them)
  static const std::map<std::string, int> bbh_choices = {
      {"sports_understanding", 2}, {"tracking_shuffled_objects_three_objects", 3}, {"navigate", 2}, {"snarks", 2},
      {"date_understanding", 6}, {"reasoning_about_colored_objects", 18}, {"object_counting", 19},
      {"logical_deduction_seven_objects", 7}, {"geometric_shapes", 11}, {"web_of_lies", 2},
      {"movie_recommendation", 6}, {"logical_deduction_five_objects", 5}, {"salient_translation_error_detection", 6},
      {"disambiguation_qa", 3}, {"temporal_sequences", 4}, {"hyperbaton", 2}, {"logical_deduction_three_objects", 3},
      {"causal_judgement", 2}, {"formal_fallacies", 2}, {"tracking_shuffled_objects_seven_objects", 7},
      {"ruin_names", 6}, {"penguins_in_a_table", 5}, {"boolean_expressions", 2},
      {"tracking_shuffled_objects_five_objects", 5}};
  static const std::map<std::string, int> musr_choices = {
      {"murder_mysteries", 2}, {"object_placements", 5}, {"team_allocation", 3}};
  const json& r = res["results"];
  const json& g = res["groups"];
  auto get = [](const json& block, const std::string& name, const std::string& key) -> std::optional<double> {
    if (block.contains(name) && block[name].contains(key) && block[name][key].is_number()) return block[name][key].get<double>();
    return std::nullopt;
  };
  std::vector<std::pair<std::string, double>> scores;
  auto mean_of = [&](const std::string& prefix, const std::map<std::string, int>& nc, const char* key) -> std::optional<double> {
    double s = 0;
    for (auto& [sub, k] : nc) {
      auto v = get(r, prefix + sub, key);
      if (!v) return std::nullopt;
      s += leaderboard_normalize(*v, 1.0 / k);
    }
    return s / double(nc.size());
  };
  if (auto v = get(r, "leaderboard_mmlu_pro", "acc,none")) scores.push_back({"MMLU-PRO", leaderboard_normalize(*v, 0.1)});
  if (auto v = mean_of("leaderboard_bbh_", bbh_choices, "acc_norm,none")) scores.push_back({"BBH", *v});
  if (auto v = get(g, "leaderboard_gpqa", "acc_norm,none")) scores.push_back({"GPQA", leaderboard_normalize(*v, 0.25)});
  auto is = get(r, "leaderboard_ifeval", "inst_level_strict_acc,none"), ps = get(r, "leaderboard_ifeval", "prompt_level_strict_acc,none");
  if (is && ps) scores.push_back({"IFEval", (*is + *ps) / 2 * 100});
  if (auto v = get(g, "leaderboard_math_hard", "exact_match,none")) scores.push_back({"MATH Lvl 5", *v * 100});
  if (auto v = mean_of("leaderboard_musr_", musr_choices, "acc_norm,none")) scores.push_back({"MuSR", *v});
  if (scores.empty()) return "";
  std::ostringstream s;
  s << "|Open LLM Leaderboard v2 (normalized)|Score|\n|---|---:|\n";
  double sum = 0;
  for (auto& [name, v] : scores) {
    char b[32];
    std::snprintf(b, sizeof b, "%.2f", v);
    s << "|" << name << "|" << b << "|\n";
    sum += v;
  }
  if (scores.size() == 6) {
    char b[32];
    std::snprintf(b, sizeof b, "%.2f", sum / 6);
    s << "|**Average**|" << b << "|\n";
  }
  return s.str();
}

}  // namespace bamba::eval
