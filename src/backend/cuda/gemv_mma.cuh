// gemv_mma.cu: y = x Wᵀ (+ bias) for 1-8 rows on bf16 tensor cores (weights streamed once, x read at half the
// bf16 weight bytes whatever M is; W bf16 or, below, FP8), with the op before the matmul optionally folded into the x load:
//   Plain: x;  RmsNorm: rmsnorm(x) * norm_w (x [M, K]);  SwiGlu: silu(x[:, :K]) * x[:, K:] (x = gate_up [M, 2K]).
// Stores (GemvY): Set y = the product (+ bias), bf16 or, with y_f32, float; Add y += it (bf16 y, rounded as matmul
// then add); SwiGlu: W [N, K] = gate | up (N / 2 rows each), y [M, N / 2] = silu(gate) · up (bf16, each half rounded
// to bf16 first, as elementwise.cu's swiglu of the Set output: the same bits) — a block's 16 rows are 8 gate rows
// and their 8 up rows, so the SwiGLU is done in its epilogue and the [M, N] product is never written.
// False (nothing launched) when the shapes or the alignment don't suit it (K, ldx, ldw multiples of 8 elements,
// 16-byte aligned x, W and norm weight; M <= kMaxGemvRows); the caller then runs the unfused ops.
#pragma once
#include "backend/cuda/kernels.cuh"

namespace bamba::cuda {

enum class GemvX { Plain, RmsNorm, SwiGlu };
enum class GemvY { Set, Add, SwiGlu };
bool gemv_mma(cudaStream_t st, void* y, bool y_f32, GemvY out, int64_t ldy, GemvX mode, const bf16* x, int64_t ldx,
              PView norm_w, float eps, const bf16* W, int64_t ldw, PView bias, int M, int N, int K);

// The same kernel over FP8 (E4M3) weights W [N, K] bytes: y[m, n] = Σ_k x[m, k] · W[n, k] · scale(n, k) (+ bias[n]),
// scale[n] (scale_block 0) or scale[n / B][k / B] (B = scale_block, a multiple of 128; [ceil(N/B), ceil(K/B)]).
// Plain x only; Set, or SwiGlu with per-row scales. False (nothing launched) for K or ldw not a multiple of 16, ldx
// not of 8, unaligned x or W, finer block scales, M > kMaxGemvRows: the caller then runs fp8_gemv (fp8.cuh).
bool gemv_mma_fp8(cudaStream_t st, void* y, bool y_f32, GemvY out, int64_t ldy, const bf16* x, int64_t ldx,
                  const uint8_t* W, int64_t ldw, const float* scale, int scale_block, PView bias, int M, int N, int K);

}  // namespace bamba::cuda
