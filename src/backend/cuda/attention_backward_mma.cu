// Causal attention's backward (grad_kernels.h attention_backward, the CPU twin) on bf16 tensor cores in 64-token
// tiles, flash-style: no [T, T] matrix is ever stored, each 64×64 block of scores is recomputed where it is needed.
// Tiles are the batch's chunk table cut into 64-token pieces, aligned to each sequence's start (as in
// ssd_backward_chunked.cu), so a query tile sees the key tiles of its sequence up to its own, the last one masked
// causally. Three kernels, no atomics, every sum in an order fixed by the shape:
//   1. stats (q head, query tile): the forward once more — S = Q Kᵀ·scale, online softmax, O = P V — for
//      lse_t and δ_t = dO_t · O_t (the same δ = Σ_u p_tu (dO_t · v_u) as the plain form's, through O);
//   2. dq (q head, query tile): over the key tiles, P = exp(S − lse), dP = dO Vᵀ, dS = P ∘ (dP − δ)·scale,
//      dQ += dS K;
//   3. dkv (KV head, key tile): over the group's q heads and the query tiles from its own on, the same P, dS,
//      dV += Pᵀ dO, dK += dSᵀ Q.
// (FlashAttention-2 fuses 2 into 3 with atomic adds to dQ; recomputing S and dP in 2 instead keeps the bits fixed.)
// dQ and dK are rotated back by −angle (RoPE's input gradient) as they are written. head_dim ≤ 128.
// Two forms of the same three kernels: the register form (flash_*, the default; mma.sync fragments kept in
// registers, operands by ldmatrix, tiles by cp.async) and the older wmma form (BAMBA_ATTN_BWD=wmma: every 64×64
// product a round trip through shared memory, 16 warps a block), kept to compare against.
#include <cstdlib>
#include <cstring>

#include "backend/cuda/attention_backward_mma.cuh"
#include "backend/cuda/cp_async.cuh"
#include "backend/cuda/mma_tiles.cuh"
#include "backend/cuda/wmma_tiles.cuh"

