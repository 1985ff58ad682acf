// Matmuls with 1-8 rows on bf16 tensor cores: y[m, n] = Σ_k x[m, k] W[n, k] (+ bias[n]), optionally with the
// step before the matmul folded into the x load (RMSNorm, SwiGLU) and the residual add into the store.
//
// Why tensor cores for a bandwidth-bound product: gemv.cu (warp per output row, CUDA cores) reads every x row
// from L1 against each 16-byte W chunk, so at M = 4 a lane loads 4x as many x bytes from L1 as W bytes from
// HBM, and decode4 ran at 55 % of its roofline (bench/NOTES.md). Here one mma.m16n8k16 takes 16 weight rows as
// the A operand and the ≤ 8 token rows as the 8 columns of B: a warp reads 2 bytes of x for every 4 bytes of W
// whatever M is, and W is still streamed exactly once.
//
// Layout. A block is 16 output rows × all of K; its 8 warps split K into 64-element k-blocks (warp w takes
// k-blocks w, w + 8, ...: the block reads 1 KB of each row per round) and add their 16 × 8 partial products
// through shared memory at the end. Lane (g = lane / 4, q = lane % 4) loads, per k-block at k0, the 16-byte
// chunks k0 + 8q and k0 + 32 + 8q of W rows g and g + 8 and of x row g (the 4 lanes of a row cover two whole
// 64-byte spans). mma's reduction over its 16 k's does not care which physical k each of them is, as long as A
// and B agree, so step s (0..3) feeds words 2s, 2s + 1 of a lane's 8 x words as B (b0, b1: "k 2q.., col g") and
// the same words of its W rows as A (a0, a2 for row g; a1, a3 for row g + 8): no shuffles, no shared memory.
// Two k-blocks of W (8 loads of 16 bytes per lane) are in flight while the previous one is multiplied.
//
// x modes (the op folded into the load, so its output is never written and its kernel never launched):
//   plain    x[m, k]
//   rmsnorm  bf16(x[m, k] · w[k]), and r[m] = rsqrt(mean_k x[m, k]² + eps) applied to the sums at the end: r
//            is one scalar per row, so it factors out of the dot product, and the Σ x² comes from the x the
//            block's lanes load anyway (they cover each row's K once). (A first version computed r in a
//            prologue of every block, 8 KB rows from L2 and two barriers: about as slow, see below.)
//            The rounding differs from norm.cu's (x · w rounded to bf16 before the product, not x · r · w).
//   swiglu   bf16(silu(x[m, k]) · x[m, K + k]) from gate_up = gate | up, as elementwise.cu's swiglu
// Store modes: y = acc (+ bias) in bf16 or fp32, or (residual) y = bf16(y + bf16(acc + bias)), the add that the
// next add_rmsnorm would otherwise do (rounded twice, as matmul then add).
// Launched as a programmatic dependent: the first k-blocks of W are loaded before pdl_wait.
//
// Measured (bench/NOTES.md "decode2", H100): plain, this kernel beats gemv.cu at every M (decode8 600 -> 960 tok/s,
// decode4 441 -> 504, tg128 139.5 -> 140.2). The folded modes made the model SLOWER at every M (tg128 140.2 ->
// 125.4, decode8 960 -> 869) although they remove 96 launches a step, so the model does not use them by default
// (BAMBA_CUDA_FUSE_ROWS). Not measured yet, the likely cause: every one of a GEMV's N / 16 blocks redoes the folded
// op for all of x (down_proj: 256 blocks each evaluating silu on all 14,336 × M inputs, on the 4 lanes per row
// that hold x — 256× the work of the SwiGLU kernel, in the latency path of every k-block).
#include "backend/cuda/gemv_mma.cuh"
#include "backend/cuda/mma.cuh"

