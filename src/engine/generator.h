// Generator: one sequence, prompt to tokens: chunked prefill through the forward step, then decode steps, with
// sampling by the backend (on the GPU when there is one). `bamba generate` uses it; the server's scheduler batches many sequences instead.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "engine/drafter.h"
#include "model/hybrid_cache.h"
#include "model/hybrid.h"

namespace bamba {

struct GenerationStats {
  int32_t prompt_tokens = 0, new_tokens = 0;
  double prefill_seconds = 0, decode_seconds = 0;  // decode: from the first to the last new token
  bool hit_eos = false, hit_length = false;
  // speculative decoding: tokens drafted, drafts the target accepted, verification steps, and the target's
  // forward steps during decode (verifications + plain decode steps + re-feeds after a rejection)
  int32_t drafted = 0, accepted = 0, verify_steps = 0, decode_steps = 0;
};

// Speculative decoding (engine/drafter.h): up to num_tokens drafted tokens are verified per target step.
struct SpeculativeOptions {
  Drafter* drafter = nullptr;  // null: plain decoding
  int32_t num_tokens = 4;
};

class Generator {
 public:
  // max_model_len bounds prompt + generated tokens; prefill_chunk is the most prompt tokens per step.
  Generator(const HybridModel& model, int32_t max_model_len, int32_t prefill_chunk = 512, SpeculativeOptions spec = {});
  ~Generator();

  // Streams new tokens to on_token (return false to stop). Stops at an eos id, after max_new tokens, or at
  // max_model_len. Throws Error if the prompt is empty or longer than max_model_len.
  // Token k is drawn with seed splitmix64(params.seed + k), so a seed reproduces a run — with or without
  // speculative decoding: a draft is accepted exactly when the target's draw at its position (same logits up to
  // rounding, same seed) equals it, and the first draw that differs is emitted instead. After a rejection the
  // Mamba state is rolled back to a snapshot taken before the verification step and the accepted tokens are fed
  // again (KV rows past the sequence's length are simply overwritten).
  GenerationStats generate(std::span<const int32_t> prompt, int32_t max_new, const SamplingParams& params,
                           const std::vector<int32_t>& eos, const std::function<bool(int32_t)>& on_token);

  // A conversation: with keep_state, the sequence outlives generate(): the next call continues it (its tokens,
  // then the new prompt, computed from the kept state), and save_state writes it (model/state_file.h).
  // load_state reads one (keep_state on): the next generate() continues it. The prompt may then be empty.
  void set_keep_state(bool keep) { keep_ = keep; }
  void save_state(const std::string& path);
  void load_state(const std::string& path);
  const std::vector<int32_t>& tokens() const { return ids_; }  // the kept sequence: prompt(s) and outputs

 private:
  const HybridModel& model_;
  int32_t max_model_len_, prefill_chunk_;
  SpeculativeOptions spec_;
  HybridCache cache_;
  Workspace ws_;
  SeqCache spare_;  // the slot holding the snapshot a rejected draft rolls back to
  Tensor logits_;   // [1, V] of the last step
  bool keep_ = false;
  SeqCache seq_;              // the kept sequence's cache: ids_[0, seq_.len) are in it
  std::vector<int32_t> ids_;  // the kept sequence's tokens
};

}  // namespace bamba