namespace bamba::cuda {
namespace {

constexpr int kT = 64;                       // tokens per tile
constexpr int kDMax = 128;                   // head_dim at most
constexpr int kLdD = kDMax + 8, kLdT = kT + 8;  // bf16 strides of [64, d] and [64, 64] tiles
constexpr int kLdS = kT + 4, kLdA = kDMax + 4;  // fp32 strides of [64, 64] scores and [64, d] accumulators
constexpr int kThreads = 512;                // wmma form: 16 warps, one 16×16 tile each of a 64×64 product

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
  bool async;  // q, k, v and dO rows are whole 16-byte runs (cp.async can fetch them)
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

// ---- The register form (the default): mma.sync m16n8k16 as FlashAttention-2 uses it (mma.cuh has the fragment
// layouts). 4 warps a block, each owning 16 rows of the block's 64-row tile; a 16×64 block of scores (S, dP) lives
// in the warp's registers as mma accumulators, becomes P and dS there, and is packed straight into the A operand of
// the next product (no shared-memory round trip). The other operand streams through shared memory by cp.async,
// two stages: the next tile's load is in flight while this one is multiplied. Same three passes, same order of
// every sum (fixed by the shape), no atomics. Exponentials in base 2 (scale·log2 e folded into one multiply).
constexpr int kFThreads = 128;
constexpr float kLog2e = 1.4426950408889634f;
constexpr size_t kTileBytes = size_t(kT) * kLdD * 2;  // one [64, kLdD] bf16 tile
constexpr size_t kFlashSmem = 6 * kTileBytes;          // 104 KB: two blocks an SM
constexpr size_t kFlashDkvSmem = kFlashSmem + 4 * kT * 4;

// Rows [0, rows) × cols [0, dh) of a [64, dhp] tile from src (row stride lds) into dst (stride kLdD), zeros around:
// by cp.async when every row is whole 16-byte runs (v.async; the caller commits and waits), else through registers.
__device__ __forceinline__ void fetch_tile(bf16* dst, const bf16* src, int64_t lds, int rows, const View& v) {
  if (!v.async) return load_tile(dst, kLdD, src, lds, rows, v.dh, kT, v.dhp, nullptr);
  const int cv = v.dhp / 8;
  for (int e = threadIdx.x; e < kT * cv; e += blockDim.x) {
    const int r = e / cv, c = e % cv * 8;
    const bool in = r < rows && c < v.dh;
    async::copy16(dst + r * kLdD + c, in ? src + int64_t(r) * lds + c : src, in);
  }
}

// acc (this warp's 16 rows × 64 columns, 8 columns a block) = A Bᵀ over k < dhp: a points at the warp's first row
// of a row-major tile, b at a 64-row one (both stride kLdD, k along the row).
__device__ __forceinline__ void warp_abt(float (&acc)[8][4], const bf16* a, const bf16* b, int dhp) {
  zero(acc);
  warp_mma<TileLayout::kRowsK, TileLayout::kNK, kDMax>(acc, a, kLdD, b, kLdD, dhp, kT);
}

// acc (16 rows × dhp columns, 8 a block) += P B: P the 16×64 A fragments (to_a), b a row-major [64, dhp] tile
// (stride kLdD).
__device__ __forceinline__ void warp_pb(float (&acc)[kDMax / 8][4], const uint32_t (&pa)[4][4], const bf16* b, int dhp) {
  warp_mma_regs<TileLayout::kKN>(acc, pa, b, kLdD, dhp);
}

// This warp's accumulator rows into dst [64, kLdA] fp32 (for store_rows, which rotates across column pairs).
__device__ __forceinline__ void stage_rows(float* dst, const float (&acc)[kDMax / 8][4], int dhp) {
  const int lane = threadIdx.x % 32, r = 16 * (threadIdx.x / 32) + lane / 4, c = 2 * (lane % 4);
#pragma unroll
  for (int nb = 0; nb < kDMax / 8; ++nb) {
    if (8 * nb >= dhp) break;
    float* o = dst + r * kLdA + 8 * nb + c;
    o[0] = acc[nb][0], o[1] = acc[nb][1], o[8 * kLdA] = acc[nb][2], o[8 * kLdA + 1] = acc[nb][3];
  }
}

// Whether every (query row, key column) of the pair of tiles is visible: whole tiles, the key tile wholly before.
__device__ __forceinline__ bool all_visible(const Tile& tq, const Tile& tk) {
  return tq.len == kT && tk.len == kT && tk.begin + kT - 1 <= tq.begin;
}

// What the stats and dq kernels start with, for (q head blockIdx.x, query tile j counted from the last, so that
// the longest rows start first): the tile's Q and dO in shared memory and its sequence's first K and V tile on
// their way (cp.async, the first of two buffers). Shared memory: Q, dO [64, kLdD] each, then K, V [2][64, kLdD].
struct QueryTile {
  bf16 *Qs, *dOs, *Ks, *Vs;
  Tile tq;  // len 0: nothing to do (a padding tile)
  int j, kh, first;

