// HybridModel: the ONLY place that knows the layer order and the math of a Bamba forward step
// (docs/bamba-model.md §3), written against backend ops. One call serves prefill, chunked prefill, decode and
// any mix of them across sequences (see StepBatch).
#pragma once
#include <functional>
#include <string>

#include "backend/backend.h"
#include "model/hybrid_cache.h"
#include "model/config.h"
#include "model/weights.h"

namespace bamba {

// Activation buffers for steps of up to max_tokens tokens and max_logit_rows logit rows, allocated once.
class Workspace {
 public:
  Workspace(const ModelConfig& c, Backend& be, int32_t max_tokens, int32_t max_logit_rows);
  ~Workspace();
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;

  int32_t max_tokens, max_logit_rows;
  Tensor h;       // [T, H]   residual stream
  Tensor xn;      // [T, H]   normed input of the next block
  Tensor out;     // [T, H]   block output before the residual add
  Tensor proj;    // [T, max(E, 2F, qkv)]  in_proj / gate_up / qkv output
  Tensor conv;    // [T, CD]  post-conv xBC
  Tensor y;       // [T, max(I, nq dh, F)]  SSD output / attention output / SwiGLU output
  Tensor y2;      // [T, I]   gated-norm output
  Tensor sel;     // [R, H]   rows that need logits
  Tensor logits;  // [R, V]

 private:
  Backend& be_;
};

// Called with the residual stream at named points: "embed", "layer0".."layer{L-1}", "final_norm".
using ActivationHook = std::function<void(const std::string& name, Tensor h)>;

class HybridModel {
 public:
  HybridModel(ModelConfig cfg, ModelWeights w, Backend& be);
  const ModelConfig& config() const { return cfg_; }
  Backend& backend() const { return be_; }

  // Runs one step and returns the logits of b.logit_rows, [R, V] in ws (valid until the next step).
  // Checks the batch against the model, workspace and cache, throwing Error on a mismatch.
  Tensor forward(const StepBatch& b, HybridCache& cache, Workspace& ws, const ActivationHook& hook = {}) const;

 private:
  void check_batch(const StepBatch& b, const HybridCache& cache, const Workspace& ws) const;
  void mamba_mixer(const MambaWeights& w, Tensor xn, Tensor out, int64_t index, HybridCache& cache, Workspace& ws) const;
  void attention(const AttentionWeights& w, Tensor xn, Tensor out, int64_t index, HybridCache& cache, Workspace& ws) const;

  ModelConfig cfg_;
  ModelWeights w_;
  Backend& be_;
  MambaOpsConfig mamba_ops_;
  AttentionOpsConfig attn_ops_;
};

// Loads <dir>/config.json and its safetensors into a model on `be` (the mmap'd files are closed afterwards).
HybridModel load_model(const std::string& dir, Backend& be, const LoadProgress& progress = {});
// The built-in tiny model with generated weights (no files needed).
HybridModel dummy_model(Backend& be, uint64_t seed = 0);

}  // namespace bamba
