// W8A16 GEMV for decode: y[m, n] = Σ_k x[m, k] · q[n, k] · scale (+ bias[n]) with E4M3 weights and bf16 (or fp32)
// activations. Decode is bound by reading the weights once, and FP8 halves those bytes: the kernel walks rows as
// gemv.cu does (gemv_row.cuh: one warp per output row n, 16-byte streaming loads — here 16 weights each —, the
// first ones before pdl_wait; every x row read from L1 against each chunk, one warp reduction per (m, n)) with the
// weights widened in registers (cvt e4m3x2 -> f16x2, exact) and the scale applied once per row at the end — or,
// for block scales, once per 16-weight chunk (B is a multiple of 16, so a chunk never straddles two blocks).
// bf16 decode of 1-8 rows takes gemv_mma.cu's tensor-core GEMV over the same bytes where it can (per-row scales or
// blocks of 128k); this kernel is fp32's, batch-invariant mode's, finer block scales' and the rest's.
// Rows whose length or stride is not a multiple of 16 bytes take a plain element-per-lane kernel (correct, slower).
// 4 loads in flight a lane: 8 (the kernels take it as a template argument, tests/emu checks both give the same sums)
// measured 4 % slower at one row on an H100 (bench/NOTES.md v44). One row of a grid of one wave or less may take
// each row in two warps instead (fp8_gemv_split_kernel, BAMBA_CUDA_FP8_ROW_SPLIT=2).
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include "backend/cuda/fp8.cuh"
#include "backend/cuda/gemv_row.cuh"

namespace bamba::cuda {
namespace {

constexpr int kRows = 8;  // x rows per launch

// 16 E4M3 weights (one 16-byte load) widened to fp32.
__device__ __forceinline__ void widen16(uint4 v, float* f) {
  const __nv_fp8x2_storage_t* p = reinterpret_cast<const __nv_fp8x2_storage_t*>(&v);
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    const float2 h = __half22float2(__half2(__nv_cvt_fp8x2_to_halfraw2(p[i], __NV_E4M3)));
    f[2 * i] = h.x;
    f[2 * i + 1] = h.y;
  }
}
__device__ __forceinline__ float widen1(uint8_t b) {
  return __half2float(__half(__nv_cvt_fp8_to_halfraw(b, __NV_E4M3)));
}

// 16 consecutive bf16 activations (16-byte aligned) as floats.
__device__ __forceinline__ void load16(const bf16* x, float* f) {
  const uint4 a = reinterpret_cast<const uint4*>(x)[0], b = reinterpret_cast<const uint4*>(x)[1];
  const __nv_bfloat162* pa = reinterpret_cast<const __nv_bfloat162*>(&a);
  const __nv_bfloat162* pb = reinterpret_cast<const __nv_bfloat162*>(&b);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 fa = __bfloat1622float2(pa[i]), fb = __bfloat1622float2(pb[i]);
    f[2 * i] = fa.x, f[2 * i + 1] = fa.y, f[8 + 2 * i] = fb.x, f[8 + 2 * i + 1] = fb.y;
  }
}
// Σ_i w[i] · x[i] over 16 widened activations, in the order every bf16 dot16 sums (so the row pairs below give the
// single rows' bits).
__device__ __forceinline__ float dot16x(const float* w, const float* x) {
  float s = 0.f;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    s = fmaf(w[2 * i], x[2 * i], s);
    s = fmaf(w[2 * i + 1], x[2 * i + 1], s);
    s = fmaf(w[8 + 2 * i], x[8 + 2 * i], s);
    s = fmaf(w[8 + 2 * i + 1], x[8 + 2 * i + 1], s);
  }
  return s;
}
// Σ_i w[i] · x[i] over 16 consecutive activations (16-byte aligned).
__device__ __forceinline__ float dot16(const float* w, const bf16* x) {
  float xf[16];
  load16(x, xf);
  return dot16x(w, xf);
}
__device__ __forceinline__ float dot16(const float* w, const float* x) {
  float s = 0.f;
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const float4 f = reinterpret_cast<const float4*>(x)[j];
    s = fmaf(w[4 * j], f.x, fmaf(w[4 * j + 1], f.y, fmaf(w[4 * j + 2], f.z, fmaf(w[4 * j + 3], f.w, s))));
  }
  return s;
}

