// DocPermutation: a seeded bijection of [0, n) computed one index at a time, so that a loader visits the documents
// of a dataset in a shuffled order without building (or saving) an index of n entries. fms-fsdp does the same
// with a rejection-sampled LCG; here a 4-round balanced Feistel network over the smallest power of 4 that holds n,
// with cycle walking: an output at or above n is fed back in until it lands below n. A Feistel network is a
// bijection of its 2^(2h) words whatever its round function, and cycle walking restricts a bijection to [0, n)
// (the walk from a value below n returns below n before it can revisit one), so every document comes exactly
// once per epoch. The domain is less than 4n, so a walk takes under 4 rounds on average.
#pragma once
#include <cstdint>

#include "core/hash_uniform.h"  // splitmix64

namespace bamba {

class DocPermutation {
 public:
  DocPermutation(uint64_t n, uint64_t seed) : n_(n) {
    while ((uint64_t(1) << (2 * half_bits_)) < n) ++half_bits_;
    mask_ = (uint64_t(1) << half_bits_) - 1;
    for (int r = 0; r < kRounds; ++r) keys_[r] = splitmix64(seed ^ splitmix64(uint64_t(r) + 0x9e3779b97f4a7c15ull));
  }

  uint64_t size() const { return n_; }

  // The document visited at ordinal i (i < n).
  uint64_t operator()(uint64_t i) const {
    do i = feistel(i);
    while (i >= n_);
    return i;
  }

 private:
  static constexpr int kRounds = 4;

  uint64_t feistel(uint64_t x) const {
    uint64_t left = x >> half_bits_, right = x & mask_;
    for (int r = 0; r < kRounds; ++r) {
      const uint64_t next = left ^ (splitmix64(right ^ keys_[r]) & mask_);
      left = right;
      right = next;
    }
    return (left << half_bits_) | right;
  }

  uint64_t n_;
  int half_bits_ = 1;  // at least 2 bits in all, so that n = 1 and n = 2 work like any other n
  uint64_t mask_ = 1;
  uint64_t keys_[kRounds] = {};
};

}  // namespace bamba
