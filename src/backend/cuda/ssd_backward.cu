// The SSD recurrence's backward (grad_kernels.h ssd_backward, the CPU twin), reverse in time, one block per
// (head, sequence, slice of head_dim): the rows p of a head's state S [P, N] evolve independently, so a block
// owns rows [p0, p0 + Ps) and only sums over p cross blocks (dB, dC, and the dΔ, dA terms). The state is
// recomputed rather than stored for every token: a forward pass keeps it at checkpoints Q tokens apart (Q ≈
// √length, so memory is O(√T) states per head), and each stretch between checkpoints is recomputed into a
// buffer of Q + 1 states before it is walked backwards. Each thread owns state elements e = p·N + n (tid,
// tid + blockDim, ...): the recomputation needs no barrier at all.
//
// Per token t (reverse), with gy = dy[t, h], Δ, a = exp(Δ A):
//   dS += gy ⊗ C;  dC_h[n] = Σ_p gy[p] S_t[p, n];  dB_h[n] = Δ Σ_p dS[p, n] x[p];  sB[p] = Σ_n dS[p, n] B[n]
//   dx[p] = D gy[p] + Δ sB[p];  dΔ = Σ_p sB[p] x[p] + a A Σ dS ⊙ S_{t−1};  dA += Δ a A Σ dS ⊙ S_{t−1};  dS *= a
// Per block, dB and dC are partial sums ([T, nh, splits, N] fp32 scratch), summed over the slices and the heads
// of each group afterwards in order; the dΔ, dA and dD terms likewise ([T, nh, splits, 3]), then dΔ goes through
// softplus and the clamp per (token, head), and dA_log, dD, ddt_bias are summed over tokens per head with a
// fixed-shape block reduction. No atomics.
//
// This is the plain form (CUDA cores, a few block barriers per token): correct and deterministic, and the one
// fp32 compute takes. For bf16 the chunked matrix form on tensor cores (ssd_backward_chunked.cu) replaces the
// delta and per-block kernels, and the finishing kernels here run on its outputs with one slice per head;
// BAMBA_SSD_BWD=plain keeps this form for comparison.
#include <cmath>
#include <type_traits>

#include "backend/cuda/kernels.cuh"
#include "backend/cuda/ssd_backward_chunked.cuh"

namespace bamba::cuda {
namespace {

constexpr int kThreads = 256;

int checkpoint_interval(int max_seq_len) {
  int q = int(std::ceil(std::sqrt(double(std::max(max_seq_len, 1)))));
  return std::max(q, 8);
}
// Slices of head_dim per (head, sequence): enough blocks to fill the GPU (~512), a function of the shape only, so
// the summation order (and the bits) never depend on the device.
int p_splits(const SsdBwdArgs& a, int S) { return std::max(1, std::min(a.P, 512 / std::max(1, a.nh * S))); }

struct Layout {  // scratch offsets, in floats
  int Q, n_ck, splits, Ps;  // tokens between checkpoints; checkpoints per sequence (+1); slices; rows per slice
  int64_t PN;               // state elements per block (Ps · N)
  size_t ck, buf, dBp, dCp, step, sc, du, total;
};
Layout layout(const SsdBwdArgs& a, const DevBatch& b, int max_seq_len) {
  Layout l{};
  l.Q = checkpoint_interval(max_seq_len);
  l.n_ck = (max_seq_len + l.Q - 1) / l.Q + 1;
  l.splits = p_splits(a, b.S);
  l.Ps = (a.P + l.splits - 1) / l.splits;
  l.PN = int64_t(l.Ps) * a.N;
  const size_t blocks = size_t(b.S) * a.nh * l.splits;
  l.ck = 0;
  l.buf = l.ck + blocks * l.n_ck * l.PN;
  l.dBp = l.buf + blocks * (l.Q + 1) * l.PN;
  l.dCp = l.dBp + size_t(b.T) * a.nh * l.splits * a.N;
  l.step = l.dCp + size_t(b.T) * a.nh * l.splits * a.N;
  l.sc = l.step + size_t(b.T) * a.nh * 2;          // (Δ, a) per token and head
  l.du = l.sc + size_t(b.T) * a.nh * l.splits * 3;  // (dΔ, dA, dD) terms per token, head, slice
  l.total = l.du + size_t(b.T) * a.nh;              // d(raw dt) per token and head
  return l;
}

__device__ __forceinline__ float sigmoid_f(float x) { return 1.f / (1.f + expf(-x)); }

// Δ and a = exp(Δ A) per (token, head), as the forward computes them: softplus, then the clamp
template <typename T>
__global__ void ssd_delta_kernel(SsdBwdArgs a, int T_, float* stepv) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= int64_t(T_) * a.nh) return;
  const int h = int(i % a.nh);
  const int64_t t = i / a.nh;
  const float A = -expf(ld_param(a.A_log, h)), dtb = ld_param(a.dt_bias, h);
  const float u = to_f(static_cast<const T*>(a.dt)[t * a.lddt + h]) + dtb;
  const float delta = fminf(fmaxf(softplus_f(u), a.dt_min), a.dt_max);
  stepv[i * 2] = delta;
  stepv[i * 2 + 1] = expf(delta * A);
}

