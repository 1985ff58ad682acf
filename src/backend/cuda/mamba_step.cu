// A Mamba mixer's decode step as one kernel (Backend::mamba_step, one token per sequence): the causal conv1d +
// SiLU with its window update, the SSD state update S = exp(Δ A) S + Δ x Bᵀ and y = S C + D x, the gate
// y · silu(z) and the gated RMSNorm — what conv1d.cu's decode kernel, ssd_step.cu and norm.cu's gated norm do in
// three launches, each with its own ramp, tail and dependency wait (29 of each per Bamba-9B decode step).
//
// A block owns kRows = 32 rows p of one head h of one sequence s (grid S × nh × P/32: 256 blocks of 512 threads
// at batch 1, at most 64 registers a thread so that they are one wave), 16 warps of 2 state rows; lane l holds
// state columns 4l..4l+3 of a row as one 16-byte (fp32) or 8-byte (bf16) vector, as in ssd_step.cu. A block first
// convolves what it reads into shared memory: its 32 x channels and its group's B and C (2N channels, recomputed by
// every block of the group: N·K multiply-adds on L2 hits, so no block waits for another). The conv windows of the
// x channels belong to this block alone and are shifted at once; those of B and C are read by every block of the
// sequence, so the sequence's last block shifts them.
//
// The norm's statistics span a group of whole heads (Bamba-9B: all 8,192 channels of a token): each block writes
// its gated values g = y · silu(z) (fp32) to a scratch row and the sum of their squares (in row order) to a
// partial, then draws a ticket (an atomic counter per sequence, after a __threadfence). The block that draws the
// last ticket sums each group's partials in block order, normalises the row — its g and weights already loading
// while the sums reduce — and resets the counter for the next launch. Which block is last varies, what it
// computes does not: the output is deterministic. It differs from the three kernels' only in the order of the
// norm's sum of squares (the conv output and y are rounded to T where those kernels store them).
#include "backend/cuda/kernels.cuh"

namespace bamba::cuda {
namespace {

constexpr int kWarps = 16, kRowsPerWarp = 2, kThreads = kWarps * 32, kRows = kWarps * kRowsPerWarp;
constexpr int kTaps = 4;   // d_conv of every supported family; larger K: the three kernels
constexpr int kMaxN = 128;  // d_state: one column group of 4 per lane
constexpr int kConvPer = (kRows + 2 * kMaxN + kThreads - 1) / kThreads;  // conv channels per thread (1)
constexpr int kHold = 4;    // float4s of g (and their weights) a thread loads while the norm's sums reduce

// 4 state values as floats: one 16-byte (fp32) or 8-byte (bf16) streaming access, as in ssd_step.cu.
struct Vec4 {
  float v[4];
};
__device__ __forceinline__ Vec4 load4(const float* p) {
  const float4 f = __ldcs(reinterpret_cast<const float4*>(p));
  return {{f.x, f.y, f.z, f.w}};
}
__device__ __forceinline__ Vec4 load4(const bf16* p) {
  const uint2 u = __ldcs(reinterpret_cast<const uint2*>(p));
  const float2 a = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&u.x));
  const float2 b = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&u.y));
  return {{a.x, a.y, b.x, b.y}};
}
// The same through L2 only (ld.global.cg): for loads before pdl_wait, which must not hit a line an SM's L1 kept
// from an earlier step.
__device__ __forceinline__ Vec4 load4_l2(const float* p) {
  const float4 f = __ldcg(reinterpret_cast<const float4*>(p));
  return {{f.x, f.y, f.z, f.w}};
}
__device__ __forceinline__ Vec4 load4_l2(const bf16* p) {
  const uint2 u = __ldcg(reinterpret_cast<const uint2*>(p));
  const float2 a = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&u.x));
  const float2 b = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&u.y));
  return {{a.x, a.y, b.x, b.y}};
}
__device__ __forceinline__ void store4(float* p, const Vec4& v) {
  __stcs(reinterpret_cast<float4*>(p), make_float4(v.v[0], v.v[1], v.v[2], v.v[3]));
}
__device__ __forceinline__ void store4(bf16* p, const Vec4& v) {
  const __nv_bfloat162 a = __floats2bfloat162_rn(v.v[0], v.v[1]), b = __floats2bfloat162_rn(v.v[2], v.v[3]);
  uint2 u;
  u.x = *reinterpret_cast<const unsigned*>(&a);
  u.y = *reinterpret_cast<const unsigned*>(&b);
  __stcs(reinterpret_cast<uint2*>(p), u);
}

