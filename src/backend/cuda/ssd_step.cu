// The SSD recurrence for decode steps (one new token per sequence): S = exp(Δ A) S + Δ x Bᵀ, y = S C + D x
// (docs/bamba-model.md §3.2), read from and written back to the slot's state [nh, P, N] (ST: float or bf16).
//
// Pure state traffic: at batch 1 a Bamba-9B layer moves 4 MB of fp32 state in and out with almost no arithmetic,
// so the kernel is shaped for memory parallelism: a block of kWarps warps owns kRowsPerWarp × kWarps state rows
// p of one (sequence, head) (grid S × nh × P/8: 1,024 blocks at batch 1 instead of the 128 of ssd.cu's one block
// per head), lane l holds columns 4l..4l+3 of a row (d_state <= 128), loaded and stored as one 16-byte (fp32) or 8-byte
// (bf16) vector, so a warp moves whole rows (512 or 256 contiguous bytes), and y[p] is one warp reduction. Both
// rows of a warp are loaded before either is used. B, C, x and Δ come straight from global memory (L1/L2 hits:
// every block of a sequence reads the same B and C).
// Same arithmetic as ssd.cu's kSeq mode per element (dA·s + (Δ·x)·B, then Σ C·s in column order per lane and a
// warp reduction), so the two agree to fp32 rounding.
//
// What it waits on. Launched as a programmatic dependent, the kernel's blocks start while the kernel before it
// (the conv) still runs; only what that kernel writes (xBC's conv output) must wait for pdl_wait. The step's
// batch (past_len, slot: uploaded before the step began) is read before the wait, so the state's address is
// known at once; and with early_state the state itself too: one dependent round trip to memory (the slot, then
// the state, then the rest) becomes none. early_state is the caller's promise that the kernel launched just
// before does not write the state (the model's decode: the conv; the state's last writer, this layer's step
// before, is then at least two launches back, and a dependent grid starts only after the grid before its
// predecessor has completed: every kernel here calls pdl_wait before pdl_trigger). Two steps of one layer back to
// back (an op test) must not pass it: the second would read the state while the first writes it.
#include <cstdio>
#include <cstdlib>
#include <iterator>

#include "backend/cuda/kernels.cuh"

namespace bamba::cuda {
namespace {

// Block shapes (warps a block × state rows a warp): 4 × 2 (P / 8 blocks a head: 1,024 at batch 1 for Bamba) by
// default; BAMBA_CUDA_SSD_STEP=WxR picks 4x4, 8x4, 16x4 or 8x8 (fewer, fatter blocks), for timing them.
struct StepShape {
  int warps, rows;
};
constexpr StepShape kShapes[] = {{4, 2}, {4, 4}, {8, 4}, {16, 4}, {8, 8}};

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

// Requires N % 4 == 0 and N <= 128 (checked by the launcher); NJ = 1 column group of 128.
template <typename T, typename ST, int kWarps, int kRowsPerWarp, int NJ = 1>
__global__ void __launch_bounds__(kWarps * 32) ssd_step_kernel(SsdArgs a, DevBatch b, int early_state) {
  const int h = blockIdx.y;
  // Per-head parameters and the step's batch before pdl_wait (neither depends on the kernel before).
  const float A = -expf(ld_param(a.A_log, h)), Dh = ld_param(a.D, h), dtb = ld_param(a.dt_bias, h);
  const int s = blockIdx.x, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int P = a.P, N = a.N, I = a.nh * a.P, g = h / (a.nh / a.G);
  const int64_t t = s;  // decode: token s is sequence s's only new token
  const int slot = b.slot[s];
  const bool from_slot = b.past_len[s] > 0, keep = slot >= 0;  // slot -1: fresh, its state not kept
  ST* state = static_cast<ST*>(a.state) + (int64_t(max(slot, 0)) * a.nh + h) * P * N;  // [P, N]
  const int p0 = (blockIdx.z * kWarps + warp) * kRowsPerWarp;

  Vec4 st[kRowsPerWarp][NJ];
  auto load_state = [&] {
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r)
#pragma unroll
      for (int j = 0; j < NJ; ++j) {
        const int p = p0 + r, n = 4 * lane + 128 * j;
        if (from_slot && p < P && n < N) st[r][j] = load4(state + int64_t(p) * N + n);
        else st[r][j] = {{0.f, 0.f, 0.f, 0.f}};
      }
  };
  if (early_state) load_state();
  pdl_wait();
  pdl_trigger();
  if (!early_state) load_state();
  const T* xBC = static_cast<const T*>(a.xBC);
  const T* dt = static_cast<const T*>(a.dt);
  T* y = static_cast<T*>(a.y);

