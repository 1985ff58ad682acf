#include "backend/cpu/invariant_gemm.h"

#include <algorithm>
#include <cstring>
#include <thread>
#include <vector>

namespace bamba::cpu {
namespace {

typedef float v8 __attribute__((vector_size(32)));  // 8 lanes (two SSE registers, or one AVX register)

// (By reference, not by value: without AVX a 32-byte vector has no register ABI, and GCC warns.)
inline void load8(v8& v, const float* p) { std::memcpy(&v, p, sizeof v); }

inline float lanes_sum(const v8& a) { return ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7])); }

// Four outputs y[j] = dot(x, w[j]): the only code that computes an output, so every output of every call is the
// same arithmetic (never inlined: a multiversioned function is called through its resolver, so there is one copy
// of the machine code whatever the caller's context lets the compiler do). A short group of W rows passes a valid
// row again in the spare pointers and ignores those outputs.
// Two clones, picked once per process by the CPU: x86-64-v3 (AVX2 + FMA: one instruction per 8 lanes, the
// multiply-adds fused) and the SSE2 baseline. They may differ in the last bit from each other, but a machine always
// runs the same one, and every output of every call goes through it. (No `noinline` beside target_clones: clang
// rejects the pair.)
__attribute__((target_clones("arch=x86-64-v3", "default"))) void dot4(const float* x, const float* w0, const float* w1,
                                                                      const float* w2, const float* w3, int64_t K,
                                                                      float* out) {
  v8 a0 = {}, a1 = {}, a2 = {}, a3 = {};
  const int64_t K8 = K / 8 * 8;
  for (int64_t k = 0; k < K8; k += 8) {
    v8 xv, wv;
    load8(xv, x + k);
    load8(wv, w0 + k), a0 += xv * wv;
    load8(wv, w1 + k), a1 += xv * wv;
    load8(wv, w2 + k), a2 += xv * wv;
    load8(wv, w3 + k), a3 += xv * wv;
  }
  float s0 = lanes_sum(a0), s1 = lanes_sum(a1), s2 = lanes_sum(a2), s3 = lanes_sum(a3);
  for (int64_t k = K8; k < K; ++k) {
    s0 += x[k] * w0[k];
    s1 += x[k] * w1[k];
    s2 += x[k] * w2[k];
    s3 += x[k] * w3[k];
  }
  out[0] = s0, out[1] = s1, out[2] = s2, out[3] = s3;
}

}  // namespace

float invariant_dot(const float* x, const float* w, int64_t K) {
  float out[4];
  dot4(x, w, w, w, w, K, out);
  return out[0];
}

void invariant_gemm_nt(const float* x, int64_t ldx, const float* W, int64_t ldw, float* y, int64_t ldy, int64_t M,
                       int64_t N, int64_t K) {
  // A block of W rows (~256 KB) stays in cache while every x row passes over it.
  const int64_t nb = std::max<int64_t>(4, (65536 / std::max<int64_t>(K, 1)) / 4 * 4);
  auto columns = [&](int64_t c0, int64_t c1) {  // y[:, c0:c1)
    float out[4];
    for (int64_t n0 = c0; n0 < c1; n0 += nb) {
      const int64_t n1 = std::min(c1, n0 + nb);
      for (int64_t m = 0; m < M; ++m) {
        const float* xr = x + m * ldx;
        float* yr = y + m * ldy;
        for (int64_t n = n0; n < n1; n += 4) {
          const float* w[4];
          for (int j = 0; j < 4; ++j) w[j] = W + std::min(n + j, n1 - 1) * ldw;
          dot4(xr, w[0], w[1], w[2], w[3], K, out);
          for (int64_t j = 0; j < std::min<int64_t>(4, n1 - n); ++j) yr[n + j] = out[j];
        }
      }
    }
  };
  // Large products are split by columns over the cores; every output is still one dot4 call, so the split (and
  // the number of cores) changes no bit.
  const int64_t threads = std::min<int64_t>({int64_t(std::thread::hardware_concurrency()), 8, N / 64,
                                             M * N * K / (1 << 22)});
  if (threads <= 1) return columns(0, N);
  std::vector<std::thread> pool;
  const int64_t per = (N + threads - 1) / threads;
  for (int64_t t = 1; t < threads; ++t) pool.emplace_back(columns, std::min(N, t * per), std::min(N, (t + 1) * per));
  columns(0, std::min(N, per));
  for (auto& th : pool) th.join();
}

}  // namespace bamba::cpu
