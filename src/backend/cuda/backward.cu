// Backward kernels of the small ops: embedding, SwiGLU, RMSNorm (plain, with the residual add, gated) and the
// causal conv1d + SiLU. Row-local work is one block per row with block reductions; parameter gradients are sums
// over rows, taken as per-chunk partials (a fixed span of rows each, in row order) and then a second pass that
// adds the partials in chunk order — so the bits never depend on scheduling (no float atomics).
#include <cstdlib>
#include <cstring>
#include <initializer_list>

#include "backend/cuda/kernels.cuh"

namespace bamba::cuda {
namespace {

constexpr int kRowsPerChunk = 64;  // rows per partial sum of a column reduction
constexpr int kRowThreads = 256;   // one block per row

__device__ __forceinline__ float sigmoid_f(float x) { return 1.f / (1.f + expf(-x)); }
__device__ __forceinline__ float silu_exact(float x) { return x / (1.f + expf(-x)); }
__device__ __forceinline__ float silu_grad_f(float x) {
  const float s = sigmoid_f(x);
  return s * (1.f + x * (1.f - s));
}

// ---- column sums: out[n] += Σ_m f(m, n), f a functor of (row, column). part [chunks, N].
template <typename F>
__global__ void column_partials_kernel(F f, int64_t M, int64_t N, float* part) {
  const int64_t n = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (n >= N) return;
  const int64_t m0 = int64_t(blockIdx.y) * kRowsPerChunk, m1 = min(M, m0 + kRowsPerChunk);
  float acc = 0.f;
  for (int64_t m = m0; m < m1; ++m) acc += f(m, n);
  part[int64_t(blockIdx.y) * N + n] = acc;
}
// out[n] += Σ_c part[c·ldp + n], c ascending
__global__ void column_finish_kernel(const float* part, int64_t chunks, int64_t ldp, int64_t N, float* out) {
  const int64_t n = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (n >= N) return;
  float acc = 0.f;
  for (int64_t c = 0; c < chunks; ++c) acc += part[c * ldp + n];
  out[n] += acc;
}
int64_t chunks_for(int64_t M) { return (M + kRowsPerChunk - 1) / kRowsPerChunk; }

template <typename T>
struct ReadCol {  // f(m, n) = a[m][n]
  const T* a;
  int64_t ld;
  __device__ float operator()(int64_t m, int64_t n) const { return to_f(a[m * ld + n]); }
};

// ---- embedding: one block per (distinct token, column slab); the token's rows are summed in row order.
template <typename T>
__global__ void embed_backward_kernel(float* dtable, int64_t ldt, const T* dout, int64_t ldo, int H,
                                      const int32_t* uniq, const int32_t* start, const int32_t* rows) {
  const int i = blockIdx.x, j = blockIdx.y * blockDim.x + threadIdx.x;
  if (j >= H) return;
  float acc = 0.f;
  for (int k = start[i]; k < start[i + 1]; ++k) acc += to_f(dout[int64_t(rows[k]) * ldo + j]);
  dtable[int64_t(uniq[i]) * ldt + j] += acc;
}

// ---- gated activations, out = act(gate) ⊙ up over gu = [gate | up] (F columns each): one kernel, the activation a
// functor giving the gradients of gate and up from (gate, up, dout) per element.
struct SwigluGrad {
  __device__ void operator()(float g, float u, float d, float& dg, float& du) const {
    dg = d * u * silu_grad_f(g), du = d * silu_exact(g);
  }
};
struct GegluGrad {  // the exact GELU
  __device__ void operator()(float g, float u, float d, float& dg, float& du) const {
    const float cdf = 0.5f * (1.f + erff(g * 0.70710678118654752f));
    const float pdf = 0.39894228040143268f * expf(-0.5f * g * g);  // φ(g)
    dg = d * u * (cdf + g * pdf), du = d * g * cdf;
  }
};
template <typename T, typename Act>
__global__ void gated_act_backward_kernel(T* dgu, int64_t lddg, const T* dout, int64_t ldo, const T* gu, int64_t ldg,
                                          int F) {
  const int64_t r = blockIdx.y;
  for (int j = blockIdx.x * blockDim.x + threadIdx.x; j < F; j += gridDim.x * blockDim.x) {
    const float g = to_f(gu[r * ldg + j]), u = to_f(gu[r * ldg + F + j]), d = to_f(dout[r * ldo + j]);
    float dg, du;
    Act{}(g, u, d, dg, du);
    dgu[r * lddg + j] = from_f<T>(dg);
    dgu[r * lddg + F + j] = from_f<T>(du);
  }
}

template <typename T>
__global__ void relu2_backward_kernel(T* dx, int64_t lddx, const T* dout, int64_t ldo, const T* x, int64_t ldx, int N) {
  const int64_t r = blockIdx.y;
  for (int j = blockIdx.x * blockDim.x + threadIdx.x; j < N; j += gridDim.x * blockDim.x) {
    const float v = to_f(x[r * ldx + j]);
    dx[r * lddx + j] = from_f<T>(v > 0.f ? to_f(dout[r * ldo + j]) * 2.f * v : 0.f);
  }
}

template <typename T>
__global__ void silu_gate_backward_kernel(T* dy, int64_t lddy, T* dz, int64_t lddz, const T* dout, int64_t ldo,
                                         const T* y, int64_t ldy, const T* z, int64_t ldz, int N) {
  const int64_t r = blockIdx.y;
  for (int j = blockIdx.x * blockDim.x + threadIdx.x; j < N; j += gridDim.x * blockDim.x) {
    const float zz = to_f(z[r * ldz + j]), yy = to_f(y[r * ldy + j]), d = to_f(dout[r * ldo + j]);
    dy[r * lddy + j] = from_f<T>(d * silu_exact(zz));
    dz[r * lddz + j] = from_f<T>(d * yy * silu_grad_f(zz));
  }
}

// ---- RMSNorm over groups of `group` columns (group = H: the plain norm). One block per row; for each group:
// r = 1/sqrt(mean(x²) + eps), dx_j = r·g_j − x_j·r³·mean(g·x) with g = dout ⊙ w; rstd [M, H / group] is kept for dw.
// GATED: x = y ⊙ silu(z) (recomputed), and the gradient goes on to dy, dz.
template <typename T, bool GATED>
__global__ void __launch_bounds__(kRowThreads) norm_backward_kernel(T* dx, int64_t lddx, T* dz, int64_t lddz,
                                                                    const T* dout, int64_t ldo, const T* x,
                                                                    int64_t ldx, const T* z, int64_t ldz, PView w,
                                                                    int H, int group, float eps, bool accumulate,
                                                                    float* rstd) {
  __shared__ float sh[32];
  const int64_t row = blockIdx.x;
  auto xv = [&](int j) {
    const float v = to_f(x[row * ldx + j]);
    return GATED ? v * silu_exact(to_f(z[row * ldz + j])) : v;
  };
  for (int a = 0; a < H; a += group) {
    float ss = 0.f, gx = 0.f;
    for (int j = a + threadIdx.x; j < a + group; j += blockDim.x) {
      const float v = xv(j);
      ss += v * v;
      gx += to_f(dout[row * ldo + j]) * ld_param(w, j) * v;
    }
    ss = block_sum(ss, sh);
    gx = block_sum(gx, sh);
    const float r = rsqrtf(ss / float(group) + eps), c = gx * r * r * r / float(group);
    if (threadIdx.x == 0) rstd[row * (H / group) + a / group] = r;
    for (int j = a + threadIdx.x; j < a + group; j += blockDim.x) {
      const float v = xv(j);
      const float g = r * to_f(dout[row * ldo + j]) * ld_param(w, j) - v * c;
      if (GATED) {
        const float zz = to_f(z[row * ldz + j]);
        dx[row * lddx + j] = from_f<T>(g * silu_exact(zz));
        dz[row * lddz + j] = from_f<T>(g * to_f(x[row * ldx + j]) * silu_grad_f(zz));
      } else {
        dx[row * lddx + j] = from_f<T>(accumulate ? to_f(dx[row * lddx + j]) + g : g);
      }
    }
  }
}
template <typename T, bool GATED>
struct NormDw {  // f(m, j) = dout[m][j] · x̂[m][j] (without w)
  const T* dout;
  int64_t ldo;
  const T* x;
  int64_t ldx;
  const T* z;
  int64_t ldz;
  const float* rstd;
  int64_t groups, group;
  __device__ float operator()(int64_t m, int64_t j) const {
    float v = to_f(x[m * ldx + j]);
    if (GATED) v *= silu_exact(to_f(z[m * ldz + j]));
    return to_f(dout[m * ldo + j]) * v * rstd[m * groups + j / group];
  }
};

// ---- conv1d + SiLU. G[t][c] = dout·silu'(pre) (fp32 scratch); dx[s][c] = Σ_k G[s + K−1−k][c]·w[c][k] over the
// outputs of the same sequence; dw[c][k] = Σ_t G[t][c]·x[t − (K−1) + k][c]; dbias[c] = Σ_t G[t][c].
template <typename T>
__global__ void conv_grad_kernel(float* G, const T* dout, int64_t ldo, const T* x, int64_t ldx, PView w, PView bias,
                                 int CD, int K, DevBatch b) {
  const int t = blockIdx.y, t0 = b.seq_start[b.seq_of[t]];
  for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < CD; c += gridDim.x * blockDim.x) {
    float acc = bias.p ? ld_param(bias, c) : 0.f;
    for (int k = 0; k < K; ++k) {
      const int src = t - (K - 1) + k;
      if (src >= t0) acc += ld_param(w, int64_t(c) * K + k) * to_f(x[int64_t(src) * ldx + c]);
    }
    G[int64_t(t) * CD + c] = to_f(dout[int64_t(t) * ldo + c]) * silu_grad_f(acc);
  }
}
template <typename T>
__global__ void conv_dx_kernel(T* dx, int64_t lddx, const float* G, PView w, int CD, int K, DevBatch b) {
  const int s = blockIdx.y, t1 = b.seq_start[b.seq_of[s] + 1];
  for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < CD; c += gridDim.x * blockDim.x) {
    float acc = 0.f;
    for (int k = K - 1; k >= 0; --k) {  // outputs t = s + K−1−k, ascending
      const int t = s + (K - 1) - k;
      if (t < t1) acc += G[int64_t(t) * CD + c] * ld_param(w, int64_t(c) * K + k);
    }
    dx[int64_t(s) * lddx + c] = from_f<T>(acc);
  }
}
template <typename T>
struct ConvDw {  // f(t, c·K + k) = G[t][c] · x[t − (K−1) + k][c] within the sequence
  const float* G;
  const T* x;
  int64_t ldx;
  int CD, K;
  DevBatch b;
  __device__ float operator()(int64_t t, int64_t n) const {
    const int c = int(n / K), k = int(n % K), src = int(t) - (K - 1) + k;
    if (src < b.seq_start[b.seq_of[t]]) return 0.f;
    return G[t * CD + c] * to_f(x[int64_t(src) * ldx + c]);
  }
};

