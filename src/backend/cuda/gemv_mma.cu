// Matmuls with 1-8 rows on bf16 tensor cores: y[m, n] = Σ_k x[m, k] W[n, k] (+ bias[n]), optionally with the
// step before the matmul folded into the x load (RMSNorm, SwiGLU) and the residual add into the store.
//
// Why tensor cores for a bandwidth-bound product: gemv.cu (warp per output row, CUDA cores) reads every x row
// from L1 against each 16-byte W chunk, so at M = 4 a lane loads 4x as many x bytes from L1 as W bytes from
// HBM, and decode4 ran at 55 % of its roofline (bench/NOTES.md). Here one mma.m16n8k16 takes 16 weight rows as
// the A operand and the ≤ 8 token rows as the 8 columns of B: a warp reads 2 bytes of x for every 4 bytes of W
// whatever M is, and W is still streamed exactly once.
//
// Layout. A block is 16 output rows × all of K; its 8 warps (16 for grids of ≤ 2 blocks an SM, see launch_gemv) split K
// into 64-element k-blocks (warp w takes k-blocks w, w + 8, ...: the block reads 1 KB of each row per round) and add
// their 16 × 8 partial products through shared memory at the end, in warp order. Lane (g = lane / 4, q = lane % 4)
// loads, per k-block at k0, the 16-byte chunks k0 + 8q and k0 + 32 + 8q of W rows g and g + 8 and of x row g (the 4
// lanes of a row cover two whole 64-byte spans). mma's reduction over its 16 k's does not care which physical k each of
// them is, as long as A and B agree, so step s (0..3) feeds words 2s, 2s + 1 of a lane's 8 x words as B (b0, b1:
// "k 2q.., col g") and the same words of its W rows as A (a0, a2 for row g; a1, a3 for row g + 8): no shuffles,
// no shared memory.
// A warp holds D k-blocks of W (4 loads of 16 bytes per lane each; D = 2 by default): D − 1 in flight while one
// is multiplied.
//
// FP8 weights (W8A16, gemv_mma_fp8): the same kernel over E4M3 bytes. A 16-byte chunk is then 16 weights, so a
// k-block is 128 deep (lane q: k0 + 16q and k0 + 64 + 16q, 2 × 16 bytes of x each) and takes 8 mma steps; the
// bytes in flight are the same. The chunks are widened to bf16 in registers (exact, e4m3x2_to_bf16x2), so the
// products are the warp-per-row fp8_gemv.cu's, summed in another order; the per-row scale multiplies the fp32 sum
// at the end, a block scale (B a multiple of 128, as the 128×128 "fp8" layout) each k-block's partial sums: a
// k-block and a block of 16 rows lie within one scale block.
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
#include <cstdlib>
#include <type_traits>

#include "backend/cuda/gemv_mma.cuh"
#include "backend/cuda/gemv_row.cuh"  // gemv_prefetch_weights
#include "backend/cuda/mma.cuh"

