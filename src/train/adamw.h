// AdamW as torch.optim.AdamW computes it (the single-tensor path, decoupled weight decay):
//   θ ← θ·(1 − lr·wd)                       (only for parameters with decay)
//   m ← m + (1 − β1)(g − m)                 (torch's lerp)
//   v ← β2·v + (1 − β2)·g²
//   θ ← θ − (lr / (1 − β1ᵗ)) · m / (√v / √(1 − β2ᵗ) + ε)
// with t the 1-based step; the scalar factors are computed in double (Python floats in torch), the element-wise
// work in fp32 on the fp32 master weights. Moments are fp32, or bf16 with stochastic rounding in the memory mode.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "train/trainable.h"

namespace bamba {

struct AdamWOptions {
  double beta1 = 0.9, beta2 = 0.95;  // fms-fsdp's Bamba run
  double eps = 1e-8;
  double weight_decay = 0.1;
  // bf16 moments, each write stochastically rounded: the fp32 result's 32 bits plus a 16-bit uniform number
  // (a counter hash of seed, step, parameter index, element index), then truncated to the top 16 bits, so a
  // value rounds up with probability equal to its distance from the lower bf16 neighbour — unbiased on average,
  // where round-to-nearest would lose every update smaller than half a bf16 ulp of v. No RNG state to save: the
  // same (seed, step) gives the same bits after a resume.
  bool bf16_moments = false;
  uint64_t seed = 0;
  // The index of the first parameter in the model's list: a ZeRO-1 shard (train/data_parallel.h) updates a run of
  // the parameters and draws the same rounding bits for them as one optimizer over all of them would.
  uint64_t first_param_index = 0;
};

// What AdamW::step hands a ParamDevice for its t-th step (1-based) at `lr`, for backends' kernels and their tests to
// compute the same way: the scalars every tensor shares (decay 1 and key 0 there: each tensor has its own), the
// stochastic-rounding key of parameter i (counting from AdamWOptions::first_param_index), a parameter's decay factor.
AdamWUpdate adamw_scalars(const AdamWOptions& o, int64_t t, double lr, float grad_scale);
uint64_t adamw_rounding_key(const AdamWOptions& o, int64_t t, size_t i);
float adamw_decay_factor(const AdamWOptions& o, double lr, bool decay);

class AdamW {
 public:
  // `params` fixes the number, order and sizes of the moment buffers (zeros, step 0). With a ParamDevice the
  // parameters are device buffers, and so are the moments (allocated here); the update runs there.
  AdamW(const std::vector<ParamRef>& params, AdamWOptions opt, ParamDevice* dev = nullptr);
  ~AdamW();
  AdamW(const AdamW&) = delete;
  AdamW& operator=(const AdamW&) = delete;

  // One update of every parameter from its grad at learning rate `lr`; increments step(). Each grad is read as
  // g·grad_scale (fp32 product): clip_coefficient's factor applied on the way, with the bits an in-place scaling
  // of the grads would give, without that pass over them.
  void step(const std::vector<ParamRef>& params, double lr, float grad_scale = 1.f);

  int64_t steps_taken() const { return t_; }
  const AdamWOptions& options() const { return opt_; }

  // The moments of parameter i as fp32 (exact for bf16 moments), and writing them back (from a checkpoint).
  std::vector<float> exp_avg(size_t i) const;
  std::vector<float> exp_avg_sq(size_t i) const;
  // The raw bytes (fp32 or bf16 bits, moment_bytes(i) of them) of a moment, wherever it lives: for checkpoints.
  void moment_to_host(size_t i, bool sq, void* dst) const;
  void moment_from_host(size_t i, bool sq, const void* src);
  ParamDevice* device() const { return dev_; }
  // Raw host storage (host parameters only): fp32 or bf16 bits, as bf16_moments says; `bytes` of each buffer.
  const void* exp_avg_data(size_t i) const;
  const void* exp_avg_sq_data(size_t i) const;
  void* exp_avg_data(size_t i);
  void* exp_avg_sq_data(size_t i);
  size_t moment_bytes(size_t i) const;
  // Where moment i lives (device memory with a ParamDevice, else host), moment_bytes(i) bytes: for collectives.
  void* moment_data(size_t i, bool sq);
  size_t num_params() const { return sizes_.size(); }
  void set_steps_taken(int64_t t) { t_ = t; }

 private:
  AdamWOptions opt_;
  std::vector<size_t> sizes_;
  std::vector<std::vector<float>> m32_, v32_;     // fp32 moments
  std::vector<std::vector<uint16_t>> m16_, v16_;  // bf16 moments (memory mode)
  ParamDevice* dev_ = nullptr;
  std::vector<void*> mdev_, vdev_;                 // device moments
  int64_t t_ = 0;
};

// Σ over all grads of g², in double, in parameter order (deterministic), square-rooted: the global L2 norm.
double global_grad_norm(const std::vector<ParamRef>& params, ParamDevice* dev = nullptr);
// torch.nn.utils.clip_grad_norm_: scales every grad by max_norm / (norm + 1e-6) when that is below 1; returns
// the norm before clipping. max_norm <= 0 only measures. A non-finite norm is returned without scaling.
double clip_grad_norm(const std::vector<ParamRef>& params, double max_norm, ParamDevice* dev = nullptr);

// clip_grad_norm's factor for a norm already measured, without scaling anything: max_norm / (norm + 1e-6) as a
// float when that is below 1, else 1 (also for max_norm <= 0 or a non-finite norm). For AdamW::step's grad_scale.
float clip_coefficient(double norm, double max_norm);

// Stochastic rounding of an fp32 value to bf16 bits with 16 random bits `r` (see AdamWOptions::bf16_moments).
uint16_t bf16_stochastic_round(float x, uint32_t r);

}  // namespace bamba