template <typename T>
__global__ void __launch_bounds__(kThreads) ssd_backward_kernel(SsdBwdArgs a, DevBatch b, float* scratch, Layout l) {
  extern __shared__ float sm[];
  const int h = blockIdx.x, s = blockIdx.y, split = blockIdx.z, tid = threadIdx.x;
  const int N = a.N, G = a.G, nh = a.nh, I = nh * a.P, g = h / (nh / G), splits = l.splits;
  const int p0 = split * l.Ps, Ps = max(0, min(l.Ps, a.P - p0));  // this block's rows of the state
  const int64_t PN = int64_t(Ps) * N, stride = l.PN;
  const int NP = N | 1;  // odd row stride of dS in shared memory: the per-p loops over n are conflict-free
  float* dS = sm;                           // [Ps, NP]
  float* xs = dS + int64_t(l.Ps) * NP;      // [Ps]
  float* gys = xs + l.Ps;                   // [Ps]
  float* sBs = gys + l.Ps;                  // [Ps]
  float* Bs = sBs + l.Ps;                   // [N]
  float* Cs = Bs + N;                       // [N]
  float* red = Cs + N;                      // [32]
  const int t0 = b.seq_start[s], t1 = b.seq_start[s + 1], L = t1 - t0, Q = l.Q, nc = (L + Q - 1) / Q;
  const size_t blk = (size_t(s) * nh + h) * splits + split;
  float* ck = scratch + l.ck + blk * l.n_ck * stride;    // [n_ck, Ps, N]
  float* buf = scratch + l.buf + blk * (Q + 1) * stride;  // [Q + 1, Ps, N]
  const float* stepv = scratch + l.step;                   // [T, nh, 2]
  const T* xBC = static_cast<const T*>(a.xBC);
  const T* dy = static_cast<const T*>(a.dy);
  T* dxBC = static_cast<T*>(a.dxBC);
  const float A = -expf(ld_param(a.A_log, h)), Dh = ld_param(a.D, h);
  auto x_at = [&](int t, int p) { return to_f(xBC[int64_t(t) * a.ldx + h * a.P + p0 + p]); };
  auto B_at = [&](int t, int n) { return to_f(xBC[int64_t(t) * a.ldx + I + g * N + n]); };
  auto C_at = [&](int t, int n) { return to_f(xBC[int64_t(t) * a.ldx + I + G * N + g * N + n]); };
  auto advance = [&](int t, int64_t e, float v) {
    const float delta = stepv[(int64_t(t) * nh + h) * 2], ad = stepv[(int64_t(t) * nh + h) * 2 + 1];
    return ad * v + delta * x_at(t, int(e / N)) * B_at(t, int(e % N));
  };

  // forward: the state entering each stretch of Q tokens
  const float* s0 = a.state0 ? a.state0 + ((size_t(s) * nh + h) * a.P + p0) * N : nullptr;
  for (int64_t e = tid; e < PN; e += blockDim.x) {
    float v = s0 ? s0[e] : 0.f;
    for (int t = t0; t < t1; ++t) {
      if ((t - t0) % Q == 0) ck[int64_t((t - t0) / Q) * stride + e] = v;
      v = advance(t, e, v);
    }
  }
  for (int64_t e = tid; e < int64_t(Ps) * NP; e += blockDim.x) dS[e] = 0.f;
  __syncthreads();

  for (int c = nc - 1; c >= 0; --c) {
    const int tb = t0 + c * Q, te = min(t1, tb + Q);
    for (int64_t e = tid; e < PN; e += blockDim.x) {  // buf[i] = the state before token tb + i
      float v = ck[int64_t(c) * stride + e];
      buf[e] = v;
      for (int t = tb; t < te; ++t) buf[int64_t(t - tb + 1) * stride + e] = v = advance(t, e, v);
    }
    __syncthreads();
    for (int t = te - 1; t >= tb; --t) {
      const float* Sprev = buf + int64_t(t - tb) * stride;
      const float* Scur = Sprev + stride;
      const float delta = stepv[(int64_t(t) * nh + h) * 2], ad = stepv[(int64_t(t) * nh + h) * 2 + 1];
      for (int p = tid; p < Ps; p += blockDim.x) {
        xs[p] = x_at(t, p);
        gys[p] = to_f(dy[int64_t(t) * a.lddy + h * a.P + p0 + p]);
      }
      for (int n = tid; n < N; n += blockDim.x) {
        Bs[n] = B_at(t, n);
        Cs[n] = C_at(t, n);
      }
      __syncthreads();
      for (int64_t e = tid; e < PN; e += blockDim.x) {
        const int p = int(e / N), n = int(e % N);
        dS[p * NP + n] += gys[p] * Cs[n];
      }
      __syncthreads();
      // per-n and per-p sums (each task by one thread, in index order), and this thread's part of Σ dS ⊙ S_{t−1}
      const size_t part = ((size_t(t) * nh + h) * splits + split) * N;
      for (int task = tid; task < N + Ps; task += blockDim.x) {
        if (task < N) {
          const int n = task;
          float dc = 0.f, db = 0.f;
          for (int p = 0; p < Ps; ++p) {
            dc += gys[p] * Scur[int64_t(p) * N + n];
            db += dS[p * NP + n] * xs[p];
          }
          scratch[l.dCp + part + n] = dc;
          scratch[l.dBp + part + n] = delta * db;
        } else {
          const int p = task - N;
          float sb = 0.f;
          for (int n = 0; n < N; ++n) sb += dS[p * NP + n] * Bs[n];
          sBs[p] = sb;
        }
      }
      float da = 0.f;
      for (int64_t e = tid; e < PN; e += blockDim.x) da += dS[int64_t(e / N) * NP + e % N] * Sprev[e];
      da = block_sum(da, red);  // also the barrier after the sums above
      for (int p = tid; p < Ps; p += blockDim.x)
        dxBC[int64_t(t) * a.lddx + h * a.P + p0 + p] = from_f<T>(Dh * gys[p] + delta * sBs[p]);
      if (tid == 0) {
        float ddelta = 0.f, dd = 0.f;
        for (int p = 0; p < Ps; ++p) {
          ddelta += sBs[p] * xs[p];
          dd += gys[p] * xs[p];
        }
        float* sc = scratch + l.sc + ((size_t(t) * nh + h) * splits + split) * 3;
        sc[0] = ddelta + da * ad * A;
        sc[1] = da * ad * delta * A;
        sc[2] = dd;
      }
      for (int64_t e = tid; e < PN; e += blockDim.x) dS[int64_t(e / N) * NP + e % N] *= ad;
      __syncthreads();
    }
  }
  if (a.dstate0)
    for (int64_t e = tid; e < PN; e += blockDim.x)
      a.dstate0[((size_t(s) * nh + h) * a.P + p0) * N + e] = dS[int64_t(e / N) * NP + e % N];
}