// 4 output values, stored plainly (out_proj reads them next, from L2).
__device__ __forceinline__ void store_out4(float* p, const Vec4& v) {
  *reinterpret_cast<float4*>(p) = make_float4(v.v[0], v.v[1], v.v[2], v.v[3]);
}
__device__ __forceinline__ void store_out4(bf16* p, const Vec4& v) {
  const __nv_bfloat162 a = __floats2bfloat162_rn(v.v[0], v.v[1]), b = __floats2bfloat162_rn(v.v[2], v.v[3]);
  uint2 u;
  u.x = *reinterpret_cast<const unsigned*>(&a);
  u.y = *reinterpret_cast<const unsigned*>(&b);
  *reinterpret_cast<uint2*>(p) = u;
}

// Requires (checked by the launcher) N % 4 == 0, N <= 128, nh % G == 0, 1 <= K <= kTaps; with a norm, group a
// multiple of P and of 4 dividing I, out 16-byte aligned with ldo % 4 == 0.
template <typename T, typename ST>
__global__ void __launch_bounds__(kThreads, 2) mamba_step_kernel(MambaStepArgs a, DevBatch b) {
  __shared__ float conv_sh[kRows + 2 * kMaxN];  // post-conv values (rounded to T): x rows, B, C
  __shared__ float part_sh[kWarps];
  __shared__ float red_sh[32];
  __shared__ unsigned ticket_sh;
  const int s = blockIdx.x, h = blockIdx.y, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int P = a.P, N = a.N, G = a.G, I = a.nh * P, CD = I + 2 * G * N, K = a.K, W = K - 1;
  const int g = h / (a.nh / G), r0 = blockIdx.z * kRows, nx = min(kRows, P - r0), n_conv = nx + 2 * N;
  const bool norm = a.norm_w.p != nullptr;
  // xBC column of this block's conv channel i: its x channels h·P + r0 + i, then group g's B, then its C.
  auto conv_col = [&](int i) {
    return i < nx ? h * P + r0 + i : i < nx + N ? I + g * N + (i - nx) : I + G * N + g * N + (i - nx - N);
  };
  // Weights before pdl_wait (common.cuh): the head's parameters and this thread's conv taps and bias.
  const float A = -expf(ld_param(a.A_log, h)), Dh = ld_param(a.D, h), dtb = ld_param(a.dt_bias, h);
  float wk[kConvPer][kTaps], acc0[kConvPer];
#pragma unroll
  for (int u = 0; u < kConvPer; ++u) {
    const int i = threadIdx.x + u * kThreads;
    const int c = i < n_conv ? conv_col(i) : 0;
    acc0[u] = i < n_conv && a.conv_b.p ? ld_param(a.conv_b, c) : 0.f;
#pragma unroll
    for (int k = 0; k < kTaps; ++k) wk[u][k] = i < n_conv && k < K ? ld_param(a.conv_w, int64_t(c) * K + k) : 0.f;
  }
  // The state rows first: the bulk of the bytes, and independent of the conv. With a.early_state
  // (BAMBA_CUDA_MAMBA_STEP=2, a measurement) they are loaded before pdl_wait, overlapping in_proj's tail. That
  // bends common.cuh's rule on purpose: the state is written only by this layer's kernel of the previous step,
  // and every kernel of a decode step triggers its dependents after its own pdl_wait, so when this kernel
  // starts every kernel two launches back has completed; the batch metadata was copied before the step's first
  // kernel. The loads go through L2 (an SM's L1 may hold a line from an earlier step).
  const bool cont = b.past_len[s] > 0;
  const int slot = b.slot[s];
  ST* state = static_cast<ST*>(a.ssm_state) + (int64_t(slot) * a.nh + h) * P * N;  // [P, N]
  const int p0 = r0 + warp * kRowsPerWarp;
  Vec4 st[kRowsPerWarp];
  auto load_state = [&](bool l2) {
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      const int p = p0 + r, n = 4 * lane;
      if (cont && p < P && n < N) st[r] = l2 ? load4_l2(state + int64_t(p) * N + n) : load4(state + int64_t(p) * N + n);
      else st[r] = {{0.f, 0.f, 0.f, 0.f}};
    }
  };
  if (a.early_state) load_state(true);
  pdl_wait();
  pdl_trigger();
  if (!a.early_state) load_state(false);
  const T* row = static_cast<const T*>(a.zxbcdt) + int64_t(s) * a.ldp;  // token s = sequence s's only new token
  const T* xbc = row + I;                                                // pre-conv x | B | C, then dt

  // The conv (conv1d.cu's decode kernel, the same summation): window [old | x], oldest first.
  float* cstate = a.conv_state + int64_t(slot) * W * CD;  // [W, CD]
