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

struct LayerWeights {
  Tensor input_layernorm;   // [H]
  Tensor pre_ff_layernorm;  // [H]
  Tensor gate_up_proj;      // [2F, H]  gate_proj | up_proj
  Tensor down_proj;         // [H, F]
  MambaWeights mamba;       // Mamba layers
  AttentionWeights attn;    // attention layers
};

struct ModelWeights {
  Tensor embed_tokens;     // [V, H]
  Tensor final_layernorm;  // [H]
  Tensor lm_head;          // [V, H]  (= embed_tokens when tied)
  std::vector<LayerWeights> layers;
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

// Deterministic generated weights (like vLLM's --load-format dummy), scaled so that every layer matters.
ModelWeights dummy_weights(const ModelConfig& cfg, Backend& be, uint64_t seed = 0);

}  // namespace bamba
