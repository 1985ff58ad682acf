// The SSD backward (grad_kernels.h ssd_backward, the CPU twin) in the chunked matrix form on bf16 tensor cores
// (fp32 accumulation): the forward's structure (ssd_chunked.cu) transposed. The math, with every
// symbol, is written out in backend/cpu/ssd_backward_chunked.h, a float64 statement of these kernels tested equal
// to the reverse recurrence. Chunks of kQ = 64 tokens: the batch's chunk table (set_batch, a multiple of 64 for
// bf16) cut into 64-token pieces, some empty at a sequence's end (Δ sum 0, no tokens: the carries pass through).
// Five kernels, all in a fixed order that depends on the shape only (no atomics):
//   1. delta (chunk, head): Δ_i (softplus, clamp) and the chunk-local cum_i = A Σ_{j ≤ i} Δ_j, and its last value;
//   2. chunk_state (chunk, head): the chunk-local state Σ_i exp(cum_end − cum_i) Δ_i x_i B_iᵀ and the chunk-local
//      state gradient Σ_k exp(cum_k) dy_k C_kᵀ, both [P, N] GEMMs over the chunk's tokens;
//   3. carry (slice of the state, head, sequence): forward over the chunks, turning each chunk-local state into the
//      state entering the chunk (S_in), then backwards, turning each local gradient into the gradient of the state
//      leaving the chunk (dS_out), plus the slice's part of ⟨dS_out, S_in⟩; dstate0 at the end;
//   4. grad (chunk, head): eight small GEMMs — C Bᵀ, dy xᵀ (masked and decayed into M, DXL),
//      B dS_outᵀ + Mᵀ dy (→ dx), x dS_out + DXLᵀ C (→ dB), dy S_in + (DXL Δ) B (→ dC) — and the per-token sums
//      that make dΔ and the dA_log term (R_i in the .h); writes dx, each head's dB and dC, and the token terms;
//   then ssd_backward.cu's finishing kernels: dΔ through softplus and the clamp, dB and dC summed over each
//   group's heads in order, dA_log, dD, ddt_bias summed over tokens.
// Kernels 2 and 4 come in two forms (BAMBA_SSD_TILES): the register one (mma.sync fragments kept in registers, as
// the attention backward's flash kernels) and the older wmma one (every product through shared memory); tiles_are_wmma
// says which is the default.
// Tiles are zero-padded to multiples of 16 (head_dim ≤ 64, d_state ≤ 128); states pass through shared memory
// as bf16, like the forward's S_in. Memory: two fp32 states per (chunk, head) (the chunk-local state and state
// gradient), as the forward's chunk states, and S_in and dS_out in bf16 (the carry writes them as the grad kernels'
// tiles take them).
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <type_traits>

#include "backend/cuda/ssd_backward_chunked.cuh"
#include "backend/cuda/cp_async.cuh"
#include "backend/cuda/mma_tiles.cuh"
#include "backend/cuda/wmma_tiles.cuh"

namespace bamba::cuda {
namespace {

constexpr int kQ = 64;                      // tokens per chunk
constexpr int kPMax = 64, kNMax = 128;      // head_dim and d_state the tiles are padded to (at most)
constexpr int kLdQ = kQ + 8, kLdP = kPMax + 8, kLdN = kNMax + 8;  // bf16 row strides: +16 bytes against bank
constexpr int kLdF = kQ + 4, kLdFN = kNMax + 4;                   // conflicts; fp32 strides likewise
constexpr int kThreads = 256;               // 8 warps (kernels 2 and 3)
constexpr int kGradThreads = 512;           // 16 warps (kernel 4: one 16×16 tile each of a 64×64 product)
constexpr int kCarryPer = 4;                // state elements per carry thread
constexpr int kCarryElems = kCarryPer * kThreads;
constexpr int kCarryAhead = 8;              // chunks whose loads the carry issues together
constexpr int kMaxSplits = (kPMax * kNMax + kCarryElems - 1) / kCarryElems;  // carry slices of one state, at most

// The 64-token piece j of the batch's chunk table: first token row, tokens (0 past a sequence's end), sequence.
struct Piece {
  int begin, len, seq;
};
__device__ __forceinline__ Piece piece(const DevBatch& b, int j) {
  const int sub = b.chunk_q / kQ, c = j / sub, s = b.chunk_seq[c];
  const int begin = b.chunk_begin[c] + (j % sub) * kQ;
  return {begin, max(0, min(kQ, b.seq_start[s + 1] - begin)), s};
}

struct Scratch {
  float* cum;      // [nh, T]        cum_t, chunk-local
  float* delta;    // [nh, T]        Δ_t
  float* dec;      // [nq, nh]       cum at the chunk's last token (0 for an empty piece)
  float* states;   // [nq, nh, P, N] chunk-local state
  float* dstates;  // [nq, nh, P, N] chunk-local state gradient
  float* edot;     // [nq, nh, splits] ⟨dS_out, S_in⟩ per slice of the state
  bf16* dsout;     // [nq, nh, P, N] dS_out, rounded as the grad kernel's tile takes it (its only reader: half the
                   //                bytes of fp32 written by the carry and read by grad, the same bits in the tile)
  bf16* sinb;      // [nq, nh, P, N] S_in likewise: what the grad kernels' tiles take (the register one by cp.async),
                   //                and what ⟨dS_out, S_in⟩ is taken with (fp32 S_in would be 402 MB more traffic a
                   //                layer at 4,096 tokens of the 9B, for a sum whose other uses of S_in are bf16)
};
struct Layout {
  size_t cum, delta, dec, states, dstates, edot, dsout, sinb, total;
  int nq, splits;
};
Layout layout(const SsdBwdArgs& a, const DevBatch& b) {
  auto r32 = [](size_t x) { return (x + 31) / 32 * 32; };
  Layout l{};
  l.nq = b.n_chunks * (b.chunk_q / kQ);
  const size_t PN = size_t(a.P) * size_t(a.N), nh = size_t(a.nh), T = size_t(b.T), nq = size_t(l.nq);
  l.splits = int((PN + kCarryElems - 1) / kCarryElems);
  size_t o = 0;
  l.cum = o, o += r32(nh * T);
  l.delta = o, o += r32(nh * T);
  l.dec = o, o += r32(nq * nh);
  l.states = o, o += r32(nq * nh * PN);
  l.dstates = o, o += r32(nq * nh * PN);
  l.edot = o, o += r32(nq * nh * size_t(l.splits));
  l.dsout = o, o += r32((nq * nh * PN + 1) / 2);  // bf16
  l.sinb = o, o += r32((nq * nh * PN + 1) / 2);   // bf16
  l.total = o;
  return l;
}
Scratch scratch_at(float* s, const Layout& l) {
  return {s + l.cum,     s + l.delta, s + l.dec, s + l.states, s + l.dstates, s + l.edot,
          reinterpret_cast<bf16*>(s + l.dsout), reinterpret_cast<bf16*>(s + l.sinb)};
}

// 1. Δ and cum per (piece, head): one thread walks the piece's tokens in order.
__global__ void delta_kernel(SsdBwdArgs a, DevBatch b, int nq, Scratch sc) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= nq * a.nh) return;
  const int h = i % a.nh, j = i / a.nh;
  const Piece c = piece(b, j);
  const float A = -expf(ld_param(a.A_log, h)), dtb = ld_param(a.dt_bias, h);
  const bf16* dt = static_cast<const bf16*>(a.dt);
  float acc = 0.f;
  for (int k = 0; k < c.len; ++k) {
    const int64_t t = c.begin + k;
    const float d = fminf(fmaxf(softplus_f(to_f(dt[t * a.lddt + h]) + dtb), a.dt_min), a.dt_max);
    acc += d * A;
    sc.delta[int64_t(h) * b.T + t] = d;
    sc.cum[int64_t(h) * b.T + t] = acc;
  }
  sc.dec[i] = acc;
}

