// Mixture-of-experts on the GPU (GraniteMoeHybrid, Nemotron-H): the router's top-k per token, then the routed
// expert MLPs as GROUPED GEMMs: the (token, slot) pairs are sorted by expert, every expert's rows form one
// contiguous group, and one launch per projection computes all groups (each block finds its expert from a tile
// table), instead of a matmul per expert or per token. Steps:
//   1. moe_sort: the pairs sorted by expert (stable: token order within an expert, as the CPU twin), the group
//      offsets and the first tile of each group; inv[t k + j] = the row of pair (t, j).
//   2. grouped GEMM up: up_rows[i] = x[token(i)] · up[e]ᵀ          (rows gathered through the sort)
//   3. SwiGLU / relu² on up_rows -> act_rows
//   4. grouped GEMM down: down_rows[i] = act_rows[i] · down[e]ᵀ
//   5. combine: out[t] = Σ_j w[t, j] · down_rows[inv[t k + j]]   (fp32, in slot order: no atomics, fixed bits)
// bf16 with 16-byte rows (hidden and expert sizes multiples of 8) runs the GEMMs on tensor cores (mma.m16n8k16,
// fp32 accumulation, tiles streamed through shared memory by cp.async), with the activation fused into the up
// GEMM's epilogue (steps 2 and 3 are one kernel: for SwiGLU each block's weight tile interleaves gate and up rows
// 8 at a time, so a thread holds gate and up of the same outputs). Two tile shapes: 16 rows × 64 columns for
// decode-sized groups (a few rows per expert: the cost is streaming each expert's weights once) and 64 × 128 for
// prompts. Other shapes and fp32 keep the CUDA-core kernel (64×64 tiles, 4×4 outputs per thread).
// The backward (training) reuses the same pieces: the sort, the grouped GEMM (with the expert matrix read
// transposed for the input gradients), the activations' backward kernels, a per-row dot for the routing
// weights' gradient and a grouped weight-gradient GEMM that sums each expert's rows in row order (one block owns
// each output element: deterministic, no atomics).
#include <algorithm>
#include <climits>
#include <cstdlib>
#include <type_traits>

#include "backend/cuda/cp_async.cuh"
#include "backend/cuda/kernels.cuh"
#include "backend/cuda/mma.cuh"

