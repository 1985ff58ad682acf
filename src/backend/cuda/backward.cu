// Backward kernels of the small ops: embedding, SwiGLU, RMSNorm (plain, with the residual add, gated) and the
// causal conv1d + SiLU. Row-local work is one block per row with block reductions; parameter gradients are sums
// over rows, taken as per-chunk partials (a fixed span of rows each, in row order) and then a second pass that
// adds the partials in chunk order — so the bits never depend on scheduling (no float atomics).
#include "backend/cuda/kernels.cuh"

namespace bamba::cuda {
namespace {

constexpr int kRowsPerChunk = 64;  // rows per partial sum of a column reduction
constexpr int kRowThreads = 256;   // one block per row

__device__ __forceinline__ float sigmoid_f(float x) { return 1.f / (1.f + expf(-x)); }
__device__ __forceinline__ float silu_exact(float x) { return x / (1.f + expf(-x)); }
__device__ __forceinline__ float silu_grad_f(float x) {
  const float s = sigmoid_f(x);
  return s * (1.f + x * (1.f - s));
}

// ---- column sums: out[n] += Σ_m f(m, n), f a functor of (row, column). part [chunks, N].
template <typename F>
__global__ void column_partials_kernel(F f, int64_t M, int64_t N, float* part) {
  const int64_t n = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (n >= N) return;
  const int64_t m0 = int64_t(blockIdx.y) * kRowsPerChunk, m1 = min(M, m0 + kRowsPerChunk);
  float acc = 0.f;
  for (int64_t m = m0; m < m1; ++m) acc += f(m, n);
  part[int64_t(blockIdx.y) * N + n] = acc;
}
__global__ void column_finish_kernel(const float* part, int64_t chunks, int64_t N, float* out) {
  const int64_t n = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (n >= N) return;
  float acc = 0.f;
  for (int64_t c = 0; c < chunks; ++c) acc += part[c * N + n];
  out[n] += acc;
}
int64_t chunks_for(int64_t M) { return (M + kRowsPerChunk - 1) / kRowsPerChunk; }
template <typename F>
void column_reduce(cudaStream_t st, F f, int64_t M, int64_t N, float* out, float* part) {
  if (M == 0 || N == 0) return;
  const int64_t chunks = chunks_for(M);
  column_partials_kernel<<<dim3(ceil_div(N, 256), unsigned(chunks)), 256, 0, st>>>(f, M, N, part);
  CUDA_LAUNCH_CHECK();
  column_finish_kernel<<<ceil_div(N, 256), 256, 0, st>>>(part, chunks, N, out);
  CUDA_LAUNCH_CHECK();
}

template <typename T>
struct ReadCol {  // f(m, n) = a[m][n]
  const T* a;
  int64_t ld;
  __device__ float operator()(int64_t m, int64_t n) const { return to_f(a[m * ld + n]); }
};

// ---- embedding: one block per (distinct token, column slab); the token's rows are summed in row order.
template <typename T>
__global__ void embed_backward_kernel(float* dtable, int64_t ldt, const T* dout, int64_t ldo, int H,
                                      const int32_t* uniq, const int32_t* start, const int32_t* rows) {
  const int i = blockIdx.x, j = blockIdx.y * blockDim.x + threadIdx.x;
  if (j >= H) return;
  float acc = 0.f;
  for (int k = start[i]; k < start[i + 1]; ++k) acc += to_f(dout[int64_t(rows[k]) * ldo + j]);
  dtable[int64_t(uniq[i]) * ldt + j] += acc;
}

template <typename T>
__global__ void swiglu_backward_kernel(T* dgu, int64_t lddg, const T* dout, int64_t ldo, const T* gu, int64_t ldg,
                                       int F) {
  const int64_t r = blockIdx.y;
  for (int j = blockIdx.x * blockDim.x + threadIdx.x; j < F; j += gridDim.x * blockDim.x) {
    const float g = to_f(gu[r * ldg + j]), u = to_f(gu[r * ldg + F + j]), d = to_f(dout[r * ldo + j]);
    dgu[r * lddg + j] = from_f<T>(d * u * silu_grad_f(g));
    dgu[r * lddg + F + j] = from_f<T>(d * silu_exact(g));
  }
}

template <typename T>
__global__ void geglu_backward_kernel(T* dgu, int64_t lddg, const T* dout, int64_t ldo, const T* gu, int64_t ldg,
                                      int F) {
  const int64_t r = blockIdx.y;
  for (int j = blockIdx.x * blockDim.x + threadIdx.x; j < F; j += gridDim.x * blockDim.x) {
    const float g = to_f(gu[r * ldg + j]), u = to_f(gu[r * ldg + F + j]), d = to_f(dout[r * ldo + j]);
    const float cdf = 0.5f * (1.f + erff(g * 0.70710678118654752f));
    const float pdf = 0.39894228040143268f * expf(-0.5f * g * g);  // φ(g)
    dgu[r * lddg + j] = from_f<T>(d * u * (cdf + g * pdf));
    dgu[r * lddg + F + j] = from_f<T>(d * g * cdf);
  }
}

template <typename T>
__global__ void relu2_backward_kernel(T* dx, int64_t lddx, const T* dout, int64_t ldo, const T* x, int64_t ldx, int N) {
  const int64_t r = blockIdx.y;
  for (int j = blockIdx.x * blockDim.x + threadIdx.x; j < N; j += gridDim.x * blockDim.x) {
    const float v = to_f(x[r * ldx + j]);
    dx[r * lddx + j] = from_f<T>(v > 0.f ? to_f(dout[r * ldo + j]) * 2.f * v : 0.f);
  }
}

template <typename T>
__global__ void silu_gate_backward_kernel(T* dy, int64_t lddy, T* dz, int64_t lddz, const T* dout, int64_t ldo,
                                         const T* y, int64_t ldy, const T* z, int64_t ldz, int N) {
  const int64_t r = blockIdx.y;
  for (int j = blockIdx.x * blockDim.x + threadIdx.x; j < N; j += gridDim.x * blockDim.x) {
    const float zz = to_f(z[r * ldz + j]), yy = to_f(y[r * ldy + j]), d = to_f(dout[r * ldo + j]);
    dy[r * lddy + j] = from_f<T>(d * silu_exact(zz));
    dz[r * lddz + j] = from_f<T>(d * yy * silu_grad_f(zz));
  }
}

// ---- RMSNorm over groups of `group` columns (group = H: the plain norm). One block per row; for each group:
// r = 1/sqrt(mean(x²) + eps), dx_j = r·g_j − x_j·r³·mean(g·x) with g = dout ⊙ w; rstd [M, H / group] is kept for dw.
// GATED: x = y ⊙ silu(z) (recomputed), and the gradient goes on to dy, dz.
template <typename T, bool GATED>
__global__ void __launch_bounds__(kRowThreads) norm_backward_kernel(T* dx, int64_t lddx, T* dz, int64_t lddz,
                                                                    const T* dout, int64_t ldo, const T* x,
                                                                    int64_t ldx, const T* z, int64_t ldz, PView w,
                                                                    int H, int group, float eps, bool accumulate,
                                                                    float* rstd) {
  __shared__ float sh[32];
  const int64_t row = blockIdx.x;
  auto xv = [&](int j) {
    const float v = to_f(x[row * ldx + j]);
    return GATED ? v * silu_exact(to_f(z[row * ldz + j])) : v;
  };
  for (int a = 0; a < H; a += group) {
    float ss = 0.f, gx = 0.f;
    for (int j = a + threadIdx.x; j < a + group; j += blockDim.x) {
      const float v = xv(j);
      ss += v * v;
      gx += to_f(dout[row * ldo + j]) * ld_param(w, j) * v;
    }
    ss = block_sum(ss, sh);
    gx = block_sum(gx, sh);
    const float r = rsqrtf(ss / float(group) + eps), c = gx * r * r * r / float(group);
    if (threadIdx.x == 0) rstd[row * (H / group) + a / group] = r;
    for (int j = a + threadIdx.x; j < a + group; j += blockDim.x) {
      const float v = xv(j);
      const float g = r * to_f(dout[row * ldo + j]) * ld_param(w, j) - v * c;
      if (GATED) {
        const float zz = to_f(z[row * ldz + j]);
        dx[row * lddx + j] = from_f<T>(g * silu_exact(zz));
        dz[row * lddz + j] = from_f<T>(g * to_f(x[row * ldx + j]) * silu_grad_f(zz));
      } else {
        dx[row * lddx + j] = from_f<T>(accumulate ? to_f(dx[row * lddx + j]) + g : g);
      }
    }
  }
}
template <typename T, bool GATED>
struct NormDw {  // f(m, j) = dout[m][j] · x̂[m][j] (without w)
  const T* dout;
  int64_t ldo;
  const T* x;
  int64_t ldx;
  const T* z;
  int64_t ldz;
  const float* rstd;
  int64_t groups, group;
  __device__ float operator()(int64_t m, int64_t j) const {
    float v = to_f(x[m * ldx + j]);
    if (GATED) v *= silu_exact(to_f(z[m * ldz + j]));
    return to_f(dout[m * ldo + j]) * v * rstd[m * groups + j / group];
  }
};

// ---- conv1d + SiLU. G[t][c] = dout·silu'(pre) (fp32 scratch); dx[s][c] = Σ_k G[s + K−1−k][c]·w[c][k] over the
// outputs of the same sequence; dw[c][k] = Σ_t G[t][c]·x[t − (K−1) + k][c]; dbias[c] = Σ_t G[t][c].
template <typename T>
__global__ void conv_grad_kernel(float* G, const T* dout, int64_t ldo, const T* x, int64_t ldx, PView w, PView bias,
                                 int CD, int K, DevBatch b) {
  const int t = blockIdx.y, t0 = b.seq_start[b.seq_of[t]];
  for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < CD; c += gridDim.x * blockDim.x) {
    float acc = bias.p ? ld_param(bias, c) : 0.f;
    for (int k = 0; k < K; ++k) {
      const int src = t - (K - 1) + k;
      if (src >= t0) acc += ld_param(w, int64_t(c) * K + k) * to_f(x[int64_t(src) * ldx + c]);
    }
    G[int64_t(t) * CD + c] = to_f(dout[int64_t(t) * ldo + c]) * silu_grad_f(acc);
  }
}
template <typename T>
__global__ void conv_dx_kernel(T* dx, int64_t lddx, const float* G, PView w, int CD, int K, DevBatch b) {
  const int s = blockIdx.y, t1 = b.seq_start[b.seq_of[s] + 1];
  for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < CD; c += gridDim.x * blockDim.x) {
    float acc = 0.f;
    for (int k = K - 1; k >= 0; --k) {  // outputs t = s + K−1−k, ascending
      const int t = s + (K - 1) - k;
      if (t < t1) acc += G[int64_t(t) * CD + c] * ld_param(w, int64_t(c) * K + k);
    }
    dx[int64_t(s) * lddx + c] = from_f<T>(acc);
  }
}
template <typename T>
struct ConvDw {  // f(t, c·K + k) = G[t][c] · x[t − (K−1) + k][c] within the sequence
  const float* G;
  const T* x;
  int64_t ldx;
  int CD, K;
  DevBatch b;
  __device__ float operator()(int64_t t, int64_t n) const {
    const int c = int(n / K), k = int(n % K), src = int(t) - (K - 1) + k;
    if (src < b.seq_start[b.seq_of[t]]) return 0.f;
    return G[t * CD + c] * to_f(x[int64_t(src) * ldx + c]);
  }
};

}  // namespace

