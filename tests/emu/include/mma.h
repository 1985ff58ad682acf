// wmma (m16n16k16, bf16 in, fp32 accumulate) for tests/emu/run.sh: lane 0 of each warp computes and stores the
// whole tile (in fp32, exact products), the other lanes do nothing; callers only read tiles after a barrier.
#pragma once
#include "backend/cuda/kernels.cuh"
using bamba::cuda::to_f;
namespace nvcuda::wmma {
struct row_major {}; struct col_major {}; struct matrix_a {}; struct matrix_b {}; struct accumulator {};
enum layout_t { mem_row_major, mem_col_major };
template <class Use, int M, int N, int K, class T, class L = void> struct fragment { float x[256]; };
inline bool lane0() { return threadIdx.x % 32 == 0; }
template <class Use, class T, class L>
void load_matrix_sync(fragment<Use, 16, 16, 16, T, L>& f, const T* p, unsigned ld) {
  if (!lane0()) return;
  for (int r = 0; r < 16; ++r)
    for (int c = 0; c < 16; ++c)
      f.x[r * 16 + c] = std::is_same_v<L, row_major> ? to_f(p[r * ld + c]) : to_f(p[c * ld + r]);
}
inline void load_matrix_sync(fragment<accumulator, 16, 16, 16, float>& f, const float* p, unsigned ld, layout_t) {
  if (!lane0()) return;
  for (int r = 0; r < 16; ++r) for (int c = 0; c < 16; ++c) f.x[r * 16 + c] = p[r * ld + c];
}
inline void fill_fragment(fragment<accumulator, 16, 16, 16, float>& f, float v) { for (float& e : f.x) e = v; }
template <class A, class B>
void mma_sync(fragment<accumulator, 16, 16, 16, float>& d, const A& a, const B& b,
              const fragment<accumulator, 16, 16, 16, float>& c) {
  if (!lane0()) return;
  float o[256];
  for (int r = 0; r < 16; ++r)
    for (int n = 0; n < 16; ++n) {
      float s = c.x[r * 16 + n];
      for (int k = 0; k < 16; ++k) s += a.x[r * 16 + k] * b.x[k * 16 + n];
      o[r * 16 + n] = s;
    }
  for (int i = 0; i < 256; ++i) d.x[i] = o[i];
}
inline void store_matrix_sync(float* p, const fragment<accumulator, 16, 16, 16, float>& f, unsigned ld, layout_t) {
  if (!lane0()) return;
  for (int r = 0; r < 16; ++r) for (int c = 0; c < 16; ++c) p[r * ld + c] = f.x[r * 16 + c];
}
}  // namespace nvcuda::wmma
