// Backend: memory and the small set of ops a forward step is written in (model/hybrid.cpp). The CPU backend is
// the readable fp32 oracle; a GPU backend implements the same ops with its own kernels and dtypes.
//
// Conventions. Activations are 2-D [rows, cols] views whose rows may be strided (Tensor::ld); the row index is
// the token index t of the current StepBatch (set_batch). Weights are [out, in] like nn.Linear. Per-sequence
// state lives in the HybridCache tensors passed in; a sequence with past_len == 0 starts from a zero state,
// whatever its slot holds.
#pragma once
#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "backend/step_batch.h"
#include "io/safetensors.h"

namespace bamba {

struct MambaOpsConfig {
  int64_t n_heads, d_head, n_groups, d_state, d_conv, chunk_size;
  float time_step_min, time_step_max;
};

struct AttentionOpsConfig {
  int64_t n_heads, n_kv_heads, head_dim, rotary_dim, block_size;
  float rope_theta, scale;
  // HF keeps inv_freq as a buffer that model.to(dtype) rounds: a bf16 checkpoint rotates with bf16-rounded
  // frequencies (the angle error grows with the position), so we round them the same way.
  DType inv_freq_dtype;
  // llama3 frequency scaling (rope_type "llama3"; factor 0 = none): wavelengths longer than
  // original_max / low_freq_factor are divided by factor, shorter than original_max / high_freq_factor kept,
  // the band between interpolated.
  float rope_factor = 0.f, rope_low_freq_factor = 1.f, rope_high_freq_factor = 4.f;
  int64_t rope_original_max_position = 8192;
};

// inv_freq[j] = 1 / theta^(2j / R), j < R/2, computed in fp32 as HF does (then the llama3 rescaling of
// transformers' _compute_llama3_parameters when c.rope_factor > 0) and rounded to c.inv_freq_dtype.
std::vector<float> rope_inv_freq(const AttentionOpsConfig& c);

// Mixture-of-experts routing (Backend::moe_route): which k experts each token goes to and with what weight.
enum class MoeRouting : uint8_t {
  // GraniteMoeHybrid: the k largest router logits, weights = softmax over those k.
  SoftmaxTopK,
  // Nemotron-H (DeepSeek-V3): s = sigmoid(logits); choose on s + bias: per group of E / n_group experts the sum of
  // its two best, keep the topk_group best groups, then the k best experts in them; weights = s of the chosen
  // (unbiased), / (their sum + 1e-20) if norm_topk_prob, × routed_scaling.
  SigmoidGroup,
};
struct MoeOpsConfig {
  int64_t n_experts, top_k;
  MoeRouting routing;
  int64_t n_group = 1, topk_group = 1;
  bool norm_topk_prob = true;
  float routed_scaling = 1.f;
};
// The expert MLP: SwiGLU (up rows = gate | up, 2F of them) or relu² (F up rows).
enum class ExpertAct : uint8_t { SwiGLU, Relu2 };
// Buffers moe_experts works in, sized for T tokens of k experts each (the Workspace owns them).
struct MoeScratch {
  Tensor up;     // [T k, U]   the gathered rows' up projections
  Tensor act;    // [T k, F]
  Tensor down;   // [T k, H]
  Tensor index;  // [2 T k + 2 E + 2] I32: the (token, slot) pairs sorted by expert and back, group offsets, tiles
  // moe_experts_backward only (a GPU backend's; the CPU twin needs none): the gradients of the gathered rows
  Tensor d_up = {};   // [T k, U]
  Tensor d_act = {};  // [T k, F]
};

// How one logits row is turned into a token (Backend::sample). temperature <= 0 or top_k == 1: greedy (the first
// index of the maximum). Otherwise softmax(logits / temperature) restricted to the top_k largest (0 = all) and
// then to the smallest set of largest whose probability reaches top_p (1 = all), renormalised, and drawn with
// the uniform number hash_uniform(seed, 0, 0, 1) (core/hash_uniform.h): the caller makes the seed unique per
// request and step. Within that set, tokens are ordered by index (so the CPU and GPU pick the same token
// except where rounding moves the draw across a boundary).
struct SamplingParams {
  float temperature = 0.f;
  int32_t top_k = 0;
  float top_p = 1.f;
  uint64_t seed = 0;
};
void check_sampling(const SamplingParams& p);  // Error naming the bad field

// What is done to some logits rows before sampling (Backend::process_logits), in vLLM's order:
//   1. the allowed-token mask (structured output): tokens whose bit is clear become -inf;
//   2. the sparse per-token edits: x += bias (logit_bias); then, for tokens of the prompt or the output,
//      the repetition penalty x = x > 0 ? x / r : x * r; then x -= sub (frequency_penalty * count +
//      presence_penalty, over output tokens; the caller folds both into `sub`);
//   3. min_p: tokens whose probability at the row's temperature is below min_p times the largest become -inf,
//      i.e. x < max(x) + min_p_shift with min_p_shift = temperature * ln(min_p) (computed by the caller in fp32,
//      so every backend compares against the same threshold).
// Logprobs are taken before this (vLLM's raw logprobs). The ids of one row's edits are distinct.
struct LogitEdit {
  int32_t id;
  int32_t repeat;  // != 0: in the prompt or the output (the repetition penalty applies)
  float bias, sub;
};
struct LogitsRow {
  int32_t row = 0;                   // the logits row
  float repetition_penalty = 1.f;
  float min_p_shift = -std::numeric_limits<float>::infinity();  // -inf: no min_p (nothing is below max - inf)
  int32_t edit_begin = 0, edit_count = 0;  // edits[edit_begin, edit_begin + edit_count)
  int64_t mask_offset = -1;          // masks[mask_offset, + ceil(V / 32)): bit j of word j / 32 = token j allowed
};
struct LogitsProcessing {
  std::vector<LogitsRow> rows;
  std::vector<LogitEdit> edits;
  std::vector<uint32_t> masks;
};
// The definition, for one row x[0, V) (the CPU backend runs it; GPU kernels are tested against it).
void process_logits_row(float* x, int64_t V, const LogitsRow& r, const LogitEdit* edits, const uint32_t* mask);
// One AdamW update's scalars (train/adamw.h computes them in double once per step and parameter):
//   w ← w·decay;  g' = g·grad_scale;  m ← m + (1−β1)(g' − m);  v ← β2 v + (1−β2) g'²;
//   w ← w − step_size · m / (√v / bc2_sqrt + eps)
// key: the stochastic-rounding hash key of bf16 moments (element j draws splitmix64(key + j)).
struct AdamWUpdate {
  float step_size, bc2_sqrt, eps, one_minus_b1, b2, one_minus_b2, decay, grad_scale;
  uint64_t key;
};

// One tensor of Backend::adamw_update_many: its buffers (as adamw_update takes them) and its own decay and key.
struct AdamWTensor {
  Tensor w, g, m, v, model_copy;
  float decay = 1.f;
  uint64_t key = 0;
  Tensor w_lo;  // a split master's low halves (Backend::adamw_update)
};

// Error("<op>_backward: not implemented on <backend>"): the default of every Backend::*_backward.
[[noreturn]] void backward_not_implemented(const char* op, const std::string& backend);

class Backend {
 public:
  virtual ~Backend() = default;
  virtual Device device() const = 0;
  virtual std::string name() const = 0;
  virtual DType weight_dtype() const = 0;      // what load_weight stores
  virtual DType activation_dtype() const = 0;  // what alloc_activation uses

