#include "engine/generator.h"

#include <algorithm>
#include <chrono>

#include "core/error.h"
#include "core/hash_uniform.h"
#include "model/state_file.h"

namespace bamba {

Generator::Generator(const HybridModel& model, int32_t max_model_len, int32_t prefill_chunk, SpeculativeOptions spec)
    : model_(model),
      max_model_len_(max_model_len),
      prefill_chunk_(std::min(prefill_chunk, max_model_len)),
      spec_(spec),
      cache_(model.config(), model.backend(), [&] {
        CacheSizes s = HybridCache::sizes_for(model.config(), 1, max_model_len);
        if (spec.drafter) s.n_slots = 2;  // + the snapshot
        return s;
      }()),
      ws_(model.config(), model.backend(), std::max(prefill_chunk_, spec.num_tokens + 1),
          spec.drafter ? spec.num_tokens + 1 : 1) {
  BAMBA_CHECK(!spec.drafter || spec.num_tokens >= 1, "--num-speculative-tokens must be at least 1");
  if (spec.drafter) BAMBA_CHECK(cache_.reserve(spare_, 0), "internal: no snapshot slot");
}

Generator::~Generator() {
  cache_.release(spare_);
  cache_.release(seq_);
}

GenerationStats Generator::generate(std::span<const int32_t> prompt, int32_t max_new, const SamplingParams& params,
                                    const std::vector<int32_t>& eos, const std::function<bool(int32_t)>& on_token) {
  using clock = std::chrono::steady_clock;
  if (!keep_) {
    cache_.release(seq_);
    ids_.clear();
  }
  // With keep_state the kept sequence goes on: its tokens, then the prompt; the cache holds ids[0, seq.len).
  std::vector<int32_t> ids = ids_;
  ids.insert(ids.end(), prompt.begin(), prompt.end());
  SeqCache& seq = seq_;
  BAMBA_CHECK(int32_t(ids.size()) > seq.len, "the prompt is empty (no tokens)");
  BAMBA_CHECK(int32_t(ids.size()) <= max_model_len_, "the prompt has ", ids.size(),
              " tokens, more than --max-model-len ", max_model_len_);
  GenerationStats st;
  st.prompt_tokens = int32_t(ids.size()) - seq.len;
  check_sampling(params);
  Backend& be = model_.backend();
  // Feeds ids[begin, end) (the cache holds ids[0, begin)); the logits of its last `rows` rows come back.
  auto step = [&](int32_t begin, int32_t end, int32_t rows = 1) {
    BAMBA_CHECK(cache_.reserve(seq, end), "internal: cache too small for ", end, " tokens");
    StepBatch b;
    b.add_tokens(std::span(ids).subspan(size_t(begin), size_t(end - begin)), begin, seq.slot, seq.blocks);
    for (int32_t r = end - begin - rows; r < end - begin; ++r) b.logit_rows.push_back(r);
    Tensor logits = model_.forward(b, cache_, ws_);
    seq.len = end;
    return logits;
  };
  auto params_at = [&](int32_t k) {  // the draw of new token k
    SamplingParams p = params;
    p.seed = splitmix64(params.seed + uint64_t(k));
    return p;
  };
  // Appends a drawn token; false when generation ends with it (EOS, the caller, the length limits).
  auto emit = [&](int32_t id) {
    ids.push_back(id);
    ++st.new_tokens;
    if (std::find(eos.begin(), eos.end(), id) != eos.end()) {
      st.hit_eos = true;
      return false;
    }
    if (!on_token(id) || st.new_tokens >= max_new) return false;
    if (int32_t(ids.size()) >= max_model_len_) {
      st.hit_length = true;
      return false;
    }
    return true;
  };

  auto t0 = clock::now();
  // Chunks end at multiples of prefill_chunk_ (absolute positions, also after a loaded state): the splits the
  // server's deterministic schedule makes.
  for (int32_t b = seq.len, e; b < int32_t(ids.size()); b = e) {
    e = std::min<int32_t>(int32_t(ids.size()), (b / prefill_chunk_ + 1) * prefill_chunk_);
    logits_ = step(b, e);
  }
  auto t1 = clock::now();
  st.prefill_seconds = std::chrono::duration<double>(t1 - t0).count();
  // Invariant at the top of the loop: the cache holds every token of ids and logits_ predicts the next.
  bool going = max_new > 0;
  if (int32_t(ids.size()) >= max_model_len_) st.hit_length = going, going = false;
  while (going) {
    const int32_t n0 = int32_t(ids.size());
    int32_t next = -1;
    SamplingParams p = params_at(st.new_tokens);
    be.sample(logits_, std::span(&p, 1), &next);
    if (!emit(next)) break;
    // Drafts must leave room for the verification step's tokens and for the token it draws after them.
    const int32_t k = std::min({spec_.num_tokens, max_new - st.new_tokens - 1, max_model_len_ - int32_t(ids.size()) - 1});
    std::vector<int32_t> draft = spec_.drafter && k > 0 ? spec_.drafter->propose(ids, k) : std::vector<int32_t>{};
    if (draft.size() > size_t(k)) draft.resize(size_t(k));
    ++st.decode_steps;
    if (draft.empty()) {
      logits_ = step(n0, n0 + 1);
      continue;
    }
    // Verify: one step over [next, d1..dk], logits at every row; row r predicts the token after d_r.
    const int32_t nd = int32_t(draft.size());
    cache_.copy_state(seq.slot, spare_.slot);
    ids.insert(ids.end(), draft.begin(), draft.end());
    Tensor rows = step(n0, n0 + 1 + nd, nd + 1);  // [nd + 1, V]
    ids.resize(size_t(n0 + 1));
    std::vector<SamplingParams> ps(size_t(nd + 1));
    for (int32_t r = 0; r <= nd; ++r) ps[size_t(r)] = params_at(st.new_tokens + r);
    std::vector<int32_t> drawn(size_t(nd + 1));
    be.sample(rows, ps, drawn.data());
    ++st.verify_steps;
    st.drafted += nd;
    int32_t accepted = 0;
    bool stop = false;
    for (; accepted < nd; ++accepted) {
      const int32_t y = drawn[size_t(accepted)];
      if (y != draft[size_t(accepted)]) {
        stop = !emit(y);  // the target's own draw replaces the first rejected draft
        break;
      }
      if (!emit(y)) {
        stop = true;
        ++accepted;
        break;
      }
    }
    st.accepted += accepted;
    if (stop) {
      // The state holds the whole verification step, maybe past ids: a kept sequence goes back to the snapshot
      // (ids[0, n0)) and feeds the rest with the next turn.
      if (keep_) {
        cache_.copy_state(spare_.slot, seq.slot);
        seq.len = n0;
      }
      break;
    }
    if (accepted == nd) {
      logits_ = rows.slice_rows(nd, nd + 1);  // the state holds all of ids: nothing to redo
    } else {
      cache_.copy_state(spare_.slot, seq.slot);
      seq.len = n0;
      logits_ = step(n0, int32_t(ids.size()));
      ++st.decode_steps;
    }
  }
  st.decode_seconds = std::chrono::duration<double>(clock::now() - t1).count();
  // Kept: the last drawn token is not in the cache yet; the next call feeds it first.
  if (keep_) ids_ = std::move(ids);
  else cache_.release(seq);
  return st;
}

void Generator::save_state(const std::string& path) {
  BAMBA_CHECK(seq_.slot >= 0, "no state to save: nothing was generated with keep_state");
  save_state_file(path, model_.config(), cache_, seq_, ids_);
}

void Generator::load_state(const std::string& path) {
  cache_.release(seq_);  // the kept sequence (if any) makes room
  ids_.clear();
  std::vector<int32_t> ids = load_state_file(path, model_.config(), cache_, seq_);
  if (int32_t(ids.size()) > max_model_len_) {
    cache_.release(seq_);
    fail(path, ": the saved sequence has ", ids.size(), " tokens, more than --max-model-len ", max_model_len_);
  }
  ids_ = std::move(ids);
  keep_ = true;
}

}  // namespace bamba
