// The training step of HybridModel: a forward that keeps every activation the backward reads, then the backward
// written out layer by layer in reverse (llm.c style: explicit, no autograd tape). The forward math is the one of
// HybridModel::forward (model/hybrid.cpp); the ops' backwards are the Backend's *_backward.
#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "core/error.h"
#include "model/hybrid.h"

namespace bamba {

std::optional<Checkpointing> checkpointing_from_name(std::string_view name) {
  if (name == "true" || name == "full") return Checkpointing::Full;
  if (name == "selective") return Checkpointing::Selective;
  if (name == "false" || name == "off") return Checkpointing::Off;
  return std::nullopt;
}

int64_t checkpointed_layer_count(Checkpointing mode, int64_t checkpoint_layers, int64_t num_layers) {
  if (mode == Checkpointing::Off) return 0;
  return checkpoint_layers < 0 ? num_layers : std::min(checkpoint_layers, num_layers);
}

namespace {

// The training step's cache: KV pages for `rows` rows of seq_len tokens (forward_backward adds pages when packed
// documents leave partly filled ones) and no state slot: its sequences start from a zero state and keep none
// (StepBatch slot -1), so a row packed with many short documents costs no state memory.
CacheSizes training_cache_sizes(const ModelConfig& cfg, int64_t rows, int64_t seq_len) {
  CacheSizes c = HybridCache::sizes_for(cfg, int32_t(rows), int32_t(seq_len));
  c.n_slots = 0;
  return c;
}

// Backend tensors released together at the end of the step; or, made without a backend, shapes only, counted
// (training_step_memory: what a step would take, with no device).
class Arena {
 public:
  explicit Arena(Backend& be) : be_(&be), activation_(be.activation_dtype()) {}
  explicit Arena(DType activation) : activation_(activation) {}
  ~Arena() {
    if (be_)
      for (Tensor t : owned_) be_->release(t);
  }
  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;
  Tensor operator()(int64_t rows, int64_t cols) { return (*this)(activation_, rows, cols); }  // what the ops read
  Tensor operator()(DType dtype, int64_t rows, int64_t cols) {  // F32 router logits, I32 expert ids
    Tensor t = be_ ? be_->alloc(dtype, {rows, cols}) : Tensor(nullptr, dtype, Device::CPU, {rows, cols});
    if (be_) owned_.push_back(t);
    bytes_ += int64_t(t.nbytes());
    return t;
  }
  int64_t bytes() const { return bytes_; }