// ---- conv1d + SiLU in one pass (the default; BAMBA_CONV_BWD=split keeps the three kernels above). The split form
// moved ~0.9 GB for a Bamba-9B layer of 4096 tokens (G in fp32 written once and read three times, x read twice,
// an integer division per element of dw) where x, dout in and dx out are 0.2 GB. Here a thread owns E channels
// and a run of kConvRun rows: it walks rows t0 .. t0 + kConvRun + K − 2 once, keeping the last K rows of x and
// of G = dout·silu'(pre) in registers (G of the K − 1 rows past the run are recomputed by the next run's thread:
// (K − 1) / kConvRun extra reads, mostly L2 hits), and
//   pre[t] = bias + Σ_k w_k x[t − (K−1) + k]            (rows of t's sequence only)
//   dx[s]  = Σ_k G[s + K−1−k] w_k                        (once G[s + K − 1] is known, rows of s's sequence only)
//   dw_k, dbias += G[t]·x[t − (K−1) + k], G[t]            (over the run's own rows, in row order).
// The dw/dbias partials of the kConvRunsPerBlock runs of a block are added in shared memory in run order, one
// partial per (block row, channel) goes to scratch, and column_finish adds those in order: no atomics.
constexpr int kConvRun = 32;          // rows per thread
constexpr int kConvLanes = 32;        // blockDim.x: channel groups of E
constexpr int kConvRunsPerBlock = 8;  // blockDim.y: runs of a block
constexpr int kConvAhead = 4;         // rows whose loads a thread issues together