  // Key tile jk (first <= jk <= j) ready in shared memory, tile jk + 1 on its way into the other buffer: which
  // buffer holds jk. The caller syncs again once it has read the buffer out, before the next call loads over it.
  __device__ __forceinline__ int key_tile(const View& v, const DevBatch& b, int jk) const {
    const int buf = (jk - first) & 1;
    if (jk < j) {
      const Tile tn = tile_of(b, jk + 1);
      fetch_tile(Ks + (buf ^ 1) * kT * kLdD, k_at(v, tn.begin, kh), v.ldq, tn.len, v);
      fetch_tile(Vs + (buf ^ 1) * kT * kLdD, v_at(v, tn.begin, kh), v.ldq, tn.len, v);
      async::commit();
      async::wait<1>();
    } else {
      async::wait<0>();
    }
    __syncthreads();
    return buf;
  }
};
__device__ __forceinline__ QueryTile query_tile(unsigned char* smem, const View& v, const DevBatch& b) {
  QueryTile q;
  q.Qs = reinterpret_cast<bf16*>(smem);
  q.dOs = q.Qs + kT * kLdD;
  q.Ks = q.dOs + kT * kLdD;
  q.Vs = q.Ks + 2 * kT * kLdD;
  const int h = blockIdx.x, sub = b.chunk_q / kT;
  q.j = gridDim.y - 1 - blockIdx.y, q.kh = h / (v.nq / v.nkv), q.first = 0;
  q.tq = tile_of(b, q.j);
  if (q.tq.len == 0) return q;
  q.first = b.chunk_first[q.tq.seq] * sub;
  fetch_tile(q.Qs, q_at(v, q.tq.begin, h), v.ldq, q.tq.len, v);
  fetch_tile(q.dOs, v.dout + int64_t(q.tq.begin) * v.ldo + h * v.dh, v.ldo, q.tq.len, v);
  const Tile tk = tile_of(b, q.first);
  fetch_tile(q.Ks, k_at(v, tk.begin, q.kh), v.ldq, tk.len, v);
  fetch_tile(q.Vs, v_at(v, tk.begin, q.kh), v.ldq, tk.len, v);
  async::commit();
  return q;
}

// 1. lse and δ per (query, q head) into stats [T, nq, 2]: the forward, FlashAttention-2's loop (running max and
// sum per row in registers; a row's 64 columns are spread over the 4 lanes of a quad, joined by shuffles).
__global__ void __launch_bounds__(kFThreads, 2) flash_stats_kernel(View v, DevBatch b, float* stats) {
  extern __shared__ __align__(128) unsigned char smem[];
  const QueryTile qt = query_tile(smem, v, b);
  if (qt.tq.len == 0) return;
  bf16 *Qs = qt.Qs, *dOs = qt.dOs, *Ks = qt.Ks, *Vs = qt.Vs;
  const Tile tq = qt.tq;
  const int j = qt.j, h = blockIdx.x, first = qt.first;
  const int lane = threadIdx.x % 32, m0 = 16 * (threadIdx.x / 32), g = lane / 4, qc = 2 * (lane % 4);
  const float sl = v.scale * kLog2e;
  float m[2] = {-1e30f, -1e30f}, l[2] = {0.f, 0.f}, o[kDMax / 8][4] = {};  // m: log2 units
  for (int jk = first; jk <= j; ++jk) {
    const Tile tk = tile_of(b, jk);
    const int buf = qt.key_tile(v, b, jk);
    float s[8][4];
    warp_abt(s, Qs + m0 * kLdD, Ks + buf * kT * kLdD, v.dhp);  // Q Kᵀ
    const bool full = all_visible(tq, tk);
    float mx[2] = {m[0], m[1]};
#pragma unroll
    for (int nb = 0; nb < 8; ++nb)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const bool vis = full || visible(tq, tk, m0 + g + 8 * (e >> 1), 8 * nb + qc + (e & 1));
        s[nb][e] = vis ? s[nb][e] * sl : -INFINITY;
        mx[e >> 1] = fmaxf(mx[e >> 1], s[nb][e]);
      }
    float f[2], sum[2] = {0.f, 0.f};
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 1));
      mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 2));
      f[i] = exp2f(m[i] - mx[i]);
      m[i] = mx[i];
    }
#pragma unroll
    for (int nb = 0; nb < 8; ++nb)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        s[nb][e] = exp2f(s[nb][e] - mx[e >> 1]);
        sum[e >> 1] += s[nb][e];
      }
    l[0] = l[0] * f[0] + sum[0], l[1] = l[1] * f[1] + sum[1];  // this lane's columns only; joined at the end
#pragma unroll
    for (int nb = 0; nb < kDMax / 8; ++nb) o[nb][0] *= f[0], o[nb][1] *= f[0], o[nb][2] *= f[1], o[nb][3] *= f[1];
    uint32_t pa[4][4];
    to_a(pa, s);
    warp_pb(o, pa, Vs + buf * kT * kLdD, v.dhp);  // O += P V
    __syncthreads();  // this stage is read out before the next iteration loads over it
  }
  float dot[2] = {0.f, 0.f};  // dO · O (unnormalised) over this lane's columns
