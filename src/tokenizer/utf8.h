// UTF-8 checks for the tokenizer: encode() refuses ill-formed input text, and decode() turns the bytes of byte-level
// tokens back into text, which may be ill-formed (a token can hold half a character), the way Hugging Face does it:
// Rust's String::from_utf8_lossy, i.e. each maximal ill-formed subpart becomes one U+FFFD (Unicode §3.9, "U+FFFD
// substitution of maximal subparts").
#pragma once
#include <cstddef>
#include <string>
#include <string_view>

namespace bamba::utf8 {

// Throws Error "<what> is not valid UTF-8: ... at byte offset N" on the first ill-formed byte of `text`.
void check_valid(std::string_view text, std::string_view what);

// Appends `bytes` to `out` with each maximal ill-formed subpart replaced by U+FFFD and returns how many bytes were
// consumed. With final == false an incomplete but so far well-formed character at the very end is left unconsumed,
// so a streaming caller can retry once more bytes arrive; with final == true everything is consumed.
size_t append_lossy(std::string_view bytes, bool final, std::string& out);

// Bytes in the UTF-8 character whose lead byte is `lead` (1 for a byte that cannot lead one). For stepping through
// text already known to be valid.
inline size_t char_length(unsigned char lead) { return lead < 0xC0 ? 1 : lead < 0xE0 ? 2 : lead < 0xF0 ? 3 : 4; }

}  // namespace bamba::utf8
