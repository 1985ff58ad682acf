#include "engine/scheduler.h"

#include <algorithm>

#include "core/error.h"

namespace bamba {

Scheduler::Scheduler(SchedulerConfig cfg, HybridCache& cache) : cfg_(cfg), cache_(cache) {
  const int32_t snaps = cfg.prefix_cache ? cfg.prefix_snapshots : 0;
  BAMBA_CHECK(cfg.max_num_seqs >= 1 && cfg.max_num_seqs + snaps <= cache.sizes().n_slots, "max_num_seqs ",
              cfg.max_num_seqs, " + prefix-cache snapshots ", snaps, " must be in [1, ", cache.sizes().n_slots,
              " state slots]");
  const int32_t det = cfg.deterministic_chunk;
  BAMBA_CHECK(det >= 0, "the deterministic chunk size must be >= 0 (got ", det, ")");
  BAMBA_CHECK(det == 0 || !cfg.prefix_cache, "--deterministic cannot be combined with the prefix cache (its hits "
              "depend on the other requests): add --no-prefix-cache");
  BAMBA_CHECK(det <= cfg.max_batched_tokens && det <= cfg.max_logit_rows, "the deterministic chunk (", det,
              " tokens) must fit one step (", cfg.max_batched_tokens, " tokens, ", cfg.max_logit_rows, " logit rows)");
  if (cfg.prefix_cache) prefix_ = std::make_unique<PrefixCache>(cache, snaps);
  BAMBA_CHECK(cfg.max_batched_tokens >= cfg.max_num_seqs && cfg.max_logit_rows >= cfg.max_num_seqs,
              "the step budgets (", cfg.max_batched_tokens, " tokens, ", cfg.max_logit_rows,
              " logit rows) must hold a decode of every sequence (", cfg.max_num_seqs, ")");
}

Sequence& Scheduler::add(int64_t id, std::vector<int32_t> prompt, bool score_prompt) {
  BAMBA_CHECK(!prompt.empty(), "empty prompt");
  auto s = std::make_unique<Sequence>();
  s->id = id;
  s->prompt_len = int32_t(prompt.size());
  s->tokens = std::move(prompt);
  s->score_prompt = score_prompt;
  waiting_.push_back(s.get());
  all_.push_back(std::move(s));
  return *all_.back();
}

Sequence& Scheduler::add_fork(int64_t id, int64_t leader) {
  Sequence* l = find(leader);
  BAMBA_CHECK(l && l->computed == 0 && !l->score_prompt, "add_fork: no such leader waiting to start");
  // Batch invariance: whether a fork finds room depends on the other requests, so every choice runs on its own.
  if (cfg_.deterministic_chunk > 0)
    return add(id, std::vector<int32_t>(l->tokens.begin(), l->tokens.begin() + l->prompt_len), false);
  Sequence& s = add(id, std::vector<int32_t>(l->tokens.begin(), l->tokens.begin() + l->prompt_len), false);
  if (s.prompt_len < 2) return s;  // nothing to share: the last token is the whole prompt
  std::erase(waiting_, &s);
  s.fork_of = leader;
  parked_.push_back(&s);
  return s;
}

Sequence& Scheduler::add_with_cache(int64_t id, std::vector<int32_t> tokens, SeqCache cache) {
  BAMBA_CHECK(cache.slot >= 0 && cache.len < int32_t(tokens.size()), "add_with_cache: no state, or nothing to compute");
  Sequence& s = add(id, std::move(tokens), false);
  s.cache = std::move(cache);
  s.computed = s.cache.len;
  return s;
}

SeqCache Scheduler::detach(int64_t id) {
  Sequence* s = find(id);
  BAMBA_CHECK(s, "detach: no sequence ", id);
  SeqCache c = std::move(s->cache);
  c.len = s->computed;
  s->cache = SeqCache{};
  finish(id);
  return c;
}

void Scheduler::run(Sequence* s) {
  running_.insert(std::upper_bound(running_.begin(), running_.end(), s,
                                   [](const Sequence* a, const Sequence* b) { return a->id < b->id; }),
                  s);
}

void Scheduler::unpark(int64_t leader) {
  // In id order at the front of the queue: they arrived with the leader.
  std::vector<Sequence*> go;
  for (Sequence* f : parked_)
    if (f->fork_of == leader) go.push_back(f);
  std::erase_if(parked_, [&](Sequence* f) { return f->fork_of == leader; });
  for (auto it = go.rbegin(); it != go.rend(); ++it) {
    (*it)->fork_of = -1;
    waiting_.push_front(*it);
  }
}

Sequence* Scheduler::find(int64_t id) {
  for (auto& s : all_)
    if (s->id == id) return s.get();
  return nullptr;
}

void Scheduler::preempt(Sequence* s) {
  cache_.release(s->cache);
  unpark(s->id);
  s->computed = 0;
  ++s->preemptions;
  ++preemptions_;
  std::erase(running_, s);
  waiting_.push_front(s);
}

void Scheduler::finish(int64_t id) {
  auto it = std::find_if(all_.begin(), all_.end(), [&](auto& p) { return p->id == id; });
  if (it == all_.end()) return;
  Sequence* s = it->get();
  cache_.release(s->cache);
  unpark(s->id);
  std::erase(running_, s);
  std::erase(waiting_, s);
  std::erase(parked_, s);
  all_.erase(it);
}

bool Scheduler::reserve(Sequence* s, int32_t new_len) {
  while (!cache_.reserve(s->cache, new_len)) {
    // Evicting pages helps only when pages are what is short.
    if (!prefix_ || (s->cache.slot < 0 && cache_.free_slots() == 0) || !prefix_->evict_page()) return false;
  }
  return true;
}

void Scheduler::start_from_prefix(Sequence& s) {
  s.page_keys.clear();
  s.snapshot_at.clear();
  s.cached = 0;
  const int32_t P = s.prompt_len, T = int32_t(s.tokens.size());
  const bool followed = std::any_of(parked_.begin(), parked_.end(), [&](Sequence* f) { return f->fork_of == s.id; });
  if (followed) s.snapshot_at.push_back(P - 1);  // the fork point: all but the last prompt token
  if (!prefix_) return;
  const int32_t bs = prefix_->block_size();
  // Scored prompts need the logits of every prompt row: they compute everything (and still fill the cache).
  // At least one token is left to compute: its logits draw the next token.
  PrefixCache::Match m;
  if (!s.score_prompt) {
    m = prefix_->lookup(s.tokens, followed ? P - 2 : T - 1);  // a leader stops short of its fork point
    if (m.len > 0 && prefix_->restore(m, s.cache)) {
      s.computed = s.cached = m.len;
      s.page_keys.assign(m.keys.begin(), m.keys.begin() + m.len / bs);
    }
  }
  // Snapshot points: the last page boundary before the prompt's last token (a later prompt that extends this
  // one, e.g. the next turn of a chat, restores from there), and the end of the cached pages when they go
  // past the restored state (a prefix shared with an earlier prompt that diverged there, e.g. a common system
  // prompt: the next request with it restores from there).
  const int32_t end = (P - 1) / bs * bs;
  for (int32_t at : {std::min(m.cached_pages * bs, end), end})
    if (at > s.computed) s.snapshot_at.push_back(at);
  std::sort(s.snapshot_at.begin(), s.snapshot_at.end());
  s.snapshot_at.erase(std::unique(s.snapshot_at.begin(), s.snapshot_at.end()), s.snapshot_at.end());
  std::erase_if(s.snapshot_at, [&](int32_t at) { return at <= s.computed; });
}

int32_t Scheduler::chunk_limit(const Sequence& s) const {
  if (const int32_t C = cfg_.deterministic_chunk; C > 0) {  // to the next multiple of C in the prompt, then 1
    const int32_t end = s.computed < s.prompt_len ? std::min((s.computed / C + 1) * C, s.prompt_len) : s.computed + 1;
    return std::min(end - s.computed, s.pending());
  }
  return s.snapshot_at.empty() ? s.pending() : std::min(s.pending(), s.snapshot_at.front() - s.computed);
}

void Scheduler::advance(const ScheduledSeq& p) {
  Sequence& s = *p.seq;
  s.computed += p.n;
  s.cache.len = s.computed;
  const bool at_stop = !s.snapshot_at.empty() && s.snapshot_at.front() == s.computed;
  if (at_stop) s.snapshot_at.erase(s.snapshot_at.begin());
  if (prefix_) {
    const int32_t bs = prefix_->block_size();
    const bool decode_snap = cfg_.prefix_decode_snapshots && s.computed > s.prompt_len && s.computed % bs == 0;
    prefix_->insert(s.tokens, s.cache, s.page_keys, (at_stop || decode_snap) && s.computed % bs == 0);
    if (decode_snap && int32_t(s.page_keys.size()) == s.computed / bs) {
      const uint64_t key = s.page_keys.back();
      if (s.decode_snapshot != 0 && s.decode_snapshot != key) prefix_->drop_snapshot(s.decode_snapshot);
      s.decode_snapshot = key;
    }
  }
  if (s.computed != s.prompt_len - 1) return;
  // The fork point of n > 1: the followers take a copy of this state and compute the last prompt token each.
  std::vector<Sequence*> followers;
  for (Sequence* f : parked_)
    if (f->fork_of == s.id) followers.push_back(f);
  for (Sequence* f : followers) {
    if (int32_t(running_.size()) >= cfg_.max_num_seqs || !cache_.fork(s.cache, f->cache)) break;
    std::erase(parked_, f);
    f->fork_of = -1;
    f->computed = s.computed;
    f->page_keys = s.page_keys;
    run(f);
    ++forks_;
  }
  unpark(s.id);  // those that found no room start on their own (the prefix cache may still serve them)
}

std::vector<ScheduledSeq> Scheduler::schedule() {
  std::vector<ScheduledSeq> out;
  int32_t tokens = cfg_.max_batched_tokens, rows = cfg_.max_logit_rows;
  const bool det = cfg_.deterministic_chunk > 0;
  // Batch invariance: this step runs one kind of part, one-token (want 0) or longer (want 1), taking turns when
  // both kinds wait, chosen before the budget is spent so that neither kind can starve the other.
  int want = -1;
  if (det) {
    bool single = false, multi = false;
    for (Sequence* s : running_) (chunk_limit(*s) > 1 ? multi : single) = true;
    if (!waiting_.empty() && int32_t(running_.size()) < cfg_.max_num_seqs)
      (chunk_limit(*waiting_.front()) > 1 ? multi : single) = true;
    if (single || multi) want = single && multi ? !last_multi_ : multi;
  }
  auto other_kind = [&](const Sequence& s) { return want >= 0 && (chunk_limit(s) > 1) != (want == 1); };
  bool preempted = false;
  // 1. Running sequences, oldest first; preempt from the newest end when pages run out.
  for (size_t i = 0; i < running_.size(); ++i) {
    Sequence* s = running_[i];
    const bool all = wants_all_logits(*s);
    int32_t n = std::min(chunk_limit(*s), tokens);
    if (all) n = std::min(n, rows);
    if (n <= 0) continue;  // out of budget this step; decodes always fit (max_batched_tokens >= max_num_seqs)
    if (det && (n < chunk_limit(*s) || other_kind(*s))) continue;  // never cut short: it waits (or its turn)
    int32_t nd = 0;
    if (!all && n == s->pending() && !s->draft.empty()) {
      const int32_t later = int32_t(running_.size() - i - 1);  // each needs a token and a row
      nd = std::clamp(std::min(tokens - n, rows - 1) - later, 0, int32_t(s->draft.size()));
      if (nd > 0 && !reserve(s, s->computed + n + nd)) nd = 0;  // no pages to spare: a plain step
    }
    s->draft.resize(size_t(nd));
    bool self_preempted = false;
    while (!reserve(s, s->computed + n)) {
      Sequence* victim = running_.back();
      preempt(victim);
      preempted = true;
      if (victim == s) {
        self_preempted = true;
        break;
      }
    }
    if (self_preempted) break;  // everything newer is already gone
    out.push_back({s, s->computed, n, all, nd});
    tokens -= n + nd;
    rows -= all ? n : 1 + nd;
  }
  // 2. Waiting sequences in order, with what is left; not after a preemption (the pages are short).
  while (!preempted && !waiting_.empty() && int32_t(running_.size()) < cfg_.max_num_seqs && tokens > 0 && rows > 0) {
    Sequence* s = waiting_.front();
    const bool all = wants_all_logits(*s);
    const bool fresh = s->cache.slot < 0 && s->computed == 0;
    if (fresh) start_from_prefix(*s);
    int32_t n = std::min(chunk_limit(*s), tokens);
    if (all) n = std::min(n, rows);
    if (det && (n < chunk_limit(*s) || other_kind(*s))) break;  // not cut short: it starts in a later step
    if (!reserve(s, s->computed + n)) {  // keep arrival order: wait for pages
      if (fresh && s->computed > 0) {    // give the restored prefix back; it is looked up again next time
        cache_.release(s->cache);
        s->computed = 0;
      }
      break;
    }
    if (fresh && prefix_ && !s->score_prompt) {
      prefix_queries_ += uint64_t(s->tokens.size());
      prefix_hits_ += uint64_t(s->cached);
    }
    waiting_.pop_front();
    s->draft.clear();
    run(s);
    out.push_back({s, s->computed, n, all});
    tokens -= n;
    rows -= all ? n : 1;
  }
  if (det) {
    // One kind of part per step, turn about when both wait: one-token parts only, or longer ones only. The parts
    // left out keep their pages (and a started sequence its slot) and run in the next step.
    const bool multi = std::any_of(out.begin(), out.end(), [](const ScheduledSeq& p) { return p.n > 1; });
    const bool single = std::any_of(out.begin(), out.end(), [](const ScheduledSeq& p) { return p.n == 1; });
    if (multi && single) std::erase_if(out, [&](const ScheduledSeq& p) { return (p.n > 1) == last_multi_; });
    if (!out.empty()) last_multi_ = out.front().n > 1;
    else if (want >= 0) last_multi_ = want == 1;  // this kind could not run (pages, slots): the other one next
  }
  return out;
}

}  // namespace bamba
