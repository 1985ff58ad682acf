// The SSD recurrence's backward (grad_kernels.h ssd_backward, the CPU twin), reverse in time, one block per
// (head, sequence). The state S [P, N] of a head is recomputed rather than stored for every token: a forward pass
// keeps it at checkpoints Q tokens apart (Q ≈ √length, so memory is O(√T) states per head), and each stretch
// between checkpoints is recomputed into a buffer of Q + 1 states before it is walked backwards. Each thread owns
// state elements e = p·N + n (tid, tid + blockDim, ...): the recomputation needs no barrier at all.
//
// Per token t (reverse), with gy = dy[t, h], Δ, a = exp(Δ A):
//   dS += gy ⊗ C;  dC_h[n] = Σ_p gy[p] S_t[p, n];  dB_h[n] = Δ Σ_p dS[p, n] x[p];  sB[p] = Σ_n dS[p, n] B[n]
//   dx[p] = D gy[p] + Δ sB[p];  dΔ = Σ_p sB[p] x[p] + a A Σ dS ⊙ S_{t−1};  dA += Δ a A Σ dS ⊙ S_{t−1};  dS *= a
// dB and dC are per head here ([T, nh, N] fp32 scratch) and summed over the heads of each group afterwards in head
// order; dA_log, dD, ddt_bias are per (sequence, head) partials summed over sequences in order. No atomics.
//
// This is the plain form (CUDA cores, a few block barriers per token): correct and deterministic; the chunked
// matrix form on tensor cores (as ssd_chunked.cu does for the forward) is the fast one still to write.
#include <cmath>

#include "backend/cuda/kernels.cuh"

