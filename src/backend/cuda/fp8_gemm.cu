// W8A8 prefill: activations quantized per token (a dynamic scale per row, as vLLM's FP8 linear does) and one
// cuBLASLt FP8 GEMM on the tensor cores with fp32 accumulation. The row scales of both operands go to cuBLASLt as
// outer-vector scales (CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F: element (i, j) of A·B times a_scale[i] ·
// b_scale[j]), so the GEMM writes the finished bf16 output. Where this cuBLASLt finds no kernel for that mode, it
// runs with unit scales and a second kernel rescales the output in place (one more bf16 rounding).
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <algorithm>

#include "backend/cuda/fp8.cuh"

namespace bamba::cuda {
namespace {

#define LT_CHECK(expr)                                                                                    \
  do {                                                                                                    \
    cublasStatus_t st_ = (expr);                                                                          \
    if (st_ != CUBLAS_STATUS_SUCCESS) ::bamba::fail("cuBLASLt error ", int(st_), " at ", __FILE__, ":", __LINE__, ": ", #expr); \
  } while (0)

constexpr int kThreads = 256;

// One block per row: amax, then the scale and the E4M3 bytes (saturating, as core/fp8.h's f32_to_e4m3); with
// `back` non-null also the rounded values q · s as T (the GEMM's input for a shape the GEMM cannot take).
template <typename T>
__global__ void __launch_bounds__(kThreads) quantize_rows_kernel(uint8_t* q, int64_t ldq, float* s, const T* x,
                                                                 int64_t ldx, int64_t K, T* back) {
  __shared__ float sh[32];
  pdl_wait();
  pdl_trigger();
  const T* xr = x + blockIdx.x * ldx;
  float amax = 0.f;
  for (int64_t k = threadIdx.x; k < K; k += kThreads) amax = fmaxf(amax, fabsf(to_f(xr[k])));
  amax = block_max(amax, sh);
  const float scale = amax > 0.f && isfinite(amax) ? __fdiv_rn(amax, 448.f) : 1.f;
  uint8_t* qr = q + blockIdx.x * ldq;
  for (int64_t k = threadIdx.x; k < K; k += kThreads) {
    const __nv_fp8_storage_t b = __nv_cvt_float_to_fp8(__fdiv_rn(to_f(xr[k]), scale), __NV_SATFINITE, __NV_E4M3);
    if (q) qr[k] = b;
    if (back) back[blockIdx.x * K + k] = from_f<T>(__half2float(__half(__nv_cvt_fp8_to_halfraw(b, __NV_E4M3))) * scale);
  }
  if (threadIdx.x == 0 && s) s[blockIdx.x] = scale;
}

// y[m, n] *= xs[m] · ws[n] (the unit-scale fallback's epilogue)
template <typename T>
__global__ void rescale_kernel(T* y, int64_t ldy, const float* xs, const float* ws, int M, int N) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= int64_t(M) * N) return;
  const int m = int(i / N), n = int(i % N);
  T& v = y[int64_t(m) * ldy + n];
  v = from_f<T>(to_f(v) * xs[m] * ws[n]);
}

// One GEMM with the given scale mode (outer-vector scales, or none). False when cuBLASLt has no kernel for it.
bool lt_matmul(Fp8Gemm& g, cudaStream_t st, void* y, bool y_f32, int64_t ldy, const uint8_t* xq, int64_t ldxq,
               const float* xs, const uint8_t* W, int64_t ldw, const float* ws, int M, int N, int K, bool outer) {
  // Column-major as cuBLASLt sees the row-major y[M, N] = xq[M, K] · W[N, K]ᵀ: D[N, M] = op(A)·B with A = W
  // ([K, N], transposed: the "TN" layout FP8 requires) and B = xq ([K, M]); D's rows are output channels.
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
  cublasLtMatmulPreference_t pref = nullptr;
  LT_CHECK(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
  LT_CHECK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
  LT_CHECK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
  const int8_t fast = g.fast_accum;
  LT_CHECK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_FAST_ACCUM, &fast, sizeof(fast)));
  if (outer) {
    const int32_t mode = CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F;
    LT_CHECK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_A_SCALE_MODE, &mode, sizeof(mode)));
    LT_CHECK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_B_SCALE_MODE, &mode, sizeof(mode)));
    LT_CHECK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &ws, sizeof(ws)));
    LT_CHECK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &xs, sizeof(xs)));
  }
  const cudaDataType_t yt = y_f32 ? CUDA_R_32F : CUDA_R_16BF;
  LT_CHECK(cublasLtMatrixLayoutCreate(&a, CUDA_R_8F_E4M3, K, N, ldw));
  LT_CHECK(cublasLtMatrixLayoutCreate(&b, CUDA_R_8F_E4M3, K, M, ldxq));
  LT_CHECK(cublasLtMatrixLayoutCreate(&d, yt, N, M, ldy));
  LT_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  LT_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &g.workspace_bytes,
                                                sizeof(g.workspace_bytes)));
  cublasLtMatmulHeuristicResult_t h{};
  int found = 0;
  const cublasStatus_t hs = cublasLtMatmulAlgoGetHeuristic(g.lt, op, a, b, d, d, pref, 1, &h, &found);
  const bool ok = hs == CUBLAS_STATUS_SUCCESS && found > 0;
  if (ok) {
    const float alpha = 1.f, beta = 0.f;
    LT_CHECK(cublasLtMatmul(g.lt, op, &alpha, W, a, xq, b, &beta, y, d, y, d, &h.algo, g.workspace, g.workspace_bytes, st));
  }
  cublasLtMatmulPreferenceDestroy(pref);
  cublasLtMatrixLayoutDestroy(d);
  cublasLtMatrixLayoutDestroy(b);
  cublasLtMatrixLayoutDestroy(a);
  cublasLtMatmulDescDestroy(op);
  return ok;
}

}  // namespace