// Inclusive prefix sum over the lanes of a warp (Hillis-Steele: the order of additions is fixed).
__device__ __forceinline__ float warp_scan(float v) {
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const float u = __shfl_up_sync(0xffffffffu, v, o);
    if (lane >= o) v += u;
  }
  return v;
}

// f(r, c) for the elements r·cols + c = tid, tid + nt, ... of a rows × cols grid: the loop
// `for (e = tid; e < rows·cols; e += nt) f(e / cols, e % cols)`, element for element in its order, with one
// division per thread rather than two per element (a division by a run-time value is some twenty instructions: the
// chunk_state copy-out did 64 of them per thread, in 64-bit). cols > 0.
template <typename F>
__device__ __forceinline__ void for_grid(int rows, int cols, F&& f) {
  const int nt = blockDim.x, dr = nt / cols, dc = nt % cols;
  int r = threadIdx.x / cols, c = threadIdx.x % cols;
  while (r < rows) {
    f(r, c);
    r += dr, c += dc;
    if (c >= cols) c -= cols, ++r;
  }
}

// The weights of piece c's token rows in head h, for i < kQ (0 past the piece's end), a thread each; de = cum at
// the piece's last token. Kernel 2's: wx_i = Δ_i exp(cum_end − cum_i) (x's rows), wy_i = exp(cum_i) (dy's rows).
__device__ __forceinline__ void state_weights(const Scratch& sc, const DevBatch& b, const Piece& c, int h, float de,
                                              float* wx, float* wy) {
  for (int i = threadIdx.x; i < kQ; i += blockDim.x) {
    const bool in = i < c.len;
    const float cu = in ? sc.cum[int64_t(h) * b.T + c.begin + i] : 0.f;
    wx[i] = in ? sc.delta[int64_t(h) * b.T + c.begin + i] * expf(de - cu) : 0.f;
    wy[i] = in ? expf(cu) : 0.f;
  }
}
// Kernel 4's: cum_i, Δ_i, exp(cum_end − cum_i), exp(cum_i).
__device__ __forceinline__ void grad_weights(const Scratch& sc, const DevBatch& b, const Piece& c, int h, float de,
                                             float* cum, float* dl, float* wout, float* win) {
  for (int i = threadIdx.x; i < kQ; i += blockDim.x) {
    const bool in = i < c.len;
    const float cu = in ? sc.cum[int64_t(h) * b.T + c.begin + i] : 0.f;
    cum[i] = cu;
    dl[i] = in ? sc.delta[int64_t(h) * b.T + c.begin + i] : 0.f;
    wout[i] = in ? expf(de - cu) : 0.f;
    win[i] = in ? expf(cu) : 0.f;
  }
}

// 2. The chunk-local state and state gradient of (piece, head), [P, N] each, fp32 into scratch.
constexpr size_t kStateSmem = size_t(2 * kQ * kLdP + 2 * kQ * kLdN) * 2 + size_t(kPMax * kLdFN + 2 * kQ) * 4;
__global__ void __launch_bounds__(kThreads) chunk_state_kernel(SsdBwdArgs a, DevBatch b, Scratch sc) {
  extern __shared__ __align__(128) unsigned char smem[];
  bf16* xs = reinterpret_cast<bf16*>(smem);  // [Q, kLdP] x_i · Δ_i exp(cum_end − cum_i)
  bf16* ys = xs + kQ * kLdP;                  // [Q, kLdP] dy_k · exp(cum_k)
  bf16* Bs = ys + kQ * kLdP;                  // [Q, kLdN]
  bf16* Cs = Bs + kQ * kLdN;                  // [Q, kLdN]
  float* out = reinterpret_cast<float*>(Cs + kQ * kLdN);  // [P, kLdFN]
  float* wx = out + kPMax * kLdFN;                         // [Q]
  float* wy = wx + kQ;                                     // [Q]
  const int j = blockIdx.x, h = blockIdx.y, nh = a.nh, P = a.P, N = a.N, G = a.G, g = h / (nh / G);
  const int Pp = (P + 15) / 16 * 16, Np = (N + 15) / 16 * 16;
  const int64_t I = int64_t(nh) * P, PN = int64_t(P) * N;
  const Piece c = piece(b, j);
  state_weights(sc, b, c, h, sc.dec[j * nh + h], wx, wy);
  __syncthreads();
  const bf16* row = static_cast<const bf16*>(a.xBC) + int64_t(c.begin) * a.ldx;
  const bf16* dyr = static_cast<const bf16*>(a.dy) + int64_t(c.begin) * a.lddy;
  load_tile(xs, kLdP, row + h * P, a.ldx, c.len, P, kQ, Pp, wx);
  load_tile(ys, kLdP, dyr + h * P, a.lddy, c.len, P, kQ, Pp, wy);
  load_tile(Bs, kLdN, row + I + g * N, a.ldx, c.len, N, kQ, Np, nullptr);
  load_tile(Cs, kLdN, row + I + int64_t(G) * N + g * N, a.ldx, c.len, N, kQ, Np, nullptr);
  __syncthreads();
  for (int which = 0; which < 2; ++which) {
    // [p][n] = Σ_i xs[i][p] Bs[i][n] (then Σ_k ys[k][p] Cs[k][n]): A = xsᵀ, column-major in xs
    block_gemm<wmma::col_major, wmma::row_major>(out, kLdFN, which ? ys : xs, kLdP, which ? Cs : Bs, kLdN, Pp, Np,
                                                 kQ, false);
    __syncthreads();
    float* dst = (which ? sc.dstates : sc.states) + (int64_t(j) * nh + h) * PN;
    for_grid(P, N, [&](int p, int n) { dst[p * N + n] = out[p * kLdFN + n]; });
    __syncthreads();
  }
}

