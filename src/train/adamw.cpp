#include "train/adamw.h"

#include <cmath>
#include <cstring>

#include "core/dtype.h"
#include "core/error.h"
#include "core/hash_uniform.h"

namespace bamba {

uint16_t bf16_stochastic_round(float x, uint32_t r) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  if ((u & 0x7f800000u) == 0x7f800000u) return uint16_t((u >> 16) | ((u & 0xffff) ? 0x40 : 0));  // inf; NaN stays NaN
  // Adding r < 2^16 carries into the kept half with probability (low 16 bits)/2^16. A carry out of the largest
  // finite magnitude would give inf; keep the value truncated instead.
  uint32_t s = u + (r & 0xffffu);
  if ((s & 0x7f800000u) == 0x7f800000u) s = u;
  return uint16_t(s >> 16);
}

AdamWUpdate adamw_scalars(const AdamWOptions& o, int64_t t, double lr, float grad_scale) {
  const double bc1 = 1 - std::pow(o.beta1, double(t)), bc2 = 1 - std::pow(o.beta2, double(t));
  return {float(lr / bc1), float(std::sqrt(bc2)), float(o.eps), float(1 - o.beta1), float(o.beta2),
          float(1 - o.beta2), 1.f, grad_scale, 0};
}

uint64_t adamw_rounding_key(const AdamWOptions& o, int64_t t, size_t i) {
  return splitmix64(o.seed ^ splitmix64(uint64_t(t) * 0x9e3779b97f4a7c15ull + o.first_param_index + i));
}

float adamw_decay_factor(const AdamWOptions& o, double lr, bool decay) {
  return decay ? float(1 - lr * o.weight_decay) : 1.f;
}

AdamW::AdamW(const std::vector<ParamRef>& params, AdamWOptions opt, ParamDevice* dev) : opt_(opt), dev_(dev) {
  for (const auto& p : params) {
    sizes_.push_back(p.size);
    if (dev_) {
      const DType mdt = opt_.bf16_moments ? DType::BF16 : DType::F32;
      mdev_.push_back(dev_->alloc(mdt, p.size));
      vdev_.push_back(dev_->alloc(mdt, p.size));
    } else if (opt_.bf16_moments) {
      m16_.emplace_back(p.size, 0);
      v16_.emplace_back(p.size, 0);
    } else {
      m32_.emplace_back(p.size, 0.f);
      v32_.emplace_back(p.size, 0.f);
    }
  }
}

AdamW::~AdamW() {
  for (void* p : mdev_) dev_->release(p);
  for (void* p : vdev_) dev_->release(p);
}

void AdamW::step(const std::vector<ParamRef>& params, double lr, float grad_scale) {
  BAMBA_CHECK(params.size() == sizes_.size(), "AdamW: ", params.size(), " parameters, the optimizer was made for ",
              sizes_.size());
  ++t_;
  const AdamWUpdate u = adamw_scalars(opt_, t_, lr, grad_scale);
  const float step_size = u.step_size, bc2_sqrt = u.bc2_sqrt, eps = u.eps;
  const float one_minus_b1 = u.one_minus_b1, b2 = u.b2, one_minus_b2 = u.one_minus_b2;
  if (dev_) {  // every parameter in one call (one launch on the GPU)
    std::vector<float> decay(params.size());
    std::vector<uint64_t> keys(params.size());
    for (size_t i = 0; i < params.size(); ++i) {
      BAMBA_CHECK(params[i].size == sizes_[i], "AdamW: parameter ", params[i].name, " has ", params[i].size,
                  " elements, expected ", sizes_[i]);
      decay[i] = adamw_decay_factor(opt_, lr, params[i].decay);
      keys[i] = adamw_rounding_key(opt_, t_, i);
    }
    dev_->adamw_all(params, mdev_, vdev_, opt_.bf16_moments, u, decay, keys);
    return;
  }
  for (size_t i = 0; i < params.size(); ++i) {
    const ParamRef& p = params[i];
    BAMBA_CHECK(p.size == sizes_[i], "AdamW: parameter ", p.name, " has ", p.size, " elements, expected ", sizes_[i]);
    BAMBA_CHECK(p.value, "AdamW: parameter ", p.name, " has a split master, which only a ParamDevice updates");
    float* w = p.value;
    const float* g = p.grad;
    const float decay = adamw_decay_factor(opt_, lr, p.decay);
    if (!opt_.bf16_moments) {
      float* m = m32_[i].data();
      float* v = v32_[i].data();
      for (size_t j = 0; j < p.size; ++j) {
        const float gj = g[j] * grad_scale;
        w[j] *= decay;
        m[j] += one_minus_b1 * (gj - m[j]);
        v[j] = b2 * v[j] + one_minus_b2 * gj * gj;
        w[j] -= step_size * (m[j] / (std::sqrt(v[j]) / bc2_sqrt + eps));
      }
    } else {
      uint16_t* m = m16_[i].data();
      uint16_t* v = v16_[i].data();
      const uint64_t key = adamw_rounding_key(opt_, t_, i);
      for (size_t j = 0; j < p.size; ++j) {
        const uint64_t r = splitmix64(key + j);  // 2 × 16 bits: one for m, one for v
        const float gj = g[j] * grad_scale;
        float mj = bf16_to_f32(m[j]), vj = bf16_to_f32(v[j]);
        w[j] *= decay;
        mj += one_minus_b1 * (gj - mj);
        vj = b2 * vj + one_minus_b2 * gj * gj;
        w[j] -= step_size * (mj / (std::sqrt(vj) / bc2_sqrt + eps));
        m[j] = bf16_stochastic_round(mj, uint32_t(r));
        v[j] = bf16_stochastic_round(vj, uint32_t(r >> 16));
      }
    }
  }
}

