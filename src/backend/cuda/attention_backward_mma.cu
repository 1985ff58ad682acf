// Causal attention's backward (grad_kernels.h attention_backward, the CPU twin) on bf16 tensor cores, in 64-token
// tiles (wmma through shared memory, fp32 accumulation; wmma_tiles.cuh), flash-style: no [T, T] matrix is ever
// stored, each 64×64 block of scores is recomputed where it is needed. Tiles are the batch's chunk table cut
// into 64-token pieces, aligned to each sequence's start (as in ssd_backward_chunked.cu), so a query tile sees
// the key tiles of its sequence up to its own, the last one masked causally. Three kernels, no atomics, every
// sum in an order fixed by the shape:
//   1. stats (q head, query tile): the forward once more — S = Q Kᵀ·scale, online softmax, O = P V — for
//      lse_t and δ_t = dO_t · O_t (the same δ = Σ_u p_tu (dO_t · v_u) as the plain form's, through O);
//   2. dq (q head, query tile): over the key tiles, P = exp(S − lse), dP = dO Vᵀ, dS = P ∘ (dP − δ)·scale,
//      dQ += dS K;
//   3. dkv (KV head, key tile): over the group's q heads and the query tiles from its own on, the same P, dS,
//      dV += Pᵀ dO, dK += dSᵀ Q.
// (FlashAttention-2 fuses 2 into 3 with atomic adds to dQ; recomputing S and dP in 2 instead keeps the bits fixed.)
// dQ and dK are rotated back by −angle (RoPE's input gradient) as they are written. head_dim ≤ 128.
#include <cstdlib>
#include <cstring>

#include "backend/cuda/attention_backward_mma.cuh"
#include "backend/cuda/wmma_tiles.cuh"