namespace bamba::cuda {
namespace {

constexpr int kMaxTopK = 32;

// A warp per token: the k largest scores, largest first, the lowest index among equals (the CPU twin's order). One
// thread per token scanning serially took ~95 µs at E = 64, k = 6 on an H100 — with 40 layers, half of
// granite-4.0-h-tiny's decode step (bench/NOTES.md v31). Here the scores sit in shared memory, computed once, and
// each pick is a warp argmax that returns what the serial scan `best < 0 || v > best` in index order returned.
constexpr int kRouteWarps = 4;  // tokens per block

// (score, index) of a lane's candidates, or of several lanes' joined; e < 0: none.
struct Pick {
  float v;
  int e;
};
__device__ __forceinline__ Pick better(Pick a, Pick b) {  // a and b from disjoint sets; neither holds a NaN
  if (a.e < 0) return b;
  if (b.e < 0) return a;
  return b.v > a.v || (b.v == a.v && b.e < a.e) ? b : a;
}
// The serial scan over the i < n with !skip[i], in every lane. A NaN never compares greater, so the scan keeps a NaN
// only when it is the first candidate: that one if it is NaN, else the largest of the others that are not NaN,
// the lowest index among equals (-inf included); -1 when there is no candidate.
__device__ int warp_argmax(const float* v, const unsigned char* skip, int n) {
  const int lane = threadIdx.x % 32;
  Pick b{0.f, -1};
  int first = INT_MAX;
  for (int i = lane; i < n; i += 32) {
    if (skip[i]) continue;
    first = min(first, i);
    if (const float x = v[i]; !isnan(x) && (b.e < 0 || x > b.v)) b = {x, i};
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    b = better(b, Pick{__shfl_xor_sync(0xffffffffu, b.v, o), __shfl_xor_sync(0xffffffffu, b.e, o)});
    first = min(first, __shfl_xor_sync(0xffffffffu, first, o));
  }
  if (first == INT_MAX) return -1;
  return isnan(v[first]) ? first : b.e;
}

// Shared memory per warp: scores [E] F32, group scores [64] F32, skip flags [E] and [64] bytes.
constexpr size_t route_smem_per_warp(int E) { return ((size_t(E) + 64) * 5 + 15) / 16 * 16; }

__global__ void route_kernel(MoeRouteArgs a) {
  extern __shared__ __align__(16) unsigned char smem[];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, t = blockIdx.x * kRouteWarps + warp;
  if (t >= a.T) return;  // (whole warps: the shuffles below see all 32 lanes)
  unsigned char* base = smem + size_t(warp) * route_smem_per_warp(a.E);
  float* score = reinterpret_cast<float*>(base);  // [E] what is chosen by
  float* gscore = score + a.E;                     // [64] per group: the sum of its two best
  unsigned char* skip = reinterpret_cast<unsigned char*>(gscore + 64);  // [E] not a candidate (group dropped, taken)
  unsigned char* kept = skip + a.E;                                       // [64] group chosen already
  const float* x = a.logits + int64_t(t) * a.ldl;
  auto sigmoid = [](float v) { return 1.f / (1.f + expf(-v)); };
  for (int e = lane; e < a.E; e += 32) {
    score[e] = a.sigmoid_group ? sigmoid(x[e]) + (a.bias.p ? ld_param(a.bias, e) : 0.f) : x[e];
    skip[e] = 0;
  }
  __syncwarp();
  // Groups kept (SigmoidGroup with topk_group < n_group): per group the sum of its two best, the best groups.
  const int per = a.E / a.n_group;
  if (a.sigmoid_group && a.topk_group < a.n_group) {
    for (int g = lane; g < a.n_group; g += 32) {
      float m1 = -INFINITY, m2 = -INFINITY;
      for (int e = g * per; e < (g + 1) * per; ++e) {
        const float v = score[e];
        if (v > m1) { m2 = m1; m1 = v; }
        else if (v > m2) m2 = v;
      }
      gscore[g] = m1 + (per > 1 ? m2 : 0.f);
      kept[g] = 0;
    }
    __syncwarp();
    for (int r = 0; r < a.topk_group; ++r) {
      const int best_g = warp_argmax(gscore, kept, a.n_group);  // among the groups not kept yet
      __syncwarp();
      if (lane == 0 && best_g >= 0) kept[best_g] = 1;
      __syncwarp();
    }
    for (int e = lane; e < a.E; e += 32) skip[e] = e / per >= a.n_group || !kept[e / per];  // (E % n_group: none kept)
    __syncwarp();
  }
  int idx[kMaxTopK];
  for (int j = 0; j < a.k; ++j) {
    idx[j] = warp_argmax(score, skip, a.E);
    __syncwarp();
    if (lane == 0 && idx[j] >= 0) skip[idx[j]] = 1;
    __syncwarp();
  }
  if (lane != 0) return;
  float w[kMaxTopK], sum = 0.f;
  if (!a.sigmoid_group) {  // softmax over the k chosen logits
    const float m = x[idx[0]];
    for (int j = 0; j < a.k; ++j) sum += (w[j] = expf(x[idx[j]] - m));
    for (int j = 0; j < a.k; ++j) w[j] /= sum;
  } else {  // the unbiased sigmoid scores of the chosen, renormalised, scaled
    for (int j = 0; j < a.k; ++j) sum += (w[j] = sigmoid(x[idx[j]]));
    for (int j = 0; j < a.k; ++j) w[j] = (a.norm_topk_prob ? w[j] / (sum + 1e-20f) : w[j]) * a.routed_scaling;
  }
  for (int j = 0; j < a.k; ++j) {
    a.experts[int64_t(t) * a.lde + j] = idx[j];
    a.weights[int64_t(t) * a.ldw + j] = w[j];
  }
}

constexpr int kBM = 64, kBN = 64, kBK = 16;

// The index scratch: order [Tk] | inv [Tk] | offsets [E+1] | tile_start [E+1]   (2 Tk + 2E + 2 ints).
struct SortOut {
  int32_t *order, *inv, *offsets, *tile_start;
};

// One block; thread e collects expert e's pairs in order, reading the pairs through shared-memory tiles. Groups
// are cut into tiles of bm rows (the GEMM's row tile).
__global__ void sort_kernel(const int32_t* experts, int64_t lde, int T, int k, int E, int bm, SortOut o) {
  __shared__ int32_t tile[1024];
  __shared__ int32_t count[1024];
  const int Tk = T * k, e = threadIdx.x;
  int n = 0;
  for (int base = 0; base < Tk; base += 1024) {  // pass 1: counts
    __syncthreads();
    for (int i = threadIdx.x; i < 1024 && base + i < Tk; i += blockDim.x)
      tile[i] = experts[int64_t((base + i) / k) * lde + (base + i) % k];
    __syncthreads();
    if (e < E)
      for (int i = 0; i < 1024 && base + i < Tk; ++i) n += tile[i] == e;
  }
  if (e < E) count[e] = n;
  __syncthreads();
  if (threadIdx.x == 0) {  // offsets and tile starts (E is small)
    int off = 0, tiles = 0;
    for (int g = 0; g < E; ++g) {
      o.offsets[g] = off;
      o.tile_start[g] = tiles;
      off += count[g];
      tiles += (count[g] + bm - 1) / bm;
    }
    o.offsets[E] = off;
    o.tile_start[E] = tiles;
  }
  __syncthreads();
  int pos = e < E ? o.offsets[e] : 0;
  for (int base = 0; base < Tk; base += 1024) {  // pass 2: placement in pair order
    __syncthreads();
    for (int i = threadIdx.x; i < 1024 && base + i < Tk; i += blockDim.x)
      tile[i] = experts[int64_t((base + i) / k) * lde + (base + i) % k];
    __syncthreads();
    if (e < E)
      for (int i = 0; i < 1024 && base + i < Tk; ++i)
        if (tile[i] == e) {
          o.order[pos] = base + i;
          o.inv[base + i] = pos;
          ++pos;
        }
  }
}

// C[r, n] = Σ_k A[a_row(r), k] · W_e[n, k] for the rows r of group e, for every group at once. blockIdx.x is a
// tile of some group (found in tile_start), blockIdx.y a column tile. gather: A rows are x[order[r] / topk].
// kTransW: W_e is stored [K, N] (element (n, k) at k N + n): the input gradients' dx = dy · W_e.
template <typename T, bool kTransW = false>
__global__ void grouped_gemm_kernel(T* C, int64_t ldc, const T* A, int64_t lda, const T* W, int N, int K, int E,
                                    SortOut o, int gather_k) {
  __shared__ float As[kBK][kBM + 1];
  __shared__ float Ws[kBK][kBN + 1];
  __shared__ int32_t a_rows[kBM];
  const int tile = blockIdx.x;
  if (tile >= o.tile_start[E]) return;
  int e = 0;
  while (o.tile_start[e + 1] <= tile) ++e;  // the group of this tile (E is small)
  const int r0 = o.offsets[e] + (tile - o.tile_start[e]) * kBM, r1 = min(r0 + kBM, o.offsets[e + 1]);
  const int n0 = blockIdx.y * kBN;
  const T* We = W + int64_t(e) * N * K;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;  // 16 × 16 threads, 4 × 4 outputs each
  for (int i = threadIdx.x; i < kBM; i += blockDim.x) {
    const int r = r0 + i;
    a_rows[i] = r < r1 ? (gather_k ? o.order[r] / gather_k : r) : -1;
  }
  float acc[4][4] = {};
  for (int k0 = 0; k0 < K; k0 += kBK) {
    __syncthreads();
    for (int i = threadIdx.x; i < kBM * kBK; i += blockDim.x) {
      const int m = i / kBK, kk = i % kBK, row = a_rows[m];
      As[kk][m] = row >= 0 && k0 + kk < K ? to_f(A[int64_t(row) * lda + k0 + kk]) : 0.f;
      const int n = n0 + m;
      const int64_t wi = kTransW ? int64_t(k0 + kk) * N + n : int64_t(n) * K + k0 + kk;
      Ws[kk][m] = n < N && k0 + kk < K ? to_f(We[wi]) : 0.f;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kBK; ++kk) {
      float av[4], wv[4];
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        av[q] = As[kk][ty * 4 + q];
        wv[q] = Ws[kk][tx * 4 + q];
      }
#pragma unroll
      for (int p = 0; p < 4; ++p)
#pragma unroll
        for (int q = 0; q < 4; ++q) acc[p][q] += av[p] * wv[q];
    }
  }
#pragma unroll
  for (int p = 0; p < 4; ++p) {
    const int r = r0 + ty * 4 + p;
    if (r >= r1) continue;
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const int n = n0 + tx * 4 + q;
      if (n < N) C[int64_t(r) * ldc + n] = from_f<T>(acc[p][q]);
    }
  }
}

