// The matmul of batch invariance (`--deterministic`, docs/serving.md): y = x · Wᵀ where every y[m, n] is the same
// chain of floating-point operations whatever the number of rows M is. cuBLAS picks its algorithm, tiles and
// split-K by shape, and small M goes to gemv.cu, so a sequence's logits would change bits with the batch it runs
// in. Here an output is always one accumulator walked over k in order:
//   bf16: acc = 0; for k0 = 0, 16, 32, ...: acc = mma.m16n8k16(x[m, k0:k0+16], W[n, k0:k0+16], acc)  (fp32 acc.)
//         (zeros past K) — from K = 1024 on, four such chains over four fixed k ranges, added in order — then
//         rounded once to the output type;
//   fp32: acc = 0; for k = 0 .. K-1: acc = fma(x[m, k], W[n, k], acc).
// A tile's shape decides only which outputs a block computes, never the order within one, so the tiles are free
// to follow the shape. No split-K, no atomics. The bias is added by the caller (one rounding, per element).
// Simple on purpose (tiles through shared memory, the next k tile prefetched into registers): correctness is
// the point, its cost is measured in docs/serving.md.
#include "backend/cuda/kernels.cuh"
#include "backend/cuda/mma.cuh"

namespace bamba::cuda {
namespace {

// ---- bf16 on tensor cores: a block computes 64 rows × BN (64 or 32) columns with a group of 4 warps of 32 × BN/2
// (2 m16 × BN/16 n8 frags) per K range.
constexpr int kBM = 64, kBK = 32, kPad = 8, kThreads = 128;  // (group_sync's barriers count 128 threads)
constexpr int kXVecPerThread = kBM * kBK / 8 / kThreads;  // 16-byte vectors of an x tile per thread (2)

// Eight bf16 of row `row` from column `col` (zeros past `rows` and K). Vec: 16-byte loads (K, ld multiples of 8,
// base 16-byte aligned), else element by element.
template <bool Vec>
__device__ __forceinline__ uint4 load8(const bf16* base, int64_t ld, int row, int rows, int col, int K) {
  uint4 v = make_uint4(0u, 0u, 0u, 0u);
  if (row >= rows || col >= K) return v;
  const bf16* p = base + int64_t(row) * ld + col;
  if constexpr (Vec) {
    return *reinterpret_cast<const uint4*>(p);
  } else {
    bf16 e[8];
#pragma unroll
    for (int j = 0; j < 8; ++j) e[j] = col + j < K ? p[j] : __float2bfloat16_rn(0.f);
    memcpy(&v, e, sizeof v);
    return v;
  }
}

__device__ __forceinline__ uint32_t ld32(const bf16* p) { return *reinterpret_cast<const uint32_t*>(p); }

// G groups of 4 warps split K into G contiguous ranges of whole k tiles (where the ranges end depends on K alone),
// each group walking its range in order into its own accumulators: a decode step's few rows need G× the loads in
// flight to stream the weights. The partial sums are then added in group order, ((p0 + p1) + p2) + p3, so an
// output's chain is still fixed by K: the same for every M. A group synchronizes on its own named barrier
// (the groups' trip counts may differ by one tile), the block on barrier 0 only around the reduction.
template <bool Vec, int G, int BN>
__global__ void __launch_bounds__(kThreads * G)
    invariant_mma_kernel(void* y, int y_f32, int64_t ldy, const bf16* x, int64_t ldx, const bf16* W, int64_t ldw,
                         int M, int N, int K) {
  __shared__ __align__(16) bf16 xs[G][kBM][kBK + kPad];  // [group][m, k] of its k tile
  __shared__ __align__(16) bf16 ws[G][BN][kBK + kPad];  // [group][n, k]
  constexpr int NJ = BN / 16, kWVecPerThread = BN * kBK / 8 / kThreads;  // n8 frags per warp; W vectors per thread
  const int grp = int(threadIdx.x) / kThreads, tid = int(threadIdx.x) % kThreads;
  const int m0 = int(blockIdx.y) * kBM, n0 = int(blockIdx.x) * BN;
  const int warp = tid / 32, lane = tid % 32, g = lane / 4, q = lane % 4;
  const int wm = (warp / 2) * 32, wn = (warp % 2) * (BN / 2);
  const int tiles = (K + kBK - 1) / kBK, per = (tiles + G - 1) / G;
  const int kb = min(K, grp * per * kBK), ke = min(K, (grp + 1) * per * kBK);  // this group's k range
  auto group_sync = [&] {  // barrier ids as immediates: ptxas then reserves 5 of the SM's 16, not all of them
    if constexpr (G == 1) {
      __syncthreads();
    } else {
      static_assert(G <= 4, "named barriers 1..4");
      switch (grp) {
        case 0: asm volatile("bar.sync 1, 128;" ::: "memory"); break;
        case 1: asm volatile("bar.sync 2, 128;" ::: "memory"); break;
        case 2: asm volatile("bar.sync 3, 128;" ::: "memory"); break;
        default: asm volatile("bar.sync 4, 128;" ::: "memory"); break;
      }
    }
  };
  float acc[2][NJ][4];
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < NJ; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.f;

  uint4 xr[kXVecPerThread], wr[kWVecPerThread];  // the next k tile, on its way from global memory
  auto fetch = [&](int k0) {
#pragma unroll
    for (int v = 0; v < kXVecPerThread; ++v) {
      const int idx = tid + v * kThreads, r = idx / (kBK / 8), c = (idx % (kBK / 8)) * 8;
      xr[v] = load8<Vec>(x, ldx, m0 + r, M, k0 + c, K);
    }
#pragma unroll
    for (int v = 0; v < kWVecPerThread; ++v) {
      const int idx = tid + v * kThreads, r = idx / (kBK / 8), c = (idx % (kBK / 8)) * 8;
      wr[v] = load8<Vec>(W, ldw, n0 + r, N, k0 + c, K);
    }
  };
  if (kb < ke) fetch(kb);
  for (int k0 = kb; k0 < ke; k0 += kBK) {
#pragma unroll
    for (int v = 0; v < kXVecPerThread; ++v) {
      const int idx = tid + v * kThreads, r = idx / (kBK / 8), c = (idx % (kBK / 8)) * 8;
      *reinterpret_cast<uint4*>(&xs[grp][r][c]) = xr[v];
    }
#pragma unroll
    for (int v = 0; v < kWVecPerThread; ++v) {
      const int idx = tid + v * kThreads, r = idx / (kBK / 8), c = (idx % (kBK / 8)) * 8;
      *reinterpret_cast<uint4*>(&ws[grp][r][c]) = wr[v];
    }
    group_sync();
    if (k0 + kBK < ke) fetch(k0 + kBK);
#pragma unroll
    for (int kk = 0; kk < kBK; kk += 16) {
      uint32_t a[2][4];
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        const int r = wm + i * 16 + g;
        a[i][0] = ld32(&xs[grp][r][kk + 2 * q]);
        a[i][1] = ld32(&xs[grp][r + 8][kk + 2 * q]);
        a[i][2] = ld32(&xs[grp][r][kk + 2 * q + 8]);
        a[i][3] = ld32(&xs[grp][r + 8][kk + 2 * q + 8]);
      }
#pragma unroll
      for (int j = 0; j < NJ; ++j) {
        const int c = wn + j * 8 + g;
        const uint32_t b0 = ld32(&ws[grp][c][kk + 2 * q]), b1 = ld32(&ws[grp][c][kk + 2 * q + 8]);
#pragma unroll
        for (int i = 0; i < 2; ++i) mma_bf16(acc[i][j], a[i], b0, b1);
      }
    }
    group_sync();
  }
  if constexpr (G > 1) {
    // Group 0 adds the others' partials in group order; thread tid of every group holds the same outputs.
    static_assert(8 * NJ * kThreads * sizeof(float) <= sizeof(xs), "the reduction buffer reuses the x tiles");
    float* red = reinterpret_cast<float*>(&xs[0][0][0]);  // [8 NJ accumulators][kThreads]
    for (int from = 1; from < G; ++from) {
      __syncthreads();  // every group is done with the tiles (from = 1) / group 0 has read the last partial
      if (grp == from) {
#pragma unroll
        for (int i = 0; i < 2; ++i)
#pragma unroll
          for (int j = 0; j < NJ; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) red[((i * NJ + j) * 4 + e) * kThreads + tid] = acc[i][j][e];
      }
      __syncthreads();
      if (grp == 0) {
#pragma unroll
        for (int i = 0; i < 2; ++i)
#pragma unroll
          for (int j = 0; j < NJ; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[i][j][e] += red[((i * NJ + j) * 4 + e) * kThreads + tid];
      }
    }
    if (grp != 0) return;
  }
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < NJ; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int m = m0 + wm + i * 16 + g + (e >= 2 ? 8 : 0), n = n0 + wn + j * 8 + 2 * q + (e & 1);
        if (m >= M || n >= N) continue;
        if (y_f32) static_cast<float*>(y)[int64_t(m) * ldy + n] = acc[i][j][e];
        else static_cast<bf16*>(y)[int64_t(m) * ldy + n] = __float2bfloat16_rn(acc[i][j][e]);
      }
}

// ---- fp32 on CUDA cores: 64 × 64 outputs per block of 256 threads, 4 × 4 per thread, one fma chain each.
constexpr int kFBM = 64, kFBN = 64, kFBK = 16, kFThreads = 256;

__global__ void __launch_bounds__(kFThreads)
    invariant_f32_kernel(float* y, int64_t ldy, const float* x, int64_t ldx, const float* W, int64_t ldw, int M, int N,
                         int K) {
  __shared__ float xs[kFBK][kFBM + 4];  // [k, m]
  __shared__ float ws[kFBK][kFBN + 4];  // [k, n]
  const int m0 = int(blockIdx.y) * kFBM, n0 = int(blockIdx.x) * kFBN;
  const int tm = (int(threadIdx.x) / 16) * 4, tn = (int(threadIdx.x) % 16) * 4;
  float acc[4][4] = {};
  for (int k0 = 0; k0 < K; k0 += kFBK) {
    for (int idx = int(threadIdx.x); idx < kFBM * kFBK; idx += kFThreads) {
      const int r = idx / kFBK, c = idx % kFBK, k = k0 + c;
      xs[c][r] = m0 + r < M && k < K ? x[int64_t(m0 + r) * ldx + k] : 0.f;
      ws[c][r] = n0 + r < N && k < K ? W[int64_t(n0 + r) * ldw + k] : 0.f;
    }
    __syncthreads();
    const int kn = min(kFBK, K - k0);  // past K nothing is added (the chain is exactly k = 0 .. K-1)
    for (int c = 0; c < kn; ++c) {
      float a[4], b[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) a[i] = xs[c][tm + i], b[i] = ws[c][tn + i];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j)
      if (m0 + tm + i < M && n0 + tn + j < N) y[int64_t(m0 + tm + i) * ldy + n0 + tn + j] = acc[i][j];
}

}  // namespace

template <typename T>
void invariant_matmul(cudaStream_t st, void* y, bool y_f32, int64_t ldy, const T* x, int64_t ldx, const T* W,
                      int64_t ldw, int M, int N, int K) {
  if (M <= 0 || N <= 0) return;
  if constexpr (std::is_same_v<T, bf16>) {
      const bool vec = K % 8 == 0 && ldx % 8 == 0 && ldw % 8 == 0 && aligned16(x) && aligned16(W);
    // The split of K is chosen by K alone (never by M): 4 groups from 1024 on. The column tile only picks which
    // outputs a block computes: 32 columns up to N = 8192 (more blocks to stream a narrow weight), else 64.
    auto launch = [&]<int G, int BN>() {
      const dim3 grid(ceil_div(N, BN), ceil_div(M, kBM));
      if (vec) invariant_mma_kernel<true, G, BN><<<grid, kThreads * G, 0, st>>>(y, int(y_f32), ldy, x, ldx, W, ldw, M, N, K);
      else invariant_mma_kernel<false, G, BN><<<grid, kThreads * G, 0, st>>>(y, int(y_f32), ldy, x, ldx, W, ldw, M, N, K);
    };
    if (K >= 1024) {
      if (N <= 8192) launch.template operator()<4, 32>();
      else launch.template operator()<4, 64>();
    } else {
      if (N <= 8192) launch.template operator()<1, 32>();
      else launch.template operator()<1, 64>();
    }
  } else {
    if (!y_f32) fail("internal: invariant_matmul with fp32 inputs writes fp32");
    invariant_f32_kernel<<<dim3(ceil_div(N, kFBN), ceil_div(M, kFBM)), kFThreads, 0, st>>>(
        static_cast<float*>(y), ldy, x, ldx, W, ldw, M, N, K);
  }
  CUDA_LAUNCH_CHECK();
}

#define INST(T)                                                                                                    \
  template void invariant_matmul<T>(cudaStream_t, void*, bool, int64_t, const T*, int64_t, const T*, int64_t, int, \
                                    int, int);
BAMBA_CUDA_DTYPES(INST)
#undef INST

}  // namespace bamba::cuda
