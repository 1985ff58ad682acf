// The optimizer's element-wise work on the GPU (train/adamw.h has the definition and the CPU form, which this
// follows operation for operation in fp32): the AdamW update of fp32 master weights, fp32 or stochastically
// rounded bf16 moments, and the compute-dtype copy of each weight that the model reads; plus the pieces of global
// gradient-norm clipping (Σ g² as per-block double partials in a fixed order, then a scale). A master may be split
// (core/bf16_split.h): then `w` is the model's bf16 weight, the master's top half, and `lo` the rest.
#include "backend/cuda/kernels.cuh"
#include "core/bf16_split.h"
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

// One element's update, split into its loads, arithmetic and stores so that the multi-tensor kernel can issue
// several elements' loads before any store (a store may alias a later load as far as the compiler knows). Both
// kernels run exactly these operations, so their bits agree.
struct Elem {
  float w, g, m, v;
};
template <bool BF16M>
__device__ __forceinline__ Elem adamw_load(const void* w, const uint16_t* lo, const float* g, const void* mp,
                                           const void* vp, int64_t j) {
  Elem e{lo ? bf16_join(static_cast<const uint16_t*>(w)[j], lo[j]) : static_cast<const float*>(w)[j], g[j], 0.f, 0.f};
  if (BF16M) {
    e.m = bf16_bits_to_f(static_cast<const uint16_t*>(mp)[j]);
    e.v = bf16_bits_to_f(static_cast<const uint16_t*>(vp)[j]);
  } else {
    e.m = static_cast<const float*>(mp)[j];
    e.v = static_cast<const float*>(vp)[j];
  }
  return e;
}
__device__ __forceinline__ void adamw_math(Elem& e, const AdamWArgs& a, float decay) {
  const float gj = e.g * a.grad_scale;
  float wj = e.w * decay;
  e.m = __fadd_rn(e.m, __fmul_rn(a.one_minus_b1, __fsub_rn(gj, e.m)));
  e.v = __fadd_rn(__fmul_rn(a.b2, e.v), __fmul_rn(__fmul_rn(a.one_minus_b2, gj), gj));
  e.w = __fsub_rn(wj, __fmul_rn(a.step_size, __fdiv_rn(e.m, __fadd_rn(__fdiv_rn(__fsqrt_rn(e.v), a.bc2_sqrt), a.eps))));
}
template <bool BF16M>
__device__ __forceinline__ void adamw_store(const Elem& e, void* w, uint16_t* lo, void* mp, void* vp, int64_t j,
                                            uint64_t key, void* copy, int copy_bf16) {
  if (lo) bf16_split(e.w, static_cast<uint16_t*>(w)[j], lo[j]);
  else static_cast<float*>(w)[j] = e.w;
  if (BF16M) {
    const uint64_t r = splitmix64(key + uint64_t(j));
    static_cast<uint16_t*>(mp)[j] = bf16_bits_sr(e.m, uint32_t(r));
    static_cast<uint16_t*>(vp)[j] = bf16_bits_sr(e.v, uint32_t(r >> 16));
  } else {
    static_cast<float*>(mp)[j] = e.m;
    static_cast<float*>(vp)[j] = e.v;
  }
  if (copy) {
    if (copy_bf16) static_cast<bf16*>(copy)[j] = __float2bfloat16_rn(e.w);
    else static_cast<float*>(copy)[j] = e.w;
  }
}

template <bool BF16M>
__global__ void adamw_kernel(void* w, uint16_t* lo, const float* g, void* mp, void* vp, int64_t n, AdamWArgs a,
                             void* copy, int copy_bf16) {
  for (int64_t j = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; j < n; j += int64_t(gridDim.x) * blockDim.x) {
    Elem e = adamw_load<BF16M>(w, lo, g, mp, vp, j);
    adamw_math(e, a, a.decay);
    adamw_store<BF16M>(e, w, lo, mp, vp, j, a.key, copy, copy_bf16);
  }
}

