#include "train/train_config.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cmath>
#include <initializer_list>
#include <utility>

#include "core/error.h"
#include "core/mapped_file.h"
#include "io/sharded_writer.h"

namespace bamba {

namespace {

// Reads one YAML map, naming "<file>:<line>: <dotted.field>" in every error.
struct Fields {
  const std::string& label;
  YAML::Node map;
  std::string prefix;  // "optimizer." for a section, "" at the top

  std::string where(const YAML::Node& n, const std::string& key) const {
    if (!n.IsDefined()) return cat(label, ": ", prefix, key);  // a missing key: no line to name
    const YAML::Mark m = n.Mark();
    return m.is_null() ? cat(label, ": ", prefix, key) : cat(label, ":", m.line + 1, ": ", prefix, key);
  }

  // Every key must be one of `known`.
  void only(std::initializer_list<const char*> known) const {
    for (auto it = map.begin(); it != map.end(); ++it) {
      const std::string key = it->first.IsScalar() ? it->first.Scalar() : "?";
      if (std::none_of(known.begin(), known.end(), [&](const char* k) { return key == k; })) {
        std::string list;
        for (const char* k : known) list += (list.empty() ? "" : ", ") + std::string(k);
        fail(where(it->first, key), ": unknown field (expected one of: ", list, ")");
      }
    }
  }

  YAML::Node get(const char* key) const { return map[key]; }

  std::string str(const char* key, std::string v) const {
    YAML::Node n = get(key);
    if (!n || n.IsNull()) return v;
    if (!n.IsScalar()) fail(where(n, key), ": expected a string");
    return n.Scalar();
  }

  double num(const char* key, double v, double lo, double hi) const {
    YAML::Node n = get(key);
    if (!n || n.IsNull()) return v;
    return num_at(n, key, lo, hi);
  }

  double num_at(const YAML::Node& n, const std::string& key, double lo, double hi) const {
    double v = 0;
    if (!n.IsScalar() || !YAML::convert<double>::decode(n, v) || !std::isfinite(v))
      fail(where(n, key), ": expected a number, got ", n.IsScalar() ? "\"" + n.Scalar() + "\"" : "a list or map");
    if (v < lo || v > hi) fail(where(n, key), ": ", v, " is out of range (expected ", lo, " to ", hi, ")");
    return v;
  }

  // Integers may be written 1.5e6 (YAML has no digit separators); they must be whole.
  int64_t integer(const char* key, int64_t v, int64_t lo, int64_t hi) const {
    YAML::Node n = get(key);
    if (!n || n.IsNull()) return v;
    const double d = num(key, double(v), double(lo), double(hi));
    if (d != std::floor(d)) fail(where(n, key), ": expected a whole number, got ", n.Scalar());
    return int64_t(d);
  }

  bool boolean(const char* key, bool v) const {
    YAML::Node n = get(key);
    if (!n || n.IsNull()) return v;
    if (!n.IsScalar() || !YAML::convert<bool>::decode(n, v))
      fail(where(n, key), ": expected true or false, got ", n.IsScalar() ? "\"" + n.Scalar() + "\"" : "a list or map");
    return v;
  }

  template <typename E>
  E choice(const char* key, E v, std::initializer_list<std::pair<const char*, E>> options) const {
    YAML::Node n = get(key);
    if (!n || n.IsNull()) return v;
    const std::string s = n.IsScalar() ? n.Scalar() : "";
    std::string list;
    for (const auto& [name, e] : options) {
      if (s == name) return e;
      list += (list.empty() ? "" : ", ") + std::string(name);
    }
    fail(where(n, key), ": unknown value \"", s, "\" (expected one of: ", list, ")");
  }

