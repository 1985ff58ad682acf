#include "eval/py_str.h"

#include <locale.h>
#include <wctype.h>

#include "core/error.h"
#include "eval/py_re.h"

namespace bamba::eval::py {

char32_t next_code_point(std::string_view s, size_t& i) {
  auto b = [&](size_t k) { return char32_t(static_cast<unsigned char>(s[k])); };
  char32_t c = b(i);
  if (c < 0x80) return ++i, c;
  if (c < 0xE0) return i += 2, ((c & 0x1F) << 6) | (b(i - 1) & 0x3F);
  if (c < 0xF0) return i += 3, ((c & 0x0F) << 12) | ((b(i - 2) & 0x3F) << 6) | (b(i - 1) & 0x3F);
  i += 4;
  return ((c & 0x07) << 18) | ((b(i - 3) & 0x3F) << 12) | ((b(i - 2) & 0x3F) << 6) | (b(i - 1) & 0x3F);
}

void append_utf8(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out.push_back(char(cp));
  } else if (cp < 0x800) {
    out.push_back(char(0xC0 | (cp >> 6)));
    out.push_back(char(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(char(0xE0 | (cp >> 12)));
    out.push_back(char(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(char(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(char(0xF0 | (cp >> 18)));
    out.push_back(char(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(char(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(char(0x80 | (cp & 0x3F)));
  }
}

size_t code_point_count(std::string_view s) {
  size_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

// CPython's Py_UNICODE_ISSPACE: bidirectional class WS, B or S, or category Zs. The set is small and has not
// changed since Unicode 6.3 moved U+180E out of it.
bool is_space(char32_t c) {
  if (c < 0x80) return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20);
  return c == 0x85 || c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 ||
         c == 0x202F || c == 0x205F || c == 0x3000;
}

std::string_view lstrip(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    size_t j = i;
    if (!is_space(next_code_point(s, j))) break;
    i = j;
  }
  return s.substr(i);
}

std::string_view rstrip(std::string_view s) {
  size_t end = s.size();
  while (end > 0) {
    size_t start = end - 1;
    while (start > 0 && (static_cast<unsigned char>(s[start]) & 0xC0) == 0x80) --start;
    size_t j = start;
    if (!is_space(next_code_point(s, j))) break;
    end = start;
  }
  return s.substr(0, end);
}

std::string_view strip(std::string_view s) { return rstrip(lstrip(s)); }

std::string_view lstrip_chars(std::string_view s, std::string_view chars) {
  size_t i = s.find_first_not_of(chars);
  return i == std::string_view::npos ? std::string_view() : s.substr(i);
}

std::string_view rstrip_chars(std::string_view s, std::string_view chars) {
  size_t i = s.find_last_not_of(chars);
  return i == std::string_view::npos ? std::string_view() : s.substr(0, i + 1);
}

std::string_view strip_chars(std::string_view s, std::string_view chars) {
  return rstrip_chars(lstrip_chars(s, chars), chars);
}

std::vector<std::string_view> split_whitespace(std::string_view s) {
  std::vector<std::string_view> out;
  size_t i = 0, word = std::string_view::npos;
  while (i < s.size()) {
    size_t start = i;
    bool space = is_space(next_code_point(s, i));
    if (space && word != std::string_view::npos) {
      out.push_back(s.substr(word, start - word));
      word = std::string_view::npos;
    } else if (!space && word == std::string_view::npos) {
      word = start;
    }
  }
  if (word != std::string_view::npos) out.push_back(s.substr(word));
  return out;
}

std::vector<std::string_view> split(std::string_view s, std::string_view sep) {
  std::vector<std::string_view> out;
  size_t from = 0;
  for (size_t at; (at = s.find(sep, from)) != std::string_view::npos; from = at + sep.size())
    out.push_back(s.substr(from, at - from));
  out.push_back(s.substr(from));
  return out;
}

std::string replace_all(std::string_view s, std::string_view from, std::string_view to) {
  std::string out;
  size_t done = 0;
  for (size_t at; (at = s.find(from, done)) != std::string_view::npos; done = at + from.size()) {
    out.append(s.substr(done, at - done));
    out.append(to);
  }
  out.append(s.substr(done));
  return out;
}

namespace {

locale_t utf8_ctype() {
  static locale_t loc = newlocale(LC_CTYPE_MASK, "C.UTF-8", locale_t(0));
  if (!loc) fail("the C.UTF-8 locale is missing: it is needed for Unicode lowercasing (Python's str.lower)");
  return loc;
}

}  // namespace

std::string lower(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    unsigned char b = static_cast<unsigned char>(s[i]);
    if (b < 0x80) {
      out.push_back(b >= 'A' && b <= 'Z' ? char(b + 32) : char(b));
      ++i;
      continue;
    }
    char32_t c = next_code_point(s, i);
    if (c == 0x130) {  // full mapping (SpecialCasing.txt): i + COMBINING DOT ABOVE
      out += "i\u0307";
      continue;
    }
    append_utf8(out, char32_t(towlower_l(wint_t(c), utf8_ctype())));
  }
  return out;
}

bool is_upper(std::string_view s) {
  static const PyRegex not_upper("[\\p{Lowercase}\\p{Lt}]", PyRegex::kNone, "str.isupper");
  static const PyRegex cased("\\p{Uppercase}", PyRegex::kNone, "str.isupper");
  return !not_upper.search(s) && cased.search(s);
}

bool is_lower(std::string_view s) {
  static const PyRegex not_lower("[\\p{Uppercase}\\p{Lt}]", PyRegex::kNone, "str.islower");
  static const PyRegex cased("\\p{Lowercase}", PyRegex::kNone, "str.islower");
  return !not_lower.search(s) && cased.search(s);
}

bool is_digit(std::string_view s) {
  // Python's isdigit is Numeric_Type Digit or Decimal: Nd plus the superscript and circled digits; the
  // superscripts are the ones that occur in maths answers.
  static const PyRegex digits("\\A[\\p{Nd}\\x{B2}\\x{B3}\\x{B9}\\x{2070}\\x{2074}-\\x{2079}\\x{2080}-\\x{2089}]+\\z",
                              PyRegex::kNone, "str.isdigit");
  return digits.search(s);
}

}  // namespace bamba::eval::py
