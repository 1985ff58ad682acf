// Logits processing before sampling (Backend::process_logits; the definition is process_logits_row in
// backend/logits_processing.cpp): one block per processed row, in three passes over the row that only
// touch the rows that asked for something — the allowed-token mask, the sparse edits (logit_bias and the
// penalties, one thread per listed token: ids are distinct within a row), then min_p against the row maximum.
// Each pass is the same fp32 arithmetic as the CPU definition, so the rows come out bit for bit equal.
#include "backend/cuda/kernels.cuh"

namespace bamba::cuda {
namespace {

constexpr int kThreads = 512;

__global__ void __launch_bounds__(kThreads) process_logits_kernel(float* logits, int64_t ld, int V,
                                                                  const DevLogitsRow* rows, const DevLogitEdit* edits,
                                                                  const uint32_t* masks) {
  __shared__ float sh[32];
  const DevLogitsRow r = rows[blockIdx.x];
  float* x = logits + int64_t(r.row) * ld;
  const int tid = threadIdx.x;
  if (r.mask_offset >= 0) {
    const uint32_t* m = masks + r.mask_offset;
    for (int j = tid; j < V; j += kThreads)
      if (!((m[j >> 5] >> (j & 31)) & 1u)) x[j] = -INFINITY;
    __syncthreads();
  }
  for (int e = tid; e < r.edit_count; e += kThreads) {
    const DevLogitEdit d = edits[r.edit_begin + e];
    float v = __fadd_rn(x[d.id], d.bias);
    if (d.repeat) v = v > 0.f ? __fdiv_rn(v, r.repetition_penalty) : __fmul_rn(v, r.repetition_penalty);
    x[d.id] = __fsub_rn(v, d.sub);
  }
  if (r.min_p_shift > -INFINITY) {
    __syncthreads();
    float mx = -INFINITY;
    for (int j = tid; j < V; j += kThreads) mx = fmaxf(mx, x[j]);
    const float thr = __fadd_rn(block_max(mx, sh), r.min_p_shift);
    for (int j = tid; j < V; j += kThreads)
      if (x[j] < thr) x[j] = -INFINITY;
  }
}

}  // namespace

void process_logits(cudaStream_t st, float* logits, int64_t ld, int64_t V, int64_t n_rows, const DevLogitsRow* rows,
                    const DevLogitEdit* edits, const uint32_t* masks) {
  if (n_rows == 0) return;
  process_logits_kernel<<<unsigned(n_rows), kThreads, 0, st>>>(logits, ld, int(V), rows, edits, masks);
  CUDA_LAUNCH_CHECK();
}

}  // namespace bamba::cuda
