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
  BAMBA_CHECK(c.family != Family::Zamba2, "tensor parallelism does not support zamba2 models yet", why);
  for (MlpKind k : c.mlp_kinds)
    BAMBA_CHECK(k != MlpKind::MoE, "tensor parallelism does not support mixture-of-experts layers yet", why);
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
  bool dense = false;
  for (MlpKind k : c.mlp_kinds) dense |= k == MlpKind::SwiGLU || k == MlpKind::Relu2;
  if (dense) {
    BAMBA_CHECK(c.intermediate_size % n == 0, "intermediate_size ", c.intermediate_size, " is not divisible by the ", n,
                " ranks", why);
    s.intermediate_size = c.intermediate_size / n;
  }
  return s;
}

namespace {

// Builds one shard tensor from row ranges of a full tensor, or a column range of a 2-D one, through host fp32
// and the destination backend's load_weight (so it gets the dtype a checkpoint tensor would).
struct Sharder {
  Backend& src;
  Backend& dst;

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
      default: fail("internal: shard of rank ", shape.size());
    }
  }
  Tensor whole(Tensor t) {
    if (!t) return {};
    auto v = host(t);
    std::vector<int64_t> shape(t.shape, t.shape + t.ndim);
    return load(v, shape);
  }
  // Rows [b, e) of each range, concatenated (1-D or 2-D).
  Tensor rows(Tensor t, std::initializer_list<std::pair<int64_t, int64_t>> ranges) {
    if (!t) return {};
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
  Tensor cols(Tensor t, int64_t b, int64_t e) {
    const auto v = host(t);
    const int64_t R = t.rows(), C = t.shape[1];
    std::vector<float> out;
    out.reserve(size_t(R * (e - b)));
    for (int64_t r = 0; r < R; ++r) out.insert(out.end(), v.begin() + r * C + b, v.begin() + r * C + e);
    return load(out, {R, e - b});
  }
};

}  // namespace

ModelWeights shard_weights(const ModelConfig& c, const ModelWeights& full, Backend& full_be, const ModelConfig& s,
                           Backend& dst) {
  const int64_t r = s.tp_rank, n = s.tp_size;
  Sharder sh{full_be, dst};
  ModelWeights w;
  w.embed_tokens = sh.whole(full.embed_tokens);
  w.final_layernorm = sh.whole(full.final_layernorm);
  const int64_t Vs = c.vocab_size / n;
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
  const int64_t F = c.intermediate_size, Fl = s.intermediate_size;

  w.layers.resize(full.layers.size());
  for (size_t i = 0; i < full.layers.size(); ++i) {
    const LayerWeights& f = full.layers[i];
    LayerWeights& l = w.layers[i];
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
    if (f.attn.qkv_proj) {
      const int64_t q0 = r * nql * dh;
      l.attn.qkv_proj = sh.rows(f.attn.qkv_proj, {{q0, q0 + nql * dh},
                                                  {nq * dh + k0 * dh, nq * dh + (k0 + nkvl) * dh},
                                                  {(nq + nkv) * dh + k0 * dh, (nq + nkv) * dh + (k0 + nkvl) * dh}});
      l.attn.o_proj = sh.cols(f.attn.o_proj, q0, q0 + nql * dh);
    }
    if (f.gate_up_proj) {
      const bool glu = f.gate_up_proj.rows() == 2 * F;
      l.gate_up_proj = glu ? sh.rows(f.gate_up_proj, {{r * Fl, (r + 1) * Fl}, {F + r * Fl, F + (r + 1) * Fl}})
                           : sh.rows(f.gate_up_proj, {{r * Fl, (r + 1) * Fl}});
      l.down_proj = sh.cols(f.down_proj, r * Fl, (r + 1) * Fl);
    }
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
