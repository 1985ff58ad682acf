// ByteDfa: the deterministic automaton of a ByteNfa, built lazily (subset construction one transition at a
// time, as the token walks of TokenGrammar reach it). NFA states that cannot reach the accepting state are
// dropped first, so a DFA state exists only where the input can still be completed: "not dead" means "some
// continuation is accepted".
#pragma once
#include <array>
#include <cstdint>
#include <map>
#include <vector>

#include "structured/byte_nfa.h"

namespace bamba {

class ByteDfa {
 public:
  static constexpr int32_t kDead = -1;
  // Error if the whole automaton accepts nothing. max_states bounds the DFA (Error when reached).
  explicit ByteDfa(const ByteNfa& nfa, size_t max_states = 20000);

  int32_t start() const { return 0; }
  int32_t step(int32_t s, uint8_t b) {
    const int32_t t = next_[size_t(s)][b];
    if (t != kUnknown) return t;
    const int32_t c = compute(s, b);  // may grow next_: index again
    next_[size_t(s)][b] = c;
    return c;
  }
  bool accepting(int32_t s) const { return accepting_[size_t(s)]; }
  size_t num_states() const { return sets_.size(); }

 private:
  static constexpr int32_t kUnknown = -2;
  int32_t compute(int32_t s, uint8_t b);
  int32_t intern(std::vector<int32_t> set);  // an epsilon-closed, sorted set of live NFA states
  void close(std::vector<int32_t>& set);

  struct Node {
    std::vector<ByteNfa::Edge> edges;
    std::vector<int32_t> eps;
  };
  std::vector<Node> nfa_;  // live states only, renumbered
  int32_t accept_ = -1;
  size_t max_states_;
  std::vector<std::vector<int32_t>> sets_;
  std::map<std::vector<int32_t>, int32_t> ids_;
  std::vector<std::array<int32_t, 256>> next_;
  std::vector<bool> accepting_;
  std::vector<uint32_t> mark_;  // closure scratch
  uint32_t stamp_ = 0;
};

}  // namespace bamba
