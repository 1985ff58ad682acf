#include "server/grammar_cache.h"

namespace bamba {

std::shared_ptr<TokenGrammar> GrammarCache::get(const std::string& key,
                                                const std::function<std::shared_ptr<TokenGrammar>()>& make) {
  {
    std::lock_guard lk(mu_);
    if (auto it = at_.find(key); it != at_.end()) {
      lru_.splice(lru_.begin(), lru_, it->second);
      return it->second->second;
    }
  }
  std::shared_ptr<TokenGrammar> g = make();
  std::lock_guard lk(mu_);
  if (auto it = at_.find(key); it != at_.end()) return it->second->second;  // built meanwhile by another thread
  lru_.emplace_front(key, g);
  at_[key] = lru_.begin();
  while (lru_.size() > capacity_) {
    at_.erase(lru_.back().first);
    lru_.pop_back();
  }
  return g;
}

size_t GrammarCache::size() const {
  std::lock_guard lk(mu_);
  return lru_.size();
}

}  // namespace bamba
