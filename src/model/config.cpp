#include "model/config.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "core/error.h"
#include "core/mapped_file.h"
#include "model/config_fields.h"

namespace bamba {

using namespace config_detail;

bool ModelConfig::has_ssm(int64_t i) const {
  const LayerKind k = layer_kinds[size_t(i)];
  return k == LayerKind::Mamba || k == LayerKind::MambaAttention || k == LayerKind::SharedAttention;
}
bool ModelConfig::has_kv(int64_t i) const {
  const LayerKind k = layer_kinds[size_t(i)];
  return k == LayerKind::Attention || k == LayerKind::MambaAttention || k == LayerKind::SharedAttention;
}
int64_t ModelConfig::ssm_index(int64_t layer) const {
  int64_t n = 0;
  for (int64_t i = 0; i < layer; ++i) n += has_ssm(i);
  return n;
}
int64_t ModelConfig::kv_index(int64_t layer) const {
  int64_t n = 0;
  for (int64_t i = 0; i < layer; ++i) n += has_kv(i);
  return n;
}
int64_t ModelConfig::n_mamba_layers() const { return ssm_index(num_hidden_layers); }
int64_t ModelConfig::n_attention_layers() const { return kv_index(num_hidden_layers); }

int64_t ModelConfig::mlp_width() const {
  int64_t w = shared_intermediate_size;
  for (auto k : mlp_kinds)
    if (k == MlpKind::SwiGLU || k == MlpKind::Relu2) w = std::max(w, intermediate_size);
  if (family == Family::Zamba2) w = std::max(w, intermediate_size);
  return w;
}

int64_t ModelConfig::parameter_count() const {
  const int64_t H = hidden_size, F = intermediate_size;
  int64_t n = vocab_size * H * (tie_word_embeddings ? 1 : 2) + H;  // embeddings, lm_head, final norm
  for (int64_t i = 0; i < num_hidden_layers; ++i) n += layer_parameter_count(i);
  if (family == Family::Zamba2)  // the shared blocks: norms [2H] + [H], attention, gate_up + down
    n += num_mem_blocks * (3 * H + attn_parameter_count() + 3 * F * H);
  return n;
}

int64_t ModelConfig::attn_parameter_count() const {
  return qkv_dim() * attn_in_dim() + num_attention_heads * head_dim * hidden_size;
}

int64_t ModelConfig::layer_parameter_count(int64_t i) const {
  const int64_t H = hidden_size, F = intermediate_size, I = mamba_inner, CD = conv_dim(), nh = mamba_n_heads;
  const int64_t mamba = in_proj_dim() * H + I * H + CD * mamba_d_conv + (mamba_conv_bias ? CD : 0) + 3 * nh +
                        (mamba_gated_norm ? I : 0) + (mamba_proj_bias ? in_proj_dim() : 0) + (mamba_out_proj_bias ? H : 0);
  const int64_t attn = attn_parameter_count();
  const int64_t glu = shared_intermediate_size > 0 ? 3 * shared_intermediate_size * H : 0;
  const LayerKind k = layer_kinds[size_t(i)];
  int64_t n = (k != LayerKind::None ? H : 0) + (mlp_kinds[size_t(i)] != MlpKind::None ? H : 0);  // norms
  if (has_ssm(i)) n += mamba;
  if (k == LayerKind::Attention || k == LayerKind::MambaAttention) n += attn;
  if (k == LayerKind::SharedAttention)
    n += H * H + 2 * attn_in_dim() * adapter_rank + (attention_adapters ? 3 * 2 * attn_in_dim() * adapter_rank : 0);
  switch (mlp_kinds[size_t(i)]) {
    case MlpKind::None: break;
    case MlpKind::SwiGLU: n += (family == Family::GraniteMoeHybrid ? glu : 3 * F * H); break;
    case MlpKind::Relu2: n += 2 * F * H; break;
    case MlpKind::MoE:
      n += num_experts * H + (moe_router == MoeRouter::SigmoidGroup ? num_experts : 0) +  // router (+ bias)
           (moe_router == MoeRouter::SoftmaxTopK ? 3 : 2) * num_experts * moe_intermediate_size * H +
           (moe_router == MoeRouter::SoftmaxTopK ? glu : 2 * shared_intermediate_size * H);
      break;
  }
  return n;
}

int64_t ModelConfig::routed_expert_parameter_count() const {
  int64_t n = 0;
  for (MlpKind k : mlp_kinds)
    if (k == MlpKind::MoE) n += (moe_router == MoeRouter::SoftmaxTopK ? 3 : 2) * num_experts * moe_intermediate_size * hidden_size;
  return n;
}

int64_t ModelConfig::mlp_up_parameter_count(int64_t layers) const {
  const int64_t H = hidden_size, glu = family == Family::GraniteMoeHybrid ? shared_intermediate_size : intermediate_size;
  int64_t n = 0;
  const size_t end = layers < 0 ? mlp_kinds.size() : std::min(mlp_kinds.size(), size_t(layers));
  for (size_t i = 0; i < end; ++i) switch (mlp_kinds[i]) {
      case MlpKind::None: break;
      case MlpKind::SwiGLU: n += 2 * glu * H; break;
      case MlpKind::Relu2: n += intermediate_size * H; break;
      case MlpKind::MoE:
        n += num_experts * H + (moe_router == MoeRouter::SoftmaxTopK ? 2 : 1) * shared_intermediate_size * H;
        break;
    }
  return n;
}

namespace {

// An upper bound on the parameter count, as if every layer had every block, computed in double (no overflow).
// Every size derived from the config (conv_dim(), in_proj_dim(), qkv_dim(), parameter_count(), buffer sizes) is
// below it, so bounding it keeps all int64 arithmetic on a parsed config exact.
double size_bound(const ModelConfig& c) {
  const double H = double(c.hidden_size), F = double(c.intermediate_size), I = double(c.mamba_inner),
               nh = double(c.mamba_n_heads), CD = I + 2 * double(c.mamba_n_groups) * double(c.mamba_d_state),
               E = I + CD + nh, dh = double(c.head_dim), nq = double(c.num_attention_heads),
               qkv = (nq + 2 * double(c.num_key_value_heads)) * dh, Hin = 2 * H;
  const double mlp = 2 * H + 3 * F * H, mamba = (E + I) * H + CD * double(c.mamba_d_conv + 1) + 3 * nh + I + E + H,
               attn = qkv * Hin + nq * dh * H + H * H + 8 * Hin * double(c.adapter_rank),
               moe = double(c.num_experts) * (H + 3 * double(c.moe_intermediate_size) * H) +
                     3 * double(c.shared_intermediate_size) * H;
  return 2 * double(c.vocab_size) * H + H + double(c.num_hidden_layers) * (mlp + mamba + attn + moe) +
         double(c.num_mem_blocks) * (mlp + attn);
}

DType parse_torch_dtype(const std::string& s, const std::string& label, const char* key) {
  std::string t = s.rfind("torch.", 0) == 0 ? s.substr(6) : s;
  if (t == "float32" || t == "float") return DType::F32;
  if (t == "bfloat16") return DType::BF16;
  if (t == "float16" || t == "half") return DType::F16;
  fail(label, ": field \"", key, "\" = \"", s, "\" is not a supported dtype (expected float32, bfloat16 or float16)");
}

constexpr const char* kSupported =
    "\"bamba\", \"granitemoehybrid\", \"nemotron_h\", \"falcon_h1\", \"zamba2\", \"mamba2\", \"llama\"";

}  // namespace

namespace config_detail {

void parse_rope(const Fields& f, ModelConfig& c, bool allow_llama3) {
  const std::string& label = f.label;
  double theta = f.number("rope_theta", c.rope_theta);
  // rope_parameters (5.x) or rope_scaling (legacy): {"rope_type" | "type": ..., "rope_theta", "factor", ...}
  auto read = [&](const json& rp, const char* key) {
    if (!rp.is_object()) fail(label, ": field \"", key, "\" must be an object");
    Fields r{rp, label};
    theta = r.number("rope_theta", theta);
    std::string type = r.string("rope_type", r.string("type", "default"));
    if (type == "llama3" && allow_llama3) {
      c.rope_factor = float(r.number("factor", 8.0));
      c.rope_low_freq_factor = float(r.number("low_freq_factor", 1.0));
      c.rope_high_freq_factor = float(r.number("high_freq_factor", 4.0));
      c.rope_original_max_position = r.integer("original_max_position_embeddings", c.max_position_embeddings);
      if (!(c.rope_factor > 0 && c.rope_low_freq_factor > 0 && c.rope_high_freq_factor > c.rope_low_freq_factor))
        fail(label, ": ", key, " (llama3) needs factor > 0 and high_freq_factor > low_freq_factor > 0");
    } else if (type != "default") {
      fail(label, ": ", key, ".rope_type \"", type, "\" is not supported (expected \"default\"",
           allow_llama3 ? " or \"llama3\")" : ")");
    }
  };
  if (const json* rp = f.find("rope_parameters")) read(*rp, "rope_parameters");
  if (const json* rs = f.find("rope_scaling")) read(*rs, "rope_scaling");
  if (!(theta > 0)) fail(label, ": rope_theta must be > 0");
  c.rope_theta = float(theta);
}

void parse_time_step_limit(const Fields& f, ModelConfig& c) {
  c.time_step_min = 0.f;
  c.time_step_max = std::numeric_limits<float>::infinity();
  if (const json* tl = f.find("time_step_limit")) {
    if (!tl->is_array() || tl->size() != 2) fail(f.label, ": field \"time_step_limit\" must be [min, max]");
    c.time_step_min = float(f.as_number((*tl)[0], "time_step_limit[0]"));
    c.time_step_max = float(f.as_number((*tl)[1], "time_step_limit[1]"));
    if (!(c.time_step_min <= c.time_step_max))
      fail(f.label, ": field \"time_step_limit\" must have min <= max (got ", dump_python_json(*tl, -1), ")");
  }
}

void check_mamba(const Fields& f, const ModelConfig& c) {
  if (c.mamba_d_head * c.mamba_n_heads != c.mamba_inner)
    fail(f.label, ": mamba heads ", c.mamba_n_heads, " x head dim ", c.mamba_d_head, " must equal the SSM inner size ",
         c.mamba_inner);
  if (c.mamba_n_heads % c.mamba_n_groups)
    fail(f.label, ": mamba heads ", c.mamba_n_heads, " are not divisible by n_groups ", c.mamba_n_groups);
  if (c.mamba_inner % c.gated_norm_group_size)
    fail(f.label, ": the SSM inner size ", c.mamba_inner, " is not divisible into norm groups of ", c.gated_norm_group_size);
}

void check_heads(const Fields& f, const ModelConfig& c) {
  if (c.num_attention_heads % c.num_key_value_heads)
    fail(f.label, ": num_attention_heads ", c.num_attention_heads, " is not divisible by num_key_value_heads ",
         c.num_key_value_heads);
}

std::string layer_type_at(const Fields& f, const json& list, size_t i, const char* key) {
  const json& v = list[i];
  if (!v.is_string()) fail(f.label, ": ", key, "[", i, "] = ", dump_python_json(v, -1), " must be a string");
  return v.get<std::string>();
}

}  // namespace config_detail

namespace {

void parse_bamba(const Fields& f, ModelConfig& c) {
  const std::string& label = f.label;
  std::string act = f.string("hidden_act", "silu");
  if (act != "silu") fail(label, ": field \"hidden_act\" = \"", act, "\" is not supported (expected \"silu\")");

  // Defaults are BambaConfig's (transformers 4.48 / 5.17).
  c.vocab_size = f.integer("vocab_size", 128000);
  c.hidden_size = f.integer("hidden_size", 4096);
  c.intermediate_size = f.integer("intermediate_size", 14336);
  c.num_hidden_layers = f.integer("num_hidden_layers", 32, 1, kMaxLayers);
  c.num_attention_heads = f.integer("num_attention_heads", 32);
  c.num_key_value_heads = f.integer("num_key_value_heads", c.num_attention_heads);
  c.rms_norm_eps = float(f.number("rms_norm_eps", 1e-5));
  if (!(c.rms_norm_eps > 0)) fail(label, ": field \"rms_norm_eps\" must be > 0");
  c.tie_word_embeddings = f.boolean("tie_word_embeddings", false);
  c.z_loss_coefficient = float(f.number("z_loss_coefficient", 0.0));
  if (!(c.z_loss_coefficient >= 0)) fail(label, ": field \"z_loss_coefficient\" must be >= 0");
  c.max_position_embeddings = f.integer("max_position_embeddings", 262144);

  if (c.hidden_size % c.num_attention_heads)
    fail(label, ": hidden_size ", c.hidden_size, " is not divisible by num_attention_heads ", c.num_attention_heads);
  c.head_dim = f.integer("head_dim", c.hidden_size / c.num_attention_heads);
  if (c.num_attention_heads % c.num_key_value_heads)
    fail(label, ": num_attention_heads ", c.num_attention_heads, " is not divisible by num_key_value_heads ",
         c.num_key_value_heads);

  // RoPE. Bamba forces partial_rotary_factor = 0.5 in both 4.x and 5.x (attn_rotary_emb is ignored by HF).
  double theta = f.number("rope_theta", 10000.0);
  if (const json* rp = f.find("rope_parameters")) {
    if (!rp->is_object()) fail(label, ": field \"rope_parameters\" must be an object");
    Fields r{*rp, label};
    theta = r.number("rope_theta", theta);
    std::string type = r.string("rope_type", "default");
    if (type != "default")
      fail(label, ": rope_parameters.rope_type \"", type, "\" is not supported (expected \"default\")");
  }
  if (const json* rs = f.find("rope_scaling")) {
    Fields r{*rs, label};
    std::string type = rs->is_object() ? r.string("rope_type", r.string("type", "default")) : "?";
    if (type != "default") fail(label, ": field \"rope_scaling\" is not supported (expected null)");
  }
  if (!(theta > 0)) fail(label, ": rope_theta must be > 0");
  c.rope_theta = float(theta);
  c.rotary_dim = int64_t(double(c.head_dim) * 0.5);

  // Mamba2 mixer.
  double expand = f.number("mamba_expand", 2.0), inner = expand * double(c.hidden_size);
  // Checked as a double first: converting NaN, inf or a huge value to int64 is undefined behaviour.
  if (!(inner >= 1 && inner <= INT32_MAX))
    fail(label, ": mamba_expand * hidden_size = ", inner, " must be in [1, ", INT32_MAX, "] (mamba_expand = ", expand, ")");
  c.mamba_inner = int64_t(inner);
  c.mamba_n_heads = f.integer("mamba_n_heads", 128);
  if (const json* dh = f.find("mamba_d_head"); dh && dh->is_string()) {
    if (dh->get<std::string>() != "auto") fail(label, ": field \"mamba_d_head\" must be an integer or \"auto\"");
    c.mamba_d_head = c.mamba_inner / c.mamba_n_heads;
  } else {
    c.mamba_d_head = f.integer("mamba_d_head", c.mamba_inner / c.mamba_n_heads);
  }
  if (c.mamba_d_head * c.mamba_n_heads != c.mamba_inner)
    fail(label, ": mamba_n_heads ", c.mamba_n_heads, " x mamba_d_head ", c.mamba_d_head,
         " must equal the SSM inner size mamba_expand*hidden_size = ", c.mamba_inner);
  c.mamba_n_groups = f.integer("mamba_n_groups", 1);
  if (c.mamba_n_heads % c.mamba_n_groups)
    fail(label, ": mamba_n_heads ", c.mamba_n_heads, " is not divisible by mamba_n_groups ", c.mamba_n_groups);
  c.mamba_d_state = f.integer("mamba_d_state", 256);
  c.mamba_d_conv = f.integer("mamba_d_conv", 4);
  c.mamba_chunk_size = f.integer("mamba_chunk_size", 256);
  c.mamba_conv_bias = f.boolean("mamba_conv_bias", true);
  c.mamba_proj_bias = f.boolean("mamba_proj_bias", false);
  c.mamba_out_proj_bias = c.mamba_proj_bias;
  c.mamba_norm_eps = c.rms_norm_eps;
  c.gated_norm_group_size = c.mamba_inner;
  parse_time_step_limit(f, c);

  if (double n = size_bound(c); n > 0x1p48)
    fail(label, ": the sizes describe a model of up to ", n, " parameters (more than 2^48; is a field corrupt?)");

  // Layer kinds: layer_types (5.x) / layers_block_type, else attn_layer_indices (4.x), else all Mamba.
  c.layer_kinds.assign(size_t(c.num_hidden_layers), LayerKind::Mamba);
  const json* lt = f.find("layer_types");
  if (!lt) lt = f.find("layers_block_type");
  if (lt) {
    if (!lt->is_array() || int64_t(lt->size()) != c.num_hidden_layers)
      fail(label, ": field \"layer_types\" must be a list of num_hidden_layers = ", c.num_hidden_layers, " strings");
    for (size_t i = 0; i < lt->size(); ++i) {
      const json& v = (*lt)[i];
      std::string s = v.is_string() ? v.get<std::string>() : "";
      if (s == "full_attention" || s == "attention") c.layer_kinds[i] = LayerKind::Attention;
      else if (s == "linear_attention" || s == "mamba") c.layer_kinds[i] = LayerKind::Mamba;
      else
        fail(label, ": layer_types[", i, "] = ", dump_python_json(v, -1),
             " is not a known layer type (expected \"full_attention\" or \"linear_attention\")");
    }
  }
  if (const json* ai = f.find("attn_layer_indices")) {
    if (!ai->is_array()) fail(label, ": field \"attn_layer_indices\" must be a list of layer indices");
    std::vector<LayerKind> kinds(size_t(c.num_hidden_layers), LayerKind::Mamba);
    for (auto& v : *ai) {
      if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() >= c.num_hidden_layers)
        fail(label, ": attn_layer_indices entry ", dump_python_json(v, -1), " is not a layer index in [0, ", c.num_hidden_layers, ")");
      kinds[size_t(v.get<int64_t>())] = LayerKind::Attention;
    }
    if (lt && kinds != c.layer_kinds) fail(label, ": \"layer_types\" and \"attn_layer_indices\" disagree");
    c.layer_kinds = kinds;
  }
  c.mlp_kinds.assign(size_t(c.num_hidden_layers), MlpKind::SwiGLU);
}

}  // namespace

