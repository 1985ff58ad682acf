// ModelWeights: the tensors of a Bamba-family model as the backend holds them, and the one table that maps
// Hugging Face tensor names to fields. Fused for speed at load: q|k|v -> qkv_proj, gate|up -> gate_up_proj.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "io/checkpoint.h"
#include "model/config.h"

namespace bamba {

struct MambaWeights {
  Tensor in_proj;        // [E, H]  rows z | xBC | dt
  Tensor in_proj_bias;   // [E] or empty
  Tensor conv1d_weight;  // [CD, K]
  Tensor conv1d_bias;    // [CD] or empty
  Tensor dt_bias;        // [nh]
  Tensor A_log;          // [nh]
  Tensor D;              // [nh]
  Tensor norm;           // [I]  gated RMSNorm weight
  Tensor out_proj;       // [H, I]
  Tensor out_proj_bias;  // [H] or empty
};

struct AttentionWeights {
  Tensor qkv_proj;  // [(nq + 2 nkv) dh, H]  q_proj | k_proj | v_proj
  Tensor o_proj;    // [H, nq dh]
};

struct MoeWeights {
  Tensor router;        // [E, H]
  Tensor router_bias;   // [E] or empty (Nemotron-H's e_score_correction_bias)
  Tensor experts_up;    // [E, U, H]  U = 2Fe (SwiGLU: gate rows first) or Fe (relu²)
  Tensor experts_down;  // [E, H, Fe]
};

// A Zamba2 hybrid layer's own LoRA adapters on the shared block it uses (Sequential(Linear(in, r), Linear(r, out))).
struct AdapterWeights {
  Tensor qkv_down;         // [3r, 2H]  q | k | v first linears (use_shared_attention_adapter), else empty
  Tensor q_up, k_up, v_up; // [nq dh, r] each
  Tensor mlp_down;         // [r, H]
  Tensor mlp_up;           // [2F, r]
};

// Zamba2's shared attention + GeGLU block (num_mem_blocks of them, used in turn by the hybrid layers).
struct SharedBlockWeights {
  Tensor input_layernorm;   // [2H]
  AttentionWeights attn;    // qkv_proj [3 nq dh, 2H], o_proj [H, nq dh]
  Tensor pre_ff_layernorm;  // [H]
  Tensor gate_up_proj;      // [2F, H]
  Tensor down_proj;         // [H, F]
};

struct LayerWeights {
  Tensor input_layernorm;   // [H]  before the mixer (none when the layer has no mixer)
  Tensor pre_ff_layernorm;  // [H]  before the MLP (none when the layer has no MLP)
  // The dense MLP: SwiGLU gate_proj | up_proj [2F, H] (GraniteMoeHybrid: shared_mlp.input_linear) or relu² up_proj
  // [F, H]; in MoE layers the shared expert / shared MLP (empty if none).
  Tensor gate_up_proj;
  Tensor down_proj;         // [H, F]
  MoeWeights moe;           // MoE layers
  MambaWeights mamba;       // layers with a Mamba mixer
  AttentionWeights attn;    // layers with attention
  Tensor linear;            // [H, H]  Zamba2 hybrid layers: the shared block's output projection
  AdapterWeights adapters;  // Zamba2 hybrid layers
};

struct ModelWeights {
  Tensor embed_tokens;     // [V, H]
  Tensor final_layernorm;  // [H]
  Tensor lm_head;          // [V, H]  (= embed_tokens when tied)
  std::vector<LayerWeights> layers;
  std::vector<SharedBlockWeights> shared_blocks;  // Zamba2
};

using LoadProgress = std::function<void(size_t done_bytes, size_t total_bytes)>;

// Loads and checks every tensor: names, shapes and dtypes against the config, nothing missing, nothing
// unexpected. Errors name the file and tensor.
ModelWeights load_weights(const ModelConfig& cfg, const Checkpoint& ckpt, Backend& be, const LoadProgress& progress = {});
// A tensor as Hugging Face names it: a view into a (possibly fused) ModelWeights tensor, with HF's shape.
struct NamedTensor {
  std::string name;
  std::vector<int64_t> shape;
  Tensor t;
};
// Every parameter in HF's order and names (HF's named_parameters: a tied lm_head is not listed), fused tensors
// split back into their parts. Works for weights and for gradients laid out like them (zeros_like_weights).
std::vector<NamedTensor> hf_tensors(const ModelConfig& cfg, const ModelWeights& w);
// Zero-filled tensors laid out like the model's weights (gradients, optimizer moments), fp32, tied like them.
ModelWeights zeros_like_weights(const ModelConfig& cfg, Backend& be);
void release_weights(const ModelConfig& cfg, ModelWeights& w, Backend& be);
// `--quantization fp8`: every linear projection (in_proj, out_proj, q|k|v, o_proj, gate|up, down; lm_head only
// when asked, as vLLM keeps it in bf16) that is not FP8 already becomes F8_E4M3 with one scale per output channel
// (Backend::quantize_fp8), its original released. Embeddings, norms, conv, A_log / D / dt_bias, routers and MoE
// experts stay as they are.
void quantize_weights_fp8(const ModelConfig& cfg, ModelWeights& w, Backend& be, bool lm_head = false);
bool has_fp8_weights(const ModelConfig& cfg, const ModelWeights& w);

// Deterministic generated weights (like vLLM's --load-format dummy), scaled so that every layer matters.
ModelWeights dummy_weights(const ModelConfig& cfg, Backend& be, uint64_t seed = 0);

}  // namespace bamba