  const T* row = xBC + t * a.ldx;
  float xs[kRowsPerWarp];  // every row's x before any is used (not one load per row in the loop below)
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) xs[r] = p0 + r < P ? to_f(row[h * P + p0 + r]) : 0.f;
  const float delta = fminf(fmaxf(softplus_f(to_f(dt[t * a.lddt + h]) + dtb), a.dt_min), a.dt_max);
  const float dA = expf(delta * A);
  float Bv[NJ][4], Cv[NJ][4];
#pragma unroll
  for (int j = 0; j < NJ; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int n = 4 * lane + 128 * j + e;
      Bv[j][e] = n < N ? to_f(row[I + g * N + n]) : 0.f;
      Cv[j][e] = n < N ? to_f(row[I + a.G * N + g * N + n]) : 0.f;
    }

#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int p = p0 + r;
    if (p >= P) break;  // warp-uniform
    const float xp = xs[r], dx = delta * xp;
    float acc = 0.f;
#pragma unroll
    for (int j = 0; j < NJ; ++j) {
      const int n = 4 * lane + 128 * j;
      if (n < N) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          st[r][j].v[e] = dA * st[r][j].v[e] + dx * Bv[j][e];
          acc += Cv[j][e] * st[r][j].v[e];
        }
        if (keep) store4(state + int64_t(p) * N + n, st[r][j]);
      }
    }
    acc = warp_sum(acc);
    if (lane == 0) y[t * a.ldy + h * P + p] = from_f<T>(acc + Dh * xp);
  }
}

// Block per (sequence, head); thread per state element (p, n), strided. Sequences without kept states return at
// once. Same per-element arithmetic as ssd_step_kernel (dA·s + (Δ·x)·B in fp32).
template <typename T, typename ST>
__global__ void ssd_keep_states_kernel(SsdArgs a, DevBatch b) {
  const int s = blockIdx.x, h = blockIdx.y;
  const int t0 = b.seq_start[s], t1 = b.seq_start[s + 1];
  bool any = false;
  for (int t = t0; t < t1; ++t) any |= b.state_after[t] >= 0;
  if (!any) return;
  const T* xBC = static_cast<const T*>(a.xBC);
  const T* dt = static_cast<const T*>(a.dt);
  const int P = a.P, N = a.N, I = a.nh * a.P, g = h / (a.nh / a.G);
  const float A = -expf(ld_param(a.A_log, h)), dtb = ld_param(a.dt_bias, h);
  const bool from_slot = b.past_len[s] > 0;
  const ST* state = static_cast<const ST*>(a.state) + (int64_t(max(b.slot[s], 0)) * a.nh + h) * P * N;  // if from_slot
  int last = t0;  // tokens after the last kept state do not matter
  for (int t = t0; t < t1; ++t)
    if (b.state_after[t] >= 0) last = t;
  for (int e = threadIdx.x; e < P * N; e += blockDim.x) {
    const int p = e / N, n = e % N;
    float v = from_slot ? to_f(state[e]) : 0.f;
    for (int t = t0; t <= last; ++t) {
      const T* row = xBC + int64_t(t) * a.ldx;
      const float delta = fminf(fmaxf(softplus_f(to_f(dt[int64_t(t) * a.lddt + h]) + dtb), a.dt_min), a.dt_max);
      const float dA = expf(delta * A), dx = delta * to_f(row[h * P + p]);
      v = dA * v + dx * to_f(row[I + g * N + n]);
      if (const int keep = b.state_after[t]; keep >= 0)
        static_cast<ST*>(a.state)[(int64_t(keep) * a.nh + h) * P * N + e] = from_f<ST>(v);
    }
  }
}

}  // namespace

template <typename T, typename ST>
void ssd_keep_states(cudaStream_t st, const SsdArgs& a, const DevBatch& b) {
  if (!b.state_after || b.T == 0) return;
  ssd_keep_states_kernel<T, ST><<<dim3(unsigned(b.S), unsigned(a.nh)), 256, 0, st>>>(a, b);
  CUDA_LAUNCH_CHECK();
}

template <typename T, typename ST>
bool ssd_step(cudaStream_t st, const SsdArgs& a, const DevBatch& b, bool early_state) {
  if (b.T != b.S || b.T == 0 || b.state_after || a.N % 4 || a.N > 128 || a.nh % a.G) return false;
  const int shape = [] {  // read at every launch (a few per step when not replayed): tests switch it
    const char* e = std::getenv("BAMBA_CUDA_SSD_STEP");
    int w = 0, r = 0;
    if (e && std::sscanf(e, "%dx%d", &w, &r) == 2)
      for (int i = 0; i < int(std::size(kShapes)); ++i)
        if (kShapes[i].warps == w && kShapes[i].rows == r) return i;
    return 0;
  }();
  auto go = [&]<int W, int R>() {
    const dim3 grid(unsigned(b.S), unsigned(a.nh), ceil_div(a.P, W * R));
    launch_pdl(ssd_step_kernel<T, ST, W, R>, grid, dim3(W * 32), 0, st, a, b, int(early_state));
  };
  switch (shape) {
    case 1: go.template operator()<4, 4>(); break;
    case 2: go.template operator()<8, 4>(); break;
    case 3: go.template operator()<16, 4>(); break;
    case 4: go.template operator()<8, 8>(); break;
    default: go.template operator()<4, 2>(); break;
  }
  return true;
}

#define INST_ST(T, ST)                                                       \
  template bool ssd_step<T, ST>(cudaStream_t, const SsdArgs&, const DevBatch&, bool); \
  template void ssd_keep_states<T, ST>(cudaStream_t, const SsdArgs&, const DevBatch&);
#define INST(T) INST_ST(T, float) INST_ST(T, bf16)
BAMBA_CUDA_DTYPES(INST)
#undef INST
#undef INST_ST

}  // namespace bamba::cuda
