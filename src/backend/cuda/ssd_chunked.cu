// The SSD prefill (docs/bamba-model.md §3.2) in the chunked matrix form of Mamba-2, on bf16 tensor cores
// (mma.sync m16n8k16, fp32 accumulation). Sequences are split into chunks of Q tokens (DevBatch, Q a multiple of
// 64 up to 256, never crossing sequences); within a chunk, with cum_t = Σ_{u ≤ t} Δ_u A (fp32, chunk-local):
//   chunk-local state  S_c[p][n] = Σ_s exp(cum_end − cum_s) Δ_s x_s[p] B_s[n]                 (P×Q · Q×N)
//   carry              S_in(c+1) = exp(cum_end(c)) S_in(c) + S_c(c)   (S_in of a sequence's first chunk: its
//                      slot's state, or 0 when fresh; the last value goes back to the slot)
//   output             y_t[p] = exp(cum_t) Σ_n C_t[n] S_in[p][n]                                 (Q×N · N×P)
//                             + Σ_{s ≤ t} (C_t·B_s) exp(cum_t − cum_s) Δ_s x_s[p] + D x_t[p]    (Q×Q masked · Q×P)
// Every exponent is ≤ 0, so nothing overflows. Four kernels:
//   1. chunk_state (chunk, head): Δ and cum of the chunk (kept in scratch for 4), then S_c as a GEMM with
//      x_s·w_s (w_s = Δ_s exp(cum_end − cum_s), rounded to bf16 as mamba_ssm's Triton kernel does) and B_s;
//   2. cb (t tile, s tile, group, chunk): C Bᵀ, shared by all heads of a group (n_groups = 1 in Bamba: once
//      instead of 128 times), stored as bf16 in the mma accumulator layout so kernel 4 reads it back with one
//      8-byte load per fragment;
//   3. carry (state element, head, sequence): the serial walk over a sequence's chunks, writing S_in as bf16
//      (or, when sequences have few chunks, fused into 1: each block hands its state on to the next chunk's);
//   4. output (head, 64-token t tile, chunk): term 1 from S_in, then per 64-token s tile up to the diagonal the
//      decay-scaled, causally masked C Bᵀ straight from accumulator registers into A fragments (the C layout of
//      two adjacent n8 tiles is the A layout of one k16 step), times x_s; plus D x.
// Tiles are zero-padded to P = 64 and N = 128 in shared memory, so any head_dim ≤ 64 and d_state ≤ 128 work.
//
// The mma fragment layouts these kernels rely on are written out in mma.cuh.
#include <algorithm>
#include <cstdlib>
#include <type_traits>

#include "backend/cuda/mma.cuh"
#include "backend/cuda/ssd_chunked.cuh"

namespace bamba::cuda {
namespace {

constexpr int kTile = 64;                 // tokens per tile: 4 warps × 16 rows
constexpr int kThreads = 128;
constexpr int kMaxQ = 256;                // tokens per chunk at most (4 tiles)
constexpr int kPMax = 64, kNMax = 128;    // head_dim and d_state the tiles are padded to
constexpr int kLdP = kPMax + 8;           // shared-memory row strides in bf16: +16 bytes, so that the 8 rows
constexpr int kLdN = kNMax + 8;           // one ldmatrix reads fall into different banks
constexpr int kCbTile = kTile * kTile;    // floats of one 64×64 C Bᵀ tile
constexpr int kMinLen = 64;               // shorter sequences only: ssd.cu's per-sequence recurrence is cheaper

struct Chunks {
  const int32_t* seq;    // [n_chunks] sequence of chunk c
  const int32_t* begin;  // [n_chunks] first token row
  const int32_t* first;  // [S+1] first chunk of sequence s
  int Q;
};

struct Scratch {
  float* dec;    // [n_chunks, nh]                    cum at the chunk's last token
  float* cum;    // [nh, T]                           cum_t (chunk-local)
  float* delta;  // [nh, T]                           Δ_t
  float* local;  // [n_chunks, nh, P, N]              S_c, fp32 (fused carry: the state after chunk c)
  bf16* s_in;    // [n_chunks, nh, P, N]              S_in, bf16 (only the output GEMM reads it)
  bf16* cb;      // [n_chunks, G, Q/64, Q/64, 64·64]  C Bᵀ per (t tile, s tile), accumulator order
  int* ready;    // [n_chunks, nh]                    fused carry: local[c, h] holds the state after chunk c
  int* ticket;   // [1]                               fused carry: the next (chunk, head) to start
};

struct Layout {
  size_t dec, cum, delta, local, s_in, cb, ready, total;
};
Layout layout(const SsdArgs& a, const DevBatch& b) {
  auto r32 = [](size_t x) { return (x + 31) / 32 * 32; };  // 128-byte aligned parts
  const size_t nc = size_t(b.n_chunks), nh = size_t(a.nh), T = size_t(b.T), PN = size_t(a.P) * size_t(a.N);
  const size_t qt = size_t(b.chunk_q / kTile);
  Layout l{};
  size_t o = 0;
  l.dec = o, o += r32(nc * nh);
  l.cum = o, o += r32(nh * T);
  l.delta = o, o += r32(nh * T);
  l.local = o, o += r32(nc * nh * PN);
  l.s_in = o, o += r32((nc * nh * PN + 1) / 2);
  l.cb = o, o += r32(nc * size_t(a.G) * qt * qt * kCbTile / 2);  // bf16
  l.ready = o, o += r32(nc * nh + 1);                              // int: ready flags, then the ticket
  l.total = o;
  return l;
}

// The four bf16 of a uint2 (two fragment registers) as floats.
__device__ __forceinline__ float4 unpack4(uint2 u) {
  const float2 lo = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&u.x));
  const float2 hi = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&u.y));
  return make_float4(lo.x, lo.y, hi.x, hi.y);
}