  Fields section(const char* key) const {
    YAML::Node n = get(key);
    if (n && !n.IsNull() && !n.IsMap()) fail(where(n, key), ": expected a map of fields");
    return Fields{label, n && n.IsMap() ? n : YAML::Node(YAML::NodeType::Map), prefix + key + "."};
  }
};

constexpr int64_t kBig = int64_t(1) << 53;  // integers beyond this are not exact in a YAML double anyway

// `phases:` (after the batch size is known): each phase's length in whole steps and its mixture; the run's
// length is their sum, and a top-level steps or tokens, when given too, must agree with it.
template <typename DatasetList>
void parse_phases(const Fields& top, const YAML::Node& p, TrainConfig& c, const DatasetList& dataset_list) {
  if (YAML::Node d = top.get("data"); d && !d.IsNull())
    fail(top.where(d, "data"), ": give either data (one mixture) or phases (a mixture per phase), not both");
  const char* shape = "{name, steps or tokens, data}";
  if (!p.IsSequence() || p.size() == 0) fail(top.where(p, "phases"), ": expected a non-empty list of ", shape);
  int64_t sum = 0;
  for (size_t i = 0; i < p.size(); ++i) {
    const std::string key = cat("phases[", i, "]");
    if (!p[i].IsMap()) fail(top.where(p[i], key), ": expected ", shape);
    const Fields ph{top.label, p[i], key + "."};
    ph.only({"name", "steps", "tokens", "data"});
    PhaseSpec s;
    s.name = ph.str("name", cat("phase", i + 1));
    if (s.name.empty()) fail(ph.where(ph.get("name"), "name"), ": expected a non-empty name");
    for (const PhaseSpec& o : c.phases)
      if (o.name == s.name) fail(ph.where(ph.get("name"), "name"), ": \"", s.name, "\" appears twice");
    const int64_t steps = ph.integer("steps", 0, 1, kBig), tokens = ph.integer("tokens", 0, 1, kBig);
    if (steps > 0 && tokens > 0) fail(ph.where(ph.get("tokens"), "tokens"), ": give either steps or tokens, not both");
    if (steps == 0 && tokens == 0) fail(top.where(p[i], key), ": give the phase's length as steps or tokens");
    s.steps = tokens > 0 ? (tokens + c.batch_tokens - 1) / c.batch_tokens : steps;
    s.data = dataset_list(ph.get("data"), key + ".data", true);
    if (s.data.empty())
      fail(top.where(ph.get("data") ? ph.get("data") : p[i], key + ".data"),
           ": the phase has no datasets (expected a list of {name, path, weight})");
    // A dataset shared by phases is one stream (one position), so it must be the same files.
    for (size_t j = 0; j < s.data.size(); ++j)
      for (const PhaseSpec& o : c.phases)
        for (const DatasetSpec& d : o.data)
          if (d.name == s.data[j].name && d.path != s.data[j].path)
            fail(top.where(ph.get("data")[j], cat(key, ".data[", j, "].path")), ": dataset \"", d.name, "\" is ",
                 s.data[j].path, " here but ", d.path, " in phase ", o.name,
                 " (a dataset shared by phases is one stream; give another name for other files)");
    if (s.steps > kBig - sum) fail(top.where(p[i], key), ": the phases are too long");
    sum += s.steps;
    c.phases.push_back(std::move(s));
  }
  if (c.steps > 0 && c.steps != sum)
    fail(top.where(top.get("steps"), "steps"), ": ", c.steps, " steps, but the phases add up to ", sum,
         " (leave steps out: the phases give the length)");
  if (c.tokens > 0 && (c.tokens + c.batch_tokens - 1) / c.batch_tokens != sum)
    fail(top.where(top.get("tokens"), "tokens"), ": ", c.tokens, " tokens is ",
         (c.tokens + c.batch_tokens - 1) / c.batch_tokens, " steps of ", c.batch_tokens,
         " tokens, but the phases add up to ", sum, " steps (leave tokens out: the phases give the length)");
  c.steps = sum;
}

}  // namespace

std::string precision_name(Precision p) {
  switch (p) {
    case Precision::Bf16Mixed:
      return "bf16-mixed";
    case Precision::Bf16Memory:
      return "bf16-memory";
    case Precision::Fp32:
      return "fp32";
  }
  return "?";
}

LrSchedule TrainConfig::lr_schedule() const {
  LrSchedule s;
  s.kind = schedule;
  s.warmup = warmup;
  s.decay_shape = decay_shape;
  s.total_steps = steps;
  s.warmup_steps = warmup_steps >= 0 ? warmup_steps : std::min<int64_t>(2000, steps / 20);
  s.decay_steps = decay_steps >= 0 ? decay_steps : steps / 5;
  s.final_ratio = final_lr_ratio;
  return s;
}

std::vector<PhaseSpec> TrainConfig::mixture_phases() const {
  if (!phases.empty()) return phases;
  return {PhaseSpec{"", steps, data}};
}

std::vector<DatasetSpec> TrainConfig::all_datasets() const {
  std::vector<DatasetSpec> out;
  for (const PhaseSpec& p : mixture_phases())
    for (const DatasetSpec& d : p.data)
      if (std::none_of(out.begin(), out.end(), [&](const DatasetSpec& o) { return o.name == d.name; }))
        out.push_back(d);
  return out;
}

TrainConfig parse_train_config(const std::string& text, const std::string& label) {
  YAML::Node root;
  try {
    root = YAML::Load(text);
  } catch (const YAML::Exception& e) {
    fail(label, ":", e.mark.line + 1, ":", e.mark.column + 1, ": not valid YAML (", e.msg, ")");
  }
  if (root.IsNull()) root = YAML::Node(YAML::NodeType::Map);  // an empty file: every default
  if (!root.IsMap()) fail(label, ": expected a YAML map of training settings (docs/training.md)");

  TrainConfig c;
  c.label = label;
  const Fields top{label, root, ""};
  top.only(
      {"model",      "data",      "seq_len",    "micro_batch_size",         "batch_tokens",   "steps",  "tokens",
       "optimizer",  "schedule",  "precision",  "activation_checkpointing", "loss_reduction", "z_loss", "save_every",
       "eval_every", "keep_last", "save_dtype", "max_shard_size",           "output",         "seed",
       "shuffle",    "packing",   "validation", "eval_tokens",              "phases",
       "activation_checkpointing_layers"});

  const Fields model = top.section("model");
  model.only({"path", "config", "preset", "tokenizer"});
  c.model_path = model.str("path", "");
  c.model_config = model.str("config", "");
  c.model_preset = model.str("preset", c.model_preset);
  c.tokenizer_path = model.str("tokenizer", "");
  if (c.model_preset != "tiny" && c.model_preset != "bamba-9b")
    fail(model.where(model.get("preset"), "preset"), ": unknown preset \"", c.model_preset,
         "\" (expected tiny or bamba-9b)");
  if (!c.model_path.empty() && model.get("preset"))
    fail(model.where(model.get("preset"), "preset"), ": give either model.path or model.preset, not both");
  if (!c.model_config.empty() && (model.get("preset") || !c.model_path.empty()))
    fail(model.where(model.get("config"), "config"), ": give one of model.path, model.config and model.preset");

  // A list of {name, path, weight} (weight only for the training mixture) at `key` (a dotted path for errors);
  // names unique within the list.
  auto dataset_list = [&](const YAML::Node& d, const std::string& key, bool weighted) {
    std::vector<DatasetSpec> out;
    if (!d || d.IsNull()) return out;
    const char* shape = weighted ? "{name, path, weight}" : "{name, path}";
    if (!d.IsSequence()) fail(top.where(d, key), ": expected a list of ", shape);
    for (size_t i = 0; i < d.size(); ++i) {
      const Fields ds{label, d[i], cat(key, "[", i, "].")};
      if (!d[i].IsMap()) fail(top.where(d[i], cat(key, "[", i, "]")), ": expected ", shape);
      if (weighted)
        ds.only({"name", "path", "weight"});
      else
        ds.only({"name", "path"});
      DatasetSpec s;
      s.path = ds.str("path", "");
      if (s.path.empty()) fail(top.where(d[i], cat(key, "[", i, "]")), ": missing path");
      s.name = ds.str("name", s.path);
      s.weight = ds.num("weight", 1.0, 0.0, 1e300);
      for (const auto& other : out)
        if (other.name == s.name) fail(top.where(d[i], cat(key, "[", i, "].name")), ": \"", s.name, "\" appears twice");
      out.push_back(std::move(s));
    }
    double total = 0;
    for (const auto& s : out) total += s.weight;
    if (!out.empty() && total <= 0) fail(top.where(d, key), ": the weights add up to 0");
    return out;
  };
  auto datasets = [&](const char* key, bool weighted) { return dataset_list(top.get(key), key, weighted); };
  c.data = datasets("data", true);
  c.validation = datasets("validation", false);
  c.shuffle = top.boolean("shuffle", c.shuffle);
  c.packing = top.choice("packing", c.packing,
                         {{"continuous", Packing::Continuous},
                          {"per-document", Packing::PerDocument},
                          {"whole-documents", Packing::WholeDocuments}});

  c.seq_len = top.integer("seq_len", c.seq_len, 1, kBig);
  c.micro_batch_size = top.integer("micro_batch_size", c.micro_batch_size, 1, kBig);
  c.batch_tokens = top.integer("batch_tokens", c.batch_tokens, 0, kBig);
  c.steps = top.integer("steps", c.steps, 0, kBig);
  c.tokens = top.integer("tokens", c.tokens, 0, kBig);

  if (c.micro_batch_size > kBig / c.seq_len)
    fail(top.where(top.get("micro_batch_size"), "micro_batch_size"), ": micro_batch_size × seq_len is too large");
  const int64_t micro_tokens = c.micro_batch_size * c.seq_len;
  if (c.batch_tokens == 0) c.batch_tokens = micro_tokens;
  if (c.batch_tokens % micro_tokens != 0)
    fail(top.where(top.get("batch_tokens"), "batch_tokens"), ": ", c.batch_tokens,
         " is not a multiple of micro_batch_size × seq_len = ", micro_tokens,
         " (a step is a whole number of micro-batches)");
  if (c.steps > 0 && c.tokens > 0)
    fail(top.where(top.get("tokens"), "tokens"), ": give either steps or tokens, not both");
  if (YAML::Node p = top.get("phases"); p && !p.IsNull()) {
    parse_phases(top, p, c, dataset_list);
  } else {
    if (c.tokens > 0) c.steps = (c.tokens + c.batch_tokens - 1) / c.batch_tokens;
    if (c.steps == 0) c.steps = 1000;
  }

  const Fields opt = top.section("optimizer");
  opt.only({"name", "lr", "betas", "eps", "weight_decay", "grad_clip", "no_decay"});
  if (opt.str("name", "adamw") != "adamw")
    fail(opt.where(opt.get("name"), "name"), ": unknown optimizer \"", opt.get("name").Scalar(), "\" (expected adamw)");
  c.lr = opt.num("lr", c.lr, 0, 1e3);
  if (YAML::Node b = opt.get("betas"); b && !b.IsNull()) {
    if (!b.IsSequence() || b.size() != 2) fail(opt.where(b, "betas"), ": expected [beta1, beta2]");
    c.beta1 = opt.num_at(b[0], "betas[0]", 0, 0.999999999);
    c.beta2 = opt.num_at(b[1], "betas[1]", 0, 0.999999999);
  }
  c.eps = opt.num("eps", c.eps, 0, 1);
  c.weight_decay = opt.num("weight_decay", c.weight_decay, 0, 1e3);
  c.grad_clip = opt.num("grad_clip", c.grad_clip, 0, 1e300);
  if (YAML::Node nd = opt.get("no_decay"); nd && !nd.IsNull()) {
    if (!nd.IsSequence()) fail(opt.where(nd, "no_decay"), ": expected a list of tensor-name substrings");
    for (size_t i = 0; i < nd.size(); ++i) {
      if (!nd[i].IsScalar() || nd[i].Scalar().empty())
        fail(opt.where(nd[i], cat("no_decay[", i, "]")), ": expected a non-empty tensor-name substring");
      c.no_decay.push_back(nd[i].Scalar());
    }
  }

  using K = LrSchedule::Kind;
  const Fields sch = top.section("schedule");
  sch.only({"name", "warmup_steps", "warmup", "final_lr_ratio", "decay_steps", "decay_shape"});
  c.schedule = sch.choice("name", c.schedule,
                          {{"cosine", K::Cosine}, {"constant", K::Constant}, {"linear", K::Linear}, {"wsd", K::Wsd}});
  c.warmup_steps = sch.integer("warmup_steps", c.warmup_steps, -1, kBig);
  c.warmup = sch.choice("warmup", c.warmup,
                        {{"linear", LrSchedule::Warmup::Linear}, {"quadratic", LrSchedule::Warmup::Quadratic}});
  c.final_lr_ratio = sch.num("final_lr_ratio", c.final_lr_ratio, 0, 1);
  c.decay_steps = sch.integer("decay_steps", c.decay_steps, -1, kBig);
  c.decay_shape = sch.choice("decay_shape", c.decay_shape,
                             {{"linear", LrSchedule::DecayShape::Linear},
                              {"sqrt", LrSchedule::DecayShape::Sqrt},
                              {"cosine", LrSchedule::DecayShape::Cosine}});
  if (c.warmup_steps > c.steps)
    fail(sch.where(sch.get("warmup_steps"), "warmup_steps"), ": ", c.warmup_steps, " is more than the ", c.steps,
         " training steps");
  if (c.decay_steps > c.steps)
    fail(sch.where(sch.get("decay_steps"), "decay_steps"), ": ", c.decay_steps, " is more than the ", c.steps,
         " training steps");
  if (sch.get("decay_steps") && c.schedule != K::Wsd)
    fail(sch.where(sch.get("decay_steps"), "decay_steps"), ": only the wsd schedule reads it");

  c.precision = top.choice(
      "precision", c.precision,
      {{"bf16-mixed", Precision::Bf16Mixed}, {"bf16-memory", Precision::Bf16Memory}, {"fp32", Precision::Fp32}});
  if (YAML::Node n = top.get("activation_checkpointing"); n && !n.IsNull()) {  // true / false, full, selective
    // YAML's other booleans (yes, on, True, ...) as true / false first
    bool on = false;
    std::optional<Checkpointing> m;
    if (n.IsScalar())
      m = YAML::convert<bool>::decode(n, on) ? (on ? Checkpointing::Full : Checkpointing::Off)
                                             : checkpointing_from_name(n.Scalar());
    if (!m)
      fail(top.where(n, "activation_checkpointing"), ": expected true, false, full or selective, got ",
           n.IsScalar() ? "\"" + n.Scalar() + "\"" : "a list or map");
    c.activation_checkpointing = *m;
  }
  c.checkpoint_layers = top.integer("activation_checkpointing_layers", c.checkpoint_layers, -1, kBig);
  if (c.checkpoint_layers >= 0 && c.activation_checkpointing == Checkpointing::Off)  // (it would do nothing)
    fail(top.where(top.get("activation_checkpointing_layers"), "activation_checkpointing_layers"),
         ": only with activation_checkpointing (full or selective), which is off");
  c.loss_sum = top.choice("loss_reduction", c.loss_sum, {{"mean", false}, {"sum", true}});
  c.z_loss = top.num("z_loss", c.z_loss, 0, 1);
  c.save_every = top.integer("save_every", c.save_every, 0, kBig);
  c.eval_every = top.integer("eval_every", c.eval_every, 0, kBig);
  c.eval_tokens = top.integer("eval_tokens", c.eval_tokens, 0, kBig);
  if (c.eval_tokens == 0) c.eval_tokens = c.batch_tokens;
  if (!c.validation.empty() && c.eval_every == 0)
    fail(top.where(top.get("validation"), "validation"), ": give eval_every (steps between validation runs)");
  c.keep_last = top.integer("keep_last", c.keep_last, 0, kBig);
  c.save_dtype = top.choice<std::string>(
      "save_dtype", c.save_dtype,
      {{"float32", "float32"}, {"bfloat16", "bfloat16"}, {"fp32", "float32"}, {"bf16", "bfloat16"}});
  c.max_shard_size = top.str("max_shard_size", c.max_shard_size);
  try {
    parse_byte_size(c.max_shard_size);
  } catch (const Error& e) {
    fail(top.where(top.get("max_shard_size"), "max_shard_size"), ": ", e.what());
  }
  c.output = top.str("output", c.output);
  if (c.output.empty()) fail(top.where(top.get("output"), "output"), ": expected a folder name");
  c.seed = uint64_t(top.integer("seed", 0, 0, kBig));
  return c;
}

TrainConfig load_train_config(const std::string& path) {
  if (!file_exists(path)) fail(path, ": no such training config file");
  return parse_train_config(read_text_file(path), path);
}

}  // namespace bamba
