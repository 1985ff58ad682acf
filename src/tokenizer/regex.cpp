#define PCRE2_CODE_UNIT_WIDTH 8
#include "tokenizer/regex.h"

#include <pcre2.h>

#include <utility>

#include "core/error.h"
#include "tokenizer/pcre2_util.h"
#include "tokenizer/utf8.h"

namespace bamba {
namespace {

using MatchData = Pcre2MatchData;

// Runs one search from `from`; returns the match in [start, end) or false. Errors (a JIT stack or match limit hit
// on pathological input) become an Error naming the pattern rather than a silent "no match".
bool search(const pcre2_code* code, MatchData& m, std::string_view text, size_t from, uint32_t options,
            const std::string& where, size_t& start, size_t& end) {
  int rc = pcre2_match(code, reinterpret_cast<PCRE2_SPTR>(text.data()), text.size(), from, options | PCRE2_NO_UTF_CHECK,
                       m.md, nullptr);
  if (rc == PCRE2_ERROR_NOMATCH) return false;
  if (rc < 0)
    fail(where, ": matching failed at byte offset ", from, " of a ", text.size(), "-byte text: ", pcre2_message(rc));
  const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(m.md);
  start = ov[0], end = ov[1];
  return true;
}

}  // namespace

Regex::Regex(std::string_view pattern, const std::string& where, bool literal) : where_(where) {
  int err = 0;
  PCRE2_SIZE err_offset = 0;
  uint32_t options = literal ? PCRE2_UTF | PCRE2_LITERAL : PCRE2_UTF | PCRE2_UCP;  // LITERAL refuses UCP
  code_ =
      pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(), options, &err, &err_offset, nullptr);
  if (!code_) fail(where, ": invalid regex at pattern offset ", err_offset, ": ", pcre2_message(err));
  // JIT is several times faster than the interpreter; where it is unavailable pcre2_match falls back by itself.
  pcre2_jit_compile(code_, PCRE2_JIT_COMPLETE);
}

Regex::~Regex() { pcre2_code_free(code_); }

Regex::Regex(Regex&& o) noexcept : code_(std::exchange(o.code_, nullptr)), where_(std::move(o.where_)) {}

Regex& Regex::operator=(Regex&& o) noexcept {
  std::swap(code_, o.code_);
  std::swap(where_, o.where_);
  return *this;
}

void Regex::split_isolated(std::string_view text, const std::function<void(std::string_view)>& emit) const {
  MatchData m(code_);
  size_t done = 0;  // end of the last piece emitted
  size_t from = 0;
  size_t start, end;
  while (from <= text.size() && search(code_, m, text, from, 0, where_, start, end)) {
    if (start > done) emit(text.substr(done, start - done));
    if (end > start) {
      emit(text.substr(start, end - start));
      done = from = end;
    } else {
      // An empty match only marks a split point. Like Oniguruma's iterator (HF's), resume one character later
      // rather than retrying a non-empty match at the same place.
      done = start;
      if (start == text.size()) break;
      from = start + utf8::char_length(static_cast<unsigned char>(text[start]));
    }
  }
  if (done < text.size()) emit(text.substr(done));
}

bool Regex::matches_at(std::string_view text, size_t offset) const {
  MatchData m(code_);
  size_t start, end;
  return search(code_, m, text, offset, PCRE2_ANCHORED, where_, start, end);
}

}  // namespace bamba