  // ---- memory (owned by the backend; freed when it is destroyed or by release)
  virtual Tensor alloc(DType dtype, std::initializer_list<int64_t> shape) = 0;  // zero-filled
  virtual void release(Tensor t) = 0;
  // The most device memory this backend has held at once (bytes), or -1 when it does not track it.
  virtual int64_t peak_memory_bytes() const { return -1; }
  Tensor alloc_activation(std::initializer_list<int64_t> shape) { return alloc(activation_dtype(), shape); }

  // Copies `parts` (checkpoint tensors, any float dtype, possibly unaligned) concatenated along dim 0 into a new
  // weight tensor of `shape`. The caller has checked the shapes. F8_E4M3 parts (all of them) are kept as they are:
  // an F8_E4M3 tensor whose scales the caller attaches (Tensor::scale; model/quantization.h).
  virtual Tensor load_weight(std::span<const TensorInfo* const> parts, std::initializer_list<int64_t> shape) = 0;
  // Fills t with values uniform in [lo, hi): element i gets hash(seed, i), identical on every backend.
  virtual void fill_uniform(Tensor t, uint64_t seed, float lo, float hi) = 0;
  virtual void fill(Tensor t, float value) = 0;
  virtual void to_host_f32(Tensor src, float* dst) = 0;  // contiguous src
  // dst (contiguous rows, any float dtype) = src converted; the inverse of to_host_f32 (tests, engine uploads).
  virtual void from_host_f32(Tensor dst, const float* src) = 0;
  virtual void zero_state_slot(std::span<const Tensor> state, int32_t slot) = 0;  // tensors [n_slots, ...]
  // t[dst] = t[src] along dim 0 (a state slot or a KV page): forks a sequence's cache (HybridCache::fork).
  virtual void copy_slice(Tensor t, int64_t src, int64_t dst) = 0;

