// Drafter: proposes the next tokens of a sequence for speculative decoding (engine/generator.cpp verifies them
// with one forward step of the target model and keeps the longest prefix the target agrees with).
// Drafts are deterministic (a function of the tokens so far), so verification can accept a draft exactly when
// the target's own draw at that position equals it: the output is the target's, token for token.
#pragma once
#include <cstdint>
#include <memory>
#include <unordered_map>
#include <span>
#include <string>
#include <vector>

#include "model/hybrid.h"
#include "model/hybrid_cache.h"

namespace bamba {

// One sequence's part of a batched proposal (the serving engine drafts for all its decoding sequences at once).
struct DraftRequest {
  int64_t seq = 0;                  // the engine's sequence id (a drafter with state keeps it per sequence)
  std::span<const int32_t> ids;     // its tokens so far
  int32_t k = 0;                    // most tokens to propose
  std::vector<int32_t> out;         // the proposal
};

class Drafter {
 public:
  virtual ~Drafter() = default;
  // Up to k tokens that may follow ids (fewer or none when there is no good guess).
  virtual std::vector<int32_t> propose(std::span<const int32_t> ids, int32_t k) = 0;
  // All of reqs at once; by default one propose() each.
  virtual void propose_batch(std::span<DraftRequest> reqs) {
    for (DraftRequest& r : reqs) r.out = propose(r.ids, r.k);
  }
  // The engine is done with sequence seq: a drafter with per-sequence state frees it.
  virtual void forget(int64_t /*seq*/) {}
  virtual std::string name() const = 0;
};

// Prompt lookup (vLLM's "ngram" method): the most recent earlier occurrence of the last n tokens, n from max_n
// down to min_n, and the tokens that followed it. Free to run; good on text that repeats its context (code edits,
// summaries, extraction).
class NgramDrafter : public Drafter {
 public:
  NgramDrafter(int32_t min_n = 1, int32_t max_n = 4);
  std::vector<int32_t> propose(std::span<const int32_t> ids, int32_t k) override;
  std::string name() const override { return "ngram"; }

 private:
  int32_t min_n_, max_n_;
};

// A smaller model with the same vocabulary, drafting greedily. It keeps its own cache of the sequence; its
// Mamba state is snapshotted before each draft and restored afterwards, so that only the tokens the target
// accepted are fed to it next time.
class ModelDrafter : public Drafter {
 public:
  // Error if the draft's vocab_size differs from target_vocab.
  ModelDrafter(const HybridModel& draft, int64_t target_vocab, int32_t max_model_len, int32_t prefill_chunk = 512);
  ~ModelDrafter() override;
  std::vector<int32_t> propose(std::span<const int32_t> ids, int32_t k) override;
  std::string name() const override { return "draft model"; }

 private:
  Tensor feed(std::span<const int32_t> ids, int32_t begin, int32_t end);  // ids[begin, end) -> last row's logits

  const HybridModel& draft_;
  int32_t max_model_len_, prefill_chunk_;
  HybridCache cache_;
  Workspace ws_;
  SeqCache seq_, spare_;      // the sequence and the slot that holds its snapshot
  std::vector<int32_t> snap_;  // the tokens whose state is in the snapshot (and in seq_ before drafting)
};

// A draft model for the serving engine: drafts for many sequences in batched forward steps of the draft model
// (one catch-up step over every sequence's tokens the draft has not seen, then k - 1 steps of one token each).
// Each sequence has its own cache and a snapshot slot here, holding the state after the tokens it had when it
// last drafted; a sequence whose tokens extend them continues from the snapshot, any other starts over.
// A sequence that finds no room in the draft's cache gets no draft that step.
class BatchModelDrafter : public Drafter {
 public:
  // Error if the draft's vocab_size differs from target_vocab. max_seqs sequences of up to max_model_len tokens;
  // max_batched_tokens per draft step (catch-ups are chunked to it).
  BatchModelDrafter(const HybridModel& draft, int64_t target_vocab, int32_t max_seqs, int32_t max_model_len,
                    int32_t max_batched_tokens);
  ~BatchModelDrafter() override;
  std::vector<int32_t> propose(std::span<const int32_t> ids, int32_t k) override;
  void propose_batch(std::span<DraftRequest> reqs) override;
  void forget(int64_t seq) override;
  std::string name() const override { return "draft model"; }

 private:
  struct Seq {
    SeqCache cache, snap;        // the sequence, and the slot of its snapshot
    std::vector<int32_t> fed;    // the tokens whose state the snapshot holds
  };
  const HybridModel& draft_;
  int32_t max_seqs_, max_model_len_, max_batched_;
  HybridCache cache_;
  Workspace ws_;
  std::unordered_map<int64_t, Seq> seqs_;
};

}  // namespace bamba