ModelConfig parse_config(const std::string& json_text, const std::string& label) {
  json j = parse_python_json(json_text);
  if (j.is_discarded()) fail(label, ": not valid JSON");
  if (!j.is_object()) fail(label, ": expected a JSON object");
  Fields f{j, label};
  ModelConfig c;
  c.source = label;

  c.model_type = f.string("model_type", "");
  if (c.model_type.empty()) fail(label, ": missing field \"model_type\" (expected one of ", kSupported, ")");
  if (c.model_type == "bamba") parse_bamba(f, c);
  else if (c.model_type == "granitemoehybrid") parse_granitemoehybrid(f, c);
  else if (c.model_type == "nemotron_h") parse_nemotron_h(f, c);
  else if (c.model_type == "falcon_h1") parse_falcon_h1(f, c);
  else if (c.model_type == "zamba2") parse_zamba2(f, c);
  else if (c.model_type == "mamba2") parse_mamba2(f, c);
  else if (c.model_type == "llama") parse_llama(f, c);
  else fail(label, ": model_type \"", c.model_type, "\" is not supported (supported: ", kSupported, ")");
  if (double n = size_bound(c); n > 0x1p48)
    fail(label, ": the sizes describe a model of up to ", n, " parameters (more than 2^48; is a field corrupt?)");
  BAMBA_CHECK(int64_t(c.layer_kinds.size()) == c.num_hidden_layers && int64_t(c.mlp_kinds.size()) == c.num_hidden_layers,
              label, ": internal: layer tables of the wrong length");

  // Token ids.
  c.bos_token_id = f.integer("bos_token_id", 1, 0);
  c.pad_token_id = f.integer("pad_token_id", 0, 0);
  if (const json* e = f.find("eos_token_id")) {
    if (e->is_number_integer()) c.eos_token_ids = {e->get<int64_t>()};
    else if (e->is_array()) {
      for (auto& v : *e) {
        if (!v.is_number_integer()) fail(label, ": field \"eos_token_id\" must be an integer or a list of integers");
        c.eos_token_ids.push_back(v.get<int64_t>());
      }
    } else fail(label, ": field \"eos_token_id\" must be an integer or a list of integers");
  } else {
    c.eos_token_ids = {2};
  }

  std::string dt = f.string("dtype", f.string("torch_dtype", "float32"));
  c.dtype = parse_torch_dtype(dt, label, f.find("dtype") ? "dtype" : "torch_dtype");
  return c;
}

