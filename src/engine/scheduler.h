// Scheduler: which tokens of which sequences go into the next forward step. Pure bookkeeping over the
// HybridCache's pools, no model: unit-testable on its own.
//
// Each step, under a token budget (and a budget of logit rows, for prompts whose every row is scored):
//   1. running sequences, oldest first, get their next tokens: one for a decode, the next chunk for a sequence
//      still in its prompt (chunked prefill). When the cache has no pages left for one, the newest running
//      sequence is preempted: its slot and pages are freed and it goes back to the front of the queue, to be
//      recomputed later from prompt + generated-so-far (the cache is only ever a function of the tokens).
//      A decoding sequence with a draft (Sequence::draft) also gets its draft tokens, as far as the budgets leave
//      a token and a logit row for every later running sequence and the pool has pages for them (a draft never
//      preempts anything).
//   2. then, if nothing was preempted, waiting sequences in arrival order start their prompts with what is left,
//      so a long prompt is cut into chunks instead of stalling the running streams.
// With a PrefixCache, a sequence that starts (or restarts after preemption) first takes the longest cached
// prefix of its tokens, and its chunks end at the page boundaries where its state is to be snapshotted (the
// chunk is split there: the state exists only at the end of a step). n > 1 choices of one prompt: the followers
// wait (parked) while the first computes the prompt up to its last token, then fork its cache
// (HybridCache::fork) and each computes the last token itself, drawing its own first token from it.
#pragma once
#include <cstdint>
#include <deque>
#include <memory>
#include <vector>

#include "engine/prefix_cache.h"
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
  // prefix cache
  std::vector<uint64_t> page_keys;   // keys of the full pages registered so far (PrefixCache::insert)
  std::vector<int32_t> snapshot_at;  // positions where the state is to be kept, ascending; chunks end there
  int32_t cached = 0;                // tokens restored from the prefix cache at the last start
  uint64_t decode_snapshot = 0;      // key of the page after which its latest decode-time snapshot is kept
  // n > 1: the id of the sequence whose prefill this one forks (-1: none)
  int64_t fork_of = -1;
  // speculative decoding: tokens proposed to follow `tokens`, set by the engine before schedule(); a decoding
  // sequence verifies them in its step (ScheduledSeq::n_draft of them, as budgets and pages allow)
  std::vector<int32_t> draft;

  int32_t pending() const { return int32_t(tokens.size()) - computed; }
};

// One sequence's part of a step: tokens[begin, begin + n), with logits for all rows or only the last; then
// n_draft tokens of seq->draft (speculative decoding: logits for the last token and every draft).
struct ScheduledSeq {
  Sequence* seq;
  int32_t begin, n;
  bool all_logits;
  int32_t n_draft = 0;
  bool samples() const { return begin + n == int32_t(seq->tokens.size()); }  // reaches the end: draws a token
};

struct SchedulerConfig {
  int32_t max_num_seqs = 256;
  int32_t max_batched_tokens = 2048;  // tokens per step (>= max_num_seqs, so every decode fits)
  int32_t max_logit_rows = 256;       // logit rows per step (>= max_num_seqs)
  bool prefix_cache = false;          // share cached prompt prefixes (PrefixCache)
  int32_t prefix_snapshots = 0;       // state slots for the prefix cache's snapshots (beyond max_num_seqs)
  // Also snapshot decoding sequences at each page boundary, keeping the latest one per sequence: the next turn of
  // a chat then restores past the previous answer, not only past the previous prompt. One state copy per page
  // of output per sequence, and the snapshots compete for the same budget.
  bool prefix_decode_snapshots = false;
  // Batch invariance (`--deterministic`, docs/serving.md); 0 = off. > 0: how a sequence is cut into steps is a
  // function of the sequence alone. Its prompt goes in chunks that end at multiples of this many tokens (absolute
  // positions) or at the prompt's end, never cut short by the step budgets (a chunk that does not fit waits for
  // a later step); every token after the prompt goes alone (also when a preempted sequence is recomputed). And a
  // step holds either only one-token parts or only longer ones, taking turns when both wait, so that a GPU's
  // decode and prompt kernels each always see the same parts. No prefix cache and no forks (their hits and
  // splits depend on the other requests).
  int32_t deterministic_chunk = 0;
};

class Scheduler {
 public:
  Scheduler(SchedulerConfig cfg, HybridCache& cache);

  // A new sequence at the back of the queue; the scheduler owns it until finish().
  Sequence& add(int64_t id, std::vector<int32_t> prompt, bool score_prompt);
  // Another choice of the prompt of sequence `leader` (added just before, same prompt, not scored): parked
  // until the leader has computed all but the last prompt token, then a fork of it. It starts on its own
  // instead if the leader goes first (finished, cancelled, preempted) or the fork finds no room.
  Sequence& add_fork(int64_t id, int64_t leader);
  // A sequence that starts from a kept state (a session): cache holds tokens[0, cache.len) of `tokens`.
  Sequence& add_with_cache(int64_t id, std::vector<int32_t> tokens, SeqCache cache);
  // Forgets the sequence like finish() but hands its cache (tokens[0, cache.len)) to the caller.
  SeqCache detach(int64_t id);
  std::vector<ScheduledSeq> schedule();
  // After the step ran: s's tokens [begin, begin + n) are in the cache. Registers new full pages and snapshots
  // with the prefix cache, and forks the parked followers once the prefill reached their fork point.
  void advance(const ScheduledSeq& p);
  // Frees the sequence's slot and pages at once and forgets it (finished, cancelled or disconnected).
  void finish(int64_t id);
  Sequence* find(int64_t id);

  int32_t num_running() const { return int32_t(running_.size()); }
  int32_t num_waiting() const { return int32_t(waiting_.size()); }
  int64_t num_preemptions() const { return preemptions_; }
  const PrefixCache* prefix_cache() const { return prefix_.get(); }
  uint64_t prefix_queries() const { return prefix_queries_; }  // prompt tokens looked up at sequence starts
  uint64_t prefix_hits() const { return prefix_hits_; }        // of those, restored from the cache
  uint64_t forks() const { return forks_; }
  const SchedulerConfig& config() const { return cfg_; }
  const std::vector<Sequence*>& running() const { return running_; }

 private:
  void preempt(Sequence* s);
  // Pages for s up to new_len, evicting idle cached pages when the pool is short.
  bool reserve(Sequence* s, int32_t new_len);
  void start_from_prefix(Sequence& s);  // a sequence (re)starting from nothing: cache hit and snapshot points
  int32_t chunk_limit(const Sequence& s) const;  // the most tokens s may compute this step
  void unpark(int64_t leader);                    // followers of a leader that went: start on their own
  void run(Sequence* s);                          // into running_, kept in id order
  bool wants_all_logits(const Sequence& s) const { return s.score_prompt && s.prompt_scored < s.prompt_len; }

  SchedulerConfig cfg_;
  HybridCache& cache_;
  std::vector<std::unique_ptr<Sequence>> all_;
  std::vector<Sequence*> running_;  // sorted by id (oldest first)
  std::deque<Sequence*> waiting_;   // preempted ones go to the front
  std::vector<Sequence*> parked_;   // n > 1 followers waiting for their leader's prefill
  int64_t preemptions_ = 0;
  bool last_multi_ = false;  // deterministic_chunk: the last step ran multi-token parts (they take turns)
  std::unique_ptr<PrefixCache> prefix_;
  uint64_t prefix_queries_ = 0, prefix_hits_ = 0, forks_ = 0;
};

}  // namespace bamba
