#include "merge/merger.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <tuple>
#include <vector>

#include "core/error.h"
#include "core/mapped_file.h"
#include "io/checkpoint.h"
#include "io/config_json.h"
#include "merge/merge_methods.h"
#include "io/sharded_writer.h"
#include "io/staging_dir.h"

namespace bamba {

namespace fs = std::filesystem;
using ojson = nlohmann::ordered_json;

namespace {

// One input of the merge: an entry of models:, or the base model when models: does not list it (MergeKit adds it
// then, with no parameters of its own).
struct Source {
  std::string path;       // as written in the YAML
  std::string canonical;  // for comparing entries and the base model
  const ParamMap* params = nullptr;
  const Checkpoint* ckpt = nullptr;
  ojson config;
};

// One output tensor with everything the arithmetic needs, resolved before anything is written.
struct TensorPlan {
  std::string name;
  int group = 0;  // 0: before the layers (embeddings), 1: in a layer, 2: after (final norm, lm_head)
  long layer = -1;
  double t = 0;  // position for gradient parameters
  TensorSpec out;
  std::vector<double> weight, density;  // per source (unused entries 0)
  double slerp_t = 0, lambda = 1;
  bool normalize = false, rescale = false;
};

// The decoder layer a tensor belongs to ("model.layers.12.mamba.D" -> 12), -1 for the others.
long layer_index(std::string_view name) {
  for (size_t p = name.find("layers."); p != std::string_view::npos; p = name.find("layers.", p + 1)) {
    if (p > 0 && name[p - 1] != '.') continue;
    size_t b = p + 7, e = b;
    while (e < name.size() && std::isdigit(static_cast<unsigned char>(name[e]))) ++e;
    if (e > b && e - b < 9 && (e == name.size() || name[e] == '.'))
      return std::stol(std::string(name.substr(b, e - b)));
  }
  return -1;
}

std::string json_str(const ojson& j, const char* key) { return j.contains(key) ? j[key].dump() : "(none)"; }

bool is_float(DType t) { return t == DType::F32 || t == DType::BF16 || t == DType::F16 || t == DType::F64; }

// Rounds fp32 values to `t` and back, so that `dtype:` means what it means in MergeKit: the inputs of the
// arithmetic are values of that type.
void round_to(std::span<float> v, DType t) {
  if (t == DType::BF16)
    for (float& x : v) x = bf16_to_f32(f32_to_bf16(x));
  else if (t == DType::F16)
    for (float& x : v) x = f16_to_f32(f32_to_f16(x));
}

// Input pages that were converted are not read again: drop them from the resident set so that memory tracks the
// working buffers rather than the whole model. The mapping is read-only and private, so the kernel just re-reads
// the file should a neighbouring tensor touch the same page.
void release_pages(const unsigned char* data, size_t nbytes) {
  if (nbytes == 0) return;
  const uintptr_t page = uintptr_t(::sysconf(_SC_PAGESIZE));
  const uintptr_t b = uintptr_t(data) & ~(page - 1), e = uintptr_t(data) + nbytes;
  ::madvise(reinterpret_cast<void*>(b), e - b, MADV_DONTNEED);
}

// DARE's random stream for one (tensor, model): a function of the seed and the names only, so that the result
// does not depend on the order tensors are merged in.
uint64_t tensor_seed(uint64_t seed, std::string_view name, size_t source) {
  uint64_t h = 1469598103934665603ull;  // FNV-1a
  for (char c : name) h = (h ^ uint8_t(c)) * 1099511628211ull;
  uint64_t z = seed + 0x9e3779b97f4a7c15ull * (h ^ (source + 1));  // splitmix64 finalizer
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// True when `p` is `dir` or lies inside it (both canonical).
bool within(const fs::path& p, fs::path dir) {
  if (dir.filename().empty()) dir = dir.parent_path();  // "out/" -> "out"
  return std::mismatch(dir.begin(), dir.end(), p.begin(), p.end()).first == dir.end();
}

void write_file(const std::string& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary);
  f << text;
  f.close();
  if (!f) fail(path, ": write failed");
}

class Merge {
 public:
  Merge(const MergeConfig& cfg, const MergeOptions& opt) : cfg_(cfg), opt_(opt), info_(method_info(cfg.method)) {}

