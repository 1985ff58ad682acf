// What every PCRE2 user here shares (the tokenizer's split regexes, eval's Python `re` stand-in): the error text
// of a code and match data sized for a pattern. Include after defining PCRE2_CODE_UNIT_WIDTH 8.
#pragma once
#include <pcre2.h>

#include <new>
#include <string>

#include "core/error.h"

namespace bamba {

inline std::string pcre2_message(int code) {
  PCRE2_UCHAR buf[256];
  int n = pcre2_get_error_message(code, buf, sizeof buf);
  return n < 0 ? cat("PCRE2 error ", code) : std::string(reinterpret_cast<const char*>(buf), size_t(n));
}

// Match data sized for the pattern; one per search loop, so a shared compiled pattern is safe across threads.
struct Pcre2MatchData {
  explicit Pcre2MatchData(const pcre2_code* code) : md(pcre2_match_data_create_from_pattern(code, nullptr)) {
    if (!md) throw std::bad_alloc();
  }
  ~Pcre2MatchData() { pcre2_match_data_free(md); }
  Pcre2MatchData(const Pcre2MatchData&) = delete;
  Pcre2MatchData& operator=(const Pcre2MatchData&) = delete;
  pcre2_match_data* md;
};

}  // namespace bamba