// 16 bytes global → shared without passing through registers; full = false writes zeros (nothing is read).
__device__ __forceinline__ void cp_async16(bf16* dst, const bf16* src, bool full) {
  const unsigned d = unsigned(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src), "r"(full ? 16 : 0) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int kPending>  // wait until at most kPending of this thread's committed groups are still in flight
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory"); }

// Like load_tile below, but asynchronous (cp.async; the caller commits and waits) when `vec` — then cols is a
// multiple of 8, so a run is wholly inside or wholly padding; otherwise the synchronous copy.
// Threads t, t + nt, ... of the block do the copy.
template <int W, int LD>
__device__ __forceinline__ void load_tile_async(bf16* dst, const bf16* src, int64_t ld, int rows, int cols, bool vec,
                                                int t = 0, int nt = 0) {
  constexpr int kRuns = W / 8;
  if (nt == 0) t = int(threadIdx.x), nt = kThreads;
  for (int i = t; i < kTile * kRuns; i += nt) {
    const int r = i / kRuns, c = (i % kRuns) * 8;
    bf16* d = dst + r * LD + c;
    if (vec) {
      const bool full = r < rows && c < cols;
      cp_async16(d, full ? src + int64_t(r) * ld + c : src, full);
    } else {
      const bf16* s = src + int64_t(r) * ld + c;
#pragma unroll
      for (int k = 0; k < 8; ++k) d[k] = r < rows && c + k < cols ? s[k] : __float2bfloat16_rn(0.f);
    }
  }
}

// dst[r][c] (row stride LD) = src[r * ld + c] for r < rows, c < cols, else 0, over 64 rows × W columns; with
// `scale` (shared memory, 64 floats) row r is multiplied by scale[r] in fp32 before rounding to bf16. `vec`: src
// and ld allow 16-byte loads (8 bf16) wherever a run of 8 lies inside cols.
template <int W, int LD>
__device__ __forceinline__ void load_tile(bf16* dst, const bf16* src, int64_t ld, int rows, int cols, bool vec,
                                          const float* scale = nullptr) {
  constexpr int kRuns = W / 8;
  for (int i = threadIdx.x; i < kTile * kRuns; i += kThreads) {
    const int r = i / kRuns, c = (i % kRuns) * 8;
    const bf16* s = src + int64_t(r) * ld + c;
    __align__(16) bf16 v[8];
    if (vec && r < rows && c + 8 <= cols) {
      *reinterpret_cast<uint4*>(v) = __ldg(reinterpret_cast<const uint4*>(s));
    } else {
#pragma unroll
      for (int k = 0; k < 8; ++k) v[k] = r < rows && c + k < cols ? s[k] : __float2bfloat16_rn(0.f);
    }
    if (scale) {
      const float f = scale[r];
#pragma unroll
      for (int k = 0; k < 8; ++k) v[k] = __float2bfloat16_rn(__bfloat162float(v[k]) * f);
    }
    *reinterpret_cast<uint4*>(dst + r * LD + c) = *reinterpret_cast<const uint4*>(v);
  }
}

// The fused carry's hand-over from the block of chunk c to the block of chunk c+1 (same head): release after the
// state is written, acquire before it is read (both at GPU scope).
__device__ __forceinline__ void flag_release(int* f) {
  asm volatile("st.release.gpu.global.u32 [%0], %1;\n" ::"l"(f), "r"(1) : "memory");
}
__device__ __forceinline__ int flag_acquire(const int* f) {
  int v;
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];\n" : "=r"(v) : "l"(f) : "memory");
  return v;
}

template <typename ST>
__device__ __forceinline__ void store2(ST* d, float v0, float v1) {
  if constexpr (std::is_same_v<ST, float>) *reinterpret_cast<float2*>(d) = make_float2(v0, v1);
  else *reinterpret_cast<__nv_bfloat162*>(d) = __floats2bfloat162_rn(v0, v1);
}

__device__ __forceinline__ int chunk_len(const Chunks& ch, const DevBatch& b, int c) {
  return min(ch.Q, b.seq_start[ch.seq[c] + 1] - ch.begin[c]);
}