// B > 0: block scales [ceil(N/B), kb]; B == 0: scale[n]. U: 16-byte loads in flight a lane.
template <typename T, int M, int U>
__global__ void __launch_bounds__(kRowWarps * 32) fp8_gemv_kernel(void* y, int y_f32, int64_t ldy, const T* x,
                                                                  int64_t ldx, const uint8_t* W, int64_t ldw,
                                                                  const float* scale, int B, int kb, PView bias, int N,
                                                                  int K, int prefetch) {
  const int n = blockIdx.x * kRowWarps + (threadIdx.x >> 5);
  const float* srow = B ? scale + int64_t(n / B) * kb : nullptr;
  float acc[M];
#pragma unroll
  for (int m = 0; m < M; ++m) acc[m] = 0.f;
  const bool row = walk_row<U>(W, ldw, n, N, K / 16, prefetch, [&](uint4 w, int c) {
    float wf[16];
    widen16(w, wf);
    const float sb = B ? srow[c * 16 / B] : 1.f;
#pragma unroll
    for (int m = 0; m < M; ++m) acc[m] = fmaf(sb, dot16(wf, x + m * ldx + c * 16), acc[m]);
  });
  if (!row) return;
#pragma unroll
  for (int m = 0; m < M; ++m) acc[m] = warp_sum(acc[m]);
  if ((threadIdx.x & 31) == 0) {
    const float s = B ? 1.f : scale[n], b = bias.p ? ld_param(bias, n) : 0.f;
#pragma unroll
    for (int m = 0; m < M; ++m) store_y<T>(y, y_f32, int64_t(m) * ldy + n, acc[m] * s + b);
  }
}

// One row split among S = 2 warps (BAMBA_CUDA_FP8_ROW_SPLIT=2, for grids of one wave or less): a block's 8 warps
// take 4 rows, warp part h of a row the chunks lane + 32 h + 64 i; each part is summed and reduced as the one-warp
// kernel does its row, then part 0 + part 1 through shared memory. A warp of the one-warp kernel has only 4-8 KB
// of a row (E4M3: 16 weights a 16-byte load), so out_proj's and down_proj's 512 blocks keep ~8 MB in flight over
// a single partial wave and stream at ~2.1 TB/s on an H100 (bench/NOTES.md v44). Split, the grid has twice the
// blocks: in flight rises to what the SMs hold (on an H100 at 48 registers, 5 blocks an SM: 660 of the 1,024, 1.3×
// the one-warp grid's 512), then a partial second wave follows — whether that wins is for the measurement.
// Other sums than the one-warp kernel's (so not in batch-invariant mode, whose rows must not depend on M).
template <typename T, int U>
__global__ void __launch_bounds__(kRowWarps * 32) fp8_gemv_split_kernel(void* y, int y_f32, const T* x,
                                                                        const uint8_t* W, int64_t ldw,
                                                                        const float* scale, int B, int kb, PView bias,
                                                                        int N, int K, int prefetch) {
  constexpr int S = 2;
  __shared__ float red[32];
  const int warp = threadIdx.x >> 5, part = warp % S, n = blockIdx.x * (kRowWarps / S) + warp / S;
  const float* srow = B ? scale + int64_t(n / B) * kb : nullptr;
  float acc = 0.f;
  const int rows[1] = {n};
  const bool row = walk_rows<U, 1, S>(W, ldw, rows, n < N, K / 16, prefetch, [&](const uint4 (&w)[1], int c) {
    float wf[16];
    widen16(w[0], wf);
    const float sb = B ? srow[c * 16 / B] : 1.f;
    acc = fmaf(sb, dot16(wf, x + c * 16), acc);
  }, part);
  acc = row ? warp_sum(acc) : 0.f;  // every warp reaches the barrier
  if ((threadIdx.x & 31) == 0) red[warp] = acc;
  __syncthreads();
  if (row && part == 0 && (threadIdx.x & 31) == 0) {
    const float s = B ? 1.f : scale[n], b = bias.p ? ld_param(bias, n) : 0.f;
    store_y<T>(y, y_f32, n, (red[warp] + red[warp + 1]) * s + b);
  }
}

