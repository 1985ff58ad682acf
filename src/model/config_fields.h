// Internal to model/config*.cpp: typed access to config.json fields with messages that name the field and what
// was expected, and the parsers of the parts several model types share (RoPE, the Mamba2 mixer, layer types).
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "core/error.h"
#include "io/python_json.h"
#include "model/config.h"

namespace bamba::config_detail {

// Ordered like the merge reads it; bare Infinity / NaN as Python writes them are accepted (io/python_json.h).
using json = nlohmann::ordered_json;

// Far above any real model; bounds the per-layer tables sized from a (possibly corrupt) num_hidden_layers.
constexpr int64_t kMaxLayers = 1 << 16;

struct Fields {
  const json& j;
  const std::string& label;

  const json* find(const char* key) const {
    auto it = j.find(key);
    return it == j.end() || it->is_null() ? nullptr : &*it;
  }
  // The first of `keys` present (a field and its legacy aliases), or nullptr; `used` gets its name.
  const json* find_any(std::initializer_list<const char*> keys, const char** used = nullptr) const {
    for (const char* k : keys)
      if (const json* v = find(k)) {
        if (used) *used = k;
        return v;
      }
    return nullptr;
  }
  // Sizes and token ids are capped at INT32_MAX: ample for any model, and it keeps their products (checked in
  // parse_config) from overflowing int64.
  int64_t integer(const char* key, int64_t def, int64_t min = 1, int64_t max = INT32_MAX) const {
    const json* v = find(key);
    if (!v) return def;
    if (!v->is_number_integer()) fail(label, ": field \"", key, "\" must be an integer (got ", dump_python_json(*v, -1), ")");
    // A uint64 above INT64_MAX would wrap negative in get<int64_t>().
    if (v->is_number_unsigned() && v->get<uint64_t>() > uint64_t(max))
      fail(label, ": field \"", key, "\" must be <= ", max, " (got ", dump_python_json(*v, -1), ")");
    int64_t x = v->get<int64_t>();
    if (x < min) fail(label, ": field \"", key, "\" must be >= ", min, " (got ", x, ")");
    if (x > max) fail(label, ": field \"", key, "\" must be <= ", max, " (got ", x, ")");
    return x;
  }
  // The first present of a field and its aliases.
  int64_t integer_any(std::initializer_list<const char*> keys, int64_t def, int64_t min = 1) const {
    for (const char* k : keys)
      if (find(k)) return integer(k, def, min);
    return def;
  }
  double number(const char* key, double def) const {
    const json* v = find(key);
    if (!v) return def;
    return as_number(*v, key);
  }
  double number_any(std::initializer_list<const char*> keys, double def) const {
    for (const char* k : keys)
      if (find(k)) return number(k, def);
    return def;
  }
  double as_number(const json& v, const std::string& key) const {
    if (v.is_number()) return v.get<double>();
    // Non-finite floats: bare (Python's json) or {"__float__": "Infinity"} (transformers 5.x).
    if (auto x = json_nonfinite(v)) return *x;
    fail(label, ": field \"", key, "\" must be a number (got ", dump_python_json(v, -1), ")");
  }
  bool boolean(const char* key, bool def) const {
    const json* v = find(key);
    if (!v) return def;
    if (!v->is_boolean()) fail(label, ": field \"", key, "\" must be true or false (got ", dump_python_json(*v, -1), ")");
    return v->get<bool>();
  }
  bool boolean_any(std::initializer_list<const char*> keys, bool def) const {
    for (const char* k : keys)
      if (find(k)) return boolean(k, def);
    return def;
  }
  std::string string(const char* key, const std::string& def) const {
    const json* v = find(key);
    if (!v) return def;
    if (!v->is_string()) fail(label, ": field \"", key, "\" must be a string (got ", dump_python_json(*v, -1), ")");
    return v->get<std::string>();
  }
  // A positive multiplier (muP scalars).
  float multiplier(const char* key, double def = 1.0) const {
    double x = number(key, def);
    if (!std::isfinite(x)) fail(label, ": field \"", key, "\" must be a finite number");
    return float(x);
  }
};

// Shared parts (model/config.cpp). Each reads the fields the model types spell alike and checks them.
// RoPE from rope_parameters / legacy rope_theta + rope_scaling: theta, and llama3 scaling if allowed.
void parse_rope(const Fields& f, ModelConfig& c, bool allow_llama3);
// time_step_limit = [min, max] (dt clamp of Bamba, GraniteMoeHybrid, Falcon-H1, Mamba2).
void parse_time_step_limit(const Fields& f, ModelConfig& c);
// Checks a Mamba2 mixer's sizes once mamba_inner, heads, groups are set (I = nh * P, G | nh).
void check_mamba(const Fields& f, const ModelConfig& c);
// Attention head checks (nq | ... , nkv | nq).
void check_heads(const Fields& f, const ModelConfig& c);
// "mamba"/"linear_attention" -> Mamba, "attention"/"full_attention" -> Attention, "mlp" -> None+mlp, "moe" ->
// None+MoE, "hybrid" -> as the caller maps it; the list must have num_hidden_layers entries.
std::string layer_type_at(const Fields& f, const json& list, size_t i, const char* key);

// The per-type parsers (model/config_families.cpp); parse_config has read model_type, dtype and token ids.
void parse_granitemoehybrid(const Fields& f, ModelConfig& c);
void parse_nemotron_h(const Fields& f, ModelConfig& c);
void parse_falcon_h1(const Fields& f, ModelConfig& c);
void parse_zamba2(const Fields& f, ModelConfig& c);
void parse_mamba2(const Fields& f, ModelConfig& c);
void parse_llama(const Fields& f, ModelConfig& c);

}  // namespace bamba::config_detail