ModelConfig load_config(const std::string& model_dir) {
  std::string path = model_dir + "/config.json";
  if (!dir_exists(model_dir)) fail(model_dir, ": no such model folder");
  if (!file_exists(path)) fail(model_dir, ": missing config.json");
  return parse_config(read_text_file(path), path);
}

namespace {
ModelConfig from_dims(const char* source, int64_t V, int64_t H, int64_t F, int64_t L, std::vector<int64_t> attn,
                      int64_t nq, int64_t nkv, int64_t nh, int64_t P, int64_t G, int64_t N, int64_t Q) {
  json j = {{"model_type", "bamba"}, {"vocab_size", V}, {"hidden_size", H}, {"intermediate_size", F},
            {"num_hidden_layers", L}, {"attn_layer_indices", attn}, {"num_attention_heads", nq},
            {"num_key_value_heads", nkv}, {"mamba_n_heads", nh}, {"mamba_d_head", P}, {"mamba_n_groups", G},
            {"mamba_d_state", N}, {"mamba_d_conv", 4}, {"mamba_expand", 2}, {"mamba_chunk_size", Q},
            {"rms_norm_eps", 1e-5}, {"tie_word_embeddings", false}};
  return parse_config(j.dump(), source);
}
}  // namespace

ModelConfig dummy_config() {
  // Vocabulary = the 256 bytes + BOS + EOS of Tokenizer::byte_level_default().
  ModelConfig c = from_dims("built-in dummy model", 258, 64, 128, 4, {1, 3}, 4, 2, 8, 16, 1, 16, 16);
  c.bos_token_id = 256;
  c.eos_token_ids = {257};
  c.pad_token_id = 257;
  return c;
}

