// The split-K (flash-decoding) decode attention of attention.cu, for the backend's dispatch: decode steps (one new
// token per sequence, bf16, head_dim 64 or 128, GQA groups of at most 16) with each sequence's keys cut into
// splits at fixed positions, one block per (sequence, kv head, split), then a combine in split order.
#pragma once
#include <cstddef>

#include "backend/cuda/kernels.cuh"

namespace bamba::cuda {

// `splits` blocks per (sequence, kv head) of split_len keys each (a multiple of 64). partials: scratch of
// decode_split_floats floats when splits > 1. splits == 0: the split kernel does not apply.
struct DecodeSplit {
  int splits = 0, split_len = 0;
  float* partials = nullptr;
};

// The split for a decode step of S sequences whose longest holds at most ctx_cap keys (a power of two >= 64):
// enough splits that the (sequence, kv head, split) blocks fill the GPU, none shorter than 256 keys. A function of
// its arguments (and the device's SM count) only, so a recorded graph keyed on them stays right.
DecodeSplit decode_split_plan(bool bf16, int nq, int nkv, int dh, int S, int ctx_cap);
size_t decode_split_floats(const DecodeSplit& sp, int T, int nq, int dh);

// attention() for a decode step (T == S) through the split kernel; the caller has run rope_and_cache.
template <typename T>
void attention_decode_split(cudaStream_t st, const AttnArgs& a, const DevBatch& b, const DecodeSplit& split);

}  // namespace bamba::cuda
