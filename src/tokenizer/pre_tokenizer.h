// PreTokenizer: cuts text into the words that BPE then encodes one by one (merges never cross a word boundary).
// The shape supported is what byte-level tokenizer.json files use: zero or more Split steps (a regex, behavior
// "Isolated"), then ByteLevel, which may add a leading space to each piece and may split it once more with the
// GPT-2 regex (use_regex). The byte -> character spelling of ByteLevel is left to the model (bpe.h), which keys
// its vocabulary lookups on raw bytes.
#pragma once
#include <functional>
#include <optional>
#include <string_view>
#include <vector>

#include "tokenizer/regex.h"

namespace bamba {

class PreTokenizer {
 public:
  PreTokenizer(std::vector<Regex> splits, bool add_prefix_space, bool use_regex);

  // Calls emit() on each non-empty pre-token of `text` (valid UTF-8), in order.
  void pre_tokenize(std::string_view text, const std::function<void(std::string_view)>& emit) const;

 private:
  void run(size_t step, std::string_view piece, const std::function<void(std::string_view)>& emit) const;

  std::vector<Regex> splits_;
  bool add_prefix_space_;
  std::optional<Regex> byte_level_regex_;  // set when use_regex
};

}  // namespace bamba
