#include "model/tensor_parallel.h"

#include <condition_variable>
#include <exception>
#include <mutex>
#include <thread>
#include <utility>

#include "core/error.h"
#include "model/tensor_parallel_peers.h"

namespace bamba {

ModelConfig shard_config(const ModelConfig& c, int rank, int n) {
  BAMBA_CHECK(n >= 1 && rank >= 0 && rank < n, "tensor parallelism: rank ", rank, " of ", n, " is out of range");
  ModelConfig s = c;
  s.tp_rank = rank;
  s.tp_size = n;
  s.tp_full_inner = 0;
  if (n == 1) return s;
  const std::string why = cat(" (", c.source, ", --tensor-parallel-size ", n, ")");
  BAMBA_CHECK(c.vocab_size % n == 0, "vocab_size ", c.vocab_size, " does not split into ", n,
              " equal parts for the vocabulary-parallel lm_head", why);
  if (c.n_attention_layers() > 0) {
    const int64_t nq = c.num_attention_heads, nkv = c.num_key_value_heads;
    BAMBA_CHECK(nq % n == 0, "num_attention_heads ", nq, " is not divisible by the ", n, " ranks", why);
    BAMBA_CHECK(nkv % n == 0 || n % nkv == 0, "num_key_value_heads ", nkv, " neither divides nor is divisible by the ",
                n, " ranks (each rank needs whole KV heads)", why);
    s.num_attention_heads = nq / n;
    s.num_key_value_heads = std::max<int64_t>(nkv / n, 1);
  }
  if (c.n_mamba_layers() > 0) {
    const int64_t nh = c.mamba_n_heads, ng = c.mamba_n_groups;
    BAMBA_CHECK(nh % n == 0, "the Mamba head count ", nh, " is not divisible by the ", n, " ranks", why);
    // n_groups < N: the N / n_groups ranks of a group share its B and C (each rank's heads lie in one group).
    BAMBA_CHECK(ng % n == 0 || n % ng == 0, "mamba n_groups ", ng, " neither divides nor is divisible by the ", n,
                " ranks", why);
    s.mamba_n_heads = nh / n;
    s.mamba_inner = c.mamba_inner / n;
    s.mamba_n_groups = std::max<int64_t>(ng / n, 1);
    // The gated norm's statistics: local when each rank holds whole norm groups, else gathered.
    if (c.mamba_gated_norm && s.mamba_inner % c.gated_norm_group_size != 0) s.tp_full_inner = c.mamba_inner;
  }
  // The feed-forward widths, each split into N column-parallel slices. The names are config.json's, per type.
  const bool granite = c.family == Family::GraniteMoeHybrid;
  bool dense = c.family == Family::Zamba2, moe = false;  // Zamba2: the shared blocks' GeGLU MLP
  for (MlpKind k : c.mlp_kinds) {
    dense |= k == MlpKind::SwiGLU || k == MlpKind::Relu2;
    moe |= k == MlpKind::MoE;
  }
  if (dense && !granite) {  // (GraniteMoeHybrid's dense MLP is its shared_mlp, checked below)
    BAMBA_CHECK(c.intermediate_size % n == 0, "intermediate_size ", c.intermediate_size, " is not divisible by the ", n,
                " ranks", why);
    s.intermediate_size = c.intermediate_size / n;
  }
  if (c.shared_intermediate_size > 0) {  // GraniteMoeHybrid's shared_mlp, Nemotron-H's shared expert
    const char* field = granite ? "shared_intermediate_size" : "moe_shared_expert_intermediate_size";
    BAMBA_CHECK(c.shared_intermediate_size % n == 0, field, " ", c.shared_intermediate_size,
                " is not divisible by the ", n, " ranks", why);
    s.shared_intermediate_size = c.shared_intermediate_size / n;
    if (granite) s.intermediate_size = s.shared_intermediate_size;  // the same MLP (config_families.cpp)
  }
  if (moe) {  // each routed expert split like a dense MLP; the router and the routing replicated
    const char* field = granite ? "intermediate_size (the width of one expert)" : "moe_intermediate_size";
    BAMBA_CHECK(c.moe_intermediate_size % n == 0, field, " ", c.moe_intermediate_size, " is not divisible by the ", n,
                " ranks", why);
    s.moe_intermediate_size = c.moe_intermediate_size / n;
  }
  return s;
}

namespace {

// Builds one shard tensor from row ranges of a full tensor, or a column range of a 2-D one, through host fp32
// and the destination backend's load_weight (so it gets the dtype a checkpoint tensor would). FP8 weights keep
// their bytes and scales (fp8 below).
struct Sharder {
  Backend& src;
  Backend& dst;
  std::string where;  // the layer being split, for errors

