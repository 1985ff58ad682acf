// Trainable: the seam between the trainer and a model. The trainer sees a model as a list of fp32 parameters (the
// master weights) with same-sized gradient buffers, named as in the Hugging Face checkpoint, and one call that
// adds the gradient of a micro-batch's loss into those buffers. The Bamba model's backward plugs in here; the
// tests plug in a toy softmax model with an analytic gradient.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "backend/backend.h"

namespace bamba {

// One parameter tensor. `value` and `grad` point at `size` floats owned by the Trainable and stay valid for its
// lifetime; `shape` is the Hugging Face shape (the product is `size`).
struct ParamRef {
  std::string name;  // HF tensor name, e.g. "model.layers.0.mamba.A_log"
  float* value = nullptr;  // the fp32 master; null when it is split (below)
  float* grad = nullptr;
  size_t size = 0;
  std::vector<int64_t> shape;
  bool decay = true;  // AdamW weight decay applies (see default_weight_decay)
  // A split master (precision bf16-memory on a GPU, core/bf16_split.h): the model's own bf16 weight `split_hi`
  // holds the master's top half and `split_lo` (device memory, `size` I16) the rest — 2 bytes a parameter
  // instead of an fp32 master beside the bf16 weight. Read and written through the ParamDevice only.
  void* split_hi = nullptr;
  void* split_lo = nullptr;
};

// Rows of token ids with Hugging Face's unshifted labels: the logits at position t are scored against
// labels[t + 1] of the same row, so labels[0] of a row is never scored; -100 marks a position that does not
// count. For plain pretraining labels == tokens; for SFT the prompt's labels are -100.
//
// seq_start splits the rows further into sequences (packing with resets): cu_seqlens over the flattened
// [rows · cols] positions, 0 first and rows · cols last, every row start among them. Each sequence starts from a
// fresh state (Mamba's state and conv window at zero, attention within the sequence, RoPE positions from 0), and
// its first position's label is never scored, as for a row. Empty: every row is one sequence.
struct TokenBatch {
  int64_t rows = 0, cols = 0;
  std::vector<int32_t> tokens;     // [rows, cols]
  std::vector<int32_t> labels;     // [rows, cols]
  std::vector<int32_t> seq_start;  // [S + 1] or empty
  // The sequences' boundaries: seq_start, or the row starts when it is empty. Error when seq_start is malformed.
  std::vector<int32_t> sequences() const;
  int64_t labeled() const;          // scored positions: labels[t] != -100 for t not the start of a sequence
  int64_t labeled_sequences() const;  // sequences with at least one scored position
};

// The divisors of the loss for a whole optimizer step, so that the micro-batches' gradients add up to the
// step's: labels = the step's scored tokens (per-token mean over the global batch) or its sequences with a scored
// token (loss_reduction: sum — each sequence's summed loss, averaged over sequences, as Tulu-3 trains);
// positions = the step's rows × cols (the z-loss is a mean over all positions, as in HF).
struct LossDivisors {
  int64_t labels = 1, positions = 1;
};

struct LossResult {
  double loss = 0;      // this micro-batch's share: Σ its token losses / labels (+ its z-loss terms / positions)
  int64_t labeled = 0;  // its scored positions
};

// Where the parameters live when that is not host memory (a GPU): ParamRef::value and grad are then device
// pointers, and the trainer and optimizer do their element-wise work, and move checkpoint bytes, through this.
class ParamDevice {
 public:
  virtual ~ParamDevice() = default;
  // Buffers of n elements of dtype (F32, or BF16 moments), zero-filled; copies move the raw elements.
  virtual void* alloc(DType dtype, size_t n) = 0;
  virtual void release(void* p) = 0;
  virtual void download(void* host, const void* dev, DType dtype, size_t n) = 0;
  virtual void upload(void* dev, const void* host, DType dtype, size_t n) = 0;
  virtual void zero(float* p, size_t n) = 0;
  virtual double sum_squares(const float* g, size_t n) = 0;  // Σ g² in double, in a fixed order
  virtual void scale(float* g, size_t n, float c) = 0;
  // The AdamW update of parameter p with moments m, v (F32, or BF16 bits), then the model's own copy of p (its
  // compute dtype) refreshed from the fp32 master.
  virtual void adamw(const ParamRef& p, void* m, void* v, bool bf16_moments, const AdamWUpdate& a) = 0;
  // Every parameter's update at once (adamw for each, in one launch where the device can): m[i], v[i] the moments
  // of ps[i], u the shared scalars, decay[i] and key[i] each tensor's. The default calls adamw one by one.
  virtual void adamw_all(const std::vector<ParamRef>& ps, const std::vector<void*>& m, const std::vector<void*>& v,
                         bool bf16_moments, const AdamWUpdate& u, const std::vector<float>& decay,
                         const std::vector<uint64_t>& key) {
    for (size_t i = 0; i < ps.size(); ++i) {
      AdamWUpdate a = u;
      a.decay = decay[i], a.key = key[i];
      adamw(ps[i], m[i], v[i], bf16_moments, a);
    }
  }
  // Σ over all grads of Σ g², each parameter's sum_squares added in order (one launch where the device can).
  virtual double sum_squares_all(const std::vector<ParamRef>& ps) {
    double s = 0;
    for (const ParamRef& p : ps) s += sum_squares(p.grad, p.size);
    return s;
  }
  // After parameter values were written directly (a checkpoint loaded): refresh every model copy.
  virtual void sync_model(const std::vector<ParamRef>& params) = 0;
  // The master of p as fp32 (joined when it is split), and writing it (a checkpoint loaded; a split master is
  // split again, and its model weight is then current).
  virtual void master_to_host(const ParamRef& p, float* host) { download(host, p.value, DType::F32, p.size); }
  virtual void master_from_host(const ParamRef& p, const float* host) { upload(p.value, host, DType::F32, p.size); }
};

class Trainable {
 public:
  virtual ~Trainable() = default;
  // The same list, in the same order, on every call: the order is the checkpoint's tensor order.
  virtual std::vector<ParamRef> params() = 0;
  // Adds ∂(this micro-batch's share of the loss)/∂θ to every parameter's grad (never overwrites: the trainer
  // zeroes the buffers once per optimizer step and accumulates the micro-batches); HybridModel::forward_backward's
  // label_count / position_count are these divisors. Must be deterministic for a resume to be exact.
  virtual LossResult loss_and_grad(const TokenBatch& batch, const LossDivisors& div) = 0;
  // The same share of the loss without touching any gradient (validation). The default is an Error.
  virtual LossResult loss(const TokenBatch& batch, const LossDivisors& div);
  // Forward-and-backward FLOPs per trained token (≈ 6N + attention), for MFU; 0 when unknown.
  virtual double flops_per_token() const { return 0; }
  // Null: the parameters are host memory.
  virtual ParamDevice* param_device() { return nullptr; }
};

// The usual rule (fms-fsdp, mamba_ssm's _no_weight_decay, llm.c): decay matrices only; no decay on 1-D tensors
// (norm weights, biases) and on the SSM's A_log, D and dt_bias whatever their shape.
bool default_weight_decay(const std::string& hf_name, const std::vector<int64_t>& shape);

}  // namespace bamba
