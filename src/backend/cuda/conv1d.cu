// Causal depthwise conv1d + bias + SiLU over varlen sequences, reading each sequence's cached window.
// Thread per (token, channel): channels are the fast index so a warp reads 32 consecutive channels of one
// token row (coalesced); the K taps walk back over rows, through the slot's conv state for the first K-1
// tokens of a continuing sequence. The new window is written by a second kernel so that no thread overwrites a
// state value another thread of the first kernel still reads.
#include "backend/cuda/kernels.cuh"

namespace bamba::cuda {
namespace {

constexpr int kMaxK = 8;

__global__ void conv_out_kernel(bf16* out, int64_t ldo, const bf16* xBC, int64_t ldx, PView w, PView bias,
                                const float* conv_state, int CD, int K, DevBatch b) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  const int t = blockIdx.y;
  if (c >= CD) return;
  const int s = b.seq_of[t], t0 = b.seq_start[s], i = t - t0, W = K - 1;
  const bool cont = b.past_len[s] > 0;
  const float* state = conv_state + int64_t(b.slot[s]) * W * CD;  // [W, CD]
  float acc = bias.p ? ld_param(bias, c) : 0.f;
  for (int k = 0; k < K; ++k) {
    const int j = i - W + k;  // input row relative to the sequence's first new token
    float v = j >= 0 ? to_f(xBC[int64_t(t0 + j) * ldx + c]) : cont ? state[int64_t(W + j) * CD + c] : 0.f;
    acc += ld_param(w, int64_t(c) * K + k) * v;
  }
  out[int64_t(t) * ldo + c] = to_bf(silu_f(acc));
}

// Window after the step: the last W inputs of [old window | new tokens]. Thread per (sequence, channel).
__global__ void conv_state_kernel(const bf16* xBC, int64_t ldx, float* conv_state, int CD, int K, DevBatch b) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  const int s = blockIdx.y;
  if (c >= CD) return;
  const int t0 = b.seq_start[s], n = b.seq_start[s + 1] - t0, W = K - 1;
  const bool cont = b.past_len[s] > 0;
  float* state = conv_state + int64_t(b.slot[s]) * W * CD;
  float old[kMaxK];
#pragma unroll
  for (int w = 0; w < kMaxK; ++w)
    if (w < W) old[w] = cont ? state[int64_t(w) * CD + c] : 0.f;
#pragma unroll
  for (int w = 0; w < kMaxK; ++w) {
    if (w >= W) break;
    const int src = n + w - W;  // index among the new tokens, or into the old window when negative
    float v;
    if (src >= 0) v = to_f(xBC[int64_t(t0 + src) * ldx + c]);
    else {
      v = 0.f;
#pragma unroll
      for (int q = 0; q < kMaxK; ++q)  // old[W + src] with a compile-time index (keeps `old` in registers)
        if (q == W + src) v = old[q];
    }
    state[int64_t(w) * CD + c] = v;
  }
}

}  // namespace

void conv1d_silu(cudaStream_t st, bf16* out, int64_t ldo, const bf16* xBC, int64_t ldx, PView w, PView bias,
                 float* conv_state, int64_t CD, int64_t K, const DevBatch& b, int max_seq_len) {
  if (K < 1 || K > kMaxK) fail("cuda conv1d: d_conv ", K, " is outside 1..", kMaxK);
  if (b.T == 0) return;
  conv_out_kernel<<<dim3(ceil_div(CD, 128), unsigned(b.T)), 128, 0, st>>>(out, ldo, xBC, ldx, w, bias, conv_state,
                                                                           int(CD), int(K), b);
  CUDA_LAUNCH_CHECK();
  if (K > 1) {
    conv_state_kernel<<<dim3(ceil_div(CD, 128), unsigned(b.S)), 128, 0, st>>>(xBC, ldx, conv_state, int(CD), int(K), b);
    CUDA_LAUNCH_CHECK();
  }
}

}  // namespace bamba::cuda