template <typename T, int E>
struct alignas(sizeof(T) * E) ConvVec {
  T v[E];
};

constexpr int kConvBlockRows = kConvRun * kConvRunsPerBlock;  // rows of one dw/dbias partial
int64_t conv_fused_chunks(int64_t T_) { return (T_ + kConvBlockRows - 1) / kConvBlockRows; }

template <typename T, int K, int E>
__global__ void __launch_bounds__(kConvLanes* kConvRunsPerBlock, 2)
    conv_backward_fused_kernel(T* __restrict__ dx, int64_t lddx, float* __restrict__ part, const T* __restrict__ dout,
                               int64_t ldo, const T* __restrict__ x, int64_t ldx, PView w, PView bias, int CD,
                               DevBatch b) {
  using V = ConvVec<T, E>;
  constexpr int NP = K + 1;                 // partials per channel: dw_0 .. dw_{K−1}, dbias
  constexpr int U = kConvRun + K - 1;       // rows a thread walks
  constexpr int NV = kConvLanes * E * NP;   // partials of one run of a block
  __shared__ float red[kConvRunsPerBlock][NV];
  const int lane = threadIdx.x, c0 = (blockIdx.x * kConvLanes + lane) * E;
  const int t0 = (blockIdx.y * kConvRunsPerBlock + threadIdx.y) * kConvRun, T_ = b.T;
  const bool live = c0 < CD && t0 < T_;  // no early return: every thread meets the barrier below
  float wk[E][K], b0[E], dw[E][K], dbs[E];
#pragma unroll
  for (int e = 0; e < E; ++e) {
    b0[e] = live && bias.p ? ld_param(bias, c0 + e) : 0.f;
    dbs[e] = 0.f;
#pragma unroll
    for (int k = 0; k < K; ++k) {
      wk[e][k] = live ? ld_param(w, int64_t(c0 + e) * K + k) : 0.f;
      dw[e][k] = 0.f;
    }
  }
  if (live) {
    // ring slot j holds row t − (K−1) + j after row t: x, G (fp32) and the row's sequence (−1 outside [0, T))
    float xs[K][E], gs[K][E];
    int sq[K];
#pragma unroll
    for (int j = 0; j < K; ++j) {
      const int row = t0 - K + j;  // slot j before the first shift
      sq[j] = j > 0 && row >= 0 ? b.seq_of[row] : -1;
      V v{};
      if (sq[j] >= 0) v = *reinterpret_cast<const V*>(x + int64_t(row) * ldx + c0);
#pragma unroll
      for (int e = 0; e < E; ++e) {
        xs[j][e] = to_f(v.v[e]);
        gs[j][e] = 0.f;
      }
    }
    for (int u0 = 0; u0 < U; u0 += kConvAhead) {
      V xa[kConvAhead], da[kConvAhead];
      int sa[kConvAhead];
#pragma unroll
      for (int q = 0; q < kConvAhead; ++q) {  // the loads first, then the arithmetic
        const int t = t0 + u0 + q;
        const bool in = u0 + q < U && t < T_;
        sa[q] = in ? b.seq_of[t] : -1;
        xa[q] = in ? *reinterpret_cast<const V*>(x + int64_t(t) * ldx + c0) : V{};
        da[q] = in ? *reinterpret_cast<const V*>(dout + int64_t(t) * ldo + c0) : V{};
      }
#pragma unroll
      for (int q = 0; q < kConvAhead; ++q) {
        const int u = u0 + q, t = t0 + u;
        if (u >= U) break;
#pragma unroll
        for (int j = 0; j + 1 < K; ++j) {
          sq[j] = sq[j + 1];
#pragma unroll
          for (int e = 0; e < E; ++e) xs[j][e] = xs[j + 1][e], gs[j][e] = gs[j + 1][e];
        }
        sq[K - 1] = sa[q];
        const bool own = u < kConvRun && t < T_;
#pragma unroll
        for (int e = 0; e < E; ++e) {
          xs[K - 1][e] = to_f(xa[q].v[e]);
          float pre = b0[e];
#pragma unroll
          for (int j = 0; j < K; ++j)
            if (sq[j] == sq[K - 1]) pre += wk[e][j] * xs[j][e];
          const float g = sa[q] >= 0 ? to_f(da[q].v[e]) * silu_grad_f(pre) : 0.f;
          gs[K - 1][e] = g;
          if (own) {
            dbs[e] += g;
#pragma unroll
            for (int j = 0; j < K; ++j)
              if (sq[j] == sq[K - 1]) dw[e][j] += g * xs[j][e];
          }
        }
        const int s = t - (K - 1);  // the row whose dx is now complete
        if (u >= K - 1 && s - t0 < kConvRun && s < T_) {
          V o;
#pragma unroll
          for (int e = 0; e < E; ++e) {
            float acc = 0.f;
#pragma unroll
            for (int j = 0; j < K; ++j)  // outputs s .. s + K − 1, ascending (as conv_dx_kernel)
              if (sq[j] == sq[0]) acc += gs[j][e] * wk[e][K - 1 - j];
            o.v[e] = from_f<T>(acc);
          }
          *reinterpret_cast<V*>(dx + int64_t(s) * lddx + c0) = o;
        }
      }
    }
  }
  float* r = &red[threadIdx.y][lane * E * NP];
#pragma unroll
  for (int e = 0; e < E; ++e) {
#pragma unroll
    for (int k = 0; k < K; ++k) r[e * NP + k] = dw[e][k];
    r[e * NP + K] = dbs[e];
  }
  __syncthreads();
  // part [chunks, CD·K | CD]: the block's sum over its runs, in run order
  const int64_t ldp = int64_t(CD) * NP;
  float* out = part + int64_t(blockIdx.y) * ldp;
  for (int i = threadIdx.y * kConvLanes + lane; i < NV; i += kConvLanes * kConvRunsPerBlock) {
    const int l = i / (E * NP), e = i / NP % E, k = i % NP, c = (blockIdx.x * kConvLanes + l) * E + e;
    if (c >= CD) continue;
    float acc = 0.f;
#pragma unroll
    for (int y = 0; y < kConvRunsPerBlock; ++y) acc += red[y][i];
    out[k < K ? int64_t(c) * K + k : int64_t(CD) * K + c] = acc;
  }
}


