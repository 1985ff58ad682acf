// RMSNorm kernels. One block per row (H = 4096 for Bamba-9B: 16 elements per thread): statistics in fp32 over
// the row, then the normalised row written in bf16. The fused residual add writes the rounded sum back to h
// first, so the norm sees exactly the residual stream the next layer adds to (HF keeps it in model dtype).
#include "backend/cuda/kernels.cuh"

namespace bamba::cuda {
namespace {

template <bool ADD>
__global__ void rmsnorm_kernel(bf16* out, int64_t ldo, bf16* h, int64_t ldh, const bf16* x, int64_t ldx, PView w,
                               int H, float eps) {
  __shared__ float sh[32];
  const int64_t row = blockIdx.x;
  bf16* hr = h + row * ldh;
  float ss = 0.f;
  for (int j = threadIdx.x; j < H; j += blockDim.x) {
    float v = to_f(hr[j]);
    if (ADD) {
      bf16 s = to_bf(v + to_f(x[row * ldx + j]));
      hr[j] = s;
      v = to_f(s);
    }
    ss += v * v;
  }
  const float r = rsqrtf(block_sum(ss, sh) / float(H) + eps);
  for (int j = threadIdx.x; j < H; j += blockDim.x) out[row * ldo + j] = to_bf(ld_param(w, j) * (to_f(hr[j]) * r));
}

// out = rmsnorm_groups(y * silu(z)) * w: one block per (row, group); the gate is recomputed in the second pass
// rather than staged, since y and z are still in L1/L2.
__global__ void gated_rmsnorm_kernel(bf16* out, int64_t ldo, const bf16* y, int64_t ldy, const bf16* z, int64_t ldz,
                                     PView w, int group, float eps) {
  __shared__ float sh[32];
  const int64_t row = blockIdx.x;
  const int base = blockIdx.y * group;
  float ss = 0.f;
  for (int j = base + threadIdx.x; j < base + group; j += blockDim.x) {
    float g = to_f(y[row * ldy + j]) * silu_f(to_f(z[row * ldz + j]));
    ss += g * g;
  }
  const float r = rsqrtf(block_sum(ss, sh) / float(group) + eps);
  for (int j = base + threadIdx.x; j < base + group; j += blockDim.x) {
    float g = to_f(y[row * ldy + j]) * silu_f(to_f(z[row * ldz + j]));
    out[row * ldo + j] = to_bf(ld_param(w, j) * (g * r));
  }
}

}  // namespace

void rmsnorm(cudaStream_t st, bf16* out, int64_t ldo, bf16* h, int64_t ldh, const bf16* x, int64_t ldx, PView w,
             int64_t M, int64_t H, float eps) {
  if (M == 0) return;
  if (x) rmsnorm_kernel<true><<<unsigned(M), 256, 0, st>>>(out, ldo, h, ldh, x, ldx, w, int(H), eps);
  else rmsnorm_kernel<false><<<unsigned(M), 256, 0, st>>>(out, ldo, h, ldh, x, ldx, w, int(H), eps);
  CUDA_LAUNCH_CHECK();
}

void gated_rmsnorm(cudaStream_t st, bf16* out, int64_t ldo, const bf16* y, int64_t ldy, const bf16* z, int64_t ldz,
                   PView w, int64_t M, int64_t I, int64_t group, float eps) {
  if (M == 0) return;
  dim3 grid(unsigned(M), unsigned(I / group));
  gated_rmsnorm_kernel<<<grid, 256, 0, st>>>(out, ldo, y, ldy, z, ldz, w, int(group), eps);
  CUDA_LAUNCH_CHECK();
}

}  // namespace bamba::cuda
