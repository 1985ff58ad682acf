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
// A training batch: `rows` sequences of `seq_len` tokens, row-major [rows, seq_len]. labels as Hugging Face takes
// them (unshifted: the logits at t are scored against labels[t + 1]; -100 = ignored).
struct TrainBatch {
  int32_t rows = 0, seq_len = 0;
  std::vector<int32_t> input_ids, labels;
};

struct TrainOptions {
  float z_loss_coefficient = 0.f;  // HF's z_loss_coefficient: + coef · mean over all positions of logsumexp²
  // Divisors of the two loss terms; 0 = this batch's (HF: the number of labels != -100; rows · seq_len). Give the
  // whole step's counts when a step is split into micro-batches, so that their gradients add up to the step's.
  int64_t label_count = 0, position_count = 0;
  int64_t ce_chunk_rows = 256;  // lm_head + cross-entropy this many rows at a time
  // Keep only each layer's input through the forward and recompute the rest of a layer just before its backward
  // (one extra forward; activation memory of one layer plus L × [T, hidden]). The gradients are the same bits.
  bool activation_checkpointing = false;
};

struct TrainResult {
  double loss = 0;           // this batch's share of the loss (its terms over the divisors)
  int64_t label_count = 0;   // labels != -100 in the batch
};

using ActivationHook = std::function<void(const std::string& name, Tensor h)>;

class HybridModel {
 public:
  HybridModel(ModelConfig cfg, ModelWeights w, Backend& be);
  const ModelConfig& config() const { return cfg_; }
  Backend& backend() const { return be_; }

  // Runs one step and returns the logits of b.logit_rows, [R, V] in ws (valid until the next step).
  // Checks the batch against the model, workspace and cache, throwing Error on a mismatch.
  Tensor forward(const StepBatch& b, HybridCache& cache, Workspace& ws, const ActivationHook& hook = {}) const;

  // Training (model/hybrid_backward.cpp): runs the batch forward keeping what the backward needs, then the
  // backward, and ADDS every parameter's gradient into `grads` (zeros_like_weights; read them by HF name with
  // hf_tensors). Every row starts from a zero state.
  TrainResult forward_backward(const TrainBatch& batch, ModelWeights& grads, const TrainOptions& opt = {}) const;
  const ModelWeights& weights() const { return w_; }

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