#pragma unroll
  for (int nb = 0; nb < kDMax / 8; ++nb) {
    if (8 * nb >= v.dhp) break;
    const bf16* d0 = dOs + (m0 + g) * kLdD + 8 * nb + qc;
    dot[0] += to_f(d0[0]) * o[nb][0] + to_f(d0[1]) * o[nb][1];
    dot[1] += to_f(d0[8 * kLdD]) * o[nb][2] + to_f(d0[8 * kLdD + 1]) * o[nb][3];
  }
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    l[i] += __shfl_xor_sync(0xffffffffu, l[i], 1);
    l[i] += __shfl_xor_sync(0xffffffffu, l[i], 2);
    dot[i] += __shfl_xor_sync(0xffffffffu, dot[i], 1);
    dot[i] += __shfl_xor_sync(0xffffffffu, dot[i], 2);
    const int r = m0 + g + 8 * i;
    if (lane % 4 == 0 && r < tq.len) {
      float* out = stats + (int64_t(tq.begin + r) * v.nq + h) * 2;
      out[0] = (m[i] + log2f(l[i])) / kLog2e;
      out[1] = dot[i] / l[i];
    }
  }
}

// 2. dQ of (query tile, q head): per key tile S = Q Kᵀ and dP = dO Vᵀ in registers, dS = P ∘ (dP − δ)·scale,
// dQ += dS K; the warp's dQ rows stay in registers to the end.
__global__ void __launch_bounds__(kFThreads, 2) flash_dq_kernel(View v, DevBatch b, const float* stats, bf16* dqkv,
                                                                int64_t lddq) {
  extern __shared__ __align__(128) unsigned char smem[];
  const QueryTile qt = query_tile(smem, v, b);
  if (qt.tq.len == 0) return;
  bf16 *Qs = qt.Qs, *dOs = qt.dOs, *Ks = qt.Ks, *Vs = qt.Vs;
  const Tile tq = qt.tq;
  const int j = qt.j, h = blockIdx.x, first = qt.first;
  const int lane = threadIdx.x % 32, m0 = 16 * (threadIdx.x / 32), g = lane / 4, qc = 2 * (lane % 4);
  const float sl = v.scale * kLog2e;
  float lse[2], delta[2];  // of rows m0 + g and m0 + g + 8; lse in log2 units
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int r = m0 + g + 8 * i;
    const float* st = stats + (int64_t(tq.begin + r) * v.nq + h) * 2;
    lse[i] = r < tq.len ? st[0] * kLog2e : 0.f;
    delta[i] = r < tq.len ? st[1] : 0.f;
  }
  float dq[kDMax / 8][4] = {};
  for (int jk = first; jk <= j; ++jk) {
    const Tile tk = tile_of(b, jk);
    const int buf = qt.key_tile(v, b, jk);
    const bf16* K = Ks + buf * kT * kLdD;
    float s[8][4], dp[8][4];
    warp_abt(s, Qs + m0 * kLdD, K, v.dhp);                        // Q Kᵀ
    warp_abt(dp, dOs + m0 * kLdD, Vs + buf * kT * kLdD, v.dhp);  // dO Vᵀ
    const bool full = all_visible(tq, tk);
#pragma unroll
    for (int nb = 0; nb < 8; ++nb)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int i = e >> 1;
        const bool vis = full || visible(tq, tk, m0 + g + 8 * i, 8 * nb + qc + (e & 1));
        const float p = vis ? exp2f(s[nb][e] * sl - lse[i]) : 0.f;
        s[nb][e] = p * (dp[nb][e] - delta[i]) * v.scale;  // dS
      }
    uint32_t pa[4][4];
    to_a(pa, s);
    warp_pb(dq, pa, K, v.dhp);  // dQ += dS K
    __syncthreads();
  }
  float* stage = reinterpret_cast<float*>(Ks);  // [64, kLdA] over the K stages, read out by now
  stage_rows(stage, dq, v.dhp);
  __syncthreads();
  store_rows(dqkv + int64_t(tq.begin) * lddq + h * v.dh, lddq, stage, tq.len, v, b.positions, tq.begin, true);
}

