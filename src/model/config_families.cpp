// The config.json parsers of Bamba's relatives (docs/family.md): each reads its model type's own field names
// (and the legacy aliases transformers 5.x still accepts) into ModelConfig, with the defaults of that type's
// transformers config class, and spells out the type's layer structure as LayerKind / MlpKind per layer.
#include <cmath>
#include <limits>

#include "model/config_fields.h"

namespace bamba::config_detail {
namespace {

void common_sizes(const Fields& f, ModelConfig& c, int64_t vocab, int64_t hidden, int64_t layers) {
  c.vocab_size = f.integer("vocab_size", vocab);
  c.hidden_size = f.integer("hidden_size", hidden);
  c.num_hidden_layers = f.integer("num_hidden_layers", layers, 1, kMaxLayers);
}

void attention_sizes(const Fields& f, ModelConfig& c, int64_t nq, int64_t nkv_default /* 0 = nq */) {
  c.num_attention_heads = f.integer("num_attention_heads", nq);
  c.num_key_value_heads = f.integer("num_key_value_heads", nkv_default ? nkv_default : c.num_attention_heads);
  check_heads(f, c);
  if (!f.find("head_dim") && c.hidden_size % c.num_attention_heads)
    fail(f.label, ": hidden_size ", c.hidden_size, " is not divisible by num_attention_heads ", c.num_attention_heads);
  c.head_dim = f.integer("head_dim", c.hidden_size / c.num_attention_heads);
}

void expect_act(const Fields& f, const char* key, const char* def, const char* want) {
  std::string act = f.string(key, def);
  if (act != want) fail(f.label, ": field \"", key, "\" = \"", act, "\" is not supported (expected \"", want, "\")");
}

void expect_false(const Fields& f, const char* key) {
  if (f.boolean(key, false)) fail(f.label, ": field \"", key, "\" = true is not supported yet");
}

void eps_field(const Fields& f, ModelConfig& c, const char* key, double def) {
  c.rms_norm_eps = float(f.number(key, def));
  if (!(c.rms_norm_eps > 0)) fail(f.label, ": field \"", key, "\" must be > 0");
}

// mamba_d_head / head_dim: an integer or "auto" (= I / n_heads).
int64_t head_dim_or_auto(const Fields& f, const char* key, int64_t inner, int64_t heads) {
  if (const json* v = f.find(key); v && v->is_string()) {
    if (v->get<std::string>() != "auto") fail(f.label, ": field \"", key, "\" must be an integer or \"auto\"");
    return inner / heads;
  }
  return f.integer(key, inner / heads);
}

int64_t expand_inner(const Fields& f, const char* key, int64_t H) {
  double expand = f.number(key, 2.0), inner = expand * double(H);
  if (!(inner >= 1 && inner <= INT32_MAX)) fail(f.label, ": ", key, " * hidden_size = ", inner, " is out of range");
  return int64_t(inner);
}

// The layer-type list of a hybrid: `keys` in order of preference; maps each entry with `map` (returns false for
// an unknown entry). Default: every layer `def`.
template <typename Map>
void layer_list(const Fields& f, ModelConfig& c, std::initializer_list<const char*> keys, Map map, const char* expected) {
  const char* key = nullptr;
  const json* lt = f.find_any(keys, &key);
  if (!lt) return;
  if (!lt->is_array() || int64_t(lt->size()) != c.num_hidden_layers)
    fail(f.label, ": field \"", key, "\" must be a list of num_hidden_layers = ", c.num_hidden_layers, " strings");
  for (size_t i = 0; i < lt->size(); ++i) {
    std::string s = layer_type_at(f, *lt, i, key);
    if (!map(s, i))
      fail(f.label, ": ", key, "[", i, "] = \"", s, "\" is not a known layer type (expected ", expected, ")");
  }
}

}  // namespace

// GraniteMoeHybrid (Granite 4.0-H): Bamba's layers with muP scalars, optional RoPE, and a MoE + shared SwiGLU MLP.
void parse_granitemoehybrid(const Fields& f, ModelConfig& c) {
  c.family = Family::GraniteMoeHybrid;
  expect_act(f, "hidden_act", "silu", "silu");
  common_sizes(f, c, 32000, 4096, 32);
  attention_sizes(f, c, 32, 0);
  expect_false(f, "attention_bias");
  eps_field(f, c, "rms_norm_eps", 1e-6);
  c.tie_word_embeddings = f.boolean("tie_word_embeddings", false);
  c.max_position_embeddings = f.integer("max_position_embeddings", 2048);
  c.embedding_multiplier = f.multiplier("embedding_multiplier");
  c.residual_multiplier = f.multiplier("residual_multiplier");
  const float logits_scaling = f.multiplier("logits_scaling");
  if (logits_scaling == 0.f) fail(f.label, ": field \"logits_scaling\" must not be 0");
  c.logits_scale = 1.f / logits_scaling;
  c.attention_scale = f.multiplier("attention_multiplier");
  // NoPE unless position_embedding_type == "rope" (then full-head RoPE).
  const std::string pe = f.string("position_embedding_type", "");
  if (!pe.empty() && pe != "rope" && pe != "nope")
    fail(f.label, ": field \"position_embedding_type\" = \"", pe, "\" is not supported (expected \"rope\" or null)");
  parse_rope(f, c, false);
  c.rotary_dim = pe == "rope" ? c.head_dim : 0;

  // Mamba: exactly Bamba's mixer (full-width gated norm, time_step_limit).
  c.mamba_inner = expand_inner(f, "mamba_expand", c.hidden_size);
  c.mamba_n_heads = f.integer("mamba_n_heads", 128);
  c.mamba_d_head = head_dim_or_auto(f, "mamba_d_head", c.mamba_inner, c.mamba_n_heads);
  c.mamba_n_groups = f.integer("mamba_n_groups", 1);
  c.mamba_d_state = f.integer("mamba_d_state", 256);
  c.mamba_d_conv = f.integer("mamba_d_conv", 4);
  c.mamba_chunk_size = f.integer("mamba_chunk_size", 256);
  c.mamba_conv_bias = f.boolean("mamba_conv_bias", true);
  c.mamba_proj_bias = c.mamba_out_proj_bias = f.boolean("mamba_proj_bias", false);
  c.mamba_norm_eps = c.rms_norm_eps;
  c.gated_norm_group_size = c.mamba_inner;
  parse_time_step_limit(f, c);
  check_mamba(f, c);

  // MLP: shared_mlp (SwiGLU, width shared_intermediate_size) in every layer, plus routed experts
  // (intermediate_size each) when num_local_experts > 0.
  c.num_experts = f.integer("num_local_experts", 8, 0);
  c.shared_intermediate_size = f.integer("shared_intermediate_size", 1024);
  c.intermediate_size = c.shared_intermediate_size;  // the dense MLP of a layer is the shared one
  if (c.num_experts > 0) {
    c.num_experts_per_tok = f.integer("num_experts_per_tok", 2);
    if (c.num_experts_per_tok > c.num_experts)
      fail(f.label, ": num_experts_per_tok ", c.num_experts_per_tok, " exceeds num_local_experts ", c.num_experts);
    c.moe_intermediate_size = f.integer("intermediate_size", 11008);
    c.moe_router = MoeRouter::SoftmaxTopK;
  }
  c.layer_kinds.assign(size_t(c.num_hidden_layers), LayerKind::Mamba);
  c.mlp_kinds.assign(size_t(c.num_hidden_layers), c.num_experts > 0 ? MlpKind::MoE : MlpKind::SwiGLU);
  layer_list(f, c, {"layer_types", "layers_block_type"}, [&](const std::string& s, size_t i) {
    if (s == "mamba" || s == "linear_attention") c.layer_kinds[i] = LayerKind::Mamba;
    else if (s == "attention" || s == "full_attention") c.layer_kinds[i] = LayerKind::Attention;
    else return false;
    return true;
  }, "\"mamba\" or \"attention\"");
}

// NemotronH: each layer is ONE pre-norm block: a Mamba2 mixer (group-wise gated norm, dt floor only), NoPE
// attention, a relu² MLP or a sigmoid-routed relu² MoE.
void parse_nemotron_h(const Fields& f, ModelConfig& c) {
  c.family = Family::NemotronH;
  c.vocab_size = f.integer("vocab_size", 131072);
  c.hidden_size = f.integer("hidden_size", 4096);
  // Layers: layers_block_type (5.x) or hybrid_override_pattern ("M" mamba, "*" attention, "-" mlp, "E" moe).
  std::vector<std::string> types;
  if (const json* p = f.find("hybrid_override_pattern"); p && !f.find("layers_block_type")) {
    if (!p->is_string()) fail(f.label, ": field \"hybrid_override_pattern\" must be a string");
    for (char ch : p->get<std::string>()) {
      if (ch == 'M') types.push_back("mamba");
      else if (ch == '*') types.push_back("attention");
      else if (ch == '-') types.push_back("mlp");
      else if (ch == 'E') types.push_back("moe");
      else fail(f.label, ": hybrid_override_pattern has '", std::string(1, ch), "' (expected M, *, - or E)");
    }
  } else if (const json* lt = f.find_any({"layers_block_type", "layer_types"})) {
    if (!lt->is_array()) fail(f.label, ": field \"layers_block_type\" must be a list of strings");
    for (size_t i = 0; i < lt->size(); ++i) types.push_back(layer_type_at(f, *lt, i, "layers_block_type"));
  } else {
    fail(f.label, ": missing field \"layers_block_type\" (or \"hybrid_override_pattern\")");
  }
  if (types.empty() || int64_t(types.size()) > kMaxLayers) fail(f.label, ": the layer list must have 1..", kMaxLayers, " entries");
  c.num_hidden_layers = f.integer("num_hidden_layers", int64_t(types.size()), 1, kMaxLayers);
  if (c.num_hidden_layers != int64_t(types.size()))
    fail(f.label, ": num_hidden_layers ", c.num_hidden_layers, " differs from the ", types.size(), " layer types");
  c.layer_kinds.assign(types.size(), LayerKind::None);
  c.mlp_kinds.assign(types.size(), MlpKind::None);
  for (size_t i = 0; i < types.size(); ++i) {
    const std::string& s = types[i];
    if (s == "mamba" || s == "linear_attention") c.layer_kinds[i] = LayerKind::Mamba;
    else if (s == "attention" || s == "full_attention") c.layer_kinds[i] = LayerKind::Attention;
    else if (s == "mlp") c.mlp_kinds[i] = MlpKind::Relu2;
    else if (s == "moe") c.mlp_kinds[i] = MlpKind::MoE;
    else fail(f.label, ": layer type ", i, " \"", s, "\" is not known (expected mamba, attention, mlp or moe)");
  }

  c.tie_word_embeddings = f.boolean("tie_word_embeddings", false);
  c.max_position_embeddings = f.integer("max_position_embeddings", 4096);
  eps_field(f, c, "layer_norm_epsilon", 1e-5);
  // Attention: no RoPE at all, explicit head_dim, no biases.
  attention_sizes(f, c, 32, 8);
  c.head_dim = f.integer_any({"head_dim", "attention_head_dim"}, 128);
  expect_false(f, "attention_bias");
  c.rotary_dim = 0;
  // MLP
  expect_act(f, "mlp_hidden_act", "relu2", "relu2");
  expect_false(f, "mlp_bias");
  c.intermediate_size = f.integer("intermediate_size", 21504);
  // Mamba2 mixer: I = mamba_num_heads * mamba_head_dim (not expand * H).
  expect_act(f, "mamba_hidden_act", "silu", "silu");
  c.mamba_n_heads = f.integer("mamba_num_heads", 128);
  c.mamba_d_head = f.integer("mamba_head_dim", 64);
  c.mamba_inner = c.mamba_n_heads * c.mamba_d_head;
  c.mamba_n_groups = f.integer_any({"n_groups", "mamba_n_groups"}, 8);
  c.mamba_d_state = f.integer_any({"ssm_state_size", "mamba_d_state"}, 128);
  c.mamba_d_conv = f.integer_any({"conv_kernel", "mamba_d_conv"}, 4);
  c.mamba_chunk_size = f.integer_any({"chunk_size", "mamba_chunk_size"}, 128);
  c.mamba_conv_bias = f.boolean_any({"use_conv_bias", "mamba_conv_bias"}, true);
  c.mamba_proj_bias = c.mamba_out_proj_bias = f.boolean("use_bias", false);
  c.mamba_norm_eps = c.rms_norm_eps;
  c.gated_norm_group_size = c.mamba_inner / c.mamba_n_groups;
  // The torch path floors dt at time_step_min and ignores time_step_limit.
  c.time_step_min = float(f.number_any({"time_step_min", "mamba_dt_min"}, 0.001));
  c.time_step_max = std::numeric_limits<float>::infinity();
  check_mamba(f, c);
  // MoE (DeepSeek-V3 router).
  const bool has_moe = std::find(c.mlp_kinds.begin(), c.mlp_kinds.end(), MlpKind::MoE) != c.mlp_kinds.end();
  if (has_moe) {
    c.moe_router = MoeRouter::SigmoidGroup;
    c.num_experts = f.integer_any({"n_routed_experts", "num_local_experts"}, 8);
    c.num_experts_per_tok = f.integer("num_experts_per_tok", 2);
    c.moe_intermediate_size = f.integer("moe_intermediate_size", 7688);
    const int64_t n_shared = f.integer("n_shared_experts", 1, 0);
    if (n_shared > 1) fail(f.label, ": n_shared_experts ", n_shared, " is not supported (expected 0 or 1)");
    c.shared_intermediate_size = n_shared ? f.integer("moe_shared_expert_intermediate_size", 7688) : 0;
    c.moe_n_group = f.integer("n_group", 1);
    c.moe_topk_group = f.integer("topk_group", 1);
    c.moe_norm_topk_prob = f.boolean("norm_topk_prob", true);
    c.moe_routed_scaling = f.multiplier("routed_scaling_factor");
    if (f.find("moe_latent_size")) fail(f.label, ": field \"moe_latent_size\" is not supported yet (expected null)");
    if (c.num_experts % c.moe_n_group || c.moe_topk_group > c.moe_n_group ||
        c.num_experts_per_tok > c.moe_topk_group * (c.num_experts / c.moe_n_group))
      fail(f.label, ": n_routed_experts ", c.num_experts, ", n_group ", c.moe_n_group, ", topk_group ", c.moe_topk_group,
           " and num_experts_per_tok ", c.num_experts_per_tok, " are inconsistent");
  }
}

// FalconH1: every layer runs attention and a Mamba2 mixer in parallel on the same normed input, then a SwiGLU
// MLP; muP multipliers everywhere.
void parse_falcon_h1(const Fields& f, ModelConfig& c) {
  c.family = Family::FalconH1;
  expect_act(f, "hidden_act", "silu", "silu");
  common_sizes(f, c, 128000, 4096, 32);
  attention_sizes(f, c, 32, 8);
  expect_false(f, "attention_bias");
  expect_false(f, "mlp_bias");
  eps_field(f, c, "rms_norm_eps", 1e-5);
  c.tie_word_embeddings = f.boolean("tie_word_embeddings", false);
  c.max_position_embeddings = f.integer("max_position_embeddings", 8192);
  c.intermediate_size = f.integer("intermediate_size", 14336);
  parse_rope(f, c, false);
  c.rotary_dim = c.head_dim;  // full-head NeoX RoPE

  c.mamba_inner = f.find("mamba_d_ssm") ? f.integer("mamba_d_ssm", 1024) : expand_inner(f, "mamba_expand", c.hidden_size);
  c.mamba_n_heads = f.integer("mamba_n_heads", 128);
  c.mamba_d_head = head_dim_or_auto(f, "mamba_d_head", c.mamba_inner, c.mamba_n_heads);
  c.mamba_n_groups = f.integer("mamba_n_groups", 1);
  c.mamba_d_state = f.integer("mamba_d_state", 256);
  c.mamba_d_conv = f.integer("mamba_d_conv", 4);
  c.mamba_chunk_size = f.integer("mamba_chunk_size", 256);
  c.mamba_conv_bias = f.boolean("mamba_conv_bias", true);
  c.mamba_proj_bias = f.boolean("mamba_proj_bias", false);
  c.mamba_out_proj_bias = f.boolean("projectors_bias", false);
  c.mamba_gated_norm = f.boolean("mamba_rms_norm", false);
  if (c.mamba_gated_norm && f.boolean("mamba_norm_before_gate", true))
    fail(f.label, ": mamba_rms_norm with mamba_norm_before_gate = true is not supported yet (norm(y) * silu(z))");
  c.mamba_norm_eps = c.rms_norm_eps;
  c.gated_norm_group_size = c.mamba_inner / c.mamba_n_groups;
  parse_time_step_limit(f, c);
  check_mamba(f, c);

  c.embedding_multiplier = f.multiplier("embedding_multiplier");
  c.logits_scale = f.multiplier("lm_head_multiplier");
  c.key_multiplier = f.multiplier("key_multiplier");
  c.attention_in_multiplier = f.multiplier("attention_in_multiplier");
  c.attention_out_multiplier = f.multiplier("attention_out_multiplier");
  c.ssm_in_multiplier = f.multiplier("ssm_in_multiplier");
  c.ssm_out_multiplier = f.multiplier("ssm_out_multiplier");
  auto list = [&](const char* key, float* out, size_t n) {
    const json* v = f.find(key);
    if (!v) return;
    if (!v->is_array() || v->size() != n) fail(f.label, ": field \"", key, "\" must be a list of ", n, " numbers");
    for (size_t i = 0; i < n; ++i) out[i] = float(f.as_number((*v)[i], std::string(key) + "[" + std::to_string(i) + "]"));
  };
  list("ssm_multipliers", c.ssm_multipliers, 5);
  float mlp[2] = {1.f, 1.f};
  list("mlp_multipliers", mlp, 2);
  c.mlp_gate_multiplier = mlp[0];
  c.mlp_down_multiplier = mlp[1];

  c.layer_kinds.assign(size_t(c.num_hidden_layers), LayerKind::MambaAttention);
  c.mlp_kinds.assign(size_t(c.num_hidden_layers), MlpKind::SwiGLU);
}

// Zamba2: Mamba2 layers; "hybrid" layers first run a shared attention + GeGLU block (num_mem_blocks of them, used
// in turn, each use with its own LoRA adapters) on concat(h, embeddings) and add its output to the Mamba input.
void parse_zamba2(const Fields& f, ModelConfig& c) {
  c.family = Family::Zamba2;
  common_sizes(f, c, 32000, 2560, 54);
  expect_act(f, "hidden_act", "gelu", "gelu");
  eps_field(f, c, "rms_norm_eps", 1e-5);
  c.tie_word_embeddings = f.boolean("tie_word_embeddings", true);
  c.max_position_embeddings = f.integer("max_position_embeddings", 4096);
  c.intermediate_size = f.integer("intermediate_size", 4 * c.hidden_size);
  if (f.boolean("add_bias_linear", false)) fail(f.label, ": field \"add_bias_linear\" = true is not supported yet");
  // Attention over 2H inputs: head_dim = 2H / nq, softmax scale (head_dim / 2)^-0.5.
  c.num_attention_heads = f.integer("num_attention_heads", 32);
  c.num_key_value_heads = f.integer("num_key_value_heads", c.num_attention_heads);
  check_heads(f, c);
  if ((2 * c.hidden_size) % c.num_attention_heads)
    fail(f.label, ": 2 * hidden_size is not divisible by num_attention_heads ", c.num_attention_heads);
  c.head_dim = 2 * c.hidden_size / c.num_attention_heads;
  c.attention_scale = 1.f / std::sqrt(float(c.head_dim) / 2.f);
  parse_rope(f, c, false);
  if (!f.boolean("use_mem_rope", false)) fail(f.label, ": use_mem_rope = false is not supported (transformers 5.x fails on it too)");
  c.rotary_dim = c.head_dim;
  c.num_mem_blocks = f.integer("num_mem_blocks", 1);
  c.attention_adapters = f.boolean("use_shared_attention_adapter", false);
  c.adapter_rank = f.integer("adapter_rank", 128);
  if (c.attention_adapters && c.num_key_value_heads != c.num_attention_heads)
    fail(f.label, ": use_shared_attention_adapter needs num_key_value_heads == num_attention_heads");

  c.mamba_inner = expand_inner(f, "mamba_expand", c.hidden_size);
  c.mamba_n_heads = f.integer("n_mamba_heads", 8);
  if (c.mamba_inner % c.mamba_n_heads) fail(f.label, ": mamba_expand * hidden_size is not divisible by n_mamba_heads");
  c.mamba_d_head = c.mamba_inner / c.mamba_n_heads;
  c.mamba_n_groups = f.integer("mamba_ngroups", 1);
  c.mamba_d_state = f.integer("mamba_d_state", 64);
  c.mamba_d_conv = f.integer("mamba_d_conv", 4);
  c.mamba_chunk_size = f.integer("chunk_size", 256);
  c.mamba_conv_bias = true;  // conv1d is always built with a bias
  c.mamba_norm_eps = 1e-5f;  // hard-coded in Zamba2MambaMixer
  c.gated_norm_group_size = c.mamba_inner / c.mamba_n_groups;
  c.time_step_min = float(f.number("time_step_min", 0.001));  // torch path: a floor only
  c.time_step_max = std::numeric_limits<float>::infinity();
  check_mamba(f, c);

  c.layer_kinds.assign(size_t(c.num_hidden_layers), LayerKind::Mamba);
  c.mlp_kinds.assign(size_t(c.num_hidden_layers), MlpKind::None);
  if (!f.find_any({"layers_block_type", "layer_types"}))
    fail(f.label, ": missing field \"layers_block_type\" (the mamba / hybrid layer list)");
  layer_list(f, c, {"layers_block_type", "layer_types"}, [&](const std::string& s, size_t i) {
    if (s == "mamba" || s == "linear_attention") c.layer_kinds[i] = LayerKind::Mamba;
    else if (s == "hybrid") c.layer_kinds[i] = LayerKind::SharedAttention;
    else return false;
    return true;
  }, "\"mamba\" or \"hybrid\"");
}

// Mamba2: Mamba2 blocks only (one pre-norm block per layer), full-width gated norm, dt clamp time_step_limit.
void parse_mamba2(const Fields& f, ModelConfig& c) {
  c.family = Family::Mamba2;
  expect_act(f, "hidden_act", "silu", "silu");
  common_sizes(f, c, 32768, 4096, 64);
  eps_field(f, c, "layer_norm_epsilon", 1e-5);
  c.tie_word_embeddings = f.boolean("tie_word_embeddings", false);
  c.mamba_n_heads = f.integer("num_heads", 128);
  c.mamba_d_head = f.integer("head_dim", 64);
  c.mamba_inner = expand_inner(f, "expand", c.hidden_size);
  if (c.mamba_inner != c.mamba_n_heads * c.mamba_d_head)
    fail(f.label, ": hidden_size * expand = ", c.mamba_inner, " must equal num_heads * head_dim = ",
         c.mamba_n_heads * c.mamba_d_head);
  c.mamba_n_groups = f.integer("n_groups", 8);
  c.mamba_d_state = f.integer("state_size", 128);
  c.mamba_d_conv = f.integer("conv_kernel", 4);
  c.mamba_chunk_size = f.integer("chunk_size", 256);
  c.mamba_conv_bias = f.boolean("use_conv_bias", true);
  c.mamba_proj_bias = c.mamba_out_proj_bias = f.boolean("use_bias", false);
  c.mamba_norm_eps = c.rms_norm_eps;
  c.gated_norm_group_size = c.mamba_inner;  // MambaRMSNormGated over the full I (transformers, not mamba_ssm)
  parse_time_step_limit(f, c);
  check_mamba(f, c);
  c.layer_kinds.assign(size_t(c.num_hidden_layers), LayerKind::Mamba);
  c.mlp_kinds.assign(size_t(c.num_hidden_layers), MlpKind::None);
}

// Llama: attention (full-head RoPE, llama3 scaling) + SwiGLU in every layer.
void parse_llama(const Fields& f, ModelConfig& c) {
  c.family = Family::Llama;
  expect_act(f, "hidden_act", "silu", "silu");
  common_sizes(f, c, 32000, 4096, 32);
  c.intermediate_size = f.integer("intermediate_size", 11008);
  attention_sizes(f, c, 32, 0);
  expect_false(f, "attention_bias");
  expect_false(f, "mlp_bias");
  eps_field(f, c, "rms_norm_eps", 1e-6);
  c.tie_word_embeddings = f.boolean("tie_word_embeddings", false);
  c.max_position_embeddings = f.integer("max_position_embeddings", 2048);
  parse_rope(f, c, true);
  const double partial = f.number("partial_rotary_factor", 1.0);
  if (!(partial > 0 && partial <= 1)) fail(f.label, ": field \"partial_rotary_factor\" must be in (0, 1]");
  c.rotary_dim = int64_t(double(c.head_dim) * partial);
  c.layer_kinds.assign(size_t(c.num_hidden_layers), LayerKind::Attention);
  c.mlp_kinds.assign(size_t(c.num_hidden_layers), MlpKind::SwiGLU);
}

}  // namespace bamba::config_detail
