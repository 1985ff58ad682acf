// ModelConfig: the dimensions and knobs of a Bamba-family model, parsed from a Hugging Face config.json as
// transformers 4.x wrote it (rope_theta, attn_rotary_emb, torch_dtype) or as 5.x writes it (rope_parameters,
// dtype, layer_types, time_step_limit with {"__float__": "Infinity"}). Names follow BambaConfig.
//
// One struct describes every supported model type (docs/family.md): the relatives of Bamba differ in which
// block each layer runs (LayerKind: the mixer; MlpKind: the feed-forward), in scalar multipliers (all 1 for
// Bamba) and in a few switches. The per-type parsers (model/config_families.cpp) fill it from each type's own
// config.json fields; model/hybrid.cpp reads only this struct.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/dtype.h"

namespace bamba {

// The token mixer of a layer. Each layer is up to two pre-norm residual blocks: h += mixer(norm(h)), then
// h += mlp(norm(h)); a kind None skips that block (Nemotron-H and Mamba2 layers have one block only).
enum class LayerKind : uint8_t {
  Mamba,           // Mamba2 mixer (SSM state)
  Attention,       // causal GQA attention (KV cache)
  None,            // no mixer: the layer is an MLP / MoE block only (Nemotron-H "-" and "E")
  MambaAttention,  // Falcon-H1: Mamba2 mixer and attention side by side on the same normed input, outputs added
  SharedAttention, // Zamba2 "hybrid": a shared attention+MLP block on concat(h, embeddings) feeding a Mamba2 mixer
};
enum class MlpKind : uint8_t {
  None,
  SwiGLU,  // down(silu(gate(x)) * up(x))
  Relu2,   // down(relu(up(x))^2)           (Nemotron-H)
  MoE,     // routed experts (+ shared experts), see MoeRouter
};
enum class MoeRouter : uint8_t {
  SoftmaxTopK,   // GraniteMoeHybrid: top-k of the router logits, softmax over the k kept (SwiGLU experts + shared SwiGLU MLP)
  SigmoidGroup,  // Nemotron-H (DeepSeek-V3): sigmoid scores, bias-corrected grouped top-k, weights renormalised and
                 // scaled (relu² experts + relu² shared experts)
};
// Which Hugging Face model type the config came from: decides the tensor names (model/weights.cpp).
enum class Family : uint8_t { Bamba, GraniteMoeHybrid, NemotronH, FalconH1, Zamba2, Mamba2, Llama };

struct ModelConfig {
  std::string model_type = "bamba";
  std::string source;  // where it came from (config.json path or "built-in"), for messages

  int64_t vocab_size = 0;
  int64_t hidden_size = 0;        // H
  int64_t intermediate_size = 0;  // F, the SwiGLU MLP width (not the SSM inner size)
  int64_t num_hidden_layers = 0;  // L
  std::vector<LayerKind> layer_kinds;  // the mixer of each layer
  std::vector<MlpKind> mlp_kinds;      // the feed-forward of each layer
  Family family = Family::Bamba;
  float rms_norm_eps = 1e-5f;
  bool tie_word_embeddings = false;
  float z_loss_coefficient = 0.f;  // training loss only: + coef · mean logsumexp² (BambaForCausalLM)

  // attention
  int64_t num_attention_heads = 0;  // nq
  int64_t num_key_value_heads = 0;  // nkv
  int64_t head_dim = 0;             // dh
  int64_t rotary_dim = 0;           // R = int(dh * partial_rotary_factor)
  float rope_theta = 10000.f;
  // rope_type "llama3" (Llama 3.1+): inv_freq rescaled by wavelength band; factor 0 = plain RoPE.
  float rope_factor = 0.f, rope_low_freq_factor = 1.f, rope_high_freq_factor = 4.f;
  int64_t rope_original_max_position = 8192;
  float attention_scale = 0.f;  // softmax scale; 0 = head_dim^-0.5 (GraniteMoeHybrid: attention_multiplier)

  // Mamba2 mixer
  int64_t mamba_n_heads = 0;   // nh
  int64_t mamba_d_head = 0;    // P
  int64_t mamba_n_groups = 0;  // G
  int64_t mamba_d_state = 0;   // N
  int64_t mamba_d_conv = 0;    // K
  int64_t mamba_chunk_size = 0;
  int64_t mamba_inner = 0;     // I = mamba_expand * H = nh * P
  bool mamba_conv_bias = true;
  bool mamba_proj_bias = false;      // in_proj bias
  bool mamba_out_proj_bias = false;  // out_proj bias (Bamba: = mamba_proj_bias; Falcon-H1: projectors_bias)
  bool mamba_gated_norm = true;      // false: y * silu(z) without a norm (Falcon-H1 mamba_rms_norm = false)
  float mamba_norm_eps = 1e-5f;      // the gated norm's eps (Zamba2: always 1e-5)
  float time_step_min = 0.f;   // dt clamp after softplus (time_step_limit)
  float time_step_max = 0.f;   // +inf = no upper clamp
  // Gated RMSNorm statistics are taken over groups of this many channels. HF Bamba (all versions) normalises
  // over the full I regardless of n_groups; Zamba2/NemotronH/mamba_ssm use I / n_groups.
  int64_t gated_norm_group_size = 0;