// The group of row tile `tile`: the last e with tile_start[e] <= tile (binary search; tile_start is ascending).
__device__ __forceinline__ int group_of_tile(const int32_t* tile_start, int E, int tile) {
  int lo = 0, hi = E - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (tile_start[mid] <= tile) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

// What the tensor-core GEMM does with its fp32 accumulators.
enum Epilogue : int {
  kStore = 0,   // C[r, n] = acc                       (the down projection)
  kSwiGLU = 1,  // C[r, f] = silu(acc_gate) · acc_up    (the up projection, U = 2F, columns interleaved)
  kRelu2 = 2,   // C[r, n] = relu(acc)²                 (the up projection, U = F)
};

constexpr int kMmaBK = 32;               // k per pipeline stage (two mma k-steps)
constexpr int kMmaLds = kMmaBK + 8;      // smem row stride in bf16: 80 bytes, so ldmatrix's 8 rows hit distinct banks
constexpr int kMmaThreads = 128;         // 4 warps

// C = epilogue(A_gathered · W_eᵀ) for every group at once on bf16 tensor cores. Block (row tile of one group,
// column tile); 4 warps as WM × WN, each owning (BM/WM) × (BN/WN) outputs in m16n8 accumulators. The A rows
// (gathered through the sort for the up projection) and the BN weight rows are streamed in k slices of 32 through
// STAGES shared-memory buffers by cp.async. Requires K, lda multiples of 8 and 16-byte aligned A and W (the
// launcher checks). For kSwiGLU the block's columns are output features f0 .. f0 + BN/2 and its weight tile's
// rows alternate 8 gate rows (f) and 8 up rows (F + f), so n8 accumulator blocks 2i and 2i+1 of a thread hold the
// gate and up of the same features. Every output is one fp32 chain over k in order: no split-K, no atomics.
template <int BM, int BN, int WM, int WN, int STAGES, int EPI>
__global__ void __launch_bounds__(kMmaThreads) grouped_mma_kernel(bf16* C, int64_t ldc, const bf16* A, int64_t lda,
                                                                   const bf16* W, int N, int K, int F, int E,
                                                                   SortOut o, int gather_k) {
  static_assert(WM * WN == kMmaThreads / 32, "4 warps");
  constexpr int TM = BM / WM, TN = BN / WN;  // a warp's tile
  constexpr int MI = TM / 16, NI = TN / 8;
  static_assert(TM % 16 == 0 && TN % 16 == 0, "whole m16 tiles, n8 blocks in pairs");
  __shared__ __align__(16) bf16 sA[STAGES][BM * kMmaLds];
  __shared__ __align__(16) bf16 sW[STAGES][BN * kMmaLds];
  __shared__ int64_t a_off[BM];  // element offset of each A row; -1 past the group's end
  __shared__ int64_t w_off[BN];  // element offset of each weight row in W_e; -1 past N (or F)

  const int tile = blockIdx.x;
  if (tile >= o.tile_start[E]) return;  // block-uniform: more tiles were launched than the groups need
  const int e = group_of_tile(o.tile_start, E, tile);
  const int r0 = o.offsets[e] + (tile - o.tile_start[e]) * BM, r1 = min(r0 + BM, o.offsets[e + 1]);
  const int n0 = blockIdx.y * (EPI == kSwiGLU ? BN / 2 : BN);  // first output column (feature) of the block
  const bf16* We = W + int64_t(e) * N * K;
  for (int i = threadIdx.x; i < BM; i += kMmaThreads) {
    const int r = r0 + i;
    a_off[i] = r < r1 ? int64_t(gather_k ? o.order[r] / gather_k : r) * lda : -1;
  }
  for (int i = threadIdx.x; i < BN; i += kMmaThreads) {
    int n = n0 + i, lim = N;
    if (EPI == kSwiGLU) {  // rows 16p .. 16p+7: gate features n0 + 8p + (0..7); rows 16p+8 ..: their up rows
      const int f = n0 + (i / 16) * 8 + i % 8;
      n = (i / 8) % 2 ? F + f : f;
      lim = (i / 8) % 2 ? N : F;
      if (f >= F) n = lim;  // a feature past F: padding
    }
    w_off[i] = n < lim ? int64_t(n) * K : -1;
  }
  __syncthreads();

  // Stage s ← k slice kt: BM + BN rows of 4 runs of 8 bf16; runs past K or rows past the group read nothing.
  auto load = [&](int s, int kt) {
    const int k0 = kt * kMmaBK;
    for (int i = threadIdx.x; i < (BM + BN) * (kMmaBK / 8); i += kMmaThreads) {
      const int r = i / (kMmaBK / 8), c = (i % (kMmaBK / 8)) * 8;
      const bool is_a = r < BM;
      const int64_t off = is_a ? a_off[r] : w_off[r - BM];
      const bool full = off >= 0 && k0 + c < K;
      const bf16* base = is_a ? A : We;
      bf16* dst = is_a ? &sA[s][r * kMmaLds + c] : &sW[s][(r - BM) * kMmaLds + c];
      async::copy16(dst, full ? base + off + k0 + c : base, full);
    }
  };

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int wm0 = (warp / WN) * TM, wn0 = (warp % WN) * TN;
  float acc[MI][NI][4] = {};
  const int KT = (K + kMmaBK - 1) / kMmaBK;
#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s < KT) load(s, s);
    async::commit();
  }
  for (int kt = 0; kt < KT; ++kt) {
    async::wait<STAGES - 2>();
    __syncthreads();  // slice kt is in, and every warp is done with the buffer the next load overwrites
    if (kt + STAGES - 1 < KT) load((kt + STAGES - 1) % STAGES, kt + STAGES - 1);
    async::commit();  // (an empty group at the end keeps the count uniform)
    const bf16* a_s = sA[kt % STAGES];
    const bf16* w_s = sW[kt % STAGES];
#pragma unroll
    for (int kk = 0; kk < kMmaBK; kk += 16) {
      uint32_t af[MI][4];
#pragma unroll
      for (int mi = 0; mi < MI; ++mi)
        ldsm_x4(af[mi], a_s + (wm0 + mi * 16 + (lane & 15)) * kMmaLds + kk + (lane >> 4) * 8);
#pragma unroll
      for (int nj = 0; nj < NI / 2; ++nj) {
        uint32_t bf[4];  // b0, b1 of n8 block 2nj, then of 2nj+1
        const int mat = lane >> 3;
        ldsm_x4(bf, w_s + (wn0 + 16 * nj + (mat >> 1) * 8 + (lane & 7)) * kMmaLds + kk + (mat & 1) * 8);
#pragma unroll
        for (int mi = 0; mi < MI; ++mi) {
          mma_bf16(acc[mi][2 * nj], af[mi], bf[0], bf[1]);
          mma_bf16(acc[mi][2 * nj + 1], af[mi], bf[2], bf[3]);
        }
      }
    }
  }

  // Epilogue: c0, c1 = (row g, cols 2q, 2q+1), c2, c3 = (row g+8, same cols) of each m16n8 block.
  const int g = lane >> 2, q = lane & 3;
#pragma unroll
  for (int mi = 0; mi < MI; ++mi)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int r = r0 + wm0 + mi * 16 + g + 8 * h;
      if (r >= r1) continue;
      bf16* c_row = C + int64_t(r) * ldc;
      if constexpr (EPI == kSwiGLU) {
#pragma unroll
        for (int ni = 0; ni < NI; ni += 2)
#pragma unroll
          for (int x = 0; x < 2; ++x) {
            const int f = n0 + (wn0 + ni * 8) / 2 + 2 * q + x;  // (wn0 + 8 ni) / 16 pairs of 8 features before
            if (f < F) c_row[f] = __float2bfloat16_rn(silu_f(acc[mi][ni][2 * h + x]) * acc[mi][ni + 1][2 * h + x]);
          }
      } else {
#pragma unroll
        for (int ni = 0; ni < NI; ++ni)
#pragma unroll
          for (int x = 0; x < 2; ++x) {
            const int n = n0 + wn0 + ni * 8 + 2 * q + x;
            float v = acc[mi][ni][2 * h + x];
            if (EPI == kRelu2) v = fmaxf(v, 0.f) * fmaxf(v, 0.f);
            if (n < N) c_row[n] = __float2bfloat16_rn(v);
          }
      }
    }
}