#pragma unroll
  for (int u = 0; u < kConvPer; ++u) {
    const int i = threadIdx.x + u * kThreads;
    if (i >= n_conv) break;
    const int c = conv_col(i);
    float win[kTaps];
#pragma unroll
    for (int k = 0; k < kTaps; ++k)
      if (k < W) win[k] = cont ? cstate[int64_t(k) * CD + c] : 0.f;
    const float xv = to_f(xbc[c]);
    float acc = acc0[u];
#pragma unroll
    for (int k = 0; k < kTaps; ++k) {
      if (k >= K) break;
      acc += wk[u][k] * (k < W ? win[k] : xv);
    }
    conv_sh[i] = to_f(from_f<T>(silu_f(acc)));  // as stored by the conv kernel and read back by the SSD step
    if (i < nx) {  // an x channel: this thread is the only reader of its window
#pragma unroll
      for (int k = 0; k < kTaps; ++k)
        if (k < W) cstate[int64_t(k) * CD + c] = k + 1 < W ? win[k + 1] : xv;
    }
  }
  __syncthreads();

  // The SSD step (ssd_step.cu's arithmetic), then the gate.
  const float delta = fminf(fmaxf(softplus_f(to_f(xbc[CD + h]) + dtb), a.dt_min), a.dt_max);
  const float dA = expf(delta * A);
  float Bv[4], Cv[4];
