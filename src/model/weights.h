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
// Deterministic generated weights (like vLLM's --load-format dummy), scaled so that every layer matters.
ModelWeights dummy_weights(const ModelConfig& cfg, Backend& be, uint64_t seed = 0);

}  // namespace bamba