// ---- RMSNorm backward with the rows in registers (the default where the shape suits it; BAMBA_NORM_BWD=split keeps
// norm_backward_kernel + column_reduce). The split form reads x (y, z), dout three times — the sums, the gradient,
// and dw's column pass — for one write of dx (dz): 13 row-sized transfers of a Bamba-9B gated norm where 5 are
// needed. Here a block of kNormThreads threads takes kNormRows rows in turn; each thread holds, per row, E = 16
// bytes of each input at kNormThreads·E-column strides (at most kNormIt of them), so a row is read once, and it
// owns the same columns of every row, so it keeps dw's partial over the block's rows (row order) and
// one partial per block goes to scratch for column_finish. The per-group sums: each warp's 32·E columns lie in
// one group (group % (32·E) == 0), warp sums go to shared memory, and warp w adds up groups w, w + 8, ... with
// a fixed pattern.
constexpr int kNormThreads = 256, kNormWarps = kNormThreads / 32;
constexpr int kNormIt = 4;     // 16-byte vectors per thread and input: rows of up to 8192 bf16 / 4096 fp32
constexpr int kNormRows = 16;  // rows per block (one dw partial each)

int64_t norm_fused_chunks(int64_t M) { return (M + kNormRows - 1) / kNormRows; }

template <typename T, bool GATED>
__global__ void __launch_bounds__(kNormThreads, 2)
    norm_backward_fused_kernel(T* __restrict__ dx, int64_t lddx, T* __restrict__ dz, int64_t lddz,
                               float* __restrict__ part, const T* __restrict__ dout, int64_t ldo,
                               const T* __restrict__ x, int64_t ldx, const T* __restrict__ z, int64_t ldz, PView w,
                               int M, int H, int group, float eps, bool accumulate) {
  constexpr int E = 16 / sizeof(T);
  __shared__ float ssw[kNormIt * kNormWarps], gxw[kNormIt * kNormWarps];  // per warp chunk of 32·E columns
  __shared__ float rg[kNormIt * kNormWarps], cg[kNormIt * kNormWarps];    // per group: r, and mean(g·x)·r³
  // dw's partial of each thread's columns (only that thread touches its column of dwp: shared memory rather than
  // 32 more registers, which spilled)
  __shared__ float dwp[kNormIt * E][kNormThreads];
  const int tid = threadIdx.x, lane = tid % 32, wp = tid / 32;
  const int chunks_per_group = group / (32 * E), groups = H / group;
#pragma unroll
  for (int i = 0; i < kNormIt * E; ++i) dwp[i][tid] = 0.f;
  const int r1 = min(M, int(blockIdx.x + 1) * kNormRows);
  for (int row = blockIdx.x * kNormRows; row < r1; ++row) {
    uint4 xv[kNormIt], zv[kNormIt], dv[kNormIt];
#pragma unroll
    for (int it = 0; it < kNormIt; ++it) {
      const int col = (it * kNormThreads + tid) * E;
      if (col >= H) continue;
      xv[it] = *reinterpret_cast<const uint4*>(x + int64_t(row) * ldx + col);
      dv[it] = *reinterpret_cast<const uint4*>(dout + int64_t(row) * ldo + col);
      if (GATED) zv[it] = *reinterpret_cast<const uint4*>(z + int64_t(row) * ldz + col);
    }
    // v = x (⊙ silu(z)), the normalised input before the weight
    auto input = [&](int it, int e, float& zz) {
      const float xx = to_f(reinterpret_cast<const T*>(&xv[it])[e]);
      if (!GATED) return xx;
      zz = to_f(reinterpret_cast<const T*>(&zv[it])[e]);
      return xx * silu_exact(zz);
    };
#pragma unroll
    for (int it = 0; it < kNormIt; ++it) {
      const int col = (it * kNormThreads + tid) * E;
      if (it * kNormThreads * E >= H) break;  // block-uniform: every lane of a live warp chunk takes part
      float ss = 0.f, gx = 0.f;
      if (col < H)
#pragma unroll
        for (int e = 0; e < E; ++e) {
          float zz;
          const float v = input(it, e, zz);
          ss += v * v;
          gx += to_f(reinterpret_cast<const T*>(&dv[it])[e]) * ld_param(w, col + e) * v;
        }
      ss = warp_sum(ss);
      gx = warp_sum(gx);
      if (lane == 0) ssw[it * kNormWarps + wp] = ss, gxw[it * kNormWarps + wp] = gx;
    }
    __syncthreads();
    for (int gi = wp; gi < groups; gi += kNormWarps) {  // warp chunks [gi·cpg, (gi+1)·cpg) make group gi
      float ss = 0.f, gx = 0.f;
      for (int k = lane; k < chunks_per_group; k += 32)
        ss += ssw[gi * chunks_per_group + k], gx += gxw[gi * chunks_per_group + k];
      ss = warp_sum(ss);
      gx = warp_sum(gx);
      const float r = rsqrtf(ss / float(group) + eps);
      if (lane == 0) rg[gi] = r, cg[gi] = gx * r * r * r / float(group);
    }
    __syncthreads();  // (the next row writes ssw only after this; rg, cg only after its first barrier)
#pragma unroll
    for (int it = 0; it < kNormIt; ++it) {
      const int col = (it * kNormThreads + tid) * E;
      if (col >= H) continue;
      const float r = rg[col / group], c = cg[col / group];
      uint4 ox, oz;
      T* o = reinterpret_cast<T*>(&ox);
      T* oz_ = reinterpret_cast<T*>(&oz);
      if (!GATED && accumulate) ox = *reinterpret_cast<const uint4*>(dx + int64_t(row) * lddx + col);
#pragma unroll
      for (int e = 0; e < E; ++e) {
        float zz = 0.f;
        const float v = input(it, e, zz), d = to_f(reinterpret_cast<const T*>(&dv[it])[e]);
        const float g = r * d * ld_param(w, col + e) - v * c;
        dwp[it * E + e][tid] += d * v * r;
        if (GATED) {
          o[e] = from_f<T>(g * silu_exact(zz));
          oz_[e] = from_f<T>(g * to_f(reinterpret_cast<const T*>(&xv[it])[e]) * silu_grad_f(zz));
        } else {
          o[e] = from_f<T>(accumulate ? to_f(o[e]) + g : g);
        }
      }
      *reinterpret_cast<uint4*>(dx + int64_t(row) * lddx + col) = ox;
      if (GATED) *reinterpret_cast<uint4*>(dz + int64_t(row) * lddz + col) = oz;
    }
  }
  if (!part) return;
#pragma unroll
  for (int it = 0; it < kNormIt; ++it) {
    const int col = (it * kNormThreads + tid) * E;
    if (col >= H) continue;
#pragma unroll
    for (int e = 0; e < E; ++e) part[int64_t(blockIdx.x) * H + col + e] = dwp[it * E + e][tid];
  }
}

