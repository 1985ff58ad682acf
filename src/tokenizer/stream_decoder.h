// StreamDecoder: turns ids into text one at a time as a model generates them, for streaming output. A token may end
// in the middle of a UTF-8 character (byte-level BPE splits rare characters and emoji into several tokens), so the
// bytes of an unfinished character are held back until a later token completes it; what push() returns is always
// valid UTF-8, and the concatenation of all pieces equals Tokenizer::decode of all the ids.
#pragma once
#include <cstdint>
#include <string>

#include "tokenizer/tokenizer.h"

namespace bamba {

class StreamDecoder {
 public:
  // `tok` must outlive the decoder.
  explicit StreamDecoder(const Tokenizer& tok, bool skip_special = false);

  // The text completed by `id` (may be empty). Error if no token has this id.
  std::string push(int32_t id);
  // Whatever is held back, as U+FFFD (a character that never got finished); call at the end of the stream.
  std::string flush();

 private:
  const Tokenizer* tok_;
  bool skip_special_;
  std::string pending_;  // bytes of an unfinished character: at most 3
};

}  // namespace bamba