// d(raw dt) per (token, head): the slices' dΔ terms summed in order, through softplus and the clamp
template <typename T>
__global__ void ssd_ddt_kernel(SsdBwdArgs a, int T_, int splits, const float* sc, float* du_out) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= int64_t(T_) * a.nh) return;
  const int h = int(i % a.nh);
  const int64_t t = i / a.nh;
  float ddelta = 0.f;
  for (int k = 0; k < splits; ++k) ddelta += sc[(i * splits + k) * 3];
  const float u = to_f(static_cast<const T*>(a.dt)[t * a.lddt + h]) + ld_param(a.dt_bias, h), sp = softplus_f(u);
  const float dudelta = (sp < a.dt_min || sp > a.dt_max) ? 0.f : (u > 20.f ? 1.f : sigmoid_f(u));
  const float du = ddelta * dudelta;
  static_cast<T*>(a.ddt)[t * a.ldddt + h] = from_f<T>(du);
  du_out[i] = du;
}

// dB, dC of group g = Σ over its heads, then slices, in order; thread per (t, g, n)
template <typename T>
__global__ void ssd_group_sum_kernel(SsdBwdArgs a, const float* dBp, const float* dCp, int T_, int splits) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  const int N = a.N, G = a.G, nh = a.nh, hpg = nh / G, I = nh * a.P;
  if (i >= int64_t(T_) * G * N) return;
  const int n = int(i % N), g = int(i / N % G);
  const int64_t t = i / (int64_t(N) * G);
  float sb = 0.f, sc = 0.f;
  if (splits == 1) {  // the chunked form's: eight heads' loads in flight at once, the sums in the same order
#pragma unroll 8
    for (int h = g * hpg; h < (g + 1) * hpg; ++h) {
      const size_t o = (size_t(t) * nh + h) * N + n;
      sb += dBp[o];
      sc += dCp[o];
    }
  } else {
    for (int h = g * hpg; h < (g + 1) * hpg; ++h)
      for (int k = 0; k < splits; ++k) {
        const size_t o = ((size_t(t) * nh + h) * splits + k) * N + n;
        sb += dBp[o];
        sc += dCp[o];
      }
  }
  T* row = static_cast<T*>(a.dxBC) + t * a.lddx;
  row[I + g * N + n] = from_f<T>(sb);
  row[I + G * N + g * N + n] = from_f<T>(sc);
}

