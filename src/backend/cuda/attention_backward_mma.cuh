// Causal attention's backward on bf16 tensor cores in 64-token tiles (attention_backward_mma.cu), used by
// attention_backward (attention_backward.cu) for bf16 compute: the register (mma.sync) form by default, the older
// wmma form with BAMBA_ATTN_BWD=wmma (H100, Bamba-9B's shape at 4,096 tokens: 12.1 ms, bench/NOTES.md v14); the
// warp-per-row form is fp32's, and bf16's with BAMBA_ATTN_BWD=plain (168.9 ms).
#pragma once
#include "backend/cuda/kernels.cuh"

namespace bamba::cuda {

// Whether the tile forms take this call: BAMBA_ATTN_BWD not "plain" (read per call), head_dim <= 128, the batch's
// chunk table in multiples of 64 tokens (as set_batch builds it for bf16). Fails on an unknown BAMBA_ATTN_BWD
// (the known: "mma" or unset, "wmma", "plain").
bool attention_backward_mma_takes(const AttnArgs& a, const DevBatch& b);
// dqkv (rows [T], the unrotated gradient of q | k | v) from dout and the rotated qkv; stats: [T, nq, 2] floats.
void attention_backward_mma(cudaStream_t st, bf16* dqkv, int64_t lddq, const bf16* dout, int64_t ldo, const AttnArgs& a,
                            const DevBatch& b, float* stats);

}  // namespace bamba::cuda
