// Warp-level products of 16-row tiles on mma.sync m16n8k16 (mma.cuh has the fragment layouts), for kernels whose
// warps each own 16 rows of a block's output and keep them in registers (ssd_backward_chunked.cu's register form):
// acc[nb] is the 16×8 accumulator of output columns 8nb..8nb+7, so this lane holds rows g, g + 8 (g = lane / 4)
// and columns 8nb + 2(lane % 4) + {0, 1}. Operands come from bf16 tiles in shared memory by ldmatrix (row strides
// a multiple of 16 bytes, rows 16-byte aligned), in any of the layouts a transposed product needs, or from
// registers (to_a: accumulators become the A operand of the next product).
#pragma once
#include "backend/cuda/mma.cuh"

namespace bamba::cuda {

// How a tile is stored: A (16 × K) as rows × k (kRowsK) or transposed, k × rows (kKRows); B (K × n) as n × k
// (kNK: the layout of a matrix whose transpose is multiplied, as in A Bᵀ) or k × n (kKN).
enum class TileLayout { kRowsK, kKRows, kNK, kKN };

// The A fragment of k-step kk: a points at the warp's first row (kRowsK: a + r0·lda) or column (kKRows: a + r0).
template <TileLayout LA>
__device__ __forceinline__ void load_a(uint32_t (&af)[4], const bf16* a, int lda, int kk) {
  const int lane = threadIdx.x % 32;
  if constexpr (LA == TileLayout::kRowsK)
    ldsm_x4(af, a + (lane & 15) * lda + 16 * kk + (lane >> 4) * 8);
  else  // 8×8 matrix m = lane / 8: k + 8·(m / 2), rows + 8·(m % 2), transposed on the way in
    ldsm_x4_trans(af, a + (16 * kk + (lane & 7) + (lane >> 4) * 8) * lda + ((lane >> 3) & 1) * 8);
}

// acc[2pp], acc[2pp + 1] += af · B[16kk.., 16pp..]: the B fragments of output columns 16pp..16pp+15.
template <TileLayout LB, int NB>
__device__ __forceinline__ void mma_pair(float (&acc)[NB][4], const uint32_t (&af)[4], const bf16* b, int ldb,
                                         int kk, int pp) {
  const int lane = threadIdx.x % 32;
  uint32_t bf[4];
  if constexpr (LB == TileLayout::kNK)
    ldsm_x4(bf, b + (16 * pp + (lane & 7) + (lane >> 4) * 8) * ldb + 16 * kk + ((lane >> 3) & 1) * 8);
  else
    ldsm_x4_trans(bf, b + (16 * kk + (lane & 7) + ((lane >> 3) & 1) * 8) * ldb + 16 * pp + (lane >> 4) * 8);
  mma_bf16(acc[2 * pp], af, bf[0], bf[1]);
  mma_bf16(acc[2 * pp + 1], af, bf[2], bf[3]);
}

// acc (16 × width) += A (16 × K) · B (K × width) with A and B in shared memory; K and width multiples of 16, at
// most KMAX and 8·NB. Unrolled to the maxima, so the next step's ldmatrix issues under this one's mma.
template <TileLayout LA, TileLayout LB, int KMAX, int NB>
__device__ __forceinline__ void warp_mma(float (&acc)[NB][4], const bf16* a, int lda, const bf16* b, int ldb, int K,
                                         int width) {
#pragma unroll
  for (int kk = 0; kk < KMAX / 16; ++kk) {
    if (16 * kk >= K) break;
    uint32_t af[4];
    load_a<LA>(af, a, lda, kk);
#pragma unroll
    for (int pp = 0; pp < NB / 2; ++pp) {
      if (16 * pp >= width) break;
      mma_pair<LB>(acc, af, b, ldb, kk, pp);
    }
  }
}

// acc (16 × width) += A · B with A in registers (KK k-steps of to_a fragments) and B in shared memory.
template <TileLayout LB, int KK, int NB>
__device__ __forceinline__ void warp_mma_regs(float (&acc)[NB][4], const uint32_t (&pa)[KK][4], const bf16* b, int ldb,
                                              int width) {
#pragma unroll
  for (int pp = 0; pp < NB / 2; ++pp) {
    if (16 * pp >= width) break;
#pragma unroll
    for (int kk = 0; kk < KK; ++kk) mma_pair<LB>(acc, pa[kk], b, ldb, kk, pp);
  }
}

// The accumulators of a 16 × 16·KK block, rounded to bf16, as the A operand of a product over its columns
// (pa[kk]: columns 16kk..16kk+15): two adjacent C blocks are one A block.
template <int KK>
__device__ __forceinline__ void to_a(uint32_t (&pa)[KK][4], const float (&x)[2 * KK][4]) {
#pragma unroll
  for (int kk = 0; kk < KK; ++kk) {
    pa[kk][0] = pack_bf16(x[2 * kk][0], x[2 * kk][1]);
    pa[kk][1] = pack_bf16(x[2 * kk][2], x[2 * kk][3]);
    pa[kk][2] = pack_bf16(x[2 * kk + 1][0], x[2 * kk + 1][1]);
    pa[kk][3] = pack_bf16(x[2 * kk + 1][2], x[2 * kk + 1][3]);
  }
}

template <int NB>
__device__ __forceinline__ void zero(float (&acc)[NB][4]) {
#pragma unroll
  for (int n = 0; n < NB; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.f;
}

// Σ over the four lanes of a quad (the lanes that share a row), the same order in every lane.
__device__ __forceinline__ float quad_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

}  // namespace bamba::cuda
