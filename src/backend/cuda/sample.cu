// Sampling on the GPU, one block per logits row (V = 128256: 125 values per thread per pass, all from L2).
// Greedy is one argmax pass. Otherwise the top-k and top-p thresholds are found by bisection over the
// order-preserving integer image of the float values (32 counting passes give the exact k-th largest value, as
// sorting would), then the kept tokens are walked in index order to the drawn cumulative mass: each thread sums a
// contiguous slice, a block scan finds the slice holding the target, and its thread walks it.
#include "backend/cuda/kernels.cuh"

namespace bamba::cuda {
namespace {

constexpr int kThreads = 1024;

__device__ __forceinline__ uint32_t order_key(float f) {
  const uint32_t u = __float_as_uint(f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

__device__ __forceinline__ uint32_t block_sum_u(uint32_t v, uint32_t* sh) {
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  __syncthreads();
  if (lane == 0) sh[w] = v;
  __syncthreads();
  v = lane < int(blockDim.x >> 5) ? sh[lane] : 0u;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__global__ void __launch_bounds__(kThreads) sample_kernel(const float* logits, int64_t ld, int V,
                                                          const DevSampling* params, int32_t* out) {
  __shared__ float shf[32];
  __shared__ uint32_t shu[32];
  __shared__ float scan[kThreads];
  __shared__ int pick;
  const int64_t r = blockIdx.x;
  const float* x = logits + r * ld;
  const DevSampling sp = params[r];
  const int tid = threadIdx.x;

  if (sp.temperature <= 0.f || sp.top_k == 1) {  // greedy: first index of the maximum
    float best = -INFINITY;
    int bi = V;
    for (int j = tid; j < V; j += kThreads)
      if (x[j] > best) best = x[j], bi = j;  // j increases, so ties keep the first
    const float m = block_max(best, shf);
    if (tid == 0) pick = V;
    __syncthreads();
    if (best == m) atomicMin(&pick, bi);
    __syncthreads();
    if (tid == 0) out[r] = pick;
    return;
  }
  const float inv_t = 1.f / sp.temperature;
  float mx = -INFINITY;
  for (int j = tid; j < V; j += kThreads) mx = fmaxf(mx, x[j] * inv_t);
  const float m = block_max(mx, shf);

  // Threshold key: keep tokens with order_key(z) >= thr.
  uint32_t thr = 0;
  if (sp.top_k > 0 && sp.top_k < V) {  // largest thr with count(key >= thr) >= k
    uint32_t lo = 0, hi = order_key(m);
    while (lo < hi) {
      const uint32_t mid = lo + (hi - lo + 1) / 2;
      uint32_t c = 0;
      for (int j = tid; j < V; j += kThreads) c += order_key(x[j] * inv_t) >= mid;
      if (block_sum_u(c, shu) >= uint32_t(sp.top_k)) lo = mid;
      else hi = mid - 1;
    }
    thr = lo;
  }
  if (sp.top_p < 1.f) {  // largest thr' >= thr whose kept mass still reaches top_p of the top-k mass
    float z = 0.f;
    for (int j = tid; j < V; j += kThreads) {
      const float v = x[j] * inv_t;
      if (order_key(v) >= thr) z += __expf(v - m);
    }
    const float target = sp.top_p * block_sum(z, shf);
    uint32_t lo = thr, hi = order_key(m);
    while (lo < hi) {
      const uint32_t mid = lo + (hi - lo + 1) / 2;
      float c = 0.f;
      for (int j = tid; j < V; j += kThreads) {
        const float v = x[j] * inv_t;
        if (order_key(v) >= mid) c += __expf(v - m);
      }
      if (block_sum(c, shf) >= target) lo = mid;
      else hi = mid - 1;
    }
    thr = lo;
  }
  // Draw: contiguous slices per thread, in index order.
  const int per = (V + kThreads - 1) / kThreads, j0 = tid * per, j1 = min(V, j0 + per);
  float part = 0.f;
  for (int j = j0; j < j1; ++j) {
    const float v = x[j] * inv_t;
    if (order_key(v) >= thr) part += __expf(v - m);
  }
  scan[tid] = part;
  __syncthreads();
  for (int off = 1; off < kThreads; off <<= 1) {  // inclusive Hillis-Steele scan
    const float add = tid >= off ? scan[tid - off] : 0.f;
    __syncthreads();
    scan[tid] += add;
    __syncthreads();
  }
  const float target = sp.u * scan[kThreads - 1];
  if (tid == 0) pick = -1;
  __syncthreads();
  const float before = tid ? scan[tid - 1] : 0.f;
  if (part > 0.f && before <= target && target < scan[tid]) {  // this thread's slice holds the target
    float acc = before;
    int last = -1;
    for (int j = j0; j < j1; ++j) {
      const float v = x[j] * inv_t;
      if (order_key(v) < thr) continue;
      last = j;
      acc += __expf(v - m);
      if (acc > target) break;
    }
    pick = last;
  }
  __syncthreads();
  if (pick < 0) {  // rounding put the target at the very end: take the last kept token
    int last = -1;
    for (int j = j0; j < j1; ++j)
      if (order_key(x[j] * inv_t) >= thr) last = j;
    atomicMax(&pick, last);
    __syncthreads();
  }
  if (tid == 0) out[r] = pick;
}

// One block per (row, target) pair: max and first argmax, then the sum of exp(x - max) in a fixed order
// (deterministic: the same logits give the same bits).
__global__ void __launch_bounds__(512) token_logprobs_kernel(const float* logits, int64_t ld, int V,
                                                             const int32_t* rows, const int32_t* targets,
                                                             float* logprob, int32_t* greedy) {
  __shared__ float sh[32];
  __shared__ int pick;
  const float* x = logits + int64_t(rows[blockIdx.x]) * ld;
  const int tid = threadIdx.x;
  float best = -INFINITY;
  int bi = V;
  for (int j = tid; j < V; j += blockDim.x)
    if (x[j] > best) best = x[j], bi = j;
  const float m = block_max(best, sh);
  if (tid == 0) pick = V;
  __syncthreads();
  if (best == m) atomicMin(&pick, bi);
  float s = 0.f;
  for (int j = tid; j < V; j += blockDim.x) s += expf(x[j] - m);
  s = block_sum(s, sh);
  if (tid == 0) {
    logprob[blockIdx.x] = x[targets[blockIdx.x]] - m - logf(s);
    greedy[blockIdx.x] = pick;
  }
}

}  // namespace

void token_logprobs(cudaStream_t st, const float* logits, int64_t ld, int64_t V, int64_t n, const int32_t* rows,
                    const int32_t* targets, float* logprob, int32_t* greedy) {
  if (n == 0) return;
  token_logprobs_kernel<<<unsigned(n), 512, 0, st>>>(logits, ld, int(V), rows, targets, logprob, greedy);
  CUDA_LAUNCH_CHECK();
}

void sample(cudaStream_t st, const float* logits, int64_t ld, int64_t R, int64_t V, const DevSampling* params,
            int32_t* out) {
  if (R == 0) return;
  sample_kernel<<<unsigned(R), kThreads, 0, st>>>(logits, ld, int(V), params, out);
  CUDA_LAUNCH_CHECK();
}

}  // namespace bamba::cuda