size_t column_sum_scratch_floats(int64_t M, int64_t N) { return size_t(chunks_for(M) * N); }

template <typename T>
void column_sum(cudaStream_t st, float* out, const T* dy, int64_t ld, int64_t M, int64_t N, float* scratch) {
  column_reduce(st, ReadCol<T>{dy, ld}, M, N, out, scratch);
}

template <typename T>
void embed_backward(cudaStream_t st, float* dtable, int64_t ldt, const T* dout, int64_t ldo, int64_t H,
                    const int32_t* uniq, const int32_t* start, const int32_t* rows, int n_uniq) {
  if (n_uniq == 0) return;
  embed_backward_kernel<T><<<dim3(unsigned(n_uniq), ceil_div(H, 256)), 256, 0, st>>>(dtable, ldt, dout, ldo, int(H),
                                                                                     uniq, start, rows);
  CUDA_LAUNCH_CHECK();
}

template <typename T>
void relu2_backward(cudaStream_t st, T* dx, int64_t lddx, const T* dout, int64_t ldo, const T* x, int64_t ldx,
                    int64_t M, int64_t N) {
  if (M == 0) return;
  relu2_backward_kernel<T><<<dim3(std::min(ceil_div(N, 256), 64u), unsigned(M)), 256, 0, st>>>(dx, lddx, dout, ldo, x,
                                                                                             ldx, int(N));
  CUDA_LAUNCH_CHECK();
}

