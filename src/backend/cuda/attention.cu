// Attention for the 3 attention layers of Bamba: partial NeoX RoPE on q and k, the new k/v appended to the
// paged cache, then softmax(q kᵀ · scale) v over each token's sequence: cached keys plus the new ones, causal,
// GQA (q head h reads kv head h / (nq / nkv)).
#include "backend/cuda/kernels.cuh"

namespace bamba::cuda {
namespace {

__device__ __forceinline__ int64_t cache_row(const DevBatch& b, int s, int pos, int block_size) {
  const int blk = b.block_table[int64_t(s) * b.max_blocks[0] + pos / block_size];
  return int64_t(blk) * block_size + pos % block_size;
}

// Block per (token, head of q|k|v); each element is handled by one thread (the rotated pair (d, d + R/2) by the
// thread of d), so rotating in place needs no barrier. k and v go to the cache row past_len + i of the sequence.
// (One block per token looping over all heads was 30 µs per decode step: a serial chain of sincos.)
__global__ void rope_cache_kernel(AttnArgs a, DevBatch b) {
  const int t = blockIdx.x, s = b.seq_of[t], head = blockIdx.y;
  const int pos_cache = b.past_len[s] + t - b.seq_start[s];
  const int64_t kv_off = cache_row(b, s, pos_cache, a.block_size) * a.nkv * a.dh;
  const float pos = float(b.positions[t]);
  const int half = a.rot / 2, nqk = a.nq + a.nkv;
  bf16* q = a.qkv + int64_t(t) * a.ldq;
  for (int d = threadIdx.x; d < a.dh; d += blockDim.x) {
    bf16* v = q + head * a.dh;
    if (head >= nqk) {
      a.v_pages[kv_off + (head - nqk) * a.dh + d] = v[d];
      continue;
    }
    bf16* kdst = head >= a.nq ? a.k_pages + kv_off + (head - a.nq) * a.dh : nullptr;
    if (d < half) {
      float si, co;
      sincosf(pos * a.inv_freq[d], &si, &co);
      const float x0 = to_f(v[d]), x1 = to_f(v[d + half]);
      const bf16 y0 = to_bf(x0 * co - x1 * si), y1 = to_bf(x1 * co + x0 * si);
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
template <int DJ>
__global__ void __launch_bounds__(128) attention_kernel(AttnArgs a, DevBatch b) {
  __shared__ float sm_m[4], sm_l[4], sm_acc[4][DJ * 32];
  const int t = blockIdx.x, h = blockIdx.y, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int s = b.seq_of[t];
  const int len = b.past_len[s] + t - b.seq_start[s] + 1;
  const int kh = h / (a.nq / a.nkv);
  float qv[DJ], acc[DJ];
#pragma unroll
  for (int j = 0; j < DJ; ++j) {
    const int d = lane + 32 * j;
    qv[j] = d < a.dh ? a.scale * to_f(a.qkv[int64_t(t) * a.ldq + h * a.dh + d]) : 0.f;
    acc[j] = 0.f;
  }
  float m = -INFINITY, l = 0.f;
  for (int p = warp; p < len; p += 4) {
    const int64_t base = cache_row(b, s, p, a.block_size) * a.nkv * a.dh + kh * a.dh;
    float dot = 0.f;
#pragma unroll
    for (int j = 0; j < DJ; ++j) {
      const int d = lane + 32 * j;
      if (d < a.dh) dot += qv[j] * to_f(a.k_pages[base + d]);
    }
    dot = warp_sum(dot);
    const float m_new = fmaxf(m, dot);
    const float corr = __expf(m - m_new), e = __expf(dot - m_new);
    l = l * corr + e;
#pragma unroll
    for (int j = 0; j < DJ; ++j) {
      const int d = lane + 32 * j;
      acc[j] = acc[j] * corr + (d < a.dh ? e * to_f(a.v_pages[base + d]) : 0.f);
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
    a.out[int64_t(t) * a.ldo + h * a.dh + d] = to_bf(o / L);
  }
}

}  // namespace

void rope_and_cache(cudaStream_t st, const AttnArgs& a, const DevBatch& b) {
  if (b.T == 0) return;
  rope_cache_kernel<<<dim3(unsigned(b.T), unsigned(a.nq + 2 * a.nkv)), 64, 0, st>>>(a, b);
  CUDA_LAUNCH_CHECK();
}

void attention(cudaStream_t st, const AttnArgs& a, const DevBatch& b, int max_seq_len) {
  if (b.T == 0) return;
  if (a.nq % a.nkv) fail("cuda attention: n_heads ", a.nq, " is not a multiple of n_kv_heads ", a.nkv);
  dim3 grid(unsigned(b.T), unsigned(a.nq));
  const int dj = (a.dh + 31) / 32;
  if (dj == 1) attention_kernel<1><<<grid, 128, 0, st>>>(a, b);
  else if (dj == 2) attention_kernel<2><<<grid, 128, 0, st>>>(a, b);
  else if (dj <= 4) attention_kernel<4><<<grid, 128, 0, st>>>(a, b);
  else if (dj <= 8) attention_kernel<8><<<grid, 128, 0, st>>>(a, b);
  else fail("cuda attention: head_dim ", a.dh, " > 256 is not supported");
  CUDA_LAUNCH_CHECK();
}

}  // namespace bamba::cuda
