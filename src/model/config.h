// ModelConfig: the dimensions and knobs of a Bamba-family model, parsed from a Hugging Face config.json as
// transformers 4.x wrote it (rope_theta, attn_rotary_emb, torch_dtype) or as 5.x writes it (rope_parameters,
// dtype, layer_types, time_step_limit with {"__float__": "Infinity"}). Names follow BambaConfig.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/dtype.h"

namespace bamba {

enum class LayerKind : uint8_t { Mamba, Attention };

struct ModelConfig {
  std::string model_type = "bamba";
  std::string source;  // where it came from (config.json path or "built-in"), for messages

  int64_t vocab_size = 0;
  int64_t hidden_size = 0;        // H
  int64_t intermediate_size = 0;  // F, the SwiGLU MLP width (not the SSM inner size)
  int64_t num_hidden_layers = 0;  // L
  std::vector<LayerKind> layer_kinds;
  float rms_norm_eps = 1e-5f;
  bool tie_word_embeddings = false;
  float z_loss_coefficient = 0.f;  // training loss only: + coef · mean logsumexp² (BambaForCausalLM)

  // attention
  int64_t num_attention_heads = 0;  // nq
  int64_t num_key_value_heads = 0;  // nkv
  int64_t head_dim = 0;             // dh
  int64_t rotary_dim = 0;           // R = int(dh * partial_rotary_factor)
  float rope_theta = 10000.f;

  // Mamba2 mixer
  int64_t mamba_n_heads = 0;   // nh
  int64_t mamba_d_head = 0;    // P
  int64_t mamba_n_groups = 0;  // G
  int64_t mamba_d_state = 0;   // N
  int64_t mamba_d_conv = 0;    // K
  int64_t mamba_chunk_size = 0;
  int64_t mamba_inner = 0;     // I = mamba_expand * H = nh * P
  bool mamba_conv_bias = true;
  bool mamba_proj_bias = false;
  float time_step_min = 0.f;   // dt clamp after softplus (time_step_limit)
  float time_step_max = 0.f;   // +inf = no upper clamp
  // Gated RMSNorm statistics are taken over groups of this many channels. HF Bamba (all versions) normalises
  // over the full I regardless of n_groups; Zamba2/NemotronH/mamba_ssm use I / n_groups.
  int64_t gated_norm_group_size = 0;

  // tokens
  int64_t bos_token_id = -1;
  std::vector<int64_t> eos_token_ids;
  int64_t pad_token_id = -1;
  int64_t max_position_embeddings = 262144;
  DType dtype = DType::F32;  // torch_dtype / dtype: what the checkpoint was saved as

  // derived
  int64_t conv_dim() const { return mamba_inner + 2 * mamba_n_groups * mamba_d_state; }  // CD
  int64_t in_proj_dim() const { return mamba_inner + conv_dim() + mamba_n_heads; }       // E = I + CD + nh
  int64_t qkv_dim() const { return (num_attention_heads + 2 * num_key_value_heads) * head_dim; }
  int64_t n_mamba_layers() const;
  int64_t n_attention_layers() const;
  // Index of layer i among the layers of its kind (its Mamba state slot or KV layer in the cache).
  int64_t kind_index(int64_t layer) const;
  int64_t parameter_count() const;
};

// Parses config.json text; `label` (usually the path) prefixes every error, which names the field and what was
// expected. Validates consistency (heads dividing sizes, layer indices in range, ...).
ModelConfig parse_config(const std::string& json_text, const std::string& label);
ModelConfig load_config(const std::string& model_dir);  // <dir>/config.json

// config.json text for `c` as transformers' BambaConfig writes it (4.x field names, which 5.x also reads), so a
// model with a preset shape can be saved as a Hugging Face folder.
std::string config_to_json(const ModelConfig& c);

// The built-in tiny Bamba used when no --model is given (weights are generated, see model/weights.h).
ModelConfig dummy_config();
// Bamba-9B's shape (ibm-ai-platform/Bamba-9B-v2), for benchmarks with generated weights.
ModelConfig bamba_9b_config();

}  // namespace bamba
