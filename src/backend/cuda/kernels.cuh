// Launchers of the kernels in this folder, one op family per .cu file. Row-major 2-D activations are passed as
// (pointer, ld): ld is the element stride between rows, the rows themselves are contiguous. T is the element
// type of activations and 2-D weights (bf16 or float); each launcher is instantiated for both.
#pragma once
#include <cuda_runtime.h>

#include "backend/cuda/common.cuh"

namespace bamba::cuda {

// elementwise.cu
template <typename T>
void embed(cudaStream_t st, T* out, int64_t ldo, const T* table, int64_t ldt, int64_t H, const DevBatch& b);
template <typename T>
void add_inplace(cudaStream_t st, T* h, int64_t ldh, const T* x, int64_t ldx, int64_t M, int64_t N);
void add_bias(cudaStream_t st, void* y, bool y_f32, int64_t ldy, PView bias, int64_t M, int64_t N);
template <typename T>
void swiglu(cudaStream_t st, T* out, int64_t ldo, const T* gu, int64_t ldg, int64_t M, int64_t F);
// Elementwise ops of Bamba's relatives (docs/family.md), [M, N] views with row strides.
template <typename T>
void scale(cudaStream_t st, T* x, int64_t ldx, int64_t M, int64_t N, float s);
template <typename T>
void copy2d(cudaStream_t st, T* dst, int64_t ldd, const T* src, int64_t lds, int64_t M, int64_t N);
template <typename T>
void relu2(cudaStream_t st, T* out, int64_t ldo, const T* x, int64_t ldx, int64_t M, int64_t N);
template <typename T>
void geglu(cudaStream_t st, T* out, int64_t ldo, const T* gu, int64_t ldg, int64_t M, int64_t F);
template <typename T>
void silu_gate(cudaStream_t st, T* out, int64_t ldo, const T* y, int64_t ldy, const T* z, int64_t ldz, int64_t M, int64_t N);
template <typename T>
void gather_rows(cudaStream_t st, T* out, int64_t ldo, const T* x, int64_t ldx, int64_t N, const DevBatch& b);
void fill_uniform(cudaStream_t st, void* p, DType t, int64_t n, uint64_t seed, float lo, float hi);
void fill_value(cudaStream_t st, void* p, DType t, int64_t n, float v);
// dst[i] = src[i] converted; src_t any of F32/BF16/F16 (possibly unaligned bytes), dst_t F32 or BF16.
void convert(cudaStream_t st, void* dst, DType dst_t, const void* src, DType src_t, int64_t n);

// gemv.cu: y = x Wᵀ (+ bias) for M <= kMaxGemvRows rows. False (nothing launched) when the shapes or the
// alignment don't suit it (K, ldx, ldw multiples of 16 bytes and 16-byte aligned x, W); the caller then uses
// cuBLAS. y is T or, with y_f32, float.
constexpr int kMaxGemvRows = 8;
template <typename T>
bool gemv(cudaStream_t st, void* y, bool y_f32, int64_t ldy, const T* x, int64_t ldx, const T* W, int64_t ldw,
          PView bias, int M, int N, int K);

// invariant_matmul.cu: y = x Wᵀ with every y[m, n] the same chain of operations whatever M is (batch invariance,
// `--deterministic`): for bf16 one fp32 accumulator through mma.m16n8k16 over k in order, for fp32 one fma chain;
// no split-K, no choice by shape. y is T or, with y_f32, float (fp32 inputs: float only). No bias.
template <typename T>
void invariant_matmul(cudaStream_t st, void* y, bool y_f32, int64_t ldy, const T* x, int64_t ldx, const T* W,
                      int64_t ldw, int M, int N, int K);

// norm.cu
// out = rmsnorm(h (+= x)) * w, one block per row.
template <typename T>
void rmsnorm(cudaStream_t st, T* out, int64_t ldo, T* h, int64_t ldh, const T* x, int64_t ldx, PView w, int64_t M,
             int64_t H, float eps);
template <typename T>
void gated_rmsnorm(cudaStream_t st, T* out, int64_t ldo, const T* y, int64_t ldy, const T* z, int64_t ldz, PView w,
                   int64_t M, int64_t I, int64_t group, float eps);

// conv1d.cu (decode steps, T == S: one kernel, thread per (sequence, channel))
template <typename T>
void conv1d_silu(cudaStream_t st, T* out, int64_t ldo, const T* xBC, int64_t ldx, PView w, PView bias,
                 float* conv_state, int64_t CD, int64_t K, const DevBatch& b, int max_seq_len);

// ssd.cu (y, xBC, dt are T*, typed by the kernel's template parameter)
struct SsdArgs {
  void* y; int64_t ldy;
  const void* xBC; int64_t ldx;  // x | B | C, post-conv
  const void* dt; int64_t lddt;  // raw
  PView A_log, D, dt_bias;
  void* state;                   // [n_slots, nh, P, N], ST: float or bf16
  int nh, P, G, N, chunk;
  float dt_min, dt_max;
  int stage_tokens = 1;          // set by ssd(): tokens staged in shared memory at a time
};
template <typename T, typename ST>
void ssd(cudaStream_t st, const SsdArgs& a, const DevBatch& b, int max_seq_len, float* scratch, size_t scratch_floats);
// Scratch floats ssd() needs for this batch (0: none); bf16_compute: whether T is bf16 (the tensor-core path).
size_t ssd_scratch_floats(const SsdArgs& a, const DevBatch& b, int max_seq_len, bool bf16_compute);
// ssd_step.cu: the decode step (T == S) with vectorised state rows and P split over blocks. False (nothing
// launched) when the batch is not a decode step or the shape does not suit it (d_state % 4, d_state > 128).
// early_state: the kernel may read the slots' states before pdl_wait, i.e. while the kernel launched just before
// it still runs — only for a caller that knows that kernel does not write the state (see ssd_step.cu).
template <typename T, typename ST>
bool ssd_step(cudaStream_t st, const SsdArgs& a, const DevBatch& b, bool early_state = false);
// l2_prefetch.cu: each of `rows` rows (ld_bytes apart from base) has its first `bytes` asked of L2, by a kernel
// launched as a programmatic dependent that waits on the kernel before it. False (nothing launched) when the
// bytes, stride or base are not multiples of 16.
bool l2_prefetch_rows(cudaStream_t st, const void* base, int64_t ld_bytes, int64_t rows, int64_t bytes);
// ssd_step.cu: the per-position states of speculative decoding (DevBatch::state_after): for every sequence with a
// token t whose state_after[t] >= 0, the recurrence over its tokens from its slot's state (or zeros), writing
// the state after each such t into slot state_after[t]. Runs before ssd(), which overwrites the slot.
template <typename T, typename ST>
void ssd_keep_states(cudaStream_t st, const SsdArgs& a, const DevBatch& b);

// attention.cu (out, qkv and the pages are T*, typed by the kernel's template parameter)
struct AttnArgs {
  void* out; int64_t ldo;  // [T, nq*dh]
  void* qkv; int64_t ldq;  // [T, (nq + 2nkv) dh], rotated in place
  void* k_pages; void* v_pages;
  const float* inv_freq;   // [R/2]
  int nq, nkv, dh, rot, block_size;
  float scale;
};
template <typename T>
void rope_and_cache(cudaStream_t st, const AttnArgs& a, const DevBatch& b);
template <typename T>
void attention(cudaStream_t st, const AttnArgs& a, const DevBatch& b, int max_seq_len);

// moe.cu: mixture-of-experts routing and the expert MLPs as grouped GEMMs.
// route: logits [T, E] fp32 (ld) -> experts [T, k] int32, weights [T, k] fp32 (ld of each given).
struct MoeRouteArgs {
  const float* logits; int64_t ldl;
  PView bias;  // [E] or empty (F32 from a checkpoint, BF16 when generated)
  int32_t* experts; int64_t lde;
  float* weights; int64_t ldw;
  int T, E, k;
  int sigmoid_group;  // 0: softmax over the top k; 1: DeepSeek-V3 sigmoid grouped routing
  int n_group, topk_group, norm_topk_prob;
  float routed_scaling;
};
void moe_route(cudaStream_t st, const MoeRouteArgs& a);
// experts: out [T, H] = Σ_j w[t,j] down[e](act(up[e] x[t])). index: int32 scratch of 2 T k + 2E + 2 entries; up_rows
// [T k, U], act_rows [T k, F], down_rows [T k, H] scratch of T (ld given); act 0 SwiGLU, 1 relu².
struct MoeExpertsArgs {
  void* out; int64_t ldo;
  const void* x; int64_t ldx;
  const void* up; const void* down;  // [E, U, H], [E, H, F] contiguous
  const int32_t* experts; int64_t lde;
  const float* weights; int64_t ldw;
  int32_t* index;
  void* up_rows; int64_t ldu;
  void* act_rows; int64_t lda;
  void* down_rows; int64_t ldd;
  int T, H, E, k, U, F, act;
};
template <typename T>
void moe_experts(cudaStream_t st, const MoeExpertsArgs& a);
// route backward: dlogits [T, E] (compute dtype, =; zero outside the chosen) from dweights [T, k] fp32.
struct MoeRouteBackwardArgs {
  void* dlogits; int64_t ldd;
  const float* dweights; int64_t ldw;
  const float* logits; int64_t ldl;
  const int32_t* experts; int64_t lde;
  int T, E, k;
  int sigmoid_group, norm_topk_prob;
  float routed_scaling;
};
template <typename T>
void moe_route_backward(cudaStream_t st, const MoeRouteBackwardArgs& a);
// experts backward: dx [T, H] (=), dup [E, U, H] / ddown [E, H, F] fp32 (+=), dweights [T, k] fp32 (=); the
// scratch of moe_experts plus d_up [T k, U], d_act [T k, F].
struct MoeExpertsBackwardArgs {
  void* dx; int64_t lddx;
  float* dup; float* ddown;
  float* dweights; int64_t lddw;
  const void* dout; int64_t ldo;
  const void* x; int64_t ldx;
  const void* up; const void* down;
  const int32_t* experts; int64_t lde;
  const float* weights; int64_t ldw;
  int32_t* index;
  void* up_rows; int64_t ldu;
  void* act_rows; int64_t lda;
  void* down_rows; int64_t ldd;
  void* d_up; int64_t ld_dup;
  void* d_act; int64_t ld_dact;
  int T, H, E, k, U, F, act;
};
template <typename T>
void moe_experts_backward(cudaStream_t st, const MoeExpertsBackwardArgs& a);

// sample.cu
struct DevSampling {
  float temperature;
  int32_t top_k;
  float top_p;
  float u;  // the uniform draw
};
void sample(cudaStream_t st, const float* logits, int64_t ld, int64_t R, int64_t V, const DevSampling* params,
            int32_t* out);
// logits_processing.cu: Backend::process_logits on the rows listed (one block each). The layouts mirror
// LogitsRow / LogitEdit of backend.h.
struct DevLogitsRow {
  int32_t row;
  float repetition_penalty, min_p_shift;
  int32_t edit_begin, edit_count;
  int32_t pad_;
  int64_t mask_offset;  // in uint32 words; -1: no mask
};
struct DevLogitEdit {
  int32_t id, repeat;
  float bias, sub;
};
void process_logits(cudaStream_t st, float* logits, int64_t ld, int64_t V, int64_t n_rows, const DevLogitsRow* rows,
                    const DevLogitEdit* edits, const uint32_t* masks);
// For each of n (row, target) pairs: logprob = log_softmax(logits[row])[target], greedy = first argmax of the row.
void token_logprobs(cudaStream_t st, const float* logits, int64_t ld, int64_t V, int64_t n, const int32_t* rows,
                    const int32_t* targets, float* logprob, int32_t* greedy);

// ---- training (backward ops). Every sequence runs whole from a zero state (or ssd's state0). Activation
// gradients are T (=), parameter gradients fp32 (+=). Reductions run in a fixed order (per-block partials, then a
// second pass over them in order): no float atomics, the same step gives the same bits.
// `scratch` is device memory of the floats each launcher's *_scratch_floats asks for.

// backward.cu
// out[n] += Σ_m dy[m][n] (bias gradients)
template <typename T>
void column_sum(cudaStream_t st, float* out, const T* dy, int64_t ld, int64_t M, int64_t N, float* scratch);
size_t column_sum_scratch_floats(int64_t M, int64_t N);
// dtable[uniq[i]] += Σ_{k in [start[i], start[i+1])} dout[rows[k]], in that order (the host groups the rows)
template <typename T>
void embed_backward(cudaStream_t st, float* dtable, int64_t ldt, const T* dout, int64_t ldo, int64_t H,
                    const int32_t* uniq, const int32_t* start, const int32_t* rows, int n_uniq);
// dx = dout ⊙ 2·relu(x)   (out = relu(x)²)
template <typename T>
void relu2_backward(cudaStream_t st, T* dx, int64_t lddx, const T* dout, int64_t ldo, const T* x, int64_t ldx,
                    int64_t M, int64_t N);
// dy = dout ⊙ silu(z), dz = dout ⊙ y ⊙ silu'(z)   (out = y ⊙ silu(z))
template <typename T>
void silu_gate_backward(cudaStream_t st, T* dy, int64_t lddy, T* dz, int64_t lddz, const T* dout, int64_t ldo,
                        const T* y, int64_t ldy, const T* z, int64_t ldz, int64_t M, int64_t N);
template <typename T>
void swiglu_backward(cudaStream_t st, T* dgu, int64_t lddg, const T* dout, int64_t ldo, const T* gu, int64_t ldg,
                     int64_t M, int64_t F);
// dgu = d(gelu(gate) ⊙ up) with the exact GELU   (out = geglu(gu))
template <typename T>
void geglu_backward(cudaStream_t st, T* dgu, int64_t lddg, const T* dout, int64_t ldo, const T* gu, int64_t ldg,
                    int64_t M, int64_t F);
// dx (= or, with accumulate, +=) and dw += Σ_rows dout ⊙ x̂ for out = rmsnorm(x) ⊙ w
template <typename T>
void rmsnorm_backward(cudaStream_t st, T* dx, int64_t lddx, float* dw, const T* dout, int64_t ldo, const T* x,
                      int64_t ldx, PView w, int64_t M, int64_t H, float eps, bool accumulate, float* scratch);
size_t rmsnorm_backward_scratch_floats(int64_t M, int64_t H);
template <typename T>
void gated_rmsnorm_backward(cudaStream_t st, T* dy, int64_t lddy, T* dz, int64_t lddz, float* dw, const T* dout,
                            int64_t ldo, const T* y, int64_t ldy, const T* z, int64_t ldz, PView w, int64_t M,
                            int64_t I, int64_t group, float eps, float* scratch);
size_t gated_rmsnorm_backward_scratch_floats(int64_t M, int64_t I, int64_t group);
// causal depthwise conv + SiLU over each sequence from zero padding: dx (=), dw [CD, K] and dbias += (fp32)
template <typename T>
void conv1d_silu_backward(cudaStream_t st, T* dx, int64_t lddx, float* dw, float* dbias, const T* dout, int64_t ldo,
                          const T* x, int64_t ldx, PView w, PView bias, int64_t CD, int64_t K, const DevBatch& b,
                          float* scratch);
size_t conv1d_silu_backward_scratch_floats(int64_t T, int64_t CD, int64_t K);

// ssd_backward.cu
struct SsdBwdArgs {
  void* dxBC; int64_t lddx;        // [T, I + 2GN]
  void* ddt; int64_t ldddt;        // [T, nh]
  float *dA_log, *dD, *ddt_bias;   // [nh] +=
  float* dstate0;                  // [S, nh, P, N] =, or null
  const void* dy; int64_t lddy;    // [T, I]
  const void* xBC; int64_t ldx;    // post-conv x | B | C
  const void* dt; int64_t lddt;    // raw
  PView A_log, D, dt_bias;
  const float* state0;             // [S, nh, P, N] or null (zeros)
  int nh, P, G, N;
  float dt_min, dt_max;
};
template <typename T>
void ssd_backward(cudaStream_t st, const SsdBwdArgs& a, const DevBatch& b, int max_seq_len, float* scratch);
// bf16: whether the compute dtype is bf16 (then the chunked tensor-core form may take the call)
size_t ssd_backward_scratch_floats(const SsdBwdArgs& a, const DevBatch& b, int max_seq_len, bool bf16);

// attention_backward.cu: dqkv w.r.t. the unrotated qkv from the rotated one (a.qkv), recomputing softmax rows
template <typename T>
void attention_backward(cudaStream_t st, T* dqkv, int64_t lddq, const T* dout, int64_t ldo, const AttnArgs& a,
                        const DevBatch& b, float* scratch);
size_t attention_backward_scratch_floats(const AttnArgs& a, const DevBatch& b);

// cross_entropy.cu: for R rows of fp32 logits (ld V): loss[r] = ce·(lse − logit[target]) [target ≥ 0] + z·lse², and
// the logits' gradient written as T into dlogits (may alias logits when T is float).
template <typename T>
void cross_entropy_rows(cudaStream_t st, const float* logits, T* dlogits, int64_t R, int64_t V, const int32_t* targets,
                        float ce_scale, float z_scale, float* loss);

// adamw.cu: one AdamW update of n fp32 master weights (see train/adamw.h), optionally writing the compute-dtype
// copy the model reads. m, v fp32, or bf16 with stochastic rounding from (key, element index). lo null: w is the
// fp32 master; else the master is split (core/bf16_split.h): w the bf16 weight the model reads (its top half, no
// copy then), lo [n] the low halves.
struct AdamWArgs {
  float step_size, bc2_sqrt, eps, one_minus_b1, b2, one_minus_b2, decay, grad_scale;
  uint64_t key;  // bf16 moments: the per-(step, parameter) hash key
};
void adamw_step(cudaStream_t st, void* w, uint16_t* lo, const float* g, void* m, void* v, bool bf16_moments, int64_t n,
                const AdamWArgs& a, void* model_copy, DType model_dtype);
// The same update of many tensors in one launch (adamw_step's arithmetic and rounding bits, element for element):
// `table` (device memory) lists them in order, each with the first of its adamw_many_blocks(n) blocks; `blocks`
// is the total. a.decay and a.key are unused (each tensor has its own).
struct AdamWTensorArgs {
  void* w;       // fp32 master, or the bf16 weight when lo is set
  uint16_t* lo;  // a split master's low halves, or null
  const float* g;
  void* m;
  void* v;
  void* copy;  // the model's compute-dtype copy, or null
  int64_t n, first_block;
  uint64_t key;
  float decay;
  int copy_bf16;
};
int64_t adamw_many_blocks(int64_t n);
void adamw_step_many(cudaStream_t st, const AdamWTensorArgs* table, int n_tensors, int64_t blocks, bool bf16_moments,
                     const AdamWArgs& a);
// Σ g² of many tensors in one launch: tensor i's blocks_for_sum_sq(n) partials (the bits sum_sq_partials gives)
// at partial[first_block ...]; `blocks` the total.
struct SumSqTensorArgs {
  const float* g;
  int64_t n, first_block;
  int blocks;
};
void sum_sq_many_partials(cudaStream_t st, const SumSqTensorArgs* table, int n_tensors, int64_t blocks,
                          double* partial);
// Σ g² over n floats in double, as per-block partials into `partial` (blocks_for_sum_sq(n) doubles, fixed order).
int blocks_for_sum_sq(int64_t n);
void sum_sq_partials(cudaStream_t st, const float* g, int64_t n, double* partial);
void scale_inplace(cudaStream_t st, float* g, int64_t n, float c);

}  // namespace bamba::cuda
