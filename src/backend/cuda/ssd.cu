// The SSD recurrence S_t = exp(Δ_t A) S_{t-1} + Δ_t x_t B_tᵀ, y_t = S_t C_t + D x_t (docs/bamba-model.md §3.2),
// per (sequence, head), with the state [P, N] in registers. The slot's state is stored as ST (float, or bf16 to
// halve the state traffic of large decode batches); it is read into fp32 registers and rounded once per step.
//
// Layout: a block of 8 warps owns one head; warp w holds state rows p = w, w+8, ... and lane l holds columns
// n = l, l+32, ... of each, so the state loads/stores of a warp are 128-byte rows (coalesced) and y[p] is one
// warp reduction. B, C and x of the current token are staged in shared memory for the whole block.
//
// Decode (one token per sequence) runs the recurrence directly from the slot: grid (S, nh), one step each.
// Prefill splits every sequence into chunks of Q tokens (never crossing sequences) so that thousands of blocks
// run at once instead of nh per sequence, in three passes:
//   1. per (chunk, head): the chunk's own final state from zero, and its total decay Σ Δ A;
//   2. per (sequence, head, state element): walk the chunks in order, turning each chunk's local state into the
//      state entering it (Sin[c+1] = exp(ΣΔA_c) Sin[c] + S_c) and writing the sequence's final state to its slot;
//   3. per (chunk, head): the recurrence again from Sin[c], now writing y.
// This is the sequential recurrence re-associated only at chunk boundaries, so it matches the CPU oracle to fp32
// rounding; it costs twice the recurrence's FLOPs. bf16 prefill of the shapes it takes goes instead to the
// tensor-core chunked form (ssd_chunked.cu); this file keeps fp32 compute, decode and the other shapes.
#include <algorithm>
#include <type_traits>

#include "backend/cuda/kernels.cuh"
#include "backend/cuda/ssd_chunked.cuh"

