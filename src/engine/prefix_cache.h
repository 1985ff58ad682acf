// PrefixCache: the cache state of prompt prefixes, kept after their sequences have moved on, so that a request
// whose prompt starts with one skips it. A hybrid needs both halves of its state at the same position:
// - KV pages (attention layers): full pages of block_size tokens, named by a hash chained over the token ids of
//   every page up to and including it, so a key stands for the whole prefix, not one page. Shared by reference
//   count (HybridCache::retain_block); a full page is never written again (new tokens go to later rows).
// - Mamba state: a recurrent state cannot be cut back to an earlier position, so snapshots of it (conv window +
//   SSM state, copied into spare state slots) are kept at chosen page boundaries. A hit is the longest chain of
//   cached pages that ends at a snapshot; the sequence gets the pages and a copy of the snapshot.
// Eviction is least recently used: pages that no sequence holds when the page pool runs short, snapshots beyond
// max_snapshots. A pure Mamba model has no pages: the chain (of token blocks) only locates its snapshots.
#pragma once
#include <cstdint>
#include <set>
#include <span>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "model/hybrid_cache.h"

namespace bamba {

class PrefixCache {
 public:
  PrefixCache(HybridCache& cache, int32_t max_snapshots);
  ~PrefixCache();  // gives every page and slot back to the cache
  PrefixCache(const PrefixCache&) = delete;
  PrefixCache& operator=(const PrefixCache&) = delete;

  // The key of a page of tokens whose predecessors' key is `parent` (0 for the first page).
  static uint64_t page_hash(uint64_t parent, std::span<const int32_t> tokens);
  int32_t block_size() const { return bs_; }

  struct Match {
    int32_t len = 0;              // tokens a hit restores: a multiple of block_size, 0 for a miss
    int32_t cached_pages = 0;     // leading pages found, with or without a snapshot (>= len / block_size)
    std::vector<uint64_t> keys;   // the keys of the first cached_pages pages
  };
  // The longest cached prefix of tokens[0, limit) that has a snapshot at its end. Marks what it finds as used.
  Match lookup(std::span<const int32_t> tokens, int32_t limit);
  // seq (holding nothing) gets the match's pages and a state slot with its snapshot; seq.len = m.len. False
  // (nothing changed) if no state slot is free.
  bool restore(const Match& m, SeqCache& seq);

  // After a step: registers seq's full pages of tokens[0, seq.len) not yet in `keys` (the sequence's chain,
  // extended), and with `snapshot` (seq.len a page boundary) keeps a copy of its state there.
  void insert(std::span<const int32_t> tokens, const SeqCache& seq, std::vector<uint64_t>& keys, bool snapshot);

  // Gives back the snapshot kept after page `key` (if any): a sequence's older decode-time snapshot.
  void drop_snapshot(uint64_t key);
  // Frees the least recently used page that only the prefix cache holds. False if there is none.
  bool evict_page();

  int32_t pages() const { return pages_; }
  int32_t snapshots() const { return snapshots_; }
  int32_t max_snapshots() const { return max_snapshots_; }
  int32_t idle_pages() const;  // pages no sequence holds (free for the taking)
  uint64_t evicted_pages() const { return evicted_pages_; }
  uint64_t evicted_snapshots() const { return evicted_snapshots_; }

 private:
  struct Entry {
    uint64_t parent = 0;
    std::vector<int32_t> tokens;  // the page's tokens: a key is trusted only with its content (no collisions)
    int32_t block = -1;           // the KV page (-1 without attention layers)
    int32_t slot = -1;            // the state snapshot after this page, if kept
    int32_t depth = 0;            // pages from the start, this one included
    uint64_t used = 0;
  };
  using LruKey = std::tuple<uint64_t, int32_t, uint64_t>;  // (used, -depth, key): deeper pages of a chain go first
  const Entry* find(uint64_t key, uint64_t parent, std::span<const int32_t> tokens) const;
  void touch(uint64_t key, Entry& e);
  void drop(uint64_t key);  // forgets an entry: its page and snapshot go back to the cache
  bool evict_snapshot(uint64_t keep);

  HybridCache& cache_;
  int32_t bs_, max_snapshots_;
  std::unordered_map<uint64_t, Entry> map_;
  std::set<LruKey> lru_;
  uint64_t clock_ = 0;
  int32_t pages_ = 0, snapshots_ = 0;
  uint64_t evicted_pages_ = 0, evicted_snapshots_ = 0;
};

}  // namespace bamba
