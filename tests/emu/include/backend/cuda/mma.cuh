// Stand-in for src/backend/cuda/mma.cuh when tests/emu/run.sh compiles kernels for the CPU: ldmatrix and
// mma.sync m16n8k16 done lane by lane from the fragment layouts of the PTX ISA (written out in mma.cuh). Every
// lane of a warp calls them (as on the GPU); each publishes its operands in the warp's slot, a barrier, then each
// lane builds its own result from the others', a barrier. So a kernel that puts a value in the wrong register or
// points a lane at the wrong row gives wrong numbers here, as it would on the GPU.
// The E4M3 conversion is written from the format's definition (OCP FP8: bias 7, subnormals m · 2^-9, no Inf).
#pragma once
#include <cstdint>
#include <cstring>

#include "backend/cuda/kernels.cuh"

namespace bamba::cuda {

inline uint16_t emu_ld16(const void* row, int col) {
  uint16_t x;
  std::memcpy(&x, static_cast<const unsigned char*>(row) + 2 * col, 2);
  return x;
}
inline float emu_bf(uint32_t reg, int half) { return __bfloat162float(bf16{uint16_t(half ? reg >> 16 : reg & 0xffffu)}); }

// Lane L points at row L % 8 of 8×8 matrix L / 8; register i = matrix i's (row g, cols 2q, 2q+1), or with trans
// its (rows 2q, 2q+1, col g); g = lane / 4, q = lane % 4, the lower index in the low half.
inline void emu_ldsm(uint32_t (&r)[4], const void* p, bool trans) {
  auto& w = emu::cur->warps[threadIdx.x / 32];
  const int lane = int(threadIdx.x % 32), g = lane / 4, q = lane % 4;
  w.ptr[lane] = p;
  w.bar.arrive_and_wait();
  for (int i = 0; i < 4; ++i) {
    const uint16_t lo = trans ? emu_ld16(w.ptr[8 * i + 2 * q], g) : emu_ld16(w.ptr[8 * i + g], 2 * q);
    const uint16_t hi = trans ? emu_ld16(w.ptr[8 * i + 2 * q + 1], g) : emu_ld16(w.ptr[8 * i + g], 2 * q + 1);
    r[i] = uint32_t(lo) | uint32_t(hi) << 16;
  }
  w.bar.arrive_and_wait();
}
inline void ldsm_x4(uint32_t (&r)[4], const void* p) { emu_ldsm(r, p, false); }
inline void ldsm_x4_trans(uint32_t (&r)[4], const void* p) { emu_ldsm(r, p, true); }

// c += a · b with A 16×16 (a0: row g, k 2q..; a1: row g+8; a2: k + 8; a3: both), B 16×8 (b0: k 2q.., col g;
// b1: k + 8), C 16×8 (c0, c1: row g, cols 2q, 2q+1; c2, c3: row g + 8). Sums in fp32, k in order.
inline void mma_bf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  auto& w = emu::cur->warps[threadIdx.x / 32];
  const int lane = int(threadIdx.x % 32), g = lane / 4, q = lane % 4;
  for (int i = 0; i < 4; ++i) w.reg[lane][i] = a[i];
  w.reg[lane][4] = b0, w.reg[lane][5] = b1;
  w.bar.arrive_and_wait();
  auto A = [&](int r, int k) { return emu_bf(w.reg[(r % 8) * 4 + (k % 8) / 2][(r >= 8) + 2 * (k >= 8)], k % 2); };
  auto B = [&](int k, int n) { return emu_bf(w.reg[n * 4 + (k % 8) / 2][4 + (k >= 8)], k % 2); };
  float out[4];
  for (int e = 0; e < 4; ++e) {
    const int r = g + 8 * (e / 2), n = 2 * q + e % 2;
    float s = c[e];
    for (int k = 0; k < 16; ++k) s += A(r, k) * B(k, n);
    out[e] = s;
  }
  w.bar.arrive_and_wait();
  for (int e = 0; e < 4; ++e) c[e] = out[e];
}

inline uint32_t pack_bf16(float lo, float hi) {
  return uint32_t(__float2bfloat16_rn(lo).b) | uint32_t(__float2bfloat16_rn(hi).b) << 16;
}

inline float emu_bf16_lo(uint32_t w) { return __uint_as_float(w << 16); }
inline float emu_bf16_hi(uint32_t w) { return __uint_as_float(w & 0xffff0000u); }

// f16 bits of an E4M3 byte (all E4M3 values are normal f16 numbers; NaN to the f16 NaN).
inline uint16_t emu_e4m3_to_f16(uint8_t b) {
  const uint16_t sign = uint16_t((b & 0x80) << 8);
  int e = (b >> 3) & 15, m = b & 7;
  if (e == 15 && m == 7) return sign | 0x7e00;
  if (e == 0) {
    if (m == 0) return sign;
    e = 1;  // m · 2^-9 = (m / 8) · 2^(1 - 7): normalize
    while (!(m & 8)) m <<= 1, --e;
    m &= 7;
  }
  return uint16_t(sign | (e - 7 + 15) << 10 | m << 7);
}
inline uint32_t cvt_f16x2_e4m3x2(uint16_t two) {
  return uint32_t(emu_e4m3_to_f16(uint8_t(two))) | uint32_t(emu_e4m3_to_f16(uint8_t(two >> 8))) << 16;
}
inline uint32_t mul_bf16x2(uint32_t a, uint32_t b) {
  return pack_bf16(emu_bf16_lo(a) * emu_bf16_lo(b), emu_bf16_hi(a) * emu_bf16_hi(b));
}

}  // namespace bamba::cuda
