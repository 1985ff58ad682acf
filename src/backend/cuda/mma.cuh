// Warp-level bf16 tensor-core primitives (sm_80+): ldmatrix and mma.sync m16n8k16 with fp32 accumulation, and
// the conversions that feed FP8 weights to them as bf16.
// Written as inline PTX because CUDA's C++ wmma API hides the fragment layout, and the kernels here depend on it
// (a score tile's accumulators are reused in registers as the A operand of the next product).
//
// Fragment layouts of mma.m16n8k16 (g = lane / 4, q = lane % 4; every register holds two bf16, the lower
// column/k index in the low half):
//   A 16×16 (4 regs): a0 = (row g, cols 2q..2q+1), a1 = (row g+8, same cols), a2 = (row g, cols 2q+8..),
//                     a3 = (row g+8, cols 2q+8..)
//   B 16×8  (2 regs): b0 = (k 2q..2q+1, col g), b1 = (k 2q+8.., col g)
//   C 16×8  (4 fp32): c0, c1 = (row g, cols 2q, 2q+1), c2, c3 = (row g+8, same cols)
// So the C tiles of two adjacent 8-column blocks, packed to bf16, are the A operand of one 16-deep k step.
// ldmatrix.x4: lane L gives the address of row L % 8 of 8×8 matrix L / 8; register i of every lane receives
// matrix i's (row g, cols 2q..2q+1) — or, with .trans, its (rows 2q..2q+1, col g).
#pragma once
#include <cuda_bf16.h>

#include <cstdint>

namespace bamba::cuda {

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// r = the four 8×8 matrices whose rows the lanes point at (p: this lane's row, in shared memory).
__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}
__device__ __forceinline__ void ldsm_x4_trans(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}

// c += a · b
__device__ __forceinline__ void mma_bf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Two E4M3 bytes (the low byte the lower element) as f16x2: exact, every E4M3 value is a normal f16 (sm_89+).
__device__ __forceinline__ uint32_t cvt_f16x2_e4m3x2(uint16_t two) {
  uint32_t h;
  asm("cvt.rn.f16x2.e4m3x2 %0, %1;\n" : "=r"(h) : "h"(two));
  return h;
}

// a · b in bf16x2, rounded to nearest (fma with -0, which leaves every product as it is, +0 included).
__device__ __forceinline__ uint32_t mul_bf16x2(uint32_t a, uint32_t b) {
  uint32_t d;
  asm("fma.rn.bf16x2 %0, %1, %2, %3;\n" : "=r"(d) : "r"(a), "r"(b), "r"(0x80008000u));
  return d;
}

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}

}  // namespace bamba::cuda
