// Regex: a PCRE2 pattern for the pre-tokenizer. Hugging Face compiles these patterns with Oniguruma; PCRE2 speaks
// the same dialect for what tokenizer.json files use (\p{L}, \p{N}, (?i:...), (?!\S), {1,3}), and in UTF + UCP
// mode \s, \w, \d and caseless matching are Unicode-aware as they are in Oniguruma. One known difference: PCRE2's
// \s also matches U+180E (MONGOLIAN VOWEL SEPARATOR), Oniguruma's does not.
#pragma once
#include <cstddef>
#include <functional>
#include <string>
#include <string_view>

struct pcre2_real_code_8;

namespace bamba {

class Regex {
 public:
  // `where` names the pattern in errors ("tokenizer.json: pre_tokenizer.pretokenizers[0].pattern.Regex").
  // literal: match `pattern` as plain text (HF's {"String": ...} patterns).
  Regex(std::string_view pattern, const std::string& where, bool literal = false);
  ~Regex();
  Regex(Regex&& o) noexcept;
  Regex& operator=(Regex&& o) noexcept;
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // HF's Split with behavior "Isolated": calls emit() on each match and on each gap between matches, in order,
  // skipping empty pieces. `text` must be valid UTF-8 (it is not checked again here).
  void split_isolated(std::string_view text, const std::function<void(std::string_view)>& emit) const;

  // Whether the pattern matches `text` starting exactly at byte `offset` (lookbehind sees the text before it).
  bool matches_at(std::string_view text, size_t offset) const;

 private:
  // Start and end of the first match at or after `from`; false when there is none.
  bool find(std::string_view text, size_t from, size_t& start, size_t& end, bool anchored) const;

  pcre2_real_code_8* code_ = nullptr;
  std::string where_;
};

}  // namespace bamba
