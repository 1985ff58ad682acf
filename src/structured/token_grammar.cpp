#include "structured/token_grammar.h"

#include <algorithm>
#include <numeric>

#include "core/error.h"
#include "tokenizer/tokenizer.h"

namespace bamba {

TokenVocab::TokenVocab(const Tokenizer& tok) {
  bytes_.resize(size_t(tok.vocab_size()));
  for (int32_t id = 0; id < tok.vocab_size(); ++id) {
    if (tok.is_special(id)) continue;
    try {
      bytes_[size_t(id)] = std::string(tok.id_to_bytes(id));
    } catch (const Error&) {  // an id without a token (a hole in the vocabulary)
    }
  }
  sort();
}

TokenVocab::TokenVocab(std::vector<std::string> tokens) : bytes_(std::move(tokens)) { sort(); }

void TokenVocab::sort() {
  for (int32_t id = 0; id < size(); ++id)
    if (!bytes_[size_t(id)].empty()) order_.push_back(id);
  std::sort(order_.begin(), order_.end(), [&](int32_t a, int32_t b) { return bytes_[size_t(a)] < bytes_[size_t(b)]; });
  lcp_.assign(order_.size(), 0);
  for (size_t i = 1; i < order_.size(); ++i) {
    const std::string &a = bytes_[size_t(order_[i - 1])], &b = bytes_[size_t(order_[i])];
    size_t k = 0;
    while (k < a.size() && k < b.size() && a[k] == b[k]) ++k;
    lcp_[i] = int32_t(k);
  }
}

TokenGrammar::TokenGrammar(const ByteNfa& nfa, std::shared_ptr<const TokenVocab> vocab)
    : dfa_(nfa), vocab_(std::move(vocab)) {}

const std::vector<uint32_t>& TokenGrammar::mask(int32_t state) {
  if (auto it = masks_.find(state); it != masks_.end()) return it->second;
  std::vector<uint32_t> m(size_t(vocab_->size() + 31) / 32, 0u);
  const std::vector<int32_t>& order = vocab_->order();
  const std::vector<int32_t>& lcp = vocab_->lcp();
  // stack_[k]: the state after the first k bytes of the token last walked; valid up to `valid`.
  int32_t valid = 0;
  if (stack_.empty()) stack_.resize(1);
  stack_[0] = state;
  for (size_t i = 0; i < order.size();) {
    const std::string& t = vocab_->bytes(order[i]);
    if (stack_.size() < t.size() + 1) stack_.resize(t.size() + 1);
    int32_t k = std::min(lcp[i], valid);
    bool dead = false;
    for (; k < int32_t(t.size()); ++k) {
      const int32_t nx = dfa_.step(stack_[size_t(k)], uint8_t(t[size_t(k)]));
      if (nx == ByteDfa::kDead) {
        dead = true;
        break;
      }
      stack_[size_t(k) + 1] = nx;
    }
    if (!dead) {
      m[size_t(order[i]) >> 5] |= 1u << (order[i] & 31);
      valid = int32_t(t.size());
      ++i;
      continue;
    }
    // Byte k killed it: every following token that shares the first k + 1 bytes dies there too.
    valid = k;
    for (++i; i < order.size() && lcp[i] >= k + 1; ++i) {
    }
  }
  // Bounded cache: at most 1024 states' masks (16 KiB each for a 128k vocabulary: 16 MiB) are kept.
  if (masks_.size() >= 1024) masks_.clear();
  return masks_.emplace(state, std::move(m)).first->second;
}

bool TokenGrammar::complete(int32_t state) {
  if (!accepting(state)) return false;
  const std::vector<uint32_t>& m = mask(state);
  return std::all_of(m.begin(), m.end(), [](uint32_t w) { return w == 0; });
}

int32_t TokenGrammar::advance(int32_t state, int32_t token) {
  if (token < 0 || token >= vocab_->size()) return -1;
  const std::string& t = vocab_->bytes(token);
  if (t.empty()) return -1;
  for (char c : t) {
    state = dfa_.step(state, uint8_t(c));
    if (state == ByteDfa::kDead) return -1;
  }
  return state;
}

}  // namespace bamba