template <typename T>
__global__ void combine_kernel(T* out, int64_t ldo, const T* rows, int64_t ldr, const float* w, int64_t ldw,
                               const int32_t* inv, int k, int H) {
  const int t = blockIdx.x;
  for (int c = threadIdx.x; c < H; c += blockDim.x) {
    float acc = 0.f;
    for (int j = 0; j < k; ++j)  // w null: unit weights (the backward's input gradient)
      acc += (w ? w[int64_t(t) * ldw + j] : 1.f) * to_f(rows[int64_t(inv[t * k + j]) * ldr + c]);
    out[int64_t(t) * ldo + c] = from_f<T>(acc);
  }
}

// The tensor-core path of moe_experts for one tile shape: up (+ activation) and down GEMMs.
template <int BM, int BN, int WM, int WN, int STAGES>
void experts_mma(cudaStream_t st, const MoeExpertsArgs& a, const SortOut& o) {
  const unsigned max_tiles = unsigned(a.T * a.k / BM + a.E);  // blocks past the last tile exit at once
  const auto* x = static_cast<const bf16*>(a.x);
  const auto* up = static_cast<const bf16*>(a.up);
  auto* act = static_cast<bf16*>(a.act_rows);
  if (a.act == 0)
    grouped_mma_kernel<BM, BN, WM, WN, STAGES, kSwiGLU><<<dim3(max_tiles, ceil_div(a.F, BN / 2)), kMmaThreads, 0, st>>>(
        act, a.lda, x, a.ldx, up, a.U, a.H, a.F, a.E, o, a.k);
  else
    grouped_mma_kernel<BM, BN, WM, WN, STAGES, kRelu2><<<dim3(max_tiles, ceil_div(a.F, BN)), kMmaThreads, 0, st>>>(
        act, a.lda, x, a.ldx, up, a.U, a.H, a.F, a.E, o, a.k);
  CUDA_LAUNCH_CHECK();
  grouped_mma_kernel<BM, BN, WM, WN, STAGES, kStore><<<dim3(max_tiles, ceil_div(a.H, BN)), kMmaThreads, 0, st>>>(
      static_cast<bf16*>(a.down_rows), a.ldd, act, a.lda, static_cast<const bf16*>(a.down), a.H, a.F, a.F, a.E, o, 0);
  CUDA_LAUNCH_CHECK();
}

