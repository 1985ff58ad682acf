// Memory-bound elementwise kernels: embedding rows, residual add, bias, SwiGLU, row gathers, fills and dtype
// conversion. Each is a grid-stride loop or one block per row; none is on a hot path except SwiGLU (one read of
// [T, 2F], one write of [T, F]), which moves bf16 pairs. SwiGLU, the row gather and the embedding are launched as
// programmatic dependents (common.cuh): they sit between the kernels of a decode step.
#include <cuda_fp16.h>

#include "backend/cuda/kernels.cuh"
#include "core/hash_uniform.h"

namespace bamba::cuda {
namespace {

template <typename T>
__global__ void embed_kernel(T* out, int64_t ldo, const T* table, int64_t ldt, int H, DevBatch b) {
  pdl_wait();  // (a decode step's first kernel: its trigger lets the first norm load its weights meanwhile)
  pdl_trigger();
  const int64_t t = blockIdx.x;
  const T* src = table + int64_t(b.tokens[t]) * ldt;
  for (int j = threadIdx.x; j < H; j += blockDim.x) out[t * ldo + j] = src[j];
}

template <typename T>
__global__ void gather_kernel(T* out, int64_t ldo, const T* x, int64_t ldx, int N, DevBatch b) {
  pdl_wait();
  pdl_trigger();
  const int64_t r = blockIdx.x;
  const T* src = x + int64_t(b.logit_rows[r]) * ldx;
  for (int j = threadIdx.x; j < N; j += blockDim.x) out[r * ldo + j] = src[j];
}

template <typename T>
__global__ void add_kernel(T* h, int64_t ldh, const T* x, int64_t ldx, int N) {
  const int64_t r = blockIdx.x;
  for (int j = threadIdx.x; j < N; j += blockDim.x) h[r * ldh + j] = from_f<T>(to_f(h[r * ldh + j]) + to_f(x[r * ldx + j]));
}

__global__ void add_bias_kernel(void* y, bool y_f32, int64_t ldy, PView bias, int N) {
  const int64_t r = blockIdx.x;
  for (int j = threadIdx.x; j < N; j += blockDim.x) {
    if (y_f32) static_cast<float*>(y)[r * ldy + j] += ld_param(bias, j);
    else {
      bf16* p = static_cast<bf16*>(y) + r * ldy + j;
      *p = from_f<bf16>(to_f(*p) + ld_param(bias, j));
    }
  }
}

// out = silu(gate) * up, thread per output element.
template <typename T>
__global__ void swiglu_kernel(T* out, int64_t ldo, const T* gu, int64_t ldg, int F) {
  pdl_wait();
  pdl_trigger();
  const int64_t r = blockIdx.y;
  const T* g = gu + r * ldg;
  const T* u = g + F;
  T* o = out + r * ldo;
  const int stride = gridDim.x * blockDim.x;
  for (int j = blockIdx.x * blockDim.x + threadIdx.x; j < F; j += stride) o[j] = from_f<T>(silu_f(to_f(g[j])) * to_f(u[j]));
}

// The same with 16-byte vectors (every Bamba shape): 2-byte accesses left a prefill SwiGLU at 3× its bytes' time.
template <typename T>
__global__ void swiglu_vec_kernel(T* out, int64_t ldo, const T* gu, int64_t ldg, int F) {
  constexpr int E = 16 / sizeof(T);
  pdl_wait();
  pdl_trigger();
  const int64_t r = blockIdx.y;
  const int j = (blockIdx.x * blockDim.x + threadIdx.x) * E;
  if (j >= F) return;
  const uint4 gv = *reinterpret_cast<const uint4*>(gu + r * ldg + j);
  const uint4 uv = *reinterpret_cast<const uint4*>(gu + r * ldg + F + j);
  const T* g = reinterpret_cast<const T*>(&gv);
  const T* u = reinterpret_cast<const T*>(&uv);
  uint4 ov;
  T* o = reinterpret_cast<T*>(&ov);
#pragma unroll
  for (int e = 0; e < E; ++e) o[e] = from_f<T>(silu_f(to_f(g[e])) * to_f(u[e]));
  *reinterpret_cast<uint4*>(out + r * ldo + j) = ov;
}

// One block row per grid.y row, threads over the columns: the small elementwise ops of the relatives.
template <typename T>
__global__ void scale_kernel(T* x, int64_t ldx, int N, float s) {
  const int64_t r = blockIdx.y;
  for (int j = blockIdx.x * blockDim.x + threadIdx.x; j < N; j += gridDim.x * blockDim.x)
    x[r * ldx + j] = from_f<T>(to_f(x[r * ldx + j]) * s);
}
template <typename T>
__global__ void copy_kernel(T* dst, int64_t ldd, const T* src, int64_t lds, int N) {
  const int64_t r = blockIdx.y;
  for (int j = blockIdx.x * blockDim.x + threadIdx.x; j < N; j += gridDim.x * blockDim.x) dst[r * ldd + j] = src[r * lds + j];
}
template <typename T>
__global__ void relu2_kernel(T* out, int64_t ldo, const T* x, int64_t ldx, int N) {
  const int64_t r = blockIdx.y;
  for (int j = blockIdx.x * blockDim.x + threadIdx.x; j < N; j += gridDim.x * blockDim.x) {
    const float v = fmaxf(to_f(x[r * ldx + j]), 0.f);
    out[r * ldo + j] = from_f<T>(v * v);
  }
}
// out = gelu(gate) * up with the exact erf GELU (torch's default).
template <typename T>
__global__ void geglu_kernel(T* out, int64_t ldo, const T* gu, int64_t ldg, int F) {
  const int64_t r = blockIdx.y;
  for (int j = blockIdx.x * blockDim.x + threadIdx.x; j < F; j += gridDim.x * blockDim.x) {
    const float g = to_f(gu[r * ldg + j]);
    out[r * ldo + j] = from_f<T>(0.5f * g * (1.f + erff(g * 0.70710678118654752f)) * to_f(gu[r * ldg + F + j]));
  }
}
template <typename T>
__global__ void silu_gate_kernel(T* out, int64_t ldo, const T* y, int64_t ldy, const T* z, int64_t ldz, int N) {
  const int64_t r = blockIdx.y;
  for (int j = blockIdx.x * blockDim.x + threadIdx.x; j < N; j += gridDim.x * blockDim.x)
    out[r * ldo + j] = from_f<T>(to_f(y[r * ldy + j]) * silu_f(to_f(z[r * ldz + j])));
}

__global__ void fill_uniform_kernel(void* p, int is_bf16, int64_t n, uint64_t seed, float lo, float hi) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    float v = hash_uniform(seed, uint64_t(i), lo, hi);
    if (is_bf16) static_cast<bf16*>(p)[i] = from_f<bf16>(v);
    else static_cast<float*>(p)[i] = v;
  }
}