template <typename T>
void quantize_rows_fp8(cudaStream_t st, uint8_t* q, int64_t ldq, float* s, const T* x, int64_t ldx, int64_t M, int64_t K) {
  if (M == 0) return;
  launch_pdl(quantize_rows_kernel<T>, dim3(unsigned(M)), dim3(kThreads), 0, st, q, ldq, s, x, ldx, K, (T*)nullptr);
}

template <typename T>
void fake_quantize_rows_fp8(cudaStream_t st, T* out, const T* x, int64_t ldx, int64_t M, int64_t K) {
  if (M == 0) return;
  launch_pdl(quantize_rows_kernel<T>, dim3(unsigned(M)), dim3(kThreads), 0, st, (uint8_t*)nullptr, int64_t(0),
             (float*)nullptr, x, ldx, K, out);
}

bool fp8_gemm(Fp8Gemm& g, cudaStream_t st, void* y, bool y_f32, int64_t ldy, const uint8_t* xq, int64_t ldxq,
              const float* xs, const uint8_t* W, int64_t ldw, const float* ws, int M, int N, int K) {
  const int64_t ysz = y_f32 ? 4 : 2;
  if (K % 16 || ldw % 16 || ldxq % 16 || (ldy * ysz) % 16 || !aligned16(W) || !aligned16(xq) || !aligned16(y)) return false;
  if (g.mode != 0 && lt_matmul(g, st, y, y_f32, ldy, xq, ldxq, xs, W, ldw, ws, M, N, K, true)) {
    g.mode = 1;
    return true;
  }
  if (g.mode == -1) g.mode = 0;  // this cuBLASLt has no outer-vector scales: don't ask again
  if (!lt_matmul(g, st, y, y_f32, ldy, xq, ldxq, xs, W, ldw, ws, M, N, K, false)) return false;
  const int64_t n = int64_t(M) * N;
  if (y_f32) rescale_kernel<float><<<ceil_div(n, 256), 256, 0, st>>>(static_cast<float*>(y), ldy, xs, ws, M, N);
  else rescale_kernel<bf16><<<ceil_div(n, 256), 256, 0, st>>>(static_cast<bf16*>(y), ldy, xs, ws, M, N);
  CUDA_LAUNCH_CHECK();
  return true;
}

#define INST(T) \
  template void quantize_rows_fp8<T>(cudaStream_t, uint8_t*, int64_t, float*, const T*, int64_t, int64_t, int64_t); \
  template void fake_quantize_rows_fp8<T>(cudaStream_t, T*, const T*, int64_t, int64_t, int64_t);
BAMBA_CUDA_DTYPES(INST)
#undef INST

}  // namespace bamba::cuda
