// Stand-in for src/backend/cuda/kernels.cuh when tests/emu/run.sh compiles the CUDA kernels for the CPU:
// the few CUDA types and intrinsics those kernels use, on std::thread (blocks run one after another, every thread
// of a block a std::thread, __syncthreads a std::barrier, warp sums, shuffles and __syncwarp through a per-warp
// barrier). Static __shared__ arrays become function statics: one copy, shared by the threads of the one block that
// runs at a time.
#pragma once
#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <sstream>
#include <type_traits>
#include <vector>
#include <memory>
#include <thread>
struct dim3 { unsigned x = 1, y = 1, z = 1; };
struct alignas(16) uint4 { unsigned x, y, z, w; };
struct alignas(16) float4 { float x, y, z, w; };
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }
inline thread_local dim3 threadIdx, blockIdx, blockDim, gridDim;
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __shared__ static  // blocks run one after another: one array per kernel serves every block in turn
namespace emu {
struct Warp {
  float val[32];
  int ival[32];            // the int shuffles
  const void* ptr[32];     // ldmatrix: each lane's row address (mma.cuh)
  uint32_t reg[32][10];    // mma: each lane's A, B and C registers (mma.cuh)
  std::barrier<> bar{32};
};
struct Block {
  explicit Block(int n) : bar(n), warps(n / 32) {}
  std::barrier<> bar;
  std::vector<Warp> warps;
  std::vector<unsigned char> smem;
  float red[32];
};
inline thread_local Block* cur = nullptr;
inline unsigned char* dyn_smem() { return cur->smem.data(); }
inline float* static_red() { return cur->red; }
// the thread's index in its block (x fastest), which fixes its warp as on the GPU
inline unsigned linear_tid() { return threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z); }
}
inline void __syncthreads() { emu::cur->bar.arrive_and_wait(); }
namespace bamba::cuda {
using std::min; using std::max;
struct bf16 { uint16_t b; };
inline bf16 __float2bfloat16_rn(float f) {
  uint32_t u; std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return {uint16_t((u >> 16) | 0x40)};
  u += 0x7fffu + ((u >> 16) & 1u);
  return {uint16_t(u >> 16)};
}
inline float __bfloat162float(bf16 x) { uint32_t u = uint32_t(x.b) << 16; float f; std::memcpy(&f, &u, 4); return f; }
inline float to_f(bf16 x) { return __bfloat162float(x); }
inline float to_f(float x) { return x; }
template <typename T> T from_f(float x);
template <> inline bf16 from_f<bf16>(float x) { return __float2bfloat16_rn(x); }
template <> inline float from_f<float>(float x) { return x; }
inline float rsqrtf(float x) { return 1.f / std::sqrt(x); }
inline float softplus_f(float x) { return x > 20.f ? x : log1pf(expf(x)); }
struct PView { const void* p = nullptr; int is_bf16 = 0; };
inline float ld_param(PView v, int64_t i) { return v.is_bf16 ? __bfloat162float(static_cast<const bf16*>(v.p)[i]) : static_cast<const float*>(v.p)[i]; }
// Every lane of the calling thread's warp puts in v, waits for the other 31, and gets f(the warp's 32 values in lane
// order). All lanes call it, as the kernels call the warp intrinsics below.
template <class T, class F> inline T warp_all(T v, F f) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, int>);
  auto& w = emu::cur->warps[emu::linear_tid() / 32];
  T* slots = nullptr;
  if constexpr (std::is_same_v<T, float>) slots = w.val;
  else slots = w.ival;
  slots[emu::linear_tid() % 32] = v;
  w.bar.arrive_and_wait();
  const T r = f(static_cast<const T*>(slots));
  w.bar.arrive_and_wait();
  return r;
}
inline float warp_sum(float v) {
  return warp_all(v, [](const float* x) { float s = 0; for (int i = 0; i < 32; ++i) s += x[i]; return s; });
}
inline float __shfl_xor_sync(unsigned, float v, int m) {
  const int lane = int(emu::linear_tid() % 32);
  return warp_all(v, [lane, m](const float* x) { return x[lane ^ m]; });
}
inline int __shfl_xor_sync(unsigned, int v, int m) {
  const int lane = int(emu::linear_tid() % 32);
  return warp_all(v, [lane, m](const int* x) { return x[lane ^ m]; });
}
inline void __syncwarp() { emu::cur->warps[emu::linear_tid() / 32].bar.arrive_and_wait(); }
using std::isnan;
inline float __uint_as_float(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }
inline uint32_t __float_as_uint(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }
// IEEE fp32 operations rounded to nearest, as the CPU's own (g++ -std=c++20 contracts nothing into an fma)
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fsqrt_rn(float x) { return std::sqrt(x); }
inline float silu_f(float x) { return x / (1.f + std::exp(-x)); }
inline uint4 __ldcs(const uint4* p) { return *p; }
inline void pdl_wait() {}     // the kernels run one at a time here
inline void pdl_trigger() {}
constexpr int kMaxGemvRows = 8;
inline float warp_max(float v) {
  return warp_all(v, [](const float* x) { float s = -INFINITY; for (int i = 0; i < 32; ++i) s = std::max(s, x[i]); return s; });
}
inline float __shfl_sync(unsigned, float v, int src) { return warp_all(v, [src](const float* x) { return x[src]; }); }
inline float __shfl_up_sync(unsigned m, float v, int d) {
  const int lane = int(emu::linear_tid() % 32);
  return __shfl_sync(m, v, lane >= d ? lane - d : lane);
}
// A block reduction as common.cuh's: each warp's reduction, then warp 0's over the warps' (identity beyond them).
template <float (*warp_op)(float)>
inline float block_reduce(float v, float* sh, float identity) {
  const int t = int(emu::linear_tid()), lane = t & 31, w = t >> 5, nw = int(blockDim.x * blockDim.y * blockDim.z) >> 5;
  v = warp_op(v);
  __syncthreads();
  if (lane == 0) sh[w] = v;
  __syncthreads();
  v = lane < nw ? sh[lane] : identity;
  return warp_op(v);
}
inline float block_sum(float v, float* sh) { return block_reduce<warp_sum>(v, sh, 0.f); }
inline float block_max(float v, float* sh) { return block_reduce<warp_max>(v, sh, -INFINITY); }
struct DevBatch {
  const int32_t *tokens, *positions, *seq_of, *seq_start, *past_len, *slot, *logit_rows, *max_blocks, *block_table;
  const int32_t *chunk_seq, *chunk_begin, *chunk_first;
  int T, S, R, n_chunks, chunk_q;
};
struct SsdBwdArgs {
  void* dxBC; int64_t lddx; void* ddt; int64_t ldddt; float *dA_log, *dD, *ddt_bias; float* dstate0;
  const void* dy; int64_t lddy; const void* xBC; int64_t ldx; const void* dt; int64_t lddt;
  PView A_log, D, dt_bias; const float* state0; int nh, P, G, N; float dt_min, dt_max;
};
struct AttnArgs {
  void* out; int64_t ldo; void* qkv; int64_t ldq; void* k_pages; void* v_pages; const float* inv_freq;
  int nq, nkv, dh, rot, block_size; float scale;
};
struct MoeRouteArgs {
  const float* logits; int64_t ldl; PView bias; int32_t* experts; int64_t lde; float* weights; int64_t ldw;
  int T, E, k; int sigmoid_group; int n_group, topk_group, norm_topk_prob; float routed_scaling;
};
struct MoeRouteBackwardArgs {
  void* dlogits; int64_t ldd; const float* dweights; int64_t ldw; const float* logits; int64_t ldl;
  const int32_t* experts; int64_t lde; int T, E, k; int sigmoid_group, norm_topk_prob; float routed_scaling;
};
using cudaStream_t = void*;
using cudaEvent_t = void*;
template <class... A> [[noreturn]] void fail(A&&... a) { std::ostringstream o; (o << ... << a); throw std::runtime_error(o.str()); }
inline unsigned ceil_div(int64_t a, int64_t b) { return unsigned((a + b - 1) / b); }
}  // namespace bamba::cuda
namespace emu {
template <class F> void launch(dim3 grid, dim3 block, size_t smem, F f) {
  for (unsigned z = 0; z < grid.z; ++z) for (unsigned y = 0; y < grid.y; ++y) for (unsigned x = 0; x < grid.x; ++x) {
    const unsigned n = block.x * block.y * block.z;
    Block blk(static_cast<int>(n));
    blk.smem.assign(smem + 128, 0xff);  // garbage-ish (NaN bf16 patterns) so unwritten reads show
    std::vector<std::thread> ts;
    for (unsigned t = 0; t < n; ++t)
      ts.emplace_back([&, t] {
        threadIdx = {t % block.x, t / block.x % block.y, t / (block.x * block.y)};
        blockIdx = {x, y, z}; blockDim = block; gridDim = grid; cur = &blk; f();
      });
    for (auto& th : ts) th.join();
  }
}
}