  MergeSummary run() {
    open_sources();
    check_architectures();
    plan_tensors();
    // --force replaces --out: never when that would delete an input.
    std::error_code ec;
    const fs::path out = fs::weakly_canonical(opt_.out_dir, ec);
    for (const auto& s : sources_)
      if (!ec && within(fs::path(s.canonical), out))
        fail(opt_.out_dir, ": ", s.canonical == out.string() ? "is" : "contains", " one of the input models (", s.path,
             "); write the merge to another folder");
    StagingDir staging(opt_.out_dir, opt_.force);
    MergeSummary sum = write_tensors(staging.path());
    write_side_files(staging.path());
    staging.commit();
    return sum;
  }

 private:
  const MergeConfig& cfg_;
  const MergeOptions& opt_;
  const MethodInfo& info_;
  std::vector<Source> sources_;
  std::map<std::string, std::unique_ptr<Checkpoint>> ckpts_;  // one per folder, even if listed twice
  int base_ = -1, donor_ = 0;
  std::vector<TensorPlan> plan_;

  const Source& donor() const { return sources_[size_t(donor_)]; }
  bool is_base(size_t i) const { return base_ >= 0 && sources_[i].canonical == sources_[size_t(base_)].canonical; }

  std::string resolve(const std::string& path, const std::string& field) {
    if (!dir_exists(path))
      fail(cfg_.label, ": ", field, ": \"", path,
           "\" is not a local folder (bamba merge reads models from disk and "
           "does not download from the Hugging Face Hub: download it first, e.g. `huggingface-cli download NAME "
           "--local-dir DIR`, and give that folder)");
    std::error_code ec;
    fs::path canon = fs::weakly_canonical(path, ec);
    if (ec) fail(cfg_.label, ": ", field, ": \"", path, "\": ", ec.message());
    return canon.string();
  }

  void open_sources() {
    for (size_t i = 0; i < cfg_.models.size(); ++i) {
      const auto& m = cfg_.models[i];
      sources_.push_back({m.path, resolve(m.path, cat("models[", i, "].model")), &m.params, nullptr, {}});
    }
    if (!cfg_.base_model.empty()) {
      std::string canon = resolve(cfg_.base_model, "base_model");
      for (size_t i = 0; i < sources_.size() && base_ < 0; ++i)
        if (sources_[i].canonical == canon) base_ = int(i);
      if (base_ < 0) {
        sources_.push_back({cfg_.base_model, canon, nullptr, nullptr, {}});
        base_ = int(sources_.size() - 1);
      }
      donor_ = base_;
    }
    if (cfg_.method == MergeMethod::Slerp && sources_.size() != 2)
      fail(cfg_.label, ": slerp interpolates between exactly two models (base_model and one other), got ",
           sources_.size());
    for (auto& s : sources_) {
      auto& ck = ckpts_[s.canonical];
      if (!ck) ck = std::make_unique<Checkpoint>(s.path);
      s.ckpt = ck.get();
      const std::string cj = s.path + "/config.json";
      if (!file_exists(cj)) fail(s.path, ": no config.json (expected a Hugging Face model folder)");
      s.config = parse_config_json(read_text_file(cj), cj);
    }
  }

  void check_architectures() const {
    for (const auto& s : sources_)
      for (const char* key : {"architectures", "model_type"})
        if (json_str(s.config, key) != json_str(donor().config, key))
          fail(s.path, "/config.json: ", key, " ", json_str(s.config, key), " differs from ",
               json_str(donor().config, key), " in ", donor().path,
               " (bamba merge only merges models of one architecture)");
  }

