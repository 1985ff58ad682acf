#include "engine/drafter.h"

#include <algorithm>

#include "core/error.h"

namespace bamba {

NgramDrafter::NgramDrafter(int32_t min_n, int32_t max_n) : min_n_(min_n), max_n_(max_n) {
  BAMBA_CHECK(min_n >= 1 && max_n >= min_n, "prompt lookup: expected 1 <= min n <= max n, got ", min_n, " and ", max_n);
}

std::vector<int32_t> NgramDrafter::propose(std::span<const int32_t> ids, int32_t k) {
  const int32_t L = int32_t(ids.size());
  for (int32_t n = std::min(max_n_, L - 1); n >= min_n_; --n) {
    std::span<const int32_t> tail = ids.subspan(size_t(L - n));
    // The most recent match wins: it is the likeliest to continue the same way.
    for (int32_t start = L - n - 1; start >= 0; --start) {
      if (!std::equal(tail.begin(), tail.end(), ids.begin() + start)) continue;
      const int32_t from = start + n, to = std::min(L, from + k);
      return {ids.begin() + from, ids.begin() + to};
    }
  }
  return {};
}

ModelDrafter::ModelDrafter(const HybridModel& draft, int64_t target_vocab, int32_t max_model_len, int32_t prefill_chunk)
    : draft_(draft),
      max_model_len_(max_model_len),
      prefill_chunk_(std::min(prefill_chunk, max_model_len)),
      cache_(draft.config(), draft.backend(), [&] {
        CacheSizes s = HybridCache::sizes_for(draft.config(), 1, max_model_len);
        s.n_slots = 2;  // the sequence and its snapshot
        return s;
      }()),
      ws_(draft.config(), draft.backend(), prefill_chunk_, 1) {
  BAMBA_CHECK(draft.config().vocab_size == target_vocab, "the draft model's vocab_size ", draft.config().vocab_size,
              " differs from the target model's ", target_vocab, ": a draft model must share the tokenizer");
  BAMBA_CHECK(cache_.reserve(spare_, 0), "internal: no snapshot slot");
}

ModelDrafter::~ModelDrafter() {
  cache_.release(seq_);
  cache_.release(spare_);
}

Tensor ModelDrafter::feed(std::span<const int32_t> ids, int32_t begin, int32_t end) {
  Tensor logits;
  for (int32_t b = begin; b < end; b += prefill_chunk_) {
    const int32_t e = std::min(end, b + prefill_chunk_);
    BAMBA_CHECK(cache_.reserve(seq_, e), "internal: draft cache too small for ", e, " tokens");
    StepBatch batch;
    batch.add(ids.subspan(size_t(b), size_t(e - b)), b, seq_.slot, seq_.blocks);
    logits = draft_.forward(batch, cache_, ws_);
  }
  return logits;
}

std::vector<int32_t> ModelDrafter::propose(std::span<const int32_t> ids, int32_t k) {
  k = std::min<int32_t>(k, max_model_len_ - int32_t(ids.size()));
  if (k <= 0 || ids.empty()) return {};
  // Continue from the snapshot when ids extend it (the usual case: the target accepted some drafts), else start
  // the sequence over.
  const bool extends = !snap_.empty() && snap_.size() < ids.size() && std::equal(snap_.begin(), snap_.end(), ids.begin());
  int32_t from = 0;
  if (extends) {
    cache_.copy_state(spare_.slot, seq_.slot);
    from = int32_t(snap_.size());
  } else {
    cache_.release(seq_);
  }
  Tensor logits = feed(ids, from, int32_t(ids.size()));
  cache_.copy_state(seq_.slot, spare_.slot);
  snap_.assign(ids.begin(), ids.end());

  std::vector<int32_t> out, tokens(ids.begin(), ids.end());
  const SamplingParams greedy{};
  for (int32_t i = 0; i < k; ++i) {
    int32_t next = -1;
    draft_.backend().sample(logits, std::span(&greedy, 1), &next);
    out.push_back(next);
    tokens.push_back(next);
    if (i + 1 < k) logits = feed(tokens, int32_t(tokens.size()) - 1, int32_t(tokens.size()));
  }
  return out;
}

BatchModelDrafter::BatchModelDrafter(const HybridModel& draft, int64_t target_vocab, int32_t max_seqs,
                                     int32_t max_model_len, int32_t max_batched_tokens)
    : draft_(draft),
      max_seqs_(max_seqs),
      max_model_len_(max_model_len),
      max_batched_(std::max(max_batched_tokens, max_seqs)),
      cache_(draft.config(), draft.backend(), [&] {
        CacheSizes s = HybridCache::sizes_for(draft.config(), max_seqs, max_model_len);
        s.n_slots = 2 * max_seqs;  // each sequence and its snapshot
        return s;
      }()),
      ws_(draft.config(), draft.backend(), std::max(max_batched_tokens, max_seqs), max_seqs) {
  BAMBA_CHECK(draft.config().vocab_size == target_vocab, "the draft model's vocab_size ", draft.config().vocab_size,
              " differs from the target model's ", target_vocab, ": a draft model must share the tokenizer");
}

BatchModelDrafter::~BatchModelDrafter() {
  for (auto& [id, s] : seqs_) {
    cache_.release(s.cache);
    cache_.release(s.snap);
  }
}

void BatchModelDrafter::forget(int64_t seq) {
  auto it = seqs_.find(seq);
  if (it == seqs_.end()) return;
  cache_.release(it->second.cache);
  cache_.release(it->second.snap);
  seqs_.erase(it);
}

std::vector<int32_t> BatchModelDrafter::propose(std::span<const int32_t> ids, int32_t k) {
  DraftRequest r{-1, ids, k, {}};
  propose_batch(std::span(&r, 1));
  return r.out;
}

void BatchModelDrafter::propose_batch(std::span<DraftRequest> reqs) {
  struct Job {
    DraftRequest* r;
    Seq* s;
    int32_t k;
  };
  std::vector<Job> jobs;
  for (DraftRequest& r : reqs) {
    r.out.clear();
    const int32_t n = int32_t(r.ids.size()), k = std::min(r.k, max_model_len_ - n);
    if (k <= 0 || n == 0 || int32_t(jobs.size()) >= max_seqs_) continue;
    Seq& s = seqs_[r.seq];
    // Continue from the snapshot when ids extend it (the target accepted some drafts), else start over.
    const bool extends = !s.fed.empty() && int32_t(s.fed.size()) < n && std::equal(s.fed.begin(), s.fed.end(), r.ids.begin());
    if (extends) {
      cache_.copy_state(s.snap.slot, s.cache.slot);
      cache_.truncate(s.cache, int32_t(s.fed.size()));
      s.cache.len = int32_t(s.fed.size());
    } else {
      cache_.release(s.cache);
      s.fed.clear();
    }
    // The draft feeds ids and all but the last drafted token.
    if ((s.snap.slot < 0 && !cache_.reserve(s.snap, 0)) || !cache_.reserve(s.cache, n + k - 1)) {
      forget(r.seq);  // no room: no draft this time
      continue;
    }
    jobs.push_back({&r, &s, k});
  }
  const std::vector<SamplingParams> greedy(static_cast<size_t>(max_seqs_));
  std::vector<int32_t> drawn(static_cast<size_t>(max_seqs_));
  Backend& be = draft_.backend();
  // Catch-up: every sequence's unseen tokens, chunked to the step budget; the last row of each sequence's last
  // chunk draws its first draft token.
  for (;;) {
    StepBatch b;
    std::vector<std::pair<Job*, int32_t>> in;  // job, end of its chunk
    int32_t budget = max_batched_;
    for (Job& j : jobs) {
      const int32_t pos = j.s->cache.len, n = int32_t(j.r->ids.size());
      if (pos >= n || budget == 0) continue;
      const int32_t e = std::min(n, pos + budget);
      b.add(j.r->ids.subspan(size_t(pos), size_t(e - pos)), pos, j.s->cache.slot, j.s->cache.blocks);
      budget -= e - pos;
      in.push_back({&j, e});
    }
    if (in.empty()) break;
    Tensor logits = draft_.forward(b, cache_, ws_);  // [rows, V]
    be.sample(logits, std::span(greedy).first(in.size()), drawn.data());
    for (size_t i = 0; i < in.size(); ++i) {
      auto [j, e] = in[i];
      j->s->cache.len = e;
      if (e < int32_t(j->r->ids.size())) continue;
      cache_.copy_state(j->s->cache.slot, j->s->snap.slot);  // the snapshot: the state after ids
      j->s->fed.assign(j->r->ids.begin(), j->r->ids.end());
      j->r->out.push_back(drawn[i]);
    }
  }
  // Then one token at a time for every sequence that wants more.
  for (int32_t d = 1;; ++d) {
    StepBatch b;
    std::vector<Job*> in;
    for (Job& j : jobs) {
      if (int32_t(j.r->out.size()) != d || d >= j.k) continue;
      b.add(std::span(&j.r->out.back(), 1), j.s->cache.len, j.s->cache.slot, j.s->cache.blocks);
      in.push_back(&j);
    }
    if (in.empty()) break;
    Tensor logits = draft_.forward(b, cache_, ws_);
    be.sample(logits, std::span(greedy).first(in.size()), drawn.data());
    for (size_t i = 0; i < in.size(); ++i) {
      ++in[i]->s->cache.len;
      in[i]->r->out.push_back(drawn[i]);
    }
  }
}

}  // namespace bamba

