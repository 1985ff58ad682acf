#include "train/hybrid_trainable.h"

#include "core/bf16_split.h"
#include "core/dtype.h"
#include "core/error.h"

namespace bamba {
namespace {

// ParamDevice over a Backend's memory and optimizer ops. `copies` maps an fp32 master's address to the model's
// tensor in the compute dtype that the update refreshes; `split` a split master's low halves to its model weight.
class BackendParams final : public ParamDevice {
 public:
  BackendParams(Backend& be, std::unordered_map<const void*, Tensor> copies,
                std::unordered_map<const void*, Tensor> split)
      : be_(be), copies_(std::move(copies)), split_(std::move(split)) {}
  ~BackendParams() override {
    for (auto& [p, t] : owned_) be_.release(t);
  }
  Tensor view(const void* p, DType dtype, size_t n) const {
    return Tensor(const_cast<void*>(p), dtype, be_.device(), {int64_t(n)});
  }
  void* alloc(DType dtype, size_t n) override {
    Tensor t = be_.alloc(dtype, {int64_t(n)});
    owned_[t.data] = t;
    return t.data;
  }
  void release(void* p) override {
    auto it = owned_.find(p);
    if (it == owned_.end()) return;
    be_.release(it->second);
    owned_.erase(it);
  }
  void download(void* host, const void* dev, DType dtype, size_t n) override {
    if (dtype == DType::F32) return be_.to_host_f32(view(dev, dtype, n), static_cast<float*>(host));
    std::vector<float> f(n);
    be_.to_host_f32(view(dev, dtype, n), f.data());
    convert_from_f32(f.data(), n, dtype, host);  // bf16 → f32 → bf16 is exact
  }
  void upload(void* dev, const void* host, DType dtype, size_t n) override {
    if (dtype == DType::F32) return be_.from_host_f32(view(dev, dtype, n), static_cast<const float*>(host));
    std::vector<float> f(n);
    convert_to_f32(host, dtype, n, f.data());
    be_.from_host_f32(view(dev, dtype, n), f.data());
  }
  void zero(float* p, size_t n) override { be_.fill(view(p, DType::F32, n), 0.f); }
  double sum_squares(const float* g, size_t n) override { return be_.sum_squares(view(g, DType::F32, n)); }
  void scale(float* g, size_t n, float c) override { be_.scale_gradient(view(g, DType::F32, n), c); }
  // adamw_update's tensors for p: (the master, its copy, its low halves)
  AdamWTensor update_of(const ParamRef& p, void* m, void* v, DType mdt) const {
    AdamWTensor t;
    if (p.value) {
      auto it = copies_.find(p.value);
      t.w = view(p.value, DType::F32, p.size), t.model_copy = it == copies_.end() ? Tensor{} : it->second;
    } else {
      t.w = split_.at(p.split_lo), t.w_lo = view(p.split_lo, DType::I16, p.size);
    }
    t.g = view(p.grad, DType::F32, p.size), t.m = view(m, mdt, p.size), t.v = view(v, mdt, p.size);
    return t;
  }
  void adamw(const ParamRef& p, void* m, void* v, bool bf16_moments, const AdamWUpdate& a) override {
    const AdamWTensor t = update_of(p, m, v, bf16_moments ? DType::BF16 : DType::F32);
    be_.adamw_update(t.w, t.g, t.m, t.v, a, t.model_copy, t.w_lo);
  }
  void adamw_all(const std::vector<ParamRef>& ps, const std::vector<void*>& m, const std::vector<void*>& v,
                 bool bf16_moments, const AdamWUpdate& u, const std::vector<float>& decay,
                 const std::vector<uint64_t>& key) override {
    std::vector<AdamWTensor> ts(ps.size());
    for (size_t i = 0; i < ps.size(); ++i) {
      ts[i] = update_of(ps[i], m[i], v[i], bf16_moments ? DType::BF16 : DType::F32);
      ts[i].decay = decay[i], ts[i].key = key[i];
    }
    be_.adamw_update_many(ts, u);
  }
  double sum_squares_all(const std::vector<ParamRef>& ps) override {
    std::vector<Tensor> gs;
    gs.reserve(ps.size());
    for (const ParamRef& p : ps) gs.push_back(view(p.grad, DType::F32, p.size));
    return be_.sum_squares_many(gs);
  }
  void sync_model(const std::vector<ParamRef>& params) override {
    std::vector<float> f;
    for (const ParamRef& p : params) {  // (a split master's top half is the model's weight: nothing to do)
      auto it = copies_.find(p.value);
      if (!p.value || it == copies_.end()) continue;
      f.resize(p.size);
      be_.to_host_f32(view(p.value, DType::F32, p.size), f.data());
      be_.from_host_f32(it->second, f.data());
    }
  }
  void master_to_host(const ParamRef& p, float* host) override {
    if (p.value) return ParamDevice::master_to_host(p, host);
    std::vector<uint16_t> hi(p.size), lo(p.size);
    download(hi.data(), p.split_hi, DType::BF16, p.size);
    download(lo.data(), p.split_lo, DType::I16, p.size);
    for (size_t j = 0; j < p.size; ++j) host[j] = bf16_join(hi[j], lo[j]);
  }
  void master_from_host(const ParamRef& p, const float* host) override {
    if (p.value) return ParamDevice::master_from_host(p, host);
    std::vector<uint16_t> hi(p.size), lo(p.size);
    for (size_t j = 0; j < p.size; ++j) bf16_split(host[j], hi[j], lo[j]);
    upload(p.split_hi, hi.data(), DType::BF16, p.size);
    upload(p.split_lo, lo.data(), DType::I16, p.size);
  }

