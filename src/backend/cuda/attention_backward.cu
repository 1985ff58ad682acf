// Causal attention's backward (grad_kernels.h attention_backward, the CPU twin), flash-style: the softmax rows
// are recomputed from q and k, never stored as [T, T]. Three passes, a warp per row, lanes over the head dimension
// (d = lane + 32 j), keys and queries walked in index order (so the bits are fixed):
//   1. per (query t, head h): lse_t = log Σ_u exp(s_tu) and δ_t = Σ_u p_tu (dO_t · v_u)  (online, one walk)
//   2. per (query t, head h): dq_t = scale Σ_u p_tu (dO_t · v_u − δ_t) k_u
//   3. per (key u, KV head): dk_u = scale Σ_{h in group} Σ_{t ≥ u} p_tu (dO_t · v_u − δ_t) q_t, dv_u = Σ p_tu dO_t
// with s_tu = scale q_t · k_u over the keys of t's own sequence. qkv holds q and k rotated (the forward left them
// so); dq and dk are rotated back (RoPE is a rotation: its input gradient is the output gradient turned by −angle)
// before they are written. CUDA cores, fp32 throughout: fp32 compute's form, and bf16's with BAMBA_ATTN_BWD=plain;
// bf16 otherwise takes the tensor-core tiles of attention_backward_mma.cu (BAMBA_ATTN_BWD=wmma: their older form).
#include <type_traits>

#include "backend/cuda/attention_backward_mma.cuh"
#include "backend/cuda/kernels.cuh"