namespace bamba::cuda {
namespace {

constexpr int kWarps = 8;
enum Mode { kSeq = 0, kChunkLocal = 1, kChunkOut = 2 };

struct ChunkList {
  const int32_t* seq;    // [nchunks] sequence of chunk k
  const int32_t* begin;  // [nchunks] first token row
  const int32_t* first;  // [S+1] first chunk of sequence s
  int Q;
};

template <typename T, typename ST, int NJ, int RP, int MODE>
__global__ void __launch_bounds__(kWarps * 32) ssd_kernel(SsdArgs a, DevBatch b, ChunkList cl, float* scr, float* dec) {
  const T* xBC = static_cast<const T*>(a.xBC);
  const T* dt = static_cast<const T*>(a.dt);
  T* y = static_cast<T*>(a.y);
  extern __shared__ float sm[];  // [stage_tokens][B N | C N | x P], then Δ [stage_tokens]
  const int h = blockIdx.y, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int P = a.P, N = a.N, I = a.nh * a.P;
  const int g = h / (a.nh / a.G);
  int s, t_begin, n;
  if (MODE == kSeq) {
    s = blockIdx.x;
    t_begin = b.seq_start[s];
    n = b.seq_start[s + 1] - t_begin;
  } else {
    s = cl.seq[blockIdx.x];
    t_begin = cl.begin[blockIdx.x];
    n = min(cl.Q, b.seq_start[s + 1] - t_begin);
  }
  const float A = -expf(ld_param(a.A_log, h)), Dh = ld_param(a.D, h), dtb = ld_param(a.dt_bias, h);
  // [P, N]; read if past > 0, written in kSeq mode unless the slot is -1 (a fresh sequence whose state is not kept)
  ST* slot_state = static_cast<ST*>(a.state) + (int64_t(max(b.slot[s], 0)) * a.nh + h) * P * N;
  const bool keep = b.slot[s] >= 0;
  float* chunk_state = scr + (int64_t(blockIdx.x) * a.nh + h) * P * N;     // [P, N] (chunk modes)

  float st[RP][NJ];
  const bool from_slot = MODE == kSeq && b.past_len[s] > 0, from_chunk = MODE == kChunkOut;
#pragma unroll
  for (int r = 0; r < RP; ++r)
#pragma unroll
    for (int j = 0; j < NJ; ++j) {
      const int p = warp + kWarps * r, nn = lane + 32 * j;
      const bool in = p < P && nn < N;
      st[r][j] = in && from_slot ? to_f(slot_state[p * N + nn]) : in && from_chunk ? chunk_state[p * N + nn] : 0.f;
    }

  // Tokens are staged L at a time (B | C | x per token, then Δ), so the sequential loop below runs from shared
  // memory with no barrier or global load between steps.
  const int W3 = 2 * N + P, L = a.stage_tokens;
  float* sdelta = sm + L * W3;
  float dsum = 0.f;  // Σ Δ A over the tokens (chunk-local pass)
  for (int i0 = 0; i0 < n; i0 += L) {
    const int cnt = min(L, n - i0);
    __syncthreads();
    for (int idx = threadIdx.x; idx < cnt * W3; idx += blockDim.x) {
      const int li = idx / W3, k = idx - li * W3;
      const T* row = xBC + (t_begin + i0 + li) * a.ldx;
      sm[idx] = to_f(k < N ? row[I + g * N + k] : k < 2 * N ? row[I + a.G * N + g * N + (k - N)] : row[h * P + (k - 2 * N)]);
    }
    for (int li = threadIdx.x; li < cnt; li += blockDim.x) {
      const float delta = softplus_f(to_f(dt[(t_begin + i0 + li) * a.lddt + h]) + dtb);
      sdelta[li] = fminf(fmaxf(delta, a.dt_min), a.dt_max);
    }
    __syncthreads();
    for (int li = 0; li < cnt; ++li) {
      const int64_t t = t_begin + i0 + li;
      const float* Bs = sm + li * W3;
      const float* Cs = Bs + N;
      const float* xs = Cs + N;
      const float delta = sdelta[li];
      const float dA = expf(delta * A);
      dsum += delta * A;
#pragma unroll
      for (int r = 0; r < RP; ++r) {
        const int p = warp + kWarps * r;
        if (p >= P) break;  // warp-uniform
        const float dx = delta * xs[p];
        float acc = 0.f;
#pragma unroll
        for (int j = 0; j < NJ; ++j) {
          const int nn = lane + 32 * j;
          if (nn < N) {
            st[r][j] = dA * st[r][j] + dx * Bs[nn];
            acc += Cs[nn] * st[r][j];
          }
        }
        if (MODE != kChunkLocal) {
          acc = warp_sum(acc);
          if (lane == 0) y[t * a.ldy + h * P + p] = from_f<T>(acc + Dh * xs[p]);
        }
      }
    }
  }
  if constexpr (MODE != kChunkOut) {
    if (MODE == kSeq && !keep) return;
#pragma unroll
    for (int r = 0; r < RP; ++r)
#pragma unroll
      for (int j = 0; j < NJ; ++j) {
        const int p = warp + kWarps * r, nn = lane + 32 * j;
        if (p < P && nn < N) {
          if (MODE == kSeq) slot_state[p * N + nn] = from_f<ST>(st[r][j]);
          else chunk_state[p * N + nn] = st[r][j];
        }
      }
    if (MODE == kChunkLocal && threadIdx.x == 0) dec[blockIdx.x * a.nh + h] = dsum;
  }
}

// Pass 2: thread per state element of (sequence blockIdx.z, head blockIdx.y); a serial walk over the chunks.
template <typename ST>
__global__ void ssd_chunk_carry_kernel(SsdArgs a, DevBatch b, ChunkList cl, float* scr, const float* dec) {
  const int s = blockIdx.z, h = blockIdx.y;
  const int64_t PN = int64_t(a.P) * a.N;
  const int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (e >= PN) return;
  ST* slot_state = static_cast<ST*>(a.state) + (int64_t(max(b.slot[s], 0)) * a.nh + h) * PN;
  float run = b.past_len[s] > 0 ? to_f(slot_state[e]) : 0.f;
  for (int k = cl.first[s]; k < cl.first[s + 1]; ++k) {
    float* c = scr + (int64_t(k) * a.nh + h) * PN + e;
    const float local = *c;
    *c = run;  // the state entering chunk k
    run = expf(dec[k * a.nh + h]) * run + local;
  }
  if (b.slot[s] >= 0) slot_state[e] = from_f<ST>(run);  // slot -1: not kept
}

template <typename T, typename ST, int NJ, int RP>
void launch(cudaStream_t st, const SsdArgs& a_in, const DevBatch& b, bool chunked, float* scratch) {
  SsdArgs a = a_in;
  a.stage_tokens = std::max(1, std::min(32, int(40960 / ((2 * a.N + a.P + 1) * sizeof(float)))));
  const size_t smem = size_t(a.stage_tokens) * size_t(2 * a.N + a.P + 1) * sizeof(float);
  if (!chunked) {
    ssd_kernel<T, ST, NJ, RP, kSeq><<<dim3(unsigned(b.S), unsigned(a.nh)), kWarps * 32, smem, st>>>(a, b, {}, nullptr, nullptr);
    CUDA_LAUNCH_CHECK();
    return;
  }
  ChunkList cl{b.chunk_seq, b.chunk_begin, b.chunk_first, b.chunk_q};
  float* dec = scratch;
  float* scr = scratch + ((int64_t(b.n_chunks) * a.nh + 31) / 32) * 32;
  dim3 grid(unsigned(b.n_chunks), unsigned(a.nh));
  ssd_kernel<T, ST, NJ, RP, kChunkLocal><<<grid, kWarps * 32, smem, st>>>(a, b, cl, scr, dec);
  CUDA_LAUNCH_CHECK();
  ssd_chunk_carry_kernel<ST><<<dim3(ceil_div(int64_t(a.P) * a.N, 256), unsigned(a.nh), unsigned(b.S)), 256, 0, st>>>(
      a, b, cl, scr, dec);
  CUDA_LAUNCH_CHECK();
  ssd_kernel<T, ST, NJ, RP, kChunkOut><<<grid, kWarps * 32, smem, st>>>(a, b, cl, scr, dec);
  CUDA_LAUNCH_CHECK();
}

template <typename T, typename ST, int NJ>
void launch_rp(cudaStream_t st, const SsdArgs& a, const DevBatch& b, bool chunked, float* scratch) {
  const int rp = (a.P + kWarps - 1) / kWarps;
  if (rp <= 2) launch<T, ST, NJ, 2>(st, a, b, chunked, scratch);
  else if (rp <= 8) launch<T, ST, NJ, 8>(st, a, b, chunked, scratch);
  else if (rp <= 16) launch<T, ST, NJ, 16>(st, a, b, chunked, scratch);
  else fail("cuda ssd: head_dim ", a.P, " > ", 16 * kWarps, " is not supported");
}

}  // namespace

size_t ssd_scratch_floats(const SsdArgs& a, const DevBatch& b, int max_seq_len, bool bf16_compute) {
  if (bf16_compute && ssd_chunked_takes(a, b, max_seq_len)) return ssd_chunked_scratch_floats(a, b);
  if (max_seq_len <= b.chunk_q || b.n_chunks == 0) return 0;
  const int64_t nc = b.n_chunks;
  return size_t((nc * a.nh + 31) / 32 * 32) + size_t(nc) * size_t(a.nh) * size_t(a.P) * size_t(a.N);
}

template <typename T, typename ST>
void ssd(cudaStream_t st, const SsdArgs& a, const DevBatch& b, int max_seq_len, float* scratch, size_t scratch_floats) {
  if (b.T == 0) return;
  if (a.nh % a.G) fail("cuda ssd: n_heads ", a.nh, " is not a multiple of n_groups ", a.G);
  if constexpr (std::is_same_v<T, bf16>) {
    if (ssd_chunked_takes(a, b, max_seq_len)) {
      if (scratch_floats < ssd_chunked_scratch_floats(a, b)) fail("internal: ssd scratch too small");
      ssd_chunked<ST>(st, a, b, max_seq_len, scratch);
      return;
    }
  }
  // Chunk only when some sequence is long enough for the per-sequence blocks to be too few or too serial.
  const bool chunked = max_seq_len > b.chunk_q && b.n_chunks > 0;
  if (chunked && scratch_floats < ssd_scratch_floats(a, b, max_seq_len, false)) fail("internal: ssd scratch too small");
  const int nj = (a.N + 31) / 32;
  if (nj == 1) launch_rp<T, ST, 1>(st, a, b, chunked, scratch);
  else if (nj == 2) launch_rp<T, ST, 2>(st, a, b, chunked, scratch);
  else if (nj <= 4) launch_rp<T, ST, 4>(st, a, b, chunked, scratch);
  else fail("cuda ssd: d_state ", a.N, " > 128 is not supported");
}

#define INST_ST(T, ST) template void ssd<T, ST>(cudaStream_t, const SsdArgs&, const DevBatch&, int, float*, size_t);
#define INST(T) INST_ST(T, float) INST_ST(T, bf16)
BAMBA_CUDA_DTYPES(INST)
#undef INST
#undef INST_ST

}  // namespace bamba::cuda