  // An FP8 weight [N, K] (model/quantization.h): rows `rr`, columns [c0, c1) of its bytes, with the scales that
  // go with them. Per output channel: a row shard takes its rows' scales; a column shard (a row-parallel weight)
  // keeps every row's scale, the scale of its unsplit output channel, so that the ranks' partial products add up
  // to the one-device product. B×B block scales: a shard takes its blocks' scales, and a boundary inside a block
  // (which would need a scale the checkpoint does not have) is an error. The whole model is in host memory here.
  Tensor fp8(Tensor t, std::initializer_list<std::pair<int64_t, int64_t>> rr, int64_t c0, int64_t c1) {
    BAMBA_CHECK(t.ndim == 2 && t.scale && t.device == Device::CPU, "internal: an FP8 shard of ", t.shape_str(),
                " is cut from a host copy with scales");
    const int64_t N = t.shape[0], K = t.shape[1], B = t.scale_block, SC = t.scale_cols();
    auto cut = [&](int64_t x, int64_t end) { return B > 0 && x % B != 0 && x != end; };
    for (auto [b, e] : rr)
      BAMBA_CHECK(!cut(b, N) && !cut(e, N), "tensor parallelism: ", where, "rows [", b, ", ", e, ") of an FP8 weight ",
                  t.shape_str(), " with ", B, "x", B, " block scales: the split cuts a block (each rank's share of ",
                  "every split dimension must be a multiple of ", B, ")");
    BAMBA_CHECK(!cut(c0, K) && !cut(c1, K), "tensor parallelism: ", where, "columns [", c0, ", ", c1,
                ") of an FP8 weight ", t.shape_str(), " with ", B, "x", B, " block scales: the split cuts a block ",
                "(each rank's share of every split dimension must be a multiple of ", B, ")");
    const auto* q = t.ptr<const unsigned char>();
    std::vector<unsigned char> bytes;
    std::vector<float> scales;
    int64_t n = 0;
    for (auto [b, e] : rr) {
      for (int64_t i = b; i < e; ++i) bytes.insert(bytes.end(), q + i * t.ld + c0, q + i * t.ld + c1);
      n += e - b;
      if (B == 0 && c1 - c0 == K) scales.insert(scales.end(), t.scale + b, t.scale + e);
      for (int64_t br = b / std::max<int64_t>(B, 1); B > 0 && br < (e + B - 1) / B; ++br)
        scales.insert(scales.end(), t.scale + br * SC + c0 / B, t.scale + br * SC + (c1 + B - 1) / B);
    }
    if (B == 0 && c1 - c0 != K) scales.assign(t.scale, t.scale + N);  // column shard: every row whole
    TensorInfo info;
    info.name = "tensor-parallel shard";
    info.dtype = DType::F8_E4M3;
    info.shape = {n, c1 - c0};
    info.data = bytes.data();
    info.nbytes = bytes.size();
    const TensorInfo* parts[1] = {&info};
    Tensor out = dst.load_weight(parts, {n, c1 - c0});
    Tensor sc = B ? dst.alloc(DType::F32, {(n + B - 1) / B, (c1 - c0 + B - 1) / B}) : dst.alloc(DType::F32, {n});
    BAMBA_CHECK(size_t(sc.numel()) == scales.size(), "internal: FP8 shard scales ", scales.size(), " for ", sc.shape_str());
    dst.from_host_f32(sc, scales.data());
    out.scale = sc.ptr<float>();
    out.scale_block = int32_t(B);
    return out;
  }