  // ---- the step: metadata every op below reads
  virtual void set_batch(const StepBatch& b) = 0;
  virtual void synchronize() {}
  // Several devices driven from threads of one process (tensor parallelism, backend/communicator.h): a thread
  // calls bind_thread before running this backend's ops (a GPU backend makes its device current), and the
  // collectives are queued on native_stream (a cudaStream_t; null on the CPU) after the ops before them.
  virtual void bind_thread() {}
  virtual void* native_stream() { return nullptr; }
  // Runs `ops` (the ops of one forward step for the batch last given to set_batch). A GPU backend may record
  // them once per `key` and batch shape and replay the recording afterwards (CUDA graphs for decode steps):
  // so `ops` must issue the same ops on the same tensors whenever key and the batch's token and sequence
  // counts are the same, and must not read anything on the host that the previous step wrote.
  virtual void run_step(uint64_t key, const std::function<void()>& ops) { ops(); }
  // Batch invariance (`--deterministic`, docs/serving.md). max_chunk > 0: from now on every op computes a
  // sequence's rows with the same arithmetic, in the same order, whatever else is in the step: matmuls reduce
  // each row in an order independent of the number of rows M, and no kernel is chosen by the step's shape.
  // The caller keeps its side: a step holds either only one-token sequences or only longer ones (so the decode
  // and prompt kernel families never see the same sequence by chance), and no sequence brings more than
  // max_chunk tokens. 0 turns it off (the fastest kernels). The default: Error unless 0.
  virtual void set_batch_invariant(int32_t max_chunk);

  // ---- ops
  // out[t] = table[tokens[t]]                                  out [T, H], table [V, H]
  virtual void embed(Tensor out, Tensor table) = 0;
  // y = x · Wᵀ (+ bias)                                        y [M, N], x [M, K], W [N, K], bias [N] or empty
  // W may be F8_E4M3 with scales (Tensor::scale): W8A16 for M <= 8 rows (x as it is against the dequantized W);
  // above, with per-channel scales, W8A8 as FP8 tensor cores run it: x quantized per row (core/fp8.h, a dynamic
  // per-token scale) first. Batch-invariant mode and block scales keep W8A16 for every M. fp32 accumulation.
  virtual void matmul(Tensor y, Tensor x, Tensor W, Tensor bias) = 0;
  // Per-output-channel FP8 quantization of a weight (`--quantization fp8`): scale[n] = amax(|w[n]|) / 448,
  // q[n] = e4m3(w[n] / scale[n]) (core/fp8.h).                 q [N, K] F8_E4M3, scale [N] F32, w [N, K]
  virtual void quantize_fp8(Tensor q, Tensor scale, Tensor w) { backward_not_implemented("quantize_fp8", name()); }
  // out = rmsnorm(x) * w                                       x, out [M, H], w [H]
  virtual void rmsnorm(Tensor out, Tensor x, Tensor w, float eps) = 0;
  // h += x; out = rmsnorm(h) * w  (the residual add fused with the next norm)
  virtual void add_rmsnorm(Tensor h, Tensor x, Tensor out, Tensor w, float eps) = 0;
  virtual void add(Tensor h, Tensor x) = 0;  // h += x
  // Causal depthwise conv over each sequence + bias + SiLU. xBC [T, CD] (pre-conv, may be strided),
  // weight [CD, K], bias [CD] or empty, out [T, CD]. conv_state [n_slots, K-1, CD]: the last K-1 inputs of each
  // slot, read as the window before the first new token when past_len > 0 and rewritten after the step.
  virtual void conv1d_silu(Tensor out, Tensor xBC, Tensor weight, Tensor bias, Tensor conv_state) = 0;
  // The SSD recurrence (docs/bamba-model.md §3.2 steps 5-8) for every sequence, from its slot's state
  // (or zeros) and writing the final state back.
  // y [T, nh*P]; xBC [T, I + 2GN] (post-conv: x | B | C); dt [T, nh] raw in_proj output (may be strided);
  // A_log, D, dt_bias [nh]; ssm_state [n_slots, nh, P, N] fp32.
  virtual void ssd(Tensor y, Tensor xBC, Tensor dt, Tensor A_log, Tensor D, Tensor dt_bias, Tensor ssm_state,
                   const MambaOpsConfig& c) = 0;
  // out = rmsnorm_groups(y * silu(z)) * w, statistics over groups of `group_size` channels.
  // y [T, I], z [T, I] (may be strided), w [I], out [T, I]
  virtual void gated_rmsnorm(Tensor out, Tensor y, Tensor z, Tensor w, int64_t group_size, float eps) = 0;
  // Partial NeoX RoPE on the q and k parts of qkv [T, (nq + 2 nkv) * dh], in place, at the batch's positions;
  // then attention of every new token over its sequence's cached keys plus the new ones (causal, GQA). The new
  // post-RoPE k, v are first written into the pages of the batch's block table (k_pages, v_pages
  // [n_blocks, block_size, nkv, dh]) at cache rows past_len .. past_len + n - 1.
  // out [T, nq * dh]
  virtual void attention(Tensor out, Tensor qkv, Tensor k_pages, Tensor v_pages, const AttentionOpsConfig& c) = 0;
  // out = silu(gate) * up, gate_up [T, 2F] = gate | up, out [T, F]
  virtual void swiglu(Tensor out, Tensor gate_up) = 0;

