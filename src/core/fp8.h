// Symmetric FP8 (E4M3) quantization of one row, the scheme vLLM uses for per-output-channel weights and for dynamic
// per-token activations: scale = amax(|x|) / 448, q = e4m3(x / scale) (round to nearest even), so that the
// largest magnitude maps onto the format's largest finite value and x ≈ q · scale. The GPU kernels
// (backend/cuda/fp8_*.cu) compute the same scale and the same division, so both backends agree on every q.
#pragma once
#include <cmath>
#include <cstdint>

#include "core/dtype.h"

namespace bamba {

// An all-zero row gets scale 1 (q = 0) rather than a division by zero.
inline float fp8_scale_for(float amax) { return amax > 0.f && std::isfinite(amax) ? amax / kE4M3Max : 1.f; }

// q[0, n) = e4m3(x / scale); returns scale.
inline float quantize_row_e4m3(const float* x, int64_t n, uint8_t* q) {
  float amax = 0.f;
  for (int64_t i = 0; i < n; ++i) amax = std::fmax(amax, std::fabs(x[i]));
  const float s = fp8_scale_for(amax);
  for (int64_t i = 0; i < n; ++i) q[i] = f32_to_e4m3(x[i] / s);
  return s;
}

}  // namespace bamba
