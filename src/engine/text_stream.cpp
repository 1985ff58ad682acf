#include "engine/text_stream.h"

#include <algorithm>
#include <utility>

namespace bamba {

TextStream::TextStream(const Tokenizer& tok, std::vector<std::string> stop, bool skip_special)
    : dec_(tok, skip_special), stop_(std::move(stop)) {
  std::erase(stop_, std::string());
}

std::string TextStream::release() {
  size_t cut = std::string::npos;
  for (auto& s : stop_)
    if (size_t at = held_.find(s); at < cut) {
      cut = at;
      stop_hit_ = s;
    }
  if (cut != std::string::npos) {
    stopped_ = true;
    std::string out = held_.substr(0, cut);
    held_.clear();
    return out;
  }
  // Keep the longest tail of held_ that is a proper prefix of some stop string.
  size_t keep = 0;
  for (auto& s : stop_)
    for (size_t k = std::min(s.size() - 1, held_.size()); k > keep; --k)
      if (held_.compare(held_.size() - k, k, s, 0, k) == 0) {
        keep = k;
        break;
      }
  std::string out = held_.substr(0, held_.size() - keep);
  held_.erase(0, held_.size() - keep);
  return out;
}

std::string TextStream::push(int32_t id) {
  if (stopped_) return {};
  held_ += dec_.push(id);
  return release();
}

std::string TextStream::flush() {
  if (stopped_) return {};
  held_ += dec_.flush();
  std::string out = release();
  if (!stopped_) out += std::exchange(held_, std::string());
  return out;
}

}  // namespace bamba