  // ---- fused decode ops: an op and the matmul after it (or the residual add after a matmul) as one, for steps
  // where launches, not bytes, are what a GPU spends its time on (docs/performance.md). The defaults compose the
  // ops above through `scratch` (so they are every backend's plain twin); a backend overrides them where it has a
  // kernel and falls back to the default where its kernel does not take the shape. The model uses them when
  // fuse_decode(rows) says so (never on the CPU: there the unfused ops are the reference).
  // y = (rmsnorm(x) * norm_w) · Wᵀ (+ bias)          y [M, N], x [M, K], norm_w [K], W [N, K]; scratch [M, K]
  virtual void rmsnorm_matmul(Tensor y, Tensor x, Tensor norm_w, float eps, Tensor W, Tensor bias, Tensor scratch);
  // h += x · Wᵀ (+ bias)                              h [M, N], x [M, K], W [N, K]; scratch [M, N]
  virtual void matmul_residual(Tensor h, Tensor x, Tensor W, Tensor bias, Tensor scratch);
  // h += swiglu(gate_up) · Wᵀ (+ bias)                h [M, N], gate_up [M, 2K], W [N, K]; act [M, K], out [M, N]
  virtual void swiglu_matmul_residual(Tensor h, Tensor gate_up, Tensor W, Tensor bias, Tensor act, Tensor out);
  // Whether the model should use the three ops above for a step of `rows` tokens (false: the unfused ops).
  virtual bool fuse_decode(int64_t rows) const { return false; }
  // A hint that a matmul of `rows` rows over W comes after a few small ops: a backend may start moving W's first
  // bytes closer (the CUDA one, for decode steps, into L2 while those ops run; cuda/l2_prefetch.cu). Changes no
  // result; the default does nothing.
  virtual void prefetch_weight(Tensor W, int64_t rows) {}
  // act = swiglu(x · Wᵀ (+ bias))   act [M, F], x [M, K], W [2F, K] = gate | up; gate_up [M, 2F] scratch. Not a
  // policy: every step may call it (the default is the matmul and swiglu, the same bits as calling them).
  virtual void matmul_swiglu(Tensor act, Tensor x, Tensor W, Tensor bias, Tensor gate_up);

