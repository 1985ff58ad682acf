// RMSNorm kernels. One block per row (H = 4096 for Bamba-9B: 16 elements per thread): statistics in fp32 over
// the row, then the normalised row written in bf16. The fused residual add writes the rounded sum back to h
// first, so the norm sees exactly the residual stream the next layer adds to (HF keeps it in model dtype).
#include "backend/cuda/kernels.cuh"

namespace bamba::cuda {
namespace {

// Each thread keeps its up-to-kPer elements in registers between the statistics pass and the write pass, and
// issues all its loads before using any: with one row per block (decode: M = 1), a loop of dependent loads would
// make the kernel latency-bound (16 µs for H = 4096 when written as a strided loop; ~2 µs like this).
constexpr int kThreads = 1024, kPer = 16;

template <bool ADD>
__global__ void __launch_bounds__(kThreads) rmsnorm_kernel(bf16* out, int64_t ldo, bf16* h, int64_t ldh, const bf16* x,
                                                           int64_t ldx, PView w, int H, float eps) {
  __shared__ float sh[32];
  const int64_t row = blockIdx.x;
  bf16* hr = h + row * ldh;
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
      const bf16 s = to_bf(v[i]);  // the residual stream is bf16: normalise what is stored
      hr[j] = s;
      v[i] = to_f(s);
    }
    ss += v[i] * v[i];
  }
  const float r = rsqrtf(block_sum(ss, sh) / float(H) + eps);
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
    const int j = threadIdx.x + i * kThreads;
    if (j < H) out[row * ldo + j] = to_bf(ld_param(w, j) * (v[i] * r));
  }
}

// out = rmsnorm_groups(y * silu(z)) * w: one block per (row, group), the gated values kept in registers.
__global__ void __launch_bounds__(kThreads) gated_rmsnorm_kernel(bf16* out, int64_t ldo, const bf16* y, int64_t ldy,
                                                                 const bf16* z, int64_t ldz, PView w, int group,
                                                                 float eps) {
  __shared__ float sh[32];
  const int64_t row = blockIdx.x;
  const int base = blockIdx.y * group;
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
    if (j < group) out[row * ldo + base + j] = to_bf(ld_param(w, base + j) * (g[i] * r));
  }
}

}  // namespace

void rmsnorm(cudaStream_t st, bf16* out, int64_t ldo, bf16* h, int64_t ldh, const bf16* x, int64_t ldx, PView w,
             int64_t M, int64_t H, float eps) {
  if (M == 0) return;
  if (H > kThreads * kPer) fail("cuda rmsnorm: hidden size ", H, " > ", kThreads * kPer);
  if (x) rmsnorm_kernel<true><<<unsigned(M), kThreads, 0, st>>>(out, ldo, h, ldh, x, ldx, w, int(H), eps);
  else rmsnorm_kernel<false><<<unsigned(M), kThreads, 0, st>>>(out, ldo, h, ldh, x, ldx, w, int(H), eps);
  CUDA_LAUNCH_CHECK();
}

void gated_rmsnorm(cudaStream_t st, bf16* out, int64_t ldo, const bf16* y, int64_t ldy, const bf16* z, int64_t ldz,
                   PView w, int64_t M, int64_t I, int64_t group, float eps) {
  if (M == 0) return;
  if (group > kThreads * kPer) fail("cuda gated_rmsnorm: group ", group, " > ", kThreads * kPer);
  dim3 grid(unsigned(M), unsigned(I / group));
  gated_rmsnorm_kernel<<<grid, kThreads, 0, st>>>(out, ldo, y, ldy, z, ldz, w, int(group), eps);
  CUDA_LAUNCH_CHECK();
}

}  // namespace bamba::cuda