// 3. The carries over a sequence's pieces, for one slice of kCarryElems state elements of one head. The walk is
// serial in the chunks, but its loads are not: they do not depend on the carried value, so the chunks go in groups
// of AHEAD (kCarryAhead) with every load of a group issued before the group's first store (a store may alias a
// later load as far as the compiler knows, which kept the plain loop at one memory round trip per chunk and
// element). AHEAD = 1 is that plain loop (BAMBA_SSD_CARRY=serial keeps it for comparison); the arithmetic is the
// same in the same order for any AHEAD: the same bits.
template <int AHEAD>
__global__ void __launch_bounds__(kThreads) carry_kernel(SsdBwdArgs a, DevBatch b, Scratch sc, int splits) {
  __shared__ float red[32];
  const int split = blockIdx.x, h = blockIdx.y, s = blockIdx.z, nh = a.nh, sub = b.chunk_q / kQ;
  const int64_t PN = int64_t(a.P) * a.N;
  const int j0 = b.chunk_first[s] * sub, j1 = b.chunk_first[s + 1] * sub;
  int64_t e[kCarryPer];
  float v[kCarryPer];
  for (int k = 0; k < kCarryPer; ++k) {
    e[k] = int64_t(split) * kCarryElems + k * kThreads + threadIdx.x;
    v[k] = a.state0 && e[k] < PN ? a.state0[(int64_t(s) * nh + h) * PN + e[k]] : 0.f;
  }
  for (int g = j0; g < j1; g += AHEAD) {  // local state → S_in
    float loc[AHEAD][kCarryPer], dcy[AHEAD];
#pragma unroll
    for (int d = 0; d < AHEAD; ++d) {
      const int j = g + d;
      if (j < j1) {
        dcy[d] = expf(sc.dec[j * nh + h]);
        const float* S = sc.states + (int64_t(j) * nh + h) * PN;
#pragma unroll
        for (int k = 0; k < kCarryPer; ++k) loc[d][k] = e[k] < PN ? S[e[k]] : 0.f;
      }
    }
#pragma unroll
    for (int d = 0; d < AHEAD; ++d) {
      const int j = g + d;
      if (j < j1) {
        bf16* Sb = sc.sinb + (int64_t(j) * nh + h) * PN;
#pragma unroll
        for (int k = 0; k < kCarryPer; ++k)
          if (e[k] < PN) {
            Sb[e[k]] = __float2bfloat16_rn(v[k]);
            v[k] = dcy[d] * v[k] + loc[d][k];
          }
      }
    }
  }
  for (int k = 0; k < kCarryPer; ++k) v[k] = 0.f;
  for (int g = j1 - 1; g >= j0; g -= AHEAD) {  // local gradient → dS_out, walking backwards
    float loc[AHEAD][kCarryPer], sin[AHEAD][kCarryPer], dcy[AHEAD];
#pragma unroll
    for (int d = 0; d < AHEAD; ++d) {
      const int j = g - d;
      if (j >= j0) {
        dcy[d] = expf(sc.dec[j * nh + h]);
        const bf16* Sb = sc.sinb + (int64_t(j) * nh + h) * PN;
        const float* dS = sc.dstates + (int64_t(j) * nh + h) * PN;
#pragma unroll
        for (int k = 0; k < kCarryPer; ++k) {
          loc[d][k] = e[k] < PN ? dS[e[k]] : 0.f;
          sin[d][k] = e[k] < PN ? to_f(Sb[e[k]]) : 0.f;
        }
      }
    }
#pragma unroll
    for (int d = 0; d < AHEAD; ++d) {
      const int j = g - d;
      if (j >= j0) {  // the same for the whole block: block_sum's barriers are met by every thread
        bf16* dS = sc.dsout + (int64_t(j) * nh + h) * PN;
        float dot = 0.f;
#pragma unroll
        for (int k = 0; k < kCarryPer; ++k)
          if (e[k] < PN) {
            dS[e[k]] = __float2bfloat16_rn(v[k]);
            dot += v[k] * sin[d][k];
            v[k] = dcy[d] * v[k] + loc[d][k];
          }
        dot = block_sum(dot, red);
        if (threadIdx.x == 0) sc.edot[(int64_t(j) * nh + h) * splits + split] = dot;
      }
    }
  }
  if (a.dstate0)
    for (int k = 0; k < kCarryPer; ++k)
      if (e[k] < PN) a.dstate0[(int64_t(s) * nh + h) * PN + e[k]] = v[k];
}

// out[i] = Σ_{k < kQ} f(i, k) for the kQ columns i at once, 8 lanes a column (kGradThreads = 8 kQ): lane q of a
// column adds the terms k = q, q + 8, ... in order, then the column's eight partials are added in lane order — a
// fixed order, the same bits every run. (One thread a column walked 64 dependent shared-memory loads.) Interleaved
// rows put a warp's 32 reads of a [k][i] tile with row stride kLdF on distinct banks.
template <typename F>
__device__ __forceinline__ void column_sums(float* out, F&& f) {
  const int lane = threadIdx.x % 32, i = threadIdx.x / 8, q = threadIdx.x % 8;
  float s = 0.f;
  for (int k = q; k < kQ; k += 8) s += f(i, k);
  float tot = 0.f;
#pragma unroll
  for (int p = 0; p < 8; ++p) tot += __shfl_sync(0xffffffffu, s, (lane & ~7) + p);
  if (q == 0) out[i] = tot;
}

// 4. The gradients of one (piece, head). Shared memory, in the order of the layout below (bytes):
//   Cs, Bs [Q, kLdN] bf16 (C_k, B_i); Sin, dSo [P, kLdN] bf16 (S_in, dS_out); xs, ys [Q, kLdP] bf16 (x_i, dy_k);
//   Mb, Lx, Ld [Q, kLdQ] bf16 ((C Bᵀ)∘L, (dy xᵀ)∘L, (dy xᵀ)∘L·Δ_i); Fs [Q, kLdF] fp32 (sB: dS B, per token);
//   Fb, Fc [Q, kLdFN] fp32 (dB, dC; before them, C Bᵀ then W, and dy xᵀ); 10 vectors of Q floats; kMaxSplits floats.
constexpr size_t kBf = 2, kF = 4;
constexpr size_t kGradSmem = (4 * kQ * kLdN + 2 * kQ * kLdP + 3 * kQ * kLdQ) * kBf +
                             (kQ * kLdF + 2 * kQ * kLdFN + 10 * kQ + kMaxSplits) * kF;
static_assert(kPMax == kQ, "Sin and dSo are laid out with kQ rows");
static_assert(kGradThreads == 8 * kQ, "column_sums gives each column 8 lanes");