#pragma unroll
  for (int e = 0; e < 4; ++e) {
    const int n = 4 * lane + e;
    Bv[e] = n < N ? conv_sh[nx + n] : 0.f;
    Cv[e] = n < N ? conv_sh[nx + N + n] : 0.f;
  }
  float sq = 0.f;  // Σ g² over this warp's rows (lane 0)
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int p = p0 + r;
    if (p >= P) break;  // warp-uniform
    const float xp = conv_sh[p - r0], dx = delta * xp;
    float acc = 0.f;
    if (4 * lane < N) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        st[r].v[e] = dA * st[r].v[e] + dx * Bv[e];
        acc += Cv[e] * st[r].v[e];
      }
      store4(state + int64_t(p) * N + 4 * lane, st[r]);
    }
    acc = warp_sum(acc);
    if (lane == 0) {
      const int c = h * P + p;
      const float gv = to_f(from_f<T>(acc + Dh * xp)) * silu_f(to_f(row[c]));  // y as stored, times silu(z)
      if (norm) {
        a.gated[int64_t(s) * I + c] = gv;
        sq += gv * gv;
      } else {
        static_cast<T*>(a.out)[int64_t(s) * a.ldo + c] = from_f<T>(gv);
      }
    }
  }
  if (norm) {  // the block's partial: its warps' sums in order
    if (lane == 0) part_sh[warp] = sq;
    __syncthreads();
    if (threadIdx.x == 0) {
      float ps = 0.f;
#pragma unroll
      for (int w = 0; w < kWarps; ++w) ps += part_sh[w];
      a.partials[(int64_t(s) * a.nh + h) * gridDim.z + blockIdx.z] = ps;
    }
  }

  // The ticket: the last of the sequence's blocks goes on.
  __threadfence();  // this block's g and partial visible device-wide before its ticket is
  __syncthreads();
  if (threadIdx.x == 0) ticket_sh = atomicAdd(&a.tickets[s], 1u);
  __syncthreads();
  if (ticket_sh != gridDim.y * gridDim.z - 1) return;
  __threadfence();

  // B's and C's windows, every group's: all of the sequence's blocks have read them. The first channel's loads go
  // out now and its stores at the end, so they overlap the norm.
  const int n_bc = 2 * G * N;
  float win0[kTaps], x0 = 0.f;
  if (threadIdx.x < n_bc) {
#pragma unroll
    for (int k = 0; k < kTaps; ++k)
      if (k < W) win0[k] = cont ? cstate[int64_t(k) * CD + I + threadIdx.x] : 0.f;
    x0 = to_f(xbc[I + threadIdx.x]);
  }
  for (int i = threadIdx.x + kThreads; i < n_bc; i += kThreads) {  // more than kThreads of them (G > 1)
    const int c = I + i;
    float win[kTaps];
#pragma unroll
    for (int k = 0; k < kTaps; ++k)
      if (k < W) win[k] = cont ? cstate[int64_t(k) * CD + c] : 0.f;
    const float xv = to_f(xbc[c]);
#pragma unroll
    for (int k = 0; k < kTaps; ++k)
      if (k < W) cstate[int64_t(k) * CD + c] = k + 1 < W ? win[k + 1] : xv;
  }

  if (norm) {  // the gated RMSNorm of row s, group by group
    const int nz = gridDim.z, parts = a.group / P * nz;
    const float* gs = a.gated + int64_t(s) * I;                          // [I]
    const float* ps = a.partials + int64_t(s) * a.nh * nz;              // [nh, nz]
    T* o = static_cast<T*>(a.out) + int64_t(s) * a.ldo;
    for (int base = 0; base < I; base += a.group) {
      const float* pg = ps + int64_t(base / P) * nz;  // the group's blocks, in (head, row block) order
      float ss = 0.f;
      for (int j = threadIdx.x; j < parts; j += kThreads) ss += __ldcg(pg + j);  // (L2: written by other blocks)
      float r = 0.f;
      for (int c0 = base; c0 < base + a.group; c0 += kThreads * 4 * kHold) {
        float4 gv[kHold];
        float wv[kHold][4];
#pragma unroll
        for (int v = 0; v < kHold; ++v) {
          const int j = c0 + (threadIdx.x + v * kThreads) * 4;
          if (j < base + a.group) {
            gv[v] = __ldcg(reinterpret_cast<const float4*>(gs + j));
#pragma unroll
            for (int e = 0; e < 4; ++e) wv[v][e] = ld_param(a.norm_w, j + e);
          }
        }
        if (c0 == base) r = rsqrtf(block_sum(ss, red_sh) / float(a.group) + a.eps);  // (the loads are in flight)
#pragma unroll
        for (int v = 0; v < kHold; ++v) {
          const int j = c0 + (threadIdx.x + v * kThreads) * 4;
          if (j < base + a.group) {
            const Vec4 y = {{wv[v][0] * (gv[v].x * r), wv[v][1] * (gv[v].y * r), wv[v][2] * (gv[v].z * r),
                             wv[v][3] * (gv[v].w * r)}};
            store_out4(o + j, y);
          }
        }
      }
    }
  }
  if (threadIdx.x < n_bc) {
#pragma unroll
    for (int k = 0; k < kTaps; ++k)
      if (k < W) cstate[int64_t(k) * CD + I + threadIdx.x] = k + 1 < W ? win0[k + 1] : x0;
  }
  if (threadIdx.x == 0) a.tickets[s] = 0;  // ready for the next launch (the next layer's, the next step's)
}

}  // namespace

template <typename T, typename ST>
bool mamba_step(cudaStream_t st, const MambaStepArgs& a, const DevBatch& b) {
  const int64_t I = int64_t(a.nh) * a.P;
  if (b.T != b.S || b.T == 0 || b.state_after) return false;
  if (a.N % 4 || a.N > kMaxN || a.G < 1 || a.nh % a.G || a.K < 1 || a.K > kTaps || a.P < 1) return false;
  if (a.norm_w.p && (a.group < a.P || a.group % a.P || a.group % 4 || I % a.group || a.ldo % 4 ||
                     (reinterpret_cast<uintptr_t>(a.out) & 15)))
    return false;
  const dim3 grid(unsigned(b.S), unsigned(a.nh), ceil_div(a.P, kRows));
  launch_pdl(mamba_step_kernel<T, ST>, grid, dim3(kThreads), 0, st, a, b);
  return true;
}

#define INST_ST(T, ST) template bool mamba_step<T, ST>(cudaStream_t, const MambaStepArgs&, const DevBatch&);
#define INST(T) INST_ST(T, float) INST_ST(T, bf16)
BAMBA_CUDA_DTYPES(INST)
#undef INST
#undef INST_ST

}  // namespace bamba::cuda
