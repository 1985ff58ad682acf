// RMSNorm kernels. One block per row (H = 4096 for Bamba-9B): statistics in fp32 over the row, then the
// normalised row written in T. The fused residual add writes the rounded sum back to h first, so the norm sees
// exactly the residual stream the next layer adds to (HF keeps it in model dtype).
//
// Two shapes of the same kernels: rows whose elements can be moved as 16-byte vectors (length, row strides and
// pointers multiples of 16 bytes: every Bamba shape) take 128-thread blocks where a thread keeps up to NV vectors
// in registers; others take the scalar kernels below. The vector form matters for prefill: with 2-byte loads and
// 1024-thread blocks an 8192 × 4096 add_rmsnorm took 370 µs (5× its bytes at HBM speed).
// Every kernel here is launched as a programmatic dependent (common.cuh): weights are loaded before pdl_wait,
// the rows after.
#include "backend/cuda/kernels.cuh"

namespace bamba::cuda {
namespace {

// Each thread keeps its up-to-kPer elements in registers between the statistics pass and the write pass, and
// issues all its loads before using any: with one row per block (decode: M = 1), a loop of dependent loads would
// make the kernel latency-bound (16 µs for H = 4096 when written as a strided loop; ~2 µs like this).
constexpr int kThreads = 1024, kPer = 16;

template <typename T, bool ADD>
__global__ void __launch_bounds__(kThreads) rmsnorm_kernel(T* out, int64_t ldo, T* h, int64_t ldh, const T* x,
                                                           int64_t ldx, PView w, int H, float eps) {
  __shared__ float sh[32];
  float wr[kPer];  // the weights: loaded before pdl_wait (they do not depend on the kernel before), off the
#pragma unroll     // critical path that would otherwise follow the reduction
  for (int i = 0; i < kPer; ++i) {
    const int j = threadIdx.x + i * kThreads;
    wr[i] = j < H ? ld_param(w, j) : 0.f;
  }
  pdl_wait();
  pdl_trigger();
  const int64_t row = blockIdx.x;
  T* hr = h + row * ldh;
  float v[kPer];
  float ss = 0.f;
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
    const int j = threadIdx.x + i * kThreads;
    v[i] = j < H ? to_f(hr[j]) : 0.f;
    if (ADD && j < H) v[i] += to_f(x[row * ldx + j]);
  }
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
    const int j = threadIdx.x + i * kThreads;
    if (ADD && j < H) {
      const T s = from_f<T>(v[i]);  // the residual stream is T: normalise what is stored
      hr[j] = s;
      v[i] = to_f(s);
    }
    ss += v[i] * v[i];
  }
  const float r = rsqrtf(block_sum(ss, sh) / float(H) + eps);
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
    const int j = threadIdx.x + i * kThreads;
    if (j < H) out[row * ldo + j] = from_f<T>(wr[i] * (v[i] * r));
  }
}

// out = rmsnorm_groups(y * silu(z)) * w: one block per (row, group), the gated values kept in registers.
template <typename T>
__global__ void __launch_bounds__(kThreads) gated_rmsnorm_kernel(T* out, int64_t ldo, const T* y, int64_t ldy,
                                                                 const T* z, int64_t ldz, PView w, int group,
                                                                 float eps) {
  __shared__ float sh[32];
  const int base = blockIdx.y * group;
  float wr[kPer];  // as in rmsnorm_kernel: weights before pdl_wait
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
    const int j = threadIdx.x + i * kThreads;
    wr[i] = j < group ? ld_param(w, base + j) : 0.f;
  }
  pdl_wait();
  pdl_trigger();
  const int64_t row = blockIdx.x;
  float g[kPer];
  float ss = 0.f;
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
    const int j = threadIdx.x + i * kThreads;
    g[i] = j < group ? to_f(y[row * ldy + base + j]) * silu_f(to_f(z[row * ldz + base + j])) : 0.f;
    ss += g[i] * g[i];
  }
  const float r = rsqrtf(block_sum(ss, sh) / float(group) + eps);
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
    const int j = threadIdx.x + i * kThreads;
    if (j < group) out[row * ldo + base + j] = from_f<T>(wr[i] * (g[i] * r));
  }
}

// 16 bytes of T as floats and back.
template <typename T>
struct Vec {
  static constexpr int E = 16 / sizeof(T);
  float f[E];
  __device__ __forceinline__ void load(const T* p) {
    const uint4 u = *reinterpret_cast<const uint4*>(p);
    const T* e = reinterpret_cast<const T*>(&u);
#pragma unroll
    for (int i = 0; i < E; ++i) f[i] = to_f(e[i]);
  }
  __device__ __forceinline__ void store(T* p) const {
    uint4 u;
    T* e = reinterpret_cast<T*>(&u);
#pragma unroll
    for (int i = 0; i < E; ++i) e[i] = from_f<T>(f[i]);
    *reinterpret_cast<uint4*>(p) = u;
  }
};
constexpr int kVecThreads = 128;