__global__ void fill_kernel(void* p, int is_bf16, int64_t n, float v) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    if (is_bf16) static_cast<bf16*>(p)[i] = from_f<bf16>(v);
    else static_cast<float*>(p)[i] = v;
  }
}

// src_t: 0 F32, 1 BF16, 2 F16; dst: F32 or BF16.
__global__ void convert_kernel(void* dst, int dst_bf16, const void* src, int src_t, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    float v = src_t == 0 ? static_cast<const float*>(src)[i]
            : src_t == 1 ? __bfloat162float(static_cast<const bf16*>(src)[i])
                         : __half2float(static_cast<const __half*>(src)[i]);
    if (dst_bf16) static_cast<bf16*>(dst)[i] = from_f<bf16>(v);
    else static_cast<float*>(dst)[i] = v;
  }
}

unsigned grid_for(int64_t n) { return unsigned(std::min<int64_t>((n + 255) / 256, 132 * 16)); }
int is_bf16(DType t) {
  if (t != DType::BF16 && t != DType::F32) fail("cuda backend: fill/convert target must be F32 or BF16, not ", dtype_name(t));
  return t == DType::BF16;
}

}  // namespace

template <typename T>
void embed(cudaStream_t st, T* out, int64_t ldo, const T* table, int64_t ldt, int64_t H, const DevBatch& b) {
  if (b.T == 0) return;
  launch_pdl(embed_kernel<T>, dim3(unsigned(b.T)), dim3(256), 0, st, out, ldo, table, ldt, int(H), b);
}
template <typename T>
void gather_rows(cudaStream_t st, T* out, int64_t ldo, const T* x, int64_t ldx, int64_t N, const DevBatch& b) {
  if (b.R == 0) return;
  launch_pdl(gather_kernel<T>, dim3(unsigned(b.R)), dim3(256), 0, st, out, ldo, x, ldx, int(N), b);
}
template <typename T>
void add_inplace(cudaStream_t st, T* h, int64_t ldh, const T* x, int64_t ldx, int64_t M, int64_t N) {
  if (M == 0) return;
  add_kernel<<<unsigned(M), 256, 0, st>>>(h, ldh, x, ldx, int(N));
  CUDA_LAUNCH_CHECK();
}
void add_bias(cudaStream_t st, void* y, bool y_f32, int64_t ldy, PView bias, int64_t M, int64_t N) {
  if (M == 0) return;
  add_bias_kernel<<<unsigned(M), 256, 0, st>>>(y, y_f32, ldy, bias, int(N));
  CUDA_LAUNCH_CHECK();
}
template <typename T>
void swiglu(cudaStream_t st, T* out, int64_t ldo, const T* gu, int64_t ldg, int64_t M, int64_t F) {
  if (M == 0) return;
  constexpr int E = 16 / sizeof(T);
  if (F % E == 0 && ldo % E == 0 && ldg % E == 0 && aligned16(out) && aligned16(gu)) {
    launch_pdl(swiglu_vec_kernel<T>, dim3(ceil_div(F / E, 128), unsigned(M)), dim3(128), 0, st, out, ldo, gu, ldg, int(F));
    return;
  }
  dim3 grid(ceil_div(F, 256), unsigned(M));
  launch_pdl(swiglu_kernel<T>, grid, dim3(256), 0, st, out, ldo, gu, ldg, int(F));
}
dim3 rows_grid(int64_t M, int64_t N) { return dim3(std::min<unsigned>(ceil_div(N, 256), 64u), unsigned(M)); }
template <typename T>
void scale(cudaStream_t st, T* x, int64_t ldx, int64_t M, int64_t N, float s) {
  if (M == 0 || N == 0) return;
  scale_kernel<T><<<rows_grid(M, N), 256, 0, st>>>(x, ldx, int(N), s);
  CUDA_LAUNCH_CHECK();
}
template <typename T>
void copy2d(cudaStream_t st, T* dst, int64_t ldd, const T* src, int64_t lds, int64_t M, int64_t N) {
  if (M == 0 || N == 0) return;
  copy_kernel<T><<<rows_grid(M, N), 256, 0, st>>>(dst, ldd, src, lds, int(N));
  CUDA_LAUNCH_CHECK();
}
template <typename T>
void relu2(cudaStream_t st, T* out, int64_t ldo, const T* x, int64_t ldx, int64_t M, int64_t N) {
  if (M == 0 || N == 0) return;
  relu2_kernel<T><<<rows_grid(M, N), 256, 0, st>>>(out, ldo, x, ldx, int(N));
  CUDA_LAUNCH_CHECK();
}
template <typename T>
void geglu(cudaStream_t st, T* out, int64_t ldo, const T* gu, int64_t ldg, int64_t M, int64_t F) {
  if (M == 0 || F == 0) return;
  geglu_kernel<T><<<rows_grid(M, F), 256, 0, st>>>(out, ldo, gu, ldg, int(F));
  CUDA_LAUNCH_CHECK();
}
template <typename T>
void silu_gate(cudaStream_t st, T* out, int64_t ldo, const T* y, int64_t ldy, const T* z, int64_t ldz, int64_t M, int64_t N) {
  if (M == 0 || N == 0) return;
  silu_gate_kernel<T><<<rows_grid(M, N), 256, 0, st>>>(out, ldo, y, ldy, z, ldz, int(N));
  CUDA_LAUNCH_CHECK();
}
void fill_uniform(cudaStream_t st, void* p, DType t, int64_t n, uint64_t seed, float lo, float hi) {
  if (n == 0) return;
  fill_uniform_kernel<<<grid_for(n), 256, 0, st>>>(p, is_bf16(t), n, seed, lo, hi);
  CUDA_LAUNCH_CHECK();
}
void fill_value(cudaStream_t st, void* p, DType t, int64_t n, float v) {
  if (n == 0) return;
  fill_kernel<<<grid_for(n), 256, 0, st>>>(p, is_bf16(t), n, v);
  CUDA_LAUNCH_CHECK();
}
void convert(cudaStream_t st, void* dst, DType dst_t, const void* src, DType src_t, int64_t n) {
  if (n == 0) return;
  int s = src_t == DType::F32 ? 0 : src_t == DType::BF16 ? 1 : src_t == DType::F16 ? 2 : -1;
  if (s < 0) fail("cuda backend: cannot convert from ", dtype_name(src_t));
  convert_kernel<<<grid_for(n), 256, 0, st>>>(dst, is_bf16(dst_t), src, s, n);
  CUDA_LAUNCH_CHECK();
}

#define INST(T)                                                                                             \
  template void embed<T>(cudaStream_t, T*, int64_t, const T*, int64_t, int64_t, const DevBatch&);           \
  template void gather_rows<T>(cudaStream_t, T*, int64_t, const T*, int64_t, int64_t, const DevBatch&);     \
  template void add_inplace<T>(cudaStream_t, T*, int64_t, const T*, int64_t, int64_t, int64_t);             \
  template void swiglu<T>(cudaStream_t, T*, int64_t, const T*, int64_t, int64_t, int64_t);                  \
  template void scale<T>(cudaStream_t, T*, int64_t, int64_t, int64_t, float);                               \
  template void copy2d<T>(cudaStream_t, T*, int64_t, const T*, int64_t, int64_t, int64_t);                  \
  template void relu2<T>(cudaStream_t, T*, int64_t, const T*, int64_t, int64_t, int64_t);                   \
  template void geglu<T>(cudaStream_t, T*, int64_t, const T*, int64_t, int64_t, int64_t);                   \
  template void silu_gate<T>(cudaStream_t, T*, int64_t, const T*, int64_t, const T*, int64_t, int64_t, int64_t);
BAMBA_CUDA_DTYPES(INST)
#undef INST

}  // namespace bamba::cuda
