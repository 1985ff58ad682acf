// A regular expression (Python `re` syntax, the subset below) compiled into a ByteNfa piece that matches the
// whole output (vLLM's guided_regex: the output must match from start to end).
//
// Supported: literals (UTF-8), `.` (any character but \n), classes `[...]` / `[^...]` with ranges and escapes,
// \d \w \s \D \W \S (ASCII meanings: \w = [A-Za-z0-9_]), \n \t \r \f \v \0 \xHH \uHHHH \UHHHHHHHH and escaped
// punctuation, groups `(...)`, `(?:...)`, `(?P<name>...)`, `(?<name>...)`, alternation `|`, quantifiers
// `* + ? {m} {m,} {,n} {m,n}` (a lazy `?` suffix changes nothing here), `^` at the start and `$` at the end.
// Anything else (backreferences, lookaround, \b, inline flags, possessive quantifiers, ...) is an Error naming
// the construct and its offset.
#pragma once
#include <string_view>

#include "structured/byte_nfa.h"

namespace bamba {

ByteNfa::Frag compile_regex(ByteNfa& nfa, std::string_view pattern);

}  // namespace bamba
