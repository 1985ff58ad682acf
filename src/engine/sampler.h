// Sampler: picks the next token from a row of logits: greedy (temperature 0), or temperature + top-k + top-p
// sampling with a seeded generator, so a seed reproduces a run.
#pragma once
#include <cstdint>
#include <random>
#include <span>
#include <vector>

namespace bamba {

struct SamplingParams {
  float temperature = 0.f;  // 0 = greedy
  int32_t top_k = 0;        // 0 = off
  float top_p = 1.f;        // 1 = off
  uint64_t seed = 0;
};

class Sampler {
 public:
  explicit Sampler(const SamplingParams& p);
  int32_t sample(std::span<const float> logits);

 private:
  SamplingParams p_;
  std::mt19937_64 rng_;
  std::vector<std::pair<float, int32_t>> cand_;  // reused: (logit, id)
};

}  // namespace bamba
