// Causal depthwise conv1d + bias + SiLU over varlen sequences, reading each sequence's cached window.
// Channels are the fast thread index so a warp reads 32 consecutive channels of one token row (coalesced); the
// K taps walk back over rows, through the slot's conv state for the first K-1 tokens of a continuing sequence. The new window is written by a second kernel so that no thread overwrites a
// state value another thread of the first kernel still reads.
#include "backend/cuda/kernels.cuh"

namespace bamba::cuda {
namespace {

constexpr int kMaxK = 8;

// Thread per (channel, run of kRun consecutive token rows): the kRun + K - 1 input rows the run needs are read
// once into registers (a thread per (token, channel) read every input K times: 480 µs for an 8192-token
// Bamba-9B prefill, 7× its bytes). Rows of another sequence inside the window are replaced by the cached window
// (continuing sequences) or zeros, token by token.
constexpr int kRun = 8;

template <typename T>
__global__ void conv_out_kernel(T* out, int64_t ldo, const T* xBC, int64_t ldx, PView w, PView bias,
                                const float* conv_state, int CD, int K, DevBatch b) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  const int t0 = blockIdx.y * kRun;
  if (c >= CD) return;
  const int W = K - 1;
  float wk[kMaxK], raw[kRun + kMaxK - 1];
#pragma unroll
  for (int k = 0; k < kMaxK; ++k) wk[k] = k < K ? ld_param(w, int64_t(c) * K + k) : 0.f;
#pragma unroll
  for (int m = 0; m < kRun + kMaxK - 1; ++m) {  // raw[m] = row t0 - W + m
    const int row = t0 - W + m;
    raw[m] = m < kRun + W && row >= 0 && row < b.T ? to_f(xBC[int64_t(row) * ldx + c]) : 0.f;
  }
  const float b0 = bias.p ? ld_param(bias, c) : 0.f;
#pragma unroll
  for (int u = 0; u < kRun; ++u) {
    const int t = t0 + u;
    if (t >= b.T) break;
    const int s = b.seq_of[t], start = b.seq_start[s];
    const bool cont = b.past_len[s] > 0;
    const float* state = conv_state + int64_t(b.slot[s]) * W * CD;  // [W, CD]
    float acc = b0;
#pragma unroll
    for (int k = 0; k < kMaxK; ++k) {
      if (k >= K) break;
      const int row = t - W + k;
      const float v = row >= start ? raw[u + k] : cont ? state[int64_t(W + row - start) * CD + c] : 0.f;
      acc += wk[k] * v;
    }
    out[int64_t(t) * ldo + c] = from_f<T>(silu_f(acc));
  }
}

// Window after the step: the last W inputs of [old window | new tokens]. Thread per (sequence, channel).
template <typename T>
__global__ void conv_state_kernel(const T* xBC, int64_t ldx, float* conv_state, int CD, int K, DevBatch b) {
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

template <typename T>
void conv1d_silu(cudaStream_t st, T* out, int64_t ldo, const T* xBC, int64_t ldx, PView w, PView bias,
                 float* conv_state, int64_t CD, int64_t K, const DevBatch& b, int max_seq_len) {
  if (K < 1 || K > kMaxK) fail("cuda conv1d: d_conv ", K, " is outside 1..", kMaxK);
  if (b.T == 0) return;
  conv_out_kernel<T><<<dim3(ceil_div(CD, 128), ceil_div(b.T, kRun)), 128, 0, st>>>(out, ldo, xBC, ldx, w, bias, conv_state,
                                                                           int(CD), int(K), b);
  CUDA_LAUNCH_CHECK();
  if (K > 1) {
    conv_state_kernel<T><<<dim3(ceil_div(CD, 128), unsigned(b.S)), 128, 0, st>>>(xBC, ldx, conv_state, int(CD), int(K), b);
    CUDA_LAUNCH_CHECK();
  }
}

#define INST(T)                                                                                         \
  template void conv1d_silu<T>(cudaStream_t, T*, int64_t, const T*, int64_t, PView, PView, float*, int64_t, \
                               int64_t, const DevBatch&, int);
BAMBA_CUDA_DTYPES(INST)
#undef INST

}  // namespace bamba::cuda
