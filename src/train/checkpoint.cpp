#include "train/checkpoint.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>

#include "core/dtype.h"
#include "core/error.h"
#include "core/mapped_file.h"
#include "io/checkpoint.h"
#include "io/config_json.h"
#include "io/safetensors.h"
#include "io/sharded_writer.h"
#include "io/staging_dir.h"

namespace bamba {

namespace fs = std::filesystem;

namespace {

constexpr const char* kFormat = "bamba-trainer-state";
constexpr int kVersion = 1;

void write_text(const std::string& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary);
  f << text;
  f.close();
  if (!f) fail(path, ": write failed");
}

// The step of a "checkpoint-<step>" folder name, or -1.
int64_t step_of(const std::string& name) {
  const std::string prefix = "checkpoint-";
  if (name.compare(0, prefix.size(), prefix) != 0 || name.size() == prefix.size()) return -1;
  int64_t s = 0;
  for (size_t i = prefix.size(); i < name.size(); ++i) {
    if (name[i] < '0' || name[i] > '9' || s > (int64_t(1) << 58)) return -1;
    s = s * 10 + (name[i] - '0');
  }
  return s;
}

std::vector<std::pair<int64_t, std::string>> list_checkpoints(const std::string& output) {
  std::vector<std::pair<int64_t, std::string>> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(output, ec)) {
    const int64_t s = step_of(e.path().filename().string());
    if (s >= 0 && e.is_directory() && fs::exists(e.path() / "trainer_state.json"))
      out.emplace_back(s, e.path().string());
  }
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace

std::string checkpoint_dir(const std::string& output, int64_t step) { return cat(output, "/checkpoint-", step); }

void save_checkpoint(const std::string& dir, const std::vector<ParamRef>& params, const AdamW& opt,
                     const TrainerState& state, const CheckpointOptions& o, bool replace) {
  BAMBA_CHECK(o.save_dtype == "float32" || o.save_dtype == "bfloat16", "save_dtype \"", o.save_dtype,
              "\": expected float32 or bfloat16");
  BAMBA_CHECK(opt.num_params() == params.size(), dir, ": the optimizer has ", opt.num_params(),
              " parameters, the model ", params.size());
  StagingDir staging(dir, replace);
  const std::string tmp = staging.path();
  const DType wdt = o.save_dtype == "bfloat16" ? DType::BF16 : DType::F32;

  // Model weights, as a Hugging Face sharded checkpoint.
  std::vector<TensorSpec> specs;
  for (const auto& p : params) specs.push_back({p.name, wdt, p.shape});
  ShardedWriter weights(tmp, specs, o.max_shard_bytes);
  std::vector<uint16_t> half;
  std::vector<float> staged;
  ParamDevice* dev = opt.device();
  auto host_value = [&](const ParamRef& p) -> const float* {  // device parameters are copied out first
    if (!dev) return p.value;
    staged.resize(p.size);
    dev->master_to_host(p, staged.data());
    return staged.data();
  };
  for (const auto& p : params) {
    const float* v = host_value(p);
    if (wdt == DType::F32) {
      weights.write(p.name, v, p.size * 4);
    } else {
      half.resize(p.size);
      convert_from_f32(v, p.size, DType::BF16, half.data());
      weights.write(p.name, half.data(), p.size * 2);
    }
  }
  weights.finish();
  write_text(tmp + "/config.json", config_json_with_dtype(o.config_json, o.save_dtype, "config.json"));
  if (!o.tokenizer_dir.empty())
    for (const char* f : {"generation_config.json", "tokenizer.json", "tokenizer_config.json",
                          "special_tokens_map.json", "tokenizer.model", "added_tokens.json", "vocab.json", "merges.txt",
                          "chat_template.jinja", "chat_template.json"}) {
      const std::string src = o.tokenizer_dir + "/" + f;
      if (file_exists(src)) fs::copy_file(src, tmp + "/" + f);
    }

  // Optimizer moments (and fp32 master weights when the model weights were rounded).
  const DType mdt = opt.options().bf16_moments ? DType::BF16 : DType::F32;
  {
    SafetensorsWriter w(tmp + "/optimizer.safetensors");
    w.set_metadata("format", "bamba-adamw");
    for (const auto& p : params) {
      w.declare(p.name + ".exp_avg", mdt, p.shape);
      w.declare(p.name + ".exp_avg_sq", mdt, p.shape);
    }
    std::vector<unsigned char> bytes;
    for (size_t i = 0; i < params.size(); ++i) {
      bytes.resize(opt.moment_bytes(i));
      opt.moment_to_host(i, false, bytes.data());
      w.write(params[i].name + ".exp_avg", bytes.data(), bytes.size());
      opt.moment_to_host(i, true, bytes.data());
      w.write(params[i].name + ".exp_avg_sq", bytes.data(), bytes.size());
    }
    w.finish();
  }
  if (wdt != DType::F32) {
    SafetensorsWriter w(tmp + "/master.safetensors");
    for (const auto& p : params) w.declare(p.name, DType::F32, p.shape);
    for (const auto& p : params) w.write(p.name, host_value(p), p.size * 4);
    w.finish();
  }

  const AdamWOptions& a = opt.options();
  nlohmann::ordered_json j = {
      {"format", kFormat},
      {"version", kVersion},
      {"step", state.step},
      {"tokens_seen", state.tokens_seen},
      {"optimizer",
       {{"name", "adamw"},
        {"steps_taken", opt.steps_taken()},
        {"beta1", a.beta1},
        {"beta2", a.beta2},
        {"eps", a.eps},
        {"weight_decay", a.weight_decay},
        {"moments_dtype", mdt == DType::BF16 ? "bfloat16" : "float32"},
        {"file", "optimizer.safetensors"}}},
      {"master_weights", wdt == DType::F32 ? "model" : "master.safetensors"},
      {"rng", {{"seed", state.seed}, {"scheme", "counter-based splitmix64(seed, step, parameter, element)"}}},
      {"data", state.data},
      {"config", state.config_text},
  };
  write_text(tmp + "/trainer_state.json", j.dump(2) + "\n");
  staging.commit();
}

void load_checkpoint(const std::string& dir, const std::vector<ParamRef>& params, AdamW& opt, TrainerState& state) {
  const std::string sp = dir + "/trainer_state.json";
  if (!file_exists(sp)) fail(dir, ": no trainer_state.json (expected a folder written by bamba train)");
  auto j = nlohmann::json::parse(read_text_file(sp), nullptr, false);
  if (j.is_discarded() || !j.is_object()) fail(sp, ": not a valid JSON object");
  if (j.value("format", "") != kFormat) fail(sp, ": field \"format\" is not \"", kFormat, "\"");
  if (j.value("version", 0) != kVersion)
    fail(sp, ": version ", j.value("version", 0), " is not supported (expected ", kVersion, ")");
  try {
    state.step = j.at("step").get<int64_t>();
    state.tokens_seen = j.at("tokens_seen").get<int64_t>();
    state.seed = j.at("rng").at("seed").get<uint64_t>();
    state.data = j.value("data", nlohmann::json());
    state.config_text = j.value("config", "");
    opt.set_steps_taken(j.at("optimizer").at("steps_taken").get<int64_t>());
  } catch (const nlohmann::json::exception& e) {
    fail(sp, ": missing or mistyped field (", e.what(), ")");
  }
  const std::string moments = j["optimizer"].value("moments_dtype", "");
  const DType mdt = opt.options().bf16_moments ? DType::BF16 : DType::F32;
  if (moments != (mdt == DType::BF16 ? "bfloat16" : "float32"))
    fail(sp, ": optimizer moments are ", moments, "; this run keeps them in ",
         mdt == DType::BF16 ? "bfloat16 (precision bf16-memory)" : "float32", "; change precision to resume");

  // Master weights: the model weights themselves when saved as fp32.
  const std::string master = j.value("master_weights", "model");
  std::unique_ptr<Checkpoint> model;
  std::unique_ptr<SafetensorsFile> master_file;
  auto tensor = [&](const std::string& name) -> const TensorInfo& {
    if (master_file) {
      const TensorInfo* t = master_file->find(name);
      if (!t) fail(master_file->path(), ": missing tensor \"", name, "\"");
      return *t;
    }
    return model->get(name);
  };
  if (master == "model")
    model = std::make_unique<Checkpoint>(dir);
  else
    master_file = std::make_unique<SafetensorsFile>(dir + "/" + master);
  SafetensorsFile moments_file(dir + "/optimizer.safetensors");

  auto check = [&](const TensorInfo& t, const ParamRef& p, DType want) {
    if (t.dtype != want || t.shape != p.shape)
      fail(t.file, ": tensor \"", t.name, "\" is ", dtype_name(t.dtype), " ", t.shape_str(), ", expected ",
           dtype_name(want), " with the model's shape (", p.size, " elements)");
  };
  for (size_t i = 0; i < params.size(); ++i) {
    const ParamRef& p = params[i];
    const TensorInfo& w = tensor(p.name);
    check(w, p, DType::F32);
    if (ParamDevice* dev = opt.device()) dev->master_from_host(p, reinterpret_cast<const float*>(w.data));
    else std::memcpy(p.value, w.data, p.size * 4);
    for (const char* which : {".exp_avg", ".exp_avg_sq"}) {
      const TensorInfo* m = moments_file.find(p.name + which);
      if (!m) fail(moments_file.path(), ": missing tensor \"", p.name, which, "\"");
      check(*m, p, mdt);
      opt.moment_from_host(i, std::strcmp(which, ".exp_avg") != 0, m->data);
    }
  }
  if (ParamDevice* dev = opt.device()) dev->sync_model(params);
}

std::string resolve_checkpoint(const std::string& path) {
  if (file_exists(path + "/trainer_state.json")) return path;
  auto all = list_checkpoints(path);
  if (all.empty())
    fail(path,
         ": neither a checkpoint folder (no trainer_state.json) nor an output folder with checkpoint-<step> folders");
  return all.back().second;
}

std::vector<int64_t> checkpoint_steps(const std::string& output) {
  std::vector<int64_t> out;
  for (const auto& [step, path] : list_checkpoints(output)) out.push_back(step);
  return out;
}

void prune_checkpoints(const std::string& output, int64_t keep, int64_t current_step) {
  auto all = list_checkpoints(output);
  auto remove = [](const std::string& path) {
    std::error_code ec;
    fs::remove_all(path, ec);
    if (ec) fail(path, ": cannot delete an old checkpoint (", ec.message(), ")");
  };
  while (!all.empty() && all.back().first > current_step) remove(all.back().second), all.pop_back();
  if (keep <= 0) return;
  for (size_t i = 0; i + size_t(keep) < all.size(); ++i) remove(all[i].second);
}

}  // namespace bamba