__global__ void __launch_bounds__(kGradThreads, 1) grad_kernel(SsdBwdArgs a, DevBatch b, Scratch sc, int splits, float* dBp,
                                                        float* dCp, float* tok) {
  extern __shared__ __align__(128) unsigned char smem[];
  bf16* Cs = reinterpret_cast<bf16*>(smem);
  bf16* Bs = Cs + kQ * kLdN;
  bf16* Sin = Bs + kQ * kLdN;
  bf16* dSo = Sin + kPMax * kLdN;
  bf16* xs = dSo + kPMax * kLdN;
  bf16* ys = xs + kQ * kLdP;
  bf16* Mb = ys + kQ * kLdP;
  bf16* Lx = Mb + kQ * kLdQ;
  bf16* Ld = Lx + kQ * kLdQ;
  float* Fs = reinterpret_cast<float*>(Ld + kQ * kLdQ);
  float* Fb = Fs + kQ * kLdF;
  float* Fc = Fb + kQ * kLdFN;
  float* cum = Fc + kQ * kLdFN;  // [Q] each
  float* dl = cum + kQ;          // Δ_i
  float* wout = dl + kQ;         // exp(cum_end − cum_i)
  float* win = wout + kQ;        // exp(cum_k)
  float* Rw = win + kQ;          // Σ_{j ≥ i} Σ_{m < i} W[j][m]
  float* V = Rw + kQ;
  float* u = V + kQ;
  float* xsb = u + kQ;  // x_i · sB_i
  float* dd = xsb + kQ;  // dy_i · x_i
  float* uv = dd + kQ;   // Σ_{k ≥ i} u_k + Σ_{m < i} V_m
  float* eds = uv + kQ;  // [kMaxSplits] ⟨dS_out, S_in⟩ per slice
  float* Fcb = Fb;  // [Q, kLdF] C Bᵀ, then W, then its row prefix sums (until Fb is written)
  float* Fdx = Fc;  // [Q, kLdF] dy xᵀ (until Fc is written)

  const int j = blockIdx.x, h = blockIdx.y, nh = a.nh, P = a.P, N = a.N, G = a.G, g = h / (nh / G);
  const int Pp = (P + 15) / 16 * 16, Np = (N + 15) / 16 * 16, tid = threadIdx.x, nt = blockDim.x;
  const int64_t I = int64_t(nh) * P, PN = int64_t(P) * N;
  const Piece c = piece(b, j);
  if (c.len == 0) return;  // the whole block: an empty piece has no tokens
  const int len = c.len;
  const float de = sc.dec[j * nh + h], A = -expf(ld_param(a.A_log, h)), Dh = ld_param(a.D, h);
  // ⟨dS_out, S_in⟩'s slices (kernel 3): into shared memory now, a thread each, beside the tile loads; added at the
  // end in slice order (where every thread walked them, a dependent L2 round trip per slice)
  if (tid < splits) eds[tid] = sc.edot[(int64_t(j) * nh + h) * splits + tid];
  grad_weights(sc, b, c, h, de, cum, dl, wout, win);
  const bf16* row = static_cast<const bf16*>(a.xBC) + int64_t(c.begin) * a.ldx;
  const bf16* dyr = static_cast<const bf16*>(a.dy) + int64_t(c.begin) * a.lddy;
  const bf16* S_in = sc.sinb + (int64_t(j) * nh + h) * PN;
  const bf16* dS_out = sc.dsout + (int64_t(j) * nh + h) * PN;
  load_tile(Cs, kLdN, row + I + int64_t(G) * N + g * N, a.ldx, len, N, kQ, Np, nullptr);
  load_tile(Bs, kLdN, row + I + g * N, a.ldx, len, N, kQ, Np, nullptr);
  load_tile(xs, kLdP, row + h * P, a.ldx, len, P, kQ, Pp, nullptr);
  load_tile(ys, kLdP, dyr + h * P, a.lddy, len, P, kQ, Pp, nullptr);
  load_tile(Sin, kLdN, S_in, N, P, N, Pp, Np, nullptr);
  load_tile(dSo, kLdN, dS_out, N, P, N, Pp, Np, nullptr);
  __syncthreads();

  // C Bᵀ [k][i] (K = N) and dy xᵀ [k][i] (K = P)
  block_gemm<wmma::row_major, wmma::col_major>(Fcb, kLdF, Cs, kLdN, Bs, kLdN, kQ, kQ, Np, false);
  block_gemm<wmma::row_major, wmma::col_major>(Fdx, kLdF, ys, kLdP, xs, kLdP, kQ, kQ, Pp, false);
  __syncthreads();
  // mask and decay: L[k][i] = exp(cum_k − cum_i) for i ≤ k < len; W (strictly below the diagonal) in place
  for (int e = tid; e < kQ * kQ; e += nt) {
    const int k = e / kQ, i = e % kQ;
    const float l = i <= k && k < len ? expf(cum[k] - cum[i]) : 0.f;
    const float cb = Fcb[k * kLdF + i] * l, dx = Fdx[k * kLdF + i] * l;
    Mb[k * kLdQ + i] = __float2bfloat16_rn(cb);
    Lx[k * kLdQ + i] = __float2bfloat16_rn(dx);
    Ld[k * kLdQ + i] = __float2bfloat16_rn(dx * dl[i]);
    Fcb[k * kLdF + i] = i < k ? cb * Fdx[k * kLdF + i] * dl[i] : 0.f;
  }
  __syncthreads();
  for (int k = tid / 32; k < kQ; k += nt / 32) {  // row k: exclusive prefix sums over m, a warp a row
    const int lane = tid % 32;
    const float w0 = Fcb[k * kLdF + lane], w1 = Fcb[k * kLdF + lane + 32];
    const float i0 = warp_scan(w0), i1 = warp_scan(w1);  // inclusive, over lanes
    const float e0 = __shfl_up_sync(0xffffffffu, i0, 1), e1 = __shfl_up_sync(0xffffffffu, i1, 1);
    const float half = __shfl_sync(0xffffffffu, i0, 31);  // Σ of the first 32
    Fcb[k * kLdF + lane] = lane ? e0 : 0.f;
    Fcb[k * kLdF + lane + 32] = half + (lane ? e1 : 0.f);
  }
  __syncthreads();
  column_sums(Rw, [&](int i, int k) { return k >= i ? Fcb[k * kLdF + i] : 0.f; });  // column i: Σ_{k ≥ i}
  __syncthreads();  // Fcb and Fdx are free from here

  // the parts through the states: B dS_outᵀ [i][p], x dS_out [i][n], dy S_in [k][n]
  block_gemm<wmma::row_major, wmma::col_major>(Fs, kLdF, Bs, kLdN, dSo, kLdN, kQ, Pp, Np, false);
  block_gemm<wmma::row_major, wmma::row_major>(Fb, kLdFN, xs, kLdP, dSo, kLdN, kQ, Np, Pp, false);
  block_gemm<wmma::row_major, wmma::row_major>(Fc, kLdFN, ys, kLdP, Sin, kLdN, kQ, Np, Pp, false);
  __syncthreads();
  for_grid(kQ, Np, [&](int r, int col) {
    if (col < Pp) Fs[r * kLdF + col] *= wout[r];
    Fb[r * kLdFN + col] *= wout[r];
    Fc[r * kLdFN + col] *= win[r];
  });
  __syncthreads();
  row_dots(V, xs, kLdP, Fs, kLdF, kQ, Pp, dl);     // V_i = Δ_i x_i · (exp(cum_end − cum_i) dS_out B_i)
  row_dots(u, Cs, kLdN, Fc, kLdFN, kQ, Np, nullptr);  // u_k = C_k · (exp(cum_k) S_inᵀ dy_k)
  __syncthreads();
  // the parts inside the chunk, accumulated on top
  block_gemm<wmma::col_major, wmma::row_major>(Fs, kLdF, Mb, kLdQ, ys, kLdP, kQ, Pp, kQ, true);   // + Mᵀ dy
  block_gemm<wmma::col_major, wmma::row_major>(Fb, kLdFN, Lx, kLdQ, Cs, kLdN, kQ, Np, kQ, true);  // + Lxᵀ C
  block_gemm<wmma::row_major, wmma::row_major>(Fc, kLdFN, Ld, kLdQ, Bs, kLdN, kQ, Np, kQ, true);  // + Ld B
  __syncthreads();

  bf16* dx = static_cast<bf16*>(a.dxBC) + int64_t(c.begin) * a.lddx + h * P;
  for_grid(len, P, [&](int i, int p) {
    dx[int64_t(i) * a.lddx + p] = __float2bfloat16_rn(Dh * to_f(ys[i * kLdP + p]) + dl[i] * Fs[i * kLdF + p]);
  });
  for_grid(len, N, [&](int i, int n) {
    const int64_t o = ((int64_t(c.begin) + i) * nh + h) * N + n;
    dBp[o] = dl[i] * Fb[i * kLdFN + n];
    dCp[o] = Fc[i * kLdFN + n];
  });
  row_dots(xsb, xs, kLdP, Fs, kLdF, len, P, nullptr);
  for (int r = tid / 32; r < len; r += nt / 32) {  // dy_i · x_i
    float s = 0.f;
    for (int p = tid % 32; p < P; p += 32) s += to_f(ys[r * kLdP + p]) * to_f(xs[r * kLdP + p]);
    s = warp_sum(s);
    if (tid % 32 == 0) dd[r] = s;
  }
  // Σ_{k ≥ i} u_k + Σ_{m < i} V_m over the piece's tokens
  column_sums(uv, [&](int i, int k) { return k < len ? (k >= i ? u[k] : V[k]) : 0.f; });
  __syncthreads();
  float E = 0.f;
  for (int k = 0; k < splits; ++k) E += eds[k];
  E *= expf(de);
  for (int i = tid; i < len; i += nt) {
    const float r = E + Rw[i] + uv[i];
    float* o = tok + ((int64_t(c.begin) + i) * nh + h) * 3;
    o[0] = xsb[i] + A * r;
    o[1] = dl[i] * A * r;
    o[2] = dd[i];
  }
}