// BAMBA_MOE_MMA=0 keeps the CUDA-core kernel (to compare the two on one binary).
bool moe_mma_enabled() {
  static const bool on = [] {
    const char* e = std::getenv("BAMBA_MOE_MMA");
    return !(e && e[0] == '0');
  }();
  return on;
}

// Whether the tensor-core path applies: bf16, 16-byte rows everywhere cp.async reads (x, act_rows, weights).
template <typename T>
bool mma_fits(const MoeExpertsArgs& a) {
  if constexpr (!std::is_same_v<T, bf16>) {
    return false;
  } else {
    return a.H % 8 == 0 && a.F % 8 == 0 && a.ldx % 8 == 0 && a.lda % 8 == 0 && aligned16(a.x) && aligned16(a.up) &&
           aligned16(a.down) && aligned16(a.act_rows) && (a.act == 0 ? a.U == 2 * a.F : a.U == a.F);
  }
}

// ---- backward
// One thread per token: the routing weights' gradient → the chosen experts' logits (zero elsewhere).
template <typename T>
__global__ void route_backward_kernel(MoeRouteBackwardArgs a) {
  const int t = blockIdx.x * blockDim.x + threadIdx.x;
  if (t >= a.T) return;
  const float* x = a.logits + int64_t(t) * a.ldl;
  const int32_t* idx = a.experts + int64_t(t) * a.lde;
  const float* dw = a.dweights + int64_t(t) * a.ldw;
  T* dx = static_cast<T*>(a.dlogits) + int64_t(t) * a.ldd;
  for (int e = 0; e < a.E; ++e) dx[e] = from_f<T>(0.f);
  float s[kMaxTopK], sum = 0.f, sdw = 0.f;
  if (!a.sigmoid_group) {  // w = softmax(x_sel): dx_j = w_j (dw_j − Σ w_i dw_i)
    float m = x[idx[0]];
    for (int j = 1; j < a.k; ++j) m = fmaxf(m, x[idx[j]]);
    for (int j = 0; j < a.k; ++j) sum += (s[j] = expf(x[idx[j]] - m));
    for (int j = 0; j < a.k; ++j) sdw += (s[j] / sum) * dw[j];
    for (int j = 0; j < a.k; ++j) dx[idx[j]] = from_f<T>(s[j] / sum * (dw[j] - sdw));
    return;
  }
  for (int j = 0; j < a.k; ++j) {  // w_j = c s_j / (S + ε): ds, then × σ'
    s[j] = 1.f / (1.f + expf(-x[idx[j]]));
    sum += s[j], sdw += dw[j] * s[j];
  }
  const float den = sum + 1e-20f;
  for (int j = 0; j < a.k; ++j) {
    const float ds = a.norm_topk_prob ? a.routed_scaling * (dw[j] / den - sdw / (den * den)) : a.routed_scaling * dw[j];
    dx[idx[j]] = from_f<T>(ds * s[j] * (1.f - s[j]));
  }
}

