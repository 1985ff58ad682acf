#include "model/quantization.h"

#include <cmath>
#include <nlohmann/json.hpp>
#include <regex>

#include "core/error.h"
#include "core/mapped_file.h"

namespace bamba {

bool Fp8Format::ignored(const std::string& module) const {
  for (const std::string& p : ignore) {
    if (ignore_by_substring) {
      if (module.find(p) != std::string::npos) return true;
    } else if (p.rfind("re:", 0) == 0) {
      if (std::regex_search(module, std::regex(p.substr(3)), std::regex_constants::match_continuous)) return true;
    } else if (module == p || (module.size() > p.size() && module.compare(module.size() - p.size(), p.size(), p) == 0 &&
                               module[module.size() - p.size() - 1] == '.')) {
      return true;  // the whole name, or its last dotted components ("lm_head", "mlp.down_proj")
    }
  }
  return false;
}

namespace {

using json = nlohmann::json;

std::vector<std::string> string_list(const json& q, const char* key, const std::string& where) {
  std::vector<std::string> out;
  if (!q.contains(key) || q[key].is_null()) return out;
  if (!q[key].is_array()) fail(where, ": \"", key, "\" must be a list of module names");
  for (auto& s : q[key]) {
    if (!s.is_string()) fail(where, ": \"", key, "\" must be a list of module names");
    out.push_back(s.get<std::string>());
  }
  return out;
}

int64_t square_block(const json& v, const std::string& field) {
  if (!v.is_array() || v.size() != 2 || !v[0].is_number_integer() || !v[1].is_number_integer() || v[0] != v[1] ||
      v[0].get<int64_t>() < 1)
    fail(field, " must be [B, B] with B >= 1 (square blocks), got ", v.dump());
  return v[0].get<int64_t>();
}

void compressed_tensors(const json& q, const std::string& where, Fp8Format& f) {
  const std::string fmt = q.value("format", "");
  if (fmt != "float-quantized" && fmt != "naive-quantized")
    fail(where, ": quantization_config.format \"", fmt, "\" is not supported (FP8 weights are \"float-quantized\")");
  if (q.contains("kv_cache_scheme") && !q["kv_cache_scheme"].is_null())
    fail(where, ": quantization_config.kv_cache_scheme: FP8 KV caches are not supported (bf16 caches only)");
  if (!q.contains("config_groups") || !q["config_groups"].is_object() || q["config_groups"].empty())
    fail(where, ": quantization_config.config_groups is missing (compressed-tensors needs one group at least)");
  std::string strategy;
  for (auto& [name, g] : q["config_groups"].items()) {
    const std::string field = where + ": quantization_config.config_groups." + name + ".weights";
    if (!g.is_object() || !g.contains("weights") || !g["weights"].is_object()) fail(field, " is missing");
    const json& w = g["weights"];
    if (w.value("type", "") != "float" || w.value("num_bits", 0) != 8)
      fail(field, ": type \"", w.value("type", ""), "\" num_bits ", w.value("num_bits", 0),
           " is not supported (FP8 weights: type \"float\", num_bits 8)");
    if (!w.value("symmetric", true)) fail(field, ".symmetric: asymmetric FP8 weights are not supported");
    const std::string s = w.value("strategy", "");
    if (s != "channel" && s != "tensor" && s != "block")
      fail(field, ".strategy \"", s, "\" is not supported (channel, tensor or block)");
    if (!strategy.empty() && s != strategy)
      fail(field, ".strategy \"", s, "\" differs from another group's \"", strategy, "\"");
    strategy = s;
    if (s == "block") {
      if (!w.contains("block_structure")) fail(field, ".block_structure is missing (strategy \"block\")");
      f.block = square_block(w["block_structure"], field + ".block_structure");
    }
    if (g.contains("input_activations") && g["input_activations"].is_object()) {
      const json& a = g["input_activations"];
      if (a.value("type", "float") != "float" || a.value("num_bits", 8) != 8)
        fail(where, ": quantization_config.config_groups.", name, ".input_activations: only FP8 activations are supported");
    }
  }
  f.ignore = string_list(q, "ignore", where + ": quantization_config");
}

}  // namespace

Fp8Format read_fp8_format(const std::string& path) {
  Fp8Format f;
  f.source = path;
  if (!file_exists(path)) return f;
  const json j = json::parse(read_text_file(path), nullptr, false);
  if (!j.is_object() || !j.contains("quantization_config") || j["quantization_config"].is_null()) return f;
  const json& q = j["quantization_config"];
  if (!q.is_object()) fail(path, ": quantization_config must be an object");
  const std::string method = q.value("quant_method", "");
  if (method == "compressed-tensors") {
    f.method = Fp8Method::CompressedTensors;
    compressed_tensors(q, path, f);
  } else if (method == "fbgemm_fp8") {
    f.method = Fp8Method::FbgemmFp8;
    if (q.contains("activation_scale_ub")) {
      if (!q["activation_scale_ub"].is_number() || q["activation_scale_ub"].get<double>() <= 0)
        fail(path, ": quantization_config.activation_scale_ub must be a positive number");
      f.activation_scale_ub = q["activation_scale_ub"].get<float>();
    }
    f.ignore = string_list(q, "modules_to_not_convert", path + ": quantization_config");
    f.ignore_by_substring = true;
  } else if (method == "fp8") {
    f.method = Fp8Method::Fp8;
    if (q.value("fmt", "e4m3") != "e4m3")
      fail(path, ": quantization_config.fmt \"", q.value("fmt", ""), "\" is not supported (e4m3 only)");
    const std::string act = q.value("activation_scheme", "dynamic");
    if (act != "dynamic" && act != "static")
      fail(path, ": quantization_config.activation_scheme \"", act, "\" (expected dynamic or static)");
    if (q.contains("weight_block_size") && !q["weight_block_size"].is_null()) {
      f.block = square_block(q["weight_block_size"], path + ": quantization_config.weight_block_size");
      f.scale_name = "weight_scale_inv";
    }
    f.ignore = string_list(q, "modules_to_not_convert", path + ": quantization_config");
    for (auto& m : string_list(q, "ignored_layers", path + ": quantization_config")) f.ignore.push_back(m);
    f.ignore_by_substring = true;
  } else {
    fail(path, ": quantization_config.quant_method \"", method,
         "\" is not supported (FP8 checkpoints: compressed-tensors, fbgemm_fp8 or fp8)");
  }
  return f;
}

std::vector<float> read_fp8_scales(const Fp8Format& f, const Checkpoint& ckpt, const std::vector<const TensorInfo*>& parts,
                                   int64_t K, std::vector<std::string>& used) {
  const int64_t B = f.block, kb = B ? (K + B - 1) / B : 0;
  std::vector<float> out;
  for (size_t i = 0; i < parts.size(); ++i) {
    const TensorInfo* w = parts[i];
    const std::string module = w->name.substr(0, w->name.size() - 7);  // - ".weight"
    const std::string name = module + "." + f.scale_name;
    const TensorInfo* s = ckpt.find(name);
    if (!s) fail(ckpt.dir(), ": missing tensor \"", name, "\" (the scales of the F8_E4M3 weight \"", w->name, "\")");
    if (s->dtype != DType::F32 && s->dtype != DType::BF16 && s->dtype != DType::F16)
      fail(s->file, ": tensor \"", name, "\" has dtype ", dtype_name(s->dtype), ", expected F32, BF16 or F16");
    std::vector<float> v(size_t(s->numel()));
    convert_to_f32(s->data, s->dtype, v.size(), v.data());
    for (float x : v)
      if (!std::isfinite(x) || x < 0) fail(s->file, ": tensor \"", name, "\" holds ", x, " (scales must be finite and >= 0)");
    const int64_t n = w->shape[0];
    used.push_back(name);
    if (ckpt.find(module + ".input_scale")) used.push_back(module + ".input_scale");
    if (B) {
      const int64_t nb = (n + B - 1) / B;
      if (s->shape != std::vector<int64_t>{nb, kb})
        fail(s->file, ": tensor \"", name, "\" has shape ", s->shape_str(), ", expected [", nb, ", ", kb, "] (", B, "×", B,
             " blocks of ", w->shape_str(), ")");
      if (n % B && i + 1 < parts.size())
        fail(w->file, ": tensor \"", w->name, "\" has ", n, " rows, not a multiple of the block size ", B,
             " (it is stacked with the next part)");
      out.insert(out.end(), v.begin(), v.end());
    } else if (s->numel() == 1 && (s->shape.size() <= 1 || s->shape == std::vector<int64_t>{1, 1})) {
      out.insert(out.end(), size_t(n), v[0]);  // per tensor: the same scale on every row
    } else if (s->shape == std::vector<int64_t>{n, 1} || s->shape == std::vector<int64_t>{n}) {
      out.insert(out.end(), v.begin(), v.end());
    } else {
      fail(s->file, ": tensor \"", name, "\" has shape ", s->shape_str(), ", expected [", n, ", 1] (per channel) or [1] "
           "(per tensor) for ", w->shape_str());
    }
  }
  return out;
}

bool parse_quantization(const std::string& s, bool fp8_lm_head) {
  if (s == "fp8") return true;
  if (s != "none" && !s.empty()) fail("--quantization: \"", s, "\" is not supported (none or fp8)");
  if (fp8_lm_head) fail("--fp8-lm-head: only with --quantization fp8");
  return false;
}

}  // namespace bamba