  std::string vocab_hint(const Source& s) const {
    std::string a = json_str(s.config, "vocab_size"), b = json_str(donor().config, "vocab_size");
    if (a == b) return "";
    return cat("; the models have different vocabularies (vocab_size ", a, " vs ", b,
               "), and merging them would need one shared tokenizer");
  }

  // A parameter's value for tensor `p`: the model's own parameters first, then the top-level ones, then the
  // method's default (MergeKit's ConfigReader.parameter order).
  double param(const ParamDef& def, const Source* s, const TensorPlan& p) const {
    if (s && s->params)
      if (auto it = s->params->find(def.name); it != s->params->end())
        if (auto v = it->second.evaluate(p.name, p.t)) return *v;
    if (auto it = cfg_.params.find(def.name); it != cfg_.params.end())
      if (auto v = it->second.evaluate(p.name, p.t)) return *v;
    if (def.default_value) return *def.default_value;
    if (s)
      fail(cfg_.label, ": model \"", s->path, "\" has no parameter ", def.name, " (", info_.name,
           " needs it for every ", info_.task_vectors ? "model but the base" : "model",
           s->params ? "" : "; the base model is not listed under models:, so it has no parameters", ") for tensor ",
           p.name);
    fail(cfg_.label, ": missing top-level parameter ", def.name, " (", info_.name, " needs it) for tensor ", p.name);
  }

  double global(std::string_view name, const TensorPlan& p) const {
    for (const auto& d : info_.global)
      if (d.name == name) return param(d, nullptr, p);
    fail("internal: ", info_.name, " has no parameter ", name);
  }

  void plan_tensors() {
    const Checkpoint& dck = *donor().ckpt;
    for (const auto& s : sources_) {
      for (const auto& n : s.ckpt->names())
        if (!dck.find(n))
          fail(s.path, ": has tensor \"", n, "\" that ", donor().path, " lacks (a different architecture?)");
    }
    long n_layers = 0;
    for (const auto& n : dck.names()) {
      TensorPlan p;
      p.name = n;
      p.layer = layer_index(n);
      p.group = p.layer >= 0 ? 1 : n.find("embed") != std::string::npos ? 0 : 2;
      n_layers = std::max(n_layers, p.layer + 1);
      plan_.push_back(std::move(p));
    }
    if (plan_.empty()) fail(donor().path, ": has no tensors");
    std::sort(plan_.begin(), plan_.end(), [](const TensorPlan& a, const TensorPlan& b) {
      return std::tie(a.group, a.layer, a.name) < std::tie(b.group, b.layer, b.name);
    });
    for (auto& p : plan_) {
      // MergeKit plans embeddings at t = 0, layer i of n at i / (n - 1), and what follows the layers at t = 1.
      p.t = p.group == 0 ? 0.0 : p.group == 2 ? 1.0 : n_layers > 1 ? double(p.layer) / double(n_layers - 1) : 1.0;
      const TensorInfo& dt = dck.get(p.name);
      for (const auto& s : sources_) {
        const TensorInfo* ti = s.ckpt->find(p.name);
        if (!ti)
          fail(s.path, ": missing tensor \"", p.name, "\" (", donor().path, " has it; a different architecture?)");
        if (ti->shape != dt.shape)
          fail("tensor \"", p.name, "\" is ", ti->shape_str(), " in ", s.path, " but ", dt.shape_str(), " in ",
               donor().path, vocab_hint(s));
        if (!is_float(ti->dtype))
          fail("tensor \"", p.name, "\" in ", s.path, " is ", dtype_name(ti->dtype),
               "; only floating-point tensors (F32, BF16, F16, F64) can be merged");
      }
      // out_dtype, else dtype, else the type the base model's tensor had (MergeKit's SaveTensor).
      DType od = dt.dtype == DType::F64 ? DType::F32 : dt.dtype;
      if (cfg_.dtype) od = *cfg_.dtype;
      if (cfg_.out_dtype) od = *cfg_.out_dtype;
      p.out = {p.name, od, dt.shape};
      resolve_params(p, uint64_t(dt.numel()));
    }
  }