// ---- 4, the register form (BAMBA_SSD_TILES=mma; see tiles_are_wmma for the default) ----
// The same gradients of one (piece, head) with mma.sync fragments kept in registers (mma_tiles.cuh), as the
// attention backward's flash kernels: 4 warps, warp w owning rows 16w..16w+15 of every 64-row product, tiles in by
// cp.async, 108 KB of shared memory so that two blocks share an SM (the wmma form's 199 KB kept one, and every
// 64×64 product went through shared memory and a barrier: 2.2 ms a layer at the 9B's shape, bench/NOTES.md v28).
//   rows k: C Bᵀ and dy xᵀ (K = N, P) → masked and decayed in registers into M = (C Bᵀ)∘L and Lx = (dy xᵀ)∘L (to
//           shared memory: the later products read them transposed), Ld = Lx·Δ_i (kept as the A operand), W and
//           its row prefix sums (a row's 64 columns lie in one quad: shuffles), the warp's part of Rw, and
//           dy_k · x_k (the diagonal of dy xᵀ);
//           then dC = exp(cum_k) dy S_in (→ u_k = C_k · it) + Ld B, from this warp's registers only;
//   barrier (M and Lx of every warp);
//   rows i: dx = D dy + Δ (exp(cum_end − cum_i) B dS_outᵀ (→ V_i) + Mᵀ dy), and x_i · that;
//           dB = Δ (exp(cum_end − cum_i) x dS_out + Lxᵀ C);
//   barrier; the per-token sums (warp scans) and the token terms.
// Every sum in an order fixed by the shape; not the wmma form's bits (its fragments add k in another order).
constexpr int kRThreads = 128;
constexpr size_t kRegSmem = (4 * kQ * kLdN + 2 * kQ * kLdP + 2 * kQ * kLdQ) * kBf + (9 * kQ + 4 * kQ + kMaxSplits) * kF;
static_assert(kRThreads == 2 * kQ, "the tail gives each lane of a warp two tokens");

// A [R, C] bf16 tile of rows × cols from src (row stride lds) into dst (stride ld), zeros around: by cp.async when
// every row is whole 16-byte runs (the caller commits and waits), else through registers (load_tile).
__device__ __forceinline__ void fetch_tile(bf16* dst, int ld, const bf16* src, int64_t lds, int rows, int cols, int R,
                                           int C) {
  if (reinterpret_cast<uintptr_t>(src) % 16 != 0 || lds % 8 != 0 || cols % 8 != 0)
    return load_tile(dst, ld, src, lds, rows, cols, R, C, nullptr);
  const int cv = C / 8;
  for (int e = threadIdx.x; e < R * cv; e += blockDim.x) {
    const int r = e / cv, c = e % cv * 8;
    const bool in = r < rows && c < cols;
    async::copy16(dst + r * ld + c, in ? src + int64_t(r) * lds + c : src, in);
  }
}

