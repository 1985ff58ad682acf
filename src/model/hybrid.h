// HybridModel: the ONLY place that knows the layer order and the math of a forward step of Bamba
// (docs/bamba-model.md §3) and of its relatives (docs/family.md: GraniteMoeHybrid, Nemotron-H, Falcon-H1, Zamba2,
// Mamba2, Llama), written against backend ops. Every layer is up to two pre-norm residual blocks, a mixer
// (ModelConfig::layer_kinds) and an MLP (mlp_kinds); the model types differ in which blocks they stack and in
// the multipliers of ModelConfig. One call serves prefill, chunked prefill, decode and any mix of them across
// sequences (see StepBatch).
#pragma once
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "backend/backend.h"
#include "backend/communicator.h"
#include "model/hybrid_cache.h"
#include "model/config.h"
#include "model/weights.h"

namespace bamba {

// Activation buffers for steps of up to max_tokens tokens and max_logit_rows logit rows, allocated once.
class Workspace {
 public:
  Workspace(const ModelConfig& c, Backend& be, int32_t max_tokens, int32_t max_logit_rows);
  ~Workspace();
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;

  int32_t max_tokens, max_logit_rows;
  const uint64_t uid;  // unique in the process (an address may be reused by a later workspace): CUDA graph keys
  Tensor h;       // [T, H]   residual stream
  Tensor xn;      // [T, H]   normed input of the next block
  Tensor out;     // [T, H]   block output before the residual add
  Tensor proj;    // [T, max(E, 2F, qkv)]  in_proj / gate_up / qkv output
  Tensor conv;    // [T, CD]  post-conv xBC
  Tensor y;       // [T, max(I, nq dh, F)]  SSD output / attention output / SwiGLU output
  Tensor y2;      // [T, I]   gated-norm output
  Tensor sel;     // [R, H]   rows that need logits
  Tensor logits;  // [R, V]
  // Only for the relatives that need them (empty otherwise):
  Tensor aux, aux2;       // [T, H]   Falcon-H1: scaled mixer inputs, the attention half; Zamba2: shared-block outputs
  Tensor router;          // [T, E]   F32 router logits (MoE)
  Tensor moe_experts;     // [T, k]   I32
  Tensor moe_weights;     // [T, k]   F32
  MoeScratch moe;         // grouped expert GEMM buffers
  Tensor wide, wide_n;    // [T, 2H]  Zamba2: concat(h, embeddings), normed
  Tensor lora_r;          // [T, 3r]  Zamba2 adapters' low-rank activations
  Tensor lora;            // [T, max(nq dh, 2F)]  an adapter's output
  // Tensor parallelism (c.tp_size > 1, model/tensor_parallel.h):
  Tensor logits_part;     // [R, V / tp_size]  F32: this rank's vocabulary columns
  Tensor tp_y, tp_z;      // [T, tp_full_inner]  the gathered inputs of a gated norm that spans ranks
  Tensor tp_normed;       // [T, tp_full_inner]  its output, whole
  // The other ranks' workspaces (one-process groups), made and used by rank 0's model.
  std::vector<std::unique_ptr<Workspace>> mirrors;