namespace bamba::cuda {
namespace {

constexpr int kWarps = 4, kMaxJ = 8;  // head_dim ≤ 256

struct View {
  int nq, nkv, dh, ldq;
  float scale;
};

template <typename T>
__device__ __forceinline__ void load_row(float (&r)[kMaxJ], const T* p, int dh) {
  const int lane = threadIdx.x & 31;
#pragma unroll
  for (int j = 0; j < kMaxJ; ++j) {
    const int d = lane + 32 * j;
    r[j] = d < dh ? to_f(p[d]) : 0.f;
  }
}
template <typename T>
__device__ __forceinline__ float dot_row(const float (&a)[kMaxJ], const T* p, int dh) {
  const int lane = threadIdx.x & 31;
  float s = 0.f;
#pragma unroll
  for (int j = 0; j < kMaxJ; ++j) {
    const int d = lane + 32 * j;
    if (d < dh) s += a[j] * to_f(p[d]);
  }
  return warp_sum(s);
}

// Writes acc (a gradient w.r.t. a rotated head vector) rotated back by −angle(pos), through the warp's row of
// shared memory `sh` [dh].
template <typename T>
__device__ void store_unrotated(T* dst, const float (&acc)[kMaxJ], float* sh, int dh, int rot, float pos,
                                const float* inv_freq) {
  const int lane = threadIdx.x & 31, half = rot / 2;
#pragma unroll
  for (int j = 0; j < kMaxJ; ++j)
    if (lane + 32 * j < dh) sh[lane + 32 * j] = acc[j];
  __syncwarp();
  for (int d = lane; d < dh; d += 32) {
    float v = sh[d];
    if (d < rot) {
      float si, co;
      sincosf(pos * inv_freq[d % half], &si, &co);
      v = d < half ? sh[d] * co + sh[d + half] * si : sh[d] * co - sh[d - half] * si;
    }
    dst[d] = from_f<T>(v);
  }
  __syncwarp();
}

// Pass 1: stats [T, nq, 2] = (lse, δ)
template <typename T>
__global__ void __launch_bounds__(kWarps * 32) attn_stats_kernel(const T* qkv, const T* dout, int64_t ldo, View v,
                                                                 DevBatch b, float* stats) {
  const int w = threadIdx.x >> 5, t = blockIdx.x, h = blockIdx.y * kWarps + w;
  if (h >= v.nq) return;
  const int s = b.seq_of[t], t0 = b.seq_start[s], kh = h / (v.nq / v.nkv);
  float q[kMaxJ], go[kMaxJ];
  load_row(q, qkv + int64_t(t) * v.ldq + h * v.dh, v.dh);
  load_row(go, dout + int64_t(t) * ldo + h * v.dh, v.dh);
  float m = -INFINITY, l = 0.f, acc = 0.f;
  for (int u = t0; u <= t; ++u) {
    const T* row = qkv + int64_t(u) * v.ldq;
    const float sc = dot_row(q, row + (v.nq + kh) * v.dh, v.dh) * v.scale;
    const float dp = dot_row(go, row + (v.nq + v.nkv + kh) * v.dh, v.dh);
    const float mn = fmaxf(m, sc), f = expf(m - mn), e = expf(sc - mn);
    l = l * f + e;
    acc = acc * f + e * dp;
    m = mn;
  }
  if ((threadIdx.x & 31) == 0) {
    stats[(int64_t(t) * v.nq + h) * 2] = m + logf(l);
    stats[(int64_t(t) * v.nq + h) * 2 + 1] = acc / l;
  }
}

// Pass 2: dq
template <typename T>
__global__ void __launch_bounds__(kWarps * 32) attn_dq_kernel(T* dqkv, int64_t lddq, const T* qkv, const T* dout,
                                                              int64_t ldo, View v, int rot, const float* inv_freq,
                                                              DevBatch b, const float* stats) {
  __shared__ float sh[kWarps][kMaxJ * 32];
  const int w = threadIdx.x >> 5, t = blockIdx.x, h = blockIdx.y * kWarps + w;
  if (h >= v.nq) return;
  const int s = b.seq_of[t], t0 = b.seq_start[s], kh = h / (v.nq / v.nkv);
  float q[kMaxJ], go[kMaxJ], dq[kMaxJ] = {};
  load_row(q, qkv + int64_t(t) * v.ldq + h * v.dh, v.dh);
  load_row(go, dout + int64_t(t) * ldo + h * v.dh, v.dh);
  const float lse = stats[(int64_t(t) * v.nq + h) * 2], delta = stats[(int64_t(t) * v.nq + h) * 2 + 1];
  const int lane = threadIdx.x & 31;
  for (int u = t0; u <= t; ++u) {
    const T* row = qkv + int64_t(u) * v.ldq;
    const T* k = row + (v.nq + kh) * v.dh;
    const float p = expf(dot_row(q, k, v.dh) * v.scale - lse);
    const float ds = p * (dot_row(go, row + (v.nq + v.nkv + kh) * v.dh, v.dh) - delta) * v.scale;
#pragma unroll
    for (int j = 0; j < kMaxJ; ++j)
      if (lane + 32 * j < v.dh) dq[j] += ds * to_f(k[lane + 32 * j]);
  }
  store_unrotated(dqkv + int64_t(t) * lddq + h * v.dh, dq, sh[w], v.dh, rot, float(b.positions[t]), inv_freq);
}

// Pass 3: dk, dv of key u, KV head kh
template <typename T>
__global__ void __launch_bounds__(kWarps * 32) attn_dkv_kernel(T* dqkv, int64_t lddq, const T* qkv, const T* dout,
                                                               int64_t ldo, View v, int rot, const float* inv_freq,
                                                               DevBatch b, const float* stats) {
  __shared__ float sh[kWarps][kMaxJ * 32];
  const int w = threadIdx.x >> 5, u = blockIdx.x, kh = blockIdx.y * kWarps + w;
  if (kh >= v.nkv) return;
  const int s = b.seq_of[u], t1 = b.seq_start[s + 1], rep = v.nq / v.nkv;
  float k[kMaxJ], vv[kMaxJ], dk[kMaxJ] = {}, dv[kMaxJ] = {};
  load_row(k, qkv + int64_t(u) * v.ldq + (v.nq + kh) * v.dh, v.dh);
  load_row(vv, qkv + int64_t(u) * v.ldq + (v.nq + v.nkv + kh) * v.dh, v.dh);
  const int lane = threadIdx.x & 31;
  for (int h = kh * rep; h < (kh + 1) * rep; ++h)
    for (int t = u; t < t1; ++t) {
      const T* q = qkv + int64_t(t) * v.ldq + h * v.dh;
      const T* go = dout + int64_t(t) * ldo + h * v.dh;
      const float lse = stats[(int64_t(t) * v.nq + h) * 2], delta = stats[(int64_t(t) * v.nq + h) * 2 + 1];
      const float p = expf(dot_row(k, q, v.dh) * v.scale - lse);
      const float ds = p * (dot_row(vv, go, v.dh) - delta) * v.scale;
#pragma unroll
      for (int j = 0; j < kMaxJ; ++j)
        if (lane + 32 * j < v.dh) {
          dk[j] += ds * to_f(q[lane + 32 * j]);
          dv[j] += p * to_f(go[lane + 32 * j]);
        }
    }
  T* drow = dqkv + int64_t(u) * lddq;
  store_unrotated(drow + (v.nq + kh) * v.dh, dk, sh[w], v.dh, rot, float(b.positions[u]), inv_freq);
#pragma unroll
  for (int j = 0; j < kMaxJ; ++j)
    if (lane + 32 * j < v.dh) drow[(v.nq + v.nkv + kh) * v.dh + lane + 32 * j] = from_f<T>(dv[j]);
}

}  // namespace

size_t attention_backward_scratch_floats(const AttnArgs& a, const DevBatch& b) { return size_t(b.T) * a.nq * 2; }

template <typename T>
void attention_backward(cudaStream_t st, T* dqkv, int64_t lddq, const T* dout, int64_t ldo, const AttnArgs& a,
                        const DevBatch& b, float* scratch) {
  if (b.T == 0) return;
  if (a.dh > 32 * kMaxJ) fail("cuda attention_backward: head_dim ", a.dh, " > ", 32 * kMaxJ);
  if (a.rot % 2 || a.rot > a.dh) fail("cuda attention_backward: rotary_dim ", a.rot, " for head_dim ", a.dh);
  if constexpr (std::is_same_v<T, bf16>)
    if (attention_backward_mma_takes(a, b)) return attention_backward_mma(st, dqkv, lddq, dout, ldo, a, b, scratch);
  const View v{a.nq, a.nkv, a.dh, int(a.ldq), a.scale};
  const T* qkv = static_cast<const T*>(a.qkv);
  attn_stats_kernel<T><<<dim3(unsigned(b.T), ceil_div(a.nq, kWarps)), kWarps * 32, 0, st>>>(qkv, dout, ldo, v, b, scratch);
  CUDA_LAUNCH_CHECK();
  attn_dq_kernel<T><<<dim3(unsigned(b.T), ceil_div(a.nq, kWarps)), kWarps * 32, 0, st>>>(dqkv, lddq, qkv, dout, ldo, v,
                                                                                          a.rot, a.inv_freq, b, scratch);
  CUDA_LAUNCH_CHECK();
  attn_dkv_kernel<T><<<dim3(unsigned(b.T), ceil_div(a.nkv, kWarps)), kWarps * 32, 0, st>>>(dqkv, lddq, qkv, dout, ldo,
                                                                                            v, a.rot, a.inv_freq, b,
                                                                                            scratch);
  CUDA_LAUNCH_CHECK();
}

#define INST(T)                                                                                                 \
  template void attention_backward<T>(cudaStream_t, T*, int64_t, const T*, int64_t, const AttnArgs&, const DevBatch&, \
                                      float*);
BAMBA_CUDA_DTYPES(INST)
#undef INST

}  // namespace bamba::cuda