 private:
  Backend* be_ = nullptr;
  DType activation_;
  std::vector<Tensor> owned_;
  int64_t bytes_ = 0;
};

// What the backward of one layer reads, [T, ...] with T = rows · seq_len. Inputs scaled by a multiplier are kept
// scaled (the matmul's dW needs them); without the multiplier they alias xn.
struct LayerActs {
  Tensor h_in;      // [T, H]  residual stream entering the layer
  Tensor xn;        // [T, H]  input_layernorm(h_in)
  Tensor xm;        // [T, H]  Mamba's input: xn · ssm_in_multiplier (Falcon-H1), else xn
  Tensor zxbcdt;    // [T, E]  Mamba: in_proj output (z | xBC | dt), each segment × its ssm_multiplier
  Tensor conv;      // [T, CD] Mamba: post-conv x | B | C
  Tensor y;         // [T, I]  Mamba: SSD output
  Tensor normed;    // [T, I]  Mamba: gated-norm output (or y ⊙ silu(z) without the norm)
  Tensor xa;        // [T, H]  attention's input: xn · attention_in_multiplier (Falcon-H1), else xn
  Tensor qkv;       // [T, (nq + 2 nkv) dh]  attention: k × key_multiplier, q, k rotated by the forward
  Tensor o;         // [T, nq dh]  attention output
  Tensor attn_out;  // [T, H]  Falcon-H1: the attention branch (summed with the Mamba branch into h_mid)
  Tensor h_mid;     // [T, H]  after the mixer's residual add
  Tensor xn2;       // [T, H]  pre_ff_layernorm(h_mid)
  Tensor gate_up;   // [T, 2F] gate × mlp_gate_multiplier | up (relu²: [T, F] up); MoE layers: the shared expert's
  Tensor act;       // [T, F]  silu(gate) ⊙ up
  // MoE layers (the routed experts' inner rows are recomputed by moe_experts_backward, not kept)
  Tensor router;    // [T, E]  F32 router logits
  Tensor experts;   // [T, k]  I32 chosen experts
  Tensor weights;   // [T, k]  F32 their routing weights
  Tensor moe_out;   // [T, H]  the routed experts' output (the shared expert's is added to it)
  // Zamba2 hybrid layers: the shared block on concat(h_in, embeddings), then linear, into the Mamba input
  Tensor cat;       // [T, 2H] concat(h_in, embeddings)
  Tensor cat_n;     // [T, 2H] shared input_layernorm(cat)
  Tensor low;       // [T, 3r] the q | k | v adapters' low-rank activations (use_shared_attention_adapter)
  Tensor attn_o;    // [T, H]  o_proj output
  Tensor ff_in;     // [T, H]  pre_ff_layernorm(attn_o)
  Tensor low_mlp;   // [T, r]  the gate_up adapter's low-rank activation
  Tensor shared;    // [T, H]  the shared block's output (down_proj)
  Tensor m_in;      // [T, H]  linear(shared) + h_in: the Mamba mixer's pre-norm input
};

// What each layer of a config does: the step's buffers (allocate_step) and its math (forward_backward) follow it.
struct LayerPlan {
  const ModelConfig& cfg;
  LayerKind kind_of(int64_t i) const { return cfg.layer_kinds[size_t(i)]; }
  bool is_shared(int64_t i) const { return kind_of(i) == LayerKind::SharedAttention; }  // Zamba2 hybrid layer
  bool has_mamba(int64_t i) const {
    return kind_of(i) == LayerKind::Mamba || kind_of(i) == LayerKind::MambaAttention || is_shared(i);
  }
  bool has_attn(int64_t i) const {
    return kind_of(i) == LayerKind::Attention || kind_of(i) == LayerKind::MambaAttention;
  }
  bool has_mlp(int64_t i) const { return cfg.mlp_kinds[size_t(i)] != MlpKind::None; }
  bool is_moe(int64_t i) const { return cfg.mlp_kinds[size_t(i)] == MlpKind::MoE; }
  // The dense MLP of a layer: its own, or in an MoE layer the shared MLP / shared expert (width 0: none).
  int64_t ff_width(int64_t i) const {
    return !has_mlp(i) ? 0 : is_moe(i) ? cfg.shared_intermediate_size : cfg.intermediate_size;
  }
  bool glu(int64_t i) const {  // SwiGLU, else relu² (Nemotron-H's MLP, shared and routed experts)
    return cfg.mlp_kinds[size_t(i)] == MlpKind::SwiGLU || (is_moe(i) && cfg.moe_router == MoeRouter::SoftmaxTopK);
  }
  int64_t up_width(int64_t i) const { return glu(i) ? 2 * ff_width(i) : ff_width(i); }  // gate | up, or up
};

// Which buffers a layer keeps (merged over layers: the one recomputation set of checkpointing, the backward's).
struct Need {
  bool mamba = false, attn = false, both = false, moe = false, shared = false;
  int64_t up = 0, ff = 0;  // the dense MLP's up width and width (Zamba2's shared block: its GeGLU)
  Need() = default;
  Need(const LayerPlan& p, int64_t i)
      : mamba(p.has_mamba(i)), attn(p.has_attn(i) || p.is_shared(i)), both(p.kind_of(i) == LayerKind::MambaAttention),
        moe(p.is_moe(i)), shared(p.is_shared(i)), up(p.up_width(i)), ff(p.ff_width(i)) {
    if (shared) up = 2 * p.cfg.intermediate_size, ff = p.cfg.intermediate_size;
  }
  void merge(const Need& n) {
    mamba |= n.mamba, attn |= n.attn, both |= n.both, moe |= n.moe, shared |= n.shared;
    up = std::max(up, n.up), ff = std::max(ff, n.ff);
  }
};

// Every buffer of one training step, made before it starts (and kept for the next, HybridModel::TrainState) — by one
// function, so that training_step_memory counts exactly what forward_backward takes.
struct StepBuffers {
  std::vector<LayerActs> acts;  // [L] what each layer's backward reads (checkpointed: its input, Selective: + kept)
  LayerActs work;               // checkpointing: the one set every checkpointed layer is (re)computed into
  std::vector<Tensor> h;        // [L + 1] of [T, H] the residual stream: the embeddings, then each layer's output
  Tensor xf, xs, dxn;           // [T, H] final_layernorm(h), xf × logits_scale (or xf itself), their gradient
  // The backward's: the gradients of one layer's activations at a time (sized for the widest layer).
  Tensor dh;                    // [T, H] the residual stream's
  Tensor d_act, d_gate_up;      // the MLP's
  Tensor d_zxbcdt, d_conv, d_y, d_normed;  // Mamba's
  Tensor d_qkv, d_o;            // attention's
  Tensor d_block;               // [T, H] a block output's gradient: dh × its multiplier
  Tensor dxn_attn;              // [T, H] Falcon-H1: the attention branch's input gradient
  Tensor d_part;                // [T, H] one more input gradient to add up (MoE, Zamba2)
  Tensor d_weights, d_logits;   // MoE: the routing weights' and the router logits' gradients
  Tensor d_m, d_sh, d_ff, d_low, d_low_mlp, d_catn, d_cat, d_wide, d_emb;  // Zamba2's shared blocks
  Tensor h_scratch;             // [T, H] full checkpointing: the recomputed layer's output, not needed again
  MoeScratch moe;               // the routed experts' gathered rows (forward and backward), shared by MoE layers
  Tensor lora_tmp;              // Zamba2: an adapter's output before it is added ([T, max(q, k, v width, 2F)])
  Need all;                     // every layer's needs merged
};

StepBuffers allocate_step(const ModelConfig& cfg, int64_t T, const TrainOptions& opt, Arena& mem) {
  const LayerPlan lp{cfg};
  const int64_t H = cfg.hidden_size, F = cfg.intermediate_size, I = cfg.mamba_inner, CD = cfg.conv_dim(),
                E = cfg.in_proj_dim(), L = cfg.num_hidden_layers, QKV = cfg.qkv_dim(),
                O = cfg.num_attention_heads * cfg.head_dim, NE = cfg.num_experts, topk = cfg.num_experts_per_tok,
                Fe = cfg.moe_intermediate_size, rank = cfg.adapter_rank;
  const int64_t n_ckpt = checkpointed_layer_count(opt.activation_checkpointing, opt.checkpoint_layers, L);
  const bool keep_proj = opt.activation_checkpointing == Checkpointing::Selective;
  StepBuffers b;
  Need all_ckpt;  // the checkpointed layers' needs merged: the size of `work`
  for (int64_t i = 0; i < L; ++i) {
    b.all.merge(Need(lp, i));
    if (i < n_ckpt) all_ckpt.merge(Need(lp, i));
  }
  // The tensors Selective checkpointing keeps per layer: the residual after the mixer and the projections' outputs.
  auto alloc_kept = [&](LayerActs& a, const Need& n) {
    a.h_mid = mem(T, H);
    if (n.mamba) a.zxbcdt = mem(T, E);
    if (n.attn) a.qkv = mem(T, QKV), a.o = mem(T, O);
  };
  // kept_apart: the shared recomputation set of Selective checkpointing, which takes alloc_kept's from the layer
  auto alloc_acts = [&](LayerActs& a, const Need& n, bool kept_apart) {
    if (!kept_apart) alloc_kept(a, n);
    a.xn = mem(T, H);
    if (n.mamba) {
      a.xm = cfg.ssm_in_multiplier != 1.f ? mem(T, H) : a.xn;
      a.conv = mem(T, CD), a.y = mem(T, I), a.normed = mem(T, I);
    }
    if (n.attn) a.xa = cfg.attention_in_multiplier != 1.f ? mem(T, H) : a.xn;
    if (n.both) a.attn_out = mem(T, H);
    if (n.up > 0 || n.moe) a.xn2 = mem(T, H);
    if (n.up > 0) a.gate_up = mem(T, n.up), a.act = mem(T, n.ff);
    if (n.moe) {
      a.router = mem(DType::F32, T, NE), a.experts = mem(DType::I32, T, topk), a.weights = mem(DType::F32, T, topk);
      a.moe_out = mem(T, H);
    }
    if (n.shared) {
      a.cat = mem(T, 2 * H), a.cat_n = mem(T, 2 * H);
      if (cfg.attention_adapters) a.low = mem(T, 3 * rank);
      a.attn_o = mem(T, H), a.ff_in = mem(T, H), a.low_mlp = mem(T, rank), a.shared = mem(T, H), a.m_in = mem(T, H);
    }
  };
  if (b.all.moe) {
    const int64_t Tk = T * topk, U = cfg.moe_router == MoeRouter::SoftmaxTopK ? 2 * Fe : Fe;
    b.moe.up = mem(Tk, U), b.moe.act = mem(Tk, Fe), b.moe.down = mem(Tk, H);
    b.moe.index = mem(DType::I32, 1, 2 * Tk + 2 * NE + 2);
    b.moe.d_up = mem(Tk, U), b.moe.d_act = mem(Tk, Fe);
  }
  if (b.all.shared) b.lora_tmp = mem(T, std::max(O, 2 * F));
  if (n_ckpt > 0) alloc_acts(b.work, all_ckpt, keep_proj);
  b.acts.resize(size_t(L));
  b.h.push_back(mem(T, H));
  for (int64_t i = 0; i < L; ++i) {
    LayerActs& a = b.acts[size_t(i)];
    a.h_in = b.h.back();
    if (i >= n_ckpt) alloc_acts(a, Need(lp, i), false);
    else if (keep_proj) alloc_kept(a, Need(lp, i));
    b.h.push_back(mem(T, H));
  }
  b.xf = mem(T, H);
  b.xs = cfg.logits_scale != 1.f ? mem(T, H) : b.xf;
  if (opt.loss_only) return b;
  b.dxn = mem(T, H);
  const Need& all = b.all;
  b.dh = mem(T, H);
  if (all.ff > 0) b.d_act = mem(T, all.ff);
  if (all.up > 0) b.d_gate_up = mem(T, all.up);
  if (all.mamba) b.d_zxbcdt = mem(T, E), b.d_conv = mem(T, CD), b.d_y = mem(T, I), b.d_normed = mem(T, I);
  if (all.attn) b.d_qkv = mem(T, QKV), b.d_o = mem(T, O);
  b.d_block = mem(T, H);
  if (all.both) b.dxn_attn = mem(T, H);
  if (all.moe || all.shared) b.d_part = mem(T, H);
  if (all.moe) b.d_weights = mem(DType::F32, T, topk), b.d_logits = mem(T, NE);
  if (all.shared) {
    b.d_m = mem(T, H), b.d_sh = mem(T, H), b.d_ff = mem(T, H), b.d_low_mlp = mem(T, rank), b.d_emb = mem(T, H);
    b.d_catn = mem(T, 2 * H), b.d_cat = mem(T, 2 * H), b.d_wide = mem(T, 2 * H);
    if (cfg.attention_adapters) b.d_low = mem(T, 3 * rank);
  }
  if (n_ckpt > 0 && !keep_proj) b.h_scratch = mem(T, H);
  return b;
}

}  // namespace

// What forward_backward keeps from one step to the next: its buffers and its cache. A run's micro-batches all have
// one shape, and each step making its own cost ~400 device allocations (zero-filled) and as many frees, each
// waiting for the device, for the 9B — a drained pipeline every micro-batch. The buffers are written before they
// are read within a step (tests: FamilyTrain.ReusedBuffersChangeNothing), and every sequence starts from past 0,
// which the ops read as a zero state, so neither needs clearing.
struct HybridModel::TrainState {
  explicit TrainState(Backend& be) : mem(be) {}
  Arena mem;
  StepBuffers b;
  int64_t T = 0, n_ckpt = 0;
  bool keep_proj = false, backward = false;  // backward: the set has the backward's buffers (loss_only's has not)
  std::unique_ptr<HybridCache> cache;
};

StepMemory training_step_memory(const ModelConfig& cfg, int64_t rows, int64_t seq_len, const TrainOptions& opt,
                                DType activation) {
  Arena count(activation);
  allocate_step(cfg, rows * seq_len, opt, count);
  const CacheSizes c = training_cache_sizes(cfg, rows, seq_len);
  return {.activations = count.bytes(),
          .cache = int64_t(c.n_slots * HybridCache::bytes_per_slot(cfg) +
                           c.n_blocks * HybridCache::bytes_per_block(cfg, c.block_size, activation))};
}

std::string HybridModel::training_unsupported() const {
  // Every layer kind of ModelConfig has its backward (MoE since the moetrain branch, Zamba2's shared blocks too);
  // the hook stays for the next kind that is added without one.
  return "";
}

TrainResult HybridModel::forward_backward(const TrainBatch& batch, ModelWeights& g, const TrainOptions& opt) const {
  // Every layer structure but the ones named here (never a wrong gradient: a clear error instead).
  if (std::string why = training_unsupported(); !why.empty()) fail(cfg_.source, ": training: ", why);
  if (cfg_.tp_size > 1)
    fail(cfg_.source, ": training runs data-parallel (bamba train --nproc / WORLD_SIZE), not tensor-parallel");
  const int64_t Bn = batch.rows, S = batch.seq_len, T = Bn * S;
  BAMBA_CHECK(Bn > 0 && S > 0, "training batch is empty");
  BAMBA_CHECK(int64_t(batch.input_ids.size()) == T && int64_t(batch.labels.size()) == T, "training batch: ",
              batch.input_ids.size(), " input ids and ", batch.labels.size(), " labels for ", Bn, " rows of ", S);
  const int64_t H = cfg_.hidden_size, F = cfg_.intermediate_size, I = cfg_.mamba_inner, CD = cfg_.conv_dim(),
                E = cfg_.in_proj_dim(), L = cfg_.num_hidden_layers, V = cfg_.vocab_size;
  const float eps = cfg_.rms_norm_eps;

  // The sequences: one per row, or the documents of packed rows (each row start is a sequence start).
  std::vector<int32_t> starts = batch.seq_start;
  if (starts.empty())
    for (int64_t r = 0; r <= Bn; ++r) starts.push_back(int32_t(r * S));
  BAMBA_CHECK(starts.front() == 0 && starts.back() == T, "training batch: seq_start runs from ", starts.front(), " to ",
              starts.back(), ", expected 0 to ", T);
  for (size_t i = 1; i < starts.size(); ++i)
    BAMBA_CHECK(starts[i] > starts[i - 1], "training batch: seq_start[", i, "] = ", starts[i], " does not increase");
  for (int64_t r = 1; r < Bn; ++r)
    BAMBA_CHECK(std::binary_search(starts.begin(), starts.end(), int32_t(r * S)), "training batch: row ", r,
                " starts inside a sequence (seq_start must hold every row start)");
  const size_t n_seqs = starts.size() - 1;

  // The shifted targets: row t of the logits is scored against labels[t + 1] of the same sequence; the last
  // position of a sequence predicts nothing.
  std::vector<int32_t> targets(static_cast<size_t>(T), -100);
  int64_t n_labels = 0;
  for (size_t s = 0; s < n_seqs; ++s)
    for (int64_t t = starts[s]; t + 1 < starts[s + 1]; ++t) {
      const int32_t lab = batch.labels[size_t(t + 1)];
      BAMBA_CHECK(lab == -100 || (lab >= 0 && lab < V), "training batch row ", (t + 1) / S, " position ", (t + 1) % S,
                  ": label ", lab, " is out of range for vocab_size ", V, " (or -100)");
      targets[size_t(t)] = lab;
      n_labels += lab != -100;
    }

  // Layers [0, n_ckpt) are checkpointed (TrainOptions::checkpoint_layers), the rest keep everything.
  const int64_t n_ckpt = checkpointed_layer_count(opt.activation_checkpointing, opt.checkpoint_layers, L);
  auto ckpt = [&](int64_t i) { return i < n_ckpt; };
  const bool keep_proj = opt.activation_checkpointing == Checkpointing::Selective;
  // The step's buffers: the last step's when they are of this shape (TrainState), else made anew, the old ones
  // released first so that their memory comes back.
  TrainState* st = train_.get();
  if (!st || st->T != T || st->n_ckpt != n_ckpt || st->keep_proj != keep_proj || !(st->backward || opt.loss_only)) {
    train_.reset();
    train_ = std::make_shared<TrainState>(be_);
    st = train_.get();
    st->b = allocate_step(cfg_, T, opt, st->mem);
    st->T = T, st->n_ckpt = n_ckpt, st->keep_proj = keep_proj, st->backward = !opt.loss_only;
  }
  StepBuffers& b = st->b;

  // Every sequence from a zero state (past 0: positions from 0, a zero conv window and SSM state) and no state slot
  // (StepBatch slot -1: no step reads a document's final state back), and KV pages for the sequences' lengths
  // (packed rows of many short documents need at most T/16 + S). The backend's ops treat each StepBatch sequence
  // as its own causal stream. The cache is the last step's when it is large enough (it grows to the most any step
  // needed).
  CacheSizes sizes = training_cache_sizes(cfg_, Bn, S);
  if (sizes.n_blocks > 0) {
    sizes.n_blocks = 0;
    for (size_t s = 0; s < n_seqs; ++s)
      sizes.n_blocks += (starts[s + 1] - starts[s] + sizes.block_size - 1) / sizes.block_size;
  }
  if (!st->cache || st->cache->sizes().n_blocks < sizes.n_blocks) {  // (no slots to grow: training_cache_sizes)
    if (st->cache) sizes.n_blocks = std::max(sizes.n_blocks, st->cache->sizes().n_blocks);
    st->cache.reset();
    st->cache = std::make_unique<HybridCache>(cfg_, be_, sizes);
  }
  HybridCache& cache = *st->cache;
  StepBatch sb;
  std::vector<SeqCache> seqs(n_seqs);
  struct Held {  // the sequences' slots and pages go back to the kept cache however the step ends
    HybridCache& cache;
    std::vector<SeqCache>& seqs;
    ~Held() {
      for (auto& s : seqs) cache.release(s);
    }
  } held{cache, seqs};
  for (size_t s = 0; s < n_seqs; ++s) {
    const int32_t len = starts[s + 1] - starts[s];
    BAMBA_CHECK(cache.reserve(seqs[s], len, /*with_state=*/false), "internal: training cache too small");
    sb.add(std::span(batch.input_ids).subspan(size_t(starts[s]), size_t(len)), 0, seqs[s].slot, seqs[s].blocks);
  }
  for (int32_t tok : sb.tokens)
    BAMBA_CHECK(tok >= 0 && tok < V, "training batch: token id ", tok, " is out of range for vocab_size ", V);
  be_.set_batch(sb);

  // ---- forward, keeping the activations: every layer's, or (activation checkpointing) only each layer's input
  // (Selective: and its projections' outputs, see Checkpointing), the rest recomputed into one shared set of
  // buffers just before that layer's backward. The ops are deterministic, so the recomputed activations are the
  // same bits and so are the gradients.
  // The muP multipliers (Granite 4.0-H, Falcon-H1; all 1 for Bamba, Mamba2, Llama) are scale ops in the forward
  // and the same scales of the gradients in the backward: block outputs × residual_multiplier (Falcon-H1's
  // ssm_out / attention_out / mlp_multipliers[1] folded in), inputs × ssm_in / attention_in, the in_proj
  // segments × ssm_multipliers, keys × key_multiplier, the gate × mlp_multipliers[0].
  const float r = cfg_.residual_multiplier;
  const float mamba_out = r * cfg_.ssm_out_multiplier, attn_out = r * cfg_.attention_out_multiplier,
              mlp_out = r * cfg_.mlp_down_multiplier;
  const int64_t GN = cfg_.mamba_n_groups * cfg_.mamba_d_state, nq = cfg_.num_attention_heads,
                nkv = cfg_.num_key_value_heads, hd = cfg_.head_dim;
  const int64_t seg[6] = {0, I, 2 * I, 2 * I + GN, 2 * I + 2 * GN, E};  // z | x | B | C | dt of the in_proj output
  const float meps = cfg_.mamba_norm_eps;
  const LayerPlan lp{cfg_};
  const int64_t topk = cfg_.num_experts_per_tok, rank = cfg_.adapter_rank;
  const ExpertAct expert_act = cfg_.moe_router == MoeRouter::SoftmaxTopK ? ExpertAct::SwiGLU : ExpertAct::Relu2;
  // Zamba2: hybrid layer i is the hybrid_j[i]-th, and uses shared block hybrid_j[i] % num_mem_blocks.
  std::vector<int64_t> hybrid_j(size_t(L), -1);
  for (int64_t i = 0, j = 0; i < L; ++i)
    if (lp.is_shared(i)) hybrid_j[size_t(i)] = j++;
  auto take_kept = [](LayerActs& dst, const LayerActs& layer) {
    dst.h_mid = layer.h_mid, dst.zxbcdt = layer.zxbcdt, dst.qkv = layer.qkv, dst.o = layer.o;
  };
  // x · s into dst (a copy), or x itself when s is 1
  auto scaled_input = [&](Tensor dst, Tensor x, float s) {
    if (s == 1.f) return;
    be_.copy(dst, x);
    be_.scale(dst, s);
  };
  // The Mamba mixer on a.xn into out, × s (in place). replay (Selective checkpointing, before the backward): a.zxbcdt
  // is kept and out is not needed, so only what lies between the two projections runs.
  auto mamba_forward = [&](int64_t i, LayerActs& a, Tensor out, float s, bool replay) {
    const MambaWeights& w = w_.layers[size_t(i)].mamba;
    const int64_t k = cfg_.ssm_index(i);
    scaled_input(a.xm, a.xn, cfg_.ssm_in_multiplier);
    if (!replay) {
      be_.matmul(a.zxbcdt, a.xm, w.in_proj, w.in_proj_bias);
      for (int sg = 0; sg < 5; ++sg)
        if (cfg_.ssm_multipliers[sg] != 1.f)
          be_.scale(a.zxbcdt.slice_cols(seg[sg], seg[sg + 1]), cfg_.ssm_multipliers[sg]);
    }
    be_.conv1d_silu(a.conv, a.zxbcdt.slice_cols(I, I + CD), w.conv1d_weight, w.conv1d_bias, cache.conv_state(k));
    be_.ssd(a.y, a.conv, a.zxbcdt.slice_cols(I + CD, E), w.A_log, w.D, w.dt_bias, cache.ssm_state(k), mamba_ops_);
    if (cfg_.mamba_gated_norm) be_.gated_rmsnorm(a.normed, a.y, a.zxbcdt.slice_cols(0, I), w.norm, cfg_.gated_norm_group_size, meps);
    else be_.silu_gate(a.normed, a.y, a.zxbcdt.slice_cols(0, I));  // Falcon-H1 without mamba_rms_norm
    if (replay) return;
    be_.matmul(out, a.normed, w.out_proj, w.out_proj_bias);
    if (s != 1.f) be_.scale(out, s);
  };
  // replay: a.qkv (rotated) and a.o are kept; only the input the backward reads is made again.
  auto attention_forward = [&](int64_t i, LayerActs& a, Tensor out, float s, bool replay) {
    const AttentionWeights& w = w_.layers[size_t(i)].attn;
    scaled_input(a.xa, a.xn, cfg_.attention_in_multiplier);
    if (replay) return;
    be_.matmul(a.qkv, a.xa, w.qkv_proj, {});
    if (cfg_.key_multiplier != 1.f) be_.scale(a.qkv.slice_cols(nq * hd, (nq + nkv) * hd), cfg_.key_multiplier);
    AttentionOpsConfig c = attn_ops_;
    c.block_size = cache.sizes().block_size;
    be_.attention(a.o, a.qkv, cache.k_pages(cfg_.kv_index(i)), cache.v_pages(cfg_.kv_index(i)), c);
    be_.matmul(out, a.o, w.o_proj, {});
    if (s != 1.f) be_.scale(out, s);
  };
  // Zamba2 hybrid layer i: the shared block on concat(h_in, embeddings) (its own adapters), through the layer's
  // linear, plus h_in, normed into a.xn: the input of the layer's Mamba mixer (model/hybrid.cpp zamba2_hybrid).
  auto shared_block_forward = [&](int64_t i, LayerActs& a) {
    const LayerWeights& lw = w_.layers[size_t(i)];
    const SharedBlockWeights& blk = w_.shared_blocks[size_t(hybrid_j[size_t(i)] % cfg_.num_mem_blocks)];
    be_.copy(a.cat.slice_cols(0, H), a.h_in);
    be_.embed(a.cat.slice_cols(H, 2 * H), w_.embed_tokens);
    be_.rmsnorm(a.cat_n, a.cat, blk.input_layernorm, eps);
    be_.matmul(a.qkv, a.cat_n, blk.attn.qkv_proj, {});
    const int64_t col[4] = {0, nq * hd, (nq + nkv) * hd, (nq + 2 * nkv) * hd};
    if (cfg_.attention_adapters) {  // q, k, v each += B_j(A_j(cat_n))
      const Tensor ups[3] = {lw.adapters.q_up, lw.adapters.k_up, lw.adapters.v_up};
      be_.matmul(a.low, a.cat_n, lw.adapters.qkv_down, {});
      for (int p = 0; p < 3; ++p) {
        const Tensor d = b.lora_tmp.slice_cols(0, col[p + 1] - col[p]);
        be_.matmul(d, a.low.slice_cols(p * rank, (p + 1) * rank), ups[p], {});
        be_.add(a.qkv.slice_cols(col[p], col[p + 1]), d);
      }
    }
    AttentionOpsConfig c = attn_ops_;
    c.block_size = cache.sizes().block_size;
    be_.attention(a.o, a.qkv, cache.k_pages(cfg_.kv_index(i)), cache.v_pages(cfg_.kv_index(i)), c);
    be_.matmul(a.attn_o, a.o, blk.attn.o_proj, {});
    be_.rmsnorm(a.ff_in, a.attn_o, blk.pre_ff_layernorm, eps);  // no residual inside the shared block
    const Tensor gate_up = a.gate_up.slice_cols(0, 2 * F), act = a.act.slice_cols(0, F);
    be_.matmul(gate_up, a.ff_in, blk.gate_up_proj, {});
    be_.matmul(a.low_mlp, a.ff_in, lw.adapters.mlp_down, {});
    be_.matmul(b.lora_tmp.slice_cols(0, 2 * F), a.low_mlp, lw.adapters.mlp_up, {});
    be_.add(gate_up, b.lora_tmp.slice_cols(0, 2 * F));
    be_.geglu(act, gate_up);
    be_.matmul(a.shared, act, blk.down_proj, {});
    be_.matmul(a.m_in, a.shared, lw.linear, {});
    be_.add(a.m_in, a.h_in);  // the shared block feeds the mixer's input only, not the residual stream
    be_.rmsnorm(a.xn, a.m_in, lw.input_layernorm, eps);
  };
  // Layer i from a.h_in into a's buffers; h_out = its output (the next layer's input). replay (Selective
  // checkpointing, before the layer's backward): a.h_mid and the projections' outputs are kept and h_out is not
  // needed — only what the backward reads and was not kept runs again (a Zamba2 shared block runs whole).
  auto layer_forward = [&](int64_t i, LayerActs& a, Tensor h_out, bool replay) {
    const LayerWeights& lw = w_.layers[size_t(i)];
    const LayerKind kind = cfg_.layer_kinds[size_t(i)];
    // h_mid = h_in + mixer(xn)·multipliers
    if (kind == LayerKind::None) {
      if (!replay) be_.copy(a.h_mid, a.h_in);
    } else {
      if (kind == LayerKind::SharedAttention) shared_block_forward(i, a);  // a.xn = the mixer's normed input
      else be_.rmsnorm(a.xn, a.h_in, lw.input_layernorm, eps);
      if (kind == LayerKind::Mamba || kind == LayerKind::SharedAttention)
        mamba_forward(i, a, a.h_mid, mamba_out, replay);
      else if (kind == LayerKind::Attention) attention_forward(i, a, a.h_mid, attn_out, replay);
      else {  // Falcon-H1: both on the same normed input, summed
        attention_forward(i, a, a.attn_out, attn_out, replay);
        mamba_forward(i, a, a.h_mid, mamba_out, replay);
        if (!replay) be_.add(a.h_mid, a.attn_out);
      }
      if (!replay) be_.add(a.h_mid, a.h_in);
    }
    // h_out = h_mid + down(swiglu(gate_up(xn2)))·multipliers, or down(relu(up(xn2))²)
    if (!lp.has_mlp(i)) {
      if (!replay) be_.copy(h_out, a.h_mid);
      return;
    }
    be_.rmsnorm(a.xn2, a.h_mid, lw.pre_ff_layernorm, eps);
    const int64_t fw = lp.ff_width(i);
    if (fw > 0) {  // the dense MLP (MoE layers: the shared one) into h_out, × mlp_down_multiplier
      const Tensor gate_up = a.gate_up.slice_cols(0, lp.up_width(i)), act = a.act.slice_cols(0, fw);  // [T, 2F] or [T, F]
      be_.matmul(gate_up, a.xn2, lw.gate_up_proj, {});
      if (!lp.glu(i)) be_.relu2(act, gate_up);
      else {
        if (cfg_.mlp_gate_multiplier != 1.f) be_.scale(gate_up.slice_cols(0, fw), cfg_.mlp_gate_multiplier);
        be_.swiglu(act, gate_up);
      }
      if (!replay) be_.matmul(h_out, act, lw.down_proj, {});
    }
    if (!lp.is_moe(i)) {
      if (mlp_out != 1.f && !replay) be_.scale(h_out, mlp_out);
    } else {  // routed experts: + Σ_k weight_k · expert_k(xn2), the whole × residual_multiplier
      const MoeWeights& m = lw.moe;
      be_.matmul(a.router, a.xn2, m.router, {});
      be_.moe_route(a.experts, a.weights, a.router, m.router_bias, moe_ops_);
      if (replay) return;  // moe_experts_backward recomputes the experts' inner rows itself
      be_.moe_experts(a.moe_out, a.xn2, m.experts_up, m.experts_down, a.experts, a.weights, expert_act, b.moe);
      if (fw > 0) {
        if (cfg_.mlp_down_multiplier != 1.f) be_.scale(h_out, cfg_.mlp_down_multiplier);
        be_.add(h_out, a.moe_out);
      } else {
        be_.copy(h_out, a.moe_out);
      }
      if (r != 1.f) be_.scale(h_out, r);
    }
    if (!replay) be_.add(h_out, a.h_mid);
  };
  be_.embed(b.h[0], w_.embed_tokens);
  if (cfg_.embedding_multiplier != 1.f) be_.scale(b.h[0], cfg_.embedding_multiplier);
  TrainResult res;
  res.activation_bytes = st->mem.bytes();
  for (int64_t i = 0; i < L; ++i) {
    LayerActs& a = b.acts[size_t(i)];
    LayerActs in;  // a checkpointed layer runs in the shared set, with its own input (and Selective's kept tensors)
    if (ckpt(i)) {
      in = b.work;
      in.h_in = a.h_in;
      if (keep_proj) take_kept(in, a);
    }
    LayerActs& run = ckpt(i) ? in : a;
    layer_forward(i, run, b.h[size_t(i) + 1], false);
    if (opt.record_routing && lp.is_moe(i)) {  // I32 read back bit for bit through an F32 view of the same bytes
      std::vector<float> raw(size_t(T * topk));
      Tensor view = run.experts;
      view.dtype = DType::F32;
      be_.to_host_f32(view, raw.data());
      const size_t at = res.routing.size();
      res.routing.resize(at + raw.size());
      std::memcpy(res.routing.data() + at, raw.data(), raw.size() * 4);
    }
  }
  const Tensor h = b.h.back(), xf = b.xf, xs = b.xs, dxn = b.dxn;
  be_.rmsnorm(xf, h, w_.final_layernorm, eps);
  // logits = (xf·W^T)·logits_scale = (xf·logits_scale)·W^T: the cross-entropy reads the scaled rows, and the
  // gradient it returns w.r.t. them is scaled once more on the way back to xf.
  const float ls = cfg_.logits_scale;
  scaled_input(xs, xf, ls);

  // ---- loss and its gradient w.r.t. xs
  const int64_t label_div = opt.label_count > 0 ? opt.label_count : n_labels;
  const int64_t pos_div = opt.position_count > 0 ? opt.position_count : T;
  const double ce_scale = label_div > 0 ? 1.0 / double(label_div) : 0.0;  // HF: 0/0 = nan; we score nothing
  const double z_scale = double(opt.z_loss_coefficient) / double(pos_div);
  res.label_count = n_labels;
  if (opt.loss_only) {  // validation: the loss alone (no dx, no lm_head gradient: two of its three GEMMs skipped)
    res.loss = be_.lm_head_cross_entropy({}, {}, xs, w_.lm_head, targets, ce_scale, z_scale, opt.ce_chunk_rows);
    return res;
  }
  res.loss = be_.lm_head_cross_entropy(dxn, g.lm_head, xs, w_.lm_head, targets, ce_scale, z_scale, opt.ce_chunk_rows);
  if (ls != 1.f) be_.scale(dxn, ls);

  // ---- backward. dh: the gradient of the residual stream at the current point.
  const Tensor dh = b.dh;
  be_.rmsnorm_backward(dh, g.final_layernorm, dxn, h, w_.final_layernorm, eps);
  bool d_emb_set = false;  // b.d_emb: the gradient of the embeddings that enter the concat, summed over the uses
  // dh · s, in b.d_block (or dh itself when s is 1)
  auto scaled_grad = [&](float s) {
    if (s == 1.f) return dh;
    be_.copy(b.d_block, dh);
    be_.scale(b.d_block, s);
    return b.d_block;
  };
  // The Mamba mixer's backward: dout (w.r.t. its scaled output) → dx (w.r.t. xn).
  auto mamba_backward = [&](int64_t i, const LayerActs& a, Tensor dout, Tensor dx) {
    const MambaWeights& w = w_.layers[size_t(i)].mamba;
    MambaWeights& wg = g.layers[size_t(i)].mamba;
    be_.matmul_backward(b.d_normed, wg.out_proj, wg.out_proj_bias, dout, a.normed, w.out_proj);
    if (cfg_.mamba_gated_norm)
      be_.gated_rmsnorm_backward(b.d_y, b.d_zxbcdt.slice_cols(0, I), wg.norm, b.d_normed, a.y, a.zxbcdt.slice_cols(0, I),
                                 w.norm, cfg_.gated_norm_group_size, meps);
    else be_.silu_gate_backward(b.d_y, b.d_zxbcdt.slice_cols(0, I), b.d_normed, a.y, a.zxbcdt.slice_cols(0, I));
    be_.ssd_backward(b.d_conv, b.d_zxbcdt.slice_cols(I + CD, E), wg.A_log, wg.D, wg.dt_bias, {}, b.d_y, a.conv,
                     a.zxbcdt.slice_cols(I + CD, E), w.A_log, w.D, w.dt_bias, {}, mamba_ops_);
    be_.conv1d_silu_backward(b.d_zxbcdt.slice_cols(I, I + CD), wg.conv1d_weight, wg.conv1d_bias, b.d_conv,
                             a.zxbcdt.slice_cols(I, I + CD), w.conv1d_weight, w.conv1d_bias);
    for (int sg = 0; sg < 5; ++sg)
      if (cfg_.ssm_multipliers[sg] != 1.f) be_.scale(b.d_zxbcdt.slice_cols(seg[sg], seg[sg + 1]), cfg_.ssm_multipliers[sg]);
    be_.matmul_backward(dx, wg.in_proj, wg.in_proj_bias, b.d_zxbcdt, a.xm, w.in_proj);
    if (cfg_.ssm_in_multiplier != 1.f) be_.scale(dx, cfg_.ssm_in_multiplier);
  };
  auto attention_backward = [&](int64_t i, const LayerActs& a, Tensor dout, Tensor dx) {
    const AttentionWeights& w = w_.layers[size_t(i)].attn;
    AttentionWeights& wg = g.layers[size_t(i)].attn;
    AttentionOpsConfig c = attn_ops_;
    c.block_size = cache.sizes().block_size;
    be_.matmul_backward(b.d_o, wg.o_proj, {}, dout, a.o, w.o_proj);
    be_.attention_backward(b.d_qkv, b.d_o, a.qkv, c);
    if (cfg_.key_multiplier != 1.f) be_.scale(b.d_qkv.slice_cols(nq * hd, (nq + nkv) * hd), cfg_.key_multiplier);
    be_.matmul_backward(dx, wg.qkv_proj, {}, b.d_qkv, a.xa, w.qkv_proj);
    if (cfg_.attention_in_multiplier != 1.f) be_.scale(dx, cfg_.attention_in_multiplier);
  };
  for (int64_t i = L - 1; i >= 0; --i) {
    const LayerWeights& lw = w_.layers[size_t(i)];
    LayerWeights& lg = g.layers[size_t(i)];
    LayerActs recomputed = b.work;
    if (ckpt(i)) {
      const LayerActs& kept = b.acts[size_t(i)];
      recomputed.h_in = kept.h_in;
      if (keep_proj) take_kept(recomputed, kept);
      layer_forward(i, recomputed, b.h_scratch, keep_proj);
    }
    const LayerActs& a = ckpt(i) ? recomputed : b.acts[size_t(i)];
    // MLP: h_out = h_mid + down(swiglu(gate_up(xn2)))·mlp_out (without an MLP, h_out = h_mid: dh passes through);
    // MoE: h_out = h_mid + (routed(xn2) + shared(xn2)·mlp_down_multiplier)·residual_multiplier
    if (lp.has_mlp(i)) {
      const int64_t fw = lp.ff_width(i);
      // the dense MLP's backward from dout (w.r.t. its output after the multipliers) into dx (=)
      auto dense_backward = [&](Tensor dout, Tensor dx) {
        const Tensor gate_up = a.gate_up.slice_cols(0, lp.up_width(i)), dgu = b.d_gate_up.slice_cols(0, lp.up_width(i));
        const Tensor act = a.act.slice_cols(0, fw), dact = b.d_act.slice_cols(0, fw);
        be_.matmul_backward(dact, lg.down_proj, {}, dout, act, lw.down_proj);
        if (!lp.glu(i)) be_.relu2_backward(dgu, dact, gate_up);
        else {
          be_.swiglu_backward(dgu, dact, gate_up);
          if (cfg_.mlp_gate_multiplier != 1.f) be_.scale(dgu.slice_cols(0, fw), cfg_.mlp_gate_multiplier);
        }
        be_.matmul_backward(dx, lg.gate_up_proj, {}, dgu, a.xn2, lw.gate_up_proj);
      };
      if (!lp.is_moe(i)) dense_backward(scaled_grad(mlp_out), dxn);
      else {
        const MoeWeights& m = lw.moe;
        MoeWeights& mg = lg.moe;
        const Tensor d_out = scaled_grad(r);  // w.r.t. routed + shared·mlp_down_multiplier
        // routed experts → dxn and the routing weights' gradient → the router logits' → the router matmul
        be_.moe_experts_backward(dxn, mg.experts_up, mg.experts_down, b.d_weights, d_out, a.xn2, m.experts_up,
                                 m.experts_down, a.experts, a.weights, expert_act, b.moe);
        be_.moe_route_backward(b.d_logits, b.d_weights, a.router, a.experts, moe_ops_);
        be_.matmul_backward(b.d_part, mg.router, {}, b.d_logits, a.xn2, m.router);
        be_.add(dxn, b.d_part);
        if (fw > 0) {  // the shared MLP / shared expert on the same input
          Tensor d_shared = d_out;
          if (cfg_.mlp_down_multiplier != 1.f) {
            if (r == 1.f) be_.copy(b.d_block, dh);  // scaled_grad returned dh itself
            be_.scale(b.d_block, cfg_.mlp_down_multiplier);
            d_shared = b.d_block;
          }
          dense_backward(d_shared, b.d_part);
          be_.add(dxn, b.d_part);
        }
      }
      be_.add_rmsnorm_backward(dh, lg.pre_ff_layernorm, dxn, a.h_mid, lw.pre_ff_layernorm, eps);  // dh = d h_mid
    }
    // mixer: h_mid = h_in + mixer(xn)·multipliers
    const LayerKind kind = cfg_.layer_kinds[size_t(i)];
    if (kind == LayerKind::None) continue;
    if (kind == LayerKind::SharedAttention) {  // Zamba2: the mixer, then the shared block that feeds its input
      mamba_backward(i, a, scaled_grad(mamba_out), dxn);
      const SharedBlockWeights& blk = w_.shared_blocks[size_t(hybrid_j[size_t(i)] % cfg_.num_mem_blocks)];
      // The block's weights are one set used at several depths: every use adds its gradient into the same tensors.
      SharedBlockWeights& bg = g.shared_blocks[size_t(hybrid_j[size_t(i)] % cfg_.num_mem_blocks)];
      be_.rmsnorm_backward(b.d_m, lg.input_layernorm, dxn, a.m_in, lw.input_layernorm, eps);  // d m_in
      be_.add(dh, b.d_m);  // m_in = h_in + linear(shared)
      be_.matmul_backward(b.d_sh, lg.linear, {}, b.d_m, a.shared, lw.linear);
      const Tensor gate_up = a.gate_up.slice_cols(0, 2 * F), dgu = b.d_gate_up.slice_cols(0, 2 * F);
      const Tensor act = a.act.slice_cols(0, F), dact = b.d_act.slice_cols(0, F);
      be_.matmul_backward(dact, bg.down_proj, {}, b.d_sh, act, blk.down_proj);
      be_.geglu_backward(dgu, dact, gate_up);
      be_.matmul_backward(b.d_ff, bg.gate_up_proj, {}, dgu, a.ff_in, blk.gate_up_proj);
      be_.matmul_backward(b.d_low_mlp, lg.adapters.mlp_up, {}, dgu, a.low_mlp, lw.adapters.mlp_up);
      be_.matmul_backward(b.d_part, lg.adapters.mlp_down, {}, b.d_low_mlp, a.ff_in, lw.adapters.mlp_down);
      be_.add(b.d_ff, b.d_part);
      be_.rmsnorm_backward(b.d_sh, bg.pre_ff_layernorm, b.d_ff, a.attn_o, blk.pre_ff_layernorm, eps);  // d attn_o
      be_.matmul_backward(b.d_o, bg.attn.o_proj, {}, b.d_sh, a.o, blk.attn.o_proj);
      AttentionOpsConfig c = attn_ops_;
      c.block_size = cache.sizes().block_size;
      be_.attention_backward(b.d_qkv, b.d_o, a.qkv, c);
      be_.matmul_backward(b.d_catn, bg.attn.qkv_proj, {}, b.d_qkv, a.cat_n, blk.attn.qkv_proj);
      if (cfg_.attention_adapters) {
        const int64_t col[4] = {0, nq * hd, (nq + nkv) * hd, (nq + 2 * nkv) * hd};
        const Tensor ups[3] = {lw.adapters.q_up, lw.adapters.k_up, lw.adapters.v_up};
        Tensor* ups_g[3] = {&lg.adapters.q_up, &lg.adapters.k_up, &lg.adapters.v_up};
        for (int p = 0; p < 3; ++p)
          be_.matmul_backward(b.d_low.slice_cols(p * rank, (p + 1) * rank), *ups_g[p], {},
                              b.d_qkv.slice_cols(col[p], col[p + 1]), a.low.slice_cols(p * rank, (p + 1) * rank), ups[p]);
        be_.matmul_backward(b.d_wide, lg.adapters.qkv_down, {}, b.d_low, a.cat_n, lw.adapters.qkv_down);
        be_.add(b.d_catn, b.d_wide);
      }
      be_.rmsnorm_backward(b.d_cat, bg.input_layernorm, b.d_catn, a.cat, blk.input_layernorm, eps);
      be_.add(dh, b.d_cat.slice_cols(0, H));  // dh = d h_in: the residual, the mixer input and the concat
      if (d_emb_set) be_.add(b.d_emb, b.d_cat.slice_cols(H, 2 * H));
      else be_.copy(b.d_emb, b.d_cat.slice_cols(H, 2 * H));
      d_emb_set = true;
      continue;
    }
    if (kind == LayerKind::Mamba) mamba_backward(i, a, scaled_grad(mamba_out), dxn);
    else if (kind == LayerKind::Attention) attention_backward(i, a, scaled_grad(attn_out), dxn);
    else {  // Falcon-H1: the two branches' input gradients add up
      attention_backward(i, a, scaled_grad(attn_out), b.dxn_attn);
      mamba_backward(i, a, scaled_grad(mamba_out), dxn);
      be_.add(dxn, b.dxn_attn);
    }
    be_.add_rmsnorm_backward(dh, lg.input_layernorm, dxn, a.h_in, lw.input_layernorm, eps);  // dh = d h_in
  }
  if (cfg_.embedding_multiplier != 1.f) be_.scale(dh, cfg_.embedding_multiplier);
  if (d_emb_set) be_.add(dh, b.d_emb);  // Zamba2: the raw embeddings concatenated in every hybrid layer
  // HF's nn.Embedding(..., padding_idx=pad_token_id): no lookup gradient for the pad row (a tied lm_head's is kept)
  const int32_t pad = cfg_.pad_token_id >= 0 && cfg_.pad_token_id < V ? int32_t(cfg_.pad_token_id) : -1;
  be_.embed_backward(g.embed_tokens, dh, pad);
  return res;
}

}  // namespace bamba
