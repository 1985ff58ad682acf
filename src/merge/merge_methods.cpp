#include "merge/merge_methods.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <random>

#include "core/error.h"

namespace bamba {

void merge_linear(const std::vector<std::span<const float>>& xs, std::span<const double> weights, bool normalize,
                  std::span<float> out) {
  BAMBA_CHECK(xs.size() == weights.size() && !xs.empty(), "linear: ", xs.size(), " tensors but ", weights.size(),
              " weights");
  // fp32 throughout, like MergeKit's (weights * tensors).sum(0) on fp32 tensors.
  float wsum = 0;
  for (double w : weights) wsum += float(w);
  if (normalize && wsum == 0)
    fail("linear with normalize: the weights sum to 0, so the weighted sum cannot be divided by them");
  std::fill(out.begin(), out.end(), 0.0f);
  for (size_t i = 0; i < xs.size(); ++i) {
    const float w = float(weights[i]);
    const float* x = xs[i].data();
    for (size_t j = 0; j < out.size(); ++j) out[j] += w * x[j];
  }
  if (normalize)
    for (float& v : out) v /= wsum;
}

void merge_slerp(double t, std::span<const float> a, std::span<const float> b, std::span<float> out) {
  // MergeKit's constants: directions closer than this are "colinear", norms at or below eps are not normalized.
  constexpr double kDotThreshold = 0.9995, kEps = 1e-8;
  double aa = 0, bb = 0, ab = 0;  // fp64 sums: the dot product of two large tensors needs them
  for (size_t j = 0; j < a.size(); ++j) {
    aa += double(a[j]) * a[j];
    bb += double(b[j]) * b[j];
    ab += double(a[j]) * b[j];
  }
  double na = std::sqrt(aa), nb = std::sqrt(bb);
  double dot = ab / ((na > kEps ? na : 1.0) * (nb > kEps ? nb : 1.0));
  if (std::fabs(dot) > kDotThreshold) {
    const float s0 = float(1 - t), s1 = float(t);
    for (size_t j = 0; j < a.size(); ++j) out[j] = s0 * a[j] + s1 * b[j];
    return;
  }
  double theta0 = std::acos(dot), sin0 = std::sin(theta0), theta_t = theta0 * t;
  double s0 = std::sin(theta0 - theta_t) / sin0, s1 = std::sin(theta_t) / sin0;
  for (size_t j = 0; j < a.size(); ++j) out[j] = float(s0 * a[j] + s1 * b[j]);
}

namespace {

double l1(std::span<const float> v) {
  double s = 0;
  for (float x : v) s += std::fabs(x);
  return s;
}

// MergeKit's rescaled_masked_tensor with the L1 norm: undo the shrinking that dropping entries caused, unless
// either norm is too small to divide by.
void rescale_l1(std::span<float> masked, double before) {
  constexpr double kEps = 1e-7;
  double after = l1(masked);
  if (before < kEps || after < kEps) return;
  const float s = float(before / after);
  for (float& x : masked) x *= s;
}

}  // namespace

void sparsify_magnitude(std::span<float> delta, double density, bool rescale, std::span<float> scratch) {
  if (density >= 1 || delta.empty()) return;
  const size_t n = delta.size(), k = size_t(density * double(n));  // Python's int(): truncation
  if (k == 0)
    fail("density ", density, " keeps no entry of a tensor of ", n,
         " elements (int(density * n) = 0); MergeKit "
         "refuses this too: raise density");
  const double before = rescale ? l1(delta) : 0;
  // The k-th largest magnitude is the threshold; entries equal to it are kept in order of position until k are
  // kept, so the result does not depend on the sort.
  std::vector<float> own;
  if (scratch.size() < n) own.resize(n), scratch = own;
  std::span<float> mag = scratch.first(n);
  for (size_t j = 0; j < n; ++j) mag[j] = std::isnan(delta[j]) ? INFINITY : std::fabs(delta[j]);
  std::nth_element(mag.begin(), mag.begin() + ptrdiff_t(k - 1), mag.end(), std::greater<float>());
  const float thr = mag[k - 1];
  size_t above = 0;
  for (size_t j = 0; j < n; ++j) above += std::fabs(delta[j]) > thr || std::isnan(delta[j]);
  size_t ties = k - std::min(k, above);
  for (float& x : delta) {
    float a = std::fabs(x);
    if (a > thr || std::isnan(x)) continue;
    if (a == thr && ties > 0) {
      --ties;
      continue;
    }
    x = 0;
  }
  if (rescale) rescale_l1(delta, before);
}

void sparsify_random(std::span<float> delta, double density, bool rescale, uint64_t seed) {
  if (density >= 1) return;
  BAMBA_CHECK(density >= 0, "density ", density, " is negative (expected a keep-probability in [0, 1])");
  const double before = rescale ? l1(delta) : 0;
  std::mt19937_64 rng(seed);
  for (float& x : delta) {
    // 53 random bits -> uniform in [0, 1); spelled out so the mask does not depend on the library's
    // generate_canonical.
    double u = double(rng() >> 11) * 0x1.0p-53;
    if (!(u < density)) x = 0;
  }
  if (rescale) rescale_l1(delta, before);
}

void merge_task_vectors(std::span<const float> base, const std::vector<std::span<const float>>& deltas,
                        std::span<const double> weights, const TaskVectorOptions& opt, std::span<float> out) {
  BAMBA_CHECK(deltas.size() == weights.size(), "task vectors: ", deltas.size(), " deltas but ", weights.size(),
              " weights");
  const size_t m = deltas.size();
  std::vector<float> w(m);
  float wsum = 0;
  for (size_t i = 0; i < m; ++i) wsum += w[i] = float(weights[i]);
  // Without sign consensus the divisor is the same for every entry; a near-zero one is replaced by 1.
  const float plain_div = std::fabs(wsum) < 1e-8f ? 1.0f : wsum;
  const float lambda = float(opt.lambda);
  for (size_t j = 0; j < base.size(); ++j) {
    float mixed = 0, div = 0;
    if (opt.sign_consensus) {
      // Elect the sign of the summed weighted deltas (0 counts as +), keep only the deltas of that sign (a zero,
      // i.e. trimmed or dropped, delta has no sign and is left out of the divisor too).
      float total = 0;
      for (size_t i = 0; i < m; ++i) total += w[i] * deltas[i][j];
      const int elected = total >= 0 ? 1 : -1;
      for (size_t i = 0; i < m; ++i) {
        const float wd = w[i] * deltas[i][j];
        if ((wd > 0) - (wd < 0) == elected) mixed += wd, div += w[i];
      }
      if (div == 0) div = 1;
    } else {
      for (size_t i = 0; i < m; ++i) mixed += w[i] * deltas[i][j];
      div = plain_div;
    }
    if (opt.normalize) mixed /= div;
    if (opt.lambda != 1) mixed *= lambda;
    out[j] = base[j] + mixed;
  }
}

}  // namespace bamba
