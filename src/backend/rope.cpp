#include <cmath>

#include "backend/backend.h"

namespace bamba {

std::vector<float> rope_inv_freq(const AttentionOpsConfig& c) {
  std::vector<float> f(size_t(c.rotary_dim / 2));
  for (size_t j = 0; j < f.size(); ++j) {
    float v = 1.f / std::pow(c.rope_theta, float(2 * j) / float(c.rotary_dim));
    if (c.inv_freq_dtype == DType::BF16) v = bf16_to_f32(f32_to_bf16(v));
    if (c.inv_freq_dtype == DType::F16) v = f16_to_f32(f32_to_f16(v));
    f[j] = v;
  }
  return f;
}

}  // namespace bamba
