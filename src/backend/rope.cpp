#include <cmath>

#include "backend/backend.h"

namespace bamba {

std::vector<float> rope_inv_freq(const AttentionOpsConfig& c) {
  std::vector<float> f(size_t(c.rotary_dim / 2));
  for (size_t j = 0; j < f.size(); ++j) {
    float v = 1.f / std::pow(c.rope_theta, float(2 * j) / float(c.rotary_dim));
    if (c.rope_factor > 0.f) {  // llama3: by wavelength band, in fp32 like _compute_llama3_parameters
      const float pi = 3.14159265358979323846f, orig = float(c.rope_original_max_position);
      const float low_wavelen = orig / c.rope_low_freq_factor, high_wavelen = orig / c.rope_high_freq_factor;
      const float wavelen = 2.f * pi / v;
      if (wavelen > low_wavelen) {
        v = v / c.rope_factor;  // long wavelengths: interpolated
      } else if (wavelen >= high_wavelen) {  // the medium band: smoothly between the two
        const float smooth = (orig / wavelen - c.rope_low_freq_factor) / (c.rope_high_freq_factor - c.rope_low_freq_factor);
        v = (1.f - smooth) * v / c.rope_factor + smooth * v;
      }
    }
    if (c.inv_freq_dtype == DType::BF16) v = bf16_to_f32(f32_to_bf16(v));
    if (c.inv_freq_dtype == DType::F16) v = f16_to_f32(f32_to_f16(v));
    f[j] = v;
  }
  return f;
}

}  // namespace bamba