  void resolve_params(TensorPlan& p, uint64_t numel) {
    const size_t n = sources_.size();
    p.weight.assign(n, 0.0);
    p.density.assign(n, 1.0);
    switch (cfg_.method) {
      case MergeMethod::Linear:
        p.normalize = global("normalize", p) != 0;
        for (size_t i = 0; i < n; ++i) p.weight[i] = param(info_.per_model[0], &sources_[i], p);
        break;
      case MergeMethod::Slerp:
        p.slerp_t = global("t", p);
        break;
      default:
        p.normalize = global("normalize", p) != 0;
        p.rescale = global("rescale", p) != 0;
        p.lambda = global("lambda", p);
        for (size_t i = 0; i < n; ++i) {
          if (is_base(i)) continue;
          p.weight[i] = param(info_.per_model[0], &sources_[i], p);
          double d = p.density[i] = param(info_.per_model[1], &sources_[i], p);
          if (!(d >= 0))
            fail(cfg_.label, ": model \"", sources_[i].path, "\": density ", d, " for tensor ", p.name,
                 " must be at least 0 (it is the fraction of entries to keep)");
          if (info_.sparsify == MethodInfo::Magnitude && d < 1 && size_t(d * double(numel)) == 0)
            fail(cfg_.label, ": model \"", sources_[i].path, "\": density ", d, " keeps no entry of tensor ", p.name,
                 " (", numel, " elements; int(density * n) = 0, which MergeKit refuses too): raise density");
        }
    }
  }

  // Elements [b, e) of source i's tensor as fp32 (rounded to `dtype:` when given) in buf.
  void load(size_t i, const TensorPlan& p, size_t b, size_t e, std::vector<float>& buf) const {
    const TensorInfo& ti = sources_[i].ckpt->get(p.name);
    const size_t es = dtype_size(ti.dtype);
    buf.resize(e - b);
    convert_to_f32(ti.data + b * es, ti.dtype, e - b, buf.data());
    if (cfg_.dtype && *cfg_.dtype != ti.dtype) round_to(buf, *cfg_.dtype);
    release_pages(ti.data + b * es, (e - b) * es);
  }

  // Linear and plain task arithmetic are entry by entry, so they run over slices of the tensor and need only
  // slice-sized input buffers; slerp (one angle), TIES (one threshold) and DARE's L1 rescale look at the whole
  // tensor first.
  bool elementwise(const TensorPlan& p) const {
    if (cfg_.method == MergeMethod::Linear) return true;
    if (!info_.task_vectors) return false;
    return std::all_of(p.density.begin(), p.density.end(), [](double d) { return d >= 1; }) ||
           info_.sparsify == MethodInfo::None;
  }

  // Output elements [b, e) of tensor p into out.
  void merge_range(const TensorPlan& p, size_t b, size_t e, std::vector<std::vector<float>>& in,
                   std::span<float> out) const {
    const size_t n = sources_.size();
    switch (cfg_.method) {
      case MergeMethod::Linear: {
        std::vector<std::span<const float>> xs;
        for (size_t i = 0; i < n; ++i) load(i, p, b, e, in[i]), xs.emplace_back(in[i]);
        merge_linear(xs, p.weight, p.normalize, out);
        return;
      }
      case MergeMethod::Slerp: {
        const size_t x = size_t(base_), y = 1 - x;
        load(x, p, b, e, in[x]);
        load(y, p, b, e, in[y]);
        merge_slerp(p.slerp_t, in[x], in[y], out);
        return;
      }
      default: {
        const size_t base = size_t(base_);
        load(base, p, b, e, in[base]);
        std::vector<std::span<const float>> deltas;
        std::vector<double> weights;
        for (size_t i = 0; i < n; ++i) {
          if (is_base(i)) continue;  // MergeKit skips the base model's own entry
          load(i, p, b, e, in[i]);
          for (size_t j = 0; j < in[i].size(); ++j) in[i][j] -= in[base][j];
          // The output buffer is free until the combine step: it holds the magnitudes.
          if (info_.sparsify == MethodInfo::Magnitude) sparsify_magnitude(in[i], p.density[i], p.rescale, out);
          if (info_.sparsify == MethodInfo::Random)
            sparsify_random(in[i], p.density[i], p.rescale, tensor_seed(opt_.seed, p.name, i));
          deltas.emplace_back(in[i]);
          weights.push_back(p.weight[i]);
        }
        if (deltas.empty()) {
          std::copy(in[base].begin(), in[base].end(), out.begin());
          return;
        }
        merge_task_vectors(in[base], deltas, weights, {info_.sign_consensus, p.normalize, p.lambda}, out);
      }
    }
  }

