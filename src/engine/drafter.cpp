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

}  // namespace bamba
