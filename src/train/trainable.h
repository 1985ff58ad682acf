// Trainable: the seam between the trainer and a model. The trainer sees a model as a list of fp32 parameters (the
// master weights) with same-sized gradient buffers, named as in the Hugging Face checkpoint, and one call that
// adds the gradient of a micro-batch's loss into those buffers. The Bamba model's backward plugs in here; the
// tests plug in a toy softmax model with an analytic gradient.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace bamba {

// One parameter tensor. `value` and `grad` point at `size` floats owned by the Trainable and stay valid for its
// lifetime; `shape` is the Hugging Face shape (the product is `size`).
struct ParamRef {
  std::string name;  // HF tensor name, e.g. "model.layers.0.mamba.A_log"
  float* value = nullptr;
  float* grad = nullptr;
  size_t size = 0;
  std::vector<int64_t> shape;
  bool decay = true;  // AdamW weight decay applies (see default_weight_decay)
};

// Rows of token ids with their next-token labels; -100 marks a position that does not count in the loss.
struct TokenBatch {
  int64_t rows = 0, cols = 0;
  std::vector<int32_t> tokens;  // [rows, cols]
  std::vector<int32_t> labels;  // [rows, cols]
  int64_t labeled() const;      // positions with a label != -100
};

struct LossResult {
  double loss_sum = 0;   // Σ of the per-token cross-entropies over the labeled positions
  int64_t n_tokens = 0;  // labeled positions
};

class Trainable {
 public:
  virtual ~Trainable() = default;
  // The same list, in the same order, on every call: the order is the checkpoint's tensor order.
  virtual std::vector<ParamRef> params() = 0;
  // Adds grad_scale · ∂(loss_sum)/∂θ to every parameter's grad (never overwrites: the trainer zeroes the buffers
  // once per optimizer step and accumulates micro-batches). The trainer passes 1/(labeled tokens of the whole
  // step) for a per-token mean over the global batch, so a model whose backward yields the gradient of the mean
  // over its micro-batch multiplies that by n_tokens · grad_scale. Must be deterministic for resume to be exact.
  virtual LossResult loss_and_grad(const TokenBatch& batch, float grad_scale) = 0;
  // Forward-and-backward FLOPs per trained token (≈ 6N + attention), for MFU; 0 when unknown.
  virtual double flops_per_token() const { return 0; }
};

// The usual rule (fms-fsdp, mamba_ssm's _no_weight_decay, llm.c): decay matrices only; no decay on 1-D tensors
// (norm weights, biases) and on the SSM's A_log, D and dt_bias whatever their shape.
bool default_weight_decay(const std::string& hf_name, const std::vector<int64_t>& shape);

}  // namespace bamba