// One block per gathered row i (pair p = order[i] = t k + j): dweights[t, j] = ⟨act_i, g_i⟩, then g_i ×= w[t, j]
// (g_i = dout[t] · down_e, the activation's gradient before the routing weight).
template <typename T>
__global__ void weight_grad_kernel(T* g, int64_t ldg, const T* act, int64_t lda, const float* w, int64_t ldw,
                                   float* dw, int64_t lddw, const int32_t* order, int k, int F) {
  const int i = blockIdx.x, p = order[i], t = p / k, j = p % k;
  float acc = 0.f;
  for (int f = threadIdx.x; f < F; f += blockDim.x) acc += to_f(act[int64_t(i) * lda + f]) * to_f(g[int64_t(i) * ldg + f]);
  __shared__ float red[256];
  red[threadIdx.x] = acc;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) red[threadIdx.x] += red[threadIdx.x + s];
    __syncthreads();
  }
  if (threadIdx.x == 0) dw[int64_t(t) * lddw + j] = red[0];
  const float wt = w[int64_t(t) * ldw + j];
  for (int f = threadIdx.x; f < F; f += blockDim.x)
    g[int64_t(i) * ldg + f] = from_f<T>(wt * to_f(g[int64_t(i) * ldg + f]));
}

// dW[e] [N, M] += Σ_{rows r of group e, in order} s(r) · A[a(r), n] · B[b(r), m], one block per 64 × 64 output
// tile of one expert (blockIdx.z). a(r) = order[r] / k when a_gather (a token's row), else r (a gathered row);
// likewise b; s(r) = w[pair(r)] when w is given, else 1.
template <typename T>
__global__ void grouped_wgrad_kernel(float* dW, const T* A, int64_t lda, int a_gather, const T* B, int64_t ldb,
                                     int b_gather, const float* w, int64_t ldw, int N, int M, SortOut o, int k) {
  __shared__ float As[kBK][kBM + 1];
  __shared__ float Bs[kBK][kBN + 1];
  const int e = blockIdx.z, n0 = blockIdx.y * kBM, m0 = blockIdx.x * kBN;
  const int r_begin = o.offsets[e], r_end = o.offsets[e + 1];
  if (r_begin == r_end) return;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  float acc[4][4] = {};
  for (int r0 = r_begin; r0 < r_end; r0 += kBK) {
    __syncthreads();
    for (int q = threadIdx.x; q < kBK * kBM; q += blockDim.x) {
      const int kk = q / kBM, c = q % kBM, r = r0 + kk;
      float av = 0.f, bv = 0.f;
      if (r < r_end) {
        const int p = o.order[r];
        const int64_t ar = a_gather ? p / k : r, br = b_gather ? p / k : r;
        const float s = w ? w[int64_t(p / k) * ldw + p % k] : 1.f;
        if (n0 + c < N) av = s * to_f(A[ar * lda + n0 + c]);
        if (m0 + c < M) bv = to_f(B[br * ldb + m0 + c]);
      }
      As[kk][c] = av;
      Bs[kk][c] = bv;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kBK; ++kk) {
      float av[4], bv[4];
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        av[q] = As[kk][ty * 4 + q];
        bv[q] = Bs[kk][tx * 4 + q];
      }
#pragma unroll
      for (int p = 0; p < 4; ++p)
#pragma unroll
        for (int q = 0; q < 4; ++q) acc[p][q] += av[p] * bv[q];
    }
  }
  float* dWe = dW + int64_t(e) * N * M;
