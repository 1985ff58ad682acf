// The SSD backward in the chunked matrix form on bf16 tensor cores (ssd_backward_chunked.cu), used by
// ssd_backward (ssd_backward.cu) for bf16 compute when the shape suits it; ssd_backward.cu keeps the plain reverse
// recurrence for fp32, for larger heads, and when BAMBA_SSD_BWD=plain.
#pragma once
#include <utility>
#include <vector>

#include "backend/cuda/kernels.cuh"

namespace bamba::cuda {

// Whether the chunked path takes this call: head_dim <= 64, d_state <= 128, the batch's chunk table in multiples
// of 64 tokens (as set_batch builds it for bf16), and BAMBA_SSD_BWD not "plain" (read per call, so one process
// can time both). Fails on an unknown BAMBA_SSD_BWD.
bool ssd_backward_chunked_takes(const SsdBwdArgs& a, const DevBatch& b);
// Floats of scratch the chunked kernels need besides the outputs below.
size_t ssd_backward_chunked_scratch_floats(const SsdBwdArgs& a, const DevBatch& b);
// dx (the x columns of dxBC) and, for the finishing kernels of ssd_backward.cu (with one slice per head):
// dBp, dCp [T, nh, N] each head's part of dB and dC, sc [T, nh, 3] per token and head (dΔ before softplus and
// the clamp, the dA_log term, the dD term); dstate0 when asked. scratch: ssd_backward_chunked_scratch_floats.
void ssd_backward_chunked(cudaStream_t st, const SsdBwdArgs& a, const DevBatch& b, float* dBp, float* dCp, float* sc,
                          float* scratch);

// With BAMBA_SSD_BWD_PROFILE set, the time of each kernel between marks (CUDA events on the stream), printed to
// stderr as one line when the clock goes out of scope (which synchronises); otherwise nothing at all.
class KernelClock {
 public:
  KernelClock(cudaStream_t st, const char* what);
  ~KernelClock();
  void mark(const char* name);

 private:
  cudaStream_t st_;
  const char* what_;
  bool on_;
  std::vector<std::pair<const char*, cudaEvent_t>> marks_;
};

}  // namespace bamba::cuda
