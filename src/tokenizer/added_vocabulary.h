// AddedVocabulary: the tokens of tokenizer.json's "added_tokens" (special ones like <|begin_of_text|> and plain
// ones). They are found in the input text before pre-tokenization and become their id directly; only the text
// between them goes through the pre-tokenizer and BPE. Matching follows HF: leftmost-longest, non-overlapping, first
// over the tokens with normalized == false, then over the others in the remaining text (the two passes only differ
// in order because we support no normalizer), with the single_word, lstrip and rstrip options.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "tokenizer/regex.h"

namespace bamba {

struct AddedToken {
  int32_t id = 0;
  std::string content;
  bool single_word = false;  // only match where the token is not glued to word characters on either side
  bool lstrip = false;       // the match swallows the whitespace before it
  bool rstrip = false;       // ... and after it
  bool normalized = true;
  bool special = false;
};

class AddedVocabulary {
 public:
  explicit AddedVocabulary(const std::vector<AddedToken>& tokens);

  // A run of the input: plain text for the pre-tokenizer (id < 0) or one added token.
  struct Piece {
    std::string_view text;
    int32_t id;
  };
  // Splits `text` (valid UTF-8) into pieces that cover it in order. Empty text pieces are dropped.
  std::vector<Piece> split(std::string_view text) const;

 private:
  // A byte trie over token contents, for leftmost-longest matching.
  struct Trie {
    struct Node {
      std::map<unsigned char, int32_t> next;
      int32_t token = -1;  // index into tokens_ of the token that ends here
    };
    std::vector<Node> nodes{Node{}};
    bool first_byte[256] = {};  // cheap rejection of the (many) positions where no token starts
    void insert(std::string_view content, int32_t token);
    // Length of the longest token starting at text[at] (0 if none) and its index.
    size_t longest_at(std::string_view text, size_t at, int32_t& token) const;
  };

  void split_with(const Trie& trie, std::string_view text, std::vector<Piece>& out) const;
  bool word_char_before(std::string_view text, size_t at) const;
  bool word_char_at(std::string_view text, size_t at) const;
  size_t whitespace_start_before(std::string_view text, size_t at) const;
  size_t whitespace_end_after(std::string_view text, size_t at) const;

  std::vector<AddedToken> tokens_;
  Trie raw_, normalized_;
  // Character classes of the Rust regex crate that HF uses for these options: \w and \s (Unicode).
  Regex word_, space_;
};

}  // namespace bamba
