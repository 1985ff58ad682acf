// Bpe: the byte-level BPE model. A word (one pre-token, raw bytes) starts as one token per byte; then the adjacent
// pair with the best (lowest) merge rank is merged, leftmost first on ties, until no adjacent pair has a merge.
// With ignore_merges (Llama-3) a word that is itself in the vocabulary is emitted whole without merging.
// Written by hand: Debian packages no BPE tokenizer library (PCRE2 and nlohmann-json are all we use).
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace bamba {

class Bpe {
 public:
  // vocab: (byte-level spelling, id) pairs with unique ids. merges: (left, right) spellings in rank order. `where`
  // prefixes errors ("tokenizer.json: model"). Throws Error if a spelling appears twice, if a merge names a token
  // missing from the vocabulary or if a byte has no token (byte-level BPE needs all 256: with them no input can be
  // unknown, so unk_token is never used).
  Bpe(std::vector<std::pair<std::string, int32_t>> vocab,
      const std::vector<std::pair<std::string, std::string>>& merges, bool ignore_merges, const std::string& where);
  ~Bpe();
  Bpe(Bpe&&) noexcept;
  Bpe& operator=(Bpe&&) noexcept;

  // Appends the ids of one word (raw bytes, not the byte-level spelling) to `out`. Thread-safe.
  void encode_word(std::string_view word, std::vector<int32_t>& out) const;

  std::optional<int32_t> token_to_id(std::string_view spelling) const;

 private:
  // Both tables are open-addressing hash tables (linear probing, at most half full). Looking up 3 tokens for each
  // of Llama-3's 280k merges is most of the load time, and std::unordered_map, with a heap node per entry, took
  // twice as long.
  struct VocabSlot {
    uint32_t tag;  // high bits of the spelling's hash: most mismatches never touch the string
    int32_t id;    // -1: empty; the spelling is spellings_[id]
  };
  struct MergeSlot {
    uint64_t pair;  // left id << 32 | right id; kNoPair: empty
    int32_t rank;
    int32_t id;  // the merged token
  };
  static constexpr uint64_t kNoPair = ~uint64_t(0);

  // The index of the slot holding the key, or of the empty slot where it would go.
  size_t vocab_slot(std::string_view spelling) const;
  size_t merge_slot(int32_t left, int32_t right) const;
  void merge_word(std::string_view word, std::vector<int32_t>& out) const;

  std::vector<std::string> spellings_;  // by id
  std::vector<VocabSlot> vocab_index_;
  std::vector<MergeSlot> merges_;
  int32_t byte_ids_[256];
  bool ignore_merges_;
  // Words repeat a lot in text: remember each short word's ids (HF does the same).
  struct WordCache;
  std::unique_ptr<WordCache> cache_;
};

}  // namespace bamba