  // Scalar multipliers (1 = absent): GraniteMoeHybrid and Falcon-H1 (muP). logits_scale multiplies the logits
  // (Granite: 1 / logits_scaling; Falcon-H1: lm_head_multiplier).
  float embedding_multiplier = 1.f, residual_multiplier = 1.f, logits_scale = 1.f;
  // Falcon-H1 only: in_proj(x * ssm_in) scaled per segment z | x | B | C | dt by ssm_multipliers, mixer output
  // * ssm_out; attention on x * attention_in, keys * key, output * attention_out; SwiGLU gate * mlp_gate,
  // output * mlp_down.
  float ssm_in_multiplier = 1.f, ssm_out_multiplier = 1.f;
  float ssm_multipliers[5] = {1.f, 1.f, 1.f, 1.f, 1.f};
  float attention_in_multiplier = 1.f, attention_out_multiplier = 1.f, key_multiplier = 1.f;
  float mlp_gate_multiplier = 1.f, mlp_down_multiplier = 1.f;

  // Mixture of experts (MlpKind::MoE layers)
  int64_t num_experts = 0;              // E
  int64_t num_experts_per_tok = 0;      // k
  int64_t moe_intermediate_size = 0;    // Fe, one expert's width
  int64_t shared_intermediate_size = 0; // Fs, the shared expert / shared MLP width (0 = none)
  MoeRouter moe_router = MoeRouter::SoftmaxTopK;
  int64_t moe_n_group = 1, moe_topk_group = 1;  // SigmoidGroup: groups of experts, groups kept
  bool moe_norm_topk_prob = true;
  float moe_routed_scaling = 1.f;

  // Zamba2: num_mem_blocks shared blocks used in turn by the SharedAttention layers, each use with its own LoRA
  // adapters (rank adapter_rank) on the MLP's gate_up and, if use_shared_attention_adapter, on q, k, v.
  int64_t num_mem_blocks = 0;
  int64_t adapter_rank = 0;
  bool attention_adapters = false;

  // tokens
  int64_t bos_token_id = -1;
  std::vector<int64_t> eos_token_ids;
  int64_t pad_token_id = -1;
  int64_t max_position_embeddings = 262144;
  DType dtype = DType::F32;  // torch_dtype / dtype: what the checkpoint was saved as

  // Tensor parallelism (model/tensor_parallel.h): this config is rank tp_rank's shard of tp_size. The split
  // fields above (attention and KV heads, Mamba heads, inner size and groups, intermediate_size) are the rank's
  // own; vocab_size stays whole (the ids the embedding takes, the logits forward returns) while the rank holds
  // vocab_size / tp_size rows of lm_head. tp_full_inner > 0: the gated norm's groups span ranks, so the rank
  // gathers its inputs (the whole mamba_inner = tp_full_inner) and holds the whole norm weight.
  int32_t tp_rank = 0, tp_size = 1;
  int64_t tp_full_inner = 0;

  // derived
  int64_t conv_dim() const { return mamba_inner + 2 * mamba_n_groups * mamba_d_state; }  // CD
  int64_t in_proj_dim() const { return mamba_inner + conv_dim() + mamba_n_heads; }       // E = I + CD + nh
  int64_t qkv_dim() const { return (num_attention_heads + 2 * num_key_value_heads) * head_dim; }
  int64_t attn_in_dim() const { return family == Family::Zamba2 ? 2 * hidden_size : hidden_size; }  // q/k/v input
  // Whether layer i keeps a Mamba state / a KV cache, and its index among the layers that do (its place in
  // the HybridCache). Layers without one take no cache memory.
  bool has_ssm(int64_t layer) const;
  bool has_kv(int64_t layer) const;
  int64_t ssm_index(int64_t layer) const;
  int64_t kv_index(int64_t layer) const;
  int64_t n_mamba_layers() const;     // layers with a Mamba state
  int64_t n_attention_layers() const; // layers with a KV cache
  int64_t mlp_width() const;          // widest dense feed-forward (workspace sizing)
  int64_t parameter_count() const;
  int64_t layer_parameter_count(int64_t i) const;  // decoder layer i's own (Zamba2's shared blocks not included)
  int64_t attn_parameter_count() const;            // one attention block's q | k | v and o projections
  int64_t routed_expert_parameter_count() const;  // all MoE layers' routed experts; a token uses k/E of them
  // The dense MLPs' up projections (gate | up; an MoE layer's shared expert's and its router): the matmuls that
  // Selective activation checkpointing runs again (model/hybrid.h Checkpointing), for the train bench's HFU; of
  // the first `layers` layers (-1: all).
  int64_t mlp_up_parameter_count(int64_t layers = -1) const;
};

// Parses config.json text; `label` (usually the path) prefixes every error, which names the field and what was
// expected. Validates consistency (heads dividing sizes, layer indices in range, ...).
// Supported model types: bamba, granitemoehybrid, nemotron_h, falcon_h1, zamba2, mamba2, llama.
ModelConfig parse_config(const std::string& json_text, const std::string& label);
ModelConfig load_config(const std::string& model_dir);  // <dir>/config.json

// config.json text for `c` (a Bamba; other types: Error) as transformers' BambaConfig writes it (4.x field names, which 5.x also reads), so a
// model with a preset shape can be saved as a Hugging Face folder.
std::string config_to_json(const ModelConfig& c);

// The built-in tiny Bamba used when no --model is given (weights are generated, see model/weights.h).
ModelConfig dummy_config();
// Bamba-9B's shape (ibm-ai-platform/Bamba-9B-v2), for benchmarks with generated weights.
ModelConfig bamba_9b_config();

}  // namespace bamba
