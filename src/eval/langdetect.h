// LangDetector: a C++ port of the Python `langdetect` package (1.0.9, itself a port of Nakatani Shuyo's Java
// language-detection), which IFEval's language:response_language and change_case:english_* checkers call.
// Character 1-3-gram naive Bayes over 55 language profiles: the text is cleaned (URLs and e-mail addresses
// blanked, Vietnamese tone marks composed, space runs collapsed, at most 10000 characters, Latin letters dropped
// from mostly non-Latin text), each character normalized (punctuation to space, kana/hangul/bopomofo to one
// representative, Kanji to its class representative), then 7 trials each draw random n-grams and update the
// language probabilities until one exceeds 0.99999 (checked every 5 draws, at most 1000), with a smoothing alpha of
// 0.5 + N(0,1)·0.05 per trial. The answer is the language with the highest mean probability above 0.1.
//
// The profiles and the normalization tables are read at run time from Debian's python3-langdetect
// (/usr/lib/python3/dist-packages/langdetect: profiles/<lang> JSON and utils/messages.properties), or from the
// folder given to the constructor or in $BAMBA_LANGDETECT_DIR.
//
// Randomness: langdetect draws its trials from Python's Mersenne Twister seeded with DetectorFactory.seed, which
// lm-eval leaves unset, so lm-eval's answers are random near ties. Here the generator is a bit-exact port of
// CPython's random.Random (seed, random, gauss, choice) and the seed is fixed (0 by default), so the result equals
// Python langdetect with DetectorFactory.seed = 0 (docs/evaluation.md records the measured agreement).
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace bamba::eval {

class LangDetector {
 public:
  // `dir` holds profiles/ and utils/messages.properties; empty means $BAMBA_LANGDETECT_DIR or Debian's path.
  explicit LangDetector(std::string dir = "");

  // langdetect.detect(): the language code ("en", "zh-cn", ...), "unknown" when no language passes 0.1, or nullopt
  // where Python raises LangDetectException (the text has no usable n-gram). `text` must be valid UTF-8.
  std::optional<std::string> detect(std::string_view text, uint64_t seed = 0) const;
  // langdetect.detect_langs(): the languages above 0.1 with their probabilities, highest first (empty: nullopt
  // above).
  std::optional<std::vector<std::pair<std::string, double>>> probabilities(std::string_view text,
                                                                           uint64_t seed = 0) const;

  const std::vector<std::string>& languages() const { return langs_; }
  const std::string& dir() const { return dir_; }

 private:
  std::u32string clean(std::string_view text) const;
  std::vector<uint32_t> ngrams(const std::u32string& text) const;  // indices into probs_
  char32_t normalize(char32_t c) const;

  std::string dir_;
  std::vector<std::string> langs_;
  std::unordered_map<uint64_t, uint32_t> gram_index_;  // packed 1-3-gram -> row of probs_
  std::vector<double> probs_;                          // [n_grams, n_langs]: P(gram | language)
  std::unordered_map<char32_t, char32_t> cjk_map_;
  std::u32string latin1_excluded_;
  std::u32string vi_letters_, vi_marks_;
  std::vector<std::u32string> vi_composed_;  // [mark][letter]
};

// One detector for the process, loaded on first use from the default location (thread-safe).
const LangDetector& default_lang_detector();

}  // namespace bamba::eval