// 3. dK, dV of (key tile, KV head): the warp owns 16 keys; over the group's q heads and the query tiles from its
// own on, Sᵀ = K Qᵀ and dPᵀ = V dOᵀ in registers, then dV += Pᵀ dO, dK += dSᵀ Q. Q, dO, lse and δ stream in.
__global__ void __launch_bounds__(kFThreads, 2) flash_dkv_kernel(View v, DevBatch b, const float* stats, bf16* dqkv,
                                                                 int64_t lddq) {
  extern __shared__ __align__(128) unsigned char smem[];
  bf16* Ks = reinterpret_cast<bf16*>(smem);  // [64, kLdD]
  bf16* Vs = Ks + kT * kLdD;
  bf16* Qs = Vs + kT * kLdD;    // [2][64, kLdD]
  bf16* dOs = Qs + 2 * kT * kLdD;  // [2][64, kLdD]
  float* lse_s = reinterpret_cast<float*>(dOs + 2 * kT * kLdD);  // [2][64], log2 units
  float* delta_s = lse_s + 2 * kT;                               // [2][64]
  const int j = blockIdx.y, kh = blockIdx.x, rep = v.nq / v.nkv, sub = b.chunk_q / kT;
  const Tile tk = tile_of(b, j);
  if (tk.len == 0) return;
  const int last = b.chunk_first[tk.seq + 1] * sub, lane = threadIdx.x % 32, m0 = 16 * (threadIdx.x / 32);
  const int g = lane / 4, qc = 2 * (lane % 4);
  const float sl = v.scale * kLog2e;
  int n = 0;  // query tiles from this one to the sequence's end (only its last pieces are empty)
  while (j + n < last && tile_of(b, j + n).len > 0) ++n;
  // the query side of step it (q head kh·rep + it / n, query tile j + it % n) into stage buf
  auto fetch_query_side = [&](int it, int buf) {
    const int h = kh * rep + it / n;
    const Tile tq = tile_of(b, j + it % n);
    fetch_tile(Qs + buf * kT * kLdD, q_at(v, tq.begin, h), v.ldq, tq.len, v);
    fetch_tile(dOs + buf * kT * kLdD, v.dout + int64_t(tq.begin) * v.ldo + h * v.dh, v.ldo, tq.len, v);
    for (int r = threadIdx.x; r < kT; r += blockDim.x) {
      const float* st = stats + (int64_t(tq.begin + r) * v.nq + h) * 2;
      lse_s[buf * kT + r] = r < tq.len ? st[0] * kLog2e : 0.f;
      delta_s[buf * kT + r] = r < tq.len ? st[1] : 0.f;
    }
  };
  fetch_tile(Ks, k_at(v, tk.begin, kh), v.ldq, tk.len, v);
  fetch_tile(Vs, v_at(v, tk.begin, kh), v.ldq, tk.len, v);
  fetch_query_side(0, 0);
  async::commit();
  float dk[kDMax / 8][4] = {}, dv[kDMax / 8][4] = {};
  for (int it = 0; it < rep * n; ++it) {
    const Tile tq = tile_of(b, j + it % n);
    const int buf = it & 1;
    if (it + 1 < rep * n) {
      fetch_query_side(it + 1, buf ^ 1);
      async::commit();
      async::wait<1>();
    } else {
      async::wait<0>();
    }
    __syncthreads();
    const bf16 *Q = Qs + buf * kT * kLdD, *dO = dOs + buf * kT * kLdD;
    const float *lse = lse_s + buf * kT, *delta = delta_s + buf * kT;
    float s[8][4], dp[8][4];
    warp_abt(s, Ks + m0 * kLdD, Q, v.dhp);    // Sᵀ = K Qᵀ: keys × queries
    warp_abt(dp, Vs + m0 * kLdD, dO, v.dhp);  // dPᵀ = V dOᵀ
    const bool full = all_visible(tq, tk);
#pragma unroll
    for (int nb = 0; nb < 8; ++nb)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int c = 8 * nb + qc + (e & 1);  // query
        const bool vis = full || visible(tq, tk, c, m0 + g + 8 * (e >> 1));
        const float p = vis ? exp2f(s[nb][e] * sl - lse[c]) : 0.f;
        s[nb][e] = p;
        dp[nb][e] = p * (dp[nb][e] - delta[c]) * v.scale;  // dSᵀ
      }
    uint32_t pa[4][4];
    to_a(pa, s);
    warp_pb(dv, pa, dO, v.dhp);  // dV += Pᵀ dO
    to_a(pa, dp);
    warp_pb(dk, pa, Q, v.dhp);   // dK += dSᵀ Q
    __syncthreads();
  }
  float* dk_s = reinterpret_cast<float*>(Qs);  // [64, kLdA] twice, over the Q and dO stages, read out by now
  float* dv_s = dk_s + kT * kLdA;
  stage_rows(dk_s, dk, v.dhp);
  stage_rows(dv_s, dv, v.dhp);
  __syncthreads();
  bf16* row = dqkv + int64_t(tk.begin) * lddq;
  store_rows(row + (v.nq + kh) * v.dh, lddq, dk_s, tk.len, v, b.positions, tk.begin, true);
  store_rows(row + (v.nq + v.nkv + kh) * v.dh, lddq, dv_s, tk.len, v, b.positions, tk.begin, false);
}

}  // namespace