namespace bamba::cuda {
namespace {

constexpr int kWarps = 8, kRows = 16, kKB = 64;  // warps per block, output rows per block, k per k-block

struct Args {
  void* y; int64_t ldy; int y_f32, residual;
  const bf16* x; int64_t ldx;
  const bf16* W; int64_t ldw;
  PView bias, norm_w;
  float eps;
  int M, N, K, prefetch;
};

__device__ __forceinline__ uint4 ld_w(const bf16* row, int k, bool ok) {
  return ok ? __ldcs(reinterpret_cast<const uint4*>(row + k)) : make_uint4(0, 0, 0, 0);
}
__device__ __forceinline__ uint32_t pack2(float lo, float hi) { return pack_bf16(lo, hi); }
__device__ __forceinline__ float lo_f(uint32_t w) { return __uint_as_float(w << 16); }
__device__ __forceinline__ float hi_f(uint32_t w) { return __uint_as_float(w & 0xffff0000u); }

template <GemvX MODE>
__device__ __forceinline__ uint4 load_x(const Args& a, int m, int k, float& ss) {
  const bf16* xr = a.x + int64_t(m) * a.ldx;
  if constexpr (MODE == GemvX::Plain) {
    return *reinterpret_cast<const uint4*>(xr + k);
  } else if constexpr (MODE == GemvX::RmsNorm) {
    const uint4 v = *reinterpret_cast<const uint4*>(xr + k);
    float w[8];
    if (a.norm_w.is_bf16) {
      const uint4 wv = *reinterpret_cast<const uint4*>(static_cast<const bf16*>(a.norm_w.p) + k);
      const uint32_t* ww = &wv.x;
#pragma unroll
      for (int i = 0; i < 4; ++i) w[2 * i] = lo_f(ww[i]), w[2 * i + 1] = hi_f(ww[i]);
    } else {
      const float4* wp = reinterpret_cast<const float4*>(static_cast<const float*>(a.norm_w.p) + k);
      const float4 w0 = wp[0], w1 = wp[1];
      w[0] = w0.x, w[1] = w0.y, w[2] = w0.z, w[3] = w0.w, w[4] = w1.x, w[5] = w1.y, w[6] = w1.z, w[7] = w1.w;
    }
    const uint32_t* vv = &v.x;
    uint4 o;
    uint32_t* oo = &o.x;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float x0 = lo_f(vv[i]), x1 = hi_f(vv[i]);
      ss = fmaf(x0, x0, fmaf(x1, x1, ss));
      oo[i] = pack2(w[2 * i] * x0, w[2 * i + 1] * x1);
    }
    return o;
  } else {  // SwiGlu: gate at k, up at K + k
    const uint4 g = *reinterpret_cast<const uint4*>(xr + k);
    const uint4 u = *reinterpret_cast<const uint4*>(xr + a.K + k);
    const uint32_t *gg = &g.x, *uu = &u.x;
    uint4 o;
    uint32_t* oo = &o.x;
#pragma unroll
    for (int i = 0; i < 4; ++i)
      oo[i] = pack2(silu_f(lo_f(gg[i])) * lo_f(uu[i]), silu_f(hi_f(gg[i])) * hi_f(uu[i]));
    return o;
  }
}

template <GemvX MODE>
__global__ void __launch_bounds__(kWarps * 32) gemv_mma_kernel(const Args a) {
  __shared__ float red[kWarps][kRows][8];
  __shared__ float part[kWarps][8];  // RmsNorm: Σ x² per (warp, row)
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3;
  const int n0 = blockIdx.x * kRows;
  const int nkb = (a.K + kKB - 1) / kKB;
  const bool ok0 = n0 + g < a.N, ok1 = n0 + g + 8 < a.N;
  const bf16* w0 = a.W + int64_t(ok0 ? n0 + g : 0) * a.ldw;
  const bf16* w1 = a.W + int64_t(ok1 ? n0 + g + 8 : 0) * a.ldw;
  uint4 wa[4], wb[4];  // k-block chunks: row g at 8q, row g at 32 + 8q, row g+8 at 8q, row g+8 at 32 + 8q
  auto load = [&](uint4 (&w)[4], int kb) {
    const int k = kb * kKB + 8 * q;
    const bool in = kb < nkb;
    w[0] = ld_w(w0, k, in && ok0 && k < a.K);
    w[1] = ld_w(w0, k + 32, in && ok0 && k + 32 < a.K);
    w[2] = ld_w(w1, k, in && ok1 && k < a.K);
    w[3] = ld_w(w1, k + 32, in && ok1 && k + 32 < a.K);
  };
  if (a.prefetch) load(wa, warp);  // weights only: they do not depend on the kernel before
  pdl_wait();
  pdl_trigger();
  if (!a.prefetch) load(wa, warp);

  const bool has_x = g < a.M;
  float ss = 0.f;  // RmsNorm: Σ x² of row g over this lane's k's (the block's lanes of row g cover K once)

  float c[4] = {0.f, 0.f, 0.f, 0.f};
  auto multiply = [&](const uint4 (&w)[4], int kb) {
    if (kb >= nkb) return;
    const int k = kb * kKB + 8 * q;
    uint4 x0 = make_uint4(0, 0, 0, 0), x1 = x0;
    if (has_x) {
      if (k < a.K) x0 = load_x<MODE>(a, g, k, ss);
      if (k + 32 < a.K) x1 = load_x<MODE>(a, g, k + 32, ss);
    }
    const uint32_t xs[8] = {x0.x, x0.y, x0.z, x0.w, x1.x, x1.y, x1.z, x1.w};
    const uint32_t r0[8] = {w[0].x, w[0].y, w[0].z, w[0].w, w[1].x, w[1].y, w[1].z, w[1].w};
    const uint32_t r1[8] = {w[2].x, w[2].y, w[2].z, w[2].w, w[3].x, w[3].y, w[3].z, w[3].w};
#pragma unroll
    for (int s = 0; s < 4; ++s) {
      const uint32_t af[4] = {r0[2 * s], r1[2 * s], r0[2 * s + 1], r1[2 * s + 1]};
      mma_bf16(c, af, xs[2 * s], xs[2 * s + 1]);
    }
  };
  for (int kb = warp; kb < nkb; kb += 2 * kWarps) {
    load(wb, kb + kWarps);
    multiply(wa, kb);
    load(wa, kb + 2 * kWarps);
    multiply(wb, kb + kWarps);
  }

  // c0, c1: (row g, tokens 2q, 2q + 1); c2, c3: (row g + 8, same tokens)
  red[warp][g][2 * q] = c[0];
  red[warp][g][2 * q + 1] = c[1];
  red[warp][g + 8][2 * q] = c[2];
  red[warp][g + 8][2 * q + 1] = c[3];
  if constexpr (MODE == GemvX::RmsNorm) {  // row g's Σ x² over the warp's 4 lanes q, then over the warps below
    ss += __shfl_xor_sync(0xffffffffu, ss, 1);
    ss += __shfl_xor_sync(0xffffffffu, ss, 2);
    if (q == 0) part[warp][g] = ss;
  }
  __syncthreads();
  if (threadIdx.x < kRows * 8) {
    const int row = threadIdx.x >> 3, m = threadIdx.x & 7, n = n0 + row;
    if (m < a.M && n < a.N) {
      float s = 0.f;
#pragma unroll
      for (int w = 0; w < kWarps; ++w) s += red[w][row][m];
      if constexpr (MODE == GemvX::RmsNorm) {
        float t = 0.f;
#pragma unroll
        for (int w = 0; w < kWarps; ++w) t += part[w][m];
        s *= rsqrtf(t / float(a.K) + a.eps);
      }
      if (a.bias.p) s += ld_param(a.bias, n);
      const int64_t i = int64_t(m) * a.ldy + n;
      if (a.y_f32) static_cast<float*>(a.y)[i] = s;
      else if (a.residual) {
        bf16* y = static_cast<bf16*>(a.y);
        y[i] = from_f<bf16>(to_f(y[i]) + to_f(from_f<bf16>(s)));
      } else static_cast<bf16*>(a.y)[i] = from_f<bf16>(s);
    }
  }
}

// BAMBA_CUDA_GEMV_PREFETCH=0 loads no weights before pdl_wait (as gemv.cu).
int prefetch_weights() {
  static const int on = [] {
    const char* e = std::getenv("BAMBA_CUDA_GEMV_PREFETCH");
    return !(e && e[0] == '0');
  }();
  return on;
}

}  // namespace