// Whether norm_backward_fused_kernel takes a call of this shape; BAMBA_NORM_BWD: "fused" (default) or "split",
// read per call so one process can time both.
template <typename T>
bool norm_backward_fused_takes(int64_t H, int64_t group, std::initializer_list<const void*> ptrs,
                               std::initializer_list<int64_t> lds) {
  const char* e = std::getenv("BAMBA_NORM_BWD");
  if (e && *e && std::strcmp(e, "fused") != 0 && std::strcmp(e, "split") != 0)
    fail("BAMBA_NORM_BWD must be \"fused\" or \"split\", not \"", e, "\"");
  if (e && std::strcmp(e, "split") == 0) return false;
  constexpr int64_t E = 16 / sizeof(T);
  if (H > kNormIt * kNormThreads * E || group % (32 * E) != 0 || H % group != 0) return false;
  for (const void* p : ptrs)
    if (p && reinterpret_cast<uintptr_t>(p) % 16 != 0) return false;
  for (int64_t ld : lds)
    if (ld % E != 0) return false;
  return true;
}

// BAMBA_CONV_BWD: "fused" (default) or "split" (the three-kernel form, for comparisons); read per call.
bool conv_backward_split() {
  const char* e = std::getenv("BAMBA_CONV_BWD");
  if (e && *e && std::strcmp(e, "fused") != 0 && std::strcmp(e, "split") != 0)
    fail("BAMBA_CONV_BWD must be \"fused\" or \"split\", not \"", e, "\"");
  return e && std::strcmp(e, "split") == 0;
}

}  // namespace

