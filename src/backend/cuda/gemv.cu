// Matmuls with a handful of rows (decode of 1-8 sequences): y[m, n] = Σ_k x[m, k] W[n, k] (+ bias[n]).
// Such a step is bound by reading W once, so the kernel is shaped for bandwidth, not reuse: one warp per output
// row n walking W's row in 16-byte streaming loads (8 bf16 or 4 fp32; gemv_row.cuh, shared with fp8_gemv.cu, the
// loads in flight and the PDL prologue), every x row (a few KB, L1-resident) read against each W chunk; one warp
// reduction per (m, n) at the end. (bf16 decode now takes gemv_mma.cu's tensor-core GEMV; this is fp32's, and
// the fallback of shapes that one does not take.)
// Tried and measured slower (bench/NOTES.md, round 3): a tile kernel with the K range split over the 8 warps of a
// block, several rows per warp, x staged in shared memory and one grid-wide wave (down_proj/out_proj: 1,716 ->
// 2,007 µs per step under ncu; tg128 171.0 -> 162.8; for every shape 145.9).
#include "backend/cuda/gemv_row.cuh"

namespace bamba::cuda {
namespace {

// Dot product of two 16-byte vectors of T, in fp32.
__device__ __forceinline__ float dot16(uint4 a, uint4 b, bf16) {
  const __nv_bfloat162* pa = reinterpret_cast<const __nv_bfloat162*>(&a);
  const __nv_bfloat162* pb = reinterpret_cast<const __nv_bfloat162*>(&b);
  float s = 0.f;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 fa = __bfloat1622float2(pa[i]), fb = __bfloat1622float2(pb[i]);
    s = fmaf(fa.x, fb.x, s);
    s = fmaf(fa.y, fb.y, s);
  }
  return s;
}
__device__ __forceinline__ float dot16(uint4 a, uint4 b, float) {
  const float4 fa = *reinterpret_cast<const float4*>(&a), fb = *reinterpret_cast<const float4*>(&b);
  return fmaf(fa.x, fb.x, fmaf(fa.y, fb.y, fmaf(fa.z, fb.z, fa.w * fb.w)));
}

template <typename T, int M>
__global__ void __launch_bounds__(kRowWarps * 32) gemv_kernel(void* y, int y_f32, int64_t ldy, const T* x,
                                                              int64_t ldx, const T* W, int64_t ldw, PView bias, int N,
                                                              int K, int prefetch) {
  constexpr int E = 16 / sizeof(T);  // elements per 16-byte load
  const int n = blockIdx.x * kRowWarps + (threadIdx.x >> 5);
  float acc[M];
#pragma unroll
  for (int m = 0; m < M; ++m) acc[m] = 0.f;
  const bool row = walk_row(W, ldw * int64_t(sizeof(T)), n, N, K / E, prefetch, [&](uint4 w, int c) {
#pragma unroll
    for (int m = 0; m < M; ++m) acc[m] += dot16(w, reinterpret_cast<const uint4*>(x + m * ldx)[c], T{});
  });
  if (!row) return;
#pragma unroll
  for (int m = 0; m < M; ++m) acc[m] = warp_sum(acc[m]);
  if ((threadIdx.x & 31) == 0) {
    const float b = bias.p ? ld_param(bias, n) : 0.f;
#pragma unroll
    for (int m = 0; m < M; ++m) store_y<T>(y, y_f32, int64_t(m) * ldy + n, acc[m] + b);
  }
}

template <typename T, int M>
void launch(cudaStream_t st, void* y, bool y_f32, int64_t ldy, const T* x, int64_t ldx, const T* W, int64_t ldw,
            PView bias, int N, int K) {
  launch_pdl(gemv_kernel<T, M>, dim3(ceil_div(N, kRowWarps)), dim3(kRowWarps * 32), 0, st, y, int(y_f32), ldy, x, ldx,
             W, ldw, bias, N, K, gemv_prefetch_weights());
}

}  // namespace

template <typename T>
bool gemv(cudaStream_t st, void* y, bool y_f32, int64_t ldy, const T* x, int64_t ldx, const T* W, int64_t ldw,
          PView bias, int M, int N, int K) {
  constexpr int E = 16 / sizeof(T);
  if (M < 1 || M > kMaxGemvRows || K % E || ldx % E || ldw % E || !aligned16(x) || !aligned16(W)) return false;
  switch (M) {
    case 1: launch<T, 1>(st, y, y_f32, ldy, x, ldx, W, ldw, bias, N, K); break;
    case 2: launch<T, 2>(st, y, y_f32, ldy, x, ldx, W, ldw, bias, N, K); break;
    case 3: launch<T, 3>(st, y, y_f32, ldy, x, ldx, W, ldw, bias, N, K); break;
    case 4: launch<T, 4>(st, y, y_f32, ldy, x, ldx, W, ldw, bias, N, K); break;
    case 5: launch<T, 5>(st, y, y_f32, ldy, x, ldx, W, ldw, bias, N, K); break;
    case 6: launch<T, 6>(st, y, y_f32, ldy, x, ldx, W, ldw, bias, N, K); break;
    case 7: launch<T, 7>(st, y, y_f32, ldy, x, ldx, W, ldw, bias, N, K); break;
    default: launch<T, 8>(st, y, y_f32, ldy, x, ldx, W, ldw, bias, N, K); break;
  }
  return true;
}

#define INST(T) \
  template bool gemv<T>(cudaStream_t, void*, bool, int64_t, const T*, int64_t, const T*, int64_t, PView, int, int, int);
BAMBA_CUDA_DTYPES(INST)
#undef INST

}  // namespace bamba::cuda
