// GrammarCache: compiled structured-output grammars by what they were compiled from, so that requests that
// repeat a schema, regex or tool set (the usual case: one schema per application) reuse the automaton and the
// token masks already computed instead of paying ~2.5 ms per new automaton state again (128k vocabulary).
// Least recently used entries go first. The grammars themselves are only ever walked by the engine thread; the
// cache only hands out pointers.
#pragma once
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <utility>

#include "structured/token_grammar.h"

namespace bamba {

class GrammarCache {
 public:
  explicit GrammarCache(size_t capacity = 16) : capacity_(capacity) {}

  // The grammar for `key`; make() builds it on a miss (outside the lock; it may throw).
  std::shared_ptr<TokenGrammar> get(const std::string& key, const std::function<std::shared_ptr<TokenGrammar>()>& make);
  size_t size() const;

 private:
  size_t capacity_;
  mutable std::mutex mu_;
  std::list<std::pair<std::string, std::shared_ptr<TokenGrammar>>> lru_;  // most recent first
  std::unordered_map<std::string, decltype(lru_)::iterator> at_;
};

}  // namespace bamba