namespace {
std::vector<float> moment_f32(const AdamW& opt, size_t i, bool sq, size_t n) {
  std::vector<float> out(n);
  if (!opt.options().bf16_moments) {
    opt.moment_to_host(i, sq, out.data());
    return out;
  }
  std::vector<uint16_t> bits(n);
  opt.moment_to_host(i, sq, bits.data());
  for (size_t j = 0; j < n; ++j) out[j] = bf16_to_f32(bits[j]);
  return out;
}
}  // namespace

std::vector<float> AdamW::exp_avg(size_t i) const { return moment_f32(*this, i, false, sizes_.at(i)); }
std::vector<float> AdamW::exp_avg_sq(size_t i) const { return moment_f32(*this, i, true, sizes_.at(i)); }

void AdamW::moment_to_host(size_t i, bool sq, void* dst) const {
  const DType mdt = opt_.bf16_moments ? DType::BF16 : DType::F32;
  if (dev_) dev_->download(dst, sq ? vdev_.at(i) : mdev_.at(i), mdt, sizes_.at(i));
  else std::memcpy(dst, sq ? exp_avg_sq_data(i) : exp_avg_data(i), moment_bytes(i));
}
void AdamW::moment_from_host(size_t i, bool sq, const void* src) {
  const DType mdt = opt_.bf16_moments ? DType::BF16 : DType::F32;
  if (dev_) dev_->upload(sq ? vdev_.at(i) : mdev_.at(i), src, mdt, sizes_.at(i));
  else std::memcpy(sq ? exp_avg_sq_data(i) : exp_avg_data(i), src, moment_bytes(i));
}

const void* AdamW::exp_avg_data(size_t i) const {
  BAMBA_CHECK(!dev_, "internal: AdamW moments are device memory");
  return opt_.bf16_moments ? static_cast<const void*>(m16_.at(i).data()) : m32_.at(i).data();
}
const void* AdamW::exp_avg_sq_data(size_t i) const {
  BAMBA_CHECK(!dev_, "internal: AdamW moments are device memory");
  return opt_.bf16_moments ? static_cast<const void*>(v16_.at(i).data()) : v32_.at(i).data();
}
void* AdamW::exp_avg_data(size_t i) {
  BAMBA_CHECK(!dev_, "internal: AdamW moments are device memory");
  return opt_.bf16_moments ? static_cast<void*>(m16_.at(i).data()) : m32_.at(i).data();
}
void* AdamW::exp_avg_sq_data(size_t i) {
  BAMBA_CHECK(!dev_, "internal: AdamW moments are device memory");
  return opt_.bf16_moments ? static_cast<void*>(v16_.at(i).data()) : v32_.at(i).data();
}
void* AdamW::moment_data(size_t i, bool sq) {
  if (dev_) return sq ? vdev_.at(i) : mdev_.at(i);
  return sq ? exp_avg_sq_data(i) : exp_avg_data(i);
}
size_t AdamW::moment_bytes(size_t i) const { return sizes_.at(i) * (opt_.bf16_moments ? 2 : 4); }

double global_grad_norm(const std::vector<ParamRef>& params, ParamDevice* dev) {
  double s = 0;
  if (dev) return std::sqrt(dev->sum_squares_all(params));  // per parameter (fixed order), added in order
  for (const auto& p : params)
    for (size_t j = 0; j < p.size; ++j) s += double(p.grad[j]) * double(p.grad[j]);
  return std::sqrt(s);
}

float clip_coefficient(double norm, double max_norm) {
  if (max_norm <= 0 || !std::isfinite(norm)) return 1.f;
  const double coef = max_norm / (norm + 1e-6);
  return coef < 1 ? float(coef) : 1.f;
}

double clip_grad_norm(const std::vector<ParamRef>& params, double max_norm, ParamDevice* dev) {
  const double norm = global_grad_norm(params, dev);
  if (max_norm <= 0 || !std::isfinite(norm)) return norm;
  const double coef = max_norm / (norm + 1e-6);
  if (coef < 1) {
    const float c = float(coef);
    if (dev) {
      for (const auto& p : params) dev->scale(p.grad, p.size, c);
      return norm;
    }
    for (const auto& p : params)
      for (size_t j = 0; j < p.size; ++j) p.grad[j] *= c;
  }
  return norm;
}

}  // namespace bamba