// 1. Per (chunk, head): Δ, cum, and S_c = Σ_s (x_s w_s) B_sᵀ. Warp w owns state rows p = 16w .. 16w+15, all N.
// The x and B tiles are double-buffered (cp.async, the first issued before Δ is computed); w_s is applied to the
// A fragments in registers, split as hi + lo (two bf16, two mma) so that x_s w_s keeps ~16 bits instead of
// bf16's 8: the chunk state is the one result every later token of the sequence reads.
// With `fused` the carry happens here too (kernel 3 is not launched): blocks take (chunk, head) in chunk order from
// a ticket, so the block of chunk c−1 has started before the block of chunk c; after its S_c, a block waits for
// its predecessor's flag, reads the state after chunk c−1 (= S_in, fp32, from L2), writes S_in as bf16 for
// kernel 4 and exp(cum_end) S_in + S_c either to `local` for its successor (then sets its flag) or, for a
// sequence's last chunk, to the slot. This drops S_c's fp32 round trip through the separate carry kernel.
constexpr size_t kStateSmem = size_t(2) * kTile * (kLdP + kLdN) * sizeof(bf16);
template <typename ST>
__global__ void __launch_bounds__(kThreads) chunk_state_kernel(SsdArgs a, DevBatch b, Chunks ch, Scratch sc, int vec,
                                                               int fused) {
  extern __shared__ __align__(16) unsigned char smem[];
  bf16* xs = reinterpret_cast<bf16*>(smem);  // [2][s][p]  x_s
  bf16* bs = xs + 2 * kTile * kLdP;          // [2][s][n]  B_s
  __shared__ __align__(16) float cum[kMaxQ], w[kMaxQ];  // [Q]
  __shared__ float wsum[kThreads / 32];
  __shared__ int ticket;
  const bf16* xBC = static_cast<const bf16*>(a.xBC);
  const bf16* dt = static_cast<const bf16*>(a.dt);
  if (fused) {
    if (threadIdx.x == 0) ticket = atomicAdd(sc.ticket, 1);
    __syncthreads();
  }
  const int c = fused ? ticket / a.nh : int(blockIdx.x), h = fused ? ticket % a.nh : int(blockIdx.y);
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int t0 = ch.begin[c], n = chunk_len(ch, b, c);
  const int P = a.P, N = a.N, I = a.nh * P, g = h / (a.nh / a.G);
  const float A = -expf(ld_param(a.A_log, h)), dtb = ld_param(a.dt_bias, h);
  const bf16* rows = xBC + int64_t(t0) * a.ldx;
  auto issue = [&](int it) {  // s tile `it` into buffer it % 2
    const int s0 = it * kTile, buf = it & 1;
    load_tile_async<kPMax, kLdP>(xs + buf * kTile * kLdP, rows + int64_t(s0) * a.ldx + h * P, a.ldx, n - s0, P, vec);
    load_tile_async<kNMax, kLdN>(bs + buf * kTile * kLdN, rows + int64_t(s0) * a.ldx + I + g * N, a.ldx, n - s0, N, vec);
    cp_async_commit();
  };
  issue(0);

  // Δ and the inclusive prefix sums of Δ A over the chunk; thread i owns tokens 2i and 2i+1.
  const int i0 = 2 * tid;
  auto delta_at = [&](int i) {
    if (i >= n) return 0.f;
    const float d = softplus_f(to_f(dt[int64_t(t0 + i) * a.lddt + h]) + dtb);
    return fminf(fmaxf(d, a.dt_min), a.dt_max);
  };
  const float d0 = delta_at(i0), d1 = delta_at(i0 + 1);
  const float a0 = d0 * A, a1 = d1 * A;
  float incl = a0 + a1;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const float v = __shfl_up_sync(0xffffffffu, incl, o);
    if (lane >= o) incl += v;
  }
  if (lane == 31) wsum[warp] = incl;
  __syncthreads();
  float off = 0.f;
  for (int k = 0; k < warp; ++k) off += wsum[k];
  const float c0 = off + incl - a1, c1 = off + incl;
  cum[i0] = c0;
  cum[i0 + 1] = c1;
  const int64_t tok = int64_t(h) * b.T + t0 + i0;
  if (i0 < n) sc.cum[tok] = c0, sc.delta[tok] = d0;
  if (i0 + 1 < n) sc.cum[tok + 1] = c1, sc.delta[tok + 1] = d1;
  __syncthreads();
  const float end = cum[n - 1];
  w[i0] = i0 < n ? d0 * __expf(end - c0) : 0.f;
  w[i0 + 1] = i0 + 1 < n ? d1 * __expf(end - c1) : 0.f;
  if (tid == 0) sc.dec[int64_t(c) * a.nh + h] = end;

  float acc[16][4];  // [n8 tile][fragment]: S_c rows 16w + g (+8), cols 8j + 2q (+1)
