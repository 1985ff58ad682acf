#include "tokenizer/bpe_trainer.h"

#include <algorithm>
#include <nlohmann/json.hpp>
#include <thread>

#include "core/error.h"
#include "core/progress.h"
#include "tokenizer/byte_level.h"
#include "tokenizer/pre_tokenizer.h"

namespace bamba {

namespace {

// Lets the word table be searched with a string_view, without building a std::string per pre-token.
struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
using WordMap = std::unordered_map<std::string, uint64_t, StringHash, std::equal_to<>>;

// A pair of token ids as one key; comparing keys compares (left, right) lexicographically, HF's tie-break order.
using PairKey = uint64_t;
PairKey pair_key(int32_t left, int32_t right) { return uint64_t(uint32_t(left)) << 32 | uint32_t(right); }
int32_t left_of(PairKey p) { return int32_t(p >> 32); }
int32_t right_of(PairKey p) { return int32_t(p & 0xFFFFFFFFu); }

// A heap entry as in HF: the pair, its count when pushed, and the words it was pushed for. A pair can have several
// entries (each merge pushes the pairs it created with just the words where it created them); a popped entry whose
// count is stale is pushed back with the current one, and merging applies to the entry's words only.
struct Candidate {
  int64_t count;
  PairKey pair;
  std::vector<uint32_t> words;
};
// Max-heap order: higher count first, then the smaller pair.
bool heap_less(const Candidate& a, const Candidate& b) {
  return a.count != b.count ? a.count < b.count : a.pair > b.pair;
}

struct Change {
  PairKey pair;
  int32_t delta;
};

// HF's Word::merge: replaces every (left, right) in `word`, scanning left to right, and lists how the counts of the
// neighbouring pairs change, in HF's order. The merged pair's own count is left as is: the caller popped it for
// good. One compacting pass (HF removes symbols one by one), so a long word costs O(length) per merge, not more.
void merge_word(std::vector<int32_t>& word, int32_t left, int32_t right, int32_t merged, std::vector<Change>& changes) {
  const size_t n = word.size();
  size_t w = 0;  // word[0, w) is the merged word so far; word[r, n) is still to be read
  for (size_t r = 0; r < n;) {
    if (word[r] != left || r + 1 >= n || word[r + 1] != right) {
      word[w++] = word[r++];
      continue;
    }
    if (w > 0) {
      changes.push_back({pair_key(word[w - 1], left), -1});
      changes.push_back({pair_key(word[w - 1], merged), +1});
    }
    if (r + 2 < n) {
      changes.push_back({pair_key(right, word[r + 2]), -1});
      changes.push_back({pair_key(merged, word[r + 2]), +1});
    }
    word[w++] = merged;
    r += 2;
  }
  word.resize(w);
}

// The Unicode code point of a one-character UTF-8 string (the byte-level spelling of a byte: at most 2 bytes).
char32_t code_point(std::string_view s) {
  auto b0 = static_cast<unsigned char>(s[0]);
  if (b0 < 0x80) return b0;
  return char32_t(b0 & 0x1F) << 6 | (static_cast<unsigned char>(s[1]) & 0x3F);
}

void count_words(const PreTokenizer& pre, const std::string_view* begin, const std::string_view* end, WordMap& out) {
  for (const std::string_view* s = begin; s != end; ++s) {
    pre.pre_tokenize(*s, [&](std::string_view word) {
      auto it = out.find(word);
      if (it != out.end()) {
        ++it->second;
      } else {
        out.emplace(word, 1);
      }
    });
  }
}

}  // namespace

std::string split_pattern_for(std::string_view name_or_regex) {
  if (name_or_regex == "gpt2") return std::string(kGpt2SplitPattern);
  if (name_or_regex == "llama3") return std::string(kLlama3SplitPattern);
  return std::string(name_or_regex);
}

BpeTrainer::BpeTrainer(BpeTrainerOptions options)
    : options_(std::move(options)) {
  std::vector<Regex> splits;
  splits.emplace_back(options_.split_pattern, "split regex");
  pre_ = std::make_unique<PreTokenizer>(std::move(splits), /*add_prefix_space=*/false, /*use_regex=*/false);
  if (options_.vocab_size < 1 || options_.vocab_size > (int64_t(1) << 31) - 1)
    fail("vocab size ", options_.vocab_size, " is out of range (expected 1 .. 2^31-1)");
  if (options_.min_frequency < 0) fail("min frequency ", options_.min_frequency, " is negative");
  for (const std::string& s : options_.special_tokens)
    if (s.empty()) fail("special tokens: an empty token was given");
  if (options_.threads <= 0) options_.threads = int(std::max(1u, std::thread::hardware_concurrency()));
}

BpeTrainer::~BpeTrainer() = default;

void BpeTrainer::add_word(std::string_view word, uint64_t count) {
  auto it = words_.find(std::string(word));
  if (it != words_.end()) {
    it->second += count;
  } else {
    words_.emplace(word, count);
  }
}

void BpeTrainer::feed(const std::vector<std::string_view>& sequences) {
  const PreTokenizer& pre = *pre_;
  const size_t n = sequences.size();
  const size_t n_threads = std::min<size_t>(size_t(options_.threads), std::max<size_t>(1, n / 64));
  if (n_threads <= 1) {
    WordMap local;
    count_words(pre, sequences.data(), sequences.data() + n, local);
    for (auto& [w, c] : local) add_word(w, c);
    return;
  }
  std::vector<WordMap> maps(n_threads);
  std::vector<std::thread> pool;
  std::vector<std::exception_ptr> errors(n_threads);
  for (size_t t = 0; t < n_threads; ++t) {
    pool.emplace_back([&, t] {
      try {
        count_words(pre, sequences.data() + n * t / n_threads, sequences.data() + n * (t + 1) / n_threads, maps[t]);
      } catch (...) {
        errors[t] = std::current_exception();
      }
    });
  }
  for (auto& th : pool) th.join();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
  for (auto& m : maps)
    for (auto& [w, c] : m) {
      auto it = words_.find(w);
      if (it != words_.end()) {
        it->second += c;
      } else {
        words_.emplace(w, c);
      }
    }
}

TrainedBpe BpeTrainer::train() const {
  TrainedBpe out;
  std::unordered_map<std::string, int32_t> ids;  // spelling -> id
  auto add_token = [&](const std::string& spelling) {
    auto [it, added] = ids.emplace(spelling, int32_t(out.vocab.size()));
    if (added) out.vocab.push_back(spelling);
    return it->second;
  };
  for (const std::string& s : options_.special_tokens) add_token(s);
  out.n_special = out.vocab.size();

  // All 256 bytes (HF's ByteLevel.alphabet() as initial_alphabet), ordered by the code point that spells them.
  std::vector<std::pair<char32_t, int>> alphabet;
  std::string spelling[256];
  for (int b = 0; b < 256; ++b) {
    byte_level::append_token_text(std::string(1, char(b)), spelling[b]);
    alphabet.emplace_back(code_point(spelling[b]), b);
  }
  std::sort(alphabet.begin(), alphabet.end());
  int32_t byte_id[256];
  for (auto [cp, b] : alphabet) byte_id[b] = add_token(spelling[b]);

  // Words as symbol ids, and the pairs they hold with their counts and the words holding them.
  std::vector<std::vector<int32_t>> words;
  std::vector<int64_t> counts;
  words.reserve(words_.size());
  counts.reserve(words_.size());
  for (const auto& [w, c] : words_) {
    std::vector<int32_t> symbols(w.size());
    for (size_t i = 0; i < w.size(); ++i) symbols[i] = byte_id[static_cast<unsigned char>(w[i])];
    words.push_back(std::move(symbols));
    counts.push_back(int64_t(c));
  }
  out.n_words = words.size();

  std::unordered_map<PairKey, int64_t> pair_counts;
  std::unordered_map<PairKey, std::vector<uint32_t>> where;
  for (uint32_t i = 0; i < words.size(); ++i) {
    const auto& w = words[i];
    for (size_t k = 0; k + 1 < w.size(); ++k) {
      PairKey p = pair_key(w[k], w[k + 1]);
      pair_counts[p] += counts[i];
      auto& list = where[p];
      if (list.empty() || list.back() != i) list.push_back(i);
    }
  }
  std::vector<Candidate> heap;
  heap.reserve(where.size());
  auto push = [&](Candidate c) {
    heap.push_back(std::move(c));
    std::push_heap(heap.begin(), heap.end(), heap_less);
  };
  auto push_where = [&] {
    for (auto& [p, list] : where) {
      int64_t c = pair_counts[p];
      if (c > 0) push({c, p, std::move(list)});
    }
    where.clear();
  };
  push_where();

  const size_t target = size_t(options_.vocab_size);
  ProgressBar bar("merges", target > out.vocab.size() ? target - out.vocab.size() : 0, options_.progress);
  std::vector<Change> changes;
  while (ids.size() < target && !heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), heap_less);
    Candidate top = std::move(heap.back());
    heap.pop_back();
    int64_t now = pair_counts[top.pair];
    if (top.count != now) {
      top.count = now;
      push(std::move(top));
      continue;
    }
    if (top.count < 1 || options_.min_frequency > top.count) break;