// BAMBA_ATTN_BWD: unset or "mma" the register form, "wmma" the older shared-memory tiles, "plain" neither.
static const char* attn_bwd_form() {
  const char* e = std::getenv("BAMBA_ATTN_BWD");
  if (!e || !*e) return "mma";
  if (std::strcmp(e, "plain") != 0 && std::strcmp(e, "mma") != 0 && std::strcmp(e, "wmma") != 0)
    fail("BAMBA_ATTN_BWD must be \"mma\", \"wmma\" or \"plain\", not \"", e, "\"");
  return e;
}

bool attention_backward_mma_takes(const AttnArgs& a, const DevBatch& b) {
  if (std::strcmp(attn_bwd_form(), "plain") == 0) return false;
  return a.dh <= kDMax && a.nq % a.nkv == 0 && b.chunk_q >= kT && b.chunk_q % kT == 0 && b.n_chunks > 0;
}

void attention_backward_mma(cudaStream_t st, bf16* dqkv, int64_t lddq, const bf16* dout, int64_t ldo, const AttnArgs& a,
                            const DevBatch& b, float* stats) {
  const bool async = aligned16(a.qkv) && aligned16(dout) && a.ldq % 8 == 0 && ldo % 8 == 0 && a.dh % 8 == 0;
  const View v{static_cast<const bf16*>(a.qkv), dout, a.ldq, ldo, a.nq, a.nkv, a.dh, (a.dh + 15) / 16 * 16, a.rot,
               a.scale, a.inv_freq, async};
  const unsigned tiles = unsigned(b.n_chunks * (b.chunk_q / kT));
  // Heads in x, tiles in y, so that blocks start in y order: the longest first (a query tile's work grows with
  // its index in the sequence, a key tile's shrinks), and the short ones fill in behind them.
  if (std::strcmp(attn_bwd_form(), "wmma") != 0) {
    CUDA_CHECK(cudaFuncSetAttribute(flash_stats_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(kFlashSmem)));
    CUDA_CHECK(cudaFuncSetAttribute(flash_dq_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(kFlashSmem)));
    CUDA_CHECK(cudaFuncSetAttribute(flash_dkv_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(kFlashDkvSmem)));
    flash_stats_kernel<<<dim3(unsigned(a.nq), tiles), kFThreads, kFlashSmem, st>>>(v, b, stats);
    CUDA_LAUNCH_CHECK();
    flash_dq_kernel<<<dim3(unsigned(a.nq), tiles), kFThreads, kFlashSmem, st>>>(v, b, stats, dqkv, lddq);
    CUDA_LAUNCH_CHECK();
    flash_dkv_kernel<<<dim3(unsigned(a.nkv), tiles), kFThreads, kFlashDkvSmem, st>>>(v, b, stats, dqkv, lddq);
    CUDA_LAUNCH_CHECK();
    return;
  }
  CUDA_CHECK(cudaFuncSetAttribute(stats_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(kStatsSmem)));
  CUDA_CHECK(cudaFuncSetAttribute(dq_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(kDqSmem)));
  CUDA_CHECK(cudaFuncSetAttribute(dkv_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(kDkvSmem)));
  stats_kernel<<<dim3(unsigned(a.nq), tiles), kThreads, kStatsSmem, st>>>(v, b, stats);
  CUDA_LAUNCH_CHECK();
  dq_kernel<<<dim3(unsigned(a.nq), tiles), kThreads, kDqSmem, st>>>(v, b, stats, dqkv, lddq);
  CUDA_LAUNCH_CHECK();
  dkv_kernel<<<dim3(unsigned(a.nkv), tiles), kThreads, kDkvSmem, st>>>(v, b, stats, dqkv, lddq);
  CUDA_LAUNCH_CHECK();
}

}  // namespace bamba::cuda
