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

// What the backward of one layer reads, [T, ...] with T = rows · seq_len.
struct LayerActs {
  Tensor h_in;     // [T, H]  residual stream entering the layer
  Tensor xn;       // [T, H]  input_layernorm(h_in)
  Tensor zxbcdt;   // [T, E]  Mamba: in_proj output (z | xBC | dt)
  Tensor conv;     // [T, CD] Mamba: post-conv x | B | C
  Tensor y;        // [T, I]  Mamba: SSD output
  Tensor normed;   // [T, I]  Mamba: gated-norm output
  Tensor qkv;      // [T, (nq + 2 nkv) dh]  attention: q, k rotated by the forward
  Tensor o;        // [T, nq dh]  attention output
  Tensor h_mid;    // [T, H]  after the mixer's residual add
  Tensor xn2;      // [T, H]  pre_ff_layernorm(h_mid)
  Tensor gate_up;  // [T, 2F]
  Tensor act;      // [T, F]  silu(gate) ⊙ up
};

}  // namespace

TrainResult HybridModel::forward_backward(const TrainBatch& batch, ModelWeights& g, const TrainOptions& opt) const {
  // The backward is written for Bamba's layers (mixer + SwiGLU, no multipliers); its relatives are inference-only.
  if (cfg_.family != Family::Bamba)
    fail(cfg_.source, ": training supports model_type \"bamba\" only (this model is \"", cfg_.model_type, "\")");
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
  Arena mem(be_);
  auto alloc_acts = [&](LayerActs& a, bool mamba, bool attn) {
    a.xn = mem(T, H);
    a.h_mid = mem(T, H);
    if (mamba) a.zxbcdt = mem(T, E), a.conv = mem(T, CD), a.y = mem(T, I), a.normed = mem(T, I);
    if (attn) a.qkv = mem(T, QKV), a.o = mem(T, O);
    a.xn2 = mem(T, H);
    a.gate_up = mem(T, 2 * F);
    a.act = mem(T, F);
  };
  // Layer i from a.h_in into a's buffers; h_out = its output (the next layer's input).
  auto layer_forward = [&](int64_t i, LayerActs& a, Tensor h_out) {
    const LayerWeights& lw = w_.layers[size_t(i)];
    be_.rmsnorm(a.xn, a.h_in, lw.input_layernorm, eps);
    const int64_t k = cfg_.layer_kinds[size_t(i)] == LayerKind::Mamba ? cfg_.ssm_index(i) : cfg_.kv_index(i);
    if (cfg_.layer_kinds[size_t(i)] == LayerKind::Mamba) {
      const MambaWeights& w = lw.mamba;
      be_.matmul(a.zxbcdt, a.xn, w.in_proj, w.in_proj_bias);
      be_.conv1d_silu(a.conv, a.zxbcdt.slice_cols(I, I + CD), w.conv1d_weight, w.conv1d_bias, cache.conv_state(k));
      be_.ssd(a.y, a.conv, a.zxbcdt.slice_cols(I + CD, E), w.A_log, w.D, w.dt_bias, cache.ssm_state(k), mamba_ops_);
      be_.gated_rmsnorm(a.normed, a.y, a.zxbcdt.slice_cols(0, I), w.norm, cfg_.gated_norm_group_size, eps);
      be_.matmul(a.h_mid, a.normed, w.out_proj, w.out_proj_bias);  // mixer output, then + h_in
    } else {
      be_.matmul(a.qkv, a.xn, lw.attn.qkv_proj, {});
      AttentionOpsConfig c = attn_ops_;
      c.block_size = cache.sizes().block_size;
      be_.attention(a.o, a.qkv, cache.k_pages(k), cache.v_pages(k), c);
      be_.matmul(a.h_mid, a.o, lw.attn.o_proj, {});
    }
    be_.add(a.h_mid, a.h_in);
    be_.rmsnorm(a.xn2, a.h_mid, lw.pre_ff_layernorm, eps);
    be_.matmul(a.gate_up, a.xn2, lw.gate_up_proj, {});
    be_.swiglu(a.act, a.gate_up);
    be_.matmul(h_out, a.act, lw.down_proj, {});
    be_.add(h_out, a.h_mid);
  };
  const bool ckpt = opt.activation_checkpointing;
  std::vector<LayerActs> acts(static_cast<size_t>(L));
  LayerActs work;  // checkpointing: the one set of buffers every layer is (re)computed into
  if (ckpt) {
    bool any_mamba = false, any_attn = false;
    for (LayerKind kind : cfg_.layer_kinds) (kind == LayerKind::Mamba ? any_mamba : any_attn) = true;
    alloc_acts(work, any_mamba, any_attn);
  }
  Tensor h = mem(T, H);
  be_.embed(h, w_.embed_tokens);
  for (int64_t i = 0; i < L; ++i) {
    LayerActs& a = acts[size_t(i)];
    if (ckpt) {
      LayerActs in = work;
      in.h_in = a.h_in = h;
      h = mem(T, H);
      layer_forward(i, in, h);
    } else {
      alloc_acts(a, cfg_.layer_kinds[size_t(i)] == LayerKind::Mamba, cfg_.layer_kinds[size_t(i)] != LayerKind::Mamba);
      a.h_in = h;
      h = mem(T, H);
      layer_forward(i, a, h);
    }
  }
  Tensor xf = mem(T, H);  // final_layernorm(h)
  be_.rmsnorm(xf, h, w_.final_layernorm, eps);

  // ---- loss and its gradient w.r.t. xf
  const int64_t label_div = opt.label_count > 0 ? opt.label_count : n_labels;
  const int64_t pos_div = opt.position_count > 0 ? opt.position_count : T;
  const double ce_scale = label_div > 0 ? 1.0 / double(label_div) : 0.0;  // HF: 0/0 = nan; we score nothing
  const double z_scale = double(opt.z_loss_coefficient) / double(pos_div);
  Tensor dxn = mem(T, H);
  TrainResult res;
  res.label_count = n_labels;
  if (opt.loss_only) {  // validation: the lm_head gradient goes to a scratch buffer, nothing else is computed
    Tensor scratch = mem(w_.lm_head.shape[0], w_.lm_head.shape[1]);
    res.loss = be_.lm_head_cross_entropy(dxn, scratch, xf, w_.lm_head, targets, ce_scale, z_scale, opt.ce_chunk_rows);
    for (auto& s : seqs) cache.release(s);
    return res;
  }
  res.loss = be_.lm_head_cross_entropy(dxn, g.lm_head, xf, w_.lm_head, targets, ce_scale, z_scale, opt.ce_chunk_rows);

  // ---- backward. dh: the gradient of the residual stream at the current point.
  Tensor dh = mem(T, H);
  be_.rmsnorm_backward(dh, g.final_layernorm, dxn, h, w_.final_layernorm, eps);
  Tensor d_act = mem(T, F), d_gate_up = mem(T, 2 * F);                            // MLP
  Tensor d_zxbcdt = mem(T, E), d_conv = mem(T, CD), d_y = mem(T, I), d_normed = mem(T, I);  // Mamba
  Tensor d_qkv = mem(T, QKV), d_o = mem(T, O);                                      // attention
  Tensor h_scratch = ckpt ? mem(T, H) : Tensor{};  // the recomputed layer's output, not needed again
  for (int64_t i = L - 1; i >= 0; --i) {
    const LayerWeights& lw = w_.layers[size_t(i)];
    LayerWeights& lg = g.layers[size_t(i)];
    LayerActs recomputed = work;
    if (ckpt) {
      recomputed.h_in = acts[size_t(i)].h_in;
      layer_forward(i, recomputed, h_scratch);
    }
    const LayerActs& a = ckpt ? recomputed : acts[size_t(i)];
    // MLP: h_out = h_mid + down(swiglu(gate_up(xn2)))
    be_.matmul_backward(d_act, lg.down_proj, {}, dh, a.act, lw.down_proj);
    be_.swiglu_backward(d_gate_up, d_act, a.gate_up);
    be_.matmul_backward(dxn, lg.gate_up_proj, {}, d_gate_up, a.xn2, lw.gate_up_proj);
    be_.add_rmsnorm_backward(dh, lg.pre_ff_layernorm, dxn, a.h_mid, lw.pre_ff_layernorm, eps);  // dh = d h_mid
    // mixer: h_mid = h_in + mixer(xn)
    if (cfg_.layer_kinds[size_t(i)] == LayerKind::Mamba) {
      const MambaWeights& w = lw.mamba;
      MambaWeights& wg = lg.mamba;
      be_.matmul_backward(d_normed, wg.out_proj, wg.out_proj_bias, dh, a.normed, w.out_proj);
      be_.gated_rmsnorm_backward(d_y, d_zxbcdt.slice_cols(0, I), wg.norm, d_normed, a.y, a.zxbcdt.slice_cols(0, I), w.norm,
                                 cfg_.gated_norm_group_size, eps);
      be_.ssd_backward(d_conv, d_zxbcdt.slice_cols(I + CD, E), wg.A_log, wg.D, wg.dt_bias, {}, d_y, a.conv,
                       a.zxbcdt.slice_cols(I + CD, E), w.A_log, w.D, w.dt_bias, {}, mamba_ops_);
      be_.conv1d_silu_backward(d_zxbcdt.slice_cols(I, I + CD), wg.conv1d_weight, wg.conv1d_bias, d_conv,
                               a.zxbcdt.slice_cols(I, I + CD), w.conv1d_weight, w.conv1d_bias);
      be_.matmul_backward(dxn, wg.in_proj, wg.in_proj_bias, d_zxbcdt, a.xn, w.in_proj);
    } else {
      AttentionOpsConfig c = attn_ops_;
      c.block_size = cache.sizes().block_size;
      be_.matmul_backward(d_o, lg.attn.o_proj, {}, dh, a.o, lw.attn.o_proj);
      be_.attention_backward(d_qkv, d_o, a.qkv, c);
      be_.matmul_backward(dxn, lg.attn.qkv_proj, {}, d_qkv, a.xn, lw.attn.qkv_proj);
    }
    be_.add_rmsnorm_backward(dh, lg.input_layernorm, dxn, a.h_in, lw.input_layernorm, eps);  // dh = d h_in
  }
  // HF's nn.Embedding(..., padding_idx=pad_token_id): no lookup gradient for the pad row (a tied lm_head's is kept)
  const int32_t pad = cfg_.pad_token_id >= 0 && cfg_.pad_token_id < V ? int32_t(cfg_.pad_token_id) : -1;
  be_.embed_backward(g.embed_tokens, dh, pad);
  for (auto& s : seqs) cache.release(s);
  return res;
}

}  // namespace bamba
