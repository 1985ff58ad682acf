#include "tokenizer/stream_decoder.h"

#include "tokenizer/utf8.h"

namespace bamba {

StreamDecoder::StreamDecoder(const Tokenizer& tok, bool skip_special) : tok_(&tok), skip_special_(skip_special) {}

std::string StreamDecoder::push(int32_t id) {
  std::string_view bytes = tok_->id_to_bytes(id);
  if (skip_special_ && tok_->is_special(id)) return {};
  pending_.append(bytes);
  // The lossy decoder looks at most one character ahead, so stopping before an unfinished character at the end and
  // resuming there later gives exactly what decoding everything at once gives.
  std::string text;
  pending_.erase(0, utf8::append_lossy(pending_, /*final=*/false, text));
  return text;
}

std::string StreamDecoder::flush() {
  std::string text;
  utf8::append_lossy(pending_, /*final=*/true, text);
  pending_.clear();
  return text;
}

}  // namespace bamba