// ---- launchers (tests/emu/run.sh compiles everything above this line for the CPU)
namespace {

void column_finish(cudaStream_t st, const float* part, int64_t chunks, int64_t ldp, int64_t N, float* out) {
  column_finish_kernel<<<ceil_div(N, 256), 256, 0, st>>>(part, chunks, ldp, N, out);
  CUDA_LAUNCH_CHECK();
}
template <typename F>
void column_reduce(cudaStream_t st, F f, int64_t M, int64_t N, float* out, float* part) {
  if (M == 0 || N == 0) return;
  const int64_t chunks = chunks_for(M);
  column_partials_kernel<<<dim3(ceil_div(N, 256), unsigned(chunks)), 256, 0, st>>>(f, M, N, part);
  CUDA_LAUNCH_CHECK();
  column_finish(st, part, chunks, N, N, out);
}

template <typename Act, typename T>
void gated_act_backward(cudaStream_t st, T* dgu, int64_t lddg, const T* dout, int64_t ldo, const T* gu, int64_t ldg,
                        int64_t M, int64_t F) {
  if (M == 0) return;
  gated_act_backward_kernel<T, Act><<<dim3(std::min(ceil_div(F, 256), 64u), unsigned(M)), 256, 0, st>>>(
      dgu, lddg, dout, ldo, gu, ldg, int(F));
  CUDA_LAUNCH_CHECK();
}

template <typename T, int K>
void conv_backward_fused(cudaStream_t st, T* dx, int64_t lddx, float* dw, float* dbias, const T* dout, int64_t ldo,
                         const T* x, int64_t ldx, PView w, PView bias, int64_t CD, const DevBatch& b, float* part) {
  constexpr int E = 4;  // 8-byte (bf16) or 16-byte (fp32) vectors when the shapes allow
  auto aligned = [](const void* p) { return (reinterpret_cast<uintptr_t>(p) % (sizeof(T) * E)) == 0; };
  const bool vec = CD % E == 0 && ldx % E == 0 && ldo % E == 0 && lddx % E == 0 && aligned(dx) && aligned(dout) &&
                   aligned(x);
  const int64_t chunks = conv_fused_chunks(b.T);
  const dim3 block(kConvLanes, kConvRunsPerBlock);
  if (vec)
    conv_backward_fused_kernel<T, K, E><<<dim3(ceil_div(CD, kConvLanes * E), unsigned(chunks)), block, 0, st>>>(
        dx, lddx, part, dout, ldo, x, ldx, w, bias, int(CD), b);
  else
    conv_backward_fused_kernel<T, K, 1><<<dim3(ceil_div(CD, kConvLanes), unsigned(chunks)), block, 0, st>>>(
        dx, lddx, part, dout, ldo, x, ldx, w, bias, int(CD), b);
  CUDA_LAUNCH_CHECK();
  if (dw) column_finish(st, part, chunks, CD * (K + 1), CD * K, dw);
  if (dbias) column_finish(st, part + CD * K, chunks, CD * (K + 1), CD, dbias);
}

}  // namespace

