#include "model/hybrid.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "core/hash_uniform.h"

namespace bamba {

Workspace::Workspace(const ModelConfig& c, Backend& be, int32_t max_tokens_, int32_t max_logit_rows_)
    : max_tokens(max_tokens_), max_logit_rows(max_logit_rows_), be_(be) {
  const int64_t T = max_tokens, R = max_logit_rows, H = c.hidden_size;
  const int64_t proj_w = std::max({c.in_proj_dim(), 2 * c.intermediate_size, c.qkv_dim()});
  const int64_t y_w = std::max({c.mamba_inner, c.num_attention_heads * c.head_dim, c.intermediate_size});
  h = be.alloc_activation({T, H});
  xn = be.alloc_activation({T, H});
  out = be.alloc_activation({T, H});
  proj = be.alloc_activation({T, proj_w});
  conv = be.alloc_activation({T, c.conv_dim()});
  y = be.alloc_activation({T, y_w});
  y2 = be.alloc_activation({T, c.mamba_inner});
  sel = be.alloc_activation({R, H});
  logits = be.alloc(DType::F32, {R, c.vocab_size});
}

Workspace::~Workspace() {
  for (Tensor t : {h, xn, out, proj, conv, y, y2, sel, logits}) be_.release(t);
}

HybridModel::HybridModel(ModelConfig cfg, ModelWeights w, Backend& be) : cfg_(std::move(cfg)), w_(std::move(w)), be_(be) {
  mamba_ops_ = {cfg_.mamba_n_heads, cfg_.mamba_d_head,     cfg_.mamba_n_groups, cfg_.mamba_d_state,
                cfg_.mamba_d_conv,  cfg_.mamba_chunk_size, cfg_.time_step_min,  cfg_.time_step_max};
  attn_ops_ = {cfg_.num_attention_heads, cfg_.num_key_value_heads, cfg_.head_dim, cfg_.rotary_dim, 0,
               cfg_.rope_theta,          1.f / std::sqrt(float(cfg_.head_dim)), cfg_.dtype};
}

void HybridModel::check_batch(const StepBatch& b, const HybridCache& cache, const Workspace& ws) const {
  const int32_t T = b.n_tokens(), S = b.n_seqs();
  BAMBA_CHECK(T > 0 && S > 0, "empty step batch");
  BAMBA_CHECK(T <= ws.max_tokens, "step of ", T, " tokens exceeds the workspace's ", ws.max_tokens);
  BAMBA_CHECK(int32_t(b.logit_rows.size()) <= ws.max_logit_rows, "step asks for ", b.logit_rows.size(),
              " logit rows, the workspace holds ", ws.max_logit_rows);
  BAMBA_CHECK(int32_t(b.seq_start.size()) == S + 1 && b.seq_start[0] == 0 && b.seq_start[size_t(S)] == T &&
                  int32_t(b.state_slot.size()) == S && int32_t(b.positions.size()) == T &&
                  int32_t(b.block_table.size()) == S * b.max_blocks,
              "malformed step batch");
  for (int32_t t : b.tokens)
    BAMBA_CHECK(t >= 0 && t < cfg_.vocab_size, "token id ", t, " is out of range for vocab_size ", cfg_.vocab_size);
  for (int32_t r : b.logit_rows) BAMBA_CHECK(r >= 0 && r < T, "logit row ", r, " out of range");
  const CacheSizes& cs = cache.sizes();
  std::vector<bool> seen(size_t(cs.n_slots), false);
  for (int32_t s = 0; s < S; ++s) {
    const int32_t slot = b.state_slot[size_t(s)], n = b.seq_len(s), past = b.past_len[size_t(s)];
    BAMBA_CHECK(n >= 1 && past >= 0, "sequence ", s, " of the step has no new tokens");
    BAMBA_CHECK(slot >= 0 && slot < cs.n_slots && !seen[size_t(slot)], "sequence ", s, ": bad or shared state slot ", slot);
    seen[size_t(slot)] = true;
    if (cache.has_attention()) {
      BAMBA_CHECK(cache.blocks_for(past + n) <= b.max_blocks, "sequence ", s, ": ", past + n,
                  " tokens need more KV pages than its block table holds");
      for (int32_t k = 0; k < cache.blocks_for(past + n); ++k) {
        int32_t blk = b.block_table[size_t(s * b.max_blocks + k)];
        BAMBA_CHECK(blk >= 0 && blk < cs.n_blocks, "sequence ", s, ": KV page id ", blk, " out of range");
      }
    }
  }
}

Tensor HybridModel::forward(const StepBatch& b, HybridCache& cache, Workspace& ws, const ActivationHook& hook) const {
  check_batch(b, cache, ws);
  be_.set_batch(b);
  const int64_t T = b.n_tokens(), R = int64_t(b.logit_rows.size()), L = cfg_.num_hidden_layers;
  const float eps = cfg_.rms_norm_eps;
  Tensor h = ws.h.slice_rows(0, T);      // [T, H]
  Tensor xn = ws.xn.slice_rows(0, T);    // [T, H]
  Tensor out = ws.out.slice_rows(0, T);  // [T, H]

  Tensor sel = ws.sel.slice_rows(0, R);        // [R, H]
  Tensor logits = ws.logits.slice_rows(0, R);  // [R, V]
  // The same ops on the same buffers for the same (model, workspace, cache) and batch shape: a GPU backend may
  // record them once and replay them (decode steps). With a hook the step runs as plain calls.
  auto ops = [&] {
    be_.embed(h, w_.embed_tokens);
    if (hook) hook("embed", h);
    be_.rmsnorm(xn, h, w_.layers[0].input_layernorm, eps);
    for (int64_t i = 0; i < L; ++i) {
      const LayerWeights& lw = w_.layers[size_t(i)];
      const int64_t k = cfg_.kind_index(i);
      if (cfg_.layer_kinds[size_t(i)] == LayerKind::Mamba) mamba_mixer(lw.mamba, xn, out, k, cache, ws);
      else attention(lw.attn, xn, out, k, cache, ws);
      be_.add_rmsnorm(h, out, xn, lw.pre_ff_layernorm, eps);  // h += mixer(xn); xn = norm(h)

      Tensor gate_up = ws.proj.slice_rows(0, T).slice_cols(0, 2 * cfg_.intermediate_size);  // [T, 2F]
      Tensor act = ws.y.slice_rows(0, T).slice_cols(0, cfg_.intermediate_size);             // [T, F]
      be_.matmul(gate_up, xn, lw.gate_up_proj, {});
      be_.swiglu(act, gate_up);
      be_.matmul(out, act, lw.down_proj, {});

      Tensor next_norm = i + 1 < L ? w_.layers[size_t(i + 1)].input_layernorm : w_.final_layernorm;
      if (hook) {  // the residual stream after layer i exists only unfused
        be_.add(h, out);
        hook("layer" + std::to_string(i), h);
        be_.rmsnorm(xn, h, next_norm, eps);
      } else {
        be_.add_rmsnorm(h, out, xn, next_norm, eps);
      }
    }
    if (hook) hook("final_norm", xn);
    be_.gather_logit_rows(sel, xn);
    be_.matmul(logits, sel, w_.lm_head, {});
  };
  if (hook) ops();
  else {
    // One recording per (model, workspace, cache): the buffers the ops touch.
    auto id = [](const void* p) { return uint64_t(reinterpret_cast<uintptr_t>(p)); };
    be_.run_step(splitmix64(id(this) ^ splitmix64(id(&ws) ^ splitmix64(id(&cache)))), ops);
  }
  return logits;
}

void HybridModel::mamba_mixer(const MambaWeights& w, Tensor xn, Tensor out, int64_t index, HybridCache& cache,
                              Workspace& ws) const {
  const int64_t T = xn.rows(), I = cfg_.mamba_inner, CD = cfg_.conv_dim(), E = cfg_.in_proj_dim();
  Tensor zxbcdt = ws.proj.slice_rows(0, T).slice_cols(0, E);  // [T, E]
  be_.matmul(zxbcdt, xn, w.in_proj, w.in_proj_bias);
  Tensor z = zxbcdt.slice_cols(0, I);         // [T, I]   gate
  Tensor xBC = zxbcdt.slice_cols(I, I + CD);  // [T, CD]  pre-conv x | B | C
  Tensor dt = zxbcdt.slice_cols(I + CD, E);   // [T, nh]
  Tensor conv = ws.conv.slice_rows(0, T);     // [T, CD]  post-conv
  be_.conv1d_silu(conv, xBC, w.conv1d_weight, w.conv1d_bias, cache.conv_state(index));
  Tensor y = ws.y.slice_rows(0, T).slice_cols(0, I);  // [T, nh * P]
  be_.ssd(y, conv, dt, w.A_log, w.D, w.dt_bias, cache.ssm_state(index), mamba_ops_);
  Tensor normed = ws.y2.slice_rows(0, T);  // [T, I]
  be_.gated_rmsnorm(normed, y, z, w.norm, cfg_.gated_norm_group_size, cfg_.rms_norm_eps);
  be_.matmul(out, normed, w.out_proj, w.out_proj_bias);
}

void HybridModel::attention(const AttentionWeights& w, Tensor xn, Tensor out, int64_t index, HybridCache& cache,
                            Workspace& ws) const {
  const int64_t T = xn.rows();
  Tensor qkv = ws.proj.slice_rows(0, T).slice_cols(0, cfg_.qkv_dim());  // [T, (nq + 2 nkv) dh]
  be_.matmul(qkv, xn, w.qkv_proj, {});
  Tensor o = ws.y.slice_rows(0, T).slice_cols(0, cfg_.num_attention_heads * cfg_.head_dim);  // [T, nq dh]
  AttentionOpsConfig c = attn_ops_;
  c.block_size = cache.sizes().block_size;
  be_.attention(o, qkv, cache.k_pages(index), cache.v_pages(index), c);
  be_.matmul(out, o, w.o_proj, {});
}

HybridModel load_model(const std::string& dir, Backend& be, const LoadProgress& progress) {
  ModelConfig cfg = load_config(dir);
  Checkpoint ckpt(dir);
  ModelWeights w = load_weights(cfg, ckpt, be, progress);
  return HybridModel(std::move(cfg), std::move(w), be);
}

HybridModel dummy_model(Backend& be, uint64_t seed) {
  ModelConfig cfg = dummy_config();
  ModelWeights w = dummy_weights(cfg, be, seed);
  return HybridModel(std::move(cfg), std::move(w), be);
}

}  // namespace bamba