 private:
  Backend& be_;
  std::unordered_map<const void*, Tensor> copies_, split_;
  std::unordered_map<void*, Tensor> owned_;
};

}  // namespace

HybridTrainable::HybridTrainable(HybridModel& model, const HybridTrainableOptions& o)
    : model_(model), grads_(zeros_like_weights(model.config(), model.backend())), opt_(o) {
  Backend& be = model.backend();
  if (be.device() == Device::CPU && be.weight_dtype() != DType::F32)
    fail("bamba train: the CPU backend trains in fp32 only");
  const std::vector<NamedTensor> w = hf_tensors(model_.config(), model_.weights());
  const std::vector<NamedTensor> g = hf_tensors(model_.config(), grads_);
  BAMBA_CHECK(w.size() == g.size(), "internal: weights and gradients differ in layout");
  std::unordered_map<const void*, Tensor> copies, split;
  for (size_t i = 0; i < w.size(); ++i) {
    BAMBA_CHECK(w[i].name == g[i].name && w[i].t.contiguous() && g[i].t.contiguous() && g[i].t.dtype == DType::F32,
                "internal: parameter ", w[i].name, " is not a contiguous block with an fp32 gradient");
    ParamRef p;
    p.name = w[i].name;
    p.grad = g[i].t.ptr<float>();
    p.size = size_t(w[i].t.numel());
    p.shape = w[i].shape;
    p.decay = default_weight_decay(p.name, p.shape);
    if (w[i].t.dtype == DType::F32) {
      p.value = w[i].t.ptr<float>();  // the model's weight is the master
    } else if (opt_.split_masters && be.device() != Device::CPU && w[i].t.dtype == DType::BF16) {
      // the master is the weight (exactly: its low halves start at zero) plus 16 more bits
      Tensor lo = be.alloc(DType::I16, {int64_t(p.size)});  // zero-filled
      masters_.push_back(lo);
      p.split_hi = w[i].t.data, p.split_lo = lo.data;
      split[lo.data] = w[i].t;
    } else {  // an fp32 master from the model's (rounded) weight; the update writes the model's copy
      Tensor m = be.alloc(DType::F32, {int64_t(p.size)});
      std::vector<float> v(p.size);
      be.to_host_f32(w[i].t, v.data());
      be.from_host_f32(m, v.data());
      masters_.push_back(m);
      p.value = m.ptr<float>();
      copies[p.value] = w[i].t;
    }
    params_.push_back(std::move(p));
  }
  if (be.device() != Device::CPU) device_ = std::make_unique<BackendParams>(be, std::move(copies), std::move(split));
}

HybridTrainable::~HybridTrainable() {
  device_.reset();
  for (Tensor t : masters_) model_.backend().release(t);
  release_weights(model_.config(), grads_, model_.backend());
}

std::vector<ParamRef> HybridTrainable::params() { return params_; }

LossResult HybridTrainable::run(const TokenBatch& b, const LossDivisors& d, bool loss_only) {
  TrainBatch tb;
  tb.rows = int32_t(b.rows);
  tb.seq_len = int32_t(b.cols);
  tb.input_ids = b.tokens;
  tb.labels = b.labels;
  tb.seq_start = b.seq_start;
  TrainOptions o;
  o.z_loss_coefficient = opt_.z_loss_coefficient;
  o.label_count = d.labels;
  o.position_count = d.positions;
  o.loss_only = loss_only;
  o.activation_checkpointing = opt_.activation_checkpointing;
  o.checkpoint_layers = opt_.checkpoint_layers;
  const TrainResult r = model_.forward_backward(tb, grads_, o);
  return {r.loss, r.label_count};
}

LossResult HybridTrainable::loss_and_grad(const TokenBatch& b, const LossDivisors& d) { return run(b, d, false); }
LossResult HybridTrainable::loss(const TokenBatch& b, const LossDivisors& d) { return run(b, d, true); }

double HybridTrainable::flops_per_token() const { return 6.0 * double(model_.config().parameter_count()); }

}  // namespace bamba
