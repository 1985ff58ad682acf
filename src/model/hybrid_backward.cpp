// The training step of HybridModel: a forward that keeps every activation the backward reads, then the backward
// written out layer by layer in reverse (llm.c style: explicit, no autograd tape). The forward math is the one of
// HybridModel::forward (model/hybrid.cpp); the ops' backwards are the Backend's *_backward.
#include <algorithm>
#include <string>
#include <vector>

#include "core/error.h"
#include "model/hybrid.h"

namespace bamba {
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
  Tensor gate_up;   // [T, 2F] gate × mlp_gate_multiplier | up (relu²: [T, F] up)
  Tensor act;       // [T, F]  silu(gate) ⊙ up
};

}  // namespace

std::string HybridModel::training_unsupported() const {
  const std::string name = cfg_.model_type;
  for (size_t i = 0; i < cfg_.layer_kinds.size(); ++i) {
    const std::string at = " (" + name + ", layer " + std::to_string(i) + ")";
    if (cfg_.layer_kinds[i] == LayerKind::SharedAttention)
      return "Zamba2's shared attention blocks" + at + " are not supported yet";
    if (cfg_.mlp_kinds[i] == MlpKind::MoE) return "mixture-of-experts layers" + at + " are not supported yet";
  }
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

  // ---- forward, keeping the activations: every layer's, or (activation checkpointing) only each layer's input,
  // the rest recomputed into one shared set of buffers just before that layer's backward. The ops are
  // deterministic, so the recomputed activations are the same bits and so are the gradients.
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
  auto has_mamba = [&](int64_t i) {
    return cfg_.layer_kinds[size_t(i)] == LayerKind::Mamba || cfg_.layer_kinds[size_t(i)] == LayerKind::MambaAttention;
  };
  auto has_attn = [&](int64_t i) {
    return cfg_.layer_kinds[size_t(i)] == LayerKind::Attention || cfg_.layer_kinds[size_t(i)] == LayerKind::MambaAttention;
  };
  auto has_mlp = [&](int64_t i) { return cfg_.mlp_kinds[size_t(i)] != MlpKind::None; };
  auto glu = [&](int64_t i) { return cfg_.mlp_kinds[size_t(i)] == MlpKind::SwiGLU; };  // else relu² (Nemotron-H)
  auto up_width = [&](int64_t i) { return has_mlp(i) ? (glu(i) ? 2 * F : F) : 0; };      // gate | up, or up
  Arena mem(be_);
  auto alloc_acts = [&](LayerActs& a, bool mamba, bool attn, bool both, int64_t mlp_up) {
    a.xn = mem(T, H);
    a.h_mid = mem(T, H);
    if (mamba) {
      a.xm = cfg_.ssm_in_multiplier != 1.f ? mem(T, H) : a.xn;
      a.zxbcdt = mem(T, E), a.conv = mem(T, CD), a.y = mem(T, I), a.normed = mem(T, I);
    }
    if (attn) {
      a.xa = cfg_.attention_in_multiplier != 1.f ? mem(T, H) : a.xn;
      a.qkv = mem(T, QKV), a.o = mem(T, O);
    }
    if (both) a.attn_out = mem(T, H);
    if (mlp_up > 0) a.xn2 = mem(T, H), a.gate_up = mem(T, mlp_up), a.act = mem(T, F);
  };
  // x · s into dst (a copy), or x itself when s is 1
  auto scaled_input = [&](Tensor dst, Tensor x, float s) {
    if (s == 1.f) return;
    be_.copy(dst, x);
    be_.scale(dst, s);
  };
  // The Mamba mixer on a.xn into out, × s (in place).
  auto mamba_forward = [&](int64_t i, LayerActs& a, Tensor out, float s) {
    const MambaWeights& w = w_.layers[size_t(i)].mamba;
    const int64_t k = cfg_.ssm_index(i);
    scaled_input(a.xm, a.xn, cfg_.ssm_in_multiplier);
    be_.matmul(a.zxbcdt, a.xm, w.in_proj, w.in_proj_bias);
    for (int sg = 0; sg < 5; ++sg)
      if (cfg_.ssm_multipliers[sg] != 1.f) be_.scale(a.zxbcdt.slice_cols(seg[sg], seg[sg + 1]), cfg_.ssm_multipliers[sg]);
    be_.conv1d_silu(a.conv, a.zxbcdt.slice_cols(I, I + CD), w.conv1d_weight, w.conv1d_bias, cache.conv_state(k));
    be_.ssd(a.y, a.conv, a.zxbcdt.slice_cols(I + CD, E), w.A_log, w.D, w.dt_bias, cache.ssm_state(k), mamba_ops_);
    if (cfg_.mamba_gated_norm) be_.gated_rmsnorm(a.normed, a.y, a.zxbcdt.slice_cols(0, I), w.norm, cfg_.gated_norm_group_size, meps);
    else be_.silu_gate(a.normed, a.y, a.zxbcdt.slice_cols(0, I));  // Falcon-H1 without mamba_rms_norm
    be_.matmul(out, a.normed, w.out_proj, w.out_proj_bias);
    if (s != 1.f) be_.scale(out, s);
  };
  auto attention_forward = [&](int64_t i, LayerActs& a, Tensor out, float s) {
    const AttentionWeights& w = w_.layers[size_t(i)].attn;
    scaled_input(a.xa, a.xn, cfg_.attention_in_multiplier);
    be_.matmul(a.qkv, a.xa, w.qkv_proj, {});
    if (cfg_.key_multiplier != 1.f) be_.scale(a.qkv.slice_cols(nq * hd, (nq + nkv) * hd), cfg_.key_multiplier);
    AttentionOpsConfig c = attn_ops_;
    c.block_size = cache.sizes().block_size;
    be_.attention(a.o, a.qkv, cache.k_pages(cfg_.kv_index(i)), cache.v_pages(cfg_.kv_index(i)), c);
    be_.matmul(out, a.o, w.o_proj, {});
    if (s != 1.f) be_.scale(out, s);
  };
  // Layer i from a.h_in into a's buffers; h_out = its output (the next layer's input).
  auto layer_forward = [&](int64_t i, LayerActs& a, Tensor h_out) {
    const LayerWeights& lw = w_.layers[size_t(i)];
    const LayerKind kind = cfg_.layer_kinds[size_t(i)];
    // h_mid = h_in + mixer(xn)·multipliers
    if (kind == LayerKind::None) {
      be_.copy(a.h_mid, a.h_in);
    } else {
      be_.rmsnorm(a.xn, a.h_in, lw.input_layernorm, eps);
      if (kind == LayerKind::Mamba) mamba_forward(i, a, a.h_mid, mamba_out);
      else if (kind == LayerKind::Attention) attention_forward(i, a, a.h_mid, attn_out);
      else {  // Falcon-H1: both on the same normed input, summed
        attention_forward(i, a, a.attn_out, attn_out);
        mamba_forward(i, a, a.h_mid, mamba_out);
        be_.add(a.h_mid, a.attn_out);
      }
      be_.add(a.h_mid, a.h_in);
    }
    // h_out = h_mid + down(swiglu(gate_up(xn2)))·multipliers, or down(relu(up(xn2))²)
    if (!has_mlp(i)) {
      be_.copy(h_out, a.h_mid);
      return;
    }
    be_.rmsnorm(a.xn2, a.h_mid, lw.pre_ff_layernorm, eps);
    const Tensor gate_up = a.gate_up.slice_cols(0, up_width(i));  // [T, 2F] or [T, F]
    be_.matmul(gate_up, a.xn2, lw.gate_up_proj, {});
    if (!glu(i)) be_.relu2(a.act, gate_up);
    else {
      if (cfg_.mlp_gate_multiplier != 1.f) be_.scale(gate_up.slice_cols(0, F), cfg_.mlp_gate_multiplier);
      be_.swiglu(a.act, gate_up);
    }
    be_.matmul(h_out, a.act, lw.down_proj, {});
    if (mlp_out != 1.f) be_.scale(h_out, mlp_out);
    be_.add(h_out, a.h_mid);
  };
  const bool ckpt = opt.activation_checkpointing;
  std::vector<LayerActs> acts(static_cast<size_t>(L));
  LayerActs work;  // checkpointing: the one set of buffers every layer is (re)computed into
  bool any_mamba = false, any_attn = false, any_both = false, any_mlp = false;
  int64_t max_up = 0;  // the widest MLP up projection
  for (int64_t i = 0; i < L; ++i) {
    any_mamba |= has_mamba(i), any_attn |= has_attn(i), any_mlp |= has_mlp(i);
    any_both |= cfg_.layer_kinds[size_t(i)] == LayerKind::MambaAttention;
    max_up = std::max(max_up, up_width(i));
  }
  if (ckpt) alloc_acts(work, any_mamba, any_attn, any_both, max_up);
  Tensor h = mem(T, H);
  be_.embed(h, w_.embed_tokens);
  if (cfg_.embedding_multiplier != 1.f) be_.scale(h, cfg_.embedding_multiplier);
  for (int64_t i = 0; i < L; ++i) {
    LayerActs& a = acts[size_t(i)];
    if (ckpt) {
      LayerActs in = work;
      in.h_in = a.h_in = h;
      h = mem(T, H);
      layer_forward(i, in, h);
    } else {
      alloc_acts(a, has_mamba(i), has_attn(i), cfg_.layer_kinds[size_t(i)] == LayerKind::MambaAttention, up_width(i));
      a.h_in = h;
      h = mem(T, H);
      layer_forward(i, a, h);
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
  TrainResult res;
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
  Tensor d_act = any_mlp ? mem(T, F) : Tensor{}, d_gate_up = any_mlp ? mem(T, max_up) : Tensor{};  // MLP
  Tensor d_zxbcdt, d_conv, d_y, d_normed;                                                        // Mamba
  if (any_mamba) d_zxbcdt = mem(T, E), d_conv = mem(T, CD), d_y = mem(T, I), d_normed = mem(T, I);
  Tensor d_qkv = any_attn ? mem(T, QKV) : Tensor{}, d_o = any_attn ? mem(T, O) : Tensor{};  // attention
  Tensor d_block = mem(T, H);                     // a block output's gradient: dh × its multiplier
  Tensor dxn_attn = any_both ? mem(T, H) : Tensor{};  // Falcon-H1: the attention branch's input gradient
  Tensor h_scratch = ckpt ? mem(T, H) : Tensor{};  // the recomputed layer's output, not needed again
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
    if (ckpt) {
      recomputed.h_in = acts[size_t(i)].h_in;
      layer_forward(i, recomputed, h_scratch);
    }
    const LayerActs& a = ckpt ? recomputed : acts[size_t(i)];
    // MLP: h_out = h_mid + down(swiglu(gate_up(xn2)))·mlp_out (without an MLP, h_out = h_mid: dh passes through)
    if (has_mlp(i)) {
      const Tensor gate_up = a.gate_up.slice_cols(0, up_width(i)), dgu = d_gate_up.slice_cols(0, up_width(i));
      be_.matmul_backward(d_act, lg.down_proj, {}, scaled_grad(mlp_out), a.act, lw.down_proj);
      if (!glu(i)) be_.relu2_backward(dgu, d_act, gate_up);
      else {
        be_.swiglu_backward(dgu, d_act, gate_up);
        if (cfg_.mlp_gate_multiplier != 1.f) be_.scale(dgu.slice_cols(0, F), cfg_.mlp_gate_multiplier);
      }
      be_.matmul_backward(dxn, lg.gate_up_proj, {}, dgu, a.xn2, lw.gate_up_proj);
      be_.add_rmsnorm_backward(dh, lg.pre_ff_layernorm, dxn, a.h_mid, lw.pre_ff_layernorm, eps);  // dh = d h_mid
    }
    // mixer: h_mid = h_in + mixer(xn)·multipliers
    const LayerKind kind = cfg_.layer_kinds[size_t(i)];
    if (kind == LayerKind::None) continue;
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
  // HF's nn.Embedding(..., padding_idx=pad_token_id): no lookup gradient for the pad row (a tied lm_head's is kept)
  const int32_t pad = cfg_.pad_token_id >= 0 && cfg_.pad_token_id < V ? int32_t(cfg_.pad_token_id) : -1;
  be_.embed_backward(g.embed_tokens, dh, pad);
  for (auto& s : seqs) cache.release(s);
  return res;
}

}  // namespace bamba