template <typename T>
void silu_gate_backward(cudaStream_t st, T* dy, int64_t lddy, T* dz, int64_t lddz, const T* dout, int64_t ldo,
                        const T* y, int64_t ldy, const T* z, int64_t ldz, int64_t M, int64_t N) {
  if (M == 0) return;
  silu_gate_backward_kernel<T><<<dim3(std::min(ceil_div(N, 256), 64u), unsigned(M)), 256, 0, st>>>(
      dy, lddy, dz, lddz, dout, ldo, y, ldy, z, ldz, int(N));
  CUDA_LAUNCH_CHECK();
}

template <typename T>
void swiglu_backward(cudaStream_t st, T* dgu, int64_t lddg, const T* dout, int64_t ldo, const T* gu, int64_t ldg,
                     int64_t M, int64_t F) {
  if (M == 0) return;
  swiglu_backward_kernel<T><<<dim3(std::min(ceil_div(F, 256), 64u), unsigned(M)), 256, 0, st>>>(dgu, lddg, dout, ldo,
                                                                                              gu, ldg, int(F));
  CUDA_LAUNCH_CHECK();
}

template <typename T>
void geglu_backward(cudaStream_t st, T* dgu, int64_t lddg, const T* dout, int64_t ldo, const T* gu, int64_t ldg,
                    int64_t M, int64_t F) {
  if (M == 0) return;
  geglu_backward_kernel<T><<<dim3(std::min(ceil_div(F, 256), 64u), unsigned(M)), 256, 0, st>>>(dgu, lddg, dout, ldo,
                                                                                             gu, ldg, int(F));
  CUDA_LAUNCH_CHECK();
}