bool gemv_mma(cudaStream_t st, void* y, bool y_f32, bool residual, int64_t ldy, GemvX mode, const bf16* x,
              int64_t ldx, PView norm_w, float eps, const bf16* W, int64_t ldw, PView bias, int M, int N, int K) {
  auto aligned = [](const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; };
  if (M < 1 || M > kMaxGemvRows || N < 1 || K < 8 || K % 8 || ldx % 8 || ldw % 8 || !aligned(x) || !aligned(W))
    return false;
  if (residual && y_f32) return false;
  if (mode == GemvX::RmsNorm && (!norm_w.p || !aligned(norm_w.p))) return false;
  const Args a{y, ldy, int(y_f32), int(residual), x, ldx, W, ldw, bias, norm_w, eps, M, N, K, prefetch_weights()};
  const dim3 grid(ceil_div(N, kRows)), block(kWarps * 32);
  switch (mode) {
    case GemvX::Plain: launch_pdl(gemv_mma_kernel<GemvX::Plain>, grid, block, 0, st, a); break;
    case GemvX::RmsNorm: launch_pdl(gemv_mma_kernel<GemvX::RmsNorm>, grid, block, 0, st, a); break;
    case GemvX::SwiGlu: launch_pdl(gemv_mma_kernel<GemvX::SwiGlu>, grid, block, 0, st, a); break;
  }
  return true;
}

}  // namespace bamba::cuda
