// Stand-in for src/backend/cuda/mma.cuh when tests/emu/run.sh compiles gemv_mma.cu for the CPU: mma.m16n8k16
// with the fragment layouts of NVIDIA's PTX ISA ("Matrix Fragments for mma.m16n8k16" with .bf16), written from
// that document rather than from mma.cuh's comment, so that a kernel which misreads the layout fails here. Every
// lane of the warp calls it (as on the GPU): the lanes post their fragments, each rebuilds the whole A (16×16) and
// B (16×8) and computes its own four C entries in fp32 (exact products, a sum order of its own).
// The E4M3 conversion is written from the format's definition (OCP FP8: bias 7, subnormals m · 2^-9, no Inf).
#pragma once
#include <cstring>

#include "backend/cuda/kernels.cuh"

namespace bamba::cuda {

inline float emu_bf16_lo(uint32_t w) { return __uint_as_float(w << 16); }
inline float emu_bf16_hi(uint32_t w) { return __uint_as_float(w & 0xffff0000u); }

inline uint32_t pack_bf16(float lo, float hi) {
  return uint32_t(__float2bfloat16_rn(lo).b) | uint32_t(__float2bfloat16_rn(hi).b) << 16;
}

// c += a · b. PTX ISA, m16n8k16 .bf16 (groupID = lane >> 2, threadID_in_group = lane % 4):
//   A: a_i for i = 0..7 (two per register): row = groupID (+8 for i in {2,3,6,7}),
//      col = threadID_in_group · 2 + (i & 1) (+8 for i >= 4)
//   B: b_i for i = 0..3: row (k) = threadID_in_group · 2 + (i & 1) (+8 for i >= 2), col = groupID
//   C: c_i for i = 0..3: row = groupID (+8 for i >= 2), col = threadID_in_group · 2 + (i & 1)
inline void mma_bf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  auto& w = emu::cur->warps[threadIdx.x / 32];
  const int lane = int(threadIdx.x % 32);
  for (int i = 0; i < 4; ++i) w.ma[lane][i] = a[i];
  w.mb[lane][0] = b0;
  w.mb[lane][1] = b1;
  w.bar.arrive_and_wait();
  float A[16][16], B[16][8];
  for (int L = 0; L < 32; ++L) {
    const int gid = L >> 2, tig = L & 3;
    for (int i = 0; i < 8; ++i) {
      const uint32_t r = w.ma[L][i / 2];
      const float v = i & 1 ? emu_bf16_hi(r) : emu_bf16_lo(r);
      const int row = gid + ((i == 2 || i == 3 || i == 6 || i == 7) ? 8 : 0);
      const int col = tig * 2 + (i & 1) + (i >= 4 ? 8 : 0);
      A[row][col] = v;
    }
    for (int i = 0; i < 4; ++i) {
      const uint32_t r = w.mb[L][i / 2];
      B[tig * 2 + (i & 1) + (i >= 2 ? 8 : 0)][gid] = i & 1 ? emu_bf16_hi(r) : emu_bf16_lo(r);
    }
  }
  w.bar.arrive_and_wait();  // every lane has read the operands: the next call may post new ones
  const int gid = lane >> 2, tig = lane & 3;
  for (int i = 0; i < 4; ++i) {
    const int row = gid + (i >= 2 ? 8 : 0), col = tig * 2 + (i & 1);
    float s = 0.f;
    for (int k = 0; k < 16; ++k) s += A[row][k] * B[k][col];
    c[i] += s;
  }
}

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