#pragma unroll
  for (int p = 0; p < 4; ++p) {
    const int n = n0 + ty * 4 + p;
    if (n >= N) continue;
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const int m = m0 + tx * 4 + q;
      if (m < M) dWe[int64_t(n) * M + m] += acc[p][q];
    }
  }
}

}  // namespace

void moe_route(cudaStream_t st, const MoeRouteArgs& a) {
  if (a.T == 0) return;
  if (a.k > kMaxTopK) fail("cuda moe_route: num_experts_per_tok ", a.k, " exceeds ", kMaxTopK);
  if (a.sigmoid_group && a.n_group > 64) fail("cuda moe_route: n_group ", a.n_group, " exceeds 64");
  if (a.E > 1024) fail("cuda moe_route: ", a.E, " experts exceed 1024");
  const size_t smem = kRouteWarps * route_smem_per_warp(a.E);  // ≤ 4 × 5.4 KB
  route_kernel<<<ceil_div(a.T, kRouteWarps), 32 * kRouteWarps, smem, st>>>(a);
  CUDA_LAUNCH_CHECK();
}

template <typename T>
void moe_experts(cudaStream_t st, const MoeExpertsArgs& a) {
  if (a.T == 0) return;
  if (a.E > 1024) fail("cuda moe_experts: ", a.E, " experts exceed 1024");
  if (a.k > kMaxTopK) fail("cuda moe_experts: num_experts_per_tok ", a.k, " exceeds ", kMaxTopK);
  const int Tk = a.T * a.k;
  SortOut o{a.index, a.index + Tk, a.index + 2 * Tk, a.index + 2 * Tk + a.E + 1};
  // Row tile: 16 when groups average under 32 rows (decode: weight streaming dominates, and a 64-row tile would
  // mostly multiply padding), 64 for prompts; the CUDA-core fallback tiles by kBM.
  const bool mma = mma_fits<T>(a) && moe_mma_enabled();
  const int bm = !mma ? kBM : Tk < 32 * a.E ? 16 : 64;
  sort_kernel<<<1, std::max(32, (a.E + 31) / 32 * 32), 0, st>>>(a.experts, a.lde, a.T, a.k, a.E, bm, o);
  CUDA_LAUNCH_CHECK();
  if (mma) {
    if (bm == 16) experts_mma<16, 64, 1, 4, 4>(st, a, o);
    else experts_mma<64, 128, 2, 2, 3>(st, a, o);
  } else {
    // At most Tk / BM + E tiles in all; blocks past the last one exit at once.
    const unsigned max_tiles = unsigned(Tk / kBM + a.E);
    grouped_gemm_kernel<T><<<dim3(max_tiles, ceil_div(a.U, kBN)), 256, 0, st>>>(
        static_cast<T*>(a.up_rows), a.ldu, static_cast<const T*>(a.x), a.ldx, static_cast<const T*>(a.up), a.U, a.H,
        a.E, o, a.k);
    CUDA_LAUNCH_CHECK();
    if (a.act == 0) swiglu<T>(st, static_cast<T*>(a.act_rows), a.lda, static_cast<const T*>(a.up_rows), a.ldu, Tk, a.F);
    else relu2<T>(st, static_cast<T*>(a.act_rows), a.lda, static_cast<const T*>(a.up_rows), a.ldu, Tk, a.F);
    grouped_gemm_kernel<T><<<dim3(max_tiles, ceil_div(a.H, kBN)), 256, 0, st>>>(
        static_cast<T*>(a.down_rows), a.ldd, static_cast<const T*>(a.act_rows), a.lda, static_cast<const T*>(a.down),
        a.H, a.F, a.E, o, 0);
    CUDA_LAUNCH_CHECK();
  }
  combine_kernel<T><<<unsigned(a.T), 256, 0, st>>>(static_cast<T*>(a.out), a.ldo, static_cast<const T*>(a.down_rows),
                                                   a.ldd, a.weights, a.ldw, o.inv, a.k, a.H);
  CUDA_LAUNCH_CHECK();
}

template <typename T>
void moe_route_backward(cudaStream_t st, const MoeRouteBackwardArgs& a) {
  if (a.T == 0) return;
  if (a.k > kMaxTopK) fail("cuda moe_route_backward: num_experts_per_tok ", a.k, " exceeds ", kMaxTopK);
  route_backward_kernel<T><<<ceil_div(a.T, 128), 128, 0, st>>>(a);
  CUDA_LAUNCH_CHECK();
}