 private:
  Backend& be_;
};

// Called with the residual stream at named points: "embed", "layer0".."layer{L-1}", "final_norm".
// A training batch: `rows` sequences of `seq_len` tokens, row-major [rows, seq_len]. labels as Hugging Face takes
// them (unshifted: the logits at t are scored against labels[t + 1]; -100 = ignored).
struct TrainBatch {
  int32_t rows = 0, seq_len = 0;
  std::vector<int32_t> input_ids, labels;
  // Packing with resets: cu_seqlens over the flattened rows (every row start among them); each sequence starts
  // from a zero state with RoPE positions from 0, as HF's position_ids / seq_idx packing. Empty: one per row.
  std::vector<int32_t> seq_start;
};

// What the training forward keeps for the backward; the rest is recomputed just before a layer's backward. The ops
// are deterministic, so every choice gives the same bits (tested).
//   Off        every activation of every layer: no recompute, the most memory.
//   Full       each layer's input only; the whole layer runs again (one more forward: a third more compute; memory
//              of one layer's activations plus L × [T, hidden]).
//   Selective  each layer's input, the outputs of its mixer's projections (Mamba's in_proj; attention's q | k | v and
//              its output) and the residual after the mixer; again run only the norms, the conv, the scan, the
//              gated norm, the MLP's up projection and an MoE layer's router — a layer's compute grows by a seventh
//              instead of a third at the Bamba shape — for [T, in_proj width + hidden] more a Mamba layer (171 MB at
//              4,096 tokens, bf16). A Zamba2 shared block runs whole either way.
enum class Checkpointing : uint8_t { Off, Full, Selective };
// The config's and the command line's spelling: "true" / "full", "selective", "false" / "off"; nullopt otherwise.
std::optional<Checkpointing> checkpointing_from_name(std::string_view name);
// How many layers, from the first, are checkpointed (TrainOptions::checkpoint_layers): none when Off, else
// checkpoint_layers (-1: every one) capped at num_layers.
int64_t checkpointed_layer_count(Checkpointing mode, int64_t checkpoint_layers, int64_t num_layers);

struct TrainOptions {
  float z_loss_coefficient = 0.f;  // HF's z_loss_coefficient: + coef · mean over all positions of logsumexp²
  // Divisors of the two loss terms; 0 = this batch's (HF: the number of labels != -100; rows · seq_len). Give the
  // whole step's counts when a step is split into micro-batches, so that their gradients add up to the step's.
  int64_t label_count = 0, position_count = 0;
  // lm_head + cross-entropy this many rows at a time. Each chunk's dW GEMM reads and writes the whole fp32 lm_head
  // gradient and its two other GEMMs read all of W, so fewer, larger chunks move far less memory: at the 9B shape
  // (V = 128,256) 1,024 rows keep 0.8 GB of logits and their gradient — less than the SSD backward's scratch at
  // 4,096 tokens, which the same buffer holds — where 256 rows moved ~100 GB a 4,096-token step.
  int64_t ce_chunk_rows = 1024;
  bool loss_only = false;       // validation: the loss, no gradients (the gradient buffers are left untouched)
  Checkpointing activation_checkpointing = Checkpointing::Off;
  // Checkpointing applies to the first this-many layers only; the rest keep every activation (Megatron's
  // recompute_num_layers, "block" method): the memory the device has left buys back their recompute. -1: every
  // layer. The same bits whichever layers are chosen.
  int64_t checkpoint_layers = -1;
  // Keep every MoE layer's chosen experts in TrainResult::routing (load statistics; tests that must know whether a
  // perturbation moved a top-k choice, where the loss is not differentiable).
  bool record_routing = false;
};

struct TrainResult {
  double loss = 0;           // this batch's share of the loss (its terms over the divisors)
  int64_t label_count = 0;   // labels != -100 in the batch
  std::vector<int32_t> routing;  // record_routing: each MoE layer's experts [T, k], layer after layer
  // the bytes of the buffer set the step ran in: training_step_memory's activations for the step that made the set
  // (a validation step runs in a kept training step's set, which is larger)
  int64_t activation_bytes = 0;
};

// What one training step of `rows` sequences of `seq_len` tokens allocates beyond the weights, their gradients and
// the optimizer state, with activations of dtype `activation` (the backend's: bf16 on the GPU, fp32 on the CPU).
// Not counted: the backend's own op scratch (the CUDA SSD backward's chunk states, the cross-entropy's logits
// chunk: docs/training.md), which is reused layer after layer.
struct StepMemory {
  int64_t activations = 0;  // every buffer of the step: kept activations, the recomputation set, the gradients'
  int64_t cache = 0;        // the step's own cache: its attention layers' K and V (no Mamba state: no step keeps
                            // one; packed documents' partly filled pages take a little more)
};
StepMemory training_step_memory(const ModelConfig& cfg, int64_t rows, int64_t seq_len, const TrainOptions& opt,
                                DType activation);

using ActivationHook = std::function<void(const std::string& name, Tensor h)>;
class TensorParallelPeers;  // model/tensor_parallel_peers.h

class HybridModel {
 public:
  HybridModel(ModelConfig cfg, ModelWeights w, Backend& be);
  // A rank of a tensor-parallel group (model/tensor_parallel.h): cfg is its shard's (ModelConfig::tp_*), w its
  // shard, comm its collectives.
  HybridModel(ModelConfig cfg, ModelWeights w, Backend& be, Communicator* comm);
  const ModelConfig& config() const { return cfg_; }
  Backend& backend() const { return be_; }