  MergeSummary write_tensors(const std::string& dir) const {
    std::vector<TensorSpec> specs;
    for (const auto& p : plan_) specs.push_back(p.out);
    ShardedWriter writer(dir, specs, opt_.max_shard_bytes);
    MergeProgress prog{0, plan_.size(), 0, writer.total_bytes(), {}};
    std::vector<std::vector<float>> in(sources_.size());  // reused: they grow to the largest slice once
    std::vector<float> out;
    std::vector<unsigned char> bytes;  // the whole output tensor, in its dtype
    MergeSummary sum;
    for (const auto& p : plan_) {
      const uint64_t nb = p.out.nbytes();
      const size_t n = size_t(nb / dtype_size(p.out.dtype)),
                   slice = elementwise(p) ? std::max<size_t>(opt_.slice_elements, 1) : std::max<size_t>(n, 1);
      bytes.resize(nb);
      try {
        for (size_t b = 0; b < n; b += slice) {
          const size_t e = std::min(n, b + slice);
          out.resize(e - b);
          merge_range(p, b, e, in, out);
          convert_from_f32(out.data(), out.size(), p.out.dtype, bytes.data() + b * dtype_size(p.out.dtype));
        }
      } catch (const Error& e) {
        fail("tensor \"", p.name, "\": ", e.what());
      }
      writer.write(p.name, bytes.data(), nb);
      sum.largest_tensor_elements = std::max<uint64_t>(sum.largest_tensor_elements, n);
      prog.tensors_done++;
      prog.bytes_done += nb;
      prog.tensor = p.name;
      if (opt_.on_progress) opt_.on_progress(prog);
    }
    writer.finish();
    sum.tensors = plan_.size();
    sum.shards = writer.num_shards();
    sum.bytes = writer.total_bytes();
    return sum;
  }

  // config.json and the tokenizer come from the base model, or the first model (MergeKit's "donor"); the recipe
  // is kept next to them, as MergeKit does.
  void write_side_files(const std::string& dir) const {
    const std::string cj = donor().path + "/config.json", text = read_text_file(cj);
    const std::optional<DType> dt = cfg_.out_dtype ? cfg_.out_dtype : cfg_.dtype;
    write_file(dir + "/config.json", dt ? config_json_with_dtype(text, torch_dtype_name(*dt), cj) : text);
    for (const char* f : {"generation_config.json", "tokenizer.json", "tokenizer_config.json",
                          "special_tokens_map.json", "tokenizer.model", "added_tokens.json", "vocab.json", "merges.txt",
                          "chat_template.jinja", "chat_template.json"}) {
      const std::string src = donor().path + "/" + f;
      if (file_exists(src)) write_file(dir + "/" + f, read_text_file(src));
    }
    write_file(dir + "/mergekit_config.yml", cfg_.source_text);
  }
};

}  // namespace

MergeSummary run_merge(const MergeConfig& cfg, const MergeOptions& opt) { return Merge(cfg, opt).run(); }

}  // namespace bamba
