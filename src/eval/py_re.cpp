#define PCRE2_CODE_UNIT_WIDTH 8
#include "eval/py_re.h"

#include <pcre2.h>

#include <new>
#include <utility>

#include "core/error.h"
#include "tokenizer/pcre2_util.h"

namespace bamba::eval {
namespace {

using MatchData = Pcre2MatchData;

// Calls on_match(Match) for each match in Python's order; see the header for the empty-match rule.
template <typename F>
void for_each_match(const pcre2_code* code, const std::string& where, std::string_view text, F&& on_match) {
  MatchData m(code);
  uint32_t n_groups = 0;
  pcre2_pattern_info(code, PCRE2_INFO_CAPTURECOUNT, &n_groups);
  size_t from = 0;
  uint32_t options = 0;
  while (from <= text.size()) {
    int rc = pcre2_match(code, reinterpret_cast<PCRE2_SPTR>(text.data()), text.size(), from,
                         options | PCRE2_NO_UTF_CHECK, m.md, nullptr);
    if (rc == PCRE2_ERROR_NOMATCH) return;
    if (rc < 0) fail(where, ": regex matching failed at byte ", from, ": ", pcre2_message(rc));
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(m.md);
    PyRegex::Match match;
    match.start = ov[0], match.end = ov[1];
    for (uint32_t g = 0; g <= n_groups; ++g) {
      if (int(g) < rc && ov[2 * g] != PCRE2_UNSET)
        match.groups.push_back(text.substr(ov[2 * g], ov[2 * g + 1] - ov[2 * g]));
      else
        match.groups.emplace_back();
    }
    on_match(match);
    options = match.end == match.start ? PCRE2_NOTEMPTY_ATSTART : 0;
    from = match.end;
  }
}

}  // namespace

PyRegex::PyRegex(std::string_view pattern, int flags, std::string where) : where_(std::move(where)) {
  // ALT_CIRCUMFLEX: Python's MULTILINE ^ also matches after a newline that ends the text.
  uint32_t options = PCRE2_UTF | PCRE2_UCP | PCRE2_ALT_CIRCUMFLEX;
  if (flags & kIgnoreCase) options |= PCRE2_CASELESS;
  if (flags & kMultiline) options |= PCRE2_MULTILINE;
  int err = 0;
  PCRE2_SIZE err_offset = 0;
  code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(), options, &err, &err_offset,
                        nullptr);
  if (!code_) fail(where_, ": invalid regex '", pattern, "' at offset ", err_offset, ": ", pcre2_message(err));
  pcre2_jit_compile(code_, PCRE2_JIT_COMPLETE);
}

PyRegex::~PyRegex() { pcre2_code_free(code_); }

PyRegex::PyRegex(PyRegex&& o) noexcept : code_(std::exchange(o.code_, nullptr)), where_(std::move(o.where_)) {}

PyRegex& PyRegex::operator=(PyRegex&& o) noexcept {
  std::swap(code_, o.code_);
  std::swap(where_, o.where_);
  return *this;
}

bool PyRegex::search(std::string_view text) const {
  MatchData m(code_);
  int rc = pcre2_match(code_, reinterpret_cast<PCRE2_SPTR>(text.data()), text.size(), 0, PCRE2_NO_UTF_CHECK, m.md,
                       nullptr);
  if (rc == PCRE2_ERROR_NOMATCH) return false;
  if (rc < 0) fail(where_, ": regex matching failed: ", pcre2_message(rc));
  return true;
}

std::vector<PyRegex::Match> PyRegex::finditer(std::string_view text) const {
  std::vector<Match> out;
  for_each_match(code_, where_, text, [&](const Match& m) { out.push_back(m); });
  return out;
}

std::vector<std::string> PyRegex::split(std::string_view text) const {
  std::vector<std::string> out;
  size_t done = 0;
  for_each_match(code_, where_, text, [&](const Match& m) {
    out.emplace_back(text.substr(done, m.start - done));
    for (size_t g = 1; g < m.groups.size(); ++g) out.emplace_back(m.groups[g]);
    done = m.end;
  });
  out.emplace_back(text.substr(done));
  return out;
}

std::string PyRegex::sub(std::string_view text, std::string_view repl) const {
  std::string out;
  size_t done = 0;
  for_each_match(code_, where_, text, [&](const Match& m) {
    out.append(text.substr(done, m.start - done));
    for (size_t i = 0; i < repl.size(); ++i) {
      char c = repl[i];
      if (c != '\\' || i + 1 == repl.size()) {
        out.push_back(c);
        continue;
      }
      char d = repl[++i];
      size_t g = size_t(-1);
      if (d >= '1' && d <= '9') {
        g = size_t(d - '0');
      } else if (d == 'g' && i + 1 < repl.size() && repl[i + 1] == '<') {
        size_t close = repl.find('>', i);
        if (close == std::string_view::npos) fail(where_, ": bad group reference in replacement '", repl, "'");
        g = std::stoul(std::string(repl.substr(i + 2, close - i - 2)));
        i = close;
      } else if (d == 'n') {
        out.push_back('\n');
      } else if (d == '\\') {
        out.push_back('\\');
      } else {
        out.push_back('\\');
        out.push_back(d);
      }
      if (g != size_t(-1)) {
        if (g >= m.groups.size()) fail(where_, ": replacement '", repl, "' names group ", g, " the pattern lacks");
        out.append(m.groups[g]);
      }
    }
    done = m.end;
  });
  out.append(text.substr(done));
  return out;
}

}  // namespace bamba::eval
