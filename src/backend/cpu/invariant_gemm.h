// The CPU matmul of batch invariance (`--deterministic`, docs/serving.md): y[m, n] is the same sequence of fp32
// operations on x[m] and W[n] whatever M and N are. OpenBLAS picks kernels, blockings and (for a single row) a
// GEMV path by shape, so the bits of a row of its product change with the number of rows beside it; a decode
// step of one sequence and a decode step of 64 would then round the same sequence's logits differently.
#pragma once
#include <cstdint>

namespace bamba::cpu {

// y = x · Wᵀ      y [M, N] (row stride ldy), x [M, K] (ldx), W [N, K] (ldw), all fp32.
// Every y[m, n] is one dot product in a fixed order (multiply-adds fused on CPUs with FMA, the same for every output
// of one machine): 8 lanes, lane j summing x[k]·w[k] for k ≡ j (mod 8), k < K8 =
// K rounded down to 8, in increasing k; the lanes added as ((l0 + l4) + (l2 + l6)) + ((l1 + l5) + (l3 + l7)); then
// the tail k = K8 .. K-1 added in order. Blocked over N for cache reuse; large products split by columns over
// the cores (which changes no bit).
void invariant_gemm_nt(const float* x, int64_t ldx, const float* W, int64_t ldw, float* y, int64_t ldy, int64_t M,
                       int64_t N, int64_t K);

// The same dot product, one output at a time (the reference the tests hold the blocked kernel to).
float invariant_dot(const float* x, const float* w, int64_t K);

}  // namespace bamba::cpu
