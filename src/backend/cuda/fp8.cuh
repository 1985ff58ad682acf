// Launchers of the FP8 (E4M3) weight kernels: the W8A16 GEMV of decode (fp8_gemv.cu) and the W8A8 tensor-core GEMM
// of prefill with its per-row quantization (fp8_gemm.cu). A weight is [N, K] E4M3 bytes with F32 scales, one per
// output row (scale_block 0) or per B×B block ([ceil(N/B), ceil(K/B)]); the CPU backend's matmul is the twin.
#pragma once
#include <cublasLt.h>
#include <cuda_runtime.h>

#include "backend/cuda/common.cuh"

namespace bamba::cuda {

// fp8_gemv.cu: y[m, n] = Σ_k x[m, k] · q[n, k] · scale(n, k) (+ bias[n]) for any M (a launch per 8 rows; meant for
// M <= 8, and the fallback of every shape the GEMM below does not take). fp32 accumulation; y is T or float.
// split: a one-row launch whose grid is one wave or less takes each row in two warps (other sums than one warp's,
// so never where rows must not depend on M).
template <typename T>
void fp8_gemv(cudaStream_t st, void* y, bool y_f32, int64_t ldy, const T* x, int64_t ldx, const uint8_t* W, int64_t ldw,
              const float* scale, int scale_block, PView bias, int M, int N, int K, bool split = false);

// fp8_gemv.cu: y[0, f] = silu(gate) · up of one bf16 row x [1, K] against W = gate | up ([N = 2F, K], per-row
// scales): the bits of fp8_gemv (bf16 y) then elementwise.cu's swiglu, in one kernel. False (nothing launched) when
// the shape or alignment does not suit it.
bool fp8_gemv_swiglu(cudaStream_t st, bf16* y, const bf16* x, const uint8_t* W, int64_t ldw, const float* scale,
                     PView bias, int N, int K);

// fp8_gemm.cu: q[m] = e4m3(x[m] / s[m]), s[m] = amax(|x[m]|) / 448 (1 for a zero row) — core/fp8.h on the GPU.
// Weights at load (--quantization fp8) and activations before the W8A8 GEMM. x [M, K] T, q [M, K] (ldq), s [M].
template <typename T>
void quantize_rows_fp8(cudaStream_t st, uint8_t* q, int64_t ldq, float* s, const T* x, int64_t ldx, int64_t M, int64_t K);

// out [M, K] (contiguous) = e4m3(x / s) · s per row, as T: the activations exactly as the GEMM would see them, for
// the W8A16 kernel to run W8A8's arithmetic where the GEMM cannot take the shape.
template <typename T>
void fake_quantize_rows_fp8(cudaStream_t st, T* out, const T* x, int64_t ldx, int64_t M, int64_t K);

// cuBLASLt's FP8 GEMM with per-row scales on both operands: y[m, n] = xs[m] · ws[n] · Σ_k xq[m, k] · wq[n, k]
// (fp32 accumulation). y is BF16 or F32. False (nothing launched) when this cuBLASLt or the shapes (16-byte
// multiples and alignment) do not allow it.
struct Fp8Gemm {
  cublasLtHandle_t lt = nullptr;
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
  int mode = -1;  // -1 not tried yet; 1 outer-vector scales in cuBLASLt; 0 unit scales + a rescaling kernel
  // Hopper's FP8 MMA accumulates in fewer bits than fp32; cuBLASLt by default promotes its partial sums into fp32
  // registers every few k-blocks, which costs issue slots. fast_accum (CUBLASLT_MATMUL_DESC_FAST_ACCUM, what
  // torch._scaled_mm's use_fast_accum sets, and Transformer Engine's forward GEMMs) skips the promotion. Measured on
  // an H100 (bench/NOTES.md v36): pp8192 43,765 → 47,018 tok/s, the GEMM's error against the CPU 1.7e-3 → 2.0-3.1e-3
  // at K = 4,096 / 14,336 (bf16's bound: 1e-2). The backend sets it for bf16 compute unless
  // BAMBA_CUDA_FP8_FAST_ACCUM=0; fp32 compute promotes.
  bool fast_accum = false;
};
bool fp8_gemm(Fp8Gemm& g, cudaStream_t st, void* y, bool y_f32, int64_t ldy, const uint8_t* xq, int64_t ldxq,
              const float* xs, const uint8_t* W, int64_t ldw, const float* ws, int M, int N, int K);

}  // namespace bamba::cuda
