#include "tokenizer/utf8.h"

#include <cstdio>

#include "core/error.h"

namespace bamba::utf8 {
namespace {

enum class Status { ok, ill_formed, truncated };

struct Scan {
  Status status;
  size_t length;  // ok: the character; ill_formed: the maximal subpart (>= 1 byte); truncated: the rest of s
};

// Reads the character at s[i]. The ranges are Unicode's Table 3-7 (well-formed UTF-8 byte sequences): the second
// byte's range depends on the lead byte, which is what excludes overlongs, surrogates and code points > U+10FFFF.
Scan scan(std::string_view s, size_t i) {
  auto b = static_cast<unsigned char>(s[i]);
  if (b < 0x80) return {Status::ok, 1};
  size_t length;
  unsigned char lo = 0x80, hi = 0xBF;
  if (b >= 0xC2 && b <= 0xDF) {
    length = 2;
  } else if (b >= 0xE0 && b <= 0xEF) {
    length = 3;
    if (b == 0xE0) lo = 0xA0;
    if (b == 0xED) hi = 0x9F;
  } else if (b >= 0xF0 && b <= 0xF4) {
    length = 4;
    if (b == 0xF0) lo = 0x90;
    if (b == 0xF4) hi = 0x8F;
  } else {
    return {Status::ill_formed, 1};  // a continuation byte, C0/C1 or F5..FF cannot start a character
  }
  for (size_t k = 1; k < length; ++k) {
    if (i + k == s.size()) return {Status::truncated, k};
    auto c = static_cast<unsigned char>(s[i + k]);
    if (c < lo || c > hi) return {Status::ill_formed, k};
    lo = 0x80, hi = 0xBF;
  }
  return {Status::ok, length};
}

}  // namespace

void check_valid(std::string_view text, std::string_view what) {
  for (size_t i = 0; i < text.size();) {
    Scan c = scan(text, i);
    if (c.status == Status::ok) {
      i += c.length;
      continue;
    }
    char byte[8];
    std::snprintf(byte, sizeof byte, "0x%02X", static_cast<unsigned char>(text[i]));
    fail(what, " is not valid UTF-8: ", c.status == Status::truncated ? "truncated character" : "ill-formed sequence",
         " starting with byte ", byte, " at byte offset ", i, " (expected UTF-8 text)");
  }
}

size_t append_lossy(std::string_view bytes, bool final, std::string& out) {
  size_t i = 0;
  while (i < bytes.size()) {
    Scan c = scan(bytes, i);
    if (c.status == Status::ok) {
      out.append(bytes.substr(i, c.length));
    } else if (c.status == Status::truncated && !final) {
      return i;
    } else {
      out.append("\xEF\xBF\xBD");  // U+FFFD
    }
    i += c.length;
  }
  return i;
}

}  // namespace bamba::utf8
