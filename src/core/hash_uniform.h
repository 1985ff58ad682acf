// Counter-based uniform numbers: element i of a generated tensor depends only on (seed, i), so the CPU and GPU
// backends produce bit-identical dummy weights without sharing an RNG stream.
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define BAMBA_HD __host__ __device__
#else
#define BAMBA_HD
#endif

namespace bamba {

BAMBA_HD inline uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// Uniform in [lo, hi) from the top 24 bits (exactly representable in fp32).
BAMBA_HD inline float hash_uniform(uint64_t seed, uint64_t i, float lo, float hi) {
  uint64_t r = splitmix64(seed * 0x100000001b3ull ^ splitmix64(i));
  float u = float(r >> 40) * (1.0f / 16777216.0f);
  return lo + (hi - lo) * u;
}

}  // namespace bamba