  // ---- ops of Bamba's relatives (docs/family.md)
  virtual void scale(Tensor x, float s) = 0;  // x *= s in place (muP multipliers), x [M, N] (may be strided)
  virtual void copy(Tensor dst, Tensor src) = 0;  // dst = src, [M, N] each (may be strided): column blocks
  // out = relu(x)², x, out [T, F] (Nemotron-H's MLP)
  virtual void relu2(Tensor out, Tensor x) = 0;
  // out = gelu(gate) * up with the exact (erf) GELU, gate_up [T, 2F] = gate | up (Zamba2's MLP)
  virtual void geglu(Tensor out, Tensor gate_up) = 0;
  // out = y * silu(z) (a Mamba2 gate without the norm: Falcon-H1 with mamba_rms_norm = false), [T, I]
  virtual void silu_gate(Tensor out, Tensor y, Tensor z) = 0;
  // Routing: logits [T, E] F32 (the router matmul's output), bias [E] F32 or empty (SigmoidGroup's score
  // correction) -> experts [T, k] I32 (in descending order of the score chosen on) and weights [T, k] F32.
  virtual void moe_route(Tensor experts, Tensor weights, Tensor logits, Tensor bias, const MoeOpsConfig& c) = 0;
  // out [T, H] = Σ_j weights[t, j] · down[e](act(up[e] · x[t])), e = experts[t, j]: the tokens are grouped by
  // expert and each expert's rows go through one GEMM per projection (grouped GEMMs, not per-token matmuls).
  // x [T, H]; up [E, U, H]; down [E, H, F]; experts, weights [T, k] as moe_route wrote them.
  virtual void moe_experts(Tensor out, Tensor x, Tensor up, Tensor down, Tensor experts, Tensor weights, ExpertAct act,
                           const MoeScratch& scratch) = 0;
  // ---- backward (training). Every sequence of the batch runs whole from a zero state (past_len == 0), as one
  // training row; StepBatch::seq_start gives the rows. Activation gradients are written (=), parameter gradients
  // accumulated (+=) so micro-batches add up. Optional outputs may be empty tensors. Reductions run in a fixed
  // order: the same step gives the same bits every time. Backends without training support throw (the default).
  // dtable[tokens[t]] += dout[t], except for tokens == padding_idx (nn.Embedding's padding_idx: HF builds the
  // embedding with padding_idx = pad_token_id, whose row gets no gradient from the lookup; -1 = none).
  // dtable [V, H], dout [T, H]
  virtual void embed_backward(Tensor dtable, Tensor dout, int32_t padding_idx) {
    backward_not_implemented("embed", name());
  }
  // dx = dy·W, dW += dyᵀ·x, dbias += Σ_rows dy                     dx [M, K], dW [N, K], dbias [N], dy [M, N]
  virtual void matmul_backward(Tensor dx, Tensor dW, Tensor dbias, Tensor dy, Tensor x, Tensor W) {
    backward_not_implemented("matmul", name());
  }
  // out = rmsnorm(x)·w: dx = the input gradient (=), dw += Σ_rows dout·x̂      dx, dout, x [M, H], dw, w [H]
  virtual void rmsnorm_backward(Tensor dx, Tensor dw, Tensor dout, Tensor x, Tensor w, float eps) {
    backward_not_implemented("rmsnorm", name());
  }
  // The residual add before a norm (add_rmsnorm): h (after the add) feeds both the norm and the rest of the
  // residual stream, so dh (the residual gradient, [M, H]) += the norm's input gradient; dw += as above.
  virtual void add_rmsnorm_backward(Tensor dh, Tensor dw, Tensor dout, Tensor h, Tensor w, float eps) {
    backward_not_implemented("add_rmsnorm", name());
  }
  // Recomputes the pre-activation. dxBC [T, CD] (may be strided), dweight [CD, K], dbias [CD] or empty.
  virtual void conv1d_silu_backward(Tensor dxBC, Tensor dweight, Tensor dbias, Tensor dout, Tensor xBC, Tensor weight,
                                    Tensor bias) {
    backward_not_implemented("conv1d_silu", name());
  }
  // The gradient of ssd run from state0 ([S, nh, P, N] fp32, empty = zeros): dxBC [T, I + 2GN] (post-conv
  // x | B | C), ddt [T, nh] (w.r.t. the raw dt, through softplus and the time_step_limit clamp), dA_log, dD,
  // ddt_bias [nh] (+=), dstate0 [S, nh, P, N] (=, optional). States are recomputed from chunk-start checkpoints.
  virtual void ssd_backward(Tensor dxBC, Tensor ddt, Tensor dA_log, Tensor dD, Tensor ddt_bias, Tensor dstate0,
                            Tensor dy, Tensor xBC, Tensor dt, Tensor A_log, Tensor D, Tensor dt_bias, Tensor state0,
                            const MambaOpsConfig& c) {
    backward_not_implemented("ssd", name());
  }
  // dy, dz [T, I] (may be strided), dw [I] (+=)
  virtual void gated_rmsnorm_backward(Tensor dy, Tensor dz, Tensor dw, Tensor dout, Tensor y, Tensor z, Tensor w,
                                      int64_t group_size, float eps) {
    backward_not_implemented("gated_rmsnorm", name());
  }
  // qkv as attention() left it (q, k rotated); dqkv [T, (nq + 2 nkv) dh] w.r.t. the unrotated qkv (matmul output).
  // Softmax rows are recomputed, never stored.
  virtual void attention_backward(Tensor dqkv, Tensor dout, Tensor qkv, const AttentionOpsConfig& c) {
    backward_not_implemented("attention", name());
  }
  // out = relu(x)² (relu2): dx = dout ⊙ 2·relu(x), dx [T, F] (=)
  virtual void relu2_backward(Tensor dx, Tensor dout, Tensor x) { backward_not_implemented("relu2", name()); }
  // out = y ⊙ silu(z) (silu_gate): dy, dz [T, I] (=, may be strided)
  virtual void silu_gate_backward(Tensor dy, Tensor dz, Tensor dout, Tensor y, Tensor z) {
    backward_not_implemented("silu_gate", name());
  }
  // dgate_up [T, 2F]
  virtual void swiglu_backward(Tensor dgate_up, Tensor dout, Tensor gate_up) {
    backward_not_implemented("swiglu", name());
  }
  // out = gelu(gate) ⊙ up (geglu, the exact GELU): dgate_up [T, 2F] (=)
  virtual void geglu_backward(Tensor dgate_up, Tensor dout, Tensor gate_up) {
    backward_not_implemented("geglu", name());
  }
  // moe_route's weights as functions of the chosen experts' logits (the choice itself has no gradient, as in
  // PyTorch): dlogits [T, E] (=, compute dtype: it feeds the router matmul's backward; zero outside the chosen)
  // from dweights [T, k] F32; logits [T, E] F32 and experts [T, k] as moe_route read and wrote them.
  virtual void moe_route_backward(Tensor dlogits, Tensor dweights, Tensor logits, Tensor experts, const MoeOpsConfig& c) {
    backward_not_implemented("moe_route", name());
  }
  // moe_experts' backward, recomputing the experts' up projections: dx [T, H] (=), dup [E, U, H] and
  // ddown [E, H, F] F32 (+=), dweights [T, k] F32 (=, ⟨dout[t], expert_e(x[t])⟩, for moe_route_backward).
  virtual void moe_experts_backward(Tensor dx, Tensor dup, Tensor ddown, Tensor dweights, Tensor dout, Tensor x,
                                    Tensor up, Tensor down, Tensor experts, Tensor weights, ExpertAct act,
                                    const MoeScratch& scratch) {
    backward_not_implemented("moe_experts", name());
  }
  // lm_head fused with cross-entropy, `chunk_rows` rows at a time (no [T, V] logits): returns
  //   Σ_t ce_scale·(logsumexp_t − logit_t[targets[t]]) over targets ≠ −100  +  z_scale·Σ_t logsumexp_t²  (all rows)
  // and writes dx [T, H] (optional), dW [V, H] += (optional). targets: T entries on the host.
  virtual double lm_head_cross_entropy(Tensor dx, Tensor dW, Tensor x, Tensor W, std::span<const int32_t> targets,
                                       double ce_scale, double z_scale, int64_t chunk_rows) {
    backward_not_implemented("lm_head_cross_entropy", name());
    return 0;
  }