size_t column_sum_scratch_floats(int64_t M, int64_t N) { return size_t(chunks_for(M) * N); }

template <typename T>
void column_sum(cudaStream_t st, float* out, const T* dy, int64_t ld, int64_t M, int64_t N, float* scratch) {
  column_reduce(st, ReadCol<T>{dy, ld}, M, N, out, scratch);
}

template <typename T>
void embed_backward(cudaStream_t st, float* dtable, int64_t ldt, const T* dout, int64_t ldo, int64_t H,
                    const int32_t* uniq, const int32_t* start, const int32_t* rows, int n_uniq) {
  if (n_uniq == 0) return;
  embed_backward_kernel<T><<<dim3(unsigned(n_uniq), ceil_div(H, 256)), 256, 0, st>>>(dtable, ldt, dout, ldo, int(H),
                                                                                     uniq, start, rows);
  CUDA_LAUNCH_CHECK();
}

template <typename T>
void relu2_backward(cudaStream_t st, T* dx, int64_t lddx, const T* dout, int64_t ldo, const T* x, int64_t ldx,
                    int64_t M, int64_t N) {
  if (M == 0) return;
  relu2_backward_kernel<T><<<dim3(std::min(ceil_div(N, 256), 64u), unsigned(M)), 256, 0, st>>>(dx, lddx, dout, ldo, x,
                                                                                             ldx, int(N));
  CUDA_LAUNCH_CHECK();
}

template <typename T>
void silu_gate_backward(cudaStream_t st, T* dy, int64_t lddy, T* dz, int64_t lddz, const T* dout, int64_t ldo,
                        const T* y, int64_t ldy, const T* z, int64_t ldz, int64_t M, int64_t N) {
  if (M == 0) return;
  silu_gate_backward_kernel<T><<<dim3(std::min(ceil_div(N, 256), 64u), unsigned(M)), 256, 0, st>>>(
      dy, lddy, dz, lddz, dout, ldo, y, ldy, z, ldz, int(N));
  CUDA_LAUNCH_CHECK();
}

template <typename T>
void swiglu_backward(cudaStream_t st, T* dgu, int64_t lddg, const T* dout, int64_t ldo, const T* gu, int64_t ldg,
                     int64_t M, int64_t F) {
  gated_act_backward<SwigluGrad>(st, dgu, lddg, dout, ldo, gu, ldg, M, F);
}

template <typename T>
void geglu_backward(cudaStream_t st, T* dgu, int64_t lddg, const T* dout, int64_t ldo, const T* gu, int64_t ldg,
                    int64_t M, int64_t F) {
  gated_act_backward<GegluGrad>(st, dgu, lddg, dout, ldo, gu, ldg, M, F);
}

size_t rmsnorm_backward_scratch_floats(int64_t M, int64_t H) {
  return std::max(size_t(M) + column_sum_scratch_floats(M, H), size_t(norm_fused_chunks(M) * H));
}

template <typename T>
void rmsnorm_backward(cudaStream_t st, T* dx, int64_t lddx, float* dw, const T* dout, int64_t ldo, const T* x,
                      int64_t ldx, PView w, int64_t M, int64_t H, float eps, bool accumulate, float* scratch) {
  if (M == 0) return;
  if (norm_backward_fused_takes<T>(H, H, {dx, dout, x}, {lddx, ldo, ldx})) {
    norm_backward_fused_kernel<T, false><<<unsigned(norm_fused_chunks(M)), kNormThreads, 0, st>>>(
        dx, lddx, nullptr, 0, dw ? scratch : nullptr, dout, ldo, x, ldx, nullptr, 0, w, int(M), int(H), int(H), eps,
        accumulate);
    CUDA_LAUNCH_CHECK();
    if (dw) column_finish(st, scratch, norm_fused_chunks(M), H, H, dw);
    return;
  }
  float* rstd = scratch;
  norm_backward_kernel<T, false><<<unsigned(M), kRowThreads, 0, st>>>(dx, lddx, nullptr, 0, dout, ldo, x, ldx, nullptr,
                                                                      0, w, int(H), int(H), eps, accumulate, rstd);
  CUDA_LAUNCH_CHECK();
  if (dw) column_reduce(st, NormDw<T, false>{dout, ldo, x, ldx, nullptr, 0, rstd, 1, H}, M, H, dw, scratch + M);
}

size_t gated_rmsnorm_backward_scratch_floats(int64_t M, int64_t I, int64_t group) {
  return std::max(size_t(M * (I / group)) + column_sum_scratch_floats(M, I), size_t(norm_fused_chunks(M) * I));
}