size_t rmsnorm_backward_scratch_floats(int64_t M, int64_t H) { return size_t(M) + column_sum_scratch_floats(M, H); }

template <typename T>
void rmsnorm_backward(cudaStream_t st, T* dx, int64_t lddx, float* dw, const T* dout, int64_t ldo, const T* x,
                      int64_t ldx, PView w, int64_t M, int64_t H, float eps, bool accumulate, float* scratch) {
  if (M == 0) return;
  float* rstd = scratch;
  norm_backward_kernel<T, false><<<unsigned(M), kRowThreads, 0, st>>>(dx, lddx, nullptr, 0, dout, ldo, x, ldx, nullptr,
                                                                      0, w, int(H), int(H), eps, accumulate, rstd);
  CUDA_LAUNCH_CHECK();
  if (dw) column_reduce(st, NormDw<T, false>{dout, ldo, x, ldx, nullptr, 0, rstd, 1, H}, M, H, dw, scratch + M);
}

size_t gated_rmsnorm_backward_scratch_floats(int64_t M, int64_t I, int64_t group) {
  return size_t(M * (I / group)) + column_sum_scratch_floats(M, I);
}

template <typename T>
void gated_rmsnorm_backward(cudaStream_t st, T* dy, int64_t lddy, T* dz, int64_t lddz, float* dw, const T* dout,
                            int64_t ldo, const T* y, int64_t ldy, const T* z, int64_t ldz, PView w, int64_t M,
                            int64_t I, int64_t group, float eps, float* scratch) {
  if (M == 0) return;
  if (I % group) fail("cuda gated_rmsnorm_backward: ", I, " channels are not a whole number of groups of ", group);
  float* rstd = scratch;
  norm_backward_kernel<T, true><<<unsigned(M), kRowThreads, 0, st>>>(dy, lddy, dz, lddz, dout, ldo, y, ldy, z, ldz, w,
                                                                     int(I), int(group), eps, false, rstd);
  CUDA_LAUNCH_CHECK();
  if (dw)
    column_reduce(st, NormDw<T, true>{dout, ldo, y, ldy, z, ldz, rstd, I / group, group}, M, I, dw,
                  scratch + M * (I / group));
}

