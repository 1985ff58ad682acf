// PyRandom: CPython's random.Random, bit for bit, for the calls langdetect makes (seed with an int, random(),
// gauss(), choice() via _randbelow). std::mt19937 is the same generator but seeds differently (Python uses the
// reference init_by_array on the seed's 32-bit words) and the standard library's distributions are not Python's.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

namespace bamba::eval {

class PyRandom {
 public:
  explicit PyRandom(uint64_t seed);  // random.seed(seed) for a non-negative int

  uint32_t next_u32();                // genrand_uint32
  double random();                    // 53-bit float in [0, 1)
  double gauss();                     // random.gauss(0, 1): Box-Muller, the second value kept for the next call
  uint32_t below(uint32_t n);         // _randbelow(n) for n >= 1: getrandbits(bit_length(n)) until < n
  // Random.sample(range(n), k): the chosen indices in draw order, with CPython's choice between its pool and
  // set strategies (they consume the generator differently). lm-eval's few-shot sampler is this call.
  std::vector<size_t> sample(size_t n, size_t k);
  // Random.shuffle on the identity permutation of n items: out[i] = the original index now at position i.
  std::vector<size_t> shuffle(size_t n);

 private:
  void init_genrand(uint32_t s);
  uint32_t mt_[624];
  int mti_ = 625;
  double gauss_next_ = 0;
  bool has_gauss_next_ = false;
};

}  // namespace bamba::eval
