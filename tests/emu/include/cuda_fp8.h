// Stand-in for CUDA's cuda_fp8.h and cuda_fp16.h when tests/emu/run.sh compiles fp8_gemv.cu for the CPU: the E4M3
// -> f16 conversions (exact, through mma.cuh's emu_e4m3_to_f16), f16 -> float, and the bf16 pairs.
#pragma once
#include "backend/cuda/kernels.cuh"
#include "backend/cuda/mma.cuh"

struct float2 { float x, y; };
struct __half_raw { uint16_t x; };
struct __half2_raw { uint16_t x, y; };
struct __half {
  uint16_t b = 0;
  __half() = default;
  explicit __half(__half_raw r) : b(r.x) {}
};
struct __half2 {
  uint16_t lo = 0, hi = 0;
  explicit __half2(__half2_raw r) : lo(r.x), hi(r.y) {}
};
inline float emu_f16_to_f32(uint16_t v) {
  const int e = (v >> 10) & 31, m = v & 1023;
  const float mag = e == 31 ? (m ? NAN : INFINITY) : e ? std::ldexp(1.f + m / 1024.f, e - 15) : std::ldexp(m / 1024.f, -14);
  return v & 0x8000 ? -mag : mag;
}
inline float __half2float(__half h) { return emu_f16_to_f32(h.b); }
inline float2 __half22float2(__half2 h) { return {emu_f16_to_f32(h.lo), emu_f16_to_f32(h.hi)}; }

using __nv_fp8x2_storage_t = uint16_t;
enum __nv_fp8_interpretation_t { __NV_E4M3, __NV_E5M2 };
inline __half2_raw __nv_cvt_fp8x2_to_halfraw2(__nv_fp8x2_storage_t v, __nv_fp8_interpretation_t) {
  return {bamba::cuda::emu_e4m3_to_f16(uint8_t(v)), bamba::cuda::emu_e4m3_to_f16(uint8_t(v >> 8))};
}
inline __half_raw __nv_cvt_fp8_to_halfraw(uint8_t v, __nv_fp8_interpretation_t) {
  return {bamba::cuda::emu_e4m3_to_f16(v)};
}

struct __nv_bfloat162 { bamba::cuda::bf16 x, y; };
inline float2 __bfloat1622float2(__nv_bfloat162 v) {
  return {bamba::cuda::__bfloat162float(v.x), bamba::cuda::__bfloat162float(v.y)};
}
