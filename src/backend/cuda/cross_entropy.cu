// Cross-entropy (+ z-loss) over a chunk of fp32 logit rows, the middle of Backend::lm_head_cross_entropy (the
// matmuls around it are cuBLAS calls in cuda_backend.cu). One block per row: max and Σ exp in one pass (each
// thread keeps a running max and its sum rescaled to it; then the block's max and the rescaled sums, block
// reductions in a fixed order), then the row's loss and its gradient
//   dlogit_v = (ce + 2 z lse) · softmax_v − ce · [v == target],  ce = ce_scale for a scored row, else 0.
// A row of a 128K vocabulary is 0.5 MB and a chunk's rows do not stay in L2, so each pass over them is a DRAM read:
// two passes rather than three (separate max and sum) save a third of the kernel's traffic.
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
  float m = -INFINITY, s = 0.f;  // this thread's max so far and Σ exp(l − m) over its elements
  for (int64_t v = threadIdx.x; v < V; v += blockDim.x) {
    const float x = l[v];
    if (x > m) s = s * expf(m - x) + 1.f, m = x;   // (expf(−inf) = 0 for the first)
    else if (m > -INFINITY) s += expf(x - m);       // (a −inf logit after only −inf ones adds nothing)
  }
  const float mx = block_max(m, sh);
  const float sum = block_sum(m == -INFINITY ? 0.f : s * expf(m - mx), sh);
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

// ---- launcher (tests/emu/run.sh compiles everything above this line for the CPU)
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