#pragma unroll
  for (int j = 0; j < 16; ++j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.f;
  const int pw = 16 * warp, nk = (N + 15) / 16, q = lane & 3;
  const int n_tiles = (n + kTile - 1) / kTile;
  for (int it = 0; it < n_tiles; ++it) {
    const int s0 = it * kTile;
    if (it + 1 < n_tiles) {
      issue(it + 1);
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();  // tile `it` (and, the first time, w) is visible to every thread
    const bf16* xt = xs + (it & 1) * kTile * kLdP;
    const bf16* bt = bs + (it & 1) * kTile * kLdN;
    if (pw < P) {  // warp-uniform: rows past head_dim
#pragma unroll
      for (int kk = 0; kk < 4; ++kk) {
        if (s0 + 16 * kk >= n) break;  // the rest of the tile is padding
        uint32_t xf[4];                 // A[p][s] = xt[s][p]: transposed
        ldsm_x4_trans(xf, xt + (16 * kk + (lane & 7) + (lane >> 4) * 8) * kLdP + pw + ((lane >> 3) & 1) * 8);
        // xf[0], xf[1] hold s = 2q, 2q+1 of the k step; xf[2], xf[3] hold s = 2q+8, 2q+9.
        const float2 wl = *reinterpret_cast<const float2*>(w + s0 + 16 * kk + 2 * q);
        const float2 wh = *reinterpret_cast<const float2*>(w + s0 + 16 * kk + 2 * q + 8);
        uint32_t hi[4], lo[4];
#pragma unroll
        for (int r = 0; r < 4; ++r) {
          const float2 x = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&xf[r]));
          const float2 ws = r < 2 ? wl : wh;
          const float va = x.x * ws.x, vb = x.y * ws.y;
          const __nv_bfloat162 vh = __floats2bfloat162_rn(va, vb);
          const float2 vhf = __bfloat1622float2(vh);
          hi[r] = *reinterpret_cast<const uint32_t*>(&vh);
          lo[r] = pack_bf16(va - vhf.x, vb - vhf.y);
        }
#pragma unroll
        for (int nn = 0; nn < 8; ++nn) {
          if (nn >= nk) break;
          uint32_t bf[4];  // B[s][n] = bt[s][n], n8 tiles 2nn and 2nn+1
          ldsm_x4_trans(bf, bt + (16 * kk + (lane & 7) + ((lane >> 3) & 1) * 8) * kLdN + 16 * nn + (lane >> 4) * 8);
          mma_bf16(acc[2 * nn], hi, bf[0], bf[1]);
          mma_bf16(acc[2 * nn], lo, bf[0], bf[1]);
          mma_bf16(acc[2 * nn + 1], hi, bf[2], bf[3]);
          mma_bf16(acc[2 * nn + 1], lo, bf[2], bf[3]);
        }
      }
    }
    __syncthreads();  // buffer it % 2 is read; tile it + 2 may overwrite it
  }
  const int gr = lane >> 2;
  if (!fused) {
    if (pw >= P) return;
    float* dst = sc.local + (int64_t(c) * a.nh + h) * P * N;  // [P, N]
#pragma unroll
    for (int j = 0; j < 16; ++j) {
      const int col = 8 * j + 2 * q;
      if (col >= N) break;
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int p = pw + gr + 8 * half;
        if (p >= P) continue;
        float* d = dst + int64_t(p) * N + col;
        if ((N & 1) == 0) *reinterpret_cast<float2*>(d) = make_float2(acc[j][2 * half], acc[j][2 * half + 1]);
        else {
          d[0] = acc[j][2 * half];
          if (col + 1 < N) d[1] = acc[j][2 * half + 1];
        }
      }
    }
    return;
  }

  // The fused carry (same formula and fp32 chain as kernel 3).
  const int s = ch.seq[c], k0 = ch.first[s], k1 = ch.first[s + 1];
  const bool past = b.past_len[s] > 0, has_prev = c > k0, has_in = has_prev || past, last = c == k1 - 1;
  const int64_t PN = int64_t(P) * N;
  if (has_prev) {
    if (tid == 0)
      while (flag_acquire(sc.ready + int64_t(c - 1) * a.nh + h) == 0) __nanosleep(32);
    __syncthreads();
  }
  const float* prev = sc.local + (int64_t(c - 1) * a.nh + h) * PN;  // [P, N]  state after chunk c−1 (has_prev)
  float* next = sc.local + (int64_t(c) * a.nh + h) * PN;            // [P, N]  state after chunk c (not last)
  bf16* s_in = sc.s_in + (int64_t(c) * a.nh + h) * PN;              // [P, N]  S_in for kernel 4 (has_in)
  ST* slot = static_cast<ST*>(a.state) + (int64_t(max(b.slot[s], 0)) * a.nh + h) * PN;  // [P, N]
  const bool keep = b.slot[s] >= 0;  // slot -1: a fresh sequence whose state is not kept
  const float decay = expf(end);
  if (pw < P) {
#pragma unroll
    for (int j = 0; j < 16; ++j) {
      const int col = 8 * j + 2 * q;
      if (col >= N) break;
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int p = pw + gr + 8 * half;
        if (p >= P) continue;
        const int64_t e = int64_t(p) * N + col;
        float in0 = 0.f, in1 = 0.f;
        if ((N & 1) == 0) {  // e even: the pair is aligned
          if (has_prev) {
            const float2 v = __ldcg(reinterpret_cast<const float2*>(prev + e));
            in0 = v.x, in1 = v.y;
          } else if (past) {
            in0 = to_f(slot[e]), in1 = to_f(slot[e + 1]);
          }
          if (has_in) store2<bf16>(s_in + e, in0, in1);
          const float o0 = decay * in0 + acc[j][2 * half], o1 = decay * in1 + acc[j][2 * half + 1];
          if (!last) store2<float>(next + e, o0, o1);
          else if (keep) store2<ST>(slot + e, o0, o1);
        } else {
#pragma unroll
          for (int k = 0; k < 2; ++k) {
            if (col + k >= N) break;
            const float in = has_prev ? __ldcg(prev + e + k) : past ? to_f(slot[e + k]) : 0.f;
            if (has_in) s_in[e + k] = __float2bfloat16_rn(in);
            const float o = decay * in + acc[j][2 * half + k];
            if (!last) next[e + k] = o;
            else if (keep) slot[e + k] = from_f<ST>(o);
          }
        }
      }
    }
  }
  if (!last) {
    __threadfence();
    __syncthreads();  // every thread's part of `next` is written
    if (tid == 0) flag_release(sc.ready + int64_t(c) * a.nh + h);
  }
}

