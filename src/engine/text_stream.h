// TextStream: turns a stream of token ids into a stream of text for a user: complete UTF-8 only (via the
// tokenizer's StreamDecoder), and stop strings honoured — text that might be the start of a stop string is held
// back until it is known not to be, and the output ends just before the first stop string.
#pragma once
#include <string>
#include <vector>

#include "tokenizer/stream_decoder.h"
#include "tokenizer/tokenizer.h"

namespace bamba {

class TextStream {
 public:
  TextStream(const Tokenizer& tok, std::vector<std::string> stop, bool skip_special = true);
  std::string push(int32_t id);  // text that is now safe to show
  std::string flush();           // at the end: whatever is held back (unless a stop string was hit)
  bool stopped() const { return stopped_; }
  const std::string& stop_hit() const { return stop_hit_; }  // the stop string that ended the text

 private:
  std::string release();
  StreamDecoder dec_;
  std::vector<std::string> stop_;
  std::string held_;
  std::string stop_hit_;
  bool stopped_ = false;
};

}  // namespace bamba