// The tensor whose range of blocks holds block b: the last i with first[i] <= b (first[0] = 0, ascending).
__device__ __forceinline__ int find_tensor(const AdamWTensorArgs* t, int n_tensors, int64_t b) {
  int lo = 0, hi = n_tensors - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (t[mid].first_block <= b) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

// Every parameter of a step in one launch: block b updates chunk (b − first_block) of tensor i, kAdamWChunk
// elements, each thread kAdamWAhead of them at a time with all their loads issued first.
constexpr int kAdamWThreads = 256, kAdamWAhead = 4;
constexpr int64_t kAdamWChunk = int64_t(kAdamWThreads) * kAdamWAhead * 8;
template <bool BF16M>
__global__ void __launch_bounds__(kAdamWThreads) adamw_many_kernel(const AdamWTensorArgs* table, int n_tensors,
                                                                   AdamWArgs a) {
  __shared__ int ti;
  if (threadIdx.x == 0) ti = find_tensor(table, n_tensors, blockIdx.x);
  __syncthreads();
  const AdamWTensorArgs t = table[ti];
  const int64_t begin = (int64_t(blockIdx.x) - t.first_block) * kAdamWChunk, end = min(t.n, begin + kAdamWChunk);
  for (int64_t j0 = begin + threadIdx.x; j0 < end; j0 += int64_t(kAdamWThreads) * kAdamWAhead) {
    Elem e[kAdamWAhead];
#pragma unroll
    for (int k = 0; k < kAdamWAhead; ++k) {
      const int64_t j = j0 + int64_t(k) * kAdamWThreads;
      if (j < end) e[k] = adamw_load<BF16M>(t.w, t.lo, t.g, t.m, t.v, j);
    }
#pragma unroll
    for (int k = 0; k < kAdamWAhead; ++k) {
      const int64_t j = j0 + int64_t(k) * kAdamWThreads;
      if (j < end) {
        adamw_math(e[k], a, t.decay);
        adamw_store<BF16M>(e[k], t.w, t.lo, t.m, t.v, j, t.key, t.copy, t.copy_bf16);
      }
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

// Σ g² of many tensors in one launch: block b is block (b − first_block) of tensor i's own sum_sq_kernel
// launch (blocks_for_sum_sq(n) blocks, the same grid-stride walk and tree), so every partial has the bits of the
// one-tensor form and the host adds them in the same order.
__global__ void __launch_bounds__(kSumThreads) sum_sq_many_kernel(const SumSqTensorArgs* table, int n_tensors,
                                                                  double* partial) {
  __shared__ double sh[kSumThreads];
  __shared__ int ti;
  if (threadIdx.x == 0) {
    int lo = 0, hi = n_tensors - 1;
    while (lo < hi) {
      const int mid = (lo + hi + 1) / 2;
      if (table[mid].first_block <= int64_t(blockIdx.x)) lo = mid;
      else hi = mid - 1;
    }
    ti = lo;
  }
  __syncthreads();
  const SumSqTensorArgs t = table[ti];
  const int64_t lb = int64_t(blockIdx.x) - t.first_block, stride = int64_t(t.blocks) * kSumThreads;
  double s = 0;
  for (int64_t j = lb * kSumThreads + threadIdx.x; j < t.n; j += stride) s += double(t.g[j]) * double(t.g[j]);
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

void adamw_step(cudaStream_t st, void* w, uint16_t* lo, const float* g, void* m, void* v, bool bf16_moments, int64_t n,
                const AdamWArgs& a, void* model_copy, DType model_dtype) {
  if (n == 0) return;
  const int copy_bf16 = model_dtype == DType::BF16;
  if (bf16_moments) adamw_kernel<true><<<grid_for(n), 256, 0, st>>>(w, lo, g, m, v, n, a, model_copy, copy_bf16);
  else adamw_kernel<false><<<grid_for(n), 256, 0, st>>>(w, lo, g, m, v, n, a, model_copy, copy_bf16);
  CUDA_LAUNCH_CHECK();
}

int64_t adamw_many_blocks(int64_t n) { return (n + kAdamWChunk - 1) / kAdamWChunk; }

void adamw_step_many(cudaStream_t st, const AdamWTensorArgs* table, int n_tensors, int64_t blocks, bool bf16_moments,
                     const AdamWArgs& a) {
  if (blocks == 0) return;
  if (blocks > int64_t(INT32_MAX)) fail("adamw: ", blocks, " blocks of ", kAdamWChunk, " elements is too many");
  if (bf16_moments) adamw_many_kernel<true><<<unsigned(blocks), kAdamWThreads, 0, st>>>(table, n_tensors, a);
  else adamw_many_kernel<false><<<unsigned(blocks), kAdamWThreads, 0, st>>>(table, n_tensors, a);
  CUDA_LAUNCH_CHECK();
}

void sum_sq_many_partials(cudaStream_t st, const SumSqTensorArgs* table, int n_tensors, int64_t blocks,
                          double* partial) {
  if (blocks == 0) return;
  sum_sq_many_kernel<<<unsigned(blocks), kSumThreads, 0, st>>>(table, n_tensors, partial);
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