// Any length and stride: lanes take single elements.
template <typename T>
__global__ void __launch_bounds__(kRowWarps * 32) fp8_gemv_plain_kernel(void* y, int y_f32, int64_t ldy, const T* x,
                                                                     int64_t ldx, const uint8_t* W, int64_t ldw,
                                                                     const float* scale, int B, int kb, PView bias,
                                                                     int M, int N, int K) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int n = blockIdx.x * kRowWarps + warp;
  pdl_wait();
  pdl_trigger();
  if (n >= N) return;
  float acc[kRows];
#pragma unroll
  for (int m = 0; m < kRows; ++m) acc[m] = 0.f;
  for (int k = lane; k < K; k += 32) {
    const float wk = widen1(W[int64_t(n) * ldw + k]) * (B ? scale[int64_t(n / B) * kb + k / B] : 1.f);
#pragma unroll
    for (int m = 0; m < kRows; ++m)
      if (m < M) acc[m] = fmaf(wk, to_f(x[m * ldx + k]), acc[m]);
  }
#pragma unroll
  for (int m = 0; m < kRows; ++m) acc[m] = warp_sum(acc[m]);
  if (lane == 0) {
    const float s = B ? 1.f : scale[n], b = bias.p ? ld_param(bias, n) : 0.f;
    for (int m = 0; m < M; ++m) store_y<T>(y, y_f32, int64_t(m) * ldy + n, acc[m] * s + b);
  }
}

// SwiGLU pairs at one row, bf16 (matmul_swiglu's FP8 decode below the tensor-core GEMV's rows; BAMBA_CUDA_FP8_ROW_PAIRS=0: off):
// warp f takes gate row f and up row F + f of W = gate | up, each walked and summed as fp8_gemv_kernel<bf16, 1, U>
// walks and sums its one row (same chunks a lane, same order, same reduction), with x loaded and widened once for
// both; each half is scaled, biased and rounded to bf16 as that kernel stores it, then silu(gate) · up as
// elementwise.cu's swiglu: the bits of the GEMV and the SwiGLU kernel, one launch and no [1, 2F] round trip.
// Per-row scales only.
template <int U>
__global__ void __launch_bounds__(kRowWarps * 32) fp8_gemv_pairs_kernel(bf16* y, const bf16* x, const uint8_t* W,
                                                                        int64_t ldw, const float* scale, PView bias,
                                                                        int F, int K, int prefetch) {
  const int f = blockIdx.x * kRowWarps + (threadIdx.x >> 5);
  const int rows[2] = {f, F + f};
  float acc[2] = {0.f, 0.f};
  const bool ok = walk_rows<U, 2>(W, ldw, rows, f < F, K / 16, prefetch, [&](const uint4 (&w)[2], int c) {
    float xf[16];
    load16(x + c * 16, xf);
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float wf[16];
      widen16(w[r], wf);
      acc[r] = fmaf(1.f, dot16x(wf, xf), acc[r]);  // as the one-row kernel's fmaf(sb, ...) with sb = 1
    }
  });
  if (!ok) return;
#pragma unroll
  for (int r = 0; r < 2; ++r) acc[r] = warp_sum(acc[r]);
  if ((threadIdx.x & 31) == 0) {
    float h[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int n = rows[r];
      const float s = scale[n], b = bias.p ? ld_param(bias, n) : 0.f;
      h[r] = to_f(from_f<bf16>(acc[r] * s + b));
    }
    y[f] = from_f<bf16>(silu_f(h[0]) * h[1]);
  }
}

}  // namespace

// ---- launchers (tests/emu/run.sh runs the kernels above on the CPU without what follows)
namespace {

template <typename T, int M>
void launch(cudaStream_t st, void* y, bool y_f32, int64_t ldy, const T* x, int64_t ldx, const uint8_t* W, int64_t ldw,
            const float* scale, int B, int kb, PView bias, int N, int K) {
  launch_pdl(fp8_gemv_kernel<T, M, kRowUnroll>, dim3(ceil_div(N, kRowWarps)), dim3(kRowWarps * 32), 0, st, y,
             int(y_f32), ldy, x, ldx, W, ldw, scale, B, kb, bias, N, K, gemv_prefetch_weights());
}

// How many blocks of the one-warp kernel are resident at once on this device (the occupancy calculator, once).
template <typename T>
int row_wave_blocks() {
  static const int blocks = [] {
    int per_sm = 0;
    CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, fp8_gemv_kernel<T, 1, kRowUnroll>,
                                                             kRowWarps * 32, 0));
    return per_sm * sm_count();
  }();
  return blocks;
}

}  // namespace

