#include "engine/scheduler.h"

#include <algorithm>

#include "core/error.h"

namespace bamba {

Scheduler::Scheduler(SchedulerConfig cfg, HybridCache& cache) : cfg_(cfg), cache_(cache) {
  BAMBA_CHECK(cfg.max_num_seqs >= 1 && cfg.max_num_seqs <= cache.sizes().n_slots,
              "max_num_seqs ", cfg.max_num_seqs, " must be in [1, ", cache.sizes().n_slots, " state slots]");
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

Sequence* Scheduler::find(int64_t id) {
  for (auto& s : all_)
    if (s->id == id) return s.get();
  return nullptr;
}

void Scheduler::preempt(Sequence* s) {
  cache_.release(s->cache);
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
  std::erase(running_, s);
  std::erase(waiting_, s);
  all_.erase(it);
}

std::vector<ScheduledSeq> Scheduler::schedule() {
  std::vector<ScheduledSeq> out;
  int32_t tokens = cfg_.max_batched_tokens, rows = cfg_.max_logit_rows;
  bool preempted = false;
  // 1. Running sequences, oldest first; preempt from the newest end when pages run out.
  for (size_t i = 0; i < running_.size(); ++i) {
    Sequence* s = running_[i];
    const bool all = wants_all_logits(*s);
    int32_t n = std::min(s->pending(), tokens);
    if (all) n = std::min(n, rows);
    if (n <= 0) continue;  // out of budget this step; decodes always fit (max_batched_tokens >= max_num_seqs)
    bool self_preempted = false;
    while (!cache_.reserve(s->cache, s->computed + n)) {
      Sequence* victim = running_.back();
      preempt(victim);
      preempted = true;
      if (victim == s) {
        self_preempted = true;
        break;
      }
    }
    if (self_preempted) break;  // everything newer is already gone
    out.push_back({s, s->computed, n, all});
    tokens -= n;
    rows -= all ? n : 1;
  }
  // 2. Waiting sequences in order, with what is left; not after a preemption (the pages are short).
  while (!preempted && !waiting_.empty() && int32_t(running_.size()) < cfg_.max_num_seqs && tokens > 0 && rows > 0) {
    Sequence* s = waiting_.front();
    const bool all = wants_all_logits(*s);
    int32_t n = std::min(s->pending(), tokens);
    if (all) n = std::min(n, rows);
    if (!cache_.reserve(s->cache, s->computed + n)) break;  // keep arrival order: wait for pages
    waiting_.pop_front();
    running_.insert(std::upper_bound(running_.begin(), running_.end(), s,
                                     [](const Sequence* a, const Sequence* b) { return a->id < b->id; }),
                    s);
    out.push_back({s, s->computed, n, all});
    tokens -= n;
    rows -= all ? n : 1;
  }
  return out;
}

}  // namespace bamba
