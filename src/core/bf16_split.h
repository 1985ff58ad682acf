// An fp32 value kept as two 16-bit halves: `hi`, the nearest bf16, and `lo`, what hi leaves out as a signed 16-bit
// offset of the bit pattern, so that bf16_join(hi, lo) gives the fp32 value back exactly. Training's memory mode
// keeps its fp32 master weights so (train/hybrid_trainable.h): hi *is* the bf16 weight the model's matmuls read,
// and the master costs 2 bytes a parameter beside it instead of 4 — the same master, 18 GiB less for Bamba-9B.
//
// hi rounds to nearest with ties away from zero, not to even: the remainder of a tie rounded down would be
// +0x8000, one past int16's range, while ties away from zero keep it in [-0x8000, 0x7fff]. So hi differs from
// __float2bfloat16_rn only when the low 16 bits are exactly 0x8000. Two values have no exact split: a finite x that
// rounds past bf16's largest finite (|x| > 3.3961e38) keeps hi truncated and lo clamped to 0x7fff (it comes back
// as a nearby smaller value, still finite), and a NaN comes back as a NaN with another payload. Inf stays inf.
#pragma once
#include <cstdint>
#include <cstring>

#include "core/hash_uniform.h"  // BAMBA_HD

namespace bamba {

BAMBA_HD inline uint32_t f32_bits(float x) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(x);
#else
  uint32_t u;
  std::memcpy(&u, &x, 4);
  return u;
#endif
}

BAMBA_HD inline float f32_from_bits(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float x;
  std::memcpy(&x, &u, 4);
  return x;
#endif
}

BAMBA_HD inline void bf16_split(float x, uint16_t& hi, uint16_t& lo) {
  const uint32_t u = f32_bits(x);
  if ((u & 0x7f800000u) == 0x7f800000u) {  // inf, NaN (kept quiet in hi)
    hi = uint16_t((u >> 16) | ((u & 0x007fffffu) ? 0x40 : 0));
    lo = 0;
    return;
  }
  const uint32_t r = u + 0x8000u;  // the magnitude's bits rounded half up: the sign bit never changes
  if ((r & 0x7f800000u) == 0x7f800000u) {  // would round to inf: truncate
    hi = uint16_t(u >> 16);
    lo = uint16_t((u & 0xffffu) > 0x7fffu ? 0x7fffu : (u & 0xffffu));
    return;
  }
  hi = uint16_t(r >> 16);
  lo = uint16_t(u - (uint32_t(hi) << 16));  // in [-0x8000, 0x7fff] as int16
}

BAMBA_HD inline float bf16_join(uint16_t hi, uint16_t lo) {
  return f32_from_bits((uint32_t(hi) << 16) + uint32_t(int32_t(int16_t(lo))));
}

}  // namespace bamba
