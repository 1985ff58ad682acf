// Causal depthwise conv1d + bias + SiLU over varlen sequences, reading each sequence's cached window.
// Channels are the fast thread index so a warp reads 32 consecutive channels of one token row (coalesced); the
// K taps walk back over rows, through the slot's conv state for the first K-1 tokens of a continuing sequence. The new window is written by a second kernel so that no thread overwrites a
// state value another thread of the first kernel still reads.
// Decode steps (one token per sequence) take one kernel instead: thread per (sequence, channel) reads its window
// column into registers, writes the output and the shifted column; no other thread touches that column.
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
    const float* state = conv_state + int64_t(max(b.slot[s], 0)) * W * CD;  // [W, CD] (read only if cont)
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

// The same with E = 16 / sizeof(T) channels per thread moved as 16-byte vectors (CD, ldx, ldo multiples of E,
// aligned pointers: every Bamba shape). A run whose window lies inside one sequence (all but the first run of
// each sequence) slides over registers with no per-element test; the others take the token-by-token path.
// (A single path with the boundary tests inside the unrolled loops was 1.7× slower than the scalar kernel.)
template <typename T, int KM>  // KM: taps the registers are sized for (K <= KM)
__global__ void conv_out_vec_kernel(T* out, int64_t ldo, const T* xBC, int64_t ldx, PView w, PView bias,
                                    const float* conv_state, int CD, int K, DevBatch b) {
  constexpr int E = 16 / sizeof(T);
  const int c0 = (blockIdx.x * blockDim.x + threadIdx.x) * E;
  const int t0 = blockIdx.y * kRun, t_last = min(t0 + kRun, b.T) - 1;
  if (c0 >= CD) return;
  const int W = K - 1;
  float wk[E][KM], b0[E];
#pragma unroll
  for (int e = 0; e < E; ++e) {
    b0[e] = bias.p ? ld_param(bias, c0 + e) : 0.f;
#pragma unroll
    for (int k = 0; k < KM; ++k) wk[e][k] = k < K ? ld_param(w, int64_t(c0 + e) * K + k) : 0.f;
  }
  auto load = [&](int row, float (&v)[E]) {
    const uint4 rv = *reinterpret_cast<const uint4*>(xBC + int64_t(row) * ldx + c0);
    const T* rx = reinterpret_cast<const T*>(&rv);
#pragma unroll
    for (int e = 0; e < E; ++e) v[e] = to_f(rx[e]);
  };
  auto store = [&](int t, const float (&acc)[E]) {
    uint4 ov;
    T* o = reinterpret_cast<T*>(&ov);
#pragma unroll
    for (int e = 0; e < E; ++e) o[e] = from_f<T>(silu_f(acc[e]));
    *reinterpret_cast<uint4*>(out + int64_t(t) * ldo + c0) = ov;
  };
  const int s = b.seq_of[t0];
  if (b.seq_of[t_last] == s && t0 - W >= b.seq_start[s]) {  // block-uniform
    float acc[kRun][E];
#pragma unroll
    for (int u = 0; u < kRun; ++u)
#pragma unroll
      for (int e = 0; e < E; ++e) acc[u][e] = b0[e];
    // Input row m of the run (row t0 - W + m) feeds token u through tap k = m - u.
#pragma unroll
    for (int m = 0; m < kRun + KM - 1; ++m) {
      if (m >= W + (t_last - t0) + 1) break;
      float v[E];
      load(t0 - W + m, v);
#pragma unroll
      for (int u = 0; u < kRun; ++u) {
        const int k = m - u;
        if (k < 0 || k >= K) continue;
#pragma unroll
        for (int e = 0; e < E; ++e) acc[u][e] += wk[e][k] * v[e];
      }
    }
#pragma unroll
    for (int u = 0; u < kRun; ++u)
      if (t0 + u <= t_last) store(t0 + u, acc[u]);
    return;
  }
  for (int t = t0; t <= t_last; ++t) {
    const int st = b.seq_of[t], start = b.seq_start[st];
    const bool cont = b.past_len[st] > 0;
    const float* state = conv_state + int64_t(max(b.slot[st], 0)) * W * CD + c0;  // [W, CD] from c0 (if cont)
    float acc[E];
#pragma unroll
    for (int e = 0; e < E; ++e) acc[e] = b0[e];
#pragma unroll
    for (int k = 0; k < KM; ++k) {  // compile-time k keeps wk in registers
      if (k >= K) break;
      const int row = t - W + k;
      float v[E];
      if (row >= start) load(row, v);
      else
#pragma unroll
        for (int e = 0; e < E; ++e) v[e] = cont ? state[int64_t(W + row - start) * CD + e] : 0.f;
#pragma unroll
      for (int e = 0; e < E; ++e) acc[e] += wk[e][k] * v[e];
    }
    store(t, acc);
  }
}

