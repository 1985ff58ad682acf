// HybridTrainable: the Bamba model as the trainer sees it (train/trainable.h) — fp32 master parameters named as
// in the HF checkpoint, gradients laid out like them, one forward_backward per micro-batch
// (model/hybrid_backward.cpp). On the CPU backend (fp32) the model's own weights are the master copy. On a GPU
// backend everything stays on the device: fp32 gradients, fp32 masters (the model's weights themselves where they
// are fp32 — the 1-D tensors always, every tensor in fp32 compute — else an fp32 copy whose update rewrites the
// model's bf16 weight, or with split_masters the bf16 weight itself plus 16 low bits: core/bf16_split.h), and the
// optimizer's moments; the AdamW update is a backend kernel.
#pragma once
#include <memory>
#include <unordered_map>

#include "model/hybrid.h"
#include "train/trainable.h"

namespace bamba {

struct HybridTrainableOptions {
  float z_loss_coefficient = 0.f;
  Checkpointing activation_checkpointing = Checkpointing::Off;
  int64_t checkpoint_layers = -1;  // TrainOptions::checkpoint_layers
  // A bf16 weight's fp32 master kept as the weight plus its low 16 bits (2 bytes a parameter instead of 4; the
  // same master, the forward's weight rounded with ties away from zero): precision bf16-memory. GPU backends only.
  bool split_masters = false;
};

class HybridTrainable final : public Trainable {
 public:
  explicit HybridTrainable(HybridModel& model, const HybridTrainableOptions& o = {});
  ~HybridTrainable() override;
  std::vector<ParamRef> params() override;
  LossResult loss_and_grad(const TokenBatch& batch, const LossDivisors& div) override;
  LossResult loss(const TokenBatch& batch, const LossDivisors& div) override;  // forward + loss only
  double flops_per_token() const override;
  ParamDevice* param_device() override { return device_.get(); }

 private:
  LossResult run(const TokenBatch& batch, const LossDivisors& div, bool loss_only);
  HybridModel& model_;
  ModelWeights grads_;
  HybridTrainableOptions opt_;
  std::vector<ParamRef> params_;
  std::vector<Tensor> masters_;  // fp32 masters, or split masters' low halves, allocated here (bf16 compute)
  std::unique_ptr<ParamDevice> device_;
};

}  // namespace bamba
