#include "engine/prefix_cache.h"

#include <algorithm>

#include "core/error.h"
#include "core/hash_uniform.h"

namespace bamba {

namespace {
// A pure Mamba model keeps chain entries without pages; this bounds how many it remembers.
constexpr size_t kMaxEntriesWithoutPages = 1 << 16;
}  // namespace

PrefixCache::PrefixCache(HybridCache& cache, int32_t max_snapshots)
    : cache_(cache), bs_(cache.sizes().block_size), max_snapshots_(max_snapshots) {
  BAMBA_CHECK(max_snapshots >= 0, "the prefix cache's snapshot count must be >= 0");
}

PrefixCache::~PrefixCache() {
  while (!map_.empty()) drop(map_.begin()->first);
}

uint64_t PrefixCache::page_hash(uint64_t parent, std::span<const int32_t> tokens) {
  uint64_t h = splitmix64(parent ^ 0x6a09e667f3bcc909ull);
  for (int32_t t : tokens) h = splitmix64(h ^ uint64_t(uint32_t(t)));
  return h == 0 ? 1 : h;  // 0 is "no parent"
}

const PrefixCache::Entry* PrefixCache::find(uint64_t key, uint64_t parent, std::span<const int32_t> tokens) const {
  auto it = map_.find(key);
  if (it == map_.end()) return nullptr;
  const Entry& e = it->second;
  if (e.parent != parent || !std::equal(tokens.begin(), tokens.end(), e.tokens.begin(), e.tokens.end())) return nullptr;
  return &e;
}

void PrefixCache::touch(uint64_t key, Entry& e) {
  lru_.erase({e.used, -e.depth, key});
  e.used = clock_;
  lru_.insert({e.used, -e.depth, key});
}

PrefixCache::Match PrefixCache::lookup(std::span<const int32_t> tokens, int32_t limit) {
  Match m;
  ++clock_;
  uint64_t parent = 0;
  for (int32_t i = 0; (i + 1) * bs_ <= limit; ++i) {
    auto page = tokens.subspan(size_t(i * bs_), size_t(bs_));
    const uint64_t key = page_hash(parent, page);
    const Entry* e = find(key, parent, page);
    if (!e) break;
    touch(key, map_.at(key));
    m.keys.push_back(key);
    m.cached_pages = i + 1;
    if (e->slot >= 0) m.len = (i + 1) * bs_;
    parent = key;
  }
  return m;
}

bool PrefixCache::restore(const Match& m, SeqCache& seq) {
  BAMBA_CHECK(seq.slot < 0 && seq.blocks.empty(), "restore: the sequence must hold nothing");
  if (m.len == 0) return false;
  const Entry& last = map_.at(m.keys[size_t(m.len / bs_ - 1)]);
  const int32_t slot = cache_.take_slot();
  if (slot < 0) return false;
  cache_.copy_state(last.slot, slot);
  seq.slot = slot;
  if (cache_.has_attention()) {
    for (int32_t i = 0; i < m.len / bs_; ++i) {
      const int32_t b = map_.at(m.keys[size_t(i)]).block;
      cache_.retain_block(b);
      seq.blocks.push_back(b);
    }
  }
  seq.len = m.len;
  return true;
}

void PrefixCache::insert(std::span<const int32_t> tokens, const SeqCache& seq, std::vector<uint64_t>& keys,
                         bool snapshot) {
  const int32_t full = seq.len / bs_;
  ++clock_;
  for (int32_t i = int32_t(keys.size()); i < full; ++i) {
    const uint64_t parent = i ? keys[size_t(i - 1)] : 0;
    auto page = tokens.subspan(size_t(i * bs_), size_t(bs_));
    const uint64_t key = page_hash(parent, page);
    auto it = map_.find(key);
    if (it == map_.end()) {
      if (!cache_.has_attention() && map_.size() >= kMaxEntriesWithoutPages) {
        if (lru_.empty()) return;
        drop(std::get<2>(*lru_.begin()));
      }
      Entry e;
      e.parent = parent;
      e.tokens.assign(page.begin(), page.end());
      e.depth = i + 1;
      if (cache_.has_attention()) {
        e.block = seq.blocks[size_t(i)];
        cache_.retain_block(e.block);
        ++pages_;
      }
      e.used = clock_;
      lru_.insert({e.used, -e.depth, key});
      map_.emplace(key, std::move(e));
    } else if (!find(key, parent, page)) {
      return;  // a 64-bit key collision: this chain is not cached past here (lookups check content too)
    } else {
      touch(key, it->second);  // the same prefix computed twice (concurrently): the first copy stays
    }
    keys.push_back(key);
  }
  if (!snapshot || full == 0 || seq.len % bs_ != 0 || int32_t(keys.size()) < full) return;
  const uint64_t key = keys[size_t(full - 1)];
  Entry& e = map_.at(key);
  if (e.slot >= 0 || max_snapshots_ == 0) return;
  if (snapshots_ >= max_snapshots_ && !evict_snapshot(key)) return;
  const int32_t slot = cache_.take_slot();
  if (slot < 0) return;  // every slot is in use by sequences: no snapshot this time
  cache_.copy_state(seq.slot, slot);
  e.slot = slot;
  ++snapshots_;
}

void PrefixCache::drop(uint64_t key) {
  auto it = map_.find(key);
  Entry& e = it->second;
  if (e.block >= 0) {
    cache_.release_block(e.block);
    --pages_;
  }
  if (e.slot >= 0) {
    cache_.give_slot(e.slot);
    --snapshots_;
  }
  lru_.erase({e.used, -e.depth, key});
  map_.erase(it);
}

bool PrefixCache::evict_page() {
  // Pages that sequences still hold are passed over and marked used now (a second chance): the next scan does
  // not walk past them again, so evicting stays cheap under memory pressure.
  std::vector<uint64_t> held;
  bool evicted = false;
  for (const auto& [used, neg_depth, key] : lru_) {
    const Entry& e = map_.at(key);
    if (e.block < 0) continue;
    if (cache_.block_refs(e.block) > 1) {
      held.push_back(key);
      continue;
    }
    if (e.slot >= 0) ++evicted_snapshots_;
    drop(uint64_t(key));  // a copy: drop erases the set node `key` refers to
    ++evicted_pages_;
    evicted = true;
    break;
  }
  if (!held.empty()) ++clock_;
  for (uint64_t k : held) touch(k, map_.at(k));
  return evicted;
}

void PrefixCache::drop_snapshot(uint64_t key) {
  auto it = map_.find(key);
  if (it == map_.end() || it->second.slot < 0) return;
  cache_.give_slot(it->second.slot);
  it->second.slot = -1;
  --snapshots_;
}

bool PrefixCache::evict_snapshot(uint64_t keep) {
  for (const auto& [used, neg_depth, key] : lru_) {
    Entry& e = map_.at(key);
    if (e.slot < 0 || key == keep) continue;
    cache_.give_slot(e.slot);
    e.slot = -1;
    --snapshots_;
    ++evicted_snapshots_;
    return true;
  }
  return false;
}

int32_t PrefixCache::idle_pages() const {
  int32_t n = 0;
  for (const auto& [key, e] : map_) n += e.block >= 0 && cache_.block_refs(e.block) == 1;
  return n;
}

}  // namespace bamba