ModelConfig bamba_9b_config() {
  ModelConfig c = from_dims("bamba-9b preset", 128256, 4096, 14336, 32, {9, 18, 27}, 32, 8, 128, 64, 1, 128, 256);
  c.bos_token_id = 128000;
  c.eos_token_ids = {128001};
  c.dtype = DType::BF16;
  return c;
}

std::string config_to_json(const ModelConfig& c) {
  if (c.family != Family::Bamba)
    fail(c.source, ": writing config.json is supported for model_type \"bamba\" only (this model is \"", c.model_type, "\")");
  json attn = json::array();
  for (int64_t i = 0; i < c.num_hidden_layers; ++i)
    if (c.layer_kinds[size_t(i)] == LayerKind::Attention) attn.push_back(i);
  json eos = c.eos_token_ids.size() == 1 ? json(c.eos_token_ids[0]) : json(c.eos_token_ids);
  const char* dtype = c.dtype == DType::BF16 ? "bfloat16" : c.dtype == DType::F16 ? "float16" : "float32";
  json j = {{"architectures", {"BambaForCausalLM"}},
            {"model_type", "bamba"},
            {"vocab_size", c.vocab_size},
            {"hidden_size", c.hidden_size},
            {"intermediate_size", c.intermediate_size},
            {"num_hidden_layers", c.num_hidden_layers},
            {"attn_layer_indices", attn},
            {"num_attention_heads", c.num_attention_heads},
            {"num_key_value_heads", c.num_key_value_heads},
            {"head_dim", c.head_dim},
            {"attn_rotary_emb", c.rotary_dim},
            {"rope_theta", c.rope_theta},
            {"mamba_n_heads", c.mamba_n_heads},
            {"mamba_d_head", c.mamba_d_head},
            {"mamba_n_groups", c.mamba_n_groups},
            {"mamba_d_state", c.mamba_d_state},
            {"mamba_d_conv", c.mamba_d_conv},
            {"mamba_expand", c.mamba_inner / c.hidden_size},
            {"mamba_chunk_size", c.mamba_chunk_size},
            {"mamba_conv_bias", c.mamba_conv_bias},
            {"mamba_proj_bias", c.mamba_proj_bias},
            {"rms_norm_eps", c.rms_norm_eps},
            {"tie_word_embeddings", c.tie_word_embeddings},
            {"hidden_act", "silu"},
            {"bos_token_id", c.bos_token_id},
            {"eos_token_id", eos},
            {"pad_token_id", c.pad_token_id},
            {"max_position_embeddings", c.max_position_embeddings},
            {"torch_dtype", dtype}};
  // BambaConfig's default limit is (0, inf); an infinite bound has no spelling that both 4.x and 5.x read.
  if (c.time_step_min != 0.f || !std::isinf(c.time_step_max)) {
    BAMBA_CHECK(std::isfinite(c.time_step_max), c.source, ": cannot write time_step_limit [", c.time_step_min,
                ", inf] in config.json");
    j["time_step_limit"] = json::array({c.time_step_min, c.time_step_max});
  }
  return dump_python_json(j) + "\n";
}

}  // namespace bamba
