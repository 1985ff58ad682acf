#include "tokenizer/added_vocabulary.h"

#include <algorithm>

#include "tokenizer/utf8.h"

namespace bamba {

void AddedVocabulary::Trie::insert(std::string_view content, int32_t token) {
  first_byte[static_cast<unsigned char>(content[0])] = true;
  int32_t node = 0;
  for (unsigned char c : content) {
    auto [it, fresh] = nodes[node].next.try_emplace(c, int32_t(nodes.size()));
    if (fresh) nodes.emplace_back();
    node = it->second;
  }
  nodes[node].token = token;  // a repeated content: the last one wins
}

size_t AddedVocabulary::Trie::longest_at(std::string_view text, size_t at, int32_t& token) const {
  if (!first_byte[static_cast<unsigned char>(text[at])]) return 0;
  size_t best = 0;
  int32_t node = 0;
  for (size_t i = at; i < text.size(); ++i) {
    auto it = nodes[node].next.find(static_cast<unsigned char>(text[i]));
    if (it == nodes[node].next.end()) break;
    node = it->second;
    if (nodes[node].token >= 0) best = i + 1 - at, token = nodes[node].token;
  }
  return best;
}

// Rust's regex \w (Unicode: Alphabetic, marks, decimal digits, connector punctuation, joiners) and \s (White_Space).
AddedVocabulary::AddedVocabulary(const std::vector<AddedToken>& tokens)
    : tokens_(tokens),
      word_(R"([\p{Alphabetic}\p{M}\p{Nd}\p{Pc}\p{Join_Control}])", "added-token word class"),
      space_(R"(\p{White_Space})", "added-token space class") {
  for (size_t i = 0; i < tokens_.size(); ++i) {
    const AddedToken& t = tokens_[i];
    if (t.content.empty()) continue;  // HF ignores empty added tokens
    (t.normalized ? normalized_ : raw_).insert(t.content, int32_t(i));
  }
}

std::vector<AddedVocabulary::Piece> AddedVocabulary::split(std::string_view text) const {
  std::vector<Piece> first, out;
  split_with(raw_, text, first);
  for (const Piece& p : first) {
    if (p.id >= 0) {
      out.push_back(p);
    } else {
      split_with(normalized_, p.text, out);
    }
  }
  return out;
}

void AddedVocabulary::split_with(const Trie& trie, std::string_view text, std::vector<Piece>& out) const {
  size_t done = 0;  // end of the last piece emitted
  for (size_t at = 0; at < text.size();) {
    int32_t index = -1;
    size_t length = trie.longest_at(text, at, index);
    if (length == 0) {
      ++at;  // bytes inside a character can never start a token's (valid UTF-8) content, so this is safe
      continue;
    }
    const AddedToken& t = tokens_[index];
    size_t start = at, end = at + length;
    at = end;  // like HF, a match rejected by single_word is skipped whole, not retried one byte later
    if (t.single_word && (word_char_before(text, start) || word_char_at(text, end))) continue;
    if (t.lstrip) start = std::max(whitespace_start_before(text, start), done);
    if (t.rstrip) at = end = whitespace_end_after(text, end);
    if (start > done) out.push_back({text.substr(done, start - done), -1});
    out.push_back({text.substr(start, end - start), t.id});
    done = end;
  }
  if (done < text.size()) out.push_back({text.substr(done), -1});
}

bool AddedVocabulary::word_char_before(std::string_view text, size_t at) const {
  if (at == 0) return false;
  size_t p = at - 1;
  while (p > 0 && (static_cast<unsigned char>(text[p]) & 0xC0) == 0x80) --p;
  return word_.matches_at(text, p);
}

bool AddedVocabulary::word_char_at(std::string_view text, size_t at) const {
  return at < text.size() && word_.matches_at(text, at);
}

size_t AddedVocabulary::whitespace_start_before(std::string_view text, size_t at) const {
  while (at > 0) {
    size_t p = at - 1;
    while (p > 0 && (static_cast<unsigned char>(text[p]) & 0xC0) == 0x80) --p;
    if (!space_.matches_at(text, p)) break;
    at = p;
  }
  return at;
}

size_t AddedVocabulary::whitespace_end_after(std::string_view text, size_t at) const {
  while (at < text.size() && space_.matches_at(text, at)) at += utf8::char_length(static_cast<unsigned char>(text[at]));
  return at;
}

}  // namespace bamba