namespace bamba::cuda {
namespace {

constexpr int kT = 64;                       // tokens per tile
constexpr int kDMax = 128;                   // head_dim at most
constexpr int kLdD = kDMax + 8, kLdT = kT + 8;  // bf16 strides of [64, d] and [64, 64] tiles
constexpr int kLdS = kT + 4, kLdA = kDMax + 4;  // fp32 strides of [64, 64] scores and [64, d] accumulators
constexpr int kThreads = 512;                // 16 warps: one 16×16 tile each of a 64×64 product

struct Tile {
  int begin, len, seq;
};
__device__ __forceinline__ Tile tile_of(const DevBatch& b, int j) {
  const int sub = b.chunk_q / kT, c = j / sub, s = b.chunk_seq[c];
  const int begin = b.chunk_begin[c] + (j % sub) * kT;
  return {begin, max(0, min(kT, b.seq_start[s + 1] - begin)), s};
}

struct View {
  const bf16* qkv;  // [T, (nq + 2 nkv) dh], q and k rotated
  const bf16* dout; // [T, nq dh]
  int64_t ldq, ldo;
  int nq, nkv, dh, dhp, rot;
  float scale;
  const float* inv_freq;
};
__device__ __forceinline__ const bf16* q_at(const View& v, int t, int h) { return v.qkv + int64_t(t) * v.ldq + h * v.dh; }
__device__ __forceinline__ const bf16* k_at(const View& v, int t, int kh) {
  return v.qkv + int64_t(t) * v.ldq + (v.nq + kh) * v.dh;
}
__device__ __forceinline__ const bf16* v_at(const View& v, int t, int kh) {
  return v.qkv + int64_t(t) * v.ldq + (v.nq + v.nkv + kh) * v.dh;
}

// The causal mask of query row r of tile tq against key column c of tile tk.
__device__ __forceinline__ bool visible(const Tile& tq, const Tile& tk, int r, int c) {
  return r < tq.len && c < tk.len && tk.begin + c <= tq.begin + r;
}

// dst rows [0, rows) of dh columns (row stride ldd) = acc (fp32, stride kLdA), the first rot columns turned back
// by −angle(position) when rotate (RoPE: x0' = x0 cos + x1 sin, x1' = x1 cos − x0 sin over the pairs (j, j + rot/2)).
__device__ void store_rows(bf16* dst, int64_t ldd, const float* acc, int rows, const View& v, const int32_t* positions,
                           int begin, bool rotate) {
  const int half = v.rot / 2;
  for (int e = threadIdx.x; e < rows * v.dh; e += blockDim.x) {
    const int r = e / v.dh, d = e % v.dh;
    const float* a = acc + r * kLdA;
    float x = a[d];
    if (rotate && d < v.rot) {
      float si, co;
      sincosf(float(positions[begin + r]) * v.inv_freq[d % half], &si, &co);
      x = d < half ? a[d] * co + a[d + half] * si : a[d] * co - a[d - half] * si;
    }
    dst[int64_t(r) * ldd + d] = __float2bfloat16_rn(x);
  }
}

// P and dS of one 64×64 block from S = Q Kᵀ and dP = dO Vᵀ (fp32, stride kLdS): p = exp(S·scale − lse) where
// visible, ds = p (dP − δ)·scale; P as bf16 only when Pb is given.
__device__ __forceinline__ void probs(bf16* Pb, bf16* dSb, const float* S, const float* dP, const float* lse,
                                      const float* delta, const Tile& tq, const Tile& tk, float scale) {
  for (int e = threadIdx.x; e < kT * kT; e += blockDim.x) {
    const int r = e / kT, c = e % kT;
    const float p = visible(tq, tk, r, c) ? expf(S[r * kLdS + c] * scale - lse[r]) : 0.f;
    if (Pb) Pb[r * kLdT + c] = __float2bfloat16_rn(p);
    dSb[r * kLdT + c] = __float2bfloat16_rn(p * (dP[r * kLdS + c] - delta[r]) * scale);
  }
}

// 1. lse and δ per (query, q head) into stats [T, nq, 2].
constexpr size_t kStatsSmem = size_t(3 * kT * kLdD + kT * kLdT) * 2 + size_t(kT * kLdS + kT * kLdA + 4 * kT) * 4;
__global__ void __launch_bounds__(kThreads) stats_kernel(View v, DevBatch b, float* stats) {
  extern __shared__ __align__(128) unsigned char smem[];
  bf16* Qs = reinterpret_cast<bf16*>(smem);  // [64, kLdD]
  bf16* Ks = Qs + kT * kLdD;                  // [64, kLdD] (at the end: dO)
  bf16* Vs = Ks + kT * kLdD;
  bf16* Ps = Vs + kT * kLdD;                  // [64, kLdT]
  float* S = reinterpret_cast<float*>(Ps + kT * kLdT);  // [64, kLdS]
  float* O = S + kT * kLdS;                              // [64, kLdA]
  float* m = O + kT * kLdA;
  float* l = m + kT;
  float* f = l + kT;
  float* dot = f + kT;
  const int j = gridDim.y - 1 - blockIdx.y, h = blockIdx.x, kh = h / (v.nq / v.nkv), sub = b.chunk_q / kT;
  const Tile tq = tile_of(b, j);
  if (tq.len == 0) return;
  const int first = b.chunk_first[tq.seq] * sub, warp = threadIdx.x / 32, lane = threadIdx.x % 32, nw = blockDim.x / 32;
  load_tile(Qs, kLdD, q_at(v, tq.begin, h), v.ldq, tq.len, v.dh, kT, v.dhp, nullptr);
  for (int e = threadIdx.x; e < kT * kLdA; e += blockDim.x) O[e] = 0.f;
  for (int r = threadIdx.x; r < kT; r += blockDim.x) m[r] = -1e30f, l[r] = 0.f;
  for (int jk = first; jk <= j; ++jk) {
    const Tile tk = tile_of(b, jk);
    __syncthreads();  // the previous tile's K, V and P are no longer read
    load_tile(Ks, kLdD, k_at(v, tk.begin, kh), v.ldq, tk.len, v.dh, kT, v.dhp, nullptr);
    load_tile(Vs, kLdD, v_at(v, tk.begin, kh), v.ldq, tk.len, v.dh, kT, v.dhp, nullptr);
    __syncthreads();
    block_gemm<wmma::row_major, wmma::col_major>(S, kLdS, Qs, kLdD, Ks, kLdD, kT, kT, v.dhp, false);
    __syncthreads();
    for (int r = warp; r < kT; r += nw) {  // online softmax, a warp a row, lanes over columns c and c + 32
      const float s0 = visible(tq, tk, r, lane) ? S[r * kLdS + lane] * v.scale : -INFINITY;
      const float s1 = visible(tq, tk, r, lane + 32) ? S[r * kLdS + lane + 32] * v.scale : -INFINITY;
      const float mn = fmaxf(m[r], warp_max(fmaxf(s0, s1)));
      const float p0 = expf(s0 - mn), p1 = expf(s1 - mn);
      Ps[r * kLdT + lane] = __float2bfloat16_rn(p0);
      Ps[r * kLdT + lane + 32] = __float2bfloat16_rn(p1);
      const float sum = warp_sum(p0 + p1);
      if (lane == 0) {
        f[r] = expf(m[r] - mn);
        l[r] = l[r] * f[r] + sum;
        m[r] = mn;
      }
    }
    __syncthreads();
    for (int e = threadIdx.x; e < kT * v.dhp; e += blockDim.x) O[(e / v.dhp) * kLdA + e % v.dhp] *= f[e / v.dhp];
    __syncthreads();
    block_gemm<wmma::row_major, wmma::row_major>(O, kLdA, Ps, kLdT, Vs, kLdD, kT, v.dhp, kT, true);  // O += P V
  }
  __syncthreads();
  load_tile(Ks, kLdD, v.dout + int64_t(tq.begin) * v.ldo + h * v.dh, v.ldo, tq.len, v.dh, kT, v.dhp, nullptr);
  __syncthreads();
  row_dots(dot, Ks, kLdD, O, kLdA, kT, v.dhp, nullptr);
  __syncthreads();
  for (int r = threadIdx.x; r < tq.len; r += blockDim.x) {
    float* o = stats + (int64_t(tq.begin + r) * v.nq + h) * 2;
    o[0] = m[r] + logf(l[r]);
    o[1] = dot[r] / l[r];
  }
}

// Q (or K), dO, lse and δ of a query tile of head h into shared memory.
__device__ __forceinline__ void load_query_side(bf16* Qs, bf16* dOs, float* lse, float* delta, const View& v,
                                                const Tile& tq, int h, const float* stats) {
  load_tile(Qs, kLdD, q_at(v, tq.begin, h), v.ldq, tq.len, v.dh, kT, v.dhp, nullptr);
  load_tile(dOs, kLdD, v.dout + int64_t(tq.begin) * v.ldo + h * v.dh, v.ldo, tq.len, v.dh, kT, v.dhp, nullptr);
  for (int r = threadIdx.x; r < kT; r += blockDim.x) {
    const bool in = r < tq.len;
    lse[r] = in ? stats[(int64_t(tq.begin + r) * v.nq + h) * 2] : 0.f;
    delta[r] = in ? stats[(int64_t(tq.begin + r) * v.nq + h) * 2 + 1] : 0.f;
  }
}

// 2. dQ of (query tile, q head).
constexpr size_t kDqSmem = size_t(4 * kT * kLdD + kT * kLdT) * 2 + size_t(2 * kT * kLdS + kT * kLdA + 2 * kT) * 4;
__global__ void __launch_bounds__(kThreads) dq_kernel(View v, DevBatch b, const float* stats, bf16* dqkv, int64_t lddq) {
  extern __shared__ __align__(128) unsigned char smem[];
  bf16* Qs = reinterpret_cast<bf16*>(smem);
  bf16* dOs = Qs + kT * kLdD;
  bf16* Ks = dOs + kT * kLdD;
  bf16* Vs = Ks + kT * kLdD;
  bf16* dSs = Vs + kT * kLdD;                            // [64, kLdT]
  float* S = reinterpret_cast<float*>(dSs + kT * kLdT);  // [64, kLdS]
  float* dP = S + kT * kLdS;
  float* dQ = dP + kT * kLdS;  // [64, kLdA]
  float* lse = dQ + kT * kLdA;
  float* delta = lse + kT;
  const int j = gridDim.y - 1 - blockIdx.y, h = blockIdx.x, kh = h / (v.nq / v.nkv), sub = b.chunk_q / kT;
  const Tile tq = tile_of(b, j);
  if (tq.len == 0) return;
  const int first = b.chunk_first[tq.seq] * sub;
  load_query_side(Qs, dOs, lse, delta, v, tq, h, stats);
  for (int e = threadIdx.x; e < kT * kLdA; e += blockDim.x) dQ[e] = 0.f;
  for (int jk = first; jk <= j; ++jk) {
    const Tile tk = tile_of(b, jk);
    __syncthreads();
    load_tile(Ks, kLdD, k_at(v, tk.begin, kh), v.ldq, tk.len, v.dh, kT, v.dhp, nullptr);
    load_tile(Vs, kLdD, v_at(v, tk.begin, kh), v.ldq, tk.len, v.dh, kT, v.dhp, nullptr);
    __syncthreads();
    block_gemm<wmma::row_major, wmma::col_major>(S, kLdS, Qs, kLdD, Ks, kLdD, kT, kT, v.dhp, false);    // Q Kᵀ
    block_gemm<wmma::row_major, wmma::col_major>(dP, kLdS, dOs, kLdD, Vs, kLdD, kT, kT, v.dhp, false);  // dO Vᵀ
    __syncthreads();
    probs(nullptr, dSs, S, dP, lse, delta, tq, tk, v.scale);
    __syncthreads();
    block_gemm<wmma::row_major, wmma::row_major>(dQ, kLdA, dSs, kLdT, Ks, kLdD, kT, v.dhp, kT, true);  // + dS K
  }
  __syncthreads();
  store_rows(dqkv + int64_t(tq.begin) * lddq + h * v.dh, lddq, dQ, tq.len, v, b.positions, tq.begin, true);
}

// 3. dK, dV of (key tile, KV head).
constexpr size_t kDkvSmem = size_t(4 * kT * kLdD + 2 * kT * kLdT) * 2 + size_t(2 * kT * kLdS + 2 * kT * kLdA + 2 * kT) * 4;
__global__ void __launch_bounds__(kThreads) dkv_kernel(View v, DevBatch b, const float* stats, bf16* dqkv,
                                                       int64_t lddq) {
  extern __shared__ __align__(128) unsigned char smem[];
  bf16* Ks = reinterpret_cast<bf16*>(smem);
  bf16* Vs = Ks + kT * kLdD;
  bf16* Qs = Vs + kT * kLdD;
  bf16* dOs = Qs + kT * kLdD;
  bf16* Ps = dOs + kT * kLdD;  // [64, kLdT]
  bf16* dSs = Ps + kT * kLdT;
  float* S = reinterpret_cast<float*>(dSs + kT * kLdT);
  float* dP = S + kT * kLdS;
  float* dK = dP + kT * kLdS;  // [64, kLdA]
  float* dV = dK + kT * kLdA;
  float* lse = dV + kT * kLdA;
  float* delta = lse + kT;
  const int j = blockIdx.y, kh = blockIdx.x, rep = v.nq / v.nkv, sub = b.chunk_q / kT;
  const Tile tk = tile_of(b, j);
  if (tk.len == 0) return;
  const int last = b.chunk_first[tk.seq + 1] * sub;
  load_tile(Ks, kLdD, k_at(v, tk.begin, kh), v.ldq, tk.len, v.dh, kT, v.dhp, nullptr);
  load_tile(Vs, kLdD, v_at(v, tk.begin, kh), v.ldq, tk.len, v.dh, kT, v.dhp, nullptr);
  for (int e = threadIdx.x; e < kT * kLdA; e += blockDim.x) dK[e] = dV[e] = 0.f;
  for (int h = kh * rep; h < (kh + 1) * rep; ++h)
    for (int jq = j; jq < last; ++jq) {
      const Tile tq = tile_of(b, jq);
      if (tq.len == 0) break;  // only a sequence's last pieces are empty
      __syncthreads();
      load_query_side(Qs, dOs, lse, delta, v, tq, h, stats);
      __syncthreads();
      block_gemm<wmma::row_major, wmma::col_major>(S, kLdS, Qs, kLdD, Ks, kLdD, kT, kT, v.dhp, false);    // Q Kᵀ
      block_gemm<wmma::row_major, wmma::col_major>(dP, kLdS, dOs, kLdD, Vs, kLdD, kT, kT, v.dhp, false);  // dO Vᵀ
      __syncthreads();
      probs(Ps, dSs, S, dP, lse, delta, tq, tk, v.scale);
      __syncthreads();
      block_gemm<wmma::col_major, wmma::row_major>(dV, kLdA, Ps, kLdT, dOs, kLdD, kT, v.dhp, kT, true);  // + Pᵀ dO
      block_gemm<wmma::col_major, wmma::row_major>(dK, kLdA, dSs, kLdT, Qs, kLdD, kT, v.dhp, kT, true);  // + dSᵀ Q
    }
  __syncthreads();
  bf16* row = dqkv + int64_t(tk.begin) * lddq;
  store_rows(row + (v.nq + kh) * v.dh, lddq, dK, tk.len, v, b.positions, tk.begin, true);
  store_rows(row + (v.nq + v.nkv + kh) * v.dh, lddq, dV, tk.len, v, b.positions, tk.begin, false);
}

}  // namespace

bool attention_backward_mma_takes(const AttnArgs& a, const DevBatch& b) {
  const char* e = std::getenv("BAMBA_ATTN_BWD");
  if (e && *e && std::strcmp(e, "plain") != 0 && std::strcmp(e, "mma") != 0)
    fail("BAMBA_ATTN_BWD must be \"plain\" or \"mma\", not \"", e, "\"");
  if (e && std::strcmp(e, "plain") == 0) return false;
  return a.dh <= kDMax && a.nq % a.nkv == 0 && b.chunk_q >= kT && b.chunk_q % kT == 0 && b.n_chunks > 0;
}

void attention_backward_mma(cudaStream_t st, bf16* dqkv, int64_t lddq, const bf16* dout, int64_t ldo, const AttnArgs& a,
                            const DevBatch& b, float* stats) {
  const View v{static_cast<const bf16*>(a.qkv), dout, a.ldq, ldo, a.nq, a.nkv, a.dh, (a.dh + 15) / 16 * 16, a.rot,
               a.scale, a.inv_freq};
  const unsigned tiles = unsigned(b.n_chunks * (b.chunk_q / kT));
  CUDA_CHECK(cudaFuncSetAttribute(stats_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(kStatsSmem)));
  CUDA_CHECK(cudaFuncSetAttribute(dq_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(kDqSmem)));
  CUDA_CHECK(cudaFuncSetAttribute(dkv_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(kDkvSmem)));
  // Heads in x, tiles in y, so that blocks start in y order: the longest first (a query tile's work grows with
  // its index in the sequence, a key tile's shrinks), and the short ones fill in behind them.
  stats_kernel<<<dim3(unsigned(a.nq), tiles), kThreads, kStatsSmem, st>>>(v, b, stats);
  CUDA_LAUNCH_CHECK();
  dq_kernel<<<dim3(unsigned(a.nq), tiles), kThreads, kDqSmem, st>>>(v, b, stats, dqkv, lddq);
  CUDA_LAUNCH_CHECK();
  dkv_kernel<<<dim3(unsigned(a.nkv), tiles), kThreads, kDkvSmem, st>>>(v, b, stats, dqkv, lddq);
  CUDA_LAUNCH_CHECK();
}

}  // namespace bamba::cuda
