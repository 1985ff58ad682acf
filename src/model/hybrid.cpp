#include "model/hybrid.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "core/hash_uniform.h"
#include "model/tensor_parallel_peers.h"

namespace bamba {

Workspace::Workspace(const ModelConfig& c, Backend& be, int32_t max_tokens_, int32_t max_logit_rows_)
    : max_tokens(max_tokens_), max_logit_rows(max_logit_rows_), uid(next_buffer_uid()), be_(be) {
  const int64_t T = max_tokens, R = max_logit_rows, H = c.hidden_size, F = c.mlp_width();
  const bool any_mamba = c.n_mamba_layers() > 0;
  const int64_t proj_w = std::max({any_mamba ? c.in_proj_dim() : 0, 2 * F, c.qkv_dim()});
  const int64_t y_w = std::max({any_mamba ? c.mamba_inner : 0, c.num_attention_heads * c.head_dim, F});
  h = be.alloc_activation({T, H});
  xn = be.alloc_activation({T, H});
  out = be.alloc_activation({T, H});
  proj = be.alloc_activation({T, proj_w});
  conv = be.alloc_activation({T, std::max<int64_t>(any_mamba ? c.conv_dim() : 0, 1)});
  y = be.alloc_activation({T, y_w});
  y2 = be.alloc_activation({T, std::max<int64_t>(any_mamba ? c.mamba_inner : 0, 1)});
  sel = be.alloc_activation({R, H});
  logits = be.alloc(DType::F32, {R, c.vocab_size});
  const bool falcon = c.family == Family::FalconH1, zamba = c.family == Family::Zamba2;
  bool moe_layers = false;
  for (auto k : c.mlp_kinds) moe_layers |= k == MlpKind::MoE;
  if (falcon || zamba || moe_layers) {
    aux = be.alloc_activation({T, H});
    aux2 = be.alloc_activation({T, H});
  }
  if (moe_layers) {
    const int64_t E = c.num_experts, k = c.num_experts_per_tok, Fe = c.moe_intermediate_size;
    const int64_t U = c.moe_router == MoeRouter::SoftmaxTopK ? 2 * Fe : Fe;
    router = be.alloc(DType::F32, {T, E});
    moe_experts = be.alloc(DType::I32, {T, k});
    moe_weights = be.alloc(DType::F32, {T, k});
    moe.up = be.alloc_activation({T * k, U});
    moe.act = be.alloc_activation({T * k, Fe});
    moe.down = be.alloc_activation({T * k, H});
    moe.index = be.alloc(DType::I32, {2 * T * k + 2 * E + 2});
  }
  if (c.tp_size > 1) logits_part = be.alloc(DType::F32, {R, c.vocab_size / c.tp_size});
  if (c.tp_full_inner > 0) {
    tp_y = be.alloc_activation({T, c.tp_full_inner});
    tp_z = be.alloc_activation({T, c.tp_full_inner});
    tp_normed = be.alloc_activation({T, c.tp_full_inner});
  }
  if (zamba) {
    wide = be.alloc_activation({T, 2 * H});
    wide_n = be.alloc_activation({T, 2 * H});
    lora_r = be.alloc_activation({T, 3 * c.adapter_rank});
    lora = be.alloc_activation({T, std::max(c.num_attention_heads * c.head_dim, 2 * c.intermediate_size)});
  }
}

Workspace::~Workspace() {
  mirrors.clear();
  for (Tensor t : {h, xn, out, proj, conv, y, y2, sel, logits, aux, aux2, router, moe_experts, moe_weights, moe.up,
                   moe.act, moe.down, moe.index, wide, wide_n, lora_r, lora, logits_part, tp_y, tp_z, tp_normed})
    if (t) be_.release(t);
}

HybridModel::HybridModel(ModelConfig cfg, ModelWeights w, Backend& be) : HybridModel(std::move(cfg), std::move(w), be, nullptr) {}

HybridModel::HybridModel(ModelConfig cfg, ModelWeights w, Backend& be, Communicator* comm)
    : cfg_(std::move(cfg)), w_(std::move(w)), be_(be), comm_(cfg_.tp_size > 1 ? comm : nullptr) {  // one rank: no collectives
  BAMBA_CHECK(cfg_.tp_size == 1 || (comm_ && comm_->size() == cfg_.tp_size && comm_->rank() == cfg_.tp_rank),
              "internal: a tensor-parallel shard of rank ", cfg_.tp_rank, " of ", cfg_.tp_size,
              " needs that rank's communicator");
  mamba_ops_ = {cfg_.mamba_n_heads, cfg_.mamba_d_head,     cfg_.mamba_n_groups, cfg_.mamba_d_state,
                cfg_.mamba_d_conv,  cfg_.mamba_chunk_size, cfg_.time_step_min,  cfg_.time_step_max};
  const float scale = cfg_.attention_scale > 0.f ? cfg_.attention_scale : 1.f / std::sqrt(float(cfg_.head_dim));
  attn_ops_ = {cfg_.num_attention_heads, cfg_.num_key_value_heads, cfg_.head_dim, cfg_.rotary_dim, 0,
               cfg_.rope_theta,          scale,                    cfg_.dtype,    cfg_.rope_factor,
               cfg_.rope_low_freq_factor, cfg_.rope_high_freq_factor, cfg_.rope_original_max_position};
  moe_ops_ = {cfg_.num_experts,
              cfg_.num_experts_per_tok,
              cfg_.moe_router == MoeRouter::SoftmaxTopK ? MoeRouting::SoftmaxTopK : MoeRouting::SigmoidGroup,
              cfg_.moe_n_group,
              cfg_.moe_topk_group,
              cfg_.moe_norm_topk_prob,
              cfg_.moe_routed_scaling};
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
  BAMBA_CHECK(b.state_after.empty() || int32_t(b.state_after.size()) == T, "malformed step batch: state_after has ",
              b.state_after.size(), " entries for ", T, " tokens");
  for (int32_t k : b.state_after)
    BAMBA_CHECK(k >= -1 && k < cs.n_slots && std::find(b.state_slot.begin(), b.state_slot.end(), k) == b.state_slot.end(),
                "state_after slot ", k, " is out of range or a sequence's own slot");
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
  if (peers_) {
    check_batch(b, cache, ws);  // a bad batch is an Error here, before any rank is running (which would abort them)
    return peers_->forward(*this, b, cache, ws, hook);  // every rank of the group runs forward_rank
  }
  return forward_rank(b, cache, ws, hook);
}

Tensor HybridModel::forward_rank(const StepBatch& b, HybridCache& cache, Workspace& ws, const ActivationHook& hook) const {
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
    if (hook) hook("embed", h);  // the raw lookup, before any embedding_multiplier (as the fixtures record it)
    if (cfg_.embedding_multiplier != 1.f) be_.scale(h, cfg_.embedding_multiplier);
    // `out` holds a block's output not yet added to h: the add is fused with the next norm (add_rmsnorm).
    bool pending = false;
    auto norm = [&](Tensor weight) {  // xn = norm(h (+= out))
      if (pending) be_.add_rmsnorm(h, out, xn, weight, eps);
      else be_.rmsnorm(xn, h, weight, eps);
      pending = false;
    };
    auto residual = [&] {  // the block's output * residual_multiplier goes into h at the next norm
      // Tensor parallelism: each rank's block output is its heads' / columns' share of the row-parallel output
      // projection; their sum is the block's output, the same on every rank.
      if (comm_) comm_->all_reduce_sum(out);
      if (cfg_.residual_multiplier != 1.f) be_.scale(out, cfg_.residual_multiplier);
      pending = true;
    };
    // Decode steps on a GPU (Backend::fuse_decode): a block's norm goes into its first matmul and its residual add
    // into its last, so a block is its matmuls plus what lies between them. (CUDA: BAMBA_CUDA_FUSE_ROWS; off by
    // default, measured slower: bench/NOTES.md "decode2".)
    const bool fuse = !hook && !comm_ && cfg_.residual_multiplier == 1.f && be_.fuse_decode(T);
    Fused fz{h, {}, eps};
    auto fused = [&](Tensor weight) {  // the Fused of a block normalising h with `weight`
      if (pending) be_.add(h, out);  // an unfused block before it left its output in out
      pending = false;
      fz.norm_w = weight;
      return &fz;
    };
    int64_t hybrid_j = 0;
    for (int64_t i = 0; i < L; ++i) {
      const LayerWeights& lw = w_.layers[size_t(i)];
      const LayerKind kind = cfg_.layer_kinds[size_t(i)];
      switch (kind) {
        case LayerKind::None: break;
        case LayerKind::Mamba:
          if (fuse && fusable(kind)) {
            mamba_mixer(lw.mamba, xn, out, cfg_.ssm_index(i), cache, ws, fused(lw.input_layernorm));
            break;
          }
          norm(lw.input_layernorm);
          mamba_mixer(lw.mamba, xn, out, cfg_.ssm_index(i), cache, ws);
          residual();
          break;
        case LayerKind::Attention:
          if (fuse && fusable(kind)) {
            attention(lw.attn, xn, out, cfg_.kv_index(i), cache, ws, nullptr, fused(lw.input_layernorm));
            break;
          }
          norm(lw.input_layernorm);
          attention(lw.attn, xn, out, cfg_.kv_index(i), cache, ws);
          residual();
          break;
        case LayerKind::MambaAttention: {  // Falcon-H1: both on the same normed input, outputs summed
          norm(lw.input_layernorm);
          Tensor a = ws.aux2.slice_rows(0, T);  // [T, H]
          attention(lw.attn, xn, a, cfg_.kv_index(i), cache, ws);
          mamba_mixer(lw.mamba, xn, out, cfg_.ssm_index(i), cache, ws);
          be_.add(out, a);
          residual();
          break;
        }
        case LayerKind::SharedAttention:
          if (pending) be_.add(h, out);
          pending = false;
          zamba2_hybrid(i, hybrid_j++, h, xn, out, cache, ws);
          residual();
          break;
      }
      if (fuse && fusable(cfg_.mlp_kinds[size_t(i)])) {
        mlp(lw, cfg_.mlp_kinds[size_t(i)], xn, out, ws, fused(lw.pre_ff_layernorm));
      } else if (cfg_.mlp_kinds[size_t(i)] != MlpKind::None) {
        norm(lw.pre_ff_layernorm);
        mlp(lw, cfg_.mlp_kinds[size_t(i)], xn, out, ws);
        residual();
      }
      if (hook) {  // the residual stream after layer i exists only unfused
        if (pending) be_.add(h, out);
        pending = false;
        hook("layer" + std::to_string(i), h);
      }
    }
    norm(w_.final_layernorm);
    if (hook) hook("final_norm", xn);
    be_.gather_logit_rows(sel, xn);
    if (comm_) {  // this rank's vocabulary columns, then all of them side by side
      Tensor part = ws.logits_part.slice_rows(0, R);  // [R, V / tp_size]
      be_.matmul(part, sel, w_.lm_head, {});
      comm_->all_gather_cols(logits, part);
    } else {
      be_.matmul(logits, sel, w_.lm_head, {});
    }
    if (cfg_.logits_scale != 1.f) be_.scale(logits, cfg_.logits_scale);
  };
  // Tensor parallelism runs the ops plainly: a recorded step would have to capture the collectives too.
  if (hook || comm_) ops();
  else {
    // One recording per (model, workspace, cache): the buffers the ops touch. The workspace and the cache by their
    // uids, not addresses: a cache freed and another built at the same address (bench's decodeS@C cells) must not
    // replay a graph that points into the freed one's buffers.
    auto id = [](const void* p) { return uint64_t(reinterpret_cast<uintptr_t>(p)); };
    be_.run_step(splitmix64(id(this) ^ splitmix64(ws.uid ^ splitmix64(cache.uid() << 1))), ops);
  }
  return logits;
}