// dA_log, dD, ddt_bias of head h (blockIdx.x) += Σ over tokens (and slices): a fixed-shape block reduction
__global__ void ssd_param_sum_kernel(SsdBwdArgs a, const float* sc, const float* du, int T_, int splits) {
  __shared__ float sh[32];
  const int h = blockIdx.x;
  float dA = 0.f, dD = 0.f, ddb = 0.f;
  for (int t = threadIdx.x; t < T_; t += blockDim.x) {
    for (int k = 0; k < splits; ++k) {
      const float* p = sc + ((size_t(t) * a.nh + h) * splits + k) * 3;
      dA += p[1];
      dD += p[2];
    }
    ddb += du[size_t(t) * a.nh + h];
  }
  dA = block_sum(dA, sh);
  dD = block_sum(dD, sh);
  ddb = block_sum(ddb, sh);
  if (threadIdx.x == 0) {
    a.dA_log[h] += dA;
    a.dD[h] += dD;
    a.ddt_bias[h] += ddb;
  }
}

size_t smem_bytes(const SsdBwdArgs& a, const Layout& l) { return size_t(l.Ps * (a.N | 1) + 3 * l.Ps + 2 * a.N + 32) * 4; }

// The chunked path's outputs for the finishing kernels (one slice per head), then its own scratch.
struct ChunkedLayout {
  size_t dBp, dCp, sc, du, own, total;
};
ChunkedLayout chunked_layout(const SsdBwdArgs& a, const DevBatch& b) {
  auto r32 = [](size_t x) { return (x + 31) / 32 * 32; };
  const size_t th = size_t(b.T) * size_t(a.nh);
  ChunkedLayout l{};
  size_t o = 0;
  l.dBp = o, o += r32(th * size_t(a.N));
  l.dCp = o, o += r32(th * size_t(a.N));
  l.sc = o, o += r32(th * 3);
  l.du = o, o += r32(th);
  l.own = o, o += ssd_backward_chunked_scratch_floats(a, b);
  l.total = o;
  return l;
}

}  // namespace

