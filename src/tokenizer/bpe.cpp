#include "tokenizer/bpe.h"

#include <algorithm>
#include <bit>
#include <cstdio>
#include <mutex>
#include <queue>
#include <unordered_map>

#include "core/error.h"
#include "tokenizer/byte_level.h"

namespace bamba {

// Longer words are rare and would only bloat the cache; past kCacheEntries it is emptied and refilled, which keeps
// the memory of a long-running server bounded whatever text it sees.
static constexpr size_t kMaxCachedWordBytes = 64;
static constexpr size_t kCacheEntries = size_t(1) << 16;

// Lets the cache be searched with a string_view, without building a std::string.
struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};

struct Bpe::WordCache {
  std::mutex mu;
  std::unordered_map<std::string, std::vector<int32_t>, StringHash, std::equal_to<>> ids;
};

// A power of two at least twice `n`: the tables stay at most half full, so probe sequences stay short.
static size_t table_size(size_t n) { return std::bit_ceil(std::max<size_t>(2 * n, 16)); }

static uint64_t mix(uint64_t x) { return x * 0x9E3779B97F4A7C15ull ^ (x >> 29); }  // spreads nearby pairs apart

Bpe::Bpe(std::vector<std::pair<std::string, int32_t>> vocab,
         const std::vector<std::pair<std::string, std::string>>& merges, bool ignore_merges, const std::string& where)
    : ignore_merges_(ignore_merges), cache_(std::make_unique<WordCache>()) {
  vocab_index_.assign(table_size(vocab.size()), VocabSlot{0, -1});
  for (auto& [spelling, id] : vocab) {
    VocabSlot& slot = vocab_index_[vocab_slot(spelling)];
    if (slot.id >= 0) fail(where, ".vocab: token \"", spelling, "\" appears twice");
    if (size_t(id) >= spellings_.size()) spellings_.resize(size_t(id) + 1);
    spellings_[id] = std::move(spelling);
    slot = {uint32_t(std::hash<std::string_view>{}(spellings_[id]) >> 32), id};
  }
  for (int b = 0; b < 256; ++b) {
    std::string text;
    byte_level::append_token_text(std::string(1, char(b)), text);
    std::optional<int32_t> id = token_to_id(text);
    if (!id) {
      char hex[8];
      std::snprintf(hex, sizeof hex, "0x%02X", b);
      fail(where, ".vocab: no token for byte ", hex, " (\"", text,
           "\"); a byte-level BPE vocabulary must spell all 256 bytes");
    }
    byte_ids_[b] = *id;
  }
  merges_.assign(table_size(merges.size()), MergeSlot{kNoPair, 0, 0});
  std::string merged;
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const auto& [left, right] = merges[rank];
    merged.assign(left).append(right);
    std::optional<int32_t> l = token_to_id(left), r = token_to_id(right), m = token_to_id(merged);
    if (!l || !r || !m) {
      const char* which = !l ? "left" : !r ? "right" : "merged";
      const std::string& token = !l ? left : !r ? right : merged;
      fail(where, ".merges[", rank, "]: ", which, " token \"", token, "\" of the merge \"", left, "\" + \"", right,
           "\" is not in the vocabulary");
    }
    // A repeated pair keeps its last rank, as in HF (its merge table is a map filled in order).
    merges_[merge_slot(*l, *r)] = {uint64_t(uint32_t(*l)) << 32 | uint32_t(*r), int32_t(rank), *m};
  }
}

Bpe::~Bpe() = default;
Bpe::Bpe(Bpe&&) noexcept = default;
Bpe& Bpe::operator=(Bpe&&) noexcept = default;

size_t Bpe::vocab_slot(std::string_view spelling) const {
  uint64_t h = std::hash<std::string_view>{}(spelling);
  size_t mask = vocab_index_.size() - 1;
  for (size_t i = h & mask;; i = (i + 1) & mask) {
    const VocabSlot& slot = vocab_index_[i];
    if (slot.id < 0 || (slot.tag == uint32_t(h >> 32) && spellings_[slot.id] == spelling)) return i;
  }
}

std::optional<int32_t> Bpe::token_to_id(std::string_view spelling) const {
  int32_t id = vocab_index_[vocab_slot(spelling)].id;
  return id >= 0 ? std::optional<int32_t>(id) : std::nullopt;
}

size_t Bpe::merge_slot(int32_t left, int32_t right) const {
  uint64_t pair = uint64_t(uint32_t(left)) << 32 | uint32_t(right);
  size_t mask = merges_.size() - 1;
  for (size_t i = mix(pair) & mask;; i = (i + 1) & mask) {
    const MergeSlot& slot = merges_[i];
    if (slot.pair == pair || slot.pair == kNoPair) return i;
  }
}

void Bpe::encode_word(std::string_view word, std::vector<int32_t>& out) const {
  if (word.size() == 1) {
    out.push_back(byte_ids_[static_cast<unsigned char>(word[0])]);
    return;
  }
  const bool cacheable = word.size() <= kMaxCachedWordBytes;
  if (cacheable) {
    std::lock_guard lock(cache_->mu);
    auto it = cache_->ids.find(word);
    if (it != cache_->ids.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  size_t first = out.size();
  std::optional<int32_t> whole;
  if (ignore_merges_) {
    std::string text;
    byte_level::append_token_text(word, text);
    whole = token_to_id(text);
  }
  if (whole) {
    out.push_back(*whole);
  } else {
    merge_word(word, out);
  }
  if (cacheable) {
    std::lock_guard lock(cache_->mu);
    if (cache_->ids.size() >= kCacheEntries) cache_->ids.clear();
    cache_->ids.emplace(word, std::vector<int32_t>(out.begin() + first, out.end()));
  }
}

// The symbols of the word form a linked list over an array (merging removes the right symbol of the pair); the
// candidate pairs sit in a min-heap keyed by (rank, position). Entries go stale when a neighbour merges first; they
// are checked when popped instead of being removed. O(n log n), so a megabyte-long "word" is no problem.
void Bpe::merge_word(std::string_view word, std::vector<int32_t>& out) const {
  struct Symbol {
    int32_t id;  // -1 once merged into its left neighbour
    int32_t prev, next;
  };
  struct Candidate {
    int32_t rank, pos, left, right;
    bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  const int32_t n = int32_t(word.size());
  std::vector<Symbol> sym(n);
  for (int32_t i = 0; i < n; ++i)
    sym[i] = {byte_ids_[static_cast<unsigned char>(word[i])], i - 1, i + 1 < n ? i + 1 : -1};

  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<>> heap;
  auto consider = [&](int32_t pos) {
    int32_t next = sym[pos].next;
    if (next < 0) return;
    const MergeSlot& m = merges_[merge_slot(sym[pos].id, sym[next].id)];
    if (m.pair != kNoPair) heap.push({m.rank, pos, sym[pos].id, sym[next].id});
  };
  for (int32_t i = 0; i + 1 < n; ++i) consider(i);

  while (!heap.empty()) {
    Candidate c = heap.top();
    heap.pop();
    Symbol& s = sym[c.pos];
    if (s.id != c.left || s.next < 0 || sym[s.next].id != c.right) continue;  // stale
    Symbol& gone = sym[s.next];
    s.id = merges_[merge_slot(c.left, c.right)].id;
    s.next = gone.next;
    if (gone.next >= 0) sym[gone.next].prev = c.pos;
    gone.id = -1;
    if (s.prev >= 0) consider(s.prev);
    consider(c.pos);
  }
  for (int32_t i = 0; i >= 0; i = sym[i].next) out.push_back(sym[i].id);
}

}  // namespace bamba