// wr[i][e] = w[base + j + e] for this thread's vectors j = (threadIdx.x + i * THREADS) * E below n.
template <typename T, int NV, int THREADS = kVecThreads>
__device__ __forceinline__ void load_weights(float (&wr)[NV][Vec<T>::E], PView w, int base, int n) {
#pragma unroll
  for (int i = 0; i < NV; ++i) {
    const int j = (threadIdx.x + i * THREADS) * Vec<T>::E;
#pragma unroll
    for (int e = 0; e < Vec<T>::E; ++e) wr[i][e] = j < n ? ld_param(w, base + j + e) : 0.f;
  }
}

template <typename T, int NV, bool ADD>
__global__ void __launch_bounds__(kVecThreads) rmsnorm_vec_kernel(T* out, int64_t ldo, T* h, int64_t ldh, const T* x,
                                                                  int64_t ldx, PView w, int H, float eps) {
  using V = Vec<T>;
  __shared__ float sh[32];
  // The weights before pdl_wait when they fit in a few registers (H <= 4096 for bf16): off the critical path.
  constexpr bool kPre = NV * V::E <= 32;
  float wr[kPre ? NV : 1][V::E];
  if constexpr (kPre) load_weights<T, NV>(wr, w, 0, H);
  pdl_wait();
  pdl_trigger();
  const int64_t row = blockIdx.x;
  T* hr = h + row * ldh;
  V v[NV];
  float ss = 0.f;
#pragma unroll
  for (int i = 0; i < NV; ++i) {
    const int j = (threadIdx.x + i * kVecThreads) * V::E;
    if (j >= H) break;
    v[i].load(hr + j);
    if (ADD) {
      V a;
      a.load(x + row * ldx + j);
#pragma unroll
      for (int e = 0; e < V::E; ++e) v[i].f[e] = to_f(from_f<T>(v[i].f[e] + a.f[e]));  // the stored (rounded) sum
      v[i].store(hr + j);
    }
#pragma unroll
    for (int e = 0; e < V::E; ++e) ss += v[i].f[e] * v[i].f[e];
  }
  const float r = rsqrtf(block_sum(ss, sh) / float(H) + eps);
#pragma unroll
  for (int i = 0; i < NV; ++i) {
    const int j = (threadIdx.x + i * kVecThreads) * V::E;
    if (j >= H) break;
#pragma unroll
    for (int e = 0; e < V::E; ++e) v[i].f[e] = (kPre ? wr[kPre ? i : 0][e] : ld_param(w, j + e)) * (v[i].f[e] * r);
    v[i].store(out + row * ldo + j);
  }
}

// THREADS: 128 (many rows: prefill), or 1024 for a decode step's few long groups (Bamba-9B: one row of 8,192 a
// sequence): with 128 threads the one block of batch 1 did 64 elements a thread (64 SiLUs, and the weights loaded
// after the reduction: too many to hold), 8 µs a layer inside the decode graph (bench/NOTES.md v38); with 1024 it
// is 8 elements a thread and the weights are loaded before pdl_wait.
template <typename T, int NV, int THREADS = kVecThreads>
__global__ void __launch_bounds__(THREADS) gated_rmsnorm_vec_kernel(T* out, int64_t ldo, const T* y, int64_t ldy,
                                                                    const T* z, int64_t ldz, PView w, int group,
                                                                    float eps) {
  using V = Vec<T>;
  __shared__ float sh[32];
  const int base = blockIdx.y * group;
  constexpr bool kPre = NV * V::E <= 32;  // as in rmsnorm_vec_kernel
  float wr[kPre ? NV : 1][V::E];
  if constexpr (kPre) load_weights<T, NV, THREADS>(wr, w, base, group);
  pdl_wait();
  pdl_trigger();
  const int64_t row = blockIdx.x;
  V g[NV];
  float ss = 0.f;
#pragma unroll
  for (int i = 0; i < NV; ++i) {
    const int j = (threadIdx.x + i * THREADS) * V::E;
    if (j >= group) break;
    V zv;
    g[i].load(y + row * ldy + base + j);
    zv.load(z + row * ldz + base + j);
#pragma unroll
    for (int e = 0; e < V::E; ++e) {
      g[i].f[e] *= silu_f(zv.f[e]);
      ss += g[i].f[e] * g[i].f[e];
    }
  }
  const float r = rsqrtf(block_sum(ss, sh) / float(group) + eps);
#pragma unroll
  for (int i = 0; i < NV; ++i) {
    const int j = (threadIdx.x + i * THREADS) * V::E;
    if (j >= group) break;
#pragma unroll
    for (int e = 0; e < V::E; ++e) g[i].f[e] = (kPre ? wr[kPre ? i : 0][e] : ld_param(w, base + j + e)) * (g[i].f[e] * r);
    g[i].store(out + row * ldo + base + j);
  }
}

