// RMSNorm kernels. One block per row (H = 4096 for Bamba-9B: 16 elements per thread): statistics in fp32 over
// the row, then the normalised row written in T. The fused residual add writes the rounded sum back to h
// first, so the norm sees exactly the residual stream the next layer adds to (HF keeps it in model dtype).
// Launched as programmatic dependents (common.cuh: pdl_wait before touching the rows).
#include "backend/cuda/kernels.cuh"

namespace bamba::cuda {
namespace {

// Each thread keeps its up-to-kPer elements in registers between the statistics pass and the write pass, and
// issues all its loads before using any: with one row per block (decode: M = 1), a loop of dependent loads would
// make the kernel latency-bound (16 µs for H = 4096 when written as a strided loop; ~2 µs like this).
constexpr int kThreads = 1024, kPer = 16;

template <typename T, bool ADD>
__global__ void __launch_bounds__(kThreads) rmsnorm_kernel(T* out, int64_t ldo, T* h, int64_t ldh, const T* x,
                                                           int64_t ldx, PView w, int H, float eps) {
  __shared__ float sh[32];
  float wr[kPer];  // the weights: loaded before pdl_wait (they do not depend on the kernel before), off the
#pragma unroll     // critical path that would otherwise follow the reduction
  for (int i = 0; i < kPer; ++i) {
    const int j = threadIdx.x + i * kThreads;
    wr[i] = j < H ? ld_param(w, j) : 0.f;
  }
  pdl_wait();
  pdl_trigger();
  const int64_t row = blockIdx.x;
  T* hr = h + row * ldh;
  float v[kPer];
  float ss = 0.f;
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
    const int j = threadIdx.x + i * kThreads;
    v[i] = j < H ? to_f(hr[j]) : 0.f;
    if (ADD && j < H) v[i] += to_f(x[row * ldx + j]);
  }
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
    const int j = threadIdx.x + i * kThreads;
    if (ADD && j < H) {
      const T s = from_f<T>(v[i]);  // the residual stream is T: normalise what is stored
      hr[j] = s;
      v[i] = to_f(s);
    }
    ss += v[i] * v[i];
  }
  const float r = rsqrtf(block_sum(ss, sh) / float(H) + eps);
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
    const int j = threadIdx.x + i * kThreads;
    if (j < H) out[row * ldo + j] = from_f<T>(wr[i] * (v[i] * r));
  }
}

// out = rmsnorm_groups(y * silu(z)) * w: one block per (row, group), the gated values kept in registers.
template <typename T>
__global__ void __launch_bounds__(kThreads) gated_rmsnorm_kernel(T* out, int64_t ldo, const T* y, int64_t ldy,
                                                                 const T* z, int64_t ldz, PView w, int group,
                                                                 float eps) {
  __shared__ float sh[32];
  const int base = blockIdx.y * group;
  float wr[kPer];  // as in rmsnorm_kernel: weights before pdl_wait
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
    const int j = threadIdx.x + i * kThreads;
    wr[i] = j < group ? ld_param(w, base + j) : 0.f;
  }
  pdl_wait();
  pdl_trigger();
  const int64_t row = blockIdx.x;
  float g[kPer];
  float ss = 0.f;
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
    const int j = threadIdx.x + i * kThreads;
    g[i] = j < group ? to_f(y[row * ldy + base + j]) * silu_f(to_f(z[row * ldz + base + j])) : 0.f;
    ss += g[i] * g[i];
  }
  const float r = rsqrtf(block_sum(ss, sh) / float(group) + eps);
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
    const int j = threadIdx.x + i * kThreads;
    if (j < group) out[row * ldo + base + j] = from_f<T>(wr[i] * (g[i] * r));
  }
}

}  // namespace

template <typename T>
void rmsnorm(cudaStream_t st, T* out, int64_t ldo, T* h, int64_t ldh, const T* x, int64_t ldx, PView w, int64_t M,
             int64_t H, float eps) {
  if (M == 0) return;
  if (H > kThreads * kPer) fail("cuda rmsnorm: hidden size ", H, " > ", kThreads * kPer);
  launch_pdl(x ? rmsnorm_kernel<T, true> : rmsnorm_kernel<T, false>, dim3(unsigned(M)), dim3(kThreads), 0, st, out, ldo,
             h, ldh, x, ldx, w, int(H), eps);
}

template <typename T>
void gated_rmsnorm(cudaStream_t st, T* out, int64_t ldo, const T* y, int64_t ldy, const T* z, int64_t ldz, PView w,
                   int64_t M, int64_t I, int64_t group, float eps) {
  if (M == 0) return;
  if (group > kThreads * kPer) fail("cuda gated_rmsnorm: group ", group, " > ", kThreads * kPer);
  dim3 grid(unsigned(M), unsigned(I / group));
  launch_pdl(gated_rmsnorm_kernel<T>, grid, dim3(kThreads), 0, st, out, ldo, y, ldy, z, ldz, w, int(group), eps);
}

#define INST(T)                                                                                                \
  template void rmsnorm<T>(cudaStream_t, T*, int64_t, T*, int64_t, const T*, int64_t, PView, int64_t, int64_t, \
                           float);                                                                             \
  template void gated_rmsnorm<T>(cudaStream_t, T*, int64_t, const T*, int64_t, const T*, int64_t, PView, int64_t, \
                                 int64_t, int64_t, float);
BAMBA_CUDA_DTYPES(INST)
#undef INST

}  // namespace bamba::cuda
