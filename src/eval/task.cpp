#include "eval/task.h"

#include <glob.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <filesystem>
#include <regex>

#include "chat/jinja.h"
#include "core/error.h"
#include "eval/py_random.h"
#include "eval/python_literal.h"
#include "io/records.h"

namespace bamba::eval {
namespace fs = std::filesystem;

namespace {

// ---- YAML -> JSON, with YAML 1.1's plain-scalar types (what PyYAML's safe_load gives lm-eval).
json to_json(const YAML::Node& n, const std::string& file) {
  switch (n.Type()) {
    case YAML::NodeType::Null: return nullptr;
    case YAML::NodeType::Sequence: {
      json a = json::array();
      for (const auto& c : n) a.push_back(to_json(c, file));
      return a;
    }
    case YAML::NodeType::Map: {
      json o = json::object();
      for (const auto& kv : n) o[kv.first.as<std::string>()] = to_json(kv.second, file);
      return o;
    }
    case YAML::NodeType::Scalar: {
      const std::string s = n.Scalar();
      if (n.Tag() == "!function")
        throw Error(file + ":" + std::to_string(n.Mark().line + 1) + ": !function " + s +
                    " is Python code; use one of bamba's built-ins by name (docs/evaluation.md)");
      if (n.Tag() == "!") return s;  // quoted
      if (s == "null" || s == "Null" || s == "NULL" || s == "~" || s.empty()) return nullptr;
      if (s == "true" || s == "True" || s == "TRUE") return true;
      if (s == "false" || s == "False" || s == "FALSE") return false;
      static const std::regex int_re("[-+]?[0-9]+"), float_re("[-+]?([0-9]+\\.[0-9]*|\\.[0-9]+)([eE][-+]?[0-9]+)?");
      if (std::regex_match(s, int_re)) return std::stoll(s);
      if (std::regex_match(s, float_re)) return std::stod(s);
      return s;
    }
    default: return nullptr;
  }
}

json read_yaml(const std::string& path) {
  YAML::Node root;
  try {
    root = YAML::LoadFile(path);
  } catch (const YAML::BadFile&) {
    throw Error("cannot read task file " + path);
  } catch (const YAML::Exception& e) {
    throw Error(path + ":" + std::to_string(e.mark.line + 1) + ": invalid YAML: " + e.msg);
  }
  BAMBA_CHECK(root.IsMap(), path, ": a task file must be a mapping");
  return to_json(root, path);
}

// `include:` chains, base first, the including file's keys on top.
json read_with_includes(const std::string& path, int depth = 0) {
  BAMBA_CHECK(depth < 8, path, ": include chain too deep");
  json j = read_yaml(path);
  if (j.contains("include")) {
    BAMBA_CHECK(j["include"].is_string(), path, ": include must be a file name");
    json base = read_with_includes((fs::path(path).parent_path() / j["include"].get<std::string>()).string(), depth + 1);
    j.erase("include");
    for (auto& [k, v] : j.items()) base[k] = v;
    return base;
  }
  return j;
}

std::string str_field(const json& j, const char* key, const std::string& file) {
  const json& v = j.at(key);
  BAMBA_CHECK(v.is_string(), file, ": ", key, " must be a string");
  return v.get<std::string>();
}

std::optional<std::string> opt_str(const json& j, const char* key, const std::string& file) {
  if (!j.contains(key) || j[key].is_null()) return std::nullopt;
  return str_field(j, key, file);
}

TaskConfig parse_task(const json& j, const std::string& file) {
  static const char* known[] = {"task", "dataset_path", "dataset_name", "data_files", "training_split",
                                "validation_split", "test_split", "fewshot_split", "process_docs", "process_results",
                                "description", "doc_to_text", "doc_to_target", "doc_to_choice", "target_delimiter",
                                "fewshot_delimiter", "num_fewshot", "fewshot_config", "output_type",
                                "generation_kwargs", "filter_list", "metric_list", "metadata", "repeats",
                                // accepted, change nothing lm-eval scores:
                                "tag", "task_alias", "should_decontaminate", "doc_to_decontamination_query",
                                "dataset_kwargs"};
  for (const auto& item : j.items()) {
    const std::string& k = item.key();  // (clang 14 cannot capture a structured binding in the lambda)
    BAMBA_CHECK(std::find_if(std::begin(known), std::end(known), [&](const char* s) { return k == s; }) != std::end(known),
                file, ": unknown key '", k, "'");
  }
  TaskConfig c;
  c.file = file;
  c.raw = j;
  BAMBA_CHECK(j.contains("task"), file, ": no 'task' name");
  c.task = str_field(j, "task", file);
  if (auto s = opt_str(j, "dataset_path", file)) c.dataset_path = *s;
  if (auto s = opt_str(j, "dataset_name", file)) c.dataset_name = *s;
  if (j.contains("data_files")) {
    c.data_files = j["data_files"];
    BAMBA_CHECK(c.data_files.is_object(), file, ": data_files must map split names to files");
  }
  c.training_split = opt_str(j, "training_split", file);
  c.validation_split = opt_str(j, "validation_split", file);
  c.test_split = opt_str(j, "test_split", file);
  c.fewshot_split = opt_str(j, "fewshot_split", file);
  if (auto s = opt_str(j, "process_docs", file)) c.process_docs = *s;
  if (auto s = opt_str(j, "process_results", file)) c.process_results = *s;
  if (j.contains("description") && !j["description"].is_null()) c.description = j["description"];
  for (auto [key, dst] : {std::pair{"doc_to_text", &c.doc_to_text}, {"doc_to_target", &c.doc_to_target},
                          {"doc_to_choice", &c.doc_to_choice}})
    if (j.contains(key)) *dst = j[key];
  if (auto s = opt_str(j, "target_delimiter", file)) c.target_delimiter = *s;
  if (auto s = opt_str(j, "fewshot_delimiter", file)) c.fewshot_delimiter = *s;
  if (j.contains("num_fewshot") && !j["num_fewshot"].is_null()) {
    BAMBA_CHECK(j["num_fewshot"].is_number_integer() && j["num_fewshot"] >= 0, file, ": num_fewshot must be an integer >= 0");
    c.num_fewshot = j["num_fewshot"];
  }
  if (j.contains("fewshot_config") && j["fewshot_config"].is_object()) {
    const json& f = j["fewshot_config"];
    for (auto& [k, v] : f.items())
      BAMBA_CHECK(k == "sampler" || k == "samples", file, ": unknown key 'fewshot_config.", k, "'");
    if (f.contains("sampler")) c.sampler = str_field(f, "sampler", file);
    BAMBA_CHECK(c.sampler == "default" || c.sampler == "first_n", file, ": fewshot_config.sampler must be default or first_n");
    if (f.contains("samples")) {
      c.fewshot_samples = f["samples"];
      BAMBA_CHECK(c.fewshot_samples.is_array(), file, ": fewshot_config.samples must be a list of documents");
    }
  }
  if (auto s = opt_str(j, "output_type", file)) c.output_type = *s;
  BAMBA_CHECK(c.output_type == "multiple_choice" || c.output_type == "loglikelihood" ||
                  c.output_type == "loglikelihood_rolling" || c.output_type == "generate_until",
              file, ": output_type '", c.output_type, "' is not one of multiple_choice, loglikelihood, ",
              "loglikelihood_rolling, generate_until");
  if (j.contains("generation_kwargs") && j["generation_kwargs"].is_object()) {
    for (auto& [k, v] : j["generation_kwargs"].items()) {
      if (k == "until") {
        BAMBA_CHECK(v.is_array() || v.is_string(), file, ": generation_kwargs.until must be a list of strings");
        if (v.is_string()) c.until.push_back(v);
        else for (const auto& u : v) c.until.push_back(u.get<std::string>());
      } else if (k == "max_gen_toks") {
        c.max_gen_toks = v.get<int>();
      } else if (k == "do_sample") {
        BAMBA_CHECK(!v.get<bool>(), file, ": generation_kwargs.do_sample: only greedy decoding is supported");
      } else if (k == "temperature") {
        BAMBA_CHECK(v.get<double>() == 0.0, file, ": generation_kwargs.temperature: only 0 (greedy) is supported");
      } else {
        throw Error(file + ": unknown key 'generation_kwargs." + k + "'");
      }
    }
  }
  if (j.contains("filter_list")) {
    for (const json& f : j["filter_list"]) {
      FilterPipeline p;
      p.name = str_field(f, "name", file);
      for (const json& s : f.at("filter")) {
        FilterStep st;
        st.function = str_field(s, "function", file);
        if (s.contains("regex_pattern")) st.regex_pattern = str_field(s, "regex_pattern", file);
        if (s.contains("group_select")) st.group_select = s["group_select"].get<int>();
        if (s.contains("fallback")) st.fallback = str_field(s, "fallback", file);
        static const char* fns[] = {"regex", "take_first", "remove_whitespace", "lowercase", "uppercase", "strip"};
        BAMBA_CHECK(std::find_if(std::begin(fns), std::end(fns), [&](const char* x) { return st.function == x; }) != std::end(fns),
                    file, ": filter function '", st.function, "' is not supported");
        p.steps.push_back(st);
      }
      c.filters.push_back(p);
    }
  }
  if (c.filters.empty()) {
    FilterStep take_first;
    take_first.function = "take_first";
    c.filters.push_back(FilterPipeline{"none", {take_first}});
  }
  if (j.contains("metric_list")) {
    for (const json& m : j["metric_list"]) {
      MetricSpec s;
      s.metric = str_field(m, "metric", file);
      // lm-eval's registered default: the perplexity metrics are lower-is-better (the table's arrow says so)
      s.higher_is_better = !(s.metric == "perplexity" || s.metric == "word_perplexity" ||
                             s.metric == "byte_perplexity" || s.metric == "bits_per_byte");
      for (auto& [k, v] : m.items()) {
        if (k == "higher_is_better") s.higher_is_better = v.get<bool>();
        else if (k == "ignore_case") s.ignore_case = v.get<bool>();
        else if (k == "ignore_punctuation") s.ignore_punctuation = v.get<bool>();
        else if (k == "regexes_to_ignore") for (const auto& r : v) s.regexes_to_ignore.push_back(r.get<std::string>());
        else BAMBA_CHECK(k == "metric" || k == "aggregation", file, ": unknown key 'metric_list.", k, "'");
      }
      c.metrics.push_back(s);
    }
  }
  BAMBA_CHECK(!c.metrics.empty(), file, ": no metric_list");
  if (j.contains("metadata") && j["metadata"].contains("version")) c.version = j["metadata"]["version"];
  return c;
}

GroupConfig parse_group(const json& j, const std::string& file) {
  GroupConfig g;
  g.file = file;
  g.group = str_field(j, "group", file);
  for (auto& [k, v] : j.items())
    BAMBA_CHECK(k == "group" || k == "task" || k == "aggregate_metric_list" || k == "metadata" || k == "group_alias",
                file, ": unknown key '", k, "' in a group");
  BAMBA_CHECK(j.contains("task") && j["task"].is_array(), file, ": a group needs a 'task' list");
  for (const json& t : j["task"]) g.tasks.push_back(t.get<std::string>());
  if (j.contains("aggregate_metric_list"))
    for (const json& m : j["aggregate_metric_list"]) {
      g.aggregate_metrics.push_back(str_field(m, "metric", file));
      if (m.contains("weight_by_size")) g.weight_by_size = m["weight_by_size"].get<bool>();
    }
  return g;
}

// Python's str.isdigit() for the ASCII digits templates produce.
bool all_digits(const std::string& s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

std::vector<json> load_split(const TaskConfig& c, const std::string& data_dir, const std::string& split) {
  BAMBA_CHECK(c.data_files.contains(split), c.file, ": split '", split, "' has no entry in data_files");
  std::vector<std::string> patterns;
  const json& f = c.data_files[split];
  if (f.is_string()) patterns.push_back(f);
  else for (const auto& p : f) patterns.push_back(p.get<std::string>());
  const fs::path base = fs::path(data_dir) / c.dataset_path;
  std::vector<json> docs;
  for (const std::string& p : patterns) {
    const std::string pat = (base / p).string();
    glob_t g{};
    const int rc = ::glob(pat.c_str(), 0, nullptr, &g);
    std::vector<std::string> files(g.gl_pathv, g.gl_pathv + (rc == 0 ? g.gl_pathc : 0));
    ::globfree(&g);
    BAMBA_CHECK(!files.empty(), "task ", c.task, ": no data file matches ", pat, " (split '", split,
                "'; download the dataset into --data-dir, see docs/evaluation.md)");
    std::sort(files.begin(), files.end());
    for (const std::string& file : files)
      for (auto& row : read_records(file)) docs.push_back(std::move(row));
  }
  return docs;
}

}  // namespace

std::variant<TaskConfig, GroupConfig> load_task_file(const std::string& path) {
  json j = read_with_includes(path);
  if (j.contains("group") && !j.contains("dataset_path") && !j.contains("output_type")) return parse_group(j, path);
  return parse_task(j, path);
}

Task::Task(TaskConfig cfg, const std::string& data_dir, std::optional<int> num_fewshot, uint64_t fewshot_seed)
    : cfg_(std::move(cfg)), num_fewshot_(num_fewshot.value_or(cfg_.num_fewshot)),
      rnd_(std::make_shared<PyRandom>(fewshot_seed)) {
  const std::optional<std::string>& eval_split = cfg_.test_split ? cfg_.test_split : cfg_.validation_split;
  BAMBA_CHECK(eval_split.has_value(), cfg_.file, ": no test_split or validation_split to evaluate on");
  eval_docs_ = load_split(cfg_, data_dir, *eval_split);
  if (!cfg_.process_docs.empty()) eval_docs_ = process_docs(cfg_.process_docs, std::move(eval_docs_), cfg_.task);
  if (num_fewshot_ > 0) {
    if (cfg_.fewshot_split) {
      fewshot_docs_ = load_split(cfg_, data_dir, *cfg_.fewshot_split);
    } else if (cfg_.fewshot_samples.is_array()) {
      for (const json& d : cfg_.fewshot_samples) fewshot_docs_.push_back(d);
    } else {
      const auto& s = cfg_.training_split ? cfg_.training_split : cfg_.validation_split ? cfg_.validation_split : cfg_.test_split;
      fewshot_docs_ = load_split(cfg_, data_dir, *s);
    }
    if (!cfg_.process_docs.empty() && !(cfg_.fewshot_samples.is_array() && !cfg_.fewshot_split))
      fewshot_docs_ = process_docs(cfg_.process_docs, std::move(fewshot_docs_), cfg_.task);
    BAMBA_CHECK(!fewshot_docs_.empty(), cfg_.file, ": ", num_fewshot_, "-shot asked but there are no few-shot documents");
  }
  if (!eval_docs_.empty() && !cfg_.doc_to_choice.is_null()) multiple_input_ = doc_to_text(eval_docs_[0]).is_number_integer();
}

// lm-eval's utils.apply_template: jinja2 with StrictUndefined and keep_trailing_newline (no trim/lstrip blocks).
// Parsed per call: templates are short and rendering dominates anyway.
std::string Task::render(const std::string& tpl, const json& doc, const char* what) const {
  const jinja::Template t = jinja::Template::parse(tpl, cfg_.file + " " + what, jinja::Syntax{false, false, true});
  jinja::Budget budget{jinja::Limits{}};
  jinja::RenderOptions ro;
  ro.strict_undefined = true;
  return t.render(jinja::from_json(doc, budget), ro);
}

// kind 0: doc_to_text, 1: doc_to_target, 2: doc_to_choice (lm-eval's three conversions of a rendered string).
json Task::render_field(const json& spec, const json& doc, const char* what, int kind) const {
  if (spec.is_number_integer() || spec.is_array()) return spec;
  if (spec.is_object() && kind == 2) {
    json a = json::array();
    for (auto& [k, v] : spec.items()) a.push_back(v);
    return a;
  }
  BAMBA_CHECK(spec.is_string(), cfg_.file, ": ", what, " is not set");
  const std::string s = spec.get<std::string>();
  if (doc.is_object() && doc.contains(s)) return doc[s];
  const std::string r = render(s, doc, what);
  const bool has_choice = !cfg_.doc_to_choice.is_null();
  if (kind == 2) return python_literal(r, cfg_.task + ": doc_to_choice");
  if (all_digits(r) && has_choice) return std::stoll(r);
  if (kind == 1 && r.size() >= 2 && r.front() == '[' && r.back() == ']') {
    try {
      return python_literal(r, cfg_.task + ": doc_to_target");
    } catch (const Error&) {
      return r;
    }
  }
  return r;
}

json Task::doc_to_text(const json& doc) const { return render_field(cfg_.doc_to_text, doc, "doc_to_text", 0); }
json Task::doc_to_target(const json& doc) const { return render_field(cfg_.doc_to_target, doc, "doc_to_target", 1); }
std::vector<std::string> Task::doc_to_choice(const json& doc) const {
  json c = render_field(cfg_.doc_to_choice, doc, "doc_to_choice", 2);
  BAMBA_CHECK(c.is_array(), cfg_.task, ": doc_to_choice did not give a list");
  std::vector<std::string> out;
  for (const json& x : c) out.push_back(x.is_string() ? x.get<std::string>() : x.dump());
  return out;
}

namespace {
std::string as_text(const json& v) { return v.is_string() ? v.get<std::string>() : v.dump(); }
}  // namespace

// ContextSampler.get_context of lm-eval v0.4.8.
std::string Task::fewshot_context(const json& doc) {
  std::string out;
  const json& d = cfg_.description;
  if (d.is_string() && !d.get<std::string>().empty()) out = render(d.get<std::string>(), doc, "description");
  if (num_fewshot_ > 0) {
    std::vector<const json*> picked;
    if (cfg_.sampler == "first_n") {
      BAMBA_CHECK(size_t(num_fewshot_) <= fewshot_docs_.size(), cfg_.task, ": ", num_fewshot_,
                  " few-shot examples asked, ", fewshot_docs_.size(), " available");
      for (int i = 0; i < num_fewshot_; ++i) picked.push_back(&fewshot_docs_[size_t(i)]);
    } else {
      // One extra draw when the few-shot split is the evaluation split (in lm-eval also when both are unset).
      const bool same = cfg_.fewshot_split == cfg_.test_split;
      const size_t n = size_t(num_fewshot_) + (same ? 1 : 0);
      for (size_t i : rnd_->sample(fewshot_docs_.size(), n))
        if (fewshot_docs_[i] != doc && picked.size() < size_t(num_fewshot_)) picked.push_back(&fewshot_docs_[i]);
    }
    for (const json* ex : picked) {
      const json text = doc_to_text(*ex), target = doc_to_target(*ex);
      if (cfg_.doc_to_choice.is_null() || text.is_string()) out += as_text(text);
      else out += doc_to_choice(*ex).at(size_t(text.get<int64_t>()));
      if (!(target.is_string() && target.get<std::string>().empty())) {
        out += cfg_.target_delimiter;
        if (target.is_array()) out += as_text(target.at(0));
        else if (cfg_.doc_to_choice.is_null() || target.is_string()) out += as_text(target);
        else out += doc_to_choice(*ex).at(size_t(target.get<int64_t>()));
        out += cfg_.fewshot_delimiter;
      }
    }
  }
  if (multiple_input_) return out;
  const json ex = doc_to_text(doc);
  if (ex.is_string()) return out + ex.get<std::string>();
  if (ex.is_number_integer() && !cfg_.doc_to_choice.is_null()) return out + doc_to_choice(doc).at(size_t(ex.get<int64_t>()));
  return out + as_text(ex);
}

std::vector<std::string> Task::build_contexts(size_t limit) {
  std::vector<std::string> out;
  for (size_t i = 0; i < std::min(limit, eval_docs_.size()); ++i) out.push_back(fewshot_context(eval_docs_[i]));
  return out;
}

std::vector<Request> Task::requests(const json& doc, const std::string& ctx) const {
  const std::string& o = cfg_.output_type;
  if (o == "loglikelihood") return {{ctx, as_text(doc_to_target(doc))}};
  if (o == "loglikelihood_rolling") return {{"", as_text(doc_to_target(doc))}};
  if (o == "generate_until") return {{ctx, ""}};
  std::vector<Request> out;
  const std::vector<std::string> choices = doc_to_choice(doc);
  if (multiple_input_) {
    const std::string cont = cfg_.target_delimiter + as_text(doc_to_target(doc));
    for (const std::string& c : choices) out.push_back({ctx + c, cont});
  } else {
    for (const std::string& c : choices) out.push_back({ctx, cfg_.target_delimiter + c});
  }
  return out;
}

}  // namespace bamba::eval