namespace bamba::cuda {
namespace {

constexpr int kWarps = 8, kRows = 16;  // warps per block, output rows per block

// The weight formats. E weights per 16-byte load; a k-block is 8·E weights of each row (its 4 lanes load two
// E-weight chunks each), 16 bytes × 8 per row whatever the format, so FP8 k-blocks are twice as deep (128) and
// the loads in flight per warp are the same bytes.
struct Bf16W {  // bf16 weights as they are
  static constexpr int E = 8;
};
struct E4m3W {  // FP8 E4M3 weights, widened to bf16 in registers; scales on the fp32 sums
  static constexpr int E = 16;
};

struct Args {
  void* y; int64_t ldy; int y_f32, residual, pairs;  // pairs: GemvY::SwiGlu
  const bf16* x; int64_t ldx;
  const void* W; int64_t ldw;  // ldw in weights
  const float* scale; int scale_block, scale_ld;  // E4M3: scale[n] (scale_block 0) or scale[n / B · scale_ld + k / B]
  PView bias, norm_w;
  float eps;
  int M, N, K, prefetch;
};

__device__ __forceinline__ uint4 ld_w(const uint8_t* row, int64_t byte, bool ok) {
  return ok ? __ldcs(reinterpret_cast<const uint4*>(row + byte)) : make_uint4(0, 0, 0, 0);
}
__device__ __forceinline__ uint32_t pack2(float lo, float hi) { return pack_bf16(lo, hi); }
__device__ __forceinline__ float lo_f(uint32_t w) { return __uint_as_float(w << 16); }
__device__ __forceinline__ float hi_f(uint32_t w) { return __uint_as_float(w & 0xffff0000u); }

// Two E4M3 weights (the low byte the lower k) as bf16x2, exactly. The cvt to f16x2 is exact (every E4M3 value,
// 2^-9..448, is a normal f16); moving each f16's exponent and mantissa down 3 bits into bf16's fields leaves
// the value times 2^-112 (bf16's exponent bias is 112 above f16's; still normal, ≥ 2^-121, and zero stays
// zero), which one bf16x2 multiply by 2^112 undoes, exactly. 5 instructions per 2 weights, no table. (E4M3's
// NaN, 0x7f / 0xff, which neither quantizer writes, comes out as a large finite value, not NaN.)
__device__ __forceinline__ uint32_t e4m3x2_to_bf16x2(uint32_t two) {
  const uint32_t h = cvt_f16x2_e4m3x2(static_cast<uint16_t>(two));
  const uint32_t t = ((h & 0x7fff7fffu) >> 3) | (h & 0x80008000u);
  return mul_bf16x2(t, 0x77807780u);  // bf16 2^112 = exponent field 239
}

// A lane's k-block chunks w (row g: w[0], w[1]; row g + 8: w[2], w[3]) as the E bf16x2 words of each row's mma A
// operands, ra (row g) and rb (row g + 8): mma step s takes words 2s, 2s + 1 of each. FP8 is widened for the whole
// k-block up front (98 registers, 2 blocks an SM). Widening one step at a time, in the loop, fits 80 registers and
// 3 blocks an SM but measured 2 % slower at 2-8 rows on an H100 (bench/NOTES.md v38): the conversions then sit
// between the loads' arrival and the mma, where the up-front form overlaps them.
__device__ __forceinline__ void widen(Bf16W, const uint4 (&w)[4], uint32_t (&ra)[8], uint32_t (&rb)[8]) {
  const uint4 c[4] = {w[0], w[1], w[2], w[3]};
  ra[0] = c[0].x, ra[1] = c[0].y, ra[2] = c[0].z, ra[3] = c[0].w, ra[4] = c[1].x, ra[5] = c[1].y, ra[6] = c[1].z,
  ra[7] = c[1].w;
  rb[0] = c[2].x, rb[1] = c[2].y, rb[2] = c[2].z, rb[3] = c[2].w, rb[4] = c[3].x, rb[5] = c[3].y, rb[6] = c[3].z,
  rb[7] = c[3].w;
}
__device__ __forceinline__ void widen(E4m3W, const uint4 (&w)[4], uint32_t (&ra)[16], uint32_t (&rb)[16]) {
  const uint32_t v[2][8] = {{w[0].x, w[0].y, w[0].z, w[0].w, w[1].x, w[1].y, w[1].z, w[1].w},
                            {w[2].x, w[2].y, w[2].z, w[2].w, w[3].x, w[3].y, w[3].z, w[3].w}};
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    ra[2 * i] = e4m3x2_to_bf16x2(v[0][i]), ra[2 * i + 1] = e4m3x2_to_bf16x2(v[0][i] >> 16);
    rb[2 * i] = e4m3x2_to_bf16x2(v[1][i]), rb[2 * i + 1] = e4m3x2_to_bf16x2(v[1][i] >> 16);
  }
}

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

template <GemvX MODE, class WF, int D, int NW>
__device__ __forceinline__ void gemv_mma_body(const Args& a) {
  constexpr int E = WF::E, kKB = 8 * E, kBytes = 16 / E;  // weights per chunk, per k-block; bytes per weight
  constexpr bool kFp8 = std::is_same_v<WF, E4m3W>;
  __shared__ float red[NW][kRows][8];
  __shared__ float part[NW][8];  // RmsNorm: Σ x² per (warp, row)
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3;
  const int n0 = blockIdx.x * kRows;
  const int nkb = (a.K + kKB - 1) / kKB;
  // The weight rows of the mma's rows g and g + 8: rows n0 + g, n0 + g + 8; with pairs (W = gate | up, F rows
  // each) gate row f = 8 · block + g and up row F + f, so the block's sums hold both halves of its 8 outputs.
  const int F = a.N / 2, f = 8 * blockIdx.x + g;
  const int ra = a.pairs ? f : n0 + g, rb = a.pairs ? F + f : n0 + g + 8;
  const bool ok0 = a.pairs ? f < F : ra < a.N, ok1 = a.pairs ? f < F : rb < a.N;
  const uint8_t* w0 = static_cast<const uint8_t*>(a.W) + int64_t(ok0 ? ra : 0) * a.ldw * kBytes;
  const uint8_t* w1 = static_cast<const uint8_t*>(a.W) + int64_t(ok1 ? rb : 0) * a.ldw * kBytes;
  // D k-blocks of chunks in a ring (each: row g at E·q, row g at 4E + E·q, row g+8 at E·q, row g+8 at 4E + E·q):
  // D - 1 of them in flight while one is multiplied.
  uint4 ring[D][4];
  auto load = [&](uint4 (&w)[4], int kb) {
    const int k = kb * kKB + E * q;
    const bool in = kb < nkb;
    w[0] = ld_w(w0, int64_t(k) * kBytes, in && ok0 && k < a.K);
    w[1] = ld_w(w0, int64_t(k + 4 * E) * kBytes, in && ok0 && k + 4 * E < a.K);
    w[2] = ld_w(w1, int64_t(k) * kBytes, in && ok1 && k < a.K);
    w[3] = ld_w(w1, int64_t(k + 4 * E) * kBytes, in && ok1 && k + 4 * E < a.K);
  };
  auto prologue = [&] {
#pragma unroll
    for (int d = 0; d < D - 1; ++d) load(ring[d], warp + d * NW);
  };
  if (a.prefetch) prologue();  // weights only: they do not depend on the kernel before
  pdl_wait();
  pdl_trigger();
  if (!a.prefetch) prologue();

  const bool has_x = g < a.M;
  float ss = 0.f;  // RmsNorm: Σ x² of row g over this lane's k's (the block's lanes of row g cover K once)

  float c[4] = {0.f, 0.f, 0.f, 0.f};
  auto multiply = [&](const uint4 (&w)[4], int kb) {
    if (kb >= nkb) return;
    const int k = kb * kKB + E * q;
    uint32_t xs[E];  // x row g at the lane's two chunks' k's (E / 2 words each), zero where out of range
#pragma unroll
    for (int h = 0; h < 2; ++h)
#pragma unroll
      for (int j = 0; j < E / 8; ++j) {
        uint4 v = make_uint4(0, 0, 0, 0);
        if (has_x && k + 4 * E * h < a.K) v = load_x<MODE>(a, g, k + 4 * E * h + 8 * j, ss);
        uint32_t* o = &xs[h * E / 2 + 4 * j];
        o[0] = v.x, o[1] = v.y, o[2] = v.z, o[3] = v.w;
      }
    uint32_t ra[E], rb[E];
    widen(WF{}, w, ra, rb);
    auto steps = [&](float (&acc)[4]) {
#pragma unroll
      for (int s = 0; s < E / 2; ++s) {
        const uint32_t af[4] = {ra[2 * s], rb[2 * s], ra[2 * s + 1], rb[2 * s + 1]};
        mma_bf16(acc, af, xs[2 * s], xs[2 * s + 1]);
      }
    };
    if constexpr (kFp8) {
      if (a.scale_block) {  // one scale for the whole k-block: B is a multiple of kKB (and of kRows), see gemv_mma_fp8
        float t[4] = {0.f, 0.f, 0.f, 0.f};
        steps(t);
        const float sb = a.scale[int64_t(n0 / a.scale_block) * a.scale_ld + kb * kKB / a.scale_block];
#pragma unroll
        for (int i = 0; i < 4; ++i) c[i] = fmaf(sb, t[i], c[i]);
        return;
      }
    }
    steps(c);
  };
  for (int kb = warp; kb < nkb; kb += D * NW) {
#pragma unroll
    for (int d = 0; d < D; ++d) {  // the k-block D - 1 ahead into the slot multiplied last, then this one
      load(ring[(d + D - 1) % D], kb + (d + D - 1) * NW);
      multiply(ring[d], kb + d * NW);
    }
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
  auto rms = [&](int m) {
    float t = 0.f;
#pragma unroll
    for (int w = 0; w < NW; ++w) t += part[w][m];
    return rsqrtf(t / float(a.K) + a.eps);
  };
  if (a.pairs) {  // y[m, f] = silu(gate) · up, each rounded to bf16 first as the unfused gate_up output is
    if (threadIdx.x < 8 * 8) {
      const int r = threadIdx.x >> 3, m = threadIdx.x & 7, n = 8 * blockIdx.x + r;
      if (m < a.M && n < F) {
        float sg = 0.f, su = 0.f;
#pragma unroll
        for (int w = 0; w < NW; ++w) sg += red[w][r][m], su += red[w][r + 8][m];
        if constexpr (MODE == GemvX::RmsNorm) {
          const float rs = rms(m);
          sg *= rs, su *= rs;
        }
        if constexpr (kFp8) sg *= a.scale[n], su *= a.scale[F + n];  // per output channel (no block scales here)
        if (a.bias.p) sg += ld_param(a.bias, n), su += ld_param(a.bias, F + n);
        static_cast<bf16*>(a.y)[int64_t(m) * a.ldy + n] =
            from_f<bf16>(silu_f(to_f(from_f<bf16>(sg))) * to_f(from_f<bf16>(su)));
      }
    }
    return;
  }
  if (threadIdx.x < kRows * 8) {
    const int row = threadIdx.x >> 3, m = threadIdx.x & 7, n = n0 + row;
    if (m < a.M && n < a.N) {
      float s = 0.f;
#pragma unroll
      for (int w = 0; w < NW; ++w) s += red[w][row][m];
      if constexpr (MODE == GemvX::RmsNorm) s *= rms(m);
      if constexpr (kFp8)
        if (!a.scale_block) s *= a.scale[n];  // per output channel
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

// Registers decide how many 256-thread blocks share an SM (≤ 80: 3, ≤ 64: 4). Plain takes 64 (4 blocks; it took
// 70 before the SwiGLU pairs and measured 1.5 % slower, bench/NOTES.md v38), SwiGLU-x 80, FP8 ~95 (2 blocks: see
// widen). The RmsNorm fold took 86 and is held to 3 blocks (12 bytes spilled): it measured 1.4 % faster so, still
// slower than the unfused ops (v38). A min-blocks bound on the others changes their code (plain: 70 → 90 registers
// with a bound of 1), so only the norm's kernel has one.
template <class WF, int D, int NW>
constexpr int kMinBlocks = std::is_same_v<WF, Bf16W> && D == 3 && NW == kWarps ? 3 : 0;
template <GemvX MODE, class WF, int D = 2, int NW = kWarps>
__global__ void __launch_bounds__(NW * 32, kMinBlocks<WF, D, NW>) gemv_mma_kernel(const Args a) {
  gemv_mma_body<MODE, WF, D, NW>(a);
}
__global__ void __launch_bounds__(kWarps * 32, 3) gemv_mma_norm_kernel(const Args a) {
  gemv_mma_body<GemvX::RmsNorm, Bf16W, 2, kWarps>(a);
}

}  // namespace

// ---- launchers (tests/emu/run.sh takes the kernels above this line)

namespace {

// The k-blocks a warp holds (BAMBA_CUDA_GEMV_DEPTH for bf16 weights, BAMBA_CUDA_FP8_GEMV_DEPTH for FP8; 2-4, read
// at each launch): D - 1 in flight while one is multiplied. Registers at depth 2 / 3 / 4: bf16 64 / 80 (held to 3
// blocks an SM, 4 bytes spilled) / 110, i.e. 4 / 3 / 2 blocks an SM; FP8 96 / 117 / 128 (8 bytes spilled), 2 blocks
// at every depth. Measured on an H100 (bench/NOTES.md v42): deeper is slower at every row count (bf16 −1.5 to −3 %,
// FP8 −5 to −7 %), so 2 stays the default.
int gemv_depth(const char* name, int fallback) {
  const char* e = std::getenv(name);
  const int d = e ? std::atoi(e) : fallback;
  return d >= 2 && d <= 4 ? d : fallback;
}

template <GemvX MODE, class WF, int NW>
void launch_gemv_w(int depth, dim3 grid, cudaStream_t st, const Args& a) {
  switch (depth) {
    case 3: launch_pdl(gemv_mma_kernel<MODE, WF, 3, NW>, grid, dim3(NW * 32), 0, st, a); break;
    case 4: launch_pdl(gemv_mma_kernel<MODE, WF, 4, NW>, grid, dim3(NW * 32), 0, st, a); break;
    default: launch_pdl(gemv_mma_kernel<MODE, WF, 2, NW>, grid, dim3(NW * 32), 0, st, a); break;
  }
}

// Grids of at most two blocks an SM (out_proj's and down_proj's 256 blocks of 16 rows, the attention projections')
// run 16 warps a block instead of 8: they fill only 2 of an SM's 4 block slots, so half the warps that could keep
// loads in flight were not there. At 64 registers two 16-warp blocks still fit an SM, so the grid stays one wave.
// Measured on an H100 (bench/NOTES.md v42): decode +1.0-1.4 % at 1-8 rows. Bf16 weights only: FP8's kernel (96
// registers) fits one 16-warp block an SM, its small grids would take two waves (measured −3 %). The 16 warps
// split K in another order, so the sums differ from 8 warps' in their rounding. BAMBA_CUDA_GEMV_WIDE=0: always 8.
// (16 for every bf16 grid, the larger ones then in twice the waves of half the blocks, measured the same: NOTES v44.)
template <GemvX MODE, class WF>
void launch_gemv(int depth, dim3 grid, cudaStream_t st, const Args& a) {
  if constexpr (std::is_same_v<WF, Bf16W>) {
    const char* e = std::getenv("BAMBA_CUDA_GEMV_WIDE");  // read at each launch (a captured graph keeps its choice)
    if (!(e && e[0] == '0') && int(grid.x) <= 2 * sm_count())
      return launch_gemv_w<MODE, WF, 2 * kWarps>(depth, grid, st, a);
  }
  launch_gemv_w<MODE, WF, kWarps>(depth, grid, st, a);
}

}  // namespace

bool gemv_mma(cudaStream_t st, void* y, bool y_f32, GemvY out, int64_t ldy, GemvX mode, const bf16* x, int64_t ldx,
              PView norm_w, float eps, const bf16* W, int64_t ldw, PView bias, int M, int N, int K) {
  if (M < 1 || M > kMaxGemvRows || N < 1 || K < 8 || K % 8 || ldx % 8 || ldw % 8 || !aligned16(x) || !aligned16(W))
    return false;
  if (out != GemvY::Set && y_f32) return false;
  if (out == GemvY::SwiGlu && N % 2) return false;
  if (mode == GemvX::RmsNorm && (!norm_w.p || !aligned16(norm_w.p))) return false;
  const Args a{y,    ldy,    int(y_f32), int(out == GemvY::Add), int(out == GemvY::SwiGlu), x, ldx, W, ldw, nullptr, 0, 0,
               bias, norm_w, eps,        M,                      N,                         K, gemv_prefetch_weights()};
  const dim3 grid(out == GemvY::SwiGlu ? ceil_div(N / 2, 8) : ceil_div(N, kRows)), block(kWarps * 32);
  switch (mode) {
    case GemvX::Plain: launch_gemv<GemvX::Plain, Bf16W>(gemv_depth("BAMBA_CUDA_GEMV_DEPTH", 2), grid, st, a); break;
    case GemvX::RmsNorm: launch_pdl(gemv_mma_norm_kernel, grid, block, 0, st, a); break;
    case GemvX::SwiGlu: launch_pdl(gemv_mma_kernel<GemvX::SwiGlu, Bf16W>, grid, block, 0, st, a); break;
  }
  return true;
}

bool gemv_mma_fp8(cudaStream_t st, void* y, bool y_f32, GemvY out, int64_t ldy, const bf16* x, int64_t ldx,
                  const uint8_t* W, int64_t ldw, const float* scale, int scale_block, PView bias, int M, int N, int K) {
  if (M < 1 || M > kMaxGemvRows || N < 1 || K < 16 || K % 16 || ldx % 8 || ldw % 16 || !aligned16(x) || !aligned16(W) ||
      !scale)
    return false;
  // Block scales: one per k-block of 128 weights and per block of 16 rows, applied to the k-block's sums. Blocks
  // finer than that (B = 16, 64: a scale per mma step or per part of a lane's chunk) are left to fp8_gemv.cu,
  // which applies them per 16-weight chunk; checkpoints' "fp8" block layout is 128 × 128.
  if (scale_block < 0 || scale_block % (8 * E4m3W::E) != 0) return false;
  // SwiGLU pairs take a block's gate and up rows from two places: one block scale per block does not cover them.
  if (out == GemvY::Add || (out == GemvY::SwiGlu && (y_f32 || scale_block || N % 2))) return false;
  const int scale_ld = scale_block ? (K + scale_block - 1) / scale_block : 0;
  const bool pairs = out == GemvY::SwiGlu;
  const Args a{y,    ldy,     int(y_f32), 0, int(pairs), x, ldx, W, ldw, scale, scale_block, scale_ld,
               bias, PView{}, 0.f,        M, N,          K, gemv_prefetch_weights()};
  launch_gemv<GemvX::Plain, E4m3W>(gemv_depth("BAMBA_CUDA_FP8_GEMV_DEPTH", 2),
                                   dim3(pairs ? ceil_div(N / 2, 8) : ceil_div(N, kRows)), st, a);
  return true;
}

}  // namespace bamba::cuda