size_t conv1d_silu_backward_scratch_floats(int64_t T_, int64_t CD, int64_t K) {
  return size_t(T_ * CD) + std::max(column_sum_scratch_floats(T_, CD * K), column_sum_scratch_floats(T_, CD));
}

template <typename T>
void conv1d_silu_backward(cudaStream_t st, T* dx, int64_t lddx, float* dw, float* dbias, const T* dout, int64_t ldo,
                          const T* x, int64_t ldx, PView w, PView bias, int64_t CD, int64_t K, const DevBatch& b,
                          float* scratch) {
  if (b.T == 0) return;
  float* G = scratch;  // [T, CD]
  float* part = scratch + int64_t(b.T) * CD;
  const dim3 grid(std::min(ceil_div(CD, 256), 64u), unsigned(b.T));
  conv_grad_kernel<T><<<grid, 256, 0, st>>>(G, dout, ldo, x, ldx, w, bias, int(CD), int(K), b);
  CUDA_LAUNCH_CHECK();
  conv_dx_kernel<T><<<grid, 256, 0, st>>>(dx, lddx, G, w, int(CD), int(K), b);
  CUDA_LAUNCH_CHECK();
  if (dw) column_reduce(st, ConvDw<T>{G, x, ldx, int(CD), int(K), b}, b.T, CD * K, dw, part);
  if (dbias) column_reduce(st, ReadCol<float>{G, CD}, b.T, CD, dbias, part);
}

#define INST(T)                                                                                                      \
  template void column_sum<T>(cudaStream_t, float*, const T*, int64_t, int64_t, int64_t, float*);                    \
  template void embed_backward<T>(cudaStream_t, float*, int64_t, const T*, int64_t, int64_t, const int32_t*,         \
                                  const int32_t*, const int32_t*, int);                                              \
  template void swiglu_backward<T>(cudaStream_t, T*, int64_t, const T*, int64_t, const T*, int64_t, int64_t, int64_t); \
  template void geglu_backward<T>(cudaStream_t, T*, int64_t, const T*, int64_t, const T*, int64_t, int64_t, int64_t); \
  template void relu2_backward<T>(cudaStream_t, T*, int64_t, const T*, int64_t, const T*, int64_t, int64_t, int64_t);  \
  template void silu_gate_backward<T>(cudaStream_t, T*, int64_t, T*, int64_t, const T*, int64_t, const T*, int64_t,  \
                                      const T*, int64_t, int64_t, int64_t);                                          \
  template void rmsnorm_backward<T>(cudaStream_t, T*, int64_t, float*, const T*, int64_t, const T*, int64_t, PView,   \
                                    int64_t, int64_t, float, bool, float*);                                          \
  template void gated_rmsnorm_backward<T>(cudaStream_t, T*, int64_t, T*, int64_t, float*, const T*, int64_t, const T*, \
                                          int64_t, const T*, int64_t, PView, int64_t, int64_t, int64_t, float, float*); \
  template void conv1d_silu_backward<T>(cudaStream_t, T*, int64_t, float*, float*, const T*, int64_t, const T*,       \
                                        int64_t, PView, PView, int64_t, int64_t, const DevBatch&, float*);
BAMBA_CUDA_DTYPES(INST)
#undef INST

}  // namespace bamba::cuda
