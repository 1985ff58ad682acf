// Shared pieces of the CUDA kernels: error checks, bf16 loads/stores, block reductions, and the device copy of
// a StepBatch that every kernel reads its sequence layout from.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "core/dtype.h"
#include "core/error.h"

namespace bamba::cuda {

using bf16 = __nv_bfloat16;

#define CUDA_CHECK(expr)                                                                          \
  do {                                                                                            \
    cudaError_t err_ = (expr);                                                                    \
    if (err_ != cudaSuccess) ::bamba::fail("CUDA error at ", __FILE__, ":", __LINE__, ": ", #expr, \
                                           ": ", cudaGetErrorString(err_));                        \
  } while (0)
#define CUDA_LAUNCH_CHECK() CUDA_CHECK(cudaGetLastError())

// A small parameter vector (norm weights, biases, A_log, ...) whose dtype is only known at run time: the
// loader keeps 1-D checkpoint tensors in F32, generated (dummy) weights are BF16. The branch is uniform.
struct PView {
  const void* p = nullptr;
  int is_bf16 = 0;
};
__device__ __forceinline__ float ld_param(PView v, int64_t i) {
  return v.is_bf16 ? __bfloat162float(static_cast<const bf16*>(v.p)[i]) : static_cast<const float*>(v.p)[i];
}

__device__ __forceinline__ float to_f(bf16 x) { return __bfloat162float(x); }
__device__ __forceinline__ bf16 to_bf(float x) { return __float2bfloat16_rn(x); }
__device__ __forceinline__ float silu_f(float x) { return x / (1.f + __expf(-x)); }
__device__ __forceinline__ float softplus_f(float x) { return x > 20.f ? x : log1pf(expf(x)); }

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
// Sum over the block; every thread gets the result. `sh` holds 32 floats; blockDim.x a multiple of 32.
__device__ __forceinline__ float block_sum(float v, float* sh) {
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();  // sh may still be read from a previous call
  if (lane == 0) sh[w] = v;
  __syncthreads();
  v = lane < nw ? sh[lane] : 0.f;
  return warp_sum(v);
}
__device__ __forceinline__ float block_max(float v, float* sh) {
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) sh[w] = v;
  __syncthreads();
  v = lane < nw ? sh[lane] : -INFINITY;
  return warp_max(v);
}

// The StepBatch as kernels see it: int32 arrays in one device buffer (uploaded by set_batch), plus the counts
// the launch was sized for. max_blocks is read from device memory so that a recorded decode step stays valid
// while sequences grow.
struct DevBatch {
  const int32_t* tokens;      // [T]
  const int32_t* positions;   // [T]
  const int32_t* seq_of;      // [T]   sequence of token t
  const int32_t* seq_start;   // [S+1]
  const int32_t* past_len;    // [S]
  const int32_t* slot;        // [S]
  const int32_t* logit_rows;  // [R]
  const int32_t* max_blocks;  // [1]
  const int32_t* block_table; // [S, *max_blocks]
  // Prefill chunks of at most chunk_q tokens, never crossing sequences (ssd.cu).
  const int32_t* chunk_seq;    // [n_chunks]
  const int32_t* chunk_begin;  // [n_chunks] first token row
  const int32_t* chunk_first;  // [S+1] first chunk of each sequence
  int T, S, R, n_chunks, chunk_q;
};

inline unsigned ceil_div(int64_t a, int64_t b) { return unsigned((a + b - 1) / b); }

}  // namespace bamba::cuda