    const int32_t left = left_of(top.pair), right = right_of(top.pair);
    // A spelling made before (from another pair) keeps its id, and the merge is still recorded, as in HF.
    const int32_t merged = add_token(out.vocab[left] + out.vocab[right]);
    out.merges.emplace_back(out.vocab[left], out.vocab[right]);

    for (uint32_t iw : top.words) {
      changes.clear();
      merge_word(words[iw], left, right, merged, changes);
      for (const Change& ch : changes) {
        pair_counts[ch.pair] += int64_t(ch.delta) * counts[iw];
        if (ch.delta > 0) {
          auto& list = where[ch.pair];
          if (list.empty() || list.back() != iw) list.push_back(iw);
        }
      }
    }
    push_where();
    if ((out.merges.size() & 255) == 0) bar.update(out.merges.size(), cat(out.merges.size(), " merges"));
  }
  bar.finish();
  return out;
}

std::string bpe_tokenizer_json(const TrainedBpe& model, const std::string& split_pattern, const std::string& bos) {
  using ojson = nlohmann::ordered_json;
  ojson added = ojson::array();
  bool bos_found = bos.empty();
  for (size_t id = 0; id < model.n_special; ++id) {
    const std::string& s = model.vocab[id];
    bos_found |= s == bos;
    added.push_back({{"id", id},
                     {"content", s},
                     {"single_word", false},
                     {"lstrip", false},
                     {"rstrip", false},
                     {"normalized", false},
                     {"special", true}});
  }
  if (!bos_found) fail("BOS token \"", bos, "\" is not one of the special tokens");

  ojson post = nullptr;
  if (!bos.empty()) {
    size_t bos_id = std::find(model.vocab.begin(), model.vocab.end(), bos) - model.vocab.begin();
    auto special = [&](int type_id) { return ojson{{"SpecialToken", {{"id", bos}, {"type_id", type_id}}}}; };
    auto sequence = [&](const char* id, int type_id) { return ojson{{"Sequence", {{"id", id}, {"type_id", type_id}}}}; };
    post = {{"type", "TemplateProcessing"},
            {"single", {special(0), sequence("A", 0)}},
            {"pair", {special(0), sequence("A", 0), special(1), sequence("B", 1)}},
            {"special_tokens", {{bos, {{"id", bos}, {"ids", {bos_id}}, {"tokens", {bos}}}}}}};
  }

  ojson vocab = ojson::object();
  for (size_t id = 0; id < model.vocab.size(); ++id) vocab[model.vocab[id]] = id;
  ojson merges = ojson::array();
  for (const auto& [l, r] : model.merges) merges.push_back({l, r});

  ojson root = {
      {"version", "1.0"},
      {"truncation", nullptr},
      {"padding", nullptr},
      {"added_tokens", std::move(added)},
      {"normalizer", nullptr},
      {"pre_tokenizer",
       {{"type", "Sequence"},
        {"pretokenizers",
         {{{"type", "Split"}, {"pattern", {{"Regex", split_pattern}}}, {"behavior", "Isolated"}, {"invert", false}},
          {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", false}}}}}},
      {"post_processor", std::move(post)},
      {"decoder", {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}}},
      {"model",
       {{"type", "BPE"},
        {"dropout", nullptr},
        {"unk_token", nullptr},
        {"continuing_subword_prefix", nullptr},
        {"end_of_word_suffix", nullptr},
        {"fuse_unk", false},
        {"byte_fallback", false},
        {"ignore_merges", false},
        {"vocab", std::move(vocab)},
        {"merges", std::move(merges)}}}};
  return root.dump(1) + "\n";
}

}  // namespace bamba