// 2. Per (t tile, s tile ≤ t tile, group, chunk): one 64×64 block of C Bᵀ. Warp w owns rows t = 16w .. 16w+15;
// the block is stored in bf16 as [warp][n8 tile j][lane] uint2 = (c0 c1, c2 c3), which is how kernel 4's threads
// hold it (bf16 halves kernel 4's largest L2 read; the product is rounded to bf16 for the mma there anyway).
__global__ void __launch_bounds__(kThreads) cb_kernel(SsdArgs a, DevBatch b, Chunks ch, Scratch sc, int vec) {
  __shared__ __align__(16) bf16 cs[kTile * kLdN];  // [t][n]  C_t
  __shared__ __align__(16) bf16 bs[kTile * kLdN];  // [s][n]  B_s
  const bf16* xBC = static_cast<const bf16*>(a.xBC);
  const int QT = ch.Q / kTile, ti = blockIdx.x / QT, sj = blockIdx.x % QT, g = blockIdx.y, c = blockIdx.z;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int t0 = ch.begin[c], n = chunk_len(ch, b, c);
  if (sj > ti || ti * kTile >= n) return;
  const int N = a.N, I = a.nh * a.P, nk = (N + 15) / 16;
  const bf16* rows = xBC + int64_t(t0) * a.ldx;
  load_tile<kNMax, kLdN>(cs, rows + int64_t(ti * kTile) * a.ldx + I + a.G * N + g * N, a.ldx, n - ti * kTile, N, vec);
  load_tile<kNMax, kLdN>(bs, rows + int64_t(sj * kTile) * a.ldx + I + g * N, a.ldx, n - sj * kTile, N, vec);
  __syncthreads();
  float acc[8][4];  // [s n8 tile][fragment]
#pragma unroll
  for (int j = 0; j < 8; ++j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.f;
#pragma unroll
  for (int kk = 0; kk < 8; ++kk) {
    if (kk >= nk) break;
    uint32_t af[4];  // A[t][n] = cs[t][n]
    ldsm_x4(af, cs + (16 * warp + (lane & 7) + ((lane >> 3) & 1) * 8) * kLdN + 16 * kk + (lane >> 4) * 8);
#pragma unroll
    for (int pp = 0; pp < 4; ++pp) {
      uint32_t bf[4];  // B[n][s] = bs[s][n]: s n8 tiles 2pp and 2pp+1
      ldsm_x4(bf, bs + (16 * pp + (lane & 7) + (lane >> 4) * 8) * kLdN + 16 * kk + ((lane >> 3) & 1) * 8);
      mma_bf16(acc[2 * pp], af, bf[0], bf[1]);
      mma_bf16(acc[2 * pp + 1], af, bf[2], bf[3]);
    }
  }
  uint2* out = reinterpret_cast<uint2*>(sc.cb + (((int64_t(c) * a.G + g) * QT + ti) * QT + sj) * kCbTile);
#pragma unroll
  for (int j = 0; j < 8; ++j)
    out[(warp * 8 + j) * 32 + lane] = make_uint2(pack_bf16(acc[j][0], acc[j][1]), pack_bf16(acc[j][2], acc[j][3]));
}

// 3. Per (V adjacent state elements, head, sequence): S_in of every chunk after the first (and of the first when
// the sequence continues from its slot), and the final state into the slot. The chunks' local states are loaded
// kGroup at a time (one round of loads for a 4096-token sequence at Q = 256) and V = 2 elements per thread when
// P·N is even (8-byte loads, 4-byte bf16 pair stores): the walk is a chain of dependent rounds, so what bounds it
// is loads in flight per round, not bytes (80 µs for 200 MB at 1×8192 with one element and 8 chunks a round).
template <int V> struct FloatV;
template <> struct FloatV<1> { using type = float; };
template <> struct FloatV<2> { using type = float2; };
__device__ __forceinline__ float lane_of(float v, int) { return v; }
__device__ __forceinline__ float lane_of(float2 v, int i) { return i ? v.y : v.x; }

template <typename ST, int V>
__global__ void carry_kernel(SsdArgs a, DevBatch b, Chunks ch, Scratch sc) {
  using FV = typename FloatV<V>::type;
  const int s = blockIdx.z, h = blockIdx.y;
  const int64_t PN = int64_t(a.P) * a.N, e = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) * V;
  const int k0 = ch.first[s], k1 = ch.first[s + 1];
  if (e >= PN || k0 == k1) return;
  ST* slot = static_cast<ST*>(a.state) + (int64_t(max(b.slot[s], 0)) * a.nh + h) * PN;  // [P, N]
  const bool past = b.past_len[s] > 0;
  const float* __restrict__ local = sc.local;
  bf16* __restrict__ s_in = sc.s_in;
  const int64_t stride = int64_t(a.nh) * PN;  // from one chunk to the next
  int64_t at = (int64_t(k0) * a.nh + h) * PN + e;
  float run[V];
#pragma unroll
  for (int i = 0; i < V; ++i) run[i] = past ? to_f(slot[e + i]) : 0.f;
  constexpr int kGroup = 16;
  for (int k = k0; k < k1; k += kGroup, at += kGroup * stride) {
    FV loc[kGroup];
    float dec[kGroup];
#pragma unroll
    for (int j = 0; j < kGroup; ++j)
      if (k + j < k1) {
        loc[j] = *reinterpret_cast<const FV*>(local + at + j * stride);
        dec[j] = sc.dec[int64_t(k + j) * a.nh + h];
      }
#pragma unroll
    for (int j = 0; j < kGroup; ++j)
      if (k + j < k1) {
        bf16* dst = s_in + at + j * stride;
        if (k + j > k0 || past) {
          if constexpr (V == 2) *reinterpret_cast<__nv_bfloat162*>(dst) = __floats2bfloat162_rn(run[0], run[1]);
          else dst[0] = __float2bfloat16_rn(run[0]);
        }
        const float d = expf(dec[j]);
#pragma unroll
        for (int i = 0; i < V; ++i) run[i] = d * run[i] + lane_of(loc[j], i);
      }
  }
  if (b.slot[s] < 0) return;  // slot -1: a fresh sequence whose state is not kept
#pragma unroll
  for (int i = 0; i < V; ++i) slot[e + i] = from_f<ST>(run[i]);
}

