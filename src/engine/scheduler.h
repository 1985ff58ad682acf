// Scheduler: which tokens of which sequences go into the next forward step. Pure bookkeeping over the
// HybridCache's pools, no model: unit-testable on its own.
//
// Each step, under a token budget (and a budget of logit rows, for prompts whose every row is scored):
//   1. running sequences, oldest first, get their next tokens: one for a decode, the next chunk for a sequence
//      still in its prompt (chunked prefill). When the cache has no pages left for one, the newest running
//      sequence is preempted: its slot and pages are freed and it goes back to the front of the queue, to be
//      recomputed later from prompt + generated-so-far (the cache is only ever a function of the tokens).
//   2. then, if nothing was preempted, waiting sequences in arrival order start their prompts with what is left,
//      so a long prompt is cut into chunks instead of stalling the running streams.
#pragma once
#include <cstdint>
#include <deque>
#include <memory>
#include <vector>

#include "model/hybrid_cache.h"

namespace bamba {

struct Sequence {
  int64_t id = 0;                // arrival order: larger = newer
  std::vector<int32_t> tokens;   // prompt + generated
  int32_t prompt_len = 0;
  int32_t computed = 0;          // tokens whose state is in the cache
  bool score_prompt = false;     // logits for every prompt row (echo with logprobs, scoring)
  int32_t prompt_scored = 0;     // prompt rows whose logits were delivered (they survive preemption)
  SeqCache cache;
  int32_t preemptions = 0;

  int32_t pending() const { return int32_t(tokens.size()) - computed; }
};

// One sequence's part of a step: tokens[begin, begin + n), with logits for all rows or only the last.
struct ScheduledSeq {
  Sequence* seq;
  int32_t begin, n;
  bool all_logits;
  bool samples() const { return begin + n == int32_t(seq->tokens.size()); }  // reaches the end: draws a token
};

struct SchedulerConfig {
  int32_t max_num_seqs = 256;
  int32_t max_batched_tokens = 2048;  // tokens per step (>= max_num_seqs, so every decode fits)
  int32_t max_logit_rows = 256;       // logit rows per step (>= max_num_seqs)
};

class Scheduler {
 public:
  Scheduler(SchedulerConfig cfg, HybridCache& cache);

  // A new sequence at the back of the queue; the scheduler owns it until finish().
  Sequence& add(int64_t id, std::vector<int32_t> prompt, bool score_prompt);
  std::vector<ScheduledSeq> schedule();
  // Frees the sequence's slot and pages at once and forgets it (finished, cancelled or disconnected).
  void finish(int64_t id);
  Sequence* find(int64_t id);

  int32_t num_running() const { return int32_t(running_.size()); }
  int32_t num_waiting() const { return int32_t(waiting_.size()); }
  int64_t num_preemptions() const { return preemptions_; }
  const SchedulerConfig& config() const { return cfg_; }
  const std::vector<Sequence*>& running() const { return running_; }

 private:
  void preempt(Sequence* s);
  bool wants_all_logits(const Sequence& s) const { return s.score_prompt && s.prompt_scored < s.prompt_len; }

  SchedulerConfig cfg_;
  HybridCache& cache_;
  std::vector<std::unique_ptr<Sequence>> all_;
  std::vector<Sequence*> running_;  // sorted by id (oldest first)
  std::deque<Sequence*> waiting_;   // preempted ones go to the front
  int64_t preemptions_ = 0;
};

}  // namespace bamba
