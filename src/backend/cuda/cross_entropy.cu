// Cross-entropy (+ z-loss) over a chunk of fp32 logit rows, the middle of Backend::lm_head_cross_entropy (the
// matmuls around it are cuBLAS calls in cuda_backend.cu). One block per row: max, Σ exp in fp32 (block
// reductions, a fixed order), then the row's loss and its gradient
//   dlogit_v = (ce + 2 z lse) · softmax_v − ce · [v == target],  ce = ce_scale for a scored row, else 0.
#include "backend/cuda/kernels.cuh"

namespace bamba::cuda {
namespace {

template <typename T>
__global__ void __launch_bounds__(1024) cross_entropy_kernel(const float* logits, T* dlogits, int64_t V,
                                                             const int32_t* targets, float ce_scale, float z_scale,
                                                             float* loss) {
  __shared__ float sh[32];
  const int64_t r = blockIdx.x;
  const float* l = logits + r * V;
  float mx = -INFINITY;
  for (int64_t v = threadIdx.x; v < V; v += blockDim.x) mx = fmaxf(mx, l[v]);
  mx = block_max(mx, sh);
  float sum = 0.f;
  for (int64_t v = threadIdx.x; v < V; v += blockDim.x) sum += expf(l[v] - mx);
  sum = block_sum(sum, sh);
  const float lse = mx + logf(sum);
  const int32_t tgt = targets[r];
  const float ce = tgt >= 0 ? ce_scale : 0.f;
  const float tl = tgt >= 0 ? l[tgt] : 0.f;  // read before any write: dlogits may alias logits
  __syncthreads();
  const float wsoft = ce + 2.f * z_scale * lse;
  for (int64_t v = threadIdx.x; v < V; v += blockDim.x) {
    const float g = wsoft * expf(l[v] - lse) - (v == tgt ? ce : 0.f);
    dlogits[r * V + v] = from_f<T>(g);
  }
  if (threadIdx.x == 0) loss[r] = ce * (lse - tl) + z_scale * lse * lse;
}

}  // namespace

template <typename T>
void cross_entropy_rows(cudaStream_t st, const float* logits, T* dlogits, int64_t R, int64_t V, const int32_t* targets,
                        float ce_scale, float z_scale, float* loss) {
  if (R == 0) return;
  cross_entropy_kernel<T><<<unsigned(R), 1024, 0, st>>>(logits, dlogits, V, targets, ce_scale, z_scale, loss);
  CUDA_LAUNCH_CHECK();
}

#define INST(T) \
  template void cross_entropy_rows<T>(cudaStream_t, const float*, T*, int64_t, int64_t, const int32_t*, float, float, float*);
BAMBA_CUDA_DTYPES(INST)
#undef INST

}  // namespace bamba::cuda