__global__ void __launch_bounds__(kRThreads, 2) grad_mma_kernel(SsdBwdArgs a, DevBatch b, Scratch sc, int splits,
                                                                float* dBp, float* dCp, float* tok) {
  using enum TileLayout;
  extern __shared__ __align__(128) unsigned char smem[];
  bf16* Cs = reinterpret_cast<bf16*>(smem);  // [Q, kLdN]  C_k
  bf16* Bs = Cs + kQ * kLdN;                  // [Q, kLdN]  B_i
  bf16* dSo = Bs + kQ * kLdN;                 // [P, kLdN]  dS_out
  bf16* Sin = dSo + kPMax * kLdN;             // [P, kLdN]  S_in
  bf16* xs = Sin + kPMax * kLdN;              // [Q, kLdP]  x_i
  bf16* ys = xs + kQ * kLdP;                  // [Q, kLdP]  dy_k
  bf16* Mb = ys + kQ * kLdP;                  // [Q, kLdQ]  (C Bᵀ)∘L, [k][i]
  bf16* Lx = Mb + kQ * kLdQ;                  // [Q, kLdQ]  (dy xᵀ)∘L, [k][i]
  float* cum = reinterpret_cast<float*>(Lx + kQ * kLdQ);  // [Q] each
  float* dl = cum + kQ;    // Δ_i
  float* wout = dl + kQ;   // exp(cum_end − cum_i)
  float* win = wout + kQ;  // exp(cum_k)
  float* V = win + kQ;     // Δ_i x_i · (exp(cum_end − cum_i) dS_out B_i)
  float* u = V + kQ;       // C_k · (exp(cum_k) S_inᵀ dy_k)
  float* xsb = u + kQ;     // x_i · sB_i
  float* dd = xsb + kQ;    // dy_i · x_i
  float* Vp = dd + kQ;     // Σ_{m < i} V_m
  float* Rwp = Vp + kQ;    // [4][Q] each warp's rows' part of Rw_i = Σ_{k ≥ i} Σ_{m < i} W[k][m]
  float* eds = Rwp + 4 * kQ;  // [kMaxSplits] ⟨dS_out, S_in⟩ per slice

  const int j = blockIdx.x, h = blockIdx.y, nh = a.nh, P = a.P, N = a.N, G = a.G, g = h / (nh / G);
  const int Pp = (P + 15) / 16 * 16, Np = (N + 15) / 16 * 16, tid = threadIdx.x;
  const int64_t I = int64_t(nh) * P, PN = int64_t(P) * N;
  const Piece c = piece(b, j);
  if (c.len == 0) return;  // the whole block: an empty piece has no tokens
  const int len = c.len;
  const bf16* row = static_cast<const bf16*>(a.xBC) + int64_t(c.begin) * a.ldx;
  const bf16* dyr = static_cast<const bf16*>(a.dy) + int64_t(c.begin) * a.lddy;
  const int64_t st = (int64_t(j) * nh + h) * PN;
  fetch_tile(Cs, kLdN, row + I + int64_t(G) * N + g * N, a.ldx, len, N, kQ, Np);
  fetch_tile(Bs, kLdN, row + I + g * N, a.ldx, len, N, kQ, Np);
  fetch_tile(ys, kLdP, dyr + h * P, a.lddy, len, P, kQ, Pp);
  fetch_tile(xs, kLdP, row + h * P, a.ldx, len, P, kQ, Pp);
  fetch_tile(Sin, kLdN, sc.sinb + st, N, P, N, Pp, Np);  // rows past Pp are never read
  fetch_tile(dSo, kLdN, sc.dsout + st, N, P, N, Pp, Np);
  async::commit();
  const float de = sc.dec[j * nh + h], A = -expf(ld_param(a.A_log, h)), Dh = ld_param(a.D, h);
  if (tid < splits) eds[tid] = sc.edot[(int64_t(j) * nh + h) * splits + tid];
  grad_weights(sc, b, c, h, de, cum, dl, wout, win);
  async::wait<0>();
  __syncthreads();

  const int w = tid / 32, lane = tid % 32, r0 = 16 * w, gr = lane / 4, qc = 2 * (lane % 4);
  {  // rows k = r0 + gr (+ 8)
    float cb[8][4], dx[8][4];
    zero(cb), zero(dx);
    warp_mma<kRowsK, kNK, kNMax>(cb, Cs + r0 * kLdN, kLdN, Bs, kLdN, Np, kQ);  // C Bᵀ
    warp_mma<kRowsK, kNK, kPMax>(dx, ys + r0 * kLdP, kLdP, xs, kLdP, Pp, kQ);  // dy xᵀ
    const float ck[2] = {cum[r0 + gr], cum[r0 + gr + 8]};
    float run[2] = {0.f, 0.f}, rw[8][2];  // W's row prefix so far; this lane's columns' part of Rw
#pragma unroll
    for (int nb = 0; nb < 8; ++nb) {
#pragma unroll
      for (int hr = 0; hr < 2; ++hr) {  // row k = r0 + gr + 8 hr, columns i, i + 1
        const int k = r0 + gr + 8 * hr, i = 8 * nb + qc;
        float mv[2], lx[2], wv[2];
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const float l = i + e <= k && k < len ? expf(ck[hr] - cum[i + e]) : 0.f;
          const float raw = dx[nb][2 * hr + e];
          if (i + e == k) dd[k] = raw;
          mv[e] = cb[nb][2 * hr + e] * l;
          lx[e] = raw * l;
          wv[e] = i + e < k ? mv[e] * raw * dl[i + e] : 0.f;
          dx[nb][2 * hr + e] = lx[e] * dl[i + e];  // Ld, the A operand of Ld B below
        }
        *reinterpret_cast<uint32_t*>(Mb + k * kLdQ + i) = pack_bf16(mv[0], mv[1]);
        *reinterpret_cast<uint32_t*>(Lx + k * kLdQ + i) = pack_bf16(lx[0], lx[1]);
        // the exclusive prefix Σ_{m < i} W[k][m]: the quad's pairs scanned in lane order, after the earlier blocks
        const float s = wv[0] + wv[1];
        float inc = s;
        const float t1 = __shfl_up_sync(0xffffffffu, inc, 1);
        if (lane % 4 >= 1) inc += t1;
        const float t2 = __shfl_up_sync(0xffffffffu, inc, 2);
        if (lane % 4 >= 2) inc += t2;
        const float before = __shfl_up_sync(0xffffffffu, inc, 1), tot = __shfl_sync(0xffffffffu, inc, lane | 3);
        const float p0 = run[hr] + (lane % 4 ? before : 0.f), p1 = p0 + wv[0];
        run[hr] += tot;
        rw[nb][0] = (hr ? rw[nb][0] : 0.f) + (k >= i ? p0 : 0.f);  // Σ over this lane's rows k ≥ i
        rw[nb][1] = (hr ? rw[nb][1] : 0.f) + (k >= i + 1 ? p1 : 0.f);
      }
    }
#pragma unroll
    for (int nb = 0; nb < 8; ++nb)
#pragma unroll
      for (int e = 0; e < 2; ++e) {  // over the warp's 16 rows: the lanes of equal lane % 4
        float v = rw[nb][e];
        v += __shfl_xor_sync(0xffffffffu, v, 4);
        v += __shfl_xor_sync(0xffffffffu, v, 8);
        v += __shfl_xor_sync(0xffffffffu, v, 16);
        if (gr == 0) Rwp[w * kQ + 8 * nb + qc + e] = v;
      }
    uint32_t ld[4][4];
    to_a(ld, dx);
    float fc[16][4];
    zero(fc);
    warp_mma<kRowsK, kKN, kPMax>(fc, ys + r0 * kLdP, kLdP, Sin, kLdN, Pp, Np);  // dy S_in
    float us[2] = {0.f, 0.f};
#pragma unroll
    for (int nb = 0; nb < 16; ++nb)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int k = r0 + gr + 8 * (e >> 1), n = 8 * nb + qc + (e & 1);
        fc[nb][e] *= win[k];
        if (n < N) us[e >> 1] += to_f(Cs[k * kLdN + n]) * fc[nb][e];  // (columns past Np were never loaded)
      }
    us[0] = quad_sum(us[0]), us[1] = quad_sum(us[1]);
    if (lane % 4 == 0) u[r0 + gr] = us[0], u[r0 + gr + 8] = us[1];
    warp_mma_regs<kKN>(fc, ld, Bs, kLdN, Np);  // + Ld B
