// libFuzzer target: bytes -> parse_config. A bamba::Error is the expected answer to bad input; anything else (a
// crash, a sanitizer report, another exception) is a finding. On success the derived sizes are computed, so UBSan
// checks that a config the parser accepts cannot overflow them.
//
// Two modes: the input is config.json text (finds JSON and type-check bugs), or, when it starts with byte 0x01
// (never valid JSON), the rest is a recipe of edits to a valid config that set known fields to extreme,
// wrong-typed or inconsistent values (finds the arithmetic bugs -- int64 overflow, NaN or inf cast to an
// integer -- that random text reaches too rarely).
#include <fuzzer/FuzzedDataProvider.h>

#include <cstddef>
#include <cstdint>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>

#include "core/error.h"
#include "model/config.h"

namespace {

using json = nlohmann::json;

const char* const kFields[] = {
    "model_type", "hidden_act", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
    "num_attention_heads", "num_key_value_heads", "head_dim", "rms_norm_eps", "tie_word_embeddings",
    "max_position_embeddings", "rope_theta", "rope_parameters", "rope_scaling", "mamba_expand", "mamba_n_heads",
    "mamba_d_head", "mamba_n_groups", "mamba_d_state", "mamba_d_conv", "mamba_chunk_size", "mamba_conv_bias",
    "mamba_proj_bias", "time_step_limit", "layer_types", "layers_block_type", "attn_layer_indices", "bos_token_id",
    "eos_token_id", "pad_token_id", "dtype", "torch_dtype"};

json value(FuzzedDataProvider& p) {
  const double inf = std::numeric_limits<double>::infinity();
  switch (p.ConsumeIntegralInRange(0, 11)) {
    case 0: return p.ConsumeIntegral<int64_t>();
    case 1: return p.ConsumeIntegral<uint64_t>();
    case 2: return p.ConsumeIntegralInRange<int64_t>(-2, 70);
    case 3: return int64_t(1) << p.ConsumeIntegralInRange(0, 62);
    case 4: return p.ConsumeFloatingPoint<double>();
    case 5: return json{{"__float__", p.PickValueInArray({"NaN", "Infinity", "-Infinity", "x"})}};
    case 6: return p.PickValueInArray({"bamba", "auto", "default", "silu", "bfloat16", "float16", "", "mamba"});
    case 7: return p.ConsumeBool();
    case 8: return nullptr;
    case 9: {
      json a = json::array();
      for (int n = p.ConsumeIntegralInRange(0, 6); n > 0; --n)
        a.push_back(p.ConsumeBool() ? json(p.PickValueInArray({"full_attention", "linear_attention", "mamba", "x"}))
                                    : json(p.ConsumeIntegralInRange<int64_t>(-1, 6)));
      return a;
    }
    case 10: return json::array({p.ConsumeFloatingPoint<double>(), p.ConsumeBool() ? json(inf) : json(1.0)});
    default: return json{{"rope_type", p.ConsumeBool() ? "default" : "yarn"}, {"rope_theta", p.ConsumeFloatingPoint<double>()}};
  }
}

std::string edited_config(FuzzedDataProvider& p) {
  // A small valid 5.x-style config to start from (not a fixture copy: the fuzzer only needs something valid).
  json j = {{"model_type", "bamba"},      {"vocab_size", 64},       {"hidden_size", 32},
            {"intermediate_size", 48},    {"num_hidden_layers", 3}, {"num_attention_heads", 4},
            {"num_key_value_heads", 2},   {"mamba_n_heads", 4},     {"mamba_d_head", 16},
            {"mamba_n_groups", 2},        {"mamba_d_state", 8},     {"mamba_d_conv", 4},
            {"mamba_expand", 2},          {"attn_layer_indices", {1}},
            {"time_step_limit", {0.0, {{"__float__", "Infinity"}}}}};
  for (int n = p.ConsumeIntegralInRange(1, 4); n > 0 && p.remaining_bytes() > 0; --n) {
    const char* key = p.PickValueInArray(kFields);
    if (p.ConsumeIntegralInRange(0, 7) == 0) j.erase(key);
    else j[key] = value(p);
  }
  return j.dump();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string text;
  if (size > 0 && data[0] == 1) {
    FuzzedDataProvider p(data + 1, size - 1);
    text = edited_config(p);
  } else {
    text.assign(reinterpret_cast<const char*>(data), size);
  }
  try {
    bamba::ModelConfig c = bamba::parse_config(text, "fuzz.json");
    volatile int64_t sink = c.conv_dim() + c.in_proj_dim() + c.qkv_dim() + c.parameter_count() +
                            c.n_attention_layers() + c.ssm_index(c.num_hidden_layers - 1) +
                            c.kv_index(c.num_hidden_layers - 1);
    (void)sink;
  } catch (const bamba::Error&) {
  }
  return 0;
}