bool HybridModel::fusable(LayerKind kind) const {
  switch (kind) {
    case LayerKind::Mamba:
      return cfg_.ssm_in_multiplier == 1.f && cfg_.ssm_out_multiplier == 1.f && cfg_.tp_full_inner == 0 &&
             std::all_of(std::begin(cfg_.ssm_multipliers), std::end(cfg_.ssm_multipliers), [](float m) { return m == 1.f; });
    case LayerKind::Attention: return cfg_.attention_in_multiplier == 1.f && cfg_.attention_out_multiplier == 1.f;
    default: return false;  // Falcon-H1's parallel pair, Zamba2's shared block: their own ops around the mixers
  }
}
bool HybridModel::fusable(MlpKind kind) const {
  return kind == MlpKind::SwiGLU && cfg_.mlp_gate_multiplier == 1.f && cfg_.mlp_down_multiplier == 1.f;
}

void HybridModel::mamba_mixer(const MambaWeights& w, Tensor xn, Tensor out, int64_t index, HybridCache& cache,
                              Workspace& ws, const Fused* f) const {
  const int64_t T = xn.rows(), I = cfg_.mamba_inner, CD = cfg_.conv_dim(), E = cfg_.in_proj_dim(),
                GN = cfg_.mamba_n_groups * cfg_.mamba_d_state;
  Tensor zxbcdt = ws.proj.slice_rows(0, T).slice_cols(0, E);  // [T, E]
  if (cfg_.ssm_in_multiplier != 1.f) {  // Falcon-H1: in_proj(x * ssm_in_multiplier)
    Tensor xs = ws.aux.slice_rows(0, T);  // [T, H]
    be_.copy(xs, xn);
    be_.scale(xs, cfg_.ssm_in_multiplier);
    xn = xs;
  }
  if (f) be_.rmsnorm_matmul(zxbcdt, f->h, f->norm_w, f->eps, w.in_proj, w.in_proj_bias, xn);
  else be_.matmul(zxbcdt, xn, w.in_proj, w.in_proj_bias);
  // Falcon-H1's mup_vector: one multiplier per segment z | x | B | C | dt of the in_proj output.
  const int64_t seg[6] = {0, I, 2 * I, 2 * I + GN, 2 * I + 2 * GN, E};
  for (int s = 0; s < 5; ++s)
    if (cfg_.ssm_multipliers[s] != 1.f) be_.scale(zxbcdt.slice_cols(seg[s], seg[s + 1]), cfg_.ssm_multipliers[s]);
  Tensor z = zxbcdt.slice_cols(0, I);         // [T, I]   gate
  Tensor xBC = zxbcdt.slice_cols(I, I + CD);  // [T, CD]  pre-conv x | B | C
  Tensor dt = zxbcdt.slice_cols(I + CD, E);   // [T, nh]
  Tensor conv = ws.conv.slice_rows(0, T);     // [T, CD]  post-conv
  be_.conv1d_silu(conv, xBC, w.conv1d_weight, w.conv1d_bias, cache.conv_state(index));
  Tensor y = ws.y.slice_rows(0, T).slice_cols(0, I);  // [T, nh * P]
  be_.ssd(y, conv, dt, w.A_log, w.D, w.dt_bias, cache.ssm_state(index), mamba_ops_);
  be_.prefetch_weight(w.out_proj, T);  // out_proj's first bytes while the SSD step and the gated norm run
  Tensor normed = ws.y2.slice_rows(0, T);  // [T, I]
  if (cfg_.mamba_gated_norm && cfg_.tp_full_inner > 0) {
    // Tensor parallelism with norm groups wider than a rank's channels (Bamba: one group over all of I): every
    // rank gathers y and z whole and normalises the whole width (the same op as on one rank, so the same
    // numbers), then keeps its own channels. (Twice T · I elements moved where an all-reduce of the T · groups
    // sums of squares would do: a fused op is left for when it shows in a profile.)
    Tensor fy = ws.tp_y.slice_rows(0, T), fz = ws.tp_z.slice_rows(0, T), fn = ws.tp_normed.slice_rows(0, T);  // [T, tp_full_inner]
    comm_->all_gather_cols(fy, y);
    comm_->all_gather_cols(fz, z);
    be_.gated_rmsnorm(fn, fy, fz, w.norm, cfg_.gated_norm_group_size, cfg_.mamba_norm_eps);
    be_.copy(normed, fn.slice_cols(cfg_.tp_rank * I, (cfg_.tp_rank + 1) * I));
  } else if (cfg_.mamba_gated_norm) be_.gated_rmsnorm(normed, y, z, w.norm, cfg_.gated_norm_group_size, cfg_.mamba_norm_eps);
  else be_.silu_gate(normed, y, z);
  if (f) return be_.matmul_residual(f->h, normed, w.out_proj, w.out_proj_bias, out);
  be_.matmul(out, normed, w.out_proj, w.out_proj_bias);
  if (cfg_.ssm_out_multiplier != 1.f) be_.scale(out, cfg_.ssm_out_multiplier);
}

