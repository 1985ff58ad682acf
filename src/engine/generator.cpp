#include "engine/generator.h"

#include <algorithm>
#include <chrono>

#include "core/error.h"
#include "core/hash_uniform.h"
#include "model/state_file.h"

namespace bamba {

Generator::Generator(const HybridModel& model, int32_t max_model_len, int32_t prefill_chunk)
    : model_(model),
      max_model_len_(max_model_len),
      prefill_chunk_(std::min(prefill_chunk, max_model_len)),
      cache_(model.config(), model.backend(), HybridCache::sizes_for(model.config(), 1, max_model_len)),
      ws_(model.config(), model.backend(), prefill_chunk_, 1) {}

GenerationStats Generator::generate(std::span<const int32_t> prompt, int32_t max_new, const SamplingParams& params,
                                    const std::vector<int32_t>& eos, const std::function<bool(int32_t)>& on_token) {
  using clock = std::chrono::steady_clock;
  if (!keep_) {
    cache_.release(seq_);
    ids_.clear();
  }
  std::vector<int32_t> ids = ids_;
  ids.insert(ids.end(), prompt.begin(), prompt.end());
  SeqCache& seq = seq_;
  BAMBA_CHECK(int32_t(ids.size()) > seq.len, "the prompt is empty (no tokens)");
  BAMBA_CHECK(int32_t(ids.size()) <= max_model_len_, "the prompt has ", ids.size(),
              " tokens, more than --max-model-len ", max_model_len_);
  GenerationStats st;
  st.prompt_tokens = int32_t(ids.size()) - seq.len;
  check_sampling(params);
  auto step = [&](int32_t begin, int32_t end) {  // feeds ids[begin, end), leaves the last row's logits in logits_
    BAMBA_CHECK(cache_.reserve(seq, end), "internal: cache too small for ", end, " tokens");
    StepBatch b;
    b.add(std::span(ids).subspan(size_t(begin), size_t(end - begin)), begin, seq.slot, seq.blocks);
    logits_ = model_.forward(b, cache_, ws_);
    seq.len = end;
  };
  auto t0 = clock::now();
  for (int32_t b = seq.len; b < int32_t(ids.size()); b += prefill_chunk_)
    step(b, std::min<int32_t>(int32_t(ids.size()), b + prefill_chunk_));
  auto t1 = clock::now();
  st.prefill_seconds = std::chrono::duration<double>(t1 - t0).count();
  while (st.new_tokens < max_new) {
    if (int32_t(ids.size()) >= max_model_len_) {
      st.hit_length = true;
      break;
    }
    if (st.new_tokens > 0) step(int32_t(ids.size()) - 1, int32_t(ids.size()));
    SamplingParams p = params;
    p.seed = splitmix64(params.seed + uint64_t(st.new_tokens));
    int32_t next = -1;
    model_.backend().sample(logits_, std::span(&p, 1), &next);
    ids.push_back(next);
    ++st.new_tokens;
    if (std::find(eos.begin(), eos.end(), next) != eos.end()) {
      st.hit_eos = true;
      break;
    }
    if (!on_token(next)) break;
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
  cache_.release(seq_);  // one slot: the kept sequence (if any) makes room
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
