// Drafter: proposes the next tokens of a sequence for speculative decoding (engine/generator.cpp verifies them
// with one forward step of the target model and keeps the longest prefix the target agrees with).
// Drafts are deterministic (a function of the tokens so far), so verification can accept a draft exactly when
// the target's own draw at that position equals it: the output is the target's, token for token.
#pragma once
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "model/hybrid.h"
#include "model/hybrid_cache.h"

namespace bamba {

class Drafter {
 public:
  virtual ~Drafter() = default;
  // Up to k tokens that may follow ids (fewer or none when there is no good guess).
  virtual std::vector<int32_t> propose(std::span<const int32_t> ids, int32_t k) = 0;
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

}  // namespace bamba
