// BpeTrainer: learns a byte-level BPE vocabulary from text with the semantics of Hugging Face tokenizers'
// BpeTrainer (tokenizers/src/models/bpe/trainer.rs), so that the same corpus and settings give the same vocabulary
// and the same merges in the same order:
//   - ids 0..k-1 are the special tokens in the order given, then the 256 byte characters sorted by code point of
//     their byte-level spelling ('!' first, 'Ā' = byte 0x00 after 'ÿ'), then one token per merge;
//   - a word is one pre-token (the split regex, then ByteLevel, no prefix space), counted over the corpus;
//   - each step merges the pair with the highest count over all words, the smaller (left id, right id) on ties,
//     until the vocabulary has vocab_size tokens, no pair is left, or the best count is below min_frequency.
// Counting is incremental as in HF: a merge only revisits the words that held the pair, and a max-heap with lazily
// refreshed stale entries finds the next pair. Written by hand: Debian packages no BPE trainer.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace bamba {

class PreTokenizer;

// Named split regexes for the pre-tokenizer.
inline constexpr std::string_view kGpt2SplitPattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
inline constexpr std::string_view kLlama3SplitPattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
// "gpt2" and "llama3" name the patterns above; anything else is taken as a regex.
std::string split_pattern_for(std::string_view name_or_regex);

struct BpeTrainerOptions {
  int64_t vocab_size = 30000;  // specials + 256 bytes + merges (fewer if the corpus runs out of pairs)
  int64_t min_frequency = 0;   // stop at the first best pair seen fewer times
  std::vector<std::string> special_tokens;
  std::string split_pattern = std::string(kGpt2SplitPattern);
  int threads = 0;  // for counting words; 0: all cores
  bool progress = true;
};

struct TrainedBpe {
  std::vector<std::string> vocab;                           // id -> byte-level spelling (specials as written)
  std::vector<std::pair<std::string, std::string>> merges;  // spellings, in rank order
  size_t n_special = 0;
  size_t n_words = 0;  // distinct pre-tokens in the corpus
};

class BpeTrainer {
 public:
  explicit BpeTrainer(BpeTrainerOptions options);  // Error on a bad regex, vocab size or special token
  ~BpeTrainer();

  // Counts the pre-tokens of each sequence (HF: one line of a text file, with its "\n"; one JSONL record). The
  // sequences are split over the threads. Each must be valid UTF-8 (not checked again).
  void feed(const std::vector<std::string_view>& sequences);
  void add_word(std::string_view word, uint64_t count);  // a pre-token, counted directly

  TrainedBpe train() const;

  size_t distinct_words() const { return words_.size(); }

 private:
  BpeTrainerOptions options_;
  std::unique_ptr<PreTokenizer> pre_;  // Split(regex, Isolated), then ByteLevel: what the written file says
  std::unordered_map<std::string, uint64_t> words_;  // pre-token (raw bytes) -> occurrences
};

// tokenizer.json text for a trained model: model BPE (merges as [left, right] pairs), pre_tokenizer
// Sequence[Split(pattern, Isolated), ByteLevel(no prefix space, no regex)], decoder ByteLevel, the specials as
// added_tokens, and a TemplateProcessing post-processor prepending `bos` when it is not empty (it must be one of
// the special tokens).
std::string bpe_tokenizer_json(const TrainedBpe& model, const std::string& split_pattern, const std::string& bos);

}  // namespace bamba
