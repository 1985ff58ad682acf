// HybridTrainable: the Bamba model as the trainer sees it (train/trainable.h) — its fp32 weights as the master
// parameters, gradients laid out like them, one forward_backward per micro-batch (model/hybrid_backward.cpp).
// The backward exists on the CPU backend only so far; on another backend this is an Error saying so.
#pragma once
#include "model/hybrid.h"
#include "train/trainable.h"

namespace bamba {

class HybridTrainable final : public Trainable {
 public:
  HybridTrainable(HybridModel& model, float z_loss_coefficient);
  ~HybridTrainable() override;
  std::vector<ParamRef> params() override;
  LossResult loss_and_grad(const TokenBatch& batch, const LossDivisors& div) override;
  LossResult loss(const TokenBatch& batch, const LossDivisors& div) override;  // forward + loss only
  double flops_per_token() const override;

 private:
  LossResult run(const TokenBatch& batch, const LossDivisors& div, bool loss_only);
  HybridModel& model_;
  ModelWeights grads_;
  float z_loss_;
};

}  // namespace bamba