// Window after the step: the last W inputs of [old window | new tokens]. Thread per (sequence, channel).
template <typename T>
__global__ void conv_state_kernel(const T* xBC, int64_t ldx, float* conv_state, int CD, int K, DevBatch b) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  const int s = blockIdx.y;
  if (c >= CD || b.slot[s] < 0) return;  // slot -1: a fresh sequence whose window is not kept
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

// Per-position windows (speculative decoding): thread per (token t with state_after[t] >= 0, channel), writing
// the last W inputs up to and including t (through the slot's old window for the first ones) into slot
// state_after[t]. Runs before conv_state_kernel rewrites the old window.
template <typename T>
__global__ void conv_keep_states_kernel(const T* xBC, int64_t ldx, float* conv_state, int CD, int K, DevBatch b) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  const int t = blockIdx.y;
  if (c >= CD) return;
  const int keep = b.state_after[t];
  if (keep < 0) return;
  const int s = b.seq_of[t], start = b.seq_start[s], W = K - 1;
  const bool cont = b.past_len[s] > 0;
  const float* old = conv_state + int64_t(max(b.slot[s], 0)) * W * CD;  // (read only if cont)
  float* dst = conv_state + int64_t(keep) * W * CD;
  for (int w = 0; w < W; ++w) {
    const int row = t - W + 1 + w;
    const float v = row >= start ? to_f(xBC[int64_t(row) * ldx + c]) : cont ? old[int64_t(W + row - start) * CD + c] : 0.f;
    dst[int64_t(w) * CD + c] = v;
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
  const bool cont = b.past_len[s] > 0, keep = b.slot[s] >= 0;  // keep: the window goes back (slot -1: fresh, not kept)
  float* state = conv_state + int64_t(max(b.slot[s], 0)) * W * CD + c;  // column c of [W, CD]
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
    if (keep && k < W) state[int64_t(k) * CD] = k + 1 < W ? win[k + 1] : xv;
}

}  // namespace

template <typename T>
void conv1d_silu(cudaStream_t st, T* out, int64_t ldo, const T* xBC, int64_t ldx, PView w, PView bias,
                 float* conv_state, int64_t CD, int64_t K, const DevBatch& b, int max_seq_len) {
  if (K < 1 || K > kMaxK) fail("cuda conv1d: d_conv ", K, " is outside 1..", kMaxK);
  if (b.T == 0) return;
  if (b.T == b.S && !b.state_after) {  // decode: one kernel, window column in registers
    launch_pdl(conv_decode_kernel<T>, dim3(ceil_div(CD, 128), unsigned(b.S)), dim3(128), 0, st, out, ldo, xBC, ldx, w,
               bias, conv_state, int(CD), int(K), b);
    return;
  }
  constexpr int E = 16 / sizeof(T);
  if (CD % E == 0 && ldx % E == 0 && ldo % E == 0 && aligned16(xBC) && aligned16(out)) {
    const dim3 grid(ceil_div(CD / E, 64), ceil_div(b.T, kRun));
    if (K <= 4)  // Bamba and its relatives: half the weight registers of the general case
      conv_out_vec_kernel<T, 4><<<grid, 64, 0, st>>>(out, ldo, xBC, ldx, w, bias, conv_state, int(CD), int(K), b);
    else
      conv_out_vec_kernel<T, kMaxK><<<grid, 64, 0, st>>>(out, ldo, xBC, ldx, w, bias, conv_state, int(CD), int(K), b);
  } else {
    conv_out_kernel<T><<<dim3(ceil_div(CD, 128), ceil_div(b.T, kRun)), 128, 0, st>>>(out, ldo, xBC, ldx, w, bias,
                                                                                     conv_state, int(CD), int(K), b);
  }
  CUDA_LAUNCH_CHECK();
  if (K > 1 && b.state_after) {
    conv_keep_states_kernel<T><<<dim3(ceil_div(CD, 128), unsigned(b.T)), 128, 0, st>>>(xBC, ldx, conv_state, int(CD),
                                                                                       int(K), b);
    CUDA_LAUNCH_CHECK();
  }
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
