// The optimizer's element-wise work on the GPU (train/adamw.h has the definition and the CPU form, which this
// follows operation for operation in fp32): the AdamW update of fp32 master weights, fp32 or stochastically
// rounded bf16 moments, and the compute-dtype copy of each weight that the model reads; plus the pieces of global
// gradient-norm clipping (Σ g² as per-block double partials in a fixed order, then a scale).
#include "backend/cuda/kernels.cuh"
#include "core/hash_uniform.h"

namespace bamba::cuda {
namespace {

constexpr int kSumThreads = 256, kSumBlocks = 1024;

__device__ __forceinline__ uint16_t bf16_bits_sr(float x, uint32_t r) {  // = train/adamw.cpp bf16_stochastic_round
  uint32_t u = __float_as_uint(x);
  if ((u & 0x7f800000u) == 0x7f800000u) return uint16_t((u >> 16) | ((u & 0xffff) ? 0x40 : 0));
  uint32_t s = u + (r & 0xffffu);
  if ((s & 0x7f800000u) == 0x7f800000u) s = u;
  return uint16_t(s >> 16);
}
__device__ __forceinline__ float bf16_bits_to_f(uint16_t b) { return __uint_as_float(uint32_t(b) << 16); }

template <bool BF16M>
__global__ void adamw_kernel(float* w, const float* g, void* mp, void* vp, int64_t n, AdamWArgs a, void* copy,
                             int copy_bf16) {
  for (int64_t j = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; j < n; j += int64_t(gridDim.x) * blockDim.x) {
    const float gj = g[j] * a.grad_scale;
    float wj = w[j] * a.decay, mj, vj;
    if (BF16M) {
      mj = bf16_bits_to_f(static_cast<uint16_t*>(mp)[j]);
      vj = bf16_bits_to_f(static_cast<uint16_t*>(vp)[j]);
    } else {
      mj = static_cast<float*>(mp)[j];
      vj = static_cast<float*>(vp)[j];
    }
    mj = __fadd_rn(mj, __fmul_rn(a.one_minus_b1, __fsub_rn(gj, mj)));
    vj = __fadd_rn(__fmul_rn(a.b2, vj), __fmul_rn(__fmul_rn(a.one_minus_b2, gj), gj));
    wj = __fsub_rn(wj, __fmul_rn(a.step_size, __fdiv_rn(mj, __fadd_rn(__fdiv_rn(__fsqrt_rn(vj), a.bc2_sqrt), a.eps))));
    w[j] = wj;
    if (BF16M) {
      const uint64_t r = splitmix64(a.key + uint64_t(j));
      static_cast<uint16_t*>(mp)[j] = bf16_bits_sr(mj, uint32_t(r));
      static_cast<uint16_t*>(vp)[j] = bf16_bits_sr(vj, uint32_t(r >> 16));
    } else {
      static_cast<float*>(mp)[j] = mj;
      static_cast<float*>(vp)[j] = vj;
    }
    if (copy) {
      if (copy_bf16) static_cast<bf16*>(copy)[j] = __float2bfloat16_rn(wj);
      else static_cast<float*>(copy)[j] = wj;
    }
  }
}

__global__ void sum_sq_kernel(const float* g, int64_t n, double* partial) {
  __shared__ double sh[kSumThreads];
  double s = 0;
  for (int64_t j = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; j < n; j += int64_t(gridDim.x) * blockDim.x)
    s += double(g[j]) * double(g[j]);
  sh[threadIdx.x] = s;
  __syncthreads();
  for (int o = kSumThreads / 2; o > 0; o >>= 1) {
    if (int(threadIdx.x) < o) sh[threadIdx.x] += sh[threadIdx.x + o];
    __syncthreads();
  }
  if (threadIdx.x == 0) partial[blockIdx.x] = sh[0];
}

__global__ void scale_kernel(float* g, int64_t n, float c) {
  for (int64_t j = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; j < n; j += int64_t(gridDim.x) * blockDim.x)
    g[j] *= c;
}

unsigned grid_for(int64_t n) { return std::max(1u, std::min(ceil_div(n, 256), 65536u)); }

}  // namespace

void adamw_step(cudaStream_t st, float* w, const float* g, void* m, void* v, bool bf16_moments, int64_t n,
                const AdamWArgs& a, void* model_copy, DType model_dtype) {
  if (n == 0) return;
  const int copy_bf16 = model_dtype == DType::BF16;
  if (bf16_moments) adamw_kernel<true><<<grid_for(n), 256, 0, st>>>(w, g, m, v, n, a, model_copy, copy_bf16);
  else adamw_kernel<false><<<grid_for(n), 256, 0, st>>>(w, g, m, v, n, a, model_copy, copy_bf16);
  CUDA_LAUNCH_CHECK();
}

int blocks_for_sum_sq(int64_t n) { return int(std::max<int64_t>(1, std::min<int64_t>((n + 255) / 256, kSumBlocks))); }

void sum_sq_partials(cudaStream_t st, const float* g, int64_t n, double* partial) {
  sum_sq_kernel<<<unsigned(blocks_for_sum_sq(n)), kSumThreads, 0, st>>>(g, n, partial);
  CUDA_LAUNCH_CHECK();
}

void scale_inplace(cudaStream_t st, float* g, int64_t n, float c) {
  if (n == 0) return;
  scale_kernel<<<grid_for(n), 256, 0, st>>>(g, n, c);
  CUDA_LAUNCH_CHECK();
}

}  // namespace bamba::cuda
