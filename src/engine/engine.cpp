#include "engine/engine.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <limits>

#include "core/error.h"
#include "core/hash_uniform.h"
#include "engine/drafter.h"
#include "engine/logits_processors.h"
#include "model/state_file.h"

namespace bamba {

using Clock = std::chrono::steady_clock;

namespace {
void check_session_id(const std::string& id) {
  BAMBA_CHECK(!id.empty() && id.size() <= 128, "a session id has 1 to 128 characters");
  for (char c : id)
    BAMBA_CHECK(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.',
                "a session id has only letters, digits, '-', '_' and '.' (got \"", id, "\")");
}
}  // namespace

struct Engine::Live {
  Live(int64_t id, std::shared_ptr<Request> r, const Tokenizer* tok)
      : id(id), req(std::move(r)), history(req->params) {
    if (tok) text.emplace(*tok, req->params.stop, req->params.skip_special);
  }
  int64_t id;
  std::shared_ptr<Request> req;
  std::optional<TextStream> text;  // none without a tokenizer: token ids only
  int32_t generated = 0;
  std::vector<TokenLogprob> prompt_lp;  // filled as prompt chunks are scored
  bool prompt_lp_sent = false;
  bool scheduled = false;
  Clock::time_point last_token;
  TokenHistory history;  // what the penalties look at
  int32_t grammar_state = 0;
};

CacheSizes Engine::cache_sizes(const ModelConfig& cfg, int32_t max_num_seqs, int32_t max_model_len,
                               double cache_bytes, int32_t num_blocks, int32_t extra_slots, DType kv_dtype) {
  CacheSizes s = HybridCache::sizes_for(cfg, max_num_seqs, max_model_len);  // everything resident: the most useful
  s.n_slots += extra_slots;
  if (s.n_blocks == 0) return s;                                           // no attention layers: slots only
  const int32_t one_seq = (max_model_len + s.block_size - 1) / s.block_size;
  if (num_blocks > 0) {
    s.n_blocks = std::max(num_blocks, one_seq);
    return s;
  }
  const double left = cache_bytes - double(HybridCache::bytes_per_slot(cfg)) * s.n_slots;
  const double fit = std::floor(left / double(HybridCache::bytes_per_block(cfg, s.block_size, kv_dtype)));
  s.n_blocks = int32_t(std::clamp<double>(fit, one_seq, s.n_blocks));
  return s;
}

Engine::Engine(const HybridModel& model, const Tokenizer* tok, EngineOptions opt)
    : model_(model),
      tok_(tok),
      opt_(std::move(opt)),
      cache_(model.config(), model.backend(), opt_.cache),
      ws_(model.config(), model.backend(), opt_.sched.max_batched_tokens, opt_.sched.max_logit_rows),
      sched_(opt_.sched, cache_) {
  BAMBA_CHECK(!cache_.has_attention() || cache_.sizes().n_blocks >= cache_.blocks_for(opt_.max_model_len),
              "the KV cache (", cache_.sizes().n_blocks, " pages) cannot hold one sequence of --max-model-len ",
              opt_.max_model_len);
  stats_.free_slots = cache_.free_slots();
  stats_.free_blocks = cache_.free_blocks();
  // Batch invariance: the scheduler cuts sequences by themselves, the backend's kernels do the rest.
  if (opt_.sched.deterministic_chunk > 0) model_.backend().set_batch_invariant(opt_.sched.deterministic_chunk);
  thread_ = std::thread([this] { loop(); });
}

Engine::~Engine() {
  {
    std::lock_guard lk(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
  if (opt_.sched.deterministic_chunk > 0) model_.backend().set_batch_invariant(0);
}

void Engine::validate(const RequestParams& p) const {
  const int32_t P = int32_t(p.prompt.size()), V = int32_t(model_.config().vocab_size);
  BAMBA_CHECK(P > 0, "the prompt is empty");
  for (int32_t id : p.prompt) BAMBA_CHECK(id >= 0 && id < V, "token id ", id, " is out of range [0, ", V, ")");
  BAMBA_CHECK(tok_ || p.stop.empty(), "stop strings need the model's tokenizer");
  BAMBA_CHECK(p.max_tokens >= 0, "max_tokens must be >= 0 (got ", p.max_tokens, ")");
  BAMBA_CHECK(int64_t(P) + p.max_tokens <= opt_.max_model_len, "This model's maximum context length is ",
              opt_.max_model_len, " tokens. However, you requested ", int64_t(P) + p.max_tokens, " tokens (", P,
              " in the prompt, ", p.max_tokens, " in the completion).");
  check_sampling(p.sampling);
  BAMBA_CHECK(std::isfinite(p.presence_penalty) && std::abs(p.presence_penalty) <= 2.f,
              "presence_penalty must be in [-2, 2] (got ", p.presence_penalty, ")");
  BAMBA_CHECK(std::isfinite(p.frequency_penalty) && std::abs(p.frequency_penalty) <= 2.f,
              "frequency_penalty must be in [-2, 2] (got ", p.frequency_penalty, ")");
  BAMBA_CHECK(p.repetition_penalty > 0.f && p.repetition_penalty <= 100.f,
              "repetition_penalty must be in (0, 100] (got ", p.repetition_penalty, ")");
  BAMBA_CHECK(p.min_p >= 0.f && p.min_p <= 1.f, "min_p must be in [0, 1] (got ", p.min_p, ")");
  for (auto& [id, b] : p.logit_bias) {
    BAMBA_CHECK(id >= 0 && id < V, "logit_bias: token id ", id, " is out of range [0, ", V, ")");
    BAMBA_CHECK(b >= -100.f && b <= 100.f, "logit_bias values must be in [-100, 100] (got ", b, ")");
  }
  BAMBA_CHECK(!p.grammar || !p.ignore_eos, "ignore_eos cannot be combined with structured output");
  for (int32_t id : p.allowed_token_ids)
    BAMBA_CHECK(id >= 0 && id < V, "allowed_token_ids: token id ", id, " is out of range [0, ", V, ")");
  BAMBA_CHECK(!p.grammar || p.grammar->vocab_size() <= V, "the grammar's vocabulary is larger than the model's");
  BAMBA_CHECK(p.logprobs <= opt_.max_logprobs && p.prompt_logprobs <= opt_.max_logprobs, "logprobs must be <= ",
              opt_.max_logprobs);
  if (!p.session.empty()) {
    BAMBA_CHECK(opt_.max_sessions > 0, "sessions are off on this server (start it with --max-sessions N)");
    check_session_id(p.session);
  }
}

std::shared_ptr<Request> Engine::submit(RequestParams p, std::shared_ptr<Channel> ch, int32_t index) {
  validate(p);
  std::shared_ptr<Request> r;
  {
    std::lock_guard lk(mu_);
    BAMBA_CHECK(!stop_ && alive_, "the engine is shutting down");
    r = std::make_shared<Request>(std::move(p), std::move(ch), index);
    inbox_.push_back(r);
  }
  cv_.notify_one();
  return r;
}

std::vector<std::shared_ptr<Request>> Engine::submit_all(std::vector<RequestParams> ps, std::shared_ptr<Channel> ch) {
  for (const RequestParams& p : ps) validate(p);
  std::vector<std::shared_ptr<Request>> rs;
  {
    std::lock_guard lk(mu_);
    BAMBA_CHECK(!stop_ && alive_, "the engine is shutting down");
    for (size_t i = 0; i < ps.size(); ++i) {
      rs.push_back(std::make_shared<Request>(std::move(ps[i]), ch, int32_t(i)));
      inbox_.push_back(rs.back());
    }
  }
  cv_.notify_one();
  return rs;
}

template <class F>
auto Engine::on_engine_thread(F f) -> decltype(f()) {
  auto task = std::make_shared<std::packaged_task<decltype(f())()>>(std::move(f));
  auto done = task->get_future();
  {
    std::lock_guard lk(mu_);
    BAMBA_CHECK(!stop_ && alive_, "the engine is shutting down");
    tasks_.push_back([task] { (*task)(); });
  }
  cv_.notify_one();
  return done.get();
}

void Engine::keep_session(const std::string& id, Session s) {
  drop_session(id);
  while (int32_t(sessions_.size()) >= opt_.max_sessions && !sessions_.empty()) {
    auto lru = std::min_element(sessions_.begin(), sessions_.end(),
                                [](auto& a, auto& b) { return a.second.used < b.second.used; });
    drop_session(lru->first);
  }
  s.used = ++session_clock_;
  sessions_.emplace(id, std::move(s));
}

void Engine::drop_session(const std::string& id) {
  auto it = sessions_.find(id);
  if (it == sessions_.end()) return;
  cache_.release(it->second.cache);
  sessions_.erase(it);
}

Engine::Session& Engine::session(const std::string& id) {
  auto it = sessions_.find(id);
  BAMBA_CHECK(it != sessions_.end(), "no session \"", id, "\"");
  it->second.used = ++session_clock_;
  return it->second;
}

std::vector<SessionInfo> Engine::sessions() {
  return on_engine_thread([this] {
    std::vector<SessionInfo> out;
    for (auto& [id, s] : sessions_) out.push_back({id, int32_t(s.tokens.size()), s.cache.len});
    std::sort(out.begin(), out.end(), [](auto& a, auto& b) { return a.id < b.id; });
    return out;
  });
}

void Engine::fork_session(const std::string& src, const std::string& dst) {
  check_session_id(dst);
  BAMBA_CHECK(opt_.max_sessions >= 2, "forking needs room for two sessions (--max-sessions >= 2)");
  on_engine_thread([&] {
    Session& s = session(src);
    BAMBA_CHECK(src != dst, "a session cannot be forked onto itself");
    Session copy;
    copy.tokens = s.tokens;
    drop_session(dst);
    // Make room first (keep_session would evict only after the fork took its slot), sparing the source.
    while (int32_t(sessions_.size()) >= opt_.max_sessions) {
      auto lru = sessions_.end();
      for (auto it = sessions_.begin(); it != sessions_.end(); ++it)
        if (it->first != src && (lru == sessions_.end() || it->second.used < lru->second.used)) lru = it;
      drop_session(lru->first);
    }
    BAMBA_CHECK(cache_.fork(sessions_.at(src).cache, copy.cache), "no room in the cache to fork session \"", src, "\"");
    keep_session(dst, std::move(copy));
  });
}

bool Engine::delete_session(const std::string& id) {
  return on_engine_thread([&] {
    const bool had = sessions_.count(id) > 0;
    drop_session(id);
    return had;
  });
}

std::string Engine::save_session(const std::string& id) {
  return on_engine_thread([&] {
    Session& s = session(id);
    return encode_state(model_.config(), cache_, s.cache, s.tokens);
  });
}

void Engine::load_session(const std::string& id, const std::string& bytes) {
  check_session_id(id);
  BAMBA_CHECK(opt_.max_sessions > 0, "sessions are off on this server (start it with --max-sessions N)");
  on_engine_thread([&] {
    drop_session(id);
    while (int32_t(sessions_.size()) >= opt_.max_sessions) {
      auto lru = std::min_element(sessions_.begin(), sessions_.end(),
                                  [](auto& a, auto& b) { return a.second.used < b.second.used; });
      drop_session(lru->first);
    }
    Session s;
    s.tokens = decode_state(bytes, "session \"" + id + "\"", model_.config(), cache_, s.cache);
    if (int32_t(s.tokens.size()) > opt_.max_model_len) {
      cache_.release(s.cache);
      fail("session \"", id, "\" has ", s.tokens.size(), " tokens, more than --max-model-len ", opt_.max_model_len);
    }
    keep_session(id, std::move(s));
  });
}

EngineStats Engine::stats() const {
  std::lock_guard lk(mu_);
  return stats_;
}

bool Engine::alive() const {
  std::lock_guard lk(mu_);
  return alive_;
}

void Engine::loop() {
  for (;;) {
    std::vector<std::shared_ptr<Request>> fresh;
    std::vector<std::function<void()>> tasks;
    bool stopping;
    {
      std::unique_lock lk(mu_);
      // Idle: sleep until a request arrives. Busy: poll for cancellations every step.
      cv_.wait(lk, [&] { return stop_ || !inbox_.empty() || !live_.empty() || !tasks_.empty(); });
      fresh.swap(inbox_);
      tasks.swap(tasks_);
      stopping = stop_;
    }
    for (auto& t : tasks) t();  // session operations, between steps
    tasks.clear();
    // n > 1: the choices of one prompt arrive together, on one channel, one after the other; all but the first
    // fork the first's prefill (unless their prompts are scored: every row's logits are wanted).
    std::shared_ptr<Request> leader;
    int64_t leader_id = -1;
    for (auto& r : fresh) {
      const int64_t id = next_id_++;
      RequestParams const& p = r->params;
      const bool forks = opt_.fork_choices && leader && leader->channel == r->channel &&
                         leader->params.prompt == p.prompt && p.prompt_logprobs < 0;
      auto kept = p.session.empty() ? sessions_.end() : sessions_.find(p.session);
      const bool resumes = kept != sessions_.end() && kept->second.cache.len < int32_t(p.prompt.size()) &&
                           std::equal(kept->second.tokens.begin(), kept->second.tokens.begin() + kept->second.cache.len,
                                      p.prompt.begin());
      if (resumes) {  // the sequence takes the session's state; it is kept again when the request finishes
        sched_.add_with_cache(id, p.prompt, kept->second.cache);
        {
          std::lock_guard lk(mu_);
          stats_.session_hits += uint64_t(kept->second.cache.len);
        }
        sessions_.erase(kept);
        leader = nullptr;
      } else if (forks) {
        sched_.add_fork(id, leader_id);
      } else {
        sched_.add(id, p.prompt, p.prompt_logprobs >= 0);
        leader = p.prompt_logprobs < 0 ? r : nullptr;
        leader_id = id;
      }
      auto l = std::make_unique<Live>(id, r, tok_);
      if (p.prompt_logprobs >= 0) l->prompt_lp.resize(p.prompt.size());
      if (p.grammar) l->grammar_state = p.grammar->start();
      live_.emplace(id, std::move(l));
    }
    // Cancelled (or disconnected) requests and, at shutdown, everything: free their pages now.
    for (auto it = live_.begin(); it != live_.end();) {
      Live& l = *it->second;
      ++it;  // finish() erases l
      if (stopping || l.req->cancelled()) finish(l, FinishReason::Abort, {});
    }
    if (stopping) break;
    if (live_.empty()) {
      update_gauges();
      continue;
    }
    try {
      step();
    } catch (const std::exception& e) {
      // A failed step must not take the server down: fail the requests in it, keep serving the others.
      std::string msg = e.what();
      for (auto it = live_.begin(); it != live_.end();) {
        Live& l = *it->second;
        ++it;
        if (!l.scheduled) continue;
        RequestOutput o;
        o.error = msg;
        finish(l, FinishReason::Abort, std::move(o));
      }
    }
    update_gauges();
  }
  std::lock_guard lk(mu_);
  alive_ = false;
}

TokenLogprob Engine::logprob(const float* row, int32_t id, int32_t top_k) const {
  const int32_t V = int32_t(model_.config().vocab_size);
  float mx = -std::numeric_limits<float>::infinity();
  for (int32_t i = 0; i < V; ++i) mx = std::max(mx, row[i]);
  double sum = 0;
  for (int32_t i = 0; i < V; ++i) sum += std::exp(double(row[i]) - mx);
  const double lse = mx + std::log(sum);  // log-softmax(x)_i = x_i - logsumexp(x)
  TokenLogprob t;
  t.id = id;
  t.logprob = float(double(row[id]) - lse);
  if (top_k > 0) {
    std::vector<int32_t> idx(static_cast<size_t>(V));
    for (int32_t i = 0; i < V; ++i) idx[size_t(i)] = i;
    const int32_t k = std::min(top_k, V);
    std::partial_sort(idx.begin(), idx.begin() + k, idx.end(),
                      [&](int32_t a, int32_t b) { return row[a] > row[b] || (row[a] == row[b] && a < b); });
    for (int32_t i = 0; i < k; ++i) t.top.push_back({idx[size_t(i)], float(double(row[idx[size_t(i)]]) - lse)});
  }
  return t;
}

void Engine::finish(Live& l, FinishReason why, RequestOutput out) {
  const int64_t id = l.id;
  if (why != FinishReason::Abort && l.text) out.text += l.text->flush();
  out.index = l.req->index;
  out.finish = why;
  out.prompt_tokens = int32_t(l.req->params.prompt.size());
  const double e2e = std::chrono::duration<double>(Clock::now() - l.req->arrival).count();
  l.req->channel->push(std::move(out));
  const std::string& sid = l.req->params.session;
  Sequence* seq = sid.empty() || why == FinishReason::Abort ? nullptr : sched_.find(id);
  if (seq && seq->computed > 0 && seq->cache.slot >= 0) {
    Session kept;
    kept.tokens = seq->tokens;
    kept.cache = sched_.detach(id);
    keep_session(sid, std::move(kept));
  } else {
    sched_.finish(id);
  }
  {
    std::lock_guard lk(mu_);
    ++stats_.finished[finish_reason_name(why)];
    stats_.e2e.observe(e2e);
  }
  if (opt_.drafter) opt_.drafter->forget(id);
  live_.erase(id);
}

std::string Engine::add_processing(Live& l, int32_t row, LogitsProcessing& proc, const TokenHistory* history) {
  const RequestParams& p = l.req->params;
  LogitsRow r = logits_row(p, history ? *history : l.history, row, proc.edits);
  if (p.grammar || !p.allowed_token_ids.empty()) {
    const int32_t V = int32_t(model_.config().vocab_size), words = (V + 31) / 32;
    r.mask_offset = int64_t(proc.masks.size());
    proc.masks.resize(proc.masks.size() + size_t(words), 0u);
    uint32_t* m = proc.masks.data() + r.mask_offset;
    if (p.grammar) {
      try {  // (a grammar that outgrows its automaton budget fails its own request, not the step)
        const std::vector<uint32_t>& allowed = p.grammar->mask(l.grammar_state);  // its vocabulary may be smaller
        std::copy(allowed.begin(), allowed.end(), m);
      } catch (const Error& e) {
        return e.what();
      }
      if (p.grammar->accepting(l.grammar_state))
        for (int32_t e : opt_.eos)
          if (e >= 0 && e < V) m[e >> 5] |= 1u << (e & 31);
    } else {
      std::fill(m, m + words, ~0u);
    }
    if (!p.allowed_token_ids.empty()) {  // and only these
      std::vector<uint32_t> only(size_t(words), 0u);
      for (int32_t id : p.allowed_token_ids) only[size_t(id) >> 5] |= 1u << (id & 31);
      for (int32_t w = 0; w < words; ++w) m[w] &= only[size_t(w)];
    }
    if (std::all_of(static_cast<const uint32_t*>(m), static_cast<const uint32_t*>(m) + words, [](uint32_t w) { return w == 0; }))
      return p.grammar ? "structured output: no token of the vocabulary can continue the output here"
                       : "allowed_token_ids: no allowed token";
  }
  proc.rows.push_back(r);
  return {};
}

bool Engine::speculates(const Live& l) const {
  const RequestParams& p = l.req->params;
  // A grammar's mask depends on the drafts' grammar states: constrained requests decode plainly.
  return opt_.drafter && opt_.num_speculative_tokens > 0 && p.speculative && !p.grammar;
}

void Engine::propose_drafts() {
  std::vector<DraftRequest> reqs;
  std::vector<Sequence*> seqs;
  for (Sequence* s : sched_.running()) {
    s->draft.clear();
    const Live& l = *live_.at(s->id);
    // Decoding sequences only, with one token pending: after a recompute rollback the accepted tokens are fed
    // again first, without drafts (a verification would otherwise have to restore past them too).
    if (!speculates(l) || s->computed < s->prompt_len || s->pending() != 1) continue;
    // At most the tokens still allowed: the verification step then ends at max_tokens at the latest.
    const int32_t k = std::min(opt_.num_speculative_tokens, l.req->params.max_tokens - l.generated);
    if (k <= 0) continue;
    reqs.push_back({s->id, s->tokens, k, {}});
    seqs.push_back(s);
  }
  if (reqs.empty()) return;
  opt_.drafter->propose_batch(reqs);
  const int32_t V = int32_t(model_.config().vocab_size);
  for (size_t i = 0; i < reqs.size(); ++i) {
    std::vector<int32_t>& d = reqs[i].out;
    if (d.size() > size_t(reqs[i].k)) d.resize(size_t(reqs[i].k));
    // (a draft model with a padded vocabulary may propose ids the target lacks: cut the draft there)
    auto bad = std::find_if(d.begin(), d.end(), [&](int32_t t) { return t < 0 || t >= V; });
    d.erase(bad, d.end());
    seqs[i]->draft = std::move(d);
  }
}

FinishReason Engine::emit(Live& l, Sequence& s, int32_t tok, const float* row, RequestOutput& out) {
  const RequestParams& rp = l.req->params;
  const Clock::time_point now = Clock::now();
  s.tokens.push_back(tok);
  ++l.generated;
  l.history.add(tok);
  out.tokens.push_back(tok);
  if (rp.logprobs >= 0) out.logprobs.push_back(logprob(row, tok, rp.logprobs));
  const bool eos = !rp.ignore_eos && std::find(opt_.eos.begin(), opt_.eos.end(), tok) != opt_.eos.end();
  const bool stop_id = std::find(rp.stop_token_ids.begin(), rp.stop_token_ids.end(), tok) != rp.stop_token_ids.end();
  // The end token's own text is not output. A model may emit an id the tokenizer lacks (a padded vocabulary):
  // it then adds no text rather than failing the step.
  if (l.text && !eos && !stop_id && tok < tok_->vocab_size()) {
    try {
      out.text += l.text->push(tok);
    } catch (const Error&) {
    }
  }
  {
    std::lock_guard lk(mu_);
    if (l.generated == 1) stats_.ttft.observe(std::chrono::duration<double>(now - l.req->arrival).count());
    else stats_.itl.observe(std::chrono::duration<double>(now - l.last_token).count());
  }
  l.last_token = now;
  const bool stop_str = l.text && l.text->stopped();
  bool complete = false;  // structured output: nothing but eos can follow
  if (rp.grammar && !eos) {
    try {
      l.grammar_state = rp.grammar->advance(l.grammar_state, tok);
      // (the mask forbade it: a bug, not the client's fault)
      BAMBA_CHECK(l.grammar_state >= 0, "structured output: token ", tok, " was drawn where the grammar forbids it");
      complete = rp.grammar->complete(l.grammar_state);
    } catch (const Error& e) {
      out.error = e.what();
      return FinishReason::Abort;
    }
  }
  if (stop_str && rp.include_stop_str) out.text += l.text->stop_hit();
  if (eos || stop_id || stop_str || complete) return FinishReason::Stop;
  if (l.generated >= rp.max_tokens || int32_t(s.tokens.size()) >= opt_.max_model_len) return FinishReason::Length;
  return FinishReason::None;
}

void Engine::step() {
  if (opt_.drafter) propose_drafts();
  std::vector<ScheduledSeq> plan = sched_.schedule();
  if (plan.empty() && sched_.num_running() == 0 && !sessions_.empty()) {
    // Nothing can start: the pool is short and kept sessions hold pages. The least recently used goes.
    auto lru = std::min_element(sessions_.begin(), sessions_.end(),
                                [](auto& a, auto& b) { return a.second.used < b.second.used; });
    drop_session(lru->first);
    return;
  }
  if (plan.empty()) return;
  const Clock::time_point t_start = Clock::now();
  const bool per_position = opt_.spec_rollback == SpecRollback::PerPosition;
  // Speculating sequences' rollback slots, for this step only (given back however the step ends): the snapshot
  // before the step (recompute) or the state after each draft position but the last (per-position: the state
  // after the last is the sequence's own).
  std::vector<std::vector<int32_t>> spec(plan.size());
  struct GiveBack {
    HybridCache& c;
    std::vector<std::vector<int32_t>>& s;
    ~GiveBack() {
      for (auto& v : s)
        for (int32_t slot : v) c.give_slot(slot);
    }
  } give_back{cache_, spec};
  StepBatch b;
  int32_t speculating = 0;
  for (size_t i = 0; i < plan.size(); ++i) {
    ScheduledSeq& p = plan[i];
    Sequence& s = *p.seq;
    if (p.n_draft > 0 && opt_.speculative_max_seqs > 0 && speculating >= opt_.speculative_max_seqs) p.n_draft = 0;
    if (p.n_draft > 0) {
      const int32_t want = per_position ? p.n_draft : 1;
      for (int32_t j = 0; j < want; ++j) {
        const int32_t slot = cache_.take_slot();
        if (slot < 0) break;
        spec[i].push_back(slot);
      }
      if (per_position) p.n_draft = int32_t(spec[i].size());  // as many positions as slots were found
      else if (spec[i].empty()) p.n_draft = 0;
      speculating += p.n_draft > 0;
    }
    s.draft.resize(size_t(p.n_draft));
    if (p.n_draft == 0) {
      b.add(std::span(s.tokens).subspan(size_t(p.begin), size_t(p.n)), p.begin, s.cache.slot, s.cache.blocks,
            p.all_logits);
    } else {  // [tokens[begin, begin + n) | draft]: logits for the last real token and every draft
      std::vector<int32_t> toks(s.tokens.begin() + p.begin, s.tokens.begin() + p.begin + p.n);
      toks.insert(toks.end(), s.draft.begin(), s.draft.end());
      b.add_tokens(toks, p.begin, s.cache.slot, s.cache.blocks);
      const int32_t last = b.n_tokens() - p.n_draft - 1;  // row of tokens[begin + n - 1]
      for (int32_t r = 0; r <= p.n_draft; ++r) b.logit_rows.push_back(last + r);
      if (per_position)
        for (int32_t j = 0; j < p.n_draft; ++j) b.keep_state_after(last + j, spec[i][size_t(j)]);
      else
        cache_.copy_state(s.cache.slot, spec[i][0]);
    }
    Live& l = *live_.at(s.id);
    if (!l.scheduled) {
      l.scheduled = true;
      std::lock_guard lk(mu_);
      stats_.queue.observe(std::chrono::duration<double>(t_start - l.req->arrival).count());
      stats_.prompt_tokens += uint64_t(s.prompt_len);
    }
  }
  const int32_t R = int32_t(b.logit_rows.size()), V = int32_t(model_.config().vocab_size);
  Tensor logits = model_.forward(b, cache_, ws_);  // [R, V] F32
  // Logprobs are computed on the host: copy the rows only when a request in the step asks for them.
  bool need_host = false;
  for (const ScheduledSeq& p : plan) {
    const RequestParams& rp = live_.at(p.seq->id)->req->params;
    need_host |= p.all_logits || (p.samples() && rp.logprobs >= 0);
  }
  if (need_host) {
    host_logits_.resize(size_t(R) * size_t(V));
    model_.backend().to_host_f32(logits, host_logits_.data());
  }
  auto host_row = [&](int32_t r) { return need_host ? host_logits_.data() + size_t(r) * size_t(V) : nullptr; };

  // One sampling call over all rows; rows that draw nothing (prompt rows) are greedy and ignored. The draw of
  // generated token k uses seed (seed, k) whatever step it falls in: a draft row r draws token generated + r.
  std::vector<SamplingParams> params(static_cast<size_t>(R));
  std::vector<int32_t> last_row(plan.size());
  LogitsProcessing proc;
  std::vector<std::string> failed(plan.size());  // a row whose grammar allows no token: that request fails
  for (size_t i = 0, row = 0; i < plan.size(); ++i) {
    const ScheduledSeq& p = plan[i];
    row += size_t(p.all_logits ? p.n : 1 + p.n_draft);
    last_row[i] = int32_t(row) - 1;
    Live& l = *live_.at(p.seq->id);
    if (!p.samples()) continue;
    const RequestParams& rp = l.req->params;
    const bool process = needs_logits_processing(rp) && l.generated < rp.max_tokens;
    // Row r of a verification is used only if drafts 0..r-1 were accepted: its penalties see them as output.
    std::optional<TokenHistory> h;
    if (process && p.n_draft > 0) h = l.history;
    for (int32_t r = 0; r <= p.n_draft; ++r) {
      const int32_t at = last_row[i] - p.n_draft + r;
      SamplingParams sp = rp.sampling;
      // Draw k depends on (seed, k) only, as in the Generator: a recomputed sequence draws the same tokens.
      sp.seed = splitmix64(sp.seed + uint64_t(l.generated + r));
      params[size_t(at)] = sp;
      if (process) {
        std::string e = add_processing(l, at, proc, h ? &*h : nullptr);
        if (failed[i].empty()) failed[i] = std::move(e);
      }
      if (h && r < p.n_draft) h->add(p.seq->draft[size_t(r)]);
    }
  }
  if (!proc.rows.empty()) model_.backend().process_logits(logits, proc);
  std::vector<int32_t> drawn(static_cast<size_t>(R));
  model_.backend().sample(logits, params, drawn.data());

  uint64_t new_tokens = 0, drafts = 0, draft_tokens = 0, accepted = 0;
  for (size_t i = 0; i < plan.size(); ++i) {
    const ScheduledSeq& p = plan[i];
    Sequence& s = *p.seq;
    Live& l = *live_.at(s.id);
    const RequestParams& rp = l.req->params;
    if (p.n_draft == 0) sched_.advance(p);  // (a verification advances by what it accepted, below)
    RequestOutput out;
    out.index = l.req->index;
    if (p.all_logits) {  // row r (position begin + r) predicts prompt token begin + r + 1
      const float* rows = host_logits_.data() + size_t(last_row[i] - p.n + 1) * size_t(V);
      if (p.begin == 0) l.prompt_lp[0] = TokenLogprob{s.tokens[0], std::nanf(""), {}};
      for (int32_t r = 0; r < p.n; ++r) {
        const int32_t j = p.begin + r + 1;
        if (j < s.prompt_len) l.prompt_lp[size_t(j)] = logprob(rows + size_t(r) * size_t(V), s.tokens[size_t(j)], rp.prompt_logprobs);
      }
      s.prompt_scored = std::min(p.begin + p.n + 1, s.prompt_len);
    }
    if (rp.prompt_logprobs >= 0 && !l.prompt_lp_sent && s.prompt_scored == s.prompt_len) {
      out.prompt_logprobs = l.prompt_lp;
      l.prompt_lp_sent = true;
    }
    if (!p.samples()) {
      if (!out.prompt_logprobs.empty()) l.req->channel->push(std::move(out));
      continue;
    }
    if (l.generated >= rp.max_tokens) {  // max_tokens 0: scoring only
      finish(l, FinishReason::Length, std::move(out));
      continue;
    }
    if (!failed[i].empty()) {
      out.error = failed[i];
      finish(l, FinishReason::Abort, std::move(out));
      continue;
    }
    // Verification (n_draft == 0: a plain draw): row r draws what follows draft r - 1; a draft is accepted when
    // the target's own draw equals it, and the first draw that differs replaces it. For greedy requests that is
    // exact greedy decoding; sampled ones draw each token as they would without drafts (same seed per token),
    // which for a draft proposed with certainty is the standard rejection-sampling rule: accepted with
    // probability p(draft), else a draw from p without the draft.
    const int32_t nd = p.n_draft, first = last_row[i] - nd;
    int32_t a = 0;  // drafts accepted (and output)
    FinishReason why = FinishReason::None;
    for (int32_t r = 0; r <= nd; ++r) {
      const int32_t y = drawn[size_t(first + r)];
      const bool hit = r < nd && y == s.draft[size_t(r)];
      why = emit(l, s, y, host_row(first + r), out);
      ++new_tokens;
      a += hit;
      if (why != FinishReason::None || !hit) break;
    }
    if (nd > 0) {
      ++drafts;
      draft_tokens += uint64_t(nd);
      accepted += uint64_t(a);
      // The cache holds the step's every token; keep it up to the last accepted draft (state and KV length).
      if (a == nd) {
        sched_.advance({&s, p.begin, p.n + nd, false, 0});
      } else if (per_position) {
        cache_.copy_state(spec[i][size_t(a)], s.cache.slot);  // the state after tokens[begin + n - 1] + a drafts
        sched_.advance({&s, p.begin, p.n + a, false, 0});
        cache_.truncate(s.cache, s.computed);
      } else {  // back to the snapshot: tokens[begin, ...) are fed again in the sequence's next step
        cache_.copy_state(spec[i][0], s.cache.slot);
        cache_.truncate(s.cache, p.begin);
      }
      s.draft.clear();
    }
    if (why != FinishReason::None) finish(l, why, std::move(out));  // frees s: not used below
    else l.req->channel->push(std::move(out));
  }
  std::lock_guard lk(mu_);
  stats_.generation_tokens += new_tokens;
  stats_.spec_drafts += drafts;
  stats_.spec_draft_tokens += draft_tokens;
  stats_.spec_accepted_tokens += accepted;
  stats_.steps++;
}

void Engine::update_gauges() {
  std::lock_guard lk(mu_);
  stats_.preemptions = uint64_t(sched_.num_preemptions());
  stats_.num_running = sched_.num_running();
  stats_.num_waiting = sched_.num_waiting();
  stats_.free_slots = cache_.free_slots();
  stats_.free_blocks = cache_.free_blocks();
  stats_.forks = sched_.forks();
  stats_.sessions = int32_t(sessions_.size());
  // Usage counts what sequences hold: the prefix cache's idle pages are free for the taking, and its snapshot
  // slots are its own budget.
  const CacheSizes& cs = cache_.sizes();
  const PrefixCache* pc = sched_.prefix_cache();
  const int32_t snaps = pc ? pc->snapshots() : 0, snap_budget = pc ? pc->max_snapshots() : 0;
  // Counting idle pages walks the whole cache: at most every 100 ms, not every step.
  // (Always once the engine is idle: it sleeps without updating until the next request.)
  if (pc && (live_.empty() || Clock::now() - idle_counted_ > std::chrono::milliseconds(100))) {
    idle_pages_ = pc->idle_pages();
    idle_counted_ = Clock::now();
  }
  const int32_t idle = pc ? idle_pages_ : 0;
  stats_.state_slots_usage = 1.0 - double(cache_.free_slots() + snaps - snap_budget) / (cs.n_slots - snap_budget);
  stats_.kv_cache_usage = cs.n_blocks ? 1.0 - double(cache_.free_blocks() + idle) / cs.n_blocks : 0.0;
  if (pc) {
    stats_.prefix_cache_queries = sched_.prefix_queries();
    stats_.prefix_cache_hits = sched_.prefix_hits();
    stats_.prefix_cache_pages = pc->pages();
    stats_.prefix_cache_snapshots = snaps;
    stats_.prefix_cache_evicted_pages = pc->evicted_pages();
    stats_.prefix_cache_evicted_snapshots = pc->evicted_snapshots();
  }
}

}  // namespace bamba
