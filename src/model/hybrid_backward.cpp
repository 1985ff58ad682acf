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

// Backend tensors released together at the end of the step.
class Arena {
 public:
  explicit Arena(Backend& be) : be_(be) {}
  ~Arena() {
    for (Tensor t : owned_) be_.release(t);
  }
  Tensor operator()(int64_t rows, int64_t cols) {
    owned_.push_back(be_.alloc_activation({rows, cols}));  // the compute dtype: what the ops read and write
    return owned_.back();
  }
  Tensor operator()(DType dtype, int64_t rows, int64_t cols) {  // F32 router logits, I32 expert ids
    owned_.push_back(be_.alloc(dtype, {rows, cols}));
    return owned_.back();
  }

 private:
  Backend& be_;
  std::vector<Tensor> owned_;
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

}  // namespace

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
  const int64_t QKV = cfg_.qkv_dim(), O = cfg_.num_attention_heads * cfg_.head_dim;
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

  // Every sequence from a zero state (past 0: positions from 0, a zero conv window and SSM state), in a cache
  // that holds exactly the batch. The backend's ops treat each StepBatch sequence as its own causal stream.
  // KV pages for exactly the sequences' lengths (packed rows of many short documents need at most T/16 + S), and
  // one state slot per sequence.
  CacheSizes sizes = HybridCache::sizes_for(cfg_, int32_t(n_seqs), int32_t(S));
  if (sizes.n_blocks > 0) {
    sizes.n_blocks = 0;
    for (size_t s = 0; s < n_seqs; ++s)
      sizes.n_blocks += (starts[s + 1] - starts[s] + sizes.block_size - 1) / sizes.block_size;
  }
  HybridCache cache(cfg_, be_, sizes);
  StepBatch sb;
  std::vector<SeqCache> seqs(n_seqs);
  for (size_t s = 0; s < n_seqs; ++s) {
    const int32_t len = starts[s + 1] - starts[s];
    BAMBA_CHECK(cache.reserve(seqs[s], len), "internal: training cache too small");
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
  auto kind_of = [&](int64_t i) { return cfg_.layer_kinds[size_t(i)]; };
  auto is_shared = [&](int64_t i) { return kind_of(i) == LayerKind::SharedAttention; };  // Zamba2 hybrid layer
  auto has_mamba = [&](int64_t i) {
    return kind_of(i) == LayerKind::Mamba || kind_of(i) == LayerKind::MambaAttention || is_shared(i);
  };
  auto has_attn = [&](int64_t i) { return kind_of(i) == LayerKind::Attention || kind_of(i) == LayerKind::MambaAttention; };
  auto has_mlp = [&](int64_t i) { return cfg_.mlp_kinds[size_t(i)] != MlpKind::None; };
  auto is_moe = [&](int64_t i) { return cfg_.mlp_kinds[size_t(i)] == MlpKind::MoE; };
  // The dense MLP of a layer: its own, or in an MoE layer the shared MLP / shared expert (width 0: none).
  auto ff_width = [&](int64_t i) { return !has_mlp(i) ? 0 : is_moe(i) ? cfg_.shared_intermediate_size : F; };
  auto glu = [&](int64_t i) {  // SwiGLU, else relu² (Nemotron-H's MLP, shared and routed experts)
    return cfg_.mlp_kinds[size_t(i)] == MlpKind::SwiGLU || (is_moe(i) && cfg_.moe_router == MoeRouter::SoftmaxTopK);
  };
  auto up_width = [&](int64_t i) { return glu(i) ? 2 * ff_width(i) : ff_width(i); };  // gate | up, or up
  const int64_t NE = cfg_.num_experts, topk = cfg_.num_experts_per_tok, Fe = cfg_.moe_intermediate_size,
                rank = cfg_.adapter_rank;
  const ExpertAct expert_act = cfg_.moe_router == MoeRouter::SoftmaxTopK ? ExpertAct::SwiGLU : ExpertAct::Relu2;
  // Zamba2: hybrid layer i is the hybrid_j[i]-th, and uses shared block hybrid_j[i] % num_mem_blocks.
  std::vector<int64_t> hybrid_j(size_t(L), -1);
  for (int64_t i = 0, j = 0; i < L; ++i)
    if (is_shared(i)) hybrid_j[size_t(i)] = j++;
  Arena mem(be_);
  // Which buffers a layer keeps (merged over all layers for the one recomputation set of checkpointing).
  struct Need {
    bool mamba = false, attn = false, both = false, moe = false, shared = false;
    int64_t up = 0, ff = 0;  // the dense MLP's up width and width (Zamba2's shared block: its GeGLU)
  };
  auto need_of = [&](int64_t i) {
    Need n;
    n.mamba = has_mamba(i), n.attn = has_attn(i) || is_shared(i), n.both = kind_of(i) == LayerKind::MambaAttention;
    n.moe = is_moe(i), n.shared = is_shared(i);
    n.up = up_width(i), n.ff = ff_width(i);
    if (n.shared) n.up = 2 * F, n.ff = F;
    return n;
  };
  // The tensors Selective checkpointing keeps per layer: the residual after the mixer and the projections' outputs.
  auto alloc_kept = [&](LayerActs& a, const Need& n) {
    a.h_mid = mem(T, H);
    if (n.mamba) a.zxbcdt = mem(T, E);
    if (n.attn) a.qkv = mem(T, QKV), a.o = mem(T, O);
  };
  auto take_kept = [](LayerActs& dst, const LayerActs& layer) {
    dst.h_mid = layer.h_mid, dst.zxbcdt = layer.zxbcdt, dst.qkv = layer.qkv, dst.o = layer.o;
  };
  // kept_apart: the shared recomputation set of Selective checkpointing, which takes alloc_kept's from the layer
  auto alloc_acts = [&](LayerActs& a, const Need& n, bool kept_apart = false) {
    if (!kept_apart) alloc_kept(a, n);
    a.xn = mem(T, H);
    if (n.mamba) {
      a.xm = cfg_.ssm_in_multiplier != 1.f ? mem(T, H) : a.xn;
      a.conv = mem(T, CD), a.y = mem(T, I), a.normed = mem(T, I);
    }
    if (n.attn) a.xa = cfg_.attention_in_multiplier != 1.f ? mem(T, H) : a.xn;
    if (n.both) a.attn_out = mem(T, H);
    if (n.up > 0 || n.moe) a.xn2 = mem(T, H);
    if (n.up > 0) a.gate_up = mem(T, n.up), a.act = mem(T, n.ff);
    if (n.moe) {
      a.router = mem(DType::F32, T, NE), a.experts = mem(DType::I32, T, topk), a.weights = mem(DType::F32, T, topk);
      a.moe_out = mem(T, H);
    }
    if (n.shared) {
      a.cat = mem(T, 2 * H), a.cat_n = mem(T, 2 * H);
      if (cfg_.attention_adapters) a.low = mem(T, 3 * rank);
      a.attn_o = mem(T, H), a.ff_in = mem(T, H), a.low_mlp = mem(T, rank), a.shared = mem(T, H), a.m_in = mem(T, H);
    }
  };
  bool any_moe = false, any_shared = false;
  for (int64_t i = 0; i < L; ++i) any_moe |= is_moe(i), any_shared |= is_shared(i);
  // The routed experts' gathered rows (forward and backward), shared by every MoE layer.
  MoeScratch moe_sc;
  if (any_moe) {
    const int64_t Tk = T * topk, U = expert_act == ExpertAct::SwiGLU ? 2 * Fe : Fe;
    moe_sc.up = mem(Tk, U), moe_sc.act = mem(Tk, Fe), moe_sc.down = mem(Tk, H);
    moe_sc.index = mem(DType::I32, 1, 2 * Tk + 2 * NE + 2);
    moe_sc.d_up = mem(Tk, U), moe_sc.d_act = mem(Tk, Fe);
  }
  // Zamba2: an adapter's output before it is added ([T, max(q, k, v width, 2F)])
  Tensor lora_tmp = any_shared ? mem(T, std::max(O, 2 * F)) : Tensor{};
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
        const Tensor d = lora_tmp.slice_cols(0, col[p + 1] - col[p]);
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
    be_.matmul(lora_tmp.slice_cols(0, 2 * F), a.low_mlp, lw.adapters.mlp_up, {});
    be_.add(gate_up, lora_tmp.slice_cols(0, 2 * F));
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
    if (!has_mlp(i)) {
      if (!replay) be_.copy(h_out, a.h_mid);
      return;
    }
    be_.rmsnorm(a.xn2, a.h_mid, lw.pre_ff_layernorm, eps);
    const int64_t fw = ff_width(i);
    if (fw > 0) {  // the dense MLP (MoE layers: the shared one) into h_out, × mlp_down_multiplier
      const Tensor gate_up = a.gate_up.slice_cols(0, up_width(i)), act = a.act.slice_cols(0, fw);  // [T, 2F] or [T, F]
      be_.matmul(gate_up, a.xn2, lw.gate_up_proj, {});
      if (!glu(i)) be_.relu2(act, gate_up);
      else {
        if (cfg_.mlp_gate_multiplier != 1.f) be_.scale(gate_up.slice_cols(0, fw), cfg_.mlp_gate_multiplier);
        be_.swiglu(act, gate_up);
      }
      if (!replay) be_.matmul(h_out, act, lw.down_proj, {});
    }
    if (!is_moe(i)) {
      if (mlp_out != 1.f && !replay) be_.scale(h_out, mlp_out);
    } else {  // routed experts: + Σ_k weight_k · expert_k(xn2), the whole × residual_multiplier
      const MoeWeights& m = lw.moe;
      be_.matmul(a.router, a.xn2, m.router, {});
      be_.moe_route(a.experts, a.weights, a.router, m.router_bias, moe_ops_);
      if (replay) return;  // moe_experts_backward recomputes the experts' inner rows itself
      be_.moe_experts(a.moe_out, a.xn2, m.experts_up, m.experts_down, a.experts, a.weights, expert_act, moe_sc);
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
  // Layers [0, n_ckpt) are checkpointed (TrainOptions::checkpoint_layers), the rest keep everything.
  const int64_t n_ckpt = checkpointed_layer_count(opt.activation_checkpointing, opt.checkpoint_layers, L);
  auto ckpt = [&](int64_t i) { return i < n_ckpt; };
  const bool keep_proj = opt.activation_checkpointing == Checkpointing::Selective;
  std::vector<LayerActs> acts(static_cast<size_t>(L));
  LayerActs work;  // checkpointing: the one set of buffers every checkpointed layer is (re)computed into
  Need all, all_ckpt;  // every layer's needs merged; the checkpointed layers' (the size of `work`)
  auto merge = [](Need& into, const Need& n) {
    into.mamba |= n.mamba, into.attn |= n.attn, into.both |= n.both, into.moe |= n.moe, into.shared |= n.shared;
    into.up = std::max(into.up, n.up), into.ff = std::max(into.ff, n.ff);
  };
  for (int64_t i = 0; i < L; ++i) {
    merge(all, need_of(i));
    if (ckpt(i)) merge(all_ckpt, need_of(i));
  }
  if (n_ckpt > 0) alloc_acts(work, all_ckpt, keep_proj);
  Tensor h = mem(T, H);
  be_.embed(h, w_.embed_tokens);
  if (cfg_.embedding_multiplier != 1.f) be_.scale(h, cfg_.embedding_multiplier);
  TrainResult res;
  for (int64_t i = 0; i < L; ++i) {
    LayerActs& a = acts[size_t(i)];
    Tensor experts;  // this layer's chosen experts (MoE)
    if (ckpt(i)) {
      LayerActs in = work;
      in.h_in = a.h_in = h;
      if (keep_proj) {
        alloc_kept(a, need_of(i));
        take_kept(in, a);
      }
      h = mem(T, H);
      layer_forward(i, in, h, false);
      experts = in.experts;
    } else {
      alloc_acts(a, need_of(i));
      a.h_in = h;
      h = mem(T, H);
      layer_forward(i, a, h, false);
      experts = a.experts;
    }
    if (opt.record_routing && is_moe(i)) {  // I32 read back bit for bit through an F32 view of the same bytes
      std::vector<float> raw(size_t(T * topk));
      Tensor view = experts;
      view.dtype = DType::F32;
      be_.to_host_f32(view, raw.data());
      const size_t at = res.routing.size();
      res.routing.resize(at + raw.size());
      std::memcpy(res.routing.data() + at, raw.data(), raw.size() * 4);
    }
  }
  Tensor xf = mem(T, H);  // final_layernorm(h)
  be_.rmsnorm(xf, h, w_.final_layernorm, eps);
  // logits = (xf·W^T)·logits_scale = (xf·logits_scale)·W^T: the cross-entropy reads the scaled rows, and the
  // gradient it returns w.r.t. them is scaled once more on the way back to xf.
  const float ls = cfg_.logits_scale;
  Tensor xs = xf;
  if (ls != 1.f) {
    xs = mem(T, H);
    scaled_input(xs, xf, ls);
  }

  // ---- loss and its gradient w.r.t. xs
  const int64_t label_div = opt.label_count > 0 ? opt.label_count : n_labels;
  const int64_t pos_div = opt.position_count > 0 ? opt.position_count : T;
  const double ce_scale = label_div > 0 ? 1.0 / double(label_div) : 0.0;  // HF: 0/0 = nan; we score nothing
  const double z_scale = double(opt.z_loss_coefficient) / double(pos_div);
  Tensor dxn = mem(T, H);
  res.label_count = n_labels;
  if (opt.loss_only) {  // validation: the lm_head gradient goes to a scratch buffer, nothing else is computed
    Tensor scratch = mem(w_.lm_head.shape[0], w_.lm_head.shape[1]);
    res.loss = be_.lm_head_cross_entropy(dxn, scratch, xs, w_.lm_head, targets, ce_scale, z_scale, opt.ce_chunk_rows);
    for (auto& s : seqs) cache.release(s);
    return res;
  }
  res.loss = be_.lm_head_cross_entropy(dxn, g.lm_head, xs, w_.lm_head, targets, ce_scale, z_scale, opt.ce_chunk_rows);
  if (ls != 1.f) be_.scale(dxn, ls);

  // ---- backward. dh: the gradient of the residual stream at the current point.
  Tensor dh = mem(T, H);
  be_.rmsnorm_backward(dh, g.final_layernorm, dxn, h, w_.final_layernorm, eps);
  Tensor d_act = all.ff > 0 ? mem(T, all.ff) : Tensor{}, d_gate_up = all.up > 0 ? mem(T, all.up) : Tensor{};  // MLP
  Tensor d_zxbcdt, d_conv, d_y, d_normed;                                                        // Mamba
  if (all.mamba) d_zxbcdt = mem(T, E), d_conv = mem(T, CD), d_y = mem(T, I), d_normed = mem(T, I);
  Tensor d_qkv = all.attn ? mem(T, QKV) : Tensor{}, d_o = all.attn ? mem(T, O) : Tensor{};  // attention
  Tensor d_block = mem(T, H);                     // a block output's gradient: dh × its multiplier
  Tensor dxn_attn = all.both ? mem(T, H) : Tensor{};  // Falcon-H1: the attention branch's input gradient
  Tensor d_part = all.moe || all.shared ? mem(T, H) : Tensor{};  // one more input gradient to add up
  Tensor d_weights, d_logits;  // MoE: the routing weights' and the router logits' gradients
  if (all.moe) d_weights = mem(DType::F32, T, topk), d_logits = mem(T, NE);
  Tensor d_m, d_sh, d_ff, d_low, d_low_mlp, d_catn, d_cat, d_wide, d_emb;  // Zamba2's shared blocks
  bool d_emb_set = false;  // d_emb: the gradient of the embeddings that enter the concat, summed over the uses
  if (all.shared) {
    d_m = mem(T, H), d_sh = mem(T, H), d_ff = mem(T, H), d_low_mlp = mem(T, rank), d_emb = mem(T, H);
    d_catn = mem(T, 2 * H), d_cat = mem(T, 2 * H), d_wide = mem(T, 2 * H);
    if (cfg_.attention_adapters) d_low = mem(T, 3 * rank);
  }
  // the recomputed layer's output, not needed again
  Tensor h_scratch = n_ckpt > 0 && !keep_proj ? mem(T, H) : Tensor{};
  // dh · s, in d_block (or dh itself when s is 1)
  auto scaled_grad = [&](float s) {
    if (s == 1.f) return dh;
    be_.copy(d_block, dh);
    be_.scale(d_block, s);
    return d_block;
  };
  // The Mamba mixer's backward: dout (w.r.t. its scaled output) → dx (w.r.t. xn).
  auto mamba_backward = [&](int64_t i, const LayerActs& a, Tensor dout, Tensor dx) {
    const MambaWeights& w = w_.layers[size_t(i)].mamba;
    MambaWeights& wg = g.layers[size_t(i)].mamba;
    be_.matmul_backward(d_normed, wg.out_proj, wg.out_proj_bias, dout, a.normed, w.out_proj);
    if (cfg_.mamba_gated_norm)
      be_.gated_rmsnorm_backward(d_y, d_zxbcdt.slice_cols(0, I), wg.norm, d_normed, a.y, a.zxbcdt.slice_cols(0, I),
                                 w.norm, cfg_.gated_norm_group_size, meps);
    else be_.silu_gate_backward(d_y, d_zxbcdt.slice_cols(0, I), d_normed, a.y, a.zxbcdt.slice_cols(0, I));
    be_.ssd_backward(d_conv, d_zxbcdt.slice_cols(I + CD, E), wg.A_log, wg.D, wg.dt_bias, {}, d_y, a.conv,
                     a.zxbcdt.slice_cols(I + CD, E), w.A_log, w.D, w.dt_bias, {}, mamba_ops_);
    be_.conv1d_silu_backward(d_zxbcdt.slice_cols(I, I + CD), wg.conv1d_weight, wg.conv1d_bias, d_conv,
                             a.zxbcdt.slice_cols(I, I + CD), w.conv1d_weight, w.conv1d_bias);
    for (int sg = 0; sg < 5; ++sg)
      if (cfg_.ssm_multipliers[sg] != 1.f) be_.scale(d_zxbcdt.slice_cols(seg[sg], seg[sg + 1]), cfg_.ssm_multipliers[sg]);
    be_.matmul_backward(dx, wg.in_proj, wg.in_proj_bias, d_zxbcdt, a.xm, w.in_proj);
    if (cfg_.ssm_in_multiplier != 1.f) be_.scale(dx, cfg_.ssm_in_multiplier);
  };
  auto attention_backward = [&](int64_t i, const LayerActs& a, Tensor dout, Tensor dx) {
    const AttentionWeights& w = w_.layers[size_t(i)].attn;
    AttentionWeights& wg = g.layers[size_t(i)].attn;
    AttentionOpsConfig c = attn_ops_;
    c.block_size = cache.sizes().block_size;
    be_.matmul_backward(d_o, wg.o_proj, {}, dout, a.o, w.o_proj);
    be_.attention_backward(d_qkv, d_o, a.qkv, c);
    if (cfg_.key_multiplier != 1.f) be_.scale(d_qkv.slice_cols(nq * hd, (nq + nkv) * hd), cfg_.key_multiplier);
    be_.matmul_backward(dx, wg.qkv_proj, {}, d_qkv, a.xa, w.qkv_proj);
    if (cfg_.attention_in_multiplier != 1.f) be_.scale(dx, cfg_.attention_in_multiplier);
  };
  for (int64_t i = L - 1; i >= 0; --i) {
    const LayerWeights& lw = w_.layers[size_t(i)];
    LayerWeights& lg = g.layers[size_t(i)];
    LayerActs recomputed = work;
    if (ckpt(i)) {
      const LayerActs& kept = acts[size_t(i)];
      recomputed.h_in = kept.h_in;
      if (keep_proj) take_kept(recomputed, kept);
      layer_forward(i, recomputed, h_scratch, keep_proj);
    }
    const LayerActs& a = ckpt(i) ? recomputed : acts[size_t(i)];
    // MLP: h_out = h_mid + down(swiglu(gate_up(xn2)))·mlp_out (without an MLP, h_out = h_mid: dh passes through);
    // MoE: h_out = h_mid + (routed(xn2) + shared(xn2)·mlp_down_multiplier)·residual_multiplier
    if (has_mlp(i)) {
      const int64_t fw = ff_width(i);
      // the dense MLP's backward from dout (w.r.t. its output after the multipliers) into dx (=)
      auto dense_backward = [&](Tensor dout, Tensor dx) {
        const Tensor gate_up = a.gate_up.slice_cols(0, up_width(i)), dgu = d_gate_up.slice_cols(0, up_width(i));
        const Tensor act = a.act.slice_cols(0, fw), dact = d_act.slice_cols(0, fw);
        be_.matmul_backward(dact, lg.down_proj, {}, dout, act, lw.down_proj);
        if (!glu(i)) be_.relu2_backward(dgu, dact, gate_up);
        else {
          be_.swiglu_backward(dgu, dact, gate_up);
          if (cfg_.mlp_gate_multiplier != 1.f) be_.scale(dgu.slice_cols(0, fw), cfg_.mlp_gate_multiplier);
        }
        be_.matmul_backward(dx, lg.gate_up_proj, {}, dgu, a.xn2, lw.gate_up_proj);
      };
      if (!is_moe(i)) dense_backward(scaled_grad(mlp_out), dxn);
      else {
        const MoeWeights& m = lw.moe;
        MoeWeights& mg = lg.moe;
        const Tensor d_out = scaled_grad(r);  // w.r.t. routed + shared·mlp_down_multiplier
        // routed experts → dxn and the routing weights' gradient → the router logits' → the router matmul
        be_.moe_experts_backward(dxn, mg.experts_up, mg.experts_down, d_weights, d_out, a.xn2, m.experts_up,
                                 m.experts_down, a.experts, a.weights, expert_act, moe_sc);
        be_.moe_route_backward(d_logits, d_weights, a.router, a.experts, moe_ops_);
        be_.matmul_backward(d_part, mg.router, {}, d_logits, a.xn2, m.router);
        be_.add(dxn, d_part);
        if (fw > 0) {  // the shared MLP / shared expert on the same input
          Tensor d_shared = d_out;
          if (cfg_.mlp_down_multiplier != 1.f) {
            if (r == 1.f) be_.copy(d_block, dh);  // scaled_grad returned dh itself
            be_.scale(d_block, cfg_.mlp_down_multiplier);
            d_shared = d_block;
          }
          dense_backward(d_shared, d_part);
          be_.add(dxn, d_part);
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
      be_.rmsnorm_backward(d_m, lg.input_layernorm, dxn, a.m_in, lw.input_layernorm, eps);  // d m_in
      be_.add(dh, d_m);  // m_in = h_in + linear(shared)
      be_.matmul_backward(d_sh, lg.linear, {}, d_m, a.shared, lw.linear);
      const Tensor gate_up = a.gate_up.slice_cols(0, 2 * F), dgu = d_gate_up.slice_cols(0, 2 * F);
      const Tensor act = a.act.slice_cols(0, F), dact = d_act.slice_cols(0, F);
      be_.matmul_backward(dact, bg.down_proj, {}, d_sh, act, blk.down_proj);
      be_.geglu_backward(dgu, dact, gate_up);
      be_.matmul_backward(d_ff, bg.gate_up_proj, {}, dgu, a.ff_in, blk.gate_up_proj);
      be_.matmul_backward(d_low_mlp, lg.adapters.mlp_up, {}, dgu, a.low_mlp, lw.adapters.mlp_up);
      be_.matmul_backward(d_part, lg.adapters.mlp_down, {}, d_low_mlp, a.ff_in, lw.adapters.mlp_down);
      be_.add(d_ff, d_part);
      be_.rmsnorm_backward(d_sh, bg.pre_ff_layernorm, d_ff, a.attn_o, blk.pre_ff_layernorm, eps);  // d attn_o
      be_.matmul_backward(d_o, bg.attn.o_proj, {}, d_sh, a.o, blk.attn.o_proj);
      AttentionOpsConfig c = attn_ops_;
      c.block_size = cache.sizes().block_size;
      be_.attention_backward(d_qkv, d_o, a.qkv, c);
      be_.matmul_backward(d_catn, bg.attn.qkv_proj, {}, d_qkv, a.cat_n, blk.attn.qkv_proj);
      if (cfg_.attention_adapters) {
        const int64_t col[4] = {0, nq * hd, (nq + nkv) * hd, (nq + 2 * nkv) * hd};
        const Tensor ups[3] = {lw.adapters.q_up, lw.adapters.k_up, lw.adapters.v_up};
        Tensor* ups_g[3] = {&lg.adapters.q_up, &lg.adapters.k_up, &lg.adapters.v_up};
        for (int p = 0; p < 3; ++p)
          be_.matmul_backward(d_low.slice_cols(p * rank, (p + 1) * rank), *ups_g[p], {},
                              d_qkv.slice_cols(col[p], col[p + 1]), a.low.slice_cols(p * rank, (p + 1) * rank), ups[p]);
        be_.matmul_backward(d_wide, lg.adapters.qkv_down, {}, d_low, a.cat_n, lw.adapters.qkv_down);
        be_.add(d_catn, d_wide);
      }
      be_.rmsnorm_backward(d_cat, bg.input_layernorm, d_catn, a.cat, blk.input_layernorm, eps);
      be_.add(dh, d_cat.slice_cols(0, H));  // dh = d h_in: the residual, the mixer input and the concat
      if (d_emb_set) be_.add(d_emb, d_cat.slice_cols(H, 2 * H));
      else be_.copy(d_emb, d_cat.slice_cols(H, 2 * H));
      d_emb_set = true;
      continue;
    }
    if (kind == LayerKind::Mamba) mamba_backward(i, a, scaled_grad(mamba_out), dxn);
    else if (kind == LayerKind::Attention) attention_backward(i, a, scaled_grad(attn_out), dxn);
    else {  // Falcon-H1: the two branches' input gradients add up
      attention_backward(i, a, scaled_grad(attn_out), dxn_attn);
      mamba_backward(i, a, scaled_grad(mamba_out), dxn);
      be_.add(dxn, dxn_attn);
    }
    be_.add_rmsnorm_backward(dh, lg.input_layernorm, dxn, a.h_in, lw.input_layernorm, eps);  // dh = d h_in
  }
  if (cfg_.embedding_multiplier != 1.f) be_.scale(dh, cfg_.embedding_multiplier);
  if (d_emb_set) be_.add(dh, d_emb);  // Zamba2: the raw embeddings concatenated in every hybrid layer
  // HF's nn.Embedding(..., padding_idx=pad_token_id): no lookup gradient for the pad row (a tied lm_head's is kept)
  const int32_t pad = cfg_.pad_token_id >= 0 && cfg_.pad_token_id < V ? int32_t(cfg_.pad_token_id) : -1;
  be_.embed_backward(g.embed_tokens, dh, pad);
  for (auto& s : seqs) cache.release(s);
  return res;
}

}  // namespace bamba
