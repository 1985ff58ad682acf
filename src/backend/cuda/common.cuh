// Shared pieces of the CUDA kernels: error checks, the element-type dispatch, loads/stores of the activation type
// (bf16 or fp32), block reductions, and the device copy of a StepBatch that every kernel reads its sequence
// layout from.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <cstdlib>

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

// Kernels are templated on the activation/weight element type T (bf16 or float; docs/numerics.md "Dtype policy")
// and compute in fp32 either way: to_f widens, from_f<T> rounds to T (round-to-nearest-even for bf16).
__device__ __forceinline__ float to_f(bf16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_f(float x) { return x; }
template <typename T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ bf16 from_f<bf16>(float x) { return __float2bfloat16_rn(x); }
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
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
  // [T] or null: a slot that also receives the Mamba state after token t (-1: none; StepBatch::state_after)
  const int32_t* state_after = nullptr;
  int T, S, R, n_chunks, chunk_q;
};

// The one place a run-time dtype becomes a kernel's element type: calls f.template operator()<T>() with
// T = float for F32 and bf16 for BF16. Launchers are templates on T, explicitly instantiated for both
// (BAMBA_CUDA_DTYPES at the end of each .cu file).
template <typename F>
void dispatch_dtype(DType t, F&& f) {
  if (t == DType::F32) f.template operator()<float>();
  else if (t == DType::BF16) f.template operator()<bf16>();
  else ::bamba::fail("cuda backend: compute dtype must be F32 or BF16, not ", dtype_name(t));
}
#define BAMBA_CUDA_DTYPES(X) X(float) X(bf16)

inline unsigned ceil_div(int64_t a, int64_t b) { return unsigned((a + b - 1) / b); }
// Whether p may start a 16-byte vector access (uint4, float4): the launchers' test before their vector kernels.
inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

// The current device's SM count, asked of the runtime once per device (launchers that size grids by it run on
// every decode step).
inline int sm_count() {
  static std::atomic<int> sms[64];  // by device ordinal; 0 = not asked yet
  int dev = 0;
  CUDA_CHECK(cudaGetDevice(&dev));
  std::atomic<int>& n = sms[dev & 63];
  if (n.load(std::memory_order_relaxed) == 0) {
    int v = 0;
    CUDA_CHECK(cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, dev));
    n.store(v, std::memory_order_relaxed);
  }
  return n.load(std::memory_order_relaxed);
}

// Programmatic dependent launch (Hopper): a kernel launched with launch_pdl may start while the kernel before it
// in the stream is still running, once every block of that one has called pdl_trigger (or exited). It must call
// pdl_wait, which returns when the earlier kernels have completed and their writes are visible, before it reads
// anything they wrote or writes anything they read; only immutable data (weights) may be read before. A decode
// step is ~350 kernels, most of them a few µs long: this hides the launch gap between them and lets a GEMV
// stream its first weight rows while the small kernel before it (norm, SwiGLU) still runs. Both instructions
// are no-ops for a kernel launched without the attribute. BAMBA_CUDA_PDL=0 launches everything plainly.
__device__ __forceinline__ void pdl_wait() { asm volatile("griddepcontrol.wait;" ::: "memory"); }
__device__ __forceinline__ void pdl_trigger() { asm volatile("griddepcontrol.launch_dependents;" ::: "memory"); }

inline bool pdl_enabled() {
  static const bool on = [] {
    const char* e = std::getenv("BAMBA_CUDA_PDL");
    return !(e && e[0] == '0');
  }();
  return on;
}

template <typename... KArgs, typename... Args>
void launch_pdl(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem, cudaStream_t st, Args... args) {
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = st;
  cfg.attrs = attr;
  cfg.numAttrs = pdl_enabled() ? 1 : 0;
  CUDA_CHECK(cudaLaunchKernelEx(&cfg, kernel, static_cast<KArgs>(args)...));
}

}  // namespace bamba::cuda