#pragma unroll
    for (int nb = 0; nb < 16; ++nb)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int k = r0 + gr + 8 * (e >> 1), n = 8 * nb + qc + (e & 1);
        if (k < len && n < N) dCp[((int64_t(c.begin) + k) * nh + h) * N + n] = fc[nb][e];
      }
  }
  __syncthreads();  // M and Lx of every warp's rows
  {  // rows i = r0 + gr (+ 8): dx
    float fs[8][4];
    zero(fs);
    warp_mma<kRowsK, kNK, kNMax>(fs, Bs + r0 * kLdN, kLdN, dSo, kLdN, Np, Pp);  // B dS_outᵀ
    float vs[2] = {0.f, 0.f};
#pragma unroll
    for (int nb = 0; nb < 8; ++nb)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int i = r0 + gr + 8 * (e >> 1), p = 8 * nb + qc + (e & 1);
        fs[nb][e] *= wout[i];
        if (p < P) vs[e >> 1] += to_f(xs[i * kLdP + p]) * fs[nb][e];
      }
    vs[0] = quad_sum(vs[0]), vs[1] = quad_sum(vs[1]);
    if (lane % 4 == 0) V[r0 + gr] = dl[r0 + gr] * vs[0], V[r0 + gr + 8] = dl[r0 + gr + 8] * vs[1];
    warp_mma<kKRows, kKN, kQ>(fs, Mb + r0, kLdQ, ys, kLdP, kQ, Pp);  // + Mᵀ dy
    bf16* dxo = static_cast<bf16*>(a.dxBC) + int64_t(c.begin) * a.lddx + h * P;
    float xb[2] = {0.f, 0.f};
#pragma unroll
    for (int nb = 0; nb < 8; ++nb)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int i = r0 + gr + 8 * (e >> 1), p = 8 * nb + qc + (e & 1);
        if (p < P) xb[e >> 1] += to_f(xs[i * kLdP + p]) * fs[nb][e];
        if (i < len && p < P)
          dxo[int64_t(i) * a.lddx + p] = __float2bfloat16_rn(Dh * to_f(ys[i * kLdP + p]) + dl[i] * fs[nb][e]);
      }
    xb[0] = quad_sum(xb[0]), xb[1] = quad_sum(xb[1]);
    if (lane % 4 == 0) xsb[r0 + gr] = xb[0], xsb[r0 + gr + 8] = xb[1];
  }
  {  // rows i: dB
    float fb[16][4];
    zero(fb);
    warp_mma<kRowsK, kKN, kPMax>(fb, xs + r0 * kLdP, kLdP, dSo, kLdN, Pp, Np);  // x dS_out
#pragma unroll
    for (int nb = 0; nb < 16; ++nb)
#pragma unroll
      for (int e = 0; e < 4; ++e) fb[nb][e] *= wout[r0 + gr + 8 * (e >> 1)];
    warp_mma<kKRows, kKN, kQ>(fb, Lx + r0, kLdQ, Cs, kLdN, kQ, Np);  // + Lxᵀ C
#pragma unroll
    for (int nb = 0; nb < 16; ++nb)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int i = r0 + gr + 8 * (e >> 1), n = 8 * nb + qc + (e & 1);
        if (i < len && n < N) dBp[((int64_t(c.begin) + i) * nh + h) * N + n] = dl[i] * fb[nb][e];
      }
  }
  __syncthreads();
  // Σ_{k ≥ i} u_k + Σ_{m < i} V_m over the piece's tokens: warp 0 the suffix sums of u (in place), warp 1 the
  // prefix sums of V, two tokens a lane, by warp scans
  if (w < 2) {
    const int i0 = w == 0 ? kQ - 1 - 2 * lane : 2 * lane, i1 = w == 0 ? i0 - 1 : i0 + 1;  // i0 first in scan order
    const float* src = w == 0 ? u : V;
    const float v0 = i0 < len ? src[i0] : 0.f, v1 = i1 < len ? src[i1] : 0.f;
    const float inc = warp_scan(v0 + v1), ex = __shfl_up_sync(0xffffffffu, inc, 1), before = lane ? ex : 0.f;
    if (w == 0) u[i0] = before + v0, u[i1] = before + v0 + v1;  // inclusive: k ≥ i
    else Vp[i0] = before, Vp[i1] = before + v0;                 // exclusive: m < i
  }
  __syncthreads();
  float E = 0.f;
  for (int k = 0; k < splits; ++k) E += eds[k];
  E *= expf(de);
  for (int i = tid; i < len; i += blockDim.x) {
    const float rw = ((Rwp[i] + Rwp[kQ + i]) + Rwp[2 * kQ + i]) + Rwp[3 * kQ + i];
    const float r = E + rw + (u[i] + Vp[i]);
    float* o = tok + ((int64_t(c.begin) + i) * nh + h) * 3;
    o[0] = xsb[i] + A * r;
    o[1] = dl[i] * A * r;
    o[2] = dd[i];
  }
}

// ---- 2, the register form (BAMBA_SSD_TILES=mma; see tiles_are_wmma for the default) ----
// The same two [P, N] products as chunk_state_kernel, each warp owning 16 rows p with the outputs in registers and
// stored from there (the wmma form staged them through 34 KB of fp32 shared memory and a barrier): 54 KB of shared
// memory, up to four blocks an SM. x and dy come in scaled (load_tile, the wmma form's bits), B and C by cp.async.
constexpr size_t kRStateSmem = size_t(2 * kQ * kLdP + 2 * kQ * kLdN) * kBf + size_t(2 * kQ) * kF;
__global__ void __launch_bounds__(kRThreads, 3) chunk_state_mma_kernel(SsdBwdArgs a, DevBatch b, Scratch sc) {
  using enum TileLayout;
  extern __shared__ __align__(128) unsigned char smem[];
  bf16* Bs = reinterpret_cast<bf16*>(smem);  // [Q, kLdN] B_i
  bf16* Cs = Bs + kQ * kLdN;                  // [Q, kLdN] C_k
  bf16* xs = Cs + kQ * kLdN;                  // [Q, kLdP] x_i · Δ_i exp(cum_end − cum_i)
  bf16* ys = xs + kQ * kLdP;                  // [Q, kLdP] dy_k · exp(cum_k)
  float* wx = reinterpret_cast<float*>(ys + kQ * kLdP);  // [Q]
  float* wy = wx + kQ;                                    // [Q]
  const int j = blockIdx.x, h = blockIdx.y, nh = a.nh, P = a.P, N = a.N, G = a.G, g = h / (nh / G);
  const int Pp = (P + 15) / 16 * 16, Np = (N + 15) / 16 * 16;
  const int64_t I = int64_t(nh) * P, PN = int64_t(P) * N;
  const Piece c = piece(b, j);
  const bf16* row = static_cast<const bf16*>(a.xBC) + int64_t(c.begin) * a.ldx;
  const bf16* dyr = static_cast<const bf16*>(a.dy) + int64_t(c.begin) * a.lddy;
  fetch_tile(Bs, kLdN, row + I + g * N, a.ldx, c.len, N, kQ, Np);
  fetch_tile(Cs, kLdN, row + I + int64_t(G) * N + g * N, a.ldx, c.len, N, kQ, Np);
  async::commit();
  state_weights(sc, b, c, h, sc.dec[j * nh + h], wx, wy);
  __syncthreads();
  load_tile(xs, kLdP, row + h * P, a.ldx, c.len, P, kQ, Pp, wx);
  load_tile(ys, kLdP, dyr + h * P, a.lddy, c.len, P, kQ, Pp, wy);
  async::wait<0>();
  __syncthreads();
  const int lane = threadIdx.x % 32, r0 = 16 * (threadIdx.x / 32), gr = lane / 4, qc = 2 * (lane % 4);
  if (r0 >= Pp) return;  // (no barrier below)
  for (int which = 0; which < 2; ++which) {
    // [p][n] = Σ_i xs[i][p] Bs[i][n] (then Σ_k ys[k][p] Cs[k][n]): A = xsᵀ, stored [i][p]
    float acc[16][4];
    zero(acc);
    warp_mma<kKRows, kKN, kQ>(acc, (which ? ys : xs) + r0, kLdP, which ? Cs : Bs, kLdN, kQ, Np);
    float* dst = (which ? sc.dstates : sc.states) + (int64_t(j) * nh + h) * PN;
#pragma unroll
    for (int nb = 0; nb < 16; ++nb)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int p = r0 + gr + 8 * (e >> 1), n = 8 * nb + qc + (e & 1);
        if (p < P && n < N) dst[p * N + n] = acc[nb][e];
      }
  }
}

