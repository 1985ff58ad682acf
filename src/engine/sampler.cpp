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
  const float mx_all = *std::max_element(logits.begin(), logits.end());
  if (p_.top_k == 0 && p_.top_p >= 1.f) {  // plain softmax sampling: no ordering needed
    double sum = 0;
    for (float l : logits) sum += std::exp(double(l - mx_all) / p_.temperature);
    double u = std::uniform_real_distribution<double>(0.0, sum)(rng_);
    for (int32_t i = 0; i < V; ++i) {
      const double q = std::exp(double(logits[size_t(i)] - mx_all) / p_.temperature);
      if (u < q) return i;
      u -= q;
    }
    return int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin());
  }
  // top-k / top-p: order only as much of the vocabulary as they need (a 128k sort per token is slow).
  cand_.resize(size_t(V));
  for (int32_t i = 0; i < V; ++i) cand_[size_t(i)] = {logits[size_t(i)], i};
  auto by_logit = [](const auto& a, const auto& b) { return a.first > b.first || (a.first == b.first && a.second < b.second); };
  auto weight = [&](size_t i) { return std::exp(double(cand_[i].first - mx_all) / p_.temperature); };
  const auto first = cand_.begin();
  size_t n = size_t(V);
  if (p_.top_k > 0 && p_.top_k < V) {
    n = size_t(p_.top_k);
    std::nth_element(first, first + long(n), cand_.end(), by_logit);  // the k best, unordered
  }
  double sum = 0;
  for (size_t i = 0; i < n; ++i) sum += weight(i);
  // The smallest prefix (best first) whose mass reaches top_p, sorting a growing prefix until it holds it.
  size_t keep = n;
  double kept = sum;
  if (p_.top_p < 1.f) {
    for (size_t k = std::min<size_t>(n, 256);; k = n) {  // peaked distributions end in the first round
      if (k < n) std::partial_sort(first, first + long(k), first + long(n), by_logit);
      else std::sort(first, first + long(n), by_logit);  // heap-based partial_sort is slow on everything
      double cum = 0;
      size_t i = 0;
      while (i < k && cum < p_.top_p * sum) cum += weight(i++);
      if (cum >= p_.top_p * sum || k == n) {
        keep = i;
        kept = cum;
        break;
      }
    }
  }
  double u = std::uniform_real_distribution<double>(0.0, kept)(rng_);
  for (size_t i = 0; i < keep; ++i) {
    const double w = weight(i);
    if (u < w) return cand_[i].second;
    u -= w;
  }
  return cand_[keep - 1].second;
}

}  // namespace bamba
