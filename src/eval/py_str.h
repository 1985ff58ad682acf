// Python's str methods on UTF-8 text, as lm-eval's scorers call them on Unicode strings (not bytes): whitespace is
// str.isspace()'s set, isupper/islower use the Unicode Uppercase/Lowercase/Lt properties (through PCRE2's tables),
// lower() the Unicode simple lowercase mapping (glibc's C.UTF-8 tables) plus U+0130's full mapping.
// Text must be valid UTF-8 (callers check it once at the entry point).
#pragma once
#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

namespace bamba::eval::py {

// Decodes the code point starting at byte i of valid UTF-8 and advances i past it.
char32_t next_code_point(std::string_view s, size_t& i);
void append_utf8(std::string& out, char32_t cp);
size_t code_point_count(std::string_view s);

bool is_space(char32_t cp);  // str.isspace() of one character
std::string_view strip(std::string_view s);
std::string_view lstrip(std::string_view s);
std::string_view rstrip(std::string_view s);
// str.strip(chars) / lstrip(chars) / rstrip(chars) with ASCII `chars`.
std::string_view strip_chars(std::string_view s, std::string_view chars);
std::string_view lstrip_chars(std::string_view s, std::string_view chars);
std::string_view rstrip_chars(std::string_view s, std::string_view chars);
// str.split(): runs of whitespace separate, no empty pieces.
std::vector<std::string_view> split_whitespace(std::string_view s);
// str.split(sep) with a non-empty literal separator: empty pieces kept.
std::vector<std::string_view> split(std::string_view s, std::string_view sep);
std::string replace_all(std::string_view s, std::string_view from, std::string_view to);

std::string lower(std::string_view s);
bool is_upper(std::string_view s);  // no lowercase or titlecase character, at least one uppercase one
bool is_lower(std::string_view s);  // no uppercase or titlecase character, at least one lowercase one
bool is_digit(std::string_view s);  // non-empty and every character a digit (Nd, or a superscript digit)

}  // namespace bamba::eval::py