  std::vector<float> host(Tensor t) {
    std::vector<float> v(size_t(t.numel()));
    src.to_host_f32(t, v.data());
    return v;
  }
  Tensor load(std::vector<float>& data, std::vector<int64_t> shape) {
    TensorInfo info;
    info.name = "tensor-parallel shard";
    info.dtype = DType::F32;
    info.shape = shape;
    info.data = reinterpret_cast<const unsigned char*>(data.data());
    info.nbytes = data.size() * sizeof(float);
    const TensorInfo* parts[1] = {&info};
    switch (shape.size()) {
      case 1: return dst.load_weight(parts, {shape[0]});
      case 2: return dst.load_weight(parts, {shape[0], shape[1]});
      case 3: return dst.load_weight(parts, {shape[0], shape[1], shape[2]});
      default: fail("internal: shard of rank ", shape.size());
    }
  }
  Tensor whole(Tensor t) {
    if (!t) return {};
    if (t.dtype == DType::F8_E4M3) return fp8(t, {{0, t.rows()}}, 0, t.shape[1]);
    auto v = host(t);
    std::vector<int64_t> shape(t.shape, t.shape + t.ndim);
    return load(v, shape);
  }
  // Rows [b, e) of each range, concatenated (1-D or 2-D).
  Tensor rows(Tensor t, std::initializer_list<std::pair<int64_t, int64_t>> ranges) {
    if (!t) return {};
    if (t.dtype == DType::F8_E4M3) return fp8(t, ranges, 0, t.shape[1]);
    const auto v = host(t);
    const int64_t inner = t.inner();
    std::vector<float> out;
    int64_t n = 0;
    for (auto [b, e] : ranges) {
      BAMBA_CHECK(b >= 0 && b <= e && e <= t.rows(), "internal: shard rows [", b, ", ", e, ") of ", t.shape_str());
      out.insert(out.end(), v.begin() + b * inner, v.begin() + e * inner);
      n += e - b;
    }
    return load(out, t.ndim == 1 ? std::vector<int64_t>{n} : std::vector<int64_t>{n, inner});
  }
  // Columns [b, e) of a 2-D tensor, or of each matrix of a 3-D stack [E, R, C].
  Tensor cols(Tensor t, int64_t b, int64_t e) {
    if (!t) return {};
    if (t.dtype == DType::F8_E4M3) return fp8(t, {{0, t.rows()}}, b, e);
    const auto v = host(t);
    const int64_t E = t.ndim == 3 ? t.shape[0] : 1, R = t.shape[t.ndim - 2], C = t.shape[t.ndim - 1];
    std::vector<float> out;
    out.reserve(size_t(E * R * (e - b)));
    for (int64_t r = 0; r < E * R; ++r) out.insert(out.end(), v.begin() + r * C + b, v.begin() + r * C + e);
    return load(out, t.ndim == 3 ? std::vector<int64_t>{E, R, e - b} : std::vector<int64_t>{R, e - b});
  }
  // Rows [b, e) of each range within each matrix of a stack [E, R, C] (every expert's own slice).
  Tensor stacked_rows(Tensor t, std::initializer_list<std::pair<int64_t, int64_t>> ranges) {
    BAMBA_CHECK(t.dtype != DType::F8_E4M3, "tensor parallelism: ", where, "FP8 expert weights are not split yet");
    const auto v = host(t);
    const int64_t E = t.shape[0], R = t.shape[1], C = t.shape[2];
    std::vector<float> out;
    int64_t n = 0;
    for (int64_t x = 0; x < E; ++x)
      for (auto [b, e] : ranges) {
        BAMBA_CHECK(b >= 0 && b <= e && e <= R, "internal: shard rows [", b, ", ", e, ") of ", t.shape_str());
        out.insert(out.end(), v.begin() + (x * R + b) * C, v.begin() + (x * R + e) * C);
        if (x == 0) n += e - b;
      }
    return load(out, {E, n, C});
  }
};

}  // namespace

ModelWeights shard_weights(const ModelConfig& c, const ModelWeights& full, Backend& full_be, const ModelConfig& s,
                           Backend& dst) {
  const int64_t r = s.tp_rank, n = s.tp_size;
  Sharder sh{full_be, dst, ""};
  ModelWeights w;
  w.embed_tokens = sh.whole(full.embed_tokens);
  w.final_layernorm = sh.whole(full.final_layernorm);
  const int64_t Vs = c.vocab_size / n;
  sh.where = "lm_head: ";
  w.lm_head = sh.rows(full.lm_head, {{r * Vs, (r + 1) * Vs}});

  // Mamba: this rank's heads, channels and groups.
  const int64_t I = c.mamba_inner, Il = s.mamba_inner, nh = c.mamba_n_heads, nhl = s.mamba_n_heads, Ns = c.mamba_d_state;
  const int64_t ng = c.mamba_n_groups, ngl = s.mamba_n_groups, GN = ng * Ns, CD = c.conv_dim();
  const int64_t g0 = ng >= n ? r * ngl : r / std::max<int64_t>(n / std::max<int64_t>(ng, 1), 1);  // first group
  const std::pair<int64_t, int64_t> x{r * Il, (r + 1) * Il}, B{I + g0 * Ns, I + (g0 + ngl) * Ns},
      C{I + GN + g0 * Ns, I + GN + (g0 + ngl) * Ns}, heads{r * nhl, (r + 1) * nhl};
  auto shift = [](std::pair<int64_t, int64_t> p, int64_t by) { return std::pair{p.first + by, p.second + by}; };
  // Attention: this rank's query heads and the KV heads they use.
  const int64_t nq = c.num_attention_heads, nkv = c.num_key_value_heads, dh = c.head_dim, nql = s.num_attention_heads,
                nkvl = s.num_key_value_heads;
  const int64_t k0 = nkv >= n ? r * nkvl : r / std::max<int64_t>(n / std::max<int64_t>(nkv, 1), 1);
  const std::pair<int64_t, int64_t> q_heads{r * nql * dh, (r + 1) * nql * dh}, kv_heads{k0 * dh, (k0 + nkvl) * dh};
  auto attn = [&](const AttentionWeights& a) {  // q | k | v rows of this rank's heads, o_proj columns
    AttentionWeights o;
    o.qkv_proj = sh.rows(a.qkv_proj, {q_heads, shift(kv_heads, nq * dh), shift(kv_heads, (nq + nkv) * dh)});
    o.o_proj = sh.cols(a.o_proj, q_heads.first, q_heads.second);
    return o;
  };
  const int64_t F = c.intermediate_size, Fl = s.intermediate_size;
  // A dense MLP of width F (Fl a rank): gate|up (or relu²'s up) by rows, down by columns.
  auto mlp = [&](Tensor gate_up, Tensor down, Tensor& gate_up_l, Tensor& down_l, int64_t width, int64_t width_l) {
    if (!gate_up) return;
    const std::pair<int64_t, int64_t> g{r * width_l, (r + 1) * width_l}, u{width + r * width_l, width + (r + 1) * width_l};
    gate_up_l = gate_up.rows() == 2 * width ? sh.rows(gate_up, {g, u}) : sh.rows(gate_up, {g});
    down_l = sh.cols(down, g.first, g.second);
  };

  w.layers.resize(full.layers.size());
  for (size_t i = 0; i < full.layers.size(); ++i) {
    const LayerWeights& f = full.layers[i];
    LayerWeights& l = w.layers[i];
    sh.where = cat("layer ", i, ": ");
    l.input_layernorm = sh.whole(f.input_layernorm);
    l.pre_ff_layernorm = sh.whole(f.pre_ff_layernorm);
    if (f.mamba.in_proj) {
      const MambaWeights& m = f.mamba;
      MambaWeights& o = l.mamba;
      // in_proj rows z | x | B | C | dt; conv channels x | B | C
      o.in_proj = sh.rows(m.in_proj, {x, shift(x, I), shift(B, I), shift(C, I), shift(heads, I + CD)});
      o.in_proj_bias = sh.rows(m.in_proj_bias, {x, shift(x, I), shift(B, I), shift(C, I), shift(heads, I + CD)});
      o.conv1d_weight = sh.rows(m.conv1d_weight, {x, B, C});
      o.conv1d_bias = sh.rows(m.conv1d_bias, {x, B, C});
      o.dt_bias = sh.rows(m.dt_bias, {heads});
      o.A_log = sh.rows(m.A_log, {heads});
      o.D = sh.rows(m.D, {heads});
      o.norm = s.tp_full_inner ? sh.whole(m.norm) : sh.rows(m.norm, {x});
      o.out_proj = sh.cols(m.out_proj, x.first, x.second);
      if (r == 0) o.out_proj_bias = sh.whole(m.out_proj_bias);  // added once, by rank 0, before the all-reduce
      (void)nh;
    }
    if (f.attn.qkv_proj) l.attn = attn(f.attn);
    // The dense MLP (in an MoE layer: the shared MLP / shared expert, of its own width)
    const bool moe = c.mlp_kinds[i] == MlpKind::MoE;
    mlp(f.gate_up_proj, f.down_proj, l.gate_up_proj, l.down_proj, moe ? c.shared_intermediate_size : F,
        moe ? s.shared_intermediate_size : Fl);
    if (f.moe.router) {
      // Routed experts as vLLM splits them: the router (and Nemotron-H's e_score_correction_bias) whole on every
      // rank, so every rank picks the same experts with the same weights for a token (the same op on the same
      // replicated input); each expert's gate|up split by output rows and its down by input columns, so a rank's
      // experts give its share of each expert's output, already weighted. The routed share and the shared MLP's
      // share are summed on the rank, then the one all-reduce after the block adds the ranks' shares.
      const int64_t Fe = c.moe_intermediate_size, Fel = s.moe_intermediate_size;
      l.moe.router = sh.whole(f.moe.router);
      l.moe.router_bias = sh.whole(f.moe.router_bias);
      const std::pair<int64_t, int64_t> gate{r * Fel, (r + 1) * Fel}, up{Fe + r * Fel, Fe + (r + 1) * Fel};
      l.moe.experts_up = f.moe.experts_up.shape[1] == 2 * Fe ? sh.stacked_rows(f.moe.experts_up, {gate, up})
                                                             : sh.stacked_rows(f.moe.experts_up, {gate});
      l.moe.experts_down = sh.cols(f.moe.experts_down, r * Fel, (r + 1) * Fel);
    }
    if (f.linear) {  // Zamba2 hybrid layer: its own linear whole (it runs on the all-reduced shared-block output)
      l.linear = sh.whole(f.linear);
      // LoRA adapters: y += B(A(x)). A (rank r) is replicated: every rank computes the same A(x) from the whole
      // input. B is split by rows with the weight it adds to (q, k, v heads; gate | up columns), so the rank's
      // (W_rank + B_rank A) x is exactly the rows of the unsplit (W + B A) x it holds: the split is exact, no
      // extra communication.
      const AdapterWeights& a = f.adapters;
      AdapterWeights& o = l.adapters;
      o.qkv_down = sh.whole(a.qkv_down);
      o.q_up = sh.rows(a.q_up, {q_heads});
      o.k_up = sh.rows(a.k_up, {kv_heads});
      o.v_up = sh.rows(a.v_up, {kv_heads});
      o.mlp_down = sh.whole(a.mlp_down);
      o.mlp_up = sh.rows(a.mlp_up, {{r * Fl, (r + 1) * Fl}, {F + r * Fl, F + (r + 1) * Fl}});
    }
  }
  // Zamba2's shared blocks: attention and the GeGLU MLP split as in any layer (their input, concat(h, emb), and
  // its norm are whole on every rank). Their two outputs are all-reduced inside the hybrid layer (model/hybrid.cpp):
  // each feeds a norm before the next residual add.
  for (const SharedBlockWeights& f : full.shared_blocks) {
    sh.where = cat("shared block ", w.shared_blocks.size(), ": ");
    SharedBlockWeights b;
    b.input_layernorm = sh.whole(f.input_layernorm);
    b.pre_ff_layernorm = sh.whole(f.pre_ff_layernorm);
    b.attn = attn(f.attn);
    mlp(f.gate_up_proj, f.down_proj, b.gate_up_proj, b.down_proj, F, Fl);
    w.shared_blocks.push_back(b);
  }
  return w;
}

// ---- the one-process group

TensorParallelPeers::TensorParallelPeers(std::vector<std::unique_ptr<Communicator>> comms) : comms_(std::move(comms)) {}

TensorParallelPeers::~TensorParallelPeers() {
  {
    std::lock_guard lk(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  for (auto& p : peers_)
    if (p->thread.joinable()) p->thread.join();
}

void TensorParallelPeers::start() {
  for (auto& p : peers_) {
    Peer* q = p.get();
    q->thread = std::thread([this, q] { work(*q); });
  }
}

void TensorParallelPeers::work(Peer& p) {
  p.be->bind_thread();
  uint64_t seen = 0;
  while (true) {
    std::unique_lock lk(mu_);
    cv_.wait(lk, [&] { return stop_ || job_ != seen; });
    if (stop_) return;
    seen = job_;
    const Job job = current_;
    lk.unlock();
    std::exception_ptr err;
    try {
      p.model->forward_rank(*job.batch, *job.cache->mirrors()[size_t(p.index)], *job.ws->mirrors[size_t(p.index)],
                            job.hook ? ActivationHook([](const std::string&, Tensor) {}) : ActivationHook{});
      p.be->synchronize();
    } catch (const std::exception& e) {
      comms_[size_t(p.index + 1)]->abort(e.what());  // the other ranks stop waiting for this one
      err = std::current_exception();
    }
    lk.lock();
    p.error = err;
    ++done_;
    lk.unlock();
    cv_.notify_all();
  }
}

Tensor TensorParallelPeers::forward(const HybridModel& leader, const StepBatch& b, HybridCache& cache, Workspace& ws,
                                    const ActivationHook& hook) {
  // The other ranks' caches and workspaces, made on first use alongside the leader's (same slots and pages).
  // (A cache's mirrors hold the other ranks' sequence states: they are made once and never replaced.)
  if (cache.mirrors().size() != peers_.size() || ws.mirrors.size() != peers_.size()) {
    BAMBA_CHECK(cache.mirrors().empty() || cache.mirrors().size() == peers_.size(),
                "internal: a cache mirrored for another tensor-parallel group");
    const bool new_cache = cache.mirrors().empty();
    ws.mirrors.clear();
    for (auto& p : peers_) {
      p->be->bind_thread();  // allocated on the rank's own device
      if (new_cache) cache.mirrors().push_back(std::make_unique<HybridCache>(p->model->config(), *p->be, cache.sizes()));
      ws.mirrors.push_back(std::make_unique<Workspace>(p->model->config(), *p->be, ws.max_tokens, ws.max_logit_rows));
    }
  }
  {
    std::lock_guard lk(mu_);
    current_ = {&b, &cache, &ws, bool(hook)};
    done_ = 0;
    ++job_;
  }
  cv_.notify_all();
  Tensor logits;
  std::exception_ptr err;
  try {
    leader.backend().bind_thread();  // GPU 0 on whichever thread steps the model (a server's worker, say)
    logits = leader.forward_rank(b, cache, ws, hook);
  } catch (const std::exception& e) {
    comms_[0]->abort(e.what());
    err = std::current_exception();
  }
  std::unique_lock lk(mu_);
  cv_.wait(lk, [&] { return done_ == int(peers_.size()); });
  // The first rank's own failure is the cause; the others' are "rank k failed" echoes of it.
  if (err) std::rethrow_exception(err);
  for (auto& p : peers_)
    if (p->error) std::rethrow_exception(p->error);
  return logits;
}

std::unique_ptr<HybridModel> make_tensor_parallel_model(const ModelConfig& cfg, const ModelWeights& full, Backend& full_be,
                                                        Backend& rank0, std::vector<std::unique_ptr<Backend>> others,
                                                        std::vector<std::unique_ptr<Communicator>> comms) {
  const int n = int(comms.size());
  BAMBA_CHECK(n >= 1 && others.size() == size_t(n - 1), "tensor parallelism: ", n, " communicators for ",
              others.size() + 1, " backends");
  std::vector<ModelConfig> configs;
  for (int r = 0; r < n; ++r) configs.push_back(shard_config(cfg, r, n));  // every rank's errors before any copy
  Communicator* comm0 = comms[0].get();
  auto peers = std::make_shared<TensorParallelPeers>(std::move(comms));
  for (int r = 1; r < n; ++r) {
    auto p = std::make_unique<TensorParallelPeers::Peer>();
    p->index = r - 1;
    p->be = std::move(others[size_t(r - 1)]);
    p->model = std::make_unique<HybridModel>(configs[size_t(r)],
                                             shard_weights(cfg, full, full_be, configs[size_t(r)], *p->be), *p->be,
                                             peers->comm(r));
    peers->peers_.push_back(std::move(p));
  }
  auto leader = std::make_unique<HybridModel>(configs[0], shard_weights(cfg, full, full_be, configs[0], rank0), rank0, comm0);
  peers->start();
  leader->set_peers(std::move(peers));
  rank0.bind_thread();  // making the other ranks' backends and communicators left this thread on their GPUs
  return leader;
}

}  // namespace bamba