template <typename T>
void gated_rmsnorm_backward(cudaStream_t st, T* dy, int64_t lddy, T* dz, int64_t lddz, float* dw, const T* dout,
                            int64_t ldo, const T* y, int64_t ldy, const T* z, int64_t ldz, PView w, int64_t M,
                            int64_t I, int64_t group, float eps, float* scratch) {
  if (M == 0) return;
  if (I % group) fail("cuda gated_rmsnorm_backward: ", I, " channels are not a whole number of groups of ", group);
  if (norm_backward_fused_takes<T>(I, group, {dy, dz, dout, y, z}, {lddy, lddz, ldo, ldy, ldz})) {
    norm_backward_fused_kernel<T, true><<<unsigned(norm_fused_chunks(M)), kNormThreads, 0, st>>>(
        dy, lddy, dz, lddz, dw ? scratch : nullptr, dout, ldo, y, ldy, z, ldz, w, int(M), int(I), int(group), eps,
        false);
    CUDA_LAUNCH_CHECK();
    if (dw) column_finish(st, scratch, norm_fused_chunks(M), I, I, dw);
    return;
  }
  float* rstd = scratch;
  norm_backward_kernel<T, true><<<unsigned(M), kRowThreads, 0, st>>>(dy, lddy, dz, lddz, dout, ldo, y, ldy, z, ldz, w,
                                                                     int(I), int(group), eps, false, rstd);
  CUDA_LAUNCH_CHECK();
  if (dw)
    column_reduce(st, NormDw<T, true>{dout, ldo, y, ldy, z, ldz, rstd, I / group, group}, M, I, dw,
                  scratch + M * (I / group));
}

size_t conv1d_silu_backward_scratch_floats(int64_t T_, int64_t CD, int64_t K) {
  const size_t split =
      size_t(T_ * CD) + std::max(column_sum_scratch_floats(T_, CD * K), column_sum_scratch_floats(T_, CD));
  return std::max(split, size_t(conv_fused_chunks(T_) * CD * (K + 1)));
}

template <typename T>
void conv1d_silu_backward(cudaStream_t st, T* dx, int64_t lddx, float* dw, float* dbias, const T* dout, int64_t ldo,
                          const T* x, int64_t ldx, PView w, PView bias, int64_t CD, int64_t K, const DevBatch& b,
                          float* scratch) {
  if (b.T == 0) return;
  if (!conv_backward_split() && K >= 2 && K <= 4) {
    auto fused = [&]<int KK>() {
      conv_backward_fused<T, KK>(st, dx, lddx, dw, dbias, dout, ldo, x, ldx, w, bias, CD, b, scratch);
    };
    if (K == 4) fused.template operator()<4>();
    else if (K == 3) fused.template operator()<3>();
    else fused.template operator()<2>();
    return;
  }
  float* G = scratch;  // [T, CD]
  float* part = scratch + int64_t(b.T) * CD;
  const dim3 grid(std::min(ceil_div(CD, 256), 64u), unsigned(b.T));
  conv_grad_kernel<T><<<grid, 256, 0, st>>>(G, dout, ldo, x, ldx, w, bias, int(CD), int(K), b);
  CUDA_LAUNCH_CHECK();
  conv_dx_kernel<T><<<grid, 256, 0, st>>>(dx, lddx, G, w, int(CD), int(K), b);
  CUDA_LAUNCH_CHECK();
  if (dw) column_reduce(st, ConvDw<T>{G, x, ldx, int(CD), int(K), b}, b.T, CD * K, dw, part);
  if (dbias) column_reduce(st, ReadCol<float>{G, CD}, b.T, CD, dbias, part);
}

#define INST(T)                                                                                                      \
  template void column_sum<T>(cudaStream_t, float*, const T*, int64_t, int64_t, int64_t, float*);                    \
  template void embed_backward<T>(cudaStream_t, float*, int64_t, const T*, int64_t, int64_t, const int32_t*,         \
                                  const int32_t*, const int32_t*, int);                                              \
  template void swiglu_backward<T>(cudaStream_t, T*, int64_t, const T*, int64_t, const T*, int64_t, int64_t, int64_t); \
  template void geglu_backward<T>(cudaStream_t, T*, int64_t, const T*, int64_t, const T*, int64_t, int64_t, int64_t); \
  template void relu2_backward<T>(cudaStream_t, T*, int64_t, const T*, int64_t, const T*, int64_t, int64_t, int64_t);  \
  template void silu_gate_backward<T>(cudaStream_t, T*, int64_t, T*, int64_t, const T*, int64_t, const T*, int64_t,  \
                                      const T*, int64_t, int64_t, int64_t);                                          \
  template void rmsnorm_backward<T>(cudaStream_t, T*, int64_t, float*, const T*, int64_t, const T*, int64_t, PView,   \
                                    int64_t, int64_t, float, bool, float*);                                          \
  template void gated_rmsnorm_backward<T>(cudaStream_t, T*, int64_t, T*, int64_t, float*, const T*, int64_t, const T*, \
                                          int64_t, const T*, int64_t, PView, int64_t, int64_t, int64_t, float, float*); \
  template void conv1d_silu_backward<T>(cudaStream_t, T*, int64_t, float*, float*, const T*, int64_t, const T*,       \
                                        int64_t, PView, PView, int64_t, int64_t, const DevBatch&, float*);
BAMBA_CUDA_DTYPES(INST)
#undef INST

}  // namespace bamba::cuda
