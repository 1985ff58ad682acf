#include "eval/py_random.h"

#include <cmath>
#include <numbers>
#include <unordered_set>

#include "core/error.h"

namespace bamba::eval {

namespace {
constexpr int N = 624, M = 397;
}

void PyRandom::init_genrand(uint32_t s) {
  mt_[0] = s;
  for (mti_ = 1; mti_ < N; ++mti_) mt_[mti_] = 1812433253u * (mt_[mti_ - 1] ^ (mt_[mti_ - 1] >> 30)) + uint32_t(mti_);
}

PyRandom::PyRandom(uint64_t seed) {
  // Python splits abs(seed) into little-endian 32-bit words, at least one.
  uint32_t key[2] = {uint32_t(seed), uint32_t(seed >> 32)};
  int key_len = key[1] ? 2 : 1;
  init_genrand(19650218u);
  int i = 1, j = 0;
  for (int k = N > key_len ? N : key_len; k; --k) {
    mt_[i] = (mt_[i] ^ ((mt_[i - 1] ^ (mt_[i - 1] >> 30)) * 1664525u)) + key[j] + uint32_t(j);
    if (++i >= N) mt_[0] = mt_[N - 1], i = 1;
    if (++j >= key_len) j = 0;
  }
  for (int k = N - 1; k; --k) {
    mt_[i] = (mt_[i] ^ ((mt_[i - 1] ^ (mt_[i - 1] >> 30)) * 1566083941u)) - uint32_t(i);
    if (++i >= N) mt_[0] = mt_[N - 1], i = 1;
  }
  mt_[0] = 0x80000000u;
  mti_ = N;
}

uint32_t PyRandom::next_u32() {
  static constexpr uint32_t mag01[2] = {0u, 0x9908b0dfu};
  if (mti_ >= N) {
    int k = 0;
    uint32_t y;
    for (; k < N - M; ++k) {
      y = (mt_[k] & 0x80000000u) | (mt_[k + 1] & 0x7fffffffu);
      mt_[k] = mt_[k + M] ^ (y >> 1) ^ mag01[y & 1u];
    }
    for (; k < N - 1; ++k) {
      y = (mt_[k] & 0x80000000u) | (mt_[k + 1] & 0x7fffffffu);
      mt_[k] = mt_[k + (M - N)] ^ (y >> 1) ^ mag01[y & 1u];
    }
    y = (mt_[N - 1] & 0x80000000u) | (mt_[0] & 0x7fffffffu);
    mt_[N - 1] = mt_[M - 1] ^ (y >> 1) ^ mag01[y & 1u];
    mti_ = 0;
  }
  uint32_t y = mt_[mti_++];
  y ^= y >> 11;
  y ^= (y << 7) & 0x9d2c5680u;
  y ^= (y << 15) & 0xefc60000u;
  y ^= y >> 18;
  return y;
}

double PyRandom::random() {
  uint32_t a = next_u32() >> 5, b = next_u32() >> 6;
  return (a * 67108864.0 + b) * (1.0 / 9007199254740992.0);
}

double PyRandom::gauss() {
  if (has_gauss_next_) {
    has_gauss_next_ = false;
    return gauss_next_;
  }
  double x2pi = random() * (2 * std::numbers::pi);
  double g2rad = std::sqrt(-2.0 * std::log(1.0 - random()));
  gauss_next_ = std::sin(x2pi) * g2rad;
  has_gauss_next_ = true;
  return std::cos(x2pi) * g2rad;
}

uint32_t PyRandom::below(uint32_t n) {
  int k = 32 - __builtin_clz(n);  // n.bit_length()
  for (;;) {
    uint32_t r = next_u32() >> (32 - k);
    if (r < n) return r;
  }
}

std::vector<size_t> PyRandom::sample(size_t n, size_t k) {
  BAMBA_CHECK(k <= n && n < (size_t(1) << 32), "sample: ", k, " items asked of a population of ", n);
  std::vector<size_t> out(k);
  size_t setsize = 21;  // CPython: the size below which a list of n is cheaper than a set of k
  if (k > 5) setsize += size_t(std::pow(4.0, std::ceil(std::log(double(k * 3)) / std::log(4.0))));
  if (n <= setsize) {
    std::vector<size_t> pool(n);
    for (size_t i = 0; i < n; ++i) pool[i] = i;
    for (size_t i = 0; i < k; ++i) {
      const size_t j = below(uint32_t(n - i));
      out[i] = pool[j];
      pool[j] = pool[n - i - 1];
    }
  } else {
    std::unordered_set<size_t> selected;
    for (size_t i = 0; i < k; ++i) {
      size_t j = below(uint32_t(n));
      while (selected.count(j)) j = below(uint32_t(n));
      selected.insert(j);
      out[i] = j;
    }
  }
  return out;
}

std::vector<size_t> PyRandom::shuffle(size_t n) {
  std::vector<size_t> x(n);
  for (size_t i = 0; i < n; ++i) x[i] = i;
  for (size_t i = n; i-- > 1;) std::swap(x[i], x[below(uint32_t(i + 1))]);
  return x;
}

}  // namespace bamba::eval
