// Causal depthwise conv1d + bias + SiLU over varlen sequences, reading each sequence's cached window.
// Thread per (token, channel): channels are the fast index so a warp reads 32 consecutive channels of one
// token row (coalesced); the K taps walk back over rows, through the slot's conv state for the first K-1
// tokens of a continuing sequence. The new window is written by a second kernel so that no thread overwrites a
// state value another thread of the first kernel still reads.
// Decode steps (one token per sequence) take one kernel instead: thread per (sequence, channel) reads its window
// column into registers, writes the output and the shifted column; no other thread touches that column.
#include "backend/cuda/kernels.cuh"

namespace bamba::cuda {
namespace {

constexpr int kMaxK = 8;

template <typename T>
__global__ void conv_out_kernel(T* out, int64_t ldo, const T* xBC, int64_t ldx, PView w, PView bias,
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
  out[int64_t(t) * ldo + c] = from_f<T>(silu_f(acc));
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

// Decode: T == S, so token s is sequence s's only new token. Same summation order as conv_out_kernel (so the
// same result to the bit), and the window after the step is [old window[1:] | x].
template <typename T>
__global__ void conv_decode_kernel(T* out, int64_t ldo, const T* xBC, int64_t ldx, PView w, PView bias,
                                   float* conv_state, int CD, int K, DevBatch b) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  const int s = blockIdx.y, W = K - 1;
  float wk[kMaxK], acc = 0.f;  // taps and bias: loaded before pdl_wait (weights do not depend on earlier kernels)
#pragma unroll
  for (int k = 0; k < kMaxK; ++k) wk[k] = c < CD && k < K ? ld_param(w, int64_t(c) * K + k) : 0.f;
  if (c < CD && bias.p) acc = ld_param(bias, c);
  pdl_wait();
  pdl_trigger();
  if (c >= CD) return;
  const bool cont = b.past_len[s] > 0;
  float* state = conv_state + int64_t(b.slot[s]) * W * CD + c;  // column c of [W, CD]
  float win[kMaxK];                                              // [old window | x], oldest first
#pragma unroll
  for (int k = 0; k < kMaxK; ++k)
    if (k < W) win[k] = cont ? state[int64_t(k) * CD] : 0.f;
  const float xv = to_f(xBC[int64_t(s) * ldx + c]);
#pragma unroll
  for (int k = 0; k < kMaxK; ++k) {
    if (k >= K) break;
    acc += wk[k] * (k < W ? win[k] : xv);
  }
  out[int64_t(s) * ldo + c] = from_f<T>(silu_f(acc));
#pragma unroll
  for (int k = 0; k < kMaxK; ++k)
    if (k < W) state[int64_t(k) * CD] = k + 1 < W ? win[k + 1] : xv;
}

}  // namespace

template <typename T>
void conv1d_silu(cudaStream_t st, T* out, int64_t ldo, const T* xBC, int64_t ldx, PView w, PView bias,
                 float* conv_state, int64_t CD, int64_t K, const DevBatch& b, int max_seq_len) {
  if (K < 1 || K > kMaxK) fail("cuda conv1d: d_conv ", K, " is outside 1..", kMaxK);
  if (b.T == 0) return;
  if (b.T == b.S) {
    launch_pdl(conv_decode_kernel<T>, dim3(ceil_div(CD, 128), unsigned(b.S)), dim3(128), 0, st, out, ldo, xBC, ldx, w,
               bias, conv_state, int(CD), int(K), b);
    return;
  }
  conv_out_kernel<T><<<dim3(ceil_div(CD, 128), unsigned(b.T)), 128, 0, st>>>(out, ldo, xBC, ldx, w, bias, conv_state,
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