template <typename T>
void moe_experts_backward(cudaStream_t st, const MoeExpertsBackwardArgs& a) {
  if (a.T == 0) return;
  if (a.E > 1024) fail("cuda moe_experts_backward: ", a.E, " experts exceed 1024");
  if (a.k > kMaxTopK) fail("cuda moe_experts_backward: num_experts_per_tok ", a.k, " exceeds ", kMaxTopK);
  const int Tk = a.T * a.k;
  SortOut o{a.index, a.index + Tk, a.index + 2 * Tk, a.index + 2 * Tk + a.E + 1};
  sort_kernel<<<1, std::max(32, (a.E + 31) / 32 * 32), 0, st>>>(a.experts, a.lde, a.T, a.k, a.E, kBM, o);
  CUDA_LAUNCH_CHECK();
  const unsigned max_tiles = unsigned(Tk / kBM + a.E);
  T* up_rows = static_cast<T*>(a.up_rows);
  T* act_rows = static_cast<T*>(a.act_rows);
  T* d_up = static_cast<T*>(a.d_up);
  T* d_act = static_cast<T*>(a.d_act);
  const T* x = static_cast<const T*>(a.x);
  const T* dout = static_cast<const T*>(a.dout);
  const T* up = static_cast<const T*>(a.up);
  const T* down = static_cast<const T*>(a.down);
  // the forward's up rows and activations, recomputed
  grouped_gemm_kernel<T><<<dim3(max_tiles, ceil_div(a.U, kBN)), 256, 0, st>>>(up_rows, a.ldu, x, a.ldx, up, a.U, a.H,
                                                                               a.E, o, a.k);
  CUDA_LAUNCH_CHECK();
  if (a.act == 0) swiglu<T>(st, act_rows, a.lda, up_rows, a.ldu, Tk, a.F);
  else relu2<T>(st, act_rows, a.lda, up_rows, a.ldu, Tk, a.F);
  // g_i = dout[t] · down_e  [Tk, F] (down_e [H, F] read as the transposed W), then dweights and × w
  grouped_gemm_kernel<T, true><<<dim3(max_tiles, ceil_div(a.F, kBN)), 256, 0, st>>>(d_act, a.ld_dact, dout, a.ldo,
                                                                                     down, a.F, a.H, a.E, o, a.k);
  CUDA_LAUNCH_CHECK();
  if (Tk > 0) {
    weight_grad_kernel<T><<<unsigned(Tk), 256, 0, st>>>(d_act, a.ld_dact, act_rows, a.lda, a.weights, a.ldw,
                                                        a.dweights, a.lddw, o.order, a.k, a.F);
    CUDA_LAUNCH_CHECK();
  }
  if (a.act == 0) swiglu_backward<T>(st, d_up, a.ld_dup, d_act, a.ld_dact, up_rows, a.ldu, Tk, a.F);
  else relu2_backward<T>(st, d_up, a.ld_dup, d_act, a.ld_dact, up_rows, a.ldu, Tk, a.F);
  // dx rows = d_up_i · up_e [Tk, H] (up_e [U, H] read transposed), summed per token in slot order
  grouped_gemm_kernel<T, true><<<dim3(max_tiles, ceil_div(a.H, kBN)), 256, 0, st>>>(
      static_cast<T*>(a.down_rows), a.ldd, d_up, a.ld_dup, up, a.H, a.U, a.E, o, 0);
  CUDA_LAUNCH_CHECK();
  combine_kernel<T><<<unsigned(a.T), 256, 0, st>>>(static_cast<T*>(a.dx), a.lddx, static_cast<const T*>(a.down_rows),
                                                   a.ldd, nullptr, 0, o.inv, a.k, a.H);
  CUDA_LAUNCH_CHECK();
  // dup_e [U, H] += Σ d_up_iᵀ x[t];  ddown_e [H, F] += Σ (w · dout[t])ᵀ act_i
  grouped_wgrad_kernel<T><<<dim3(ceil_div(a.H, kBN), ceil_div(a.U, kBM), unsigned(a.E)), 256, 0, st>>>(
      a.dup, d_up, a.ld_dup, 0, x, a.ldx, 1, nullptr, 0, a.U, a.H, o, a.k);
  CUDA_LAUNCH_CHECK();
  grouped_wgrad_kernel<T><<<dim3(ceil_div(a.F, kBN), ceil_div(a.H, kBM), unsigned(a.E)), 256, 0, st>>>(
      a.ddown, dout, a.ldo, 1, act_rows, a.lda, 0, a.weights, a.ldw, a.H, a.F, o, a.k);
  CUDA_LAUNCH_CHECK();
}

#define INST(T)                                                                 \
  template void moe_experts<T>(cudaStream_t, const MoeExpertsArgs&);            \
  template void moe_route_backward<T>(cudaStream_t, const MoeRouteBackwardArgs&); \
  template void moe_experts_backward<T>(cudaStream_t, const MoeExpertsBackwardArgs&);
BAMBA_CUDA_DTYPES(INST)
#undef INST

}  // namespace bamba::cuda