size_t ssd_backward_scratch_floats(const SsdBwdArgs& a, const DevBatch& b, int max_seq_len, bool bf16) {
  if (bf16 && ssd_backward_chunked_takes(a, b)) return chunked_layout(a, b).total;
  return layout(a, b, max_seq_len).total;
}

template <typename T>
void ssd_backward(cudaStream_t st, const SsdBwdArgs& a, const DevBatch& b, int max_seq_len, float* scratch) {
  if (b.T == 0) return;
  if (a.G <= 0 || a.nh % a.G) fail("cuda ssd_backward: ", a.nh, " heads are not a multiple of ", a.G, " groups");
  const int64_t th = int64_t(b.T) * a.nh;
  KernelClock clock(st, "ssd_backward");
  float *dBp, *dCp, *sc, *du;
  int splits = 1;
  const bool chunked = std::is_same_v<T, bf16> && ssd_backward_chunked_takes(a, b);
  if (chunked) {
    const ChunkedLayout l = chunked_layout(a, b);
    dBp = scratch + l.dBp, dCp = scratch + l.dCp, sc = scratch + l.sc, du = scratch + l.du;
    ssd_backward_chunked(st, a, b, dBp, dCp, sc, scratch + l.own);
  } else {
    const Layout l = layout(a, b, max_seq_len);
    dBp = scratch + l.dBp, dCp = scratch + l.dCp, sc = scratch + l.sc, du = scratch + l.du;
    splits = l.splits;
    const size_t smem = smem_bytes(a, l);
    if (smem > 48 * 1024) {
      if (smem > 227 * 1024) fail("cuda ssd_backward: head_dim ", a.P, " × d_state ", a.N, " does not fit shared memory");
      CUDA_CHECK(cudaFuncSetAttribute(ssd_backward_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
    }
    ssd_delta_kernel<T><<<ceil_div(th, 256), 256, 0, st>>>(a, b.T, scratch + l.step);
    CUDA_LAUNCH_CHECK();
    ssd_backward_kernel<T><<<dim3(unsigned(a.nh), unsigned(b.S), unsigned(l.splits)), kThreads, smem, st>>>(a, b, scratch, l);
    CUDA_LAUNCH_CHECK();
  }
  clock.mark(chunked ? "chunked" : "plain");
  ssd_ddt_kernel<T><<<ceil_div(th, 256), 256, 0, st>>>(a, b.T, splits, sc, du);
  CUDA_LAUNCH_CHECK();
  clock.mark("ddt");
  const int64_t n = int64_t(b.T) * a.G * a.N;
  ssd_group_sum_kernel<T><<<ceil_div(n, 256), 256, 0, st>>>(a, dBp, dCp, b.T, splits);
  CUDA_LAUNCH_CHECK();
  clock.mark("group_sum");
  ssd_param_sum_kernel<<<unsigned(a.nh), 256, 0, st>>>(a, sc, du, b.T, splits);
  CUDA_LAUNCH_CHECK();
  clock.mark("param_sum");
}

#define INST(T)                                                                                   \
  template void ssd_backward<T>(cudaStream_t, const SsdBwdArgs&, const DevBatch&, int, float*);
BAMBA_CUDA_DTYPES(INST)
#undef INST

}  // namespace bamba::cuda