  // ---- optimizer (training) on F32 buffers of this backend: the element-wise AdamW of train/adamw.h (whose host
  // loop is the CPU twin) and the pieces of global-norm clipping. A trainer whose parameters live in host memory
  // never calls these; the default throws.
  // w, g F32 [n]; m, v F32 or BF16 (stochastic rounding, AdamWUpdate::key) [n]; model_copy: empty, or a BF16 / F32
  // tensor of n elements that receives the updated weight (the copy the forward reads). With w_lo the master is
  // split (core/bf16_split.h): w is then the BF16 weight the forward reads, which holds the master's top half, and
  // w_lo [n] I16 the rest; model_copy is empty.
  virtual void adamw_update(Tensor w, Tensor g, Tensor m, Tensor v, const AdamWUpdate& a, Tensor model_copy,
                            Tensor w_lo = {}) {
    backward_not_implemented("adamw_update", name());
  }
  // Σ g² over an F32 buffer, in double, in a fixed order
  virtual double sum_squares(Tensor g) {
    backward_not_implemented("sum_squares", name());
    return 0;
  }
  // g *= c over a whole F32 buffer [n] (clipping)
  virtual void scale_gradient(Tensor g, float c) { backward_not_implemented("scale_gradient", name()); }
  // Every parameter of a step at once (one launch on the GPU): adamw_update of each tensor with the shared scalars
  // of `a` and the tensor's own decay and key; the same bits as those calls one by one, which the default makes.
  virtual void adamw_update_many(std::span<const AdamWTensor> ts, const AdamWUpdate& a) {
    for (const AdamWTensor& t : ts) {
      AdamWUpdate u = a;
      u.decay = t.decay, u.key = t.key;
      adamw_update(t.w, t.g, t.m, t.v, u, t.model_copy, t.w_lo);
    }
  }
  // Σ over the tensors of sum_squares(g), added in order: the same bits as the calls one by one (the default).
  virtual double sum_squares_many(std::span<const Tensor> gs) {
    double s = 0;
    for (const Tensor& g : gs) s += sum_squares(g);
    return s;
  }

