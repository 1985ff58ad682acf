// Block-level bf16 tensor-core helpers on tiles in shared memory (wmma m16n16k16, fp32 accumulation), shared by
// the backward kernels that work in 64-token tiles (ssd_backward_chunked.cu, attention_backward_mma.cu): a tile
// load from global memory with zero padding, a product of two tiles with every 16×16 output tile owned by one
// warp (so the bits depend on the shape only), and per-row dot products one warp a row.
#pragma once
#include <mma.h>

#include <cstdint>
#include <type_traits>

#include "backend/cuda/kernels.cuh"

namespace bamba::cuda {
namespace wmma = nvcuda::wmma;

// dst[r][c] (row stride ld, bf16) = src[r·lds + c] · scale[r] (scale optional) for r < rows, c < cols, zero
// elsewhere in the R × C tile (C a multiple of 16). R, C: the padded sizes the GEMMs read. With src 16-byte
// aligned and lds, cols multiples of a 16-byte run, 16-byte loads; else one element at a time. Each thread issues
// several loads before it stores any, so that a block keeps them in flight (one per iteration would wait out
// the latency of every load in turn).
constexpr int kLoads = 8, kLoadsV = 4;
template <typename S>
__device__ __forceinline__ void load_tile(bf16* dst, int ld, const S* __restrict__ src, int64_t lds, int rows, int cols,
                                          int R, int C, const float* scale) {
  constexpr int kV = 16 / int(sizeof(S));  // elements per 16-byte run
  const int nt = blockDim.x;
  if (reinterpret_cast<uintptr_t>(src) % 16 == 0 && lds % kV == 0 && cols % kV == 0) {
    const int cv = C / kV, n = R * cv;
    for (int e0 = threadIdx.x; e0 < n; e0 += nt * kLoadsV) {
      uint4 v[kLoadsV];
#pragma unroll
      for (int k = 0; k < kLoadsV; ++k) {
        const int e = e0 + k * nt, r = e / cv, c = e % cv * kV;
        v[k] = e < n && r < rows && c < cols ? *reinterpret_cast<const uint4*>(src + int64_t(r) * lds + c)
                                             : make_uint4(0u, 0u, 0u, 0u);
      }
#pragma unroll
      for (int k = 0; k < kLoadsV; ++k) {
        const int e = e0 + k * nt, r = e / cv, c = e % cv * kV;
        if (e >= n) continue;
        const S* x = reinterpret_cast<const S*>(&v[k]);
        const float sc = scale && r < rows ? scale[r] : 1.f;
#pragma unroll
        for (int i = 0; i < kV; ++i) dst[r * ld + c + i] = __float2bfloat16_rn(to_f(x[i]) * sc);
      }
    }
    return;
  }
  const int n = R * C;
  for (int e0 = threadIdx.x; e0 < n; e0 += nt * kLoads) {
    float v[kLoads];
#pragma unroll
    for (int k = 0; k < kLoads; ++k) {
      const int e = e0 + k * nt, r = e / C, c = e % C;
      v[k] = e < n && r < rows && c < cols ? to_f(src[int64_t(r) * lds + c]) : 0.f;
    }
#pragma unroll
    for (int k = 0; k < kLoads; ++k) {
      const int e = e0 + k * nt, r = e / C, c = e % C;
      if (e < n) dst[r * ld + c] = __float2bfloat16_rn(scale && r < rows ? v[k] * scale[r] : v[k]);
    }
  }
}

// Cm [M × Nn] (fp32, row stride ldc) = (or +=, acc) A [M × K] · B [K × Nn], bf16 in shared memory; LA, LB:
// wmma::row_major (element (r, c) at r·ld + c) or wmma::col_major (at c·ld + r). M, Nn, K multiples of 16. Each
// warp owns whole 16×16 output tiles and walks K in order: the bits depend on the shape only.
template <typename LA, typename LB>
__device__ __forceinline__ void block_gemm(float* Cm, int ldc, const bf16* A, int lda, const bf16* B, int ldb, int M,
                                           int Nn, int K, bool acc) {
  constexpr bool a_row = std::is_same_v<LA, wmma::row_major>, b_row = std::is_same_v<LB, wmma::row_major>;
  const int warp = threadIdx.x / 32, nw = blockDim.x / 32, tn_count = Nn / 16;
  for (int tile = warp; tile < (M / 16) * tn_count; tile += nw) {
    const int m0 = tile / tn_count * 16, n0 = tile % tn_count * 16;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> c;
    if (acc) wmma::load_matrix_sync(c, Cm + m0 * ldc + n0, unsigned(ldc), wmma::mem_row_major);
    else wmma::fill_fragment(c, 0.f);
    for (int k = 0; k < K; k += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, LA> fa;
      wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, LB> fb;
      wmma::load_matrix_sync(fa, a_row ? A + m0 * lda + k : A + k * lda + m0, unsigned(lda));
      wmma::load_matrix_sync(fb, b_row ? B + k * ldb + n0 : B + n0 * ldb + k, unsigned(ldb));
      wmma::mma_sync(c, fa, fb, c);
    }
    wmma::store_matrix_sync(Cm + m0 * ldc + n0, c, unsigned(ldc), wmma::mem_row_major);
  }
}

// Σ_c u[r·ldu + c] · v[r·ldv + c] over c < cols for each row r < rows, one warp a row (lanes stride over c, then
// the fixed butterfly); out[r] = scale[r] · sum (scale optional). The caller synchronises.
template <typename U>
__device__ __forceinline__ void row_dots(float* out, const U* u, int ldu, const float* v, int ldv, int rows, int cols,
                                         const float* scale) {
  const int warp = threadIdx.x / 32, nw = blockDim.x / 32, lane = threadIdx.x % 32;
  for (int r = warp; r < rows; r += nw) {
    float s = 0.f;
    for (int c = lane; c < cols; c += 32) s += to_f(u[r * ldu + c]) * v[r * ldv + c];
    s = warp_sum(s);
    if (lane == 0) out[r] = scale ? scale[r] * s : s;
  }
}

}  // namespace bamba::cuda