void HybridModel::attention(const AttentionWeights& w, Tensor xn, Tensor out, int64_t index, HybridCache& cache,
                            Workspace& ws, const AdapterWeights* adapters, const Fused* f) const {
  const int64_t T = xn.rows(), nq = cfg_.num_attention_heads, nkv = cfg_.num_key_value_heads, dh = cfg_.head_dim;
  Tensor qkv = ws.proj.slice_rows(0, T).slice_cols(0, cfg_.qkv_dim());  // [T, (nq + 2 nkv) dh]
  if (cfg_.attention_in_multiplier != 1.f) {  // Falcon-H1: attention on x * attention_in_multiplier
    Tensor xs = ws.aux.slice_rows(0, T);  // [T, H]
    be_.copy(xs, xn);
    be_.scale(xs, cfg_.attention_in_multiplier);
    xn = xs;
  }
  if (f) be_.rmsnorm_matmul(qkv, f->h, f->norm_w, f->eps, w.qkv_proj, {}, xn);
  else be_.matmul(qkv, xn, w.qkv_proj, {});
  if (adapters && adapters->qkv_down) {  // Zamba2: q, k, v each += B_j(A_j(x))
    const int64_t r = cfg_.adapter_rank;
    Tensor low = ws.lora_r.slice_rows(0, T);  // [T, 3r]
    be_.matmul(low, xn, adapters->qkv_down, {});
    const Tensor ups[3] = {adapters->q_up, adapters->k_up, adapters->v_up};
    const int64_t col[4] = {0, nq * dh, (nq + nkv) * dh, (nq + 2 * nkv) * dh};
    for (int p = 0; p < 3; ++p) {
      Tensor d = ws.lora.slice_rows(0, T).slice_cols(0, col[p + 1] - col[p]);
      be_.matmul(d, low.slice_cols(p * r, (p + 1) * r), ups[p], {});
      be_.add(qkv.slice_cols(col[p], col[p + 1]), d);
    }
  }
  if (cfg_.key_multiplier != 1.f) be_.scale(qkv.slice_cols(nq * dh, (nq + nkv) * dh), cfg_.key_multiplier);
  Tensor o = ws.y.slice_rows(0, T).slice_cols(0, nq * dh);  // [T, nq dh]
  AttentionOpsConfig c = attn_ops_;
  c.block_size = cache.sizes().block_size;
  be_.attention(o, qkv, cache.k_pages(index), cache.v_pages(index), c);
  if (f) return be_.matmul_residual(f->h, o, w.o_proj, {}, out);
  be_.matmul(out, o, w.o_proj, {});
  if (cfg_.attention_out_multiplier != 1.f) be_.scale(out, cfg_.attention_out_multiplier);
}