// 4. Per (kH heads, 64-token t tile, chunk): y for the tile. Warp group k (warps 4k .. 4k+3) does head
// kH·blockIdx.x + k; its warp wl owns rows t = 16wl .. 16wl+15 and all P columns. The heads of a block share the
// C tile in shared memory and the C Bᵀ fragments (the same addresses for warp wl of every group: one L2 read,
// the others from L1) — with kH = 2 the block's L2 reads per head drop from ~81 KB to ~63 KB at Q = 256.
// The x tiles are double-buffered (cp.async): tile 0 loads together with C and S_in, tile sj+1 while tile sj is
// multiplied; the second x buffers reuse C's space, which is dead after term 1. Each C Bᵀ fragment is loaded
// before the barrier that precedes its use.
template <int kH>  // bf16 of C's space, later the kH second x buffers
constexpr int kCsElems = kTile * kLdN > kH * kTile * kLdP ? kTile * kLdN : kH * kTile * kLdP;
template <int kH>  // C | kH S_in | kH first x buffers
constexpr size_t kOutSmem =
    (size_t(kCsElems<kH>) + size_t(kH) * kTile * kLdN + size_t(kH) * kTile * kLdP) * sizeof(bf16);
template <int kH>
__global__ void __launch_bounds__(kThreads * kH, 4 / kH)
    output_kernel(SsdArgs a, DevBatch b, Chunks ch, Scratch sc, int vec, int vec_y) {
  extern __shared__ __align__(16) unsigned char smem[];
  bf16* sbuf = reinterpret_cast<bf16*>(smem);
  __shared__ __align__(16) float cum_h[kH][kMaxQ], dl_h[kH][kMaxQ];  // [head][Q]  cum_s, Δ_s of the chunk
  __shared__ __align__(16) float ecol_h[kH][kTile];                  // [head][s]  exp(cum_end(s tile) − cum_s) Δ_s
  const bf16* xBC = static_cast<const bf16*>(a.xBC);
  const int ti = blockIdx.y, c = blockIdx.z, tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int hw = warp / 4, wl = warp % 4, lt = tid % kThreads;  // head in the block, warp and thread in its group
  const int h = blockIdx.x * kH + hw;
  bf16* cs = sbuf;                                                  // [t][n]  C_t (term 1 only)
  bf16* ss = sbuf + kCsElems<kH> + hw * kTile * kLdN;               // [p][n]  S_in of head h
  bf16* xb0 = sbuf + kCsElems<kH> + kH * kTile * kLdN + hw * kTile * kLdP;
  bf16* xb1 = sbuf + hw * kTile * kLdP;
  auto xbuf = [&](int k) { return k ? xb1 : xb0; };  // [s][p]  x_s of head h; buffer 1 is in cs's space
  float* cum = cum_h[hw];
  float* dl = dl_h[hw];
  float* ecol = ecol_h[hw];
  const int s = ch.seq[c], t0 = ch.begin[c], n = chunk_len(ch, b, c);
  if (ti * kTile >= n) return;
  const int P = a.P, N = a.N, I = a.nh * P, g = h / (a.nh / a.G), QT = ch.Q / kTile;
  const int np = (P + 15) / 16, nk = (N + 15) / 16;
  const bf16* rows = xBC + int64_t(t0) * a.ldx;
  auto issue_x = [&](int sj) {
    load_tile_async<kPMax, kLdP>(xbuf(sj & 1), rows + int64_t(sj * kTile) * a.ldx + h * P, a.ldx, n - sj * kTile, P,
                                 vec, lt, kThreads);
  };
  const bool has_in = c != ch.first[s] || b.past_len[s] > 0;  // S_in is not zero
  issue_x(0);
  if (has_in) {
    load_tile_async<kNMax, kLdN>(cs, rows + int64_t(ti * kTile) * a.ldx + I + a.G * N + g * N, a.ldx, n - ti * kTile,
                                 N, vec, tid, kThreads * kH);
    load_tile_async<kNMax, kLdN>(ss, sc.s_in + (int64_t(c) * a.nh + h) * P * N, N, P, N, vec, lt, kThreads);
  }
  cp_async_commit();

  // Padding tokens past the chunk's end get Δ = 0 and the last cum, so their terms vanish without NaNs.
  const float* cumh = sc.cum + int64_t(h) * b.T + t0;
  const float* dlh = sc.delta + int64_t(h) * b.T + t0;
  for (int i = lt; i < (ti + 1) * kTile; i += kThreads) {
    cum[i] = cumh[min(i, n - 1)];
    dl[i] = i < n ? dlh[i] : 0.f;
  }
  const int gr = lane >> 2, q = lane & 3;
  const int tc0 = ti * kTile + 16 * wl + gr, tc1 = tc0 + 8;  // this thread's two rows, chunk-local
  cp_async_wait<0>();
  __syncthreads();

  float acc[8][4];  // [p n8 tile][fragment]: y rows tc0 / tc1, cols 8j + 2q (+1)
#pragma unroll
  for (int j = 0; j < 8; ++j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.f;
  if (has_in) {
#pragma unroll
    for (int kk = 0; kk < 8; ++kk) {
      if (kk >= nk) break;
      uint32_t af[4];  // A[t][n] = cs[t][n]
      ldsm_x4(af, cs + (16 * wl + (lane & 7) + ((lane >> 3) & 1) * 8) * kLdN + 16 * kk + (lane >> 4) * 8);
#pragma unroll
      for (int pp = 0; pp < 4; ++pp) {
        if (pp >= np) break;
        uint32_t bf[4];  // B[n][p] = ss[p][n]: p n8 tiles 2pp and 2pp+1
        ldsm_x4(bf, ss + (16 * pp + (lane & 7) + (lane >> 4) * 8) * kLdN + 16 * kk + ((lane >> 3) & 1) * 8);
        mma_bf16(acc[2 * pp], af, bf[0], bf[1]);
        mma_bf16(acc[2 * pp + 1], af, bf[2], bf[3]);
      }
    }
    const float e0 = __expf(cum[tc0]), e1 = __expf(cum[tc1]);
#pragma unroll
    for (int j = 0; j < 8; ++j) acc[j][0] *= e0, acc[j][1] *= e0, acc[j][2] *= e1, acc[j][3] *= e1;
  }

  const uint2* cbt = reinterpret_cast<const uint2*>(sc.cb + ((int64_t(c) * a.G + g) * QT + ti) * QT * kCbTile);
  const float ct0 = cum[tc0], ct1 = cum[tc1];
  for (int sj = 0; sj <= ti; ++sj) {
    const uint2* cbf = cbt + int64_t(sj) * (kCbTile / 4) + wl * 8 * 32 + lane;
    uint2 u[8];
#pragma unroll
    for (int j = 0; j < 8; ++j) u[j] = cbf[j * 32];
    __syncthreads();  // the buffer tile sj+1 goes to (cs, or tile sj-1) and ecol are no longer read
    if (sj < ti) issue_x(sj + 1);
    cp_async_commit();
    // Below the diagonal every s precedes every t, so exp(cum_t − cum_s) = exp(cum_t − base) · exp(base − cum_s)
    // with base = cum at the s tile's last token: both factors ≤ 1, and 2 + 64/128 exps per thread instead of 32.
    const float base = cum[sj * kTile + kTile - 1];
    if (sj < ti && lt < kTile) ecol[lt] = __expf(base - cum[sj * kTile + lt]) * dl[sj * kTile + lt];
    cp_async_wait<1>();  // tile sj has landed (tile sj+1 may still be in flight)
    __syncthreads();
    const bf16* xs = xbuf(sj & 1);
    // On the diagonal tile, k steps past the warp's last row are masked out entirely.
    const int kmax = sj == ti ? wl + 1 : 4;
    uint32_t pa[4][4];  // A fragments of the 16×64 decay-scaled, masked C Bᵀ block, k step kk = n8 tiles 2kk, 2kk+1
    if (sj < ti) {
      const float r0 = __expf(ct0 - base), r1 = __expf(ct1 - base);
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const float4 v = unpack4(u[j]);
        const float2 e = *reinterpret_cast<const float2*>(ecol + 8 * j + 2 * q);
        pa[j / 2][(j & 1) * 2] = pack_bf16(v.x * r0 * e.x, v.y * r0 * e.y);
        pa[j / 2][(j & 1) * 2 + 1] = pack_bf16(v.z * r1 * e.x, v.w * r1 * e.y);
      }
    } else {
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        if (j / 2 >= kmax) break;
        const float4 v = unpack4(u[j]);
        const int sa = sj * kTile + 8 * j + 2 * q, sb = sa + 1;
        const float ca = cum[sa], cb = cum[sb], da = dl[sa], db = dl[sb];
        const float p00 = sa <= tc0 ? v.x * __expf(ct0 - ca) * da : 0.f;
        const float p01 = sb <= tc0 ? v.y * __expf(ct0 - cb) * db : 0.f;
        const float p10 = sa <= tc1 ? v.z * __expf(ct1 - ca) * da : 0.f;
        const float p11 = sb <= tc1 ? v.w * __expf(ct1 - cb) * db : 0.f;
        pa[j / 2][(j & 1) * 2] = pack_bf16(p00, p01);
        pa[j / 2][(j & 1) * 2 + 1] = pack_bf16(p10, p11);
      }
    }
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
      if (kk >= kmax) break;
#pragma unroll
      for (int pp = 0; pp < 4; ++pp) {
        if (pp >= np) break;
        uint32_t bf[4];  // B[s][p] = xs[s][p]: transposed, p n8 tiles 2pp and 2pp+1
        ldsm_x4_trans(bf, xs + (16 * kk + (lane & 7) + ((lane >> 3) & 1) * 8) * kLdP + 16 * pp + (lane >> 4) * 8);
        mma_bf16(acc[2 * pp], pa[kk], bf[0], bf[1]);
        mma_bf16(acc[2 * pp + 1], pa[kk], bf[2], bf[3]);
      }
    }
  }

  // The last x buffer holds the diagonal tile, i.e. this tile's own x_t.
  const bf16* xs = xbuf(ti & 1);
  const float Dh = ld_param(a.D, h);
  const int nrows = min(kTile, n - ti * kTile);
  bf16* y = static_cast<bf16*>(a.y) + (int64_t(t0) + ti * kTile) * a.ldy + int64_t(h) * P;
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    const int p = 8 * j + 2 * q;
    if (p >= P) break;
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int r = 16 * wl + gr + 8 * half;
      if (r >= nrows) continue;
      const float v0 = acc[j][2 * half] + Dh * __bfloat162float(xs[r * kLdP + p]);
      const float v1 = acc[j][2 * half + 1] + Dh * __bfloat162float(xs[r * kLdP + p + 1]);
      bf16* d = y + int64_t(r) * a.ldy + p;
      if (vec_y) *reinterpret_cast<__nv_bfloat162*>(d) = __floats2bfloat162_rn(v0, v1);
      else {
        d[0] = __float2bfloat16_rn(v0);
        if (p + 1 < P) d[1] = __float2bfloat16_rn(v1);
      }
    }
  }
}