namespace bamba::cuda {
namespace {

constexpr int kThreads = 256;

int checkpoint_interval(int max_seq_len) {
  int q = int(std::ceil(std::sqrt(double(std::max(max_seq_len, 1)))));
  return std::max(q, 8);
}

struct Layout {  // scratch offsets, in floats
  int Q, n_ck;     // tokens between checkpoints; checkpoints per sequence (+1)
  int64_t PN;
  size_t ck, buf, dBh, dCh, step, part, total;
};
Layout layout(const SsdBwdArgs& a, const DevBatch& b, int max_seq_len) {
  Layout l{};
  l.Q = checkpoint_interval(max_seq_len);
  l.n_ck = (max_seq_len + l.Q - 1) / l.Q + 1;
  l.PN = int64_t(a.P) * a.N;
  const size_t blocks = size_t(b.S) * a.nh;
  l.ck = 0;
  l.buf = l.ck + blocks * l.n_ck * l.PN;
  l.dBh = l.buf + blocks * (l.Q + 1) * l.PN;
  l.dCh = l.dBh + size_t(b.T) * a.nh * a.N;
  l.step = l.dCh + size_t(b.T) * a.nh * a.N;
  l.part = l.step + size_t(b.T) * a.nh * 2;  // (Δ, a) per token and head
  l.total = l.part + blocks * 3;
  return l;
}

__device__ __forceinline__ float sigmoid_f(float x) { return 1.f / (1.f + expf(-x)); }

template <typename T>
__global__ void __launch_bounds__(kThreads) ssd_backward_kernel(SsdBwdArgs a, DevBatch b, float* scratch, Layout l) {
  extern __shared__ float sm[];
  const int h = blockIdx.x, s = blockIdx.y, tid = threadIdx.x;
  const int P = a.P, N = a.N, G = a.G, nh = a.nh, I = nh * P, g = h / (nh / G);
  const int64_t PN = l.PN;
  const int NP = N | 1;  // odd row stride of dS in shared memory: the per-p loops over n are conflict-free
  float* dS = sm;                  // [P, NP]
  float* xs = dS + int64_t(P) * NP;  // [P]
  float* gys = xs + P;             // [P]
  float* sBs = gys + P;            // [P]
  float* Bs = sBs + P;             // [N]
  float* Cs = Bs + N;              // [N]
  float* red = Cs + N;             // [32]
  const int t0 = b.seq_start[s], t1 = b.seq_start[s + 1], L = t1 - t0, Q = l.Q, nc = (L + Q - 1) / Q;
  const size_t blk = size_t(s) * nh + h;
  float* ck = scratch + l.ck + blk * l.n_ck * PN;  // [n_ck, P, N]
  float* buf = scratch + l.buf + blk * (Q + 1) * PN;  // [Q + 1, P, N]
  float* stepv = scratch + l.step;                     // [T, nh, 2]
  const T* xBC = static_cast<const T*>(a.xBC);
  const T* dt = static_cast<const T*>(a.dt);
  const T* dy = static_cast<const T*>(a.dy);
  T* dxBC = static_cast<T*>(a.dxBC);
  T* ddt = static_cast<T*>(a.ddt);
  const float A = -expf(ld_param(a.A_log, h)), Dh = ld_param(a.D, h), dtb = ld_param(a.dt_bias, h);

  // Δ and a per token (as the forward computes them: softplus, then the clamp)
  for (int t = t0 + tid; t < t1; t += blockDim.x) {
    const float delta = fminf(fmaxf(softplus_f(to_f(dt[int64_t(t) * a.lddt + h]) + dtb), a.dt_min), a.dt_max);
    stepv[(int64_t(t) * nh + h) * 2] = delta;
    stepv[(int64_t(t) * nh + h) * 2 + 1] = expf(delta * A);
  }
  __syncthreads();
  auto x_at = [&](int t, int p) { return to_f(xBC[int64_t(t) * a.ldx + h * P + p]); };
  auto B_at = [&](int t, int n) { return to_f(xBC[int64_t(t) * a.ldx + I + g * N + n]); };
  auto C_at = [&](int t, int n) { return to_f(xBC[int64_t(t) * a.ldx + I + G * N + g * N + n]); };
  auto advance = [&](int t, int64_t e, float v) {
    const float delta = stepv[(int64_t(t) * nh + h) * 2], ad = stepv[(int64_t(t) * nh + h) * 2 + 1];
    return ad * v + delta * x_at(t, int(e / N)) * B_at(t, int(e % N));
  };

  // forward: the state entering each stretch of Q tokens
  const float* s0 = a.state0 ? a.state0 + blk * PN : nullptr;
  for (int64_t e = tid; e < PN; e += blockDim.x) {
    float v = s0 ? s0[e] : 0.f;
    for (int t = t0; t < t1; ++t) {
      if ((t - t0) % Q == 0) ck[int64_t((t - t0) / Q) * PN + e] = v;
      v = advance(t, e, v);
    }
  }
  for (int64_t e = tid; e < int64_t(P) * NP; e += blockDim.x) dS[e] = 0.f;
  float dA = 0.f, dDh = 0.f, ddb = 0.f;  // thread 0's
  __syncthreads();

  for (int c = nc - 1; c >= 0; --c) {
    const int tb = t0 + c * Q, te = min(t1, tb + Q);
    for (int64_t e = tid; e < PN; e += blockDim.x) {  // buf[i] = the state before token tb + i
      float v = ck[int64_t(c) * PN + e];
      buf[e] = v;
      for (int t = tb; t < te; ++t) buf[int64_t(t - tb + 1) * PN + e] = v = advance(t, e, v);
    }
    __syncthreads();
    for (int t = te - 1; t >= tb; --t) {
      const float* Sprev = buf + int64_t(t - tb) * PN;
      const float* Scur = Sprev + PN;
      const float delta = stepv[(int64_t(t) * nh + h) * 2], ad = stepv[(int64_t(t) * nh + h) * 2 + 1];
      for (int p = tid; p < P; p += blockDim.x) {
        xs[p] = x_at(t, p);
        gys[p] = to_f(dy[int64_t(t) * a.lddy + h * P + p]);
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
      for (int task = tid; task < N + P; task += blockDim.x) {
        if (task < N) {
          const int n = task;
          float dc = 0.f, db = 0.f;
          for (int p = 0; p < P; ++p) {
            dc += gys[p] * Scur[int64_t(p) * N + n];
            db += dS[p * NP + n] * xs[p];
          }
          scratch[l.dCh + (int64_t(t) * nh + h) * N + n] = dc;
          scratch[l.dBh + (int64_t(t) * nh + h) * N + n] = delta * db;
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
      for (int p = tid; p < P; p += blockDim.x)
        dxBC[int64_t(t) * a.lddx + h * P + p] = from_f<T>(Dh * gys[p] + delta * sBs[p]);
      if (tid == 0) {
        float ddelta = 0.f, dd = 0.f;
        for (int p = 0; p < P; ++p) {
          ddelta += sBs[p] * xs[p];
          dd += gys[p] * xs[p];
        }
        ddelta += da * ad * A;
        dA += da * ad * delta * A;
        dDh += dd;
        const float u = to_f(dt[int64_t(t) * a.lddt + h]) + dtb, sp = softplus_f(u);
        const float dudelta = (sp < a.dt_min || sp > a.dt_max) ? 0.f : (u > 20.f ? 1.f : sigmoid_f(u));
        const float du = ddelta * dudelta;
        ddt[int64_t(t) * a.ldddt + h] = from_f<T>(du);
        ddb += du;
      }
      for (int64_t e = tid; e < PN; e += blockDim.x) dS[int64_t(e / N) * NP + e % N] *= ad;
      __syncthreads();
    }
  }
  if (a.dstate0)
    for (int64_t e = tid; e < PN; e += blockDim.x) a.dstate0[blk * PN + e] = dS[int64_t(e / N) * NP + e % N];
  if (tid == 0) {
    float* part = scratch + l.part + blk * 3;
    part[0] = dA, part[1] = dDh, part[2] = ddb;
  }
}

// dB, dC of group g = Σ over its heads in order; thread per (t, g, n)
template <typename T>
__global__ void ssd_group_sum_kernel(SsdBwdArgs a, const float* dBh, const float* dCh, int T_) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  const int N = a.N, G = a.G, nh = a.nh, hpg = nh / G, I = nh * a.P;
  if (i >= int64_t(T_) * G * N) return;
  const int n = int(i % N), g = int(i / N % G);
  const int64_t t = i / (int64_t(N) * G);
  float sb = 0.f, sc = 0.f;
  for (int h = g * hpg; h < (g + 1) * hpg; ++h) {
    sb += dBh[(t * nh + h) * N + n];
    sc += dCh[(t * nh + h) * N + n];
  }
  T* row = static_cast<T*>(a.dxBC) + t * a.lddx;
  row[I + g * N + n] = from_f<T>(sb);
  row[I + G * N + g * N + n] = from_f<T>(sc);
}

__global__ void ssd_param_sum_kernel(SsdBwdArgs a, const float* part, int S) {
  const int h = blockIdx.x * blockDim.x + threadIdx.x;
  if (h >= a.nh) return;
  float dA = 0.f, dD = 0.f, ddb = 0.f;
  for (int s = 0; s < S; ++s) {
    const float* p = part + (size_t(s) * a.nh + h) * 3;
    dA += p[0], dD += p[1], ddb += p[2];
  }
  a.dA_log[h] += dA;
  a.dD[h] += dD;
  a.ddt_bias[h] += ddb;
}

size_t smem_bytes(const SsdBwdArgs& a) { return size_t(a.P * (a.N | 1) + 3 * a.P + 2 * a.N + 32) * 4; }

}  // namespace

size_t ssd_backward_scratch_floats(const SsdBwdArgs& a, const DevBatch& b, int max_seq_len) {
  return layout(a, b, max_seq_len).total;
}

template <typename T>
void ssd_backward(cudaStream_t st, const SsdBwdArgs& a, const DevBatch& b, int max_seq_len, float* scratch) {
  if (b.T == 0) return;
  if (a.G <= 0 || a.nh % a.G) fail("cuda ssd_backward: ", a.nh, " heads are not a multiple of ", a.G, " groups");
  const Layout l = layout(a, b, max_seq_len);
  const size_t smem = smem_bytes(a);
  if (smem > 48 * 1024) {
    if (smem > 227 * 1024) fail("cuda ssd_backward: head_dim ", a.P, " × d_state ", a.N, " does not fit shared memory");
    CUDA_CHECK(cudaFuncSetAttribute(ssd_backward_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  }
  ssd_backward_kernel<T><<<dim3(unsigned(a.nh), unsigned(b.S)), kThreads, smem, st>>>(a, b, scratch, l);
  CUDA_LAUNCH_CHECK();
  const int64_t n = int64_t(b.T) * a.G * a.N;
  ssd_group_sum_kernel<T><<<ceil_div(n, 256), 256, 0, st>>>(a, scratch + l.dBh, scratch + l.dCh, b.T);
  CUDA_LAUNCH_CHECK();
  ssd_param_sum_kernel<<<ceil_div(a.nh, 128), 128, 0, st>>>(a, scratch + l.part, b.S);
  CUDA_LAUNCH_CHECK();
}

#define INST(T)                                                                                   \
  template void ssd_backward<T>(cudaStream_t, const SsdBwdArgs&, const DevBatch&, int, float*);
BAMBA_CUDA_DTYPES(INST)
#undef INST

}  // namespace bamba::cuda