// Vectors per thread for a row of n elements, 0 when the row cannot go through the vector kernels.
template <typename T>
int vectors_per_thread(int64_t n, std::initializer_list<const void*> ptrs, std::initializer_list<int64_t> lds) {
  constexpr int E = 16 / sizeof(T);
  if (n % E) return 0;
  for (const void* p : ptrs)
    if (p && (reinterpret_cast<uintptr_t>(p) & 15)) return 0;
  for (int64_t ld : lds)
    if (ld % E) return 0;
  const int64_t nv = (n / E + kVecThreads - 1) / kVecThreads;
  return nv <= 1 ? 1 : nv <= 2 ? 2 : nv <= 4 ? 4 : nv <= 8 ? 8 : nv <= 16 ? 16 : 0;
}

// Calls f.template operator()<NV>() for the compile-time NV equal to nv (1, 2, 4, 8 or 16).
template <typename F>
void dispatch_nv(int nv, F&& f) {
  switch (nv) {
    case 1: f.template operator()<1>(); break;
    case 2: f.template operator()<2>(); break;
    case 4: f.template operator()<4>(); break;
    case 8: f.template operator()<8>(); break;
    default: f.template operator()<16>(); break;
  }
}

}  // namespace

template <typename T>
void rmsnorm(cudaStream_t st, T* out, int64_t ldo, T* h, int64_t ldh, const T* x, int64_t ldx, PView w, int64_t M,
             int64_t H, float eps) {
  if (M == 0) return;
  if (const int nv = vectors_per_thread<T>(H, {out, h, x}, {ldo, ldh, x ? ldx : 0})) {
    dispatch_nv(nv, [&]<int NV>() {
      launch_pdl(x ? rmsnorm_vec_kernel<T, NV, true> : rmsnorm_vec_kernel<T, NV, false>, dim3(unsigned(M)),
                 dim3(kVecThreads), 0, st, out, ldo, h, ldh, x, ldx, w, int(H), eps);
    });
    return;
  }
  if (H > kThreads * kPer) fail("cuda rmsnorm: hidden size ", H, " > ", kThreads * kPer);
  launch_pdl(x ? rmsnorm_kernel<T, true> : rmsnorm_kernel<T, false>, dim3(unsigned(M)), dim3(kThreads), 0, st, out, ldo,
             h, ldh, x, ldx, w, int(H), eps);
}

template <typename T>
void gated_rmsnorm(cudaStream_t st, T* out, int64_t ldo, const T* y, int64_t ldy, const T* z, int64_t ldz, PView w,
                   int64_t M, int64_t I, int64_t group, float eps) {
  if (M == 0) return;
  dim3 grid(unsigned(M), unsigned(I / group));
  // A decode step's few long groups: 1024-thread blocks (see the kernel). BAMBA_CUDA_NORM_WIDE=0: always 128.
  static const bool wide_on = [] {
    const char* e = std::getenv("BAMBA_CUDA_NORM_WIDE");
    return !(e && e[0] == '0');
  }();
  constexpr int E = 16 / int(sizeof(T)), kWide = 1024;
  if (wide_on && M * (I / group) <= 64 && group / E > 2 * kVecThreads && group <= 2 * kWide * E &&
      vectors_per_thread<T>(group, {out, y, z}, {ldo, ldy, ldz})) {
    auto go = [&]<int NV>() {
      launch_pdl(gated_rmsnorm_vec_kernel<T, NV, kWide>, grid, dim3(kWide), 0, st, out, ldo, y, ldy, z, ldz, w,
                 int(group), eps);
    };
    if (group <= kWide * E) go.template operator()<1>();
    else go.template operator()<2>();
    return;
  }
  if (const int nv = vectors_per_thread<T>(group, {out, y, z}, {ldo, ldy, ldz})) {
    dispatch_nv(nv, [&]<int NV>() {
      launch_pdl(gated_rmsnorm_vec_kernel<T, NV>, grid, dim3(kVecThreads), 0, st, out, ldo, y, ldy, z, ldz, w,
                 int(group), eps);
    });
    return;
  }
  if (group > kThreads * kPer) fail("cuda gated_rmsnorm: group ", group, " > ", kThreads * kPer);
  launch_pdl(gated_rmsnorm_kernel<T>, grid, dim3(kThreads), 0, st, out, ldo, y, ldy, z, ldz, w, int(group), eps);
}

#define INST(T)                                                                                                \
  template void rmsnorm<T>(cudaStream_t, T*, int64_t, T*, int64_t, const T*, int64_t, PView, int64_t, int64_t, \
                           float);                                                                             \
  template void gated_rmsnorm<T>(cudaStream_t, T*, int64_t, const T*, int64_t, const T*, int64_t, PView, int64_t, \
                                 int64_t, int64_t, float);
BAMBA_CUDA_DTYPES(INST)
#undef INST

}  // namespace bamba::cuda