bool aligned(const void* p, size_t n) { return reinterpret_cast<uintptr_t>(p) % n == 0; }

}  // namespace

bool ssd_chunked_takes(const SsdArgs& a, const DevBatch& b, int max_seq_len) {
  return a.P <= kPMax && a.N <= kNMax && b.chunk_q > 0 && b.chunk_q % kTile == 0 && b.chunk_q <= kMaxQ &&
         b.n_chunks > 0 && max_seq_len > kMinLen;
}

size_t ssd_chunked_scratch_floats(const SsdArgs& a, const DevBatch& b) { return layout(a, b).total; }

// BAMBA_SSD_PATH (read per call, so one process can time the variants): bit 0 = the carry fused into kernel 1,
// bit 1 = two heads per output block, bit 2 = four heads per output block (over bit 1). Unset (-1 here): the
// fused carry when the longest sequence has at most kFusedMaxChunks chunks, one head per output block. H200
// (bench/NOTES.md "v8"): fusing took 64×512 from 3,086 to 2,052 µs and 1×512 from 74 to 65, but with 8 and 32
// chunks per sequence the hand-over chain made it slower (1×2048 186 → 222, 1×8192 624 → 757); 2 or 4 heads
// per output block did not pay (1×8192 622 and 640 µs, 64×512 3,106 and 3,183).
constexpr int kFusedMaxChunks = 2;
int ssd_path() {
  const char* e = std::getenv("BAMBA_SSD_PATH");
  return e && *e ? std::atoi(e) : -1;
}