void HybridModel::mlp(const LayerWeights& w, MlpKind kind, Tensor xn, Tensor out, Workspace& ws, const Fused* f) const {
  const int64_t T = xn.rows();
  if (f) {  // fusable(kind): SwiGLU without multipliers
    const int64_t F = cfg_.intermediate_size;
    Tensor gate_up = ws.proj.slice_rows(0, T).slice_cols(0, 2 * F);  // [T, 2F]
    be_.rmsnorm_matmul(gate_up, f->h, f->norm_w, f->eps, w.gate_up_proj, {}, xn);
    be_.swiglu_matmul_residual(f->h, gate_up, w.down_proj, {}, ws.y.slice_rows(0, T).slice_cols(0, F), out);
    return;
  }
  // The dense MLP (SwiGLU or relu²) of width F into dst.
  auto dense = [&](Tensor dst, bool glu, int64_t F) {
    Tensor act = ws.y.slice_rows(0, T).slice_cols(0, F);  // [T, F]
    if (glu) {
      Tensor gate_up = ws.proj.slice_rows(0, T).slice_cols(0, 2 * F);  // [T, 2F]
      if (cfg_.mlp_gate_multiplier == 1.f) {
        be_.matmul_swiglu(act, xn, w.gate_up_proj, {}, gate_up);
      } else {
        be_.matmul(gate_up, xn, w.gate_up_proj, {});
        be_.scale(gate_up.slice_cols(0, F), cfg_.mlp_gate_multiplier);
        be_.swiglu(act, gate_up);
      }
    } else {
      Tensor up = ws.proj.slice_rows(0, T).slice_cols(0, F);  // [T, F]
      be_.matmul(up, xn, w.gate_up_proj, {});
      be_.relu2(act, up);
    }
    be_.matmul(dst, act, w.down_proj, {});
    if (cfg_.mlp_down_multiplier != 1.f) be_.scale(dst, cfg_.mlp_down_multiplier);
  };
  switch (kind) {
    case MlpKind::None: return;
    case MlpKind::SwiGLU: dense(out, true, cfg_.intermediate_size); return;
    case MlpKind::Relu2: dense(out, false, cfg_.intermediate_size); return;
    case MlpKind::MoE: {
      const bool granite = cfg_.moe_router == MoeRouter::SoftmaxTopK;
      Tensor router = ws.router.slice_rows(0, T);  // [T, E] fp32
      Tensor experts = ws.moe_experts.slice_rows(0, T), weights = ws.moe_weights.slice_rows(0, T);  // [T, k]
      be_.matmul(router, xn, w.moe.router, {});
      be_.moe_route(experts, weights, router, w.moe.router_bias, moe_ops_);
      const int64_t Tk = T * cfg_.num_experts_per_tok;
      MoeScratch sc{ws.moe.up.slice_rows(0, Tk), ws.moe.act.slice_rows(0, Tk), ws.moe.down.slice_rows(0, Tk), ws.moe.index};
      be_.moe_experts(out, xn, w.moe.experts_up, w.moe.experts_down, experts, weights,
                      granite ? ExpertAct::SwiGLU : ExpertAct::Relu2, sc);
      if (cfg_.shared_intermediate_size > 0) {  // + the shared MLP / shared expert on the same input
        Tensor s = ws.aux.slice_rows(0, T);  // [T, H]
        dense(s, granite, cfg_.shared_intermediate_size);
        be_.add(out, s);
      }
      return;
    }
  }
}

