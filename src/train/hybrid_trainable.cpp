#include "train/hybrid_trainable.h"

#include "core/error.h"

namespace bamba {

HybridTrainable::HybridTrainable(HybridModel& model, float z_loss_coefficient)
    : model_(model), grads_(zeros_like_weights(model.config(), model.backend())), z_loss_(z_loss_coefficient) {
  Backend& be = model.backend();
  if (be.device() != Device::CPU || be.weight_dtype() != DType::F32)
    fail("bamba train: the backward pass runs on the CPU backend (fp32) so far; use --device cpu (the CUDA "
         "backward is the next step of issue 10)");
}

HybridTrainable::~HybridTrainable() { release_weights(model_.config(), grads_, model_.backend()); }

// The weights are updated in place: on the CPU backend they are the fp32 master copy.
std::vector<ParamRef> HybridTrainable::params() {
  const std::vector<NamedTensor> w = hf_tensors(model_.config(), model_.weights());
  const std::vector<NamedTensor> g = hf_tensors(model_.config(), grads_);
  BAMBA_CHECK(w.size() == g.size(), "internal: weights and gradients differ in layout");
  std::vector<ParamRef> out;
  for (size_t i = 0; i < w.size(); ++i) {
    BAMBA_CHECK(w[i].name == g[i].name && w[i].t.contiguous() && g[i].t.contiguous(), "internal: parameter ",
                w[i].name, " is not a contiguous fp32 block");
    ParamRef p;
    p.name = w[i].name;
    p.value = w[i].t.ptr<float>();
    p.grad = g[i].t.ptr<float>();
    p.size = size_t(w[i].t.numel());
    p.shape = w[i].shape;
    p.decay = default_weight_decay(p.name, p.shape);
    out.push_back(std::move(p));
  }
  return out;
}

LossResult HybridTrainable::run(const TokenBatch& b, const LossDivisors& d, bool loss_only) {
  TrainBatch tb;
  tb.rows = int32_t(b.rows);
  tb.seq_len = int32_t(b.cols);
  tb.input_ids = b.tokens;
  tb.labels = b.labels;
  tb.seq_start = b.seq_start;
  TrainOptions o;
  o.z_loss_coefficient = z_loss_;
  o.label_count = d.labels;
  o.position_count = d.positions;
  o.loss_only = loss_only;
  const TrainResult r = model_.forward_backward(tb, grads_, o);
  return {r.loss, r.label_count};
}

LossResult HybridTrainable::loss_and_grad(const TokenBatch& b, const LossDivisors& d) { return run(b, d, false); }
LossResult HybridTrainable::loss(const TokenBatch& b, const LossDivisors& d) { return run(b, d, true); }

double HybridTrainable::flops_per_token() const { return 6.0 * double(model_.config().parameter_count()); }

}  // namespace bamba
