#include "tokenizer/pre_tokenizer.h"

#include <string>

namespace bamba {

// The GPT-2 pattern that HF's ByteLevel applies when use_regex is true.
static constexpr std::string_view kByteLevelPattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

PreTokenizer::PreTokenizer(std::vector<Regex> splits, bool add_prefix_space, bool use_regex)
    : splits_(std::move(splits)), add_prefix_space_(add_prefix_space) {
  if (use_regex) byte_level_regex_.emplace(kByteLevelPattern, "ByteLevel pre-tokenizer regex");
}

void PreTokenizer::pre_tokenize(std::string_view text, const std::function<void(std::string_view)>& emit) const {
  if (!text.empty()) run(0, text, emit);
}

void PreTokenizer::run(size_t step, std::string_view piece, const std::function<void(std::string_view)>& emit) const {
  if (step < splits_.size()) {
    splits_[step].split_isolated(piece, [&](std::string_view sub) { run(step + 1, sub, emit); });
    return;
  }
  // ByteLevel. HF adds the prefix space to every piece the earlier steps produced, not just to the first one.
  std::string spaced;
  if (add_prefix_space_ && piece.front() != ' ') {
    spaced.reserve(piece.size() + 1);
    spaced.append(" ").append(piece);
    piece = spaced;
  }
  if (byte_level_regex_) {
    byte_level_regex_->split_isolated(piece, emit);
  } else {
    emit(piece);
  }
}

}  // namespace bamba
