#include "merge/merge_config.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>

#include "core/error.h"
#include "core/mapped_file.h"

namespace bamba {

const MethodInfo& method_info(MergeMethod m) {
  // Defaults follow MergeKit's method registry (mergekit/merge_methods/registry.py): normalize is on for linear
  // and ties only; DARE rescales by default.
  auto gta = [](MergeMethod m, std::string_view name, MethodInfo::Sparsify sp, bool consensus, double normalize,
                double rescale) {
    return MethodInfo{
        .method = m,
        .name = name,
        .needs_base = true,
        .task_vectors = true,
        .sparsify = sp,
        .sign_consensus = consensus,
        .global = {{"int8_mask", 0.0}, {"normalize", normalize}, {"rescale", rescale}, {"lambda", 1.0}},
        .per_model = {{"weight", std::nullopt}, {"density", 1.0}},
    };
  };
  static const MethodInfo kMethods[] = {
      {.method = MergeMethod::Linear,
       .name = "linear",
       .global = {{"normalize", 1.0}},
       .per_model = {{"weight", std::nullopt}}},
      {.method = MergeMethod::Slerp,
       .name = "slerp",
       .needs_base = true,
       .global = {{"t", std::nullopt}},
       .per_model = {}},
      gta(MergeMethod::TaskArithmetic, "task_arithmetic", MethodInfo::None, false, 0, 0),
      gta(MergeMethod::Ties, "ties", MethodInfo::Magnitude, true, 1, 0),
      gta(MergeMethod::DareTies, "dare_ties", MethodInfo::Random, true, 0, 1),
      gta(MergeMethod::DareLinear, "dare_linear", MethodInfo::Random, false, 0, 1),
  };
  for (const auto& info : kMethods)
    if (info.method == m) return info;
  fail("unknown merge method");
}

std::optional<double> ParamSetting::evaluate(std::string_view tensor, double t) const {
  for (const auto& c : conditions) {
    if (!c.filter.empty() && c.filter != "*" && tensor.find(c.filter) == std::string_view::npos) continue;
    if (c.values.size() == 1) return c.values[0];
    // A gradient: piecewise-linear over [0, 1] with the values evenly spaced (MergeKit's evaluate_setting).
    double scaled = t * double(c.values.size() - 1);
    size_t i0 = std::min(size_t(scaled), c.values.size() - 1), i1 = std::min(c.values.size() - 1, i0 + 1);
    double frac = scaled - double(i0);
    return (1 - frac) * c.values[i0] + frac * c.values[i1];
  }
  return std::nullopt;
}

bool parse_merge_dtype(std::string_view s, DType* out) {
  if (s.substr(0, 6) == "torch.") s.remove_prefix(6);
  if (s == "bfloat16" || s == "bf16")
    *out = DType::BF16;
  else if (s == "float16" || s == "fp16" || s == "half")
    *out = DType::F16;
  else if (s == "float32" || s == "fp32" || s == "float")
    *out = DType::F32;
  else
    return false;
  return true;
}

std::string_view torch_dtype_name(DType t) {
  switch (t) {
    case DType::BF16:
      return "bfloat16";
    case DType::F16:
      return "float16";
    default:
      return "float32";
  }
}

namespace {

std::string where_at(const std::string& label, const YAML::Node& n, const std::string& field) {
  const YAML::Mark m = n.Mark();
  if (m.is_null()) return cat(label, ": ", field);
  return cat(label, ":", m.line + 1, ": ", field);
}

double parse_number(const YAML::Node& n, const std::string& where) {
  double d;
  bool b;
  if (n.IsScalar()) {
    if (YAML::convert<double>::decode(n, d)) return d;
    if (YAML::convert<bool>::decode(n, b)) return b ? 1.0 : 0.0;
  }
  fail(where, ": expected a number or true/false, got ", n.IsScalar() ? "\"" + n.Scalar() + "\"" : "a list or map");
}

std::vector<double> parse_values(const YAML::Node& n, const std::string& where) {
  if (n.IsScalar()) return {parse_number(n, where)};
  if (!n.IsSequence() || n.size() == 0) fail(where, ": expected a number or a non-empty list of numbers");
  std::vector<double> v;
  for (size_t i = 0; i < n.size(); ++i) v.push_back(parse_number(n[i], cat(where, "[", i, "]")));
  return v;
}

ParamSetting parse_setting(const YAML::Node& n, const std::string& where) {
  ParamSetting s;
  if (n.IsSequence() && n.size() > 0 && n[0].IsMap()) {
    for (size_t i = 0; i < n.size(); ++i) {
      const YAML::Node c = n[i];
      const std::string w = cat(where, "[", i, "]");
      if (!c.IsMap()) fail(w, ": expected {filter: ..., value: ...} like the other entries");
      ParamSetting::Condition cond;
      for (auto it = c.begin(); it != c.end(); ++it) {
        std::string key = it->first.as<std::string>();
        if (key == "filter") {
          if (!it->second.IsScalar()) fail(w, ".filter: expected a tensor-name substring");
          cond.filter = it->second.Scalar();
        } else if (key != "value") {
          fail(w, ": unknown key \"", key, "\" (expected filter and value)");
        }
      }
      if (!c["value"]) fail(w, ": missing value");
      cond.values = parse_values(c["value"], w + ".value");
      s.conditions.push_back(std::move(cond));
    }
    return s;
  }
  s.conditions.push_back({"", parse_values(n, where)});
  return s;
}

bool known(const std::vector<ParamDef>& defs, std::string_view name) {
  return std::any_of(defs.begin(), defs.end(), [&](const ParamDef& d) { return d.name == name; });
}

std::string names_of(const std::vector<ParamDef>& defs) {
  std::string s;
  for (const auto& d : defs) s += (s.empty() ? "" : ", ") + std::string(d.name);
  return s.empty() ? "none" : s;
}

// `parameters:` of the top level (top = true) or of one model. Names the method does not read are kept out and
// reported as warnings, as MergeKit silently ignores them.
ParamMap parse_params(const YAML::Node& n, const std::string& where, const MethodInfo& info, bool top,
                      std::vector<std::string>& warnings) {
  ParamMap out;
  if (n.IsNull()) return out;
  if (!n.IsMap()) fail(where, ": expected a map of parameter names to values");
  for (auto it = n.begin(); it != n.end(); ++it) {
    const std::string name = it->first.as<std::string>(), w = cat(where, ".", name);
    const bool per_model = known(info.per_model, name), global = known(info.global, name);
    if (!per_model && !(top && global)) {
      if (!top && global)
        warnings.push_back(cat(w, ": ", name, " is read only from the top-level parameters; ignored"));
      else
        warnings.push_back(cat(w, ": merge_method ", info.name, " does not read \"", name, "\" (it reads ",
                               names_of(info.global), top ? "; per model: " + names_of(info.per_model) : "",
                               "); ignored"));
      continue;
    }
    out.emplace(name, parse_setting(it->second, w));
  }
  return out;
}

std::string scalar_string(const YAML::Node& n, const std::string& where, const std::string& what) {
  if (!n.IsScalar()) fail(where, ": expected ", what);
  return n.Scalar();
}

}  // namespace

MergeConfig parse_merge_config(const std::string& text, const std::string& label) {
  YAML::Node root;
  try {
    root = YAML::Load(text);
  } catch (const YAML::Exception& e) {
    fail(label, ":", e.mark.line + 1, ":", e.mark.column + 1, ": not valid YAML (", e.msg, ")");
  }
  if (!root.IsMap()) fail(label, ": expected a YAML map with merge_method: and models:");

  MergeConfig cfg;
  cfg.label = label;
  cfg.source_text = text;

  const YAML::Node method = root["merge_method"];
  if (!method) fail(label, ": missing merge_method (linear, slerp, task_arithmetic, ties, dare_ties, dare_linear)");
  const std::string mname = scalar_string(method, where_at(label, method, "merge_method"), "a method name");
  bool found = false;
  for (MergeMethod m : {MergeMethod::Linear, MergeMethod::Slerp, MergeMethod::TaskArithmetic, MergeMethod::Ties,
                        MergeMethod::DareTies, MergeMethod::DareLinear})
    if (method_info(m).name == mname) cfg.method = m, found = true;
  if (!found)
    fail(where_at(label, method, "merge_method"), ": unknown method \"", mname,
         "\" (expected linear, slerp, task_arithmetic, ties, dare_ties or dare_linear)");
  const MethodInfo& info = method_info(cfg.method);

  for (auto it = root.begin(); it != root.end(); ++it) {
    const std::string key = it->first.as<std::string>();
    const YAML::Node v = it->second;
    const std::string w = where_at(label, it->first, key);
    if (key == "merge_method") {
      continue;
    } else if (key == "models") {
      if (!v.IsSequence() || v.size() == 0) fail(w, ": expected a non-empty list of {model: PATH, parameters: ...}");
      for (size_t i = 0; i < v.size(); ++i) {
        const YAML::Node e = v[i];
        const std::string we = cat(w, "[", i, "]");
        if (!e.IsMap() || !e["model"]) fail(we, ": expected {model: PATH, parameters: ...}");
        MergeModel m;
        m.path = scalar_string(e["model"], we + ".model", "the path of a local model folder");
        for (auto jt = e.begin(); jt != e.end(); ++jt) {
          const std::string k = jt->first.as<std::string>();
          if (k == "parameters")
            m.params = parse_params(jt->second, we + ".parameters", info, false, cfg.warnings);
          else if (k != "model")
            cfg.warnings.push_back(cat(we, ".", k, ": not used by bamba merge; ignored"));
        }
        cfg.models.push_back(std::move(m));
      }
    } else if (key == "base_model") {
      if (!v.IsNull()) cfg.base_model = scalar_string(v, w, "the path of a local model folder");
    } else if (key == "parameters") {
      cfg.params = parse_params(v, w, info, true, cfg.warnings);
    } else if (key == "dtype" || key == "out_dtype") {
      if (v.IsNull()) continue;
      DType t;
      const std::string s = scalar_string(v, w, "a dtype name");
      if (!parse_merge_dtype(s, &t)) fail(w, ": unsupported dtype \"", s, "\" (expected bfloat16, float16 or float32)");
      (key == "dtype" ? cfg.dtype : cfg.out_dtype) = t;
    } else if (key == "slices" || key == "modules") {
      fail(w, ": ", key, ": is not supported by bamba merge (list whole models under models:)");
    } else if (key == "tokenizer_source" || key == "tokenizer") {
      // The tokenizer is copied from the base model (or the first one); "base" asks for exactly that.
      if (!(key == "tokenizer_source" && v.IsScalar() && v.Scalar() == "base"))
        fail(w,
             ": only tokenizer_source: base is supported (bamba merge copies the tokenizer of the base model, "
             "or of the first model, and needs all models to share one vocabulary)");
    } else {
      cfg.warnings.push_back(cat(w, ": not used by bamba merge; ignored"));
    }
  }
  if (cfg.models.empty()) fail(label, ": missing models: (a list of {model: PATH, parameters: ...})");
  if (info.needs_base && cfg.base_model.empty())
    fail(label, ": merge_method ", info.name, " needs base_model: (the model the others are measured from)");
  return cfg;
}

MergeConfig load_merge_config(const std::string& path) { return parse_merge_config(read_text_file(path), path); }

}  // namespace bamba