  // out[i] = x[rows[i]] for the batch's logit_rows.              out [R, H], x [T, H]
  virtual void gather_logit_rows(Tensor out, Tensor x) = 0;
  // out_tokens[r] = a token drawn from logits row r with params[r] (see SamplingParams).
  // logits [R, V] F32 (may be strided); params and out_tokens: R entries, on the host.
  virtual void sample(Tensor logits, std::span<const SamplingParams> params, int32_t* out_tokens) = 0;
  // Applies p (see LogitsProcessing) in place to the rows it names.        logits [R, V] F32 (may be strided)
  virtual void process_logits(Tensor logits, const LogitsProcessing& p) = 0;
  // Scoring (bamba eval): for each i, logprob[i] = log_softmax(logits[rows[i]])[targets[i]] (fp32, max-shifted)
  // and greedy[i] = the first index of the maximum of that row. A row may appear several times (one context,
  // several continuations). logits [R, V] F32 (may be strided); rows, targets, logprob, greedy: on the host.
  virtual void token_logprobs(Tensor logits, std::span<const int32_t> rows, std::span<const int32_t> targets,
                              float* logprob, int32_t* greedy) = 0;
};

std::unique_ptr<Backend> make_cpu_backend();
// The compute dtype (docs/numerics.md) for option `dtype` ("auto", "bf16" or "fp32") and a checkpoint saved as
// `checkpoint`: auto is F32 for F32 checkpoints and BF16 for BF16/F16 ones (compute in the checkpoint's
// precision class, so an fp32 checkpoint is not rounded to bf16). Error naming the option otherwise.
DType compute_dtype(const std::string& dtype, DType checkpoint);
// "cpu", "cuda" or "auto" (the GPU when there is one); `compute` is the GPU backend's dtype (BF16 or F32), the CPU
// backend always computes in fp32. Error when "cuda" is asked for and this build has no CUDA support
// (BAMBA_HAVE_CUDA) or no GPU is present.
std::unique_ptr<Backend> make_backend(const std::string& device, DType compute = DType::BF16);
// The backend of rank `index` of a group on this machine: GPU `index` when `device` picks a GPU (as make_backend
// decides), else a CPU backend. Error naming the GPU count when there are too few.
std::unique_ptr<Backend> make_rank_backend(const std::string& device, int index, DType compute = DType::BF16);
int cuda_device_count();  // 0 in a build without CUDA
// GPU `index`'s name and its memory as CUDA reports it (total bytes); {"", 0} when there is no such GPU.
struct GpuInfo {
  std::string name;
  int64_t total_bytes = 0;
};
GpuInfo cuda_device_info(int index);

#ifdef BAMBA_HAVE_CUDA
std::unique_ptr<Backend> make_cuda_backend(int device_index, DType compute);  // src/backend/cuda/
int cuda_runtime_device_count();
GpuInfo cuda_runtime_device_info(int index);
#endif

}  // namespace bamba