// BAMBA_SSD_TILES: "mma" for the register forms of kernels 2 and 4, "wmma" for the older ones; unset,
// kWmmaByDefault. The register forms are the default since they ran on an H100 (bench/NOTES.md v36): the same
// gradients as the wmma forms (CudaTrainOps.SsdTileRegisterFormsAgreeWithWmma) and the 9B's layer backward 3.37 →
// 2.23 ms (grad 2.09 → 1.00 ms, chunk_state 0.52 → 0.41 ms).
constexpr bool kWmmaByDefault = false;
bool tiles_are_wmma() {
  const char* e = std::getenv("BAMBA_SSD_TILES");
  if (e && *e && std::strcmp(e, "mma") != 0 && std::strcmp(e, "wmma") != 0)
    fail("BAMBA_SSD_TILES must be \"mma\" or \"wmma\", not \"", e, "\"");
  return e && *e ? std::strcmp(e, "wmma") == 0 : kWmmaByDefault;
}

}  // namespace

bool ssd_backward_chunked_takes(const SsdBwdArgs& a, const DevBatch& b) {
  const char* e = std::getenv("BAMBA_SSD_BWD");
  if (e && *e && std::strcmp(e, "plain") != 0 && std::strcmp(e, "chunked") != 0)
    fail("BAMBA_SSD_BWD must be \"plain\" or \"chunked\", not \"", e, "\"");
  if (e && std::strcmp(e, "plain") == 0) return false;
  return a.P <= kPMax && a.N <= kNMax && b.chunk_q >= kQ && b.chunk_q % kQ == 0 && b.n_chunks > 0;
}

size_t ssd_backward_chunked_scratch_floats(const SsdBwdArgs& a, const DevBatch& b) { return layout(a, b).total; }

void ssd_backward_chunked(cudaStream_t st, const SsdBwdArgs& a, const DevBatch& b, float* dBp, float* dCp, float* tok,
                          float* scratch) {
  const Layout l = layout(a, b);
  const Scratch sc = scratch_at(scratch, l);
  const unsigned nq = unsigned(l.nq), nh = unsigned(a.nh);
  CUDA_CHECK(cudaFuncSetAttribute(chunk_state_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(kStateSmem)));
  CUDA_CHECK(cudaFuncSetAttribute(grad_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(kGradSmem)));
  KernelClock clock(st, "ssd_backward_chunked");
  delta_kernel<<<ceil_div(int64_t(l.nq) * a.nh, 128), 128, 0, st>>>(a, b, l.nq, sc);
  CUDA_LAUNCH_CHECK();
  clock.mark("delta");
  const bool wmma_tiles = tiles_are_wmma();
  if (wmma_tiles) {
    chunk_state_kernel<<<dim3(nq, nh), kThreads, kStateSmem, st>>>(a, b, sc);
  } else {
    CUDA_CHECK(cudaFuncSetAttribute(chunk_state_mma_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    int(kRStateSmem)));
    chunk_state_mma_kernel<<<dim3(nq, nh), kRThreads, kRStateSmem, st>>>(a, b, sc);
  }
  CUDA_LAUNCH_CHECK();
  clock.mark("chunk_state");
  const char* ce = std::getenv("BAMBA_SSD_CARRY");
  if (ce && *ce && std::strcmp(ce, "serial") != 0 && std::strcmp(ce, "grouped") != 0)
    fail("BAMBA_SSD_CARRY must be \"serial\" or \"grouped\", not \"", ce, "\"");
  const dim3 carry_grid(unsigned(l.splits), nh, unsigned(b.S));
  if (ce && std::strcmp(ce, "serial") == 0)
    carry_kernel<1><<<carry_grid, kThreads, 0, st>>>(a, b, sc, l.splits);
  else
    carry_kernel<kCarryAhead><<<carry_grid, kThreads, 0, st>>>(a, b, sc, l.splits);
  CUDA_LAUNCH_CHECK();
  clock.mark("carry");
  if (wmma_tiles) {
    grad_kernel<<<dim3(nq, nh), kGradThreads, kGradSmem, st>>>(a, b, sc, l.splits, dBp, dCp, tok);
  } else {
    CUDA_CHECK(cudaFuncSetAttribute(grad_mma_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(kRegSmem)));
    grad_mma_kernel<<<dim3(nq, nh), kRThreads, kRegSmem, st>>>(a, b, sc, l.splits, dBp, dCp, tok);
  }
  CUDA_LAUNCH_CHECK();
  clock.mark("grad");
}

KernelClock::KernelClock(cudaStream_t st, const char* what)
    : st_(st), what_(what), on_(std::getenv("BAMBA_SSD_BWD_PROFILE") != nullptr) {
  mark("start");
}
void KernelClock::mark(const char* name) {
  if (!on_) return;
  cudaEvent_t e;
  CUDA_CHECK(cudaEventCreate(&e));
  CUDA_CHECK(cudaEventRecord(e, st_));
  marks_.emplace_back(name, e);
}
KernelClock::~KernelClock() {
  if (!on_ || marks_.empty()) return;
  cudaEventSynchronize(marks_.back().second);
  std::fprintf(stderr, "%s:", what_);
  for (size_t i = 1; i < marks_.size(); ++i) {
    float ms = 0.f;
    cudaEventElapsedTime(&ms, marks_[i - 1].second, marks_[i].second);
    std::fprintf(stderr, " %s %.1f us", marks_[i].first, ms * 1000.f);
  }
  std::fprintf(stderr, "\n");
  for (auto& m : marks_) cudaEventDestroy(m.second);
}

}  // namespace bamba::cuda
