// The warp-per-row walk of the decode GEMVs on CUDA cores, shared by gemv.cu (bf16 / fp32 weights) and
// fp8_gemv.cu (E4M3 weights): one warp per output row n of W, its lanes taking every 32nd 16-byte chunk with
// streaming loads, kRowUnroll of them in flight before any math (eight measured slower: tg128 164 -> 160). The
// first loads are issued before pdl_wait, so the resident blocks stream weights while the kernel before them
// still runs (the kernels are launched as programmatic dependents, common.cuh).
#pragma once
#include <cstdlib>

#include "backend/cuda/kernels.cuh"

namespace bamba::cuda {

constexpr int kRowWarps = 8, kRowUnroll = 4;  // warps (rows) per block; 16-byte loads in flight per lane

// Calls chunk(w, c) for every 16-byte chunk c < n_chunks that this lane takes of each of the R rows n[r] (c = lane
// + 32 i, in that order whatever U is, so U never changes the sums), w[r] row r's bytes of it, U loads a row in
// flight. Every thread passes the PDL wait and trigger; a warp whose rows are not there (!ok) then returns false
// without calling chunk. prefetch 0: nothing loaded before pdl_wait. S > 1 splits each row among S warps: warp
// part h of them takes c = lane + 32 h + 32 S i (S = 1: the walk above).
template <int U, int R, int S = 1, class F>
__device__ __forceinline__ bool walk_rows(const void* W, int64_t row_bytes, const int (&n)[R], bool ok, int n_chunks,
                                          int prefetch, F&& chunk, int part = 0) {
  const int lane = threadIdx.x & 31, first = lane + 32 * part;
  const uint4* w[R];
#pragma unroll
  for (int r = 0; r < R; ++r)
    w[r] = reinterpret_cast<const uint4*>(static_cast<const char*>(W) + int64_t(ok ? n[r] : 0) * row_bytes);
  uint4 wv[U][R];  // chunks c0 + 32u of the current group
  auto load = [&](int c0) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int c = c0 + 32 * S * u;
#pragma unroll
      for (int r = 0; r < R; ++r) wv[u][r] = ok && c < n_chunks ? __ldcs(w[r] + c) : make_uint4(0, 0, 0, 0);
    }
  };
  if (prefetch) load(first);  // weights only: they do not depend on the kernel before
  pdl_wait();
  pdl_trigger();
  if (!ok) return false;
  if (!prefetch) load(first);
  for (int c0 = first; c0 < n_chunks; c0 += 32 * S * U) {
#pragma unroll
    for (int u = 0; u < U; ++u)
      if (c0 + 32 * S * u < n_chunks) chunk(wv[u], c0 + 32 * S * u);
    if (c0 + 32 * S * U < n_chunks) load(c0 + 32 * S * U);
  }
  return true;
}

// One row n (a warp past the last, n >= N, returns false): chunk(w, c) with w the row's 16 bytes at chunk c.
template <int U = kRowUnroll, class F>
__device__ __forceinline__ bool walk_row(const void* W, int64_t row_bytes, int n, int N, int n_chunks, int prefetch,
                                         F&& chunk) {
  const int rows[1] = {n};
  return walk_rows<U, 1>(W, row_bytes, rows, n < N, n_chunks, prefetch,
                         [&](const uint4 (&w)[1], int c) { chunk(w[0], c); });
}

// y[i] = v as T, or as float when y_f32.
template <typename T>
__device__ __forceinline__ void store_y(void* y, int y_f32, int64_t i, float v) {
  if (y_f32) static_cast<float*>(y)[i] = v;
  else static_cast<T*>(y)[i] = from_f<T>(v);
}

// BAMBA_CUDA_GEMV_PREFETCH=0 loads no weights before pdl_wait, in every decode GEMV (for measuring what the early
// loads give).
inline int gemv_prefetch_weights() {
  static const int on = [] {
    const char* e = std::getenv("BAMBA_CUDA_GEMV_PREFETCH");
    return !(e && e[0] == '0');
  }();
  return on;
}

}  // namespace bamba::cuda
