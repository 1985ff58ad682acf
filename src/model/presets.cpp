#include "model/presets.h"

#include "core/error.h"

namespace bamba {
namespace {

// meta-llama/Llama-3.1-8B(-Instruct) config.json: the transformer the hybrids are compared with.
const char* kLlama31_8b = R"({
  "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 128256, "hidden_size": 4096,
  "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
  "head_dim": 128, "hidden_act": "silu", "max_position_embeddings": 131072, "rms_norm_eps": 1e-05,
  "rope_theta": 500000.0, "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
  "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}, "attention_bias": false, "mlp_bias": false,
  "tie_word_embeddings": false, "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009],
  "torch_dtype": "bfloat16"})";

// A tiny transformer beside the tiny hybrid (dummy_config): the CPU tests of hybrid-vs-transformer tooling.
const char* kTinyLlama = R"({
  "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 258, "hidden_size": 64,
  "intermediate_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
  "head_dim": 16, "hidden_act": "silu", "max_position_embeddings": 4096, "rms_norm_eps": 1e-05,
  "rope_theta": 10000.0, "tie_word_embeddings": false, "bos_token_id": 256, "eos_token_id": 257,
  "torch_dtype": "bfloat16"})";

// ibm-granite/granite-4.0-h-tiny: 40 layers (4 NoPE attention), MoE 64 experts top-6 + a shared MLP, muP
// multipliers; ~7B parameters, ~1B active per token.
const char* kGranite40hTiny = R"({
  "architectures": ["GraniteMoeHybridForCausalLM"], "model_type": "granitemoehybrid", "vocab_size": 100352,
  "hidden_size": 1536, "intermediate_size": 512, "shared_intermediate_size": 1024, "num_hidden_layers": 40,
  "layer_types": ["mamba", "mamba", "mamba", "mamba", "mamba", "attention", "mamba", "mamba", "mamba", "mamba",
                  "mamba", "mamba", "mamba", "mamba", "mamba", "attention", "mamba", "mamba", "mamba", "mamba",
                  "mamba", "mamba", "mamba", "mamba", "mamba", "attention", "mamba", "mamba", "mamba", "mamba",
                  "mamba", "mamba", "mamba", "mamba", "mamba", "attention", "mamba", "mamba", "mamba", "mamba"],
  "num_attention_heads": 12, "num_key_value_heads": 4, "position_embedding_type": "nope",
  "num_local_experts": 64, "num_experts_per_tok": 6, "mamba_n_heads": 48, "mamba_d_head": 64,
  "mamba_n_groups": 1, "mamba_d_state": 128, "mamba_d_conv": 4, "mamba_expand": 2, "mamba_chunk_size": 256,
  "mamba_conv_bias": true, "mamba_proj_bias": false, "embedding_multiplier": 12.0,
  "attention_multiplier": 0.0078125, "residual_multiplier": 0.22, "logits_scaling": 6.0, "rms_norm_eps": 1e-05,
  "max_position_embeddings": 131072, "tie_word_embeddings": true, "bos_token_id": 100257,
  "eos_token_id": 100257, "pad_token_id": 100256, "torch_dtype": "bfloat16"})";

// nvidia/Nemotron-H-8B-Base-8K: 52 blocks (24 Mamba2, 4 attention, 24 relu² MLP), G = 8.
// As nvidia/Nemotron-H-8B-Base-8K's config.json spells it: attention_head_dim, and rms_norm_eps beside
// layer_norm_epsilon (transformers reads the latter; llama.cpp's converter only the former — without it the GGUF
// has no RMS epsilon and llama.cpp refuses to load it, bench/NOTES.md v31).
const char* kNemotronH8b = R"({
  "architectures": ["NemotronHForCausalLM"], "model_type": "nemotron_h", "vocab_size": 131072,
  "hidden_size": 4096, "intermediate_size": 21504, "num_hidden_layers": 52,
  "hybrid_override_pattern": "M-M-M-M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M-",
  "num_attention_heads": 32, "num_key_value_heads": 8, "attention_head_dim": 128, "mlp_hidden_act": "relu2",
  "mamba_num_heads": 128, "mamba_head_dim": 64, "ssm_state_size": 128, "n_groups": 8, "conv_kernel": 4, "expand": 2,
  "chunk_size": 128, "use_conv_bias": true, "use_bias": false, "mamba_proj_bias": false, "mamba_hidden_act": "silu",
  "layer_norm_epsilon": 1e-05, "rms_norm_eps": 1e-05, "max_position_embeddings": 8192, "tie_word_embeddings": false,
  "residual_in_fp32": false, "rescale_prenorm_residual": true, "attention_bias": false, "mlp_bias": false,
  "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "torch_dtype": "bfloat16"})";

}  // namespace

const std::vector<std::string>& preset_names() {
  static const std::vector<std::string> names = {"tiny", "bamba-9b", "llama-3.1-8b", "granite-4.0-h-tiny",
                                                 "nemotron-h-8b", "tiny-llama"};
  return names;
}

ModelConfig preset_config(const std::string& name) {
  if (name == "tiny") return dummy_config();
  if (name == "bamba-9b") return bamba_9b_config();
  if (name == "llama-3.1-8b") return parse_config(kLlama31_8b, "preset llama-3.1-8b");
  if (name == "granite-4.0-h-tiny") return parse_config(kGranite40hTiny, "preset granite-4.0-h-tiny");
  if (name == "tiny-llama") return parse_config(kTinyLlama, "preset tiny-llama");
  if (name == "nemotron-h-8b") return parse_config(kNemotronH8b, "preset nemotron-h-8b");
  std::string known;
  for (const auto& n : preset_names()) known += (known.empty() ? "" : ", ") + n;
  fail("unknown preset \"", name, "\" (expected one of: ", known, ")");
}

std::string preset_config_json(const std::string& name) {
  if (name == "llama-3.1-8b") return kLlama31_8b;
  if (name == "granite-4.0-h-tiny") return kGranite40hTiny;
  if (name == "tiny-llama") return kTinyLlama;
  if (name == "nemotron-h-8b") return kNemotronH8b;
  return config_to_json(preset_config(name));  // tiny, bamba-9b; an unknown name fails there
}

}  // namespace bamba