template <typename ST>
void ssd_chunked(cudaStream_t st, const SsdArgs& a, const DevBatch& b, int max_seq_len, float* scratch) {
  const Layout l = layout(a, b);
  const Scratch sc{scratch + l.dec,
                   scratch + l.cum,
                   scratch + l.delta,
                   scratch + l.local,
                   reinterpret_cast<bf16*>(scratch + l.s_in),
                   reinterpret_cast<bf16*>(scratch + l.cb),
                   reinterpret_cast<int*>(scratch + l.ready),
                   reinterpret_cast<int*>(scratch + l.ready) + size_t(b.n_chunks) * size_t(a.nh)};
  const Chunks ch{b.chunk_seq, b.chunk_begin, b.chunk_first, b.chunk_q};
  const int vec = aligned(a.xBC, 16) && a.ldx % 8 == 0 && a.P % 8 == 0 && a.N % 8 == 0;
  const int vec_y = aligned(a.y, 4) && a.ldy % 2 == 0 && a.P % 2 == 0;
  const unsigned nc = unsigned(b.n_chunks), qt = unsigned(b.chunk_q / kTile), nh = unsigned(a.nh);
  const int chain = (max_seq_len + b.chunk_q - 1) / b.chunk_q;  // chunks of the longest sequence
  const int env = ssd_path();
  const int path = env >= 0 ? env : chain <= kFusedMaxChunks ? 1 : 0;
  const int fused = path & 1;
  // Heads per output block: all of one group.
  const int heads = (path & 4) && (a.nh / a.G) % 4 == 0 ? 4 : (path & 2) && (a.nh / a.G) % 2 == 0 ? 2 : 1;
  if (fused)
    CUDA_CHECK(cudaMemsetAsync(sc.ready, 0, (size_t(nc) * nh + 1) * sizeof(int), st));
  // 53 KB of double buffers, over the 48 KB default: the opt-in is set per call (cheap, right on any device).
  CUDA_CHECK(
      cudaFuncSetAttribute(chunk_state_kernel<ST>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(kStateSmem)));
  chunk_state_kernel<ST><<<dim3(nc, nh), kThreads, kStateSmem, st>>>(a, b, ch, sc, vec, fused);
  CUDA_LAUNCH_CHECK();
  cb_kernel<<<dim3(qt * qt, unsigned(a.G), nc), kThreads, 0, st>>>(a, b, ch, sc, vec);
  CUDA_LAUNCH_CHECK();
  if (!fused) {
    // Pairs need P·N even (then every pair's offsets are even: 8-byte float2, 4-byte bf16 pairs).
    const int64_t PN = int64_t(a.P) * a.N;
    if (PN % 2 == 0)
      carry_kernel<ST, 2><<<dim3(ceil_div(PN / 2, 256), nh, unsigned(b.S)), 256, 0, st>>>(a, b, ch, sc);
    else
      carry_kernel<ST, 1><<<dim3(ceil_div(PN, 256), nh, unsigned(b.S)), 256, 0, st>>>(a, b, ch, sc);
    CUDA_LAUNCH_CHECK();
  }
  if (heads == 4) {
    CUDA_CHECK(cudaFuncSetAttribute(output_kernel<4>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(kOutSmem<4>)));
    output_kernel<4><<<dim3(nh / 4, qt, nc), kThreads * 4, kOutSmem<4>, st>>>(a, b, ch, sc, vec, vec_y);
  } else if (heads == 2) {
    CUDA_CHECK(cudaFuncSetAttribute(output_kernel<2>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(kOutSmem<2>)));
    output_kernel<2><<<dim3(nh / 2, qt, nc), kThreads * 2, kOutSmem<2>, st>>>(a, b, ch, sc, vec, vec_y);
  } else {
    output_kernel<1><<<dim3(nh, qt, nc), kThreads, kOutSmem<1>, st>>>(a, b, ch, sc, vec, vec_y);
  }
  CUDA_LAUNCH_CHECK();
}

template void ssd_chunked<float>(cudaStream_t, const SsdArgs&, const DevBatch&, int, float*);
template void ssd_chunked<bf16>(cudaStream_t, const SsdArgs&, const DevBatch&, int, float*);

}  // namespace bamba::cuda
