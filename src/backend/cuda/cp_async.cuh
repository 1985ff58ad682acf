// Asynchronous 16-byte copies global → shared (sm_80+ cp.async), for kernels that stream tiles through a few
// shared-memory stages: the load of stage n+1 is in flight while stage n is multiplied. Used by the grouped
// expert GEMM (moe.cu) and the split-K decode attention (attention.cu).
#pragma once
#include <cuda_bf16.h>

namespace bamba::cuda::async {

// 16 bytes from src to dst (both 16-byte aligned); full = false writes zeros and reads nothing (src must still
// be a valid address: pass any in-bounds pointer).
__device__ __forceinline__ void copy16(void* dst, const void* src, bool full) {
  const unsigned d = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src), "r"(full ? 16 : 0) : "memory");
}
__device__ __forceinline__ void commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
// Wait until at most kPending of this thread's committed groups are still in flight (then __syncthreads to see
// the other threads' copies).
template <int kPending>
__device__ __forceinline__ void wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory"); }

}  // namespace bamba::cuda::async
