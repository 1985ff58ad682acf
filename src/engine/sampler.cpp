#include "engine/sampler.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace bamba {

Sampler::Sampler(const SamplingParams& p) : p_(p), rng_(p.seed) {
  BAMBA_CHECK(p.temperature >= 0 && std::isfinite(p.temperature), "temperature must be >= 0 (got ", p.temperature, ")");
  BAMBA_CHECK(p.top_p > 0 && p.top_p <= 1, "top_p must be in (0, 1] (got ", p.top_p, ")");
  BAMBA_CHECK(p.top_k >= 0, "top_k must be >= 0 (got ", p.top_k, ")");
}

int32_t Sampler::sample(std::span<const float> logits) {
  const int32_t V = int32_t(logits.size());
  if (p_.temperature == 0.f || p_.top_k == 1)
    return int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin());  // first max, like argmax
  cand_.resize(size_t(V));
  for (int32_t i = 0; i < V; ++i) cand_[size_t(i)] = {logits[size_t(i)], i};
  auto by_logit = [](const auto& a, const auto& b) { return a.first > b.first || (a.first == b.first && a.second < b.second); };
  size_t n = size_t(V);
  if (p_.top_k > 0 && p_.top_k < V) {
    n = size_t(p_.top_k);
    std::partial_sort(cand_.begin(), cand_.begin() + long(n), cand_.end(), by_logit);
  } else {
    std::sort(cand_.begin(), cand_.end(), by_logit);
  }
  // Softmax at the temperature over the kept candidates, then the smallest prefix whose mass reaches top_p.
  const float mx = cand_[0].first;
  std::vector<double> prob(n);
  double sum = 0;
  for (size_t i = 0; i < n; ++i) sum += prob[i] = std::exp(double(cand_[i].first - mx) / p_.temperature);
  size_t keep = n;
  if (p_.top_p < 1.f) {
    double cum = 0;
    for (size_t i = 0; i < n; ++i) {
      cum += prob[i] / sum;
      if (cum >= p_.top_p) {
        keep = i + 1;
        break;
      }
    }
  }
  double kept = 0;
  for (size_t i = 0; i < keep; ++i) kept += prob[i];
  double u = std::uniform_real_distribution<double>(0.0, kept)(rng_);
  for (size_t i = 0; i < keep; ++i) {
    if (u < prob[i]) return cand_[i].second;
    u -= prob[i];
  }
  return cand_[keep - 1].second;
}

}  // namespace bamba
