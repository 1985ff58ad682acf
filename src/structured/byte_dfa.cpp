#include "structured/byte_dfa.h"

#include <algorithm>

#include "core/error.h"

namespace bamba {

ByteDfa::ByteDfa(const ByteNfa& nfa, size_t max_states) : max_states_(max_states) {
  const size_t n = nfa.size();
  // Live states: those from which the accepting state is reachable (backwards search over all edges).
  std::vector<std::vector<int32_t>> rev(n);
  for (size_t s = 0; s < n; ++s) {
    for (const auto& e : nfa.edges(int32_t(s))) rev[size_t(e.to)].push_back(int32_t(s));
    for (int32_t t : nfa.epsilons(int32_t(s))) rev[size_t(t)].push_back(int32_t(s));
  }
  std::vector<int32_t> id(n, -1), todo = {nfa.accept()};
  std::vector<bool> live(n, false);
  live[size_t(nfa.accept())] = true;
  while (!todo.empty()) {
    const int32_t s = todo.back();
    todo.pop_back();
    for (int32_t p : rev[size_t(s)])
      if (!live[size_t(p)]) live[size_t(p)] = true, todo.push_back(p);
  }
  if (!live[size_t(nfa.start())]) fail("the grammar accepts no output at all");
  int32_t k = 0;
  for (size_t s = 0; s < n; ++s)
    if (live[s]) id[s] = k++;
  nfa_.resize(size_t(k));
  for (size_t s = 0; s < n; ++s) {
    if (!live[s]) continue;
    Node& nd = nfa_[size_t(id[s])];
    for (const auto& e : nfa.edges(int32_t(s)))
      if (live[size_t(e.to)]) nd.edges.push_back({e.lo, e.hi, id[size_t(e.to)]});
    for (int32_t t : nfa.epsilons(int32_t(s)))
      if (live[size_t(t)]) nd.eps.push_back(id[size_t(t)]);
  }
  accept_ = id[size_t(nfa.accept())];
  mark_.assign(nfa_.size(), 0);
  std::vector<int32_t> s0 = {id[size_t(nfa.start())]};
  close(s0);
  intern(std::move(s0));
}

void ByteDfa::close(std::vector<int32_t>& set) {
  ++stamp_;
  std::vector<int32_t> todo = set;
  for (int32_t s : set) mark_[size_t(s)] = stamp_;
  while (!todo.empty()) {
    const int32_t s = todo.back();
    todo.pop_back();
    for (int32_t t : nfa_[size_t(s)].eps)
      if (mark_[size_t(t)] != stamp_) {
        mark_[size_t(t)] = stamp_;
        set.push_back(t);
        todo.push_back(t);
      }
  }
  std::sort(set.begin(), set.end());
}

int32_t ByteDfa::intern(std::vector<int32_t> set) {
  auto it = ids_.find(set);
  if (it != ids_.end()) return it->second;
  if (sets_.size() >= max_states_)
    fail("structured output: the grammar needs more than ", max_states_, " automaton states");
  const int32_t id = int32_t(sets_.size());
  accepting_.push_back(std::binary_search(set.begin(), set.end(), accept_));
  std::array<int32_t, 256> unknown;
  unknown.fill(kUnknown);
  next_.push_back(unknown);
  ids_.emplace(set, id);
  sets_.push_back(std::move(set));
  return id;
}

int32_t ByteDfa::compute(int32_t s, uint8_t b) {
  std::vector<int32_t> to;
  ++stamp_;
  for (int32_t q : sets_[size_t(s)])
    for (const auto& e : nfa_[size_t(q)].edges)
      if (b >= e.lo && b <= e.hi && mark_[size_t(e.to)] != stamp_) {
        mark_[size_t(e.to)] = stamp_;
        to.push_back(e.to);
      }
  if (to.empty()) return kDead;
  close(to);
  return intern(std::move(to));
}

}  // namespace bamba