template <typename T>
void fp8_gemv(cudaStream_t st, void* y, bool y_f32, int64_t ldy, const T* x, int64_t ldx, const uint8_t* W, int64_t ldw,
              const float* scale, int B, PView bias, int M, int N, int K, bool split) {
  const int kb = B ? (K + B - 1) / B : 1;
  const bool vec = K % 16 == 0 && ldw % 16 == 0 && (ldx * int64_t(sizeof(T))) % 16 == 0 && aligned16(W) && aligned16(x) &&
                   B % 16 == 0;
  const size_t ysz = y_f32 ? 4 : sizeof(T);
  for (int m0 = 0; m0 < M; m0 += kRows) {
    const int rows = std::min(kRows, M - m0);
    void* ym = static_cast<char*>(y) + size_t(m0) * size_t(ldy) * ysz;
    const T* xm = x + int64_t(m0) * ldx;
    if (!vec) {
      launch_pdl(fp8_gemv_plain_kernel<T>, dim3(ceil_div(N, kRowWarps)), dim3(kRowWarps * 32), 0, st, ym, int(y_f32),
                 ldy, xm, ldx, W, ldw, scale, B, kb, bias, rows, N, K);
      continue;
    }
    // Split rows where the one-warp grid is one wave of resident blocks or less (more waves keep enough in flight).
    if (M == 1 && split && int(ceil_div(N, kRowWarps)) <= row_wave_blocks<T>()) {
      launch_pdl(fp8_gemv_split_kernel<T, kRowUnroll>, dim3(ceil_div(N, kRowWarps / 2)), dim3(kRowWarps * 32), 0, st,
                 ym, int(y_f32), xm, W, ldw, scale, B, kb, bias, N, K, gemv_prefetch_weights());
      continue;
    }
    switch (rows) {
      case 1: launch<T, 1>(st, ym, y_f32, ldy, xm, ldx, W, ldw, scale, B, kb, bias, N, K); break;
      case 2: launch<T, 2>(st, ym, y_f32, ldy, xm, ldx, W, ldw, scale, B, kb, bias, N, K); break;
      case 3: launch<T, 3>(st, ym, y_f32, ldy, xm, ldx, W, ldw, scale, B, kb, bias, N, K); break;
      case 4: launch<T, 4>(st, ym, y_f32, ldy, xm, ldx, W, ldw, scale, B, kb, bias, N, K); break;
      case 5: launch<T, 5>(st, ym, y_f32, ldy, xm, ldx, W, ldw, scale, B, kb, bias, N, K); break;
      case 6: launch<T, 6>(st, ym, y_f32, ldy, xm, ldx, W, ldw, scale, B, kb, bias, N, K); break;
      case 7: launch<T, 7>(st, ym, y_f32, ldy, xm, ldx, W, ldw, scale, B, kb, bias, N, K); break;
      default: launch<T, 8>(st, ym, y_f32, ldy, xm, ldx, W, ldw, scale, B, kb, bias, N, K); break;
    }
  }
}

bool fp8_gemv_swiglu(cudaStream_t st, bf16* y, const bf16* x, const uint8_t* W, int64_t ldw, const float* scale,
                     PView bias, int N, int K) {
  if (N < 2 || N % 2 || K < 16 || K % 16 || ldw % 16 || !aligned16(x) || !aligned16(W) || !scale) return false;
  const int F = N / 2;
  launch_pdl(fp8_gemv_pairs_kernel<kRowUnroll>, dim3(ceil_div(F, kRowWarps)), dim3(kRowWarps * 32), 0, st, y, x, W,
             ldw, scale, bias, F, K, gemv_prefetch_weights());
  return true;
}

#define INST(T)                                                                                                  \
  template void fp8_gemv<T>(cudaStream_t, void*, bool, int64_t, const T*, int64_t, const uint8_t*, int64_t,      \
                            const float*, int, PView, int, int, int, bool);
BAMBA_CUDA_DTYPES(INST)
#undef INST

}  // namespace bamba::cuda
