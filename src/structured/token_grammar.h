// TokenGrammar: structured output on the token level. A byte automaton (ByteDfa, from a regex or a JSON schema)
// is turned into, for each automaton state the output reaches, the mask of tokens whose bytes keep the output
// completable: every token's byte string is walked from that state (TokenVocab sorts them, so tokens sharing a
// prefix share the walk and a dead prefix skips all of them), and the mask is cached per state.
//
// Written here rather than taken from a library: the grammar engines that compute token masks (xgrammar,
// outlines-core, llguidance) are Python/Rust projects that Debian does not package, and the C/C++ regex
// libraries it does package (PCRE2, RE2) match whole strings but cannot say which continuations stay viable.
//
// Not thread-safe: the engine thread alone walks and caches (the server only builds).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "structured/byte_dfa.h"

namespace bamba {

class Tokenizer;

// Every token's bytes, in byte order, with the common prefix length of neighbours; built once per tokenizer.
// Special tokens (and ids without bytes) are never part of a structured output.
class TokenVocab {
 public:
  explicit TokenVocab(const Tokenizer& tok);
  // For tests: token id i has bytes tokens[i] ("" = never allowed).
  explicit TokenVocab(std::vector<std::string> tokens);

  int32_t size() const { return int32_t(bytes_.size()); }
  const std::string& bytes(int32_t id) const { return bytes_[size_t(id)]; }
  const std::vector<int32_t>& order() const { return order_; }  // ids with bytes, sorted by them
  const std::vector<int32_t>& lcp() const { return lcp_; }      // lcp[i]: common prefix of order[i-1], order[i]

 private:
  void sort();
  std::vector<std::string> bytes_;
  std::vector<int32_t> order_, lcp_;
};

class TokenGrammar {
 public:
  TokenGrammar(const ByteNfa& nfa, std::shared_ptr<const TokenVocab> vocab);

  int32_t vocab_size() const { return vocab_->size(); }
  int32_t start() const { return dfa_.start(); }
  // Bit j of word j / 32: token j keeps the output completable (ceil(vocab_size / 32) words; eos not included).
  const std::vector<uint32_t>& mask(int32_t state);
  bool accepting(int32_t state) const { return dfa_.accepting(state); }
  // Accepting, and no token can follow: the output is finished.
  bool complete(int32_t state);
  // The state after `token`, or -1 where the mask forbids it.
  int32_t advance(int32_t state, int32_t token);

 private:
  ByteDfa dfa_;
  std::shared_ptr<const TokenVocab> vocab_;
  std::unordered_map<int32_t, std::vector<uint32_t>> masks_;
  std::vector<int32_t> stack_;  // walk scratch: the state after each prefix length
};

}  // namespace bamba
