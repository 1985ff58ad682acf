// Attention for the 3 attention layers of Bamba: partial NeoX RoPE on q and k, the new k/v appended to the
// paged cache, then softmax(q kᵀ · scale) v over each token's sequence: cached keys plus the new ones, causal,
// GQA (q head h reads kv head h / (nq / nkv)). Three kernels: the tensor-core flash kernel for prompts, the
// split-K (flash-decoding) kernel for bf16 decode steps, and the CUDA-core kernel for the rest (fp32, odd head
// sizes, and decode under batch invariance, whose bits must not move).
#include <algorithm>
#include <type_traits>

#include "backend/cuda/attention_decode.cuh"
#include "backend/cuda/cp_async.cuh"
#include "backend/cuda/kernels.cuh"
#include "backend/cuda/mma.cuh"

namespace bamba::cuda {
namespace {

__device__ __forceinline__ int64_t cache_row(const DevBatch& b, int s, int pos, int block_size) {
  const int blk = b.block_table[int64_t(s) * b.max_blocks[0] + pos / block_size];
  return int64_t(blk) * block_size + pos % block_size;
}

// Block per (token, head of q|k|v); each element is handled by one thread (the rotated pair (d, d + R/2) by the
// thread of d), so rotating in place needs no barrier. k and v go to the cache row past_len + i of the sequence.
// (One block per token looping over all heads was 30 µs per decode step: a serial chain of sincos.)
template <typename T>
__global__ void rope_cache_kernel(AttnArgs a, DevBatch b) {
  pdl_wait();  // a programmatic dependent in decode steps (common.cuh); a no-op in prompts
  pdl_trigger();
  T* k_pages = static_cast<T*>(a.k_pages);
  T* v_pages = static_cast<T*>(a.v_pages);
  const int t = blockIdx.x, s = b.seq_of[t], head = blockIdx.y;
  const int pos_cache = b.past_len[s] + t - b.seq_start[s];
  const int64_t kv_off = cache_row(b, s, pos_cache, a.block_size) * a.nkv * a.dh;
  const float pos = float(b.positions[t]);
  const int half = a.rot / 2, nqk = a.nq + a.nkv;
  T* q = static_cast<T*>(a.qkv) + int64_t(t) * a.ldq;
  for (int d = threadIdx.x; d < a.dh; d += blockDim.x) {
    T* v = q + head * a.dh;
    if (head >= nqk) {
      v_pages[kv_off + (head - nqk) * a.dh + d] = v[d];
      continue;
    }
    T* kdst = head >= a.nq ? k_pages + kv_off + (head - a.nq) * a.dh : nullptr;
    if (d < half) {
      float si, co;
      sincosf(pos * a.inv_freq[d], &si, &co);
      const float x0 = to_f(v[d]), x1 = to_f(v[d + half]);
      const T y0 = from_f<T>(x0 * co - x1 * si), y1 = from_f<T>(x1 * co + x0 * si);
      v[d] = y0;
      v[d + half] = y1;
      if (kdst) {
        kdst[d] = y0;
        kdst[d + half] = y1;
      }
    } else if (d >= a.rot && kdst) {
      kdst[d] = v[d];
    }
  }
}

// Block (token, q head) of 4 warps; warp w takes keys w, w+4, ... with an online softmax, lanes split the head
// dimension (d = lane + 32 j); the 4 partial results are merged through shared memory at the end.
// Simple and exact; the cost is a warp reduction per key, fine for decode and short prompts.
template <typename T, int DJ>
__global__ void __launch_bounds__(128) attention_kernel(AttnArgs a, DevBatch b) {
  const T* qkv = static_cast<const T*>(a.qkv);
  const T* k_pages = static_cast<const T*>(a.k_pages);
  const T* v_pages = static_cast<const T*>(a.v_pages);
  __shared__ float sm_m[4], sm_l[4], sm_acc[4][DJ * 32];
  const int t = blockIdx.x, h = blockIdx.y, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int s = b.seq_of[t];
  const int len = b.past_len[s] + t - b.seq_start[s] + 1;
  const int kh = h / (a.nq / a.nkv);
  float qv[DJ], acc[DJ];
#pragma unroll
  for (int j = 0; j < DJ; ++j) {
    const int d = lane + 32 * j;
    qv[j] = d < a.dh ? a.scale * to_f(qkv[int64_t(t) * a.ldq + h * a.dh + d]) : 0.f;
    acc[j] = 0.f;
  }
  float m = -INFINITY, l = 0.f;
  for (int p = warp; p < len; p += 4) {
    const int64_t base = cache_row(b, s, p, a.block_size) * a.nkv * a.dh + kh * a.dh;
    float dot = 0.f;
#pragma unroll
    for (int j = 0; j < DJ; ++j) {
      const int d = lane + 32 * j;
      if (d < a.dh) dot += qv[j] * to_f(k_pages[base + d]);
    }
    dot = warp_sum(dot);
    const float m_new = fmaxf(m, dot);
    const float corr = __expf(m - m_new), e = __expf(dot - m_new);
    l = l * corr + e;
#pragma unroll
    for (int j = 0; j < DJ; ++j) {
      const int d = lane + 32 * j;
      acc[j] = acc[j] * corr + (d < a.dh ? e * to_f(v_pages[base + d]) : 0.f);
    }
    m = m_new;
  }
  if (lane == 0) {
    sm_m[warp] = m;
    sm_l[warp] = l;
  }
#pragma unroll
  for (int j = 0; j < DJ; ++j) sm_acc[warp][lane + 32 * j] = acc[j];
  __syncthreads();
  const float M = fmaxf(fmaxf(sm_m[0], sm_m[1]), fmaxf(sm_m[2], sm_m[3]));
  float wsum[4], L = 0.f;
#pragma unroll
  for (int w = 0; w < 4; ++w) {
    wsum[w] = sm_l[w] > 0.f ? __expf(sm_m[w] - M) : 0.f;
    L += sm_l[w] * wsum[w];
  }
  for (int d = threadIdx.x; d < a.dh; d += blockDim.x) {
    float o = 0.f;
#pragma unroll
    for (int w = 0; w < 4; ++w) o += sm_acc[w][d] * wsum[w];
    static_cast<T*>(a.out)[int64_t(t) * a.ldo + h * a.dh + d] = from_f<T>(o / L);
  }
}

// One step of FlashAttention-2's online softmax on a warp's score accumulators: sc holds NB blocks of 8 keys for
// rows g and g+8 of each quad (masked scores already −inf), m the rows' running maxima and l this lane's share of
// their sums (both in the scores' units, taken to base 2 by sl), o the rows' output accumulators. Joins the new
// maxima over the quad, rescales l and o, and turns sc into P = 2^((s − m)·sl). Shared by the prefill and the
// split-K decode kernels.
template <int NB, int DH>
__device__ __forceinline__ void online_softmax_step(float (&sc)[NB][4], float (&m)[2], float (&l)[2],
                                                    float (&o)[DH / 8][4], float sl) {
  float mx[2] = {m[0], m[1]};
#pragma unroll
  for (int j = 0; j < NB; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) mx[e >> 1] = fmaxf(mx[e >> 1], sc[j][e]);
  float corr[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
    mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
    // A row with no visible key yet (only rows past the sequence's end) keeps m = -inf: guard the NaN.
    corr[r] = mx[r] == -INFINITY ? 1.f : exp2f((m[r] - mx[r]) * sl);
    m[r] = mx[r];
    l[r] *= corr[r];
  }
#pragma unroll
  for (int j = 0; j < DH / 8; ++j) {
    o[j][0] *= corr[0];
    o[j][1] *= corr[0];
    o[j][2] *= corr[1];
    o[j][3] *= corr[1];
  }
#pragma unroll
  for (int j = 0; j < NB; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int r = e >> 1;
      const float p = m[r] == -INFINITY ? 0.f : exp2f((sc[j][e] - m[r]) * sl);
      sc[j][e] = p;
      l[r] += p;
    }
}

// Prefill (flash-style) on bf16 tensor cores: block per (64-token query tile of one sequence, q head), 4 warps of
// 16 query rows each. Key/value tiles of 64 cache rows (gathered through the block table) are staged in shared
// memory; each warp computes S = Q Kᵀ (16 × 64, mma), an online softmax on the accumulators in registers, and
// O += P V with P converted from the S accumulators straight into A fragments (mma.cuh). Keys a warp's rows can
// never see (causal) are skipped per warp; the block walks keys up to the last row's position.
// Query tiles come from the SSD chunk list (chunks never cross sequences, chunk_q a multiple of 64 or not):
// tiles_per_chunk tiles per chunk, those past the chunk's end exit at once. Tiles are taken last-first so the
// long (late) rows start early.
constexpr int kFlashBQ = 64, kFlashBK = 64;

template <int DH>
__global__ void __launch_bounds__(128) flash_attention_kernel(AttnArgs a, DevBatch b, int tiles_per_chunk) {
  constexpr int LDS = DH + 8;  // smem row stride (bf16): +16 bytes so ldmatrix rows hit different banks
  extern __shared__ __align__(16) unsigned char flash_smem[];
  bf16* sQ = reinterpret_cast<bf16*>(flash_smem);  // [BQ][LDS]
  bf16* sK = sQ + kFlashBQ * LDS;                  // [BK][LDS]
  bf16* sV = sK + kFlashBK * LDS;                  // [BK][LDS]
  const bf16* qkv = static_cast<const bf16*>(a.qkv);
  const bf16* k_pages = static_cast<const bf16*>(a.k_pages);
  const bf16* v_pages = static_cast<const bf16*>(a.v_pages);

  const int tile = int(gridDim.x) - 1 - int(blockIdx.x);
  const int chunk = tile / tiles_per_chunk, sub = tile % tiles_per_chunk;
  const int s = b.chunk_seq[chunk];
  const int t_end = min(b.seq_start[s + 1], b.chunk_begin[chunk] + b.chunk_q);
  const int t0 = b.chunk_begin[chunk] + sub * kFlashBQ;
  if (t0 >= t_end) return;  // block-uniform
  const int n_rows = min(kFlashBQ, t_end - t0);
  const int h = blockIdx.y, kh = h / (a.nq / a.nkv);
  const int pos0 = b.past_len[s] + t0 - b.seq_start[s];  // cache position of query row 0
  const int kv_len = pos0 + n_rows;                      // keys 0 .. kv_len-1 are visible to some row
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3;
  const int64_t kv_stride = int64_t(a.nkv) * DH;

  // Q tile (rows past the sequence's end are zeros and never stored).
  for (int idx = threadIdx.x; idx < kFlashBQ * DH; idx += blockDim.x) {
    const int r = idx / DH, d = idx - r * DH;
    sQ[r * LDS + d] = r < n_rows ? qkv[int64_t(t0 + r) * a.ldq + int64_t(h) * DH + d] : __float2bfloat16(0.f);
  }
  __syncthreads();
  uint32_t qf[DH / 16][4];  // this warp's 16 rows as A fragments
#pragma unroll
  for (int kk = 0; kk < DH / 16; ++kk)
    ldsm_x4(qf[kk], sQ + (warp * 16 + (lane & 15)) * LDS + kk * 16 + (lane >> 4) * 8);

  float o[DH / 8][4];
#pragma unroll
  for (int j = 0; j < DH / 8; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};  // rows g and g+8 (l: this lane's partial sum)
  const float sl = a.scale * 1.4426950408889634f;         // softmax in base 2
  const int row_pos[2] = {pos0 + warp * 16 + g, pos0 + warp * 16 + g + 8};
  const int warp_last = min(pos0 + warp * 16 + 15, kv_len - 1);  // the last key any row of this warp sees

  for (int kb = 0; kb < kv_len; kb += kFlashBK) {
    __syncthreads();  // the previous tile has been consumed
    constexpr int V8 = DH / 8;  // 16-byte vectors per row
    for (int idx = threadIdx.x; idx < kFlashBK * V8; idx += blockDim.x) {
      const int r = idx / V8, c = idx - r * V8, p = kb + r;
      uint4 kv = make_uint4(0, 0, 0, 0), vv = kv;
      if (p < kv_len) {
        const int64_t base = cache_row(b, s, p, a.block_size) * kv_stride + int64_t(kh) * DH + c * 8;
        kv = *reinterpret_cast<const uint4*>(k_pages + base);
        vv = *reinterpret_cast<const uint4*>(v_pages + base);
      }
      *reinterpret_cast<uint4*>(sK + r * LDS + c * 8) = kv;
      *reinterpret_cast<uint4*>(sV + r * LDS + c * 8) = vv;
    }
    __syncthreads();
    if (kb > warp_last) continue;  // warp-uniform: every key of this tile is in these rows' future

    float sc[kFlashBK / 8][4];  // S = Q Kᵀ, [16 rows][64 keys]
#pragma unroll
    for (int j = 0; j < kFlashBK / 8; ++j) sc[j][0] = sc[j][1] = sc[j][2] = sc[j][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < DH / 16; ++kk)
#pragma unroll
      for (int j = 0; j < kFlashBK / 16; ++j) {
        uint32_t kf[4];  // b0, b1 of key block 2j, then of 2j+1
        const int mi = lane >> 3;
        ldsm_x4(kf, sK + (16 * j + (mi >> 1) * 8 + (lane & 7)) * LDS + kk * 16 + (mi & 1) * 8);
        mma_bf16(sc[2 * j], qf[kk], kf[0], kf[1]);
        mma_bf16(sc[2 * j + 1], qf[kk], kf[2], kf[3]);
      }

    // Causal mask and online softmax, row by row (each row lives in the 4 lanes of a quad).
#pragma unroll
    for (int j = 0; j < kFlashBK / 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int key = kb + j * 8 + 2 * q + (e & 1);
        if (key > row_pos[e >> 1] || key >= kv_len) sc[j][e] = -INFINITY;
      }
    online_softmax_step<kFlashBK / 8, DH>(sc, m, l, o, sl);

    // O += P V: P's accumulators of key blocks 2kk, 2kk+1 are the A fragment of key step kk.
#pragma unroll
    for (int kk = 0; kk < kFlashBK / 16; ++kk) {
      const uint32_t pf[4] = {pack_bf16(sc[2 * kk][0], sc[2 * kk][1]), pack_bf16(sc[2 * kk][2], sc[2 * kk][3]),
                              pack_bf16(sc[2 * kk + 1][0], sc[2 * kk + 1][1]),
                              pack_bf16(sc[2 * kk + 1][2], sc[2 * kk + 1][3])};
#pragma unroll
      for (int j = 0; j < DH / 16; ++j) {
        uint32_t vf[4];  // b0, b1 of d block 2j, then of 2j+1
        const int mi = lane >> 3;
        ldsm_x4_trans(vf, sV + (kk * 16 + (mi & 1) * 8 + (lane & 7)) * LDS + 16 * j + (mi >> 1) * 8);
        mma_bf16(o[2 * j], pf, vf[0], vf[1]);
        mma_bf16(o[2 * j + 1], pf, vf[2], vf[3]);
      }
    }
  }

  bf16* out = static_cast<bf16*>(a.out);
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
    const int row = warp * 16 + g + 8 * r;
    if (row >= n_rows) continue;
    const float inv = 1.f / l[r];
    bf16* dst = out + int64_t(t0 + row) * a.ldo + int64_t(h) * DH;
#pragma unroll
    for (int j = 0; j < DH / 8; ++j) {
      dst[j * 8 + 2 * q] = __float2bfloat16_rn(o[j][2 * r] * inv);
      dst[j * 8 + 2 * q + 1] = __float2bfloat16_rn(o[j][2 * r + 1] * inv);
    }
  }
}

template <int DH>
void launch_flash(cudaStream_t st, const AttnArgs& a, const DevBatch& b) {
  constexpr size_t smem = size_t(kFlashBQ + 2 * kFlashBK) * (DH + 8) * sizeof(bf16);
  // Above 48 KB of dynamic shared memory needs the opt-in; set per call (cheap, and right on any device).
  CUDA_CHECK(cudaFuncSetAttribute(flash_attention_kernel<DH>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  const int tiles_per_chunk = (b.chunk_q + kFlashBQ - 1) / kFlashBQ;
  flash_attention_kernel<DH><<<dim3(unsigned(b.n_chunks * tiles_per_chunk), unsigned(a.nq)), 128, smem, st>>>(
      a, b, tiles_per_chunk);
}

// Decode (one new token per sequence) as flash-decoding on bf16 tensor cores. The keys of each sequence are cut
// into splits of split_len (a multiple of 64) at fixed positions; block (sequence, kv head, split j) computes the
// unnormalised softmax of its keys for the G = nq / nkv query heads that share the kv head (GQA: each K/V row is
// read once for all of them), as the 16 rows of one m16 A tile (rows past G are zeros). Its keys go through shared
// memory in tiles of 64 (cp.async, double-buffered); warp w takes keys 16w .. 16w+15 of each tile with its own
// online softmax (S = Q Kᵀ and O += P V on mma, as in the prefill kernel), and the 4 warps merge in order at the
// end. A sequence with one split writes its output directly; otherwise each split leaves (max, sum, output) in
// `part` and decode_combine_kernel merges them in split order. Every order is fixed, and the split positions
// depend on the sequence's own length and split_len only: the same inputs give the same bits.
constexpr int kDecBK = 64;  // keys per tile

template <int DH>
constexpr size_t decode_split_smem() {
  return size_t(16 + 4 * kDecBK) * (DH + 8) * sizeof(bf16);  // Q + 2 stages of K and V
}

template <int DH>
__global__ void __launch_bounds__(128) decode_split_kernel(AttnArgs a, DevBatch b, int split_len, float* part,
                                                           int n_splits) {
  pdl_wait();
  pdl_trigger();
  constexpr int LDS = DH + 8;
  extern __shared__ __align__(16) unsigned char dec_smem[];
  bf16* sQ = reinterpret_cast<bf16*>(dec_smem);  // [16][LDS]
  bf16* sK = sQ + 16 * LDS;                      // [2][BK][LDS]
  bf16* sV = sK + 2 * kDecBK * LDS;              // [2][BK][LDS]
  const bf16* qkv = static_cast<const bf16*>(a.qkv);
  const bf16* k_pages = static_cast<const bf16*>(a.k_pages);
  const bf16* v_pages = static_cast<const bf16*>(a.v_pages);

  const int G = a.nq / a.nkv;
  const int s = blockIdx.x / a.nkv, kh = blockIdx.x % a.nkv, j = blockIdx.y;
  const int t = b.seq_start[s];  // the sequence's one token
  const int len = b.past_len[s] + 1;
  const int k_begin = j * split_len;
  if (k_begin >= len) return;  // block-uniform: this sequence needs fewer splits
  const int k_end = min(len, k_begin + split_len);
  const int n_used = (len + split_len - 1) / split_len;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3;
  const int64_t kv_stride = int64_t(a.nkv) * DH;

  constexpr int V8 = DH / 8;  // 16-byte runs per row
  auto load = [&](int stage, int kb) {
    bf16* dk = sK + stage * kDecBK * LDS;
    bf16* dv = sV + stage * kDecBK * LDS;
    for (int idx = threadIdx.x; idx < kDecBK * V8; idx += blockDim.x) {
      const int r = idx / V8, c = idx - r * V8, p = kb + r;
      const bool full = p < k_end;
      const int64_t base = full ? cache_row(b, s, p, a.block_size) * kv_stride + int64_t(kh) * DH + c * 8 : 0;
      async::copy16(dk + r * LDS + c * 8, k_pages + base, full);
      async::copy16(dv + r * LDS + c * 8, v_pages + base, full);
    }
  };
  load(0, k_begin);
  async::commit();
  for (int idx = threadIdx.x; idx < 16 * DH; idx += blockDim.x) {
    const int r = idx / DH, d = idx - r * DH;
    sQ[r * LDS + d] = r < G ? qkv[int64_t(t) * a.ldq + int64_t(kh * G + r) * DH + d] : __float2bfloat16(0.f);
  }
  __syncthreads();
  uint32_t qf[DH / 16][4];
#pragma unroll
  for (int kk = 0; kk < DH / 16; ++kk) ldsm_x4(qf[kk], sQ + (lane & 15) * LDS + kk * 16 + (lane >> 4) * 8);

  float o[DH / 8][4];
#pragma unroll
  for (int jj = 0; jj < DH / 8; ++jj) o[jj][0] = o[jj][1] = o[jj][2] = o[jj][3] = 0.f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};  // rows g and g+8 (l: this lane's partial sum)
  const float sl = a.scale * 1.4426950408889634f;         // softmax in base 2

  const int n_tiles = (k_end - k_begin + kDecBK - 1) / kDecBK;
  for (int n = 0; n < n_tiles; ++n) {
    const int kb = k_begin + n * kDecBK;
    if (n + 1 < n_tiles) load((n + 1) & 1, kb + kDecBK);
    async::commit();
    async::wait<1>();
    __syncthreads();  // tile n is in for every thread
    const bf16* tk = sK + (n & 1) * kDecBK * LDS + warp * 16 * LDS;
    const bf16* tv = sV + (n & 1) * kDecBK * LDS + warp * 16 * LDS;
    const int key0 = kb + warp * 16;
    if (key0 < k_end) {  // warp-uniform
      float sc[2][4] = {};
#pragma unroll
      for (int kk = 0; kk < DH / 16; ++kk) {
        uint32_t kf[4];
        const int mi = lane >> 3;
        ldsm_x4(kf, tk + ((mi >> 1) * 8 + (lane & 7)) * LDS + kk * 16 + (mi & 1) * 8);
        mma_bf16(sc[0], qf[kk], kf[0], kf[1]);
        mma_bf16(sc[1], qf[kk], kf[2], kf[3]);
      }
#pragma unroll
      for (int jj = 0; jj < 2; ++jj)
#pragma unroll
        for (int e = 0; e < 4; ++e)
          if (key0 + jj * 8 + 2 * q + (e & 1) >= k_end) sc[jj][e] = -INFINITY;
      online_softmax_step<2, DH>(sc, m, l, o, sl);
      const uint32_t pf[4] = {pack_bf16(sc[0][0], sc[0][1]), pack_bf16(sc[0][2], sc[0][3]),
                              pack_bf16(sc[1][0], sc[1][1]), pack_bf16(sc[1][2], sc[1][3])};
#pragma unroll
      for (int jj = 0; jj < DH / 16; ++jj) {
        uint32_t vf[4];
        const int mi = lane >> 3;
        ldsm_x4_trans(vf, tv + ((mi & 1) * 8 + (lane & 7)) * LDS + 16 * jj + (mi >> 1) * 8);
        mma_bf16(o[2 * jj], pf, vf[0], vf[1]);
        mma_bf16(o[2 * jj + 1], pf, vf[2], vf[3]);
      }
    }
    __syncthreads();  // every warp is done with this stage before the next iteration's load overwrites it
  }

  // Merge the 4 warps in order through shared memory (the K/V stages are free now): rows r < G only.
  float* sm_o = reinterpret_cast<float*>(sK);  // [4][16][DH]
  float* sm_ml = sm_o + 4 * 16 * DH;           // [4][16][2]: max, sum
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
    const int row = g + 8 * r;
    if (q == 0) {
      sm_ml[(warp * 16 + row) * 2] = m[r];
      sm_ml[(warp * 16 + row) * 2 + 1] = l[r];
    }
#pragma unroll
    for (int jj = 0; jj < DH / 8; ++jj) {
      sm_o[(warp * 16 + row) * DH + jj * 8 + 2 * q] = o[jj][2 * r];
      sm_o[(warp * 16 + row) * DH + jj * 8 + 2 * q + 1] = o[jj][2 * r + 1];
    }
  }
  __syncthreads();
  for (int idx = threadIdx.x; idx < G * DH; idx += blockDim.x) {
    const int r = idx / DH, d = idx - r * DH;
    float M = -INFINITY;
#pragma unroll
    for (int w = 0; w < 4; ++w) M = fmaxf(M, sm_ml[(w * 16 + r) * 2]);
    float L = 0.f, O = 0.f;
#pragma unroll
    for (int w = 0; w < 4; ++w) {
      const float mw = sm_ml[(w * 16 + r) * 2];
      const float c = mw == -INFINITY ? 0.f : exp2f((mw - M) * sl);
      L += c * sm_ml[(w * 16 + r) * 2 + 1];
      O += c * sm_o[(w * 16 + r) * DH + d];
    }
    const int h = kh * G + r;
    if (n_used == 1) {
      static_cast<bf16*>(a.out)[int64_t(t) * a.ldo + int64_t(h) * DH + d] = __float2bfloat16_rn(O / L);
    } else {
      const int64_t slot = (int64_t(t) * a.nq + h) * n_splits + j;  // [T][nq][n_splits]
      float* po = part + slot * (DH + 2);
      po[2 + d] = O;
      if (d == 0) {
        po[0] = M;
        po[1] = L;
      }
    }
  }
}

// out[t, h] = Σ_j c_j o_j / Σ_j c_j l_j with c_j = 2^((m_j - M)·sl), over the splits of the sequence in order.
// Block per (token, q head); sequences with one split were written by the split kernel.
template <int DH>
__global__ void __launch_bounds__(DH) decode_combine_kernel(AttnArgs a, DevBatch b, int split_len, const float* part,
                                                            int n_splits) {
  pdl_wait();
  pdl_trigger();
  const int t = blockIdx.x, h = blockIdx.y, d = threadIdx.x;
  const int s = b.seq_of[t];
  const int n_used = (b.past_len[s] + 1 + split_len - 1) / split_len;
  if (n_used <= 1) return;
  const float sl = a.scale * 1.4426950408889634f;
  const float* p = part + (int64_t(t) * a.nq + h) * n_splits * (DH + 2);
  float M = -INFINITY;
  for (int j = 0; j < n_used; ++j) M = fmaxf(M, p[j * (DH + 2)]);
  float L = 0.f, O = 0.f;
  for (int j = 0; j < n_used; ++j) {
    const float* pj = p + j * (DH + 2);
    const float c = exp2f((pj[0] - M) * sl);  // every used split has at least one key: m_j is finite
    L += c * pj[1];
    O += c * pj[2 + d];
  }
  static_cast<bf16*>(a.out)[int64_t(t) * a.ldo + int64_t(h) * DH + d] = __float2bfloat16_rn(O / L);
}

template <int DH>
void launch_decode_split(cudaStream_t st, const AttnArgs& a, const DevBatch& b, const DecodeSplit& sp) {
  constexpr size_t smem = decode_split_smem<DH>();
  // Above 48 KB of dynamic shared memory needs the opt-in, per device: set on the first (eager) step, before any
  // decode step is recorded into a graph.
  static bool opted[64] = {};
  int dev = 0;
  CUDA_CHECK(cudaGetDevice(&dev));
  if (dev >= 64 || !opted[dev]) {
    CUDA_CHECK(cudaFuncSetAttribute(decode_split_kernel<DH>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
    if (dev < 64) opted[dev] = true;
  }
  // Programmatic dependents (common.cuh) like the rest of a decode step: each hides the launch gap after the kernel
  // before it, and o_proj's GEMV reads its first weights while the combine runs.
  launch_pdl(decode_split_kernel<DH>, dim3(unsigned(b.S * a.nkv), unsigned(sp.splits)), dim3(128), smem, st, a, b,
             sp.split_len, sp.partials, sp.splits);
  if (sp.splits > 1)
    launch_pdl(decode_combine_kernel<DH>, dim3(unsigned(b.T), unsigned(a.nq)), dim3(DH), 0, st, a, b, sp.split_len,
               static_cast<const float*>(sp.partials), sp.splits);
}

}  // namespace

template <typename T>
void rope_and_cache(cudaStream_t st, const AttnArgs& a, const DevBatch& b) {
  if (b.T == 0) return;
  launch_pdl(rope_cache_kernel<T>, dim3(unsigned(b.T), unsigned(a.nq + 2 * a.nkv)), dim3(64), 0, st, a, b);
}

DecodeSplit decode_split_plan(bool bf16, int nq, int nkv, int dh, int S, int ctx_cap) {
  DecodeSplit sp;
  if (!bf16 || (dh != 64 && dh != 128) || nkv <= 0 || nq % nkv || nq / nkv > 16 || S <= 0) return sp;
  const int sms = sm_count();
  // Blocks of (sequence, kv head, split): ~4 per SM (2-3 fit at once; the rest even out the lengths), splits of
  // at least 256 keys (shorter ones would spend more on the combine than they save).
  const int64_t pairs = int64_t(S) * nkv;
  int splits = 1;
  while (splits < 128 && pairs * splits < 4 * sms && ctx_cap / (2 * splits) >= 256) splits *= 2;
  sp.splits = splits;
  sp.split_len = std::max(ctx_cap / splits, kDecBK);
  return sp;
}

size_t decode_split_floats(const DecodeSplit& sp, int T, int nq, int dh) {
  return sp.splits > 1 ? size_t(T) * size_t(nq) * size_t(sp.splits) * size_t(dh + 2) : 0;
}

template <typename T>
void attention_decode_split(cudaStream_t st, const AttnArgs& a, const DevBatch& b, const DecodeSplit& split) {
  if (b.T == 0) return;
  if constexpr (!std::is_same_v<T, bf16>) {
    fail("internal: the split decode attention is bf16 only");
  } else {
    if (b.T != b.S) fail("internal: the split decode attention takes one token per sequence");
    if (split.splits < 1 || (split.splits > 1 && !split.partials) || split.split_len % kDecBK || a.nq % a.nkv ||
        a.nq / a.nkv > 16 || (a.dh != 64 && a.dh != 128))
      fail("internal: split decode attention planned for a shape it does not take");
    if (a.dh == 64) launch_decode_split<64>(st, a, b, split);
    else launch_decode_split<128>(st, a, b, split);
  }
}

template <typename T>
void attention(cudaStream_t st, const AttnArgs& a, const DevBatch& b, int max_seq_len) {
  if (b.T == 0) return;
  if (a.nq % a.nkv) fail("cuda attention: n_heads ", a.nq, " is not a multiple of n_kv_heads ", a.nkv);
  // Prompts (any sequence with more than one new token) on bf16 tensor cores when the head size suits them;
  // decode steps (one token per sequence, replayed from CUDA graphs) keep the CUDA-core kernel below unless the
  // backend chose attention_decode_split (bf16, not under batch invariance).
  if constexpr (std::is_same_v<T, bf16>) {
    if (max_seq_len > 1 && b.n_chunks > 0 && (a.dh == 64 || a.dh == 128)) {
      if (a.dh == 64) launch_flash<64>(st, a, b);
      else launch_flash<128>(st, a, b);
      CUDA_LAUNCH_CHECK();
      return;
    }
  }
  dim3 grid(unsigned(b.T), unsigned(a.nq));
  const int dj = (a.dh + 31) / 32;
  if (dj == 1) attention_kernel<T, 1><<<grid, 128, 0, st>>>(a, b);
  else if (dj == 2) attention_kernel<T, 2><<<grid, 128, 0, st>>>(a, b);
  else if (dj <= 4) attention_kernel<T, 4><<<grid, 128, 0, st>>>(a, b);
  else if (dj <= 8) attention_kernel<T, 8><<<grid, 128, 0, st>>>(a, b);
  else fail("cuda attention: head_dim ", a.dh, " > 256 is not supported");
  CUDA_LAUNCH_CHECK();
}

#define INST(T)                                                                        \
  template void rope_and_cache<T>(cudaStream_t, const AttnArgs&, const DevBatch&);      \
  template void attention<T>(cudaStream_t, const AttnArgs&, const DevBatch&, int);                        \
  template void attention_decode_split<T>(cudaStream_t, const AttnArgs&, const DevBatch&, const DecodeSplit&);
BAMBA_CUDA_DTYPES(INST)
#undef INST

}  // namespace bamba::cuda
