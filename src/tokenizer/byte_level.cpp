#include "tokenizer/byte_level.h"

#include <array>

namespace bamba::byte_level {
namespace {

constexpr bool stands_for_itself(int b) { return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE; }

// byte -> code point of the character that spells it.
constexpr std::array<char32_t, 256> kByteToChar = [] {
  std::array<char32_t, 256> map{};
  char32_t next = 0x100;
  for (int b = 0; b < 256; ++b) map[b] = stands_for_itself(b) ? char32_t(b) : next++;
  return map;
}();

// code point -> byte, for the code points the map uses (all below U+0144); -1 elsewhere.
constexpr int kMaxChar = 0x144;
constexpr std::array<int16_t, kMaxChar> kCharToByte = [] {
  std::array<int16_t, kMaxChar> inv{};
  for (auto& v : inv) v = -1;
  for (int b = 0; b < 256; ++b) inv[kByteToChar[b]] = int16_t(b);
  return inv;
}();

}  // namespace

void append_token_text(std::string_view bytes, std::string& out) {
  for (unsigned char b : bytes) {
    char32_t c = kByteToChar[b];
    if (c < 0x80) {
      out.push_back(char(c));
    } else {  // all map characters are below U+0800: two UTF-8 bytes
      out.push_back(char(0xC0 | (c >> 6)));
      out.push_back(char(0x80 | (c & 0x3F)));
    }
  }
}

std::optional<std::string> token_text_to_bytes(std::string_view text) {
  std::string bytes;
  bytes.reserve(text.size());
  for (size_t i = 0; i < text.size();) {
    auto b0 = static_cast<unsigned char>(text[i]);
    char32_t c;
    if (b0 < 0x80) {
      c = b0, i += 1;
    } else if ((b0 & 0xE0) == 0xC0 && i + 1 < text.size() && (text[i + 1] & 0xC0) == 0x80) {
      c = char32_t(b0 & 0x1F) << 6 | (static_cast<unsigned char>(text[i + 1]) & 0x3F), i += 2;
      if (c < 0x80) return std::nullopt;  // overlong
    } else {
      return std::nullopt;  // three bytes or more (beyond the map), or not UTF-8
    }
    if (c >= kMaxChar || kCharToByte[c] < 0) return std::nullopt;
    bytes.push_back(char(kCharToByte[c]));
  }
  return bytes;
}

}  // namespace bamba::byte_level