void HybridModel::zamba2_hybrid(int64_t i, int64_t j, Tensor h, Tensor xn, Tensor out, HybridCache& cache,
                                Workspace& ws) const {
  const int64_t T = h.rows(), H = cfg_.hidden_size, F = cfg_.intermediate_size, r = cfg_.adapter_rank;
  const LayerWeights& lw = w_.layers[size_t(i)];
  const SharedBlockWeights& blk = w_.shared_blocks[size_t(j % cfg_.num_mem_blocks)];
  const float eps = cfg_.rms_norm_eps;
  // t = input_layernorm(concat(h, embeddings))                                                    [T, 2H]
  Tensor cat = ws.wide.slice_rows(0, T), t = ws.wide_n.slice_rows(0, T);
  be_.copy(cat.slice_cols(0, H), h);
  be_.embed(cat.slice_cols(H, 2 * H), w_.embed_tokens);  // the embeddings again (cheaper than keeping them)
  be_.rmsnorm(t, cat, blk.input_layernorm, eps);
  // o = self_attn(t) (no residual inside the shared block); a = pre_ff_layernorm(o)
  Tensor o = ws.aux.slice_rows(0, T), a = ws.aux2.slice_rows(0, T);  // [T, H]
  attention(blk.attn, t, o, cfg_.kv_index(i), cache, ws, &lw.adapters);
  // Tensor parallelism: the shared block's attention and MLP outputs are each a rank's share (row-parallel
  // o_proj, down_proj); each is summed before the norm / the add that follows it.
  if (comm_) comm_->all_reduce_sum(o);
  be_.rmsnorm(a, o, blk.pre_ff_layernorm, eps);
  // f = down(gelu(g) * u), [g | u] = gate_up(a) + B_j(A_j(a))
  Tensor gate_up = ws.proj.slice_rows(0, T).slice_cols(0, 2 * F);  // [T, 2F]
  be_.matmul(gate_up, a, blk.gate_up_proj, {});
  Tensor low = ws.lora_r.slice_rows(0, T).slice_cols(0, r), d = ws.lora.slice_rows(0, T).slice_cols(0, 2 * F);
  be_.matmul(low, a, lw.adapters.mlp_down, {});
  be_.matmul(d, low, lw.adapters.mlp_up, {});
  be_.add(gate_up, d);
  Tensor act = ws.y.slice_rows(0, T).slice_cols(0, F);  // [T, F]
  be_.geglu(act, gate_up);
  be_.matmul(o, act, blk.down_proj, {});
  if (comm_) comm_->all_reduce_sum(o);
  // The layer's own linear, then its Mamba mixer on input_layernorm(h + shared): the shared block's output
  // feeds only the mixer input, not the residual stream.
  be_.matmul(a, o, lw.linear, {});
  be_.add(a, h);
  be_.rmsnorm(xn, a, lw.input_layernorm, eps);
  mamba_mixer(lw.mamba, xn, out, cfg_.ssm_index(i), cache, ws);
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
