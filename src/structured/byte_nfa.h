// ByteNfa: a nondeterministic automaton over bytes (Thompson construction), the common target of the regex and
// JSON-schema compilers of structured output. Characters are UTF-8 byte sequences, so the automaton also walks
// tokens that end inside a character. A Frag is a piece with one entry and one exit state; pieces are joined by
// epsilon edges. A piece used twice must be built twice (repeat() takes a builder for that).
#pragma once
#include <cstdint>
#include <functional>
#include <string_view>
#include <utility>
#include <vector>

namespace bamba {

class ByteNfa {
 public:
  struct Edge {
    uint8_t lo, hi;  // bytes lo..hi (inclusive)
    int32_t to;
  };
  struct Frag {
    int32_t in, out;
  };
  using CodepointRanges = std::vector<std::pair<uint32_t, uint32_t>>;  // inclusive; surrogates are dropped

  // Error ("the grammar is too large") once more than max_states states are asked for.
  explicit ByteNfa(size_t max_states = 400000) : max_states_(max_states) {}

  int32_t state();
  void eps(int32_t from, int32_t to) { eps_[size_t(from)].push_back(to); }
  void edge(int32_t from, uint8_t lo, uint8_t hi, int32_t to) { edges_[size_t(from)].push_back({lo, hi, to}); }

  Frag empty();
  Frag bytes(std::string_view s);                   // exactly these bytes
  Frag chars(const CodepointRanges& ranges);        // one character in the ranges, UTF-8 encoded
  Frag seq(Frag a, Frag b);                         // a then b
  Frag alt(const std::vector<Frag>& parts);         // any one of them (not empty)
  Frag star(Frag a);                                // a*
  Frag opt(Frag a);                                 // a?
  // make() min times, then up to max - min more optional ones (max < 0: any number).
  Frag repeat(const std::function<Frag()>& make, int32_t min, int32_t max);

  // The whole automaton is `f`: accepting exactly at f.out.
  void finish(Frag f) {
    start_ = f.in;
    accept_ = f.out;
  }
  int32_t start() const { return start_; }
  int32_t accept() const { return accept_; }
  size_t size() const { return edges_.size(); }
  const std::vector<Edge>& edges(int32_t s) const { return edges_[size_t(s)]; }
  const std::vector<int32_t>& epsilons(int32_t s) const { return eps_[size_t(s)]; }

  // Every character except those in `ranges` (within U+0000..U+10FFFF).
  static CodepointRanges complement(CodepointRanges ranges);

 private:
  size_t max_states_;
  std::vector<std::vector<Edge>> edges_;
  std::vector<std::vector<int32_t>> eps_;
  int32_t start_ = 0, accept_ = 0;
};

}  // namespace bamba