  // Runs one step and returns the logits of b.logit_rows, [R, V] in ws (valid until the next step).
  // Checks the batch against the model, workspace and cache, throwing Error on a mismatch.
  Tensor forward(const StepBatch& b, HybridCache& cache, Workspace& ws, const ActivationHook& hook = {}) const;

  // Training (model/hybrid_backward.cpp): runs the batch forward keeping what the backward needs, then the
  // backward, and ADDS every parameter's gradient into `grads` (zeros_like_weights; read them by HF name with
  // hf_tensors). Every row starts from a zero state.
  TrainResult forward_backward(const TrainBatch& batch, ModelWeights& grads, const TrainOptions& opt = {}) const;
  // "" when forward_backward supports every layer of this model, else what it does not support (an error names it
  // rather than train a wrong gradient). Every layer kind has its backward today, so it returns "".
  std::string training_unsupported() const;
  const ModelWeights& weights() const { return w_; }

  // Tensor parallelism in one process: rank 0's model runs the other ranks' (make_tensor_parallel_model).
  void set_peers(std::shared_ptr<TensorParallelPeers> peers) { peers_ = std::move(peers); }
  int tensor_parallel_size() const { return cfg_.tp_size; }
  // forward() on this rank alone (what forward runs on every rank of a group).
  Tensor forward_rank(const StepBatch& b, HybridCache& cache, Workspace& ws, const ActivationHook& hook = {}) const;

 private:
  void check_batch(const StepBatch& b, const HybridCache& cache, const Workspace& ws) const;
  // A block run with Backend's fused decode ops: its input norm folded into its first matmul (which then reads h
  // and norm_w, xn is only scratch) and its output added to h by its last matmul (`out` is only scratch).
  struct Fused {
    Tensor h, norm_w;  // [T, H], [H]
    float eps;
  };
  // Whether a block of this kind runs fused (every op between its norm and its output is one of the plain ones).
  bool fusable(LayerKind kind) const;
  bool fusable(MlpKind kind) const;
  // The blocks; each writes its output into `out` ([T, H]), the caller adds it to the residual stream; or, with
  // `f`, normalises f->h itself and adds its output to f->h.
  void mamba_mixer(const MambaWeights& w, Tensor xn, Tensor out, int64_t index, HybridCache& cache, Workspace& ws,
                   const Fused* f = nullptr) const;
  void attention(const AttentionWeights& w, Tensor xn, Tensor out, int64_t index, HybridCache& cache, Workspace& ws,
                 const AdapterWeights* adapters = nullptr, const Fused* f = nullptr) const;
  void mlp(const LayerWeights& w, MlpKind kind, Tensor xn, Tensor out, Workspace& ws, const Fused* f = nullptr) const;
  // Zamba2 "hybrid" layer i (its j-th): the shared block on concat(h, embeddings), through `linear`, added to h
  // as the input of the layer's Mamba mixer. h must be up to date; writes the mixer output into out.
  void zamba2_hybrid(int64_t i, int64_t j, Tensor h, Tensor xn, Tensor out, HybridCache& cache, Workspace& ws) const;

  ModelConfig cfg_;
  ModelWeights w_;
  Backend& be_;
  MambaOpsConfig mamba_ops_;
  AttentionOpsConfig attn_ops_;
  MoeOpsConfig moe_ops_;
  Communicator* comm_ = nullptr;  // tensor parallelism: this rank's collectives (null: one rank)
  std::shared_ptr<TensorParallelPeers> peers_;
  // forward_backward's buffers and cache, kept for the next step of the same shape (model/hybrid_backward.cpp)
  struct TrainState;
  mutable std::shared_ptr<TrainState> train_;
};

// Loads <dir>/config.json and its safetensors into a model on `be` (the mmap'd files are closed afterwards).
HybridModel load_model(const std::string& dir, Backend& be, const LoadProgress& progress = {});
// The built-in tiny model with generated weights (no files needed).
HybridModel dummy_model(Backend& be, uint64_t seed = 0);

}  // namespace bamba
