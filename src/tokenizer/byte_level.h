// The GPT-2 byte <-> character map behind byte-level BPE. Vocabulary strings are not raw bytes: each byte is
// written as one printable Unicode character, so that the JSON file never holds control characters or bare spaces
// (' ' -> 'Ġ' U+0120, '\n' -> 'Ċ' U+010A). Bytes that are printable Latin-1 already (! .. ~, ¡ .. ¬, ® .. ÿ) stand
// for themselves; the other 68 bytes get U+0100, U+0101, ... in byte order.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace bamba::byte_level {

// Appends the vocabulary spelling of raw `bytes` to `out` (2 UTF-8 bytes per byte at most).
void append_token_text(std::string_view bytes, std::string& out);

// The raw bytes a vocabulary string stands for, or nullopt when some character of it is not in the map (a token
// that was added by hand, e.g. "<|begin_of_text|>" is in the map, "hello world" is not: ' ' is not).
std::optional<std::string> token_text_to_bytes(std::string_view text);

}  // namespace bamba::byte_level
