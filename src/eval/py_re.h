// PyRegex: the few operations of Python's `re` module that lm-eval's scorers use (search, finditer, split, sub),
// over PCRE2 in UTF + UCP mode so that \w, \s, \d, \b and IGNORECASE are Unicode-aware as they are for Python str
// patterns. Iteration follows Python 3.7+: an empty match is allowed right after a non-empty one, but never twice
// at the same place (PCRE2_NOTEMPTY_ATSTART), so findall/split/sub give Python's pieces for patterns that can match
// empty. Known differences from Python: PCRE2's \s does not match U+001C..U+001F and does match U+180E; caseless
// matching uses Unicode case folding rather than Python's lower()-based comparison (they differ only for a few
// characters such as U+0130).
#pragma once
#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

struct pcre2_real_code_8;

namespace bamba::eval {

class PyRegex {
 public:
  enum Flags { kNone = 0, kIgnoreCase = 1, kMultiline = 2 };

  struct Match {
    size_t start = 0, end = 0;
    std::vector<std::string_view> groups;  // group 0 = the whole match; an unset group is empty
  };

  // `where` names the pattern in errors ("IFEval row 1001: keywords:existence keyword").
  PyRegex(std::string_view pattern, int flags, std::string where);
  ~PyRegex();
  PyRegex(PyRegex&& o) noexcept;
  PyRegex& operator=(PyRegex&& o) noexcept;
  PyRegex(const PyRegex&) = delete;
  PyRegex& operator=(const PyRegex&) = delete;

  bool search(std::string_view text) const;
  // re.finditer: every match, in order (group 0 spans and groups).
  std::vector<Match> finditer(std::string_view text) const;
  // re.split: the pieces between matches, with the pattern's groups inserted after each split point.
  std::vector<std::string> split(std::string_view text) const;
  // re.sub with a template: \1..\9 and \g<N> insert groups, \\ a backslash, \n a newline.
  std::string sub(std::string_view text, std::string_view repl) const;

 private:
  pcre2_real_code_8* code_ = nullptr;
  std::string where_;
};

}  // namespace bamba::eval
