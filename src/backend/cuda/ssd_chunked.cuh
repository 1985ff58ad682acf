// The SSD prefill in the chunked matrix form on bf16 tensor cores (ssd_chunked.cu), used by ssd() (ssd.cu) for
// bf16 compute when the shape suits it; ssd.cu keeps the register recurrence for fp32, decode and the rest.
#pragma once
#include "backend/cuda/kernels.cuh"

namespace bamba::cuda {

// Whether the tensor-core path takes this call: head_dim <= 64, d_state <= 128, chunks of a multiple of 64 tokens
// up to 256, and some sequence long enough that the per-sequence recurrence would be serial for long.
bool ssd_chunked_takes(const SsdArgs& a, const DevBatch& b, int max_seq_len);
size_t ssd_chunked_scratch_floats(const SsdArgs& a, const DevBatch& b);
// y and the slots' final states for every sequence of the batch (max_seq_len: its longest sequence's new tokens);
// scratch holds ssd_chunked_scratch_floats.
template <typename ST>
void ssd_chunked(cudaStream_t st, const SsdArgs& a, const DevBatch& b, int max_seq_len, float* scratch);

}  // namespace bamba::cuda
