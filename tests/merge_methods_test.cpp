// The per-tensor formulas of each merge method, on hand-sized inputs whose answers are worked out here.
#include "merge/merge_methods.h"

#include <gtest/gtest.h>

#include <cmath>
#include <numeric>
#include <random>

#include "core/error.h"

using namespace bamba;

namespace {

using Vec = std::vector<float>;

Vec linear(const std::vector<Vec>& xs, std::vector<double> w, bool normalize) {
  std::vector<std::span<const float>> s(xs.begin(), xs.end());
  Vec out(xs[0].size());
  merge_linear(s, w, normalize, out);
  return out;
}

Vec slerp(double t, const Vec& a, const Vec& b) {
  Vec out(a.size());
  merge_slerp(t, a, b, out);
  return out;
}

Vec task_vectors(const Vec& base, const std::vector<Vec>& deltas, std::vector<double> w, TaskVectorOptions opt) {
  std::vector<std::span<const float>> s(deltas.begin(), deltas.end());
  Vec out(base.size());
  merge_task_vectors(base, s, w, opt, out);
  return out;
}

double norm(const Vec& v) {
  double s = 0;
  for (float x : v) s += double(x) * x;
  return std::sqrt(s);
}

Vec random_vec(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d;
  Vec v(n);
  for (float& x : v) x = d(rng);
  return v;
}

}  // namespace

TEST(MergeLinear, WeightedSumWithoutNormalize) {
  Vec out = linear({{1, 2, -3}, {10, 20, 30}}, {0.5, 2}, false);
  EXPECT_EQ(out, (Vec{20.5f, 41, 58.5f}));
}

TEST(MergeLinear, NormalizeDividesByTheWeightSum) {
  Vec out = linear({{1, 2, -3}, {10, 20, 30}}, {1, 3}, true);
  EXPECT_FLOAT_EQ(out[0], (1 + 30) / 4.0f);
  EXPECT_FLOAT_EQ(out[1], (2 + 60) / 4.0f);
  EXPECT_FLOAT_EQ(out[2], (-3 + 90) / 4.0f);
  // Normalizing makes the weights relative: scaling them all changes nothing.
  EXPECT_EQ(out, linear({{1, 2, -3}, {10, 20, 30}}, {2, 6}, true));
}

TEST(MergeLinear, NormalizingWeightsThatSumToZeroIsAnError) {
  EXPECT_THROW(linear({{1}, {2}}, {1, -1}, true), Error);
  EXPECT_EQ(linear({{1}, {2}}, {1, -1}, false), Vec{-1});
}

TEST(MergeLinear, ModelWithItselfComesBackWithin1e6) {
  Vec x = random_vec(10000, 1);
  for (auto [w0, w1] : {std::pair{0.3, 0.7}, {0.25, 0.75}, {0.9, 0.1}}) {
    Vec out = linear({x, x}, {w0, w1}, false);
    for (size_t j = 0; j < x.size(); ++j) ASSERT_NEAR(out[j], x[j], 1e-6 * std::fabs(x[j])) << j;
  }
}

TEST(MergeSlerp, EndpointsAreTheInputs) {
  Vec a = random_vec(1000, 2), b = random_vec(1000, 3);
  EXPECT_EQ(slerp(0, a, b), a);
  EXPECT_EQ(slerp(1, a, b), b);
}

TEST(MergeSlerp, HalfwayBetweenOrthogonalUnitVectors) {
  // The great-circle midpoint of e0 and e1 is (e0 + e1) / sqrt(2), not the chord midpoint (e0 + e1) / 2.
  Vec out = slerp(0.5, {1, 0}, {0, 1});
  EXPECT_NEAR(out[0], std::sqrt(0.5), 1e-7);
  EXPECT_NEAR(out[1], std::sqrt(0.5), 1e-7);
}

TEST(MergeSlerp, FollowsTheArcBetweenEqualNorms) {
  // For inputs of equal norm r at angle theta, slerp(t) has norm r and makes angle t * theta with a.
  Vec a = {3, 0, 0}, b = {0, 3 * std::cos(0.3f), 3 * std::sin(0.3f)};
  double theta = std::acos(0.0);  // a and b are orthogonal
  for (double t : {0.1, 0.5, 0.8}) {
    Vec out = slerp(t, a, b);
    EXPECT_NEAR(norm(out), 3.0, 1e-5) << t;
    EXPECT_NEAR(std::acos(out[0] / norm(out)), t * theta, 1e-5) << t;
  }
}

TEST(MergeSlerp, GeneralAngleMatchesTheClosedForm) {
  Vec a = random_vec(4096, 4), b = random_vec(4096, 5);
  double dot = 0;
  for (size_t j = 0; j < a.size(); ++j) dot += double(a[j]) * b[j];
  double th = std::acos(dot / (norm(a) * norm(b))), t = 0.3;
  Vec out = slerp(t, a, b);
  double s0 = std::sin((1 - t) * th) / std::sin(th), s1 = std::sin(t * th) / std::sin(th);
  for (size_t j = 0; j < a.size(); ++j) ASSERT_NEAR(out[j], s0 * a[j] + s1 * b[j], 1e-5) << j;
}

TEST(MergeSlerp, NearlyParallelFallsBackToLerp) {
  // |cos| > 0.9995: the spherical weights would divide by sin(theta) ~ 0, so it is the straight line instead.
  Vec a = random_vec(1000, 6), b = a;
  for (size_t j = 0; j < b.size(); ++j) b[j] = 2 * a[j] + 1e-4f * float(j % 7);  // same direction, twice as long
  for (double t : {0.0, 0.25, 0.5, 1.0}) {
    Vec out = slerp(t, a, b);
    for (size_t j = 0; j < a.size(); ++j) ASSERT_EQ(out[j], float(1 - t) * a[j] + float(t) * b[j]) << t << " " << j;
  }
  // Antiparallel counts as colinear too.
  Vec neg = a;
  for (float& x : neg) x = -x;
  Vec out = slerp(0.5, a, neg);
  for (size_t j = 0; j < a.size(); ++j) ASSERT_EQ(out[j], 0.5f * a[j] + 0.5f * neg[j]);
}

TEST(MergeSlerp, ZeroTensorIsNotNormalized) {
  // A zero vector has norm <= eps and is used as it is; its dot product with anything is 0 (orthogonal).
  Vec out = slerp(0.5, {0, 0}, {2, 0});
  EXPECT_NEAR(out[0], 2 * std::sin(M_PI / 4), 1e-6);
  EXPECT_EQ(out[1], 0);
}

TEST(SparsifyMagnitude, KeepsTheLargestMagnitudes) {
  Vec d = {0.1f, -5, 3, -0.2f, 4, 0};
  sparsify_magnitude(d, 0.5, false);  // keeps int(0.5 * 6) = 3
  EXPECT_EQ(d, (Vec{0, -5, 3, 0, 4, 0}));
}

TEST(SparsifyMagnitude, TiesAtTheThresholdAreKeptInPositionOrder) {
  Vec d = {1, -2, 2, 2, 0.5f};
  sparsify_magnitude(d, 0.4, false);  // k = 2 of three entries with |x| = 2
  EXPECT_EQ(d, (Vec{0, -2, 2, 0, 0}));
}

TEST(SparsifyMagnitude, DensityOneLeavesTheTensorAlone) {
  Vec d = {1, -2, 3};
  sparsify_magnitude(d, 1.0, true);
  EXPECT_EQ(d, (Vec{1, -2, 3}));
}

TEST(SparsifyMagnitude, RescaleRestoresTheL1Norm) {
  Vec d = {1, -2, 3, -4};  // L1 10; keeping {3, -4} leaves 7
  sparsify_magnitude(d, 0.5, true);
  EXPECT_FLOAT_EQ(d[2], 3 * 10.0f / 7);
  EXPECT_FLOAT_EQ(d[3], -4 * 10.0f / 7);
  EXPECT_EQ(d[0], 0);
}

TEST(SparsifyMagnitude, DensityThatKeepsNothingIsAnError) {
  Vec d = {1, 2, 3};
  EXPECT_THROW(sparsify_magnitude(d, 0.2, false), Error);  // int(0.6) = 0
}

TEST(SparsifyRandom, SameSeedSameMaskOtherSeedOtherMask) {
  Vec x = random_vec(5000, 7), a = x, b = x, c = x;
  sparsify_random(a, 0.5, true, 42);
  sparsify_random(b, 0.5, true, 42);
  sparsify_random(c, 0.5, true, 43);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
}

TEST(SparsifyRandom, KeepsAboutDensityOfTheEntries) {
  const size_t n = 200000;
  for (double p : {0.1, 0.3, 0.9}) {
    Vec d(n, 1.0f);
    sparsify_random(d, p, false, 1234);
    size_t kept = 0;
    for (float x : d) {
      ASSERT_TRUE(x == 0 || x == 1);  // without rescale the survivors are untouched
      kept += x != 0;
    }
    // Binomial(n, p): 5 standard deviations is a bound a correct sampler misses about once in 3 million runs.
    double sd = std::sqrt(n * p * (1 - p));
    EXPECT_NEAR(double(kept), n * p, 5 * sd) << "density " << p;
  }
}

TEST(SparsifyRandom, RescaleRestoresTheL1NormAndTheMeanInExpectation) {
  Vec x = random_vec(100000, 8), d = x;
  sparsify_random(d, 0.3, true, 99);
  double l1x = 0, l1d = 0, sx = 0, sd = 0;
  for (size_t j = 0; j < x.size(); ++j) l1x += std::fabs(x[j]), l1d += std::fabs(d[j]), sx += x[j], sd += d[j];
  EXPECT_NEAR(l1d, l1x, 1e-5 * l1x);
  // Each survivor is scaled by about 1 / density, so the sum is unbiased: within a few standard deviations.
  double var = 0;
  for (float v : x) var += double(v) * v * (1 - 0.3) / 0.3;
  EXPECT_NEAR(sd, sx, 5 * std::sqrt(var));
  // One common factor for all survivors, about 1 / density.
  double factor = 0;
  for (size_t j = 0; j < x.size(); ++j)
    if (d[j] != 0) {
      if (factor == 0) factor = double(d[j]) / x[j];
      ASSERT_NEAR(double(d[j]) / x[j], factor, 1e-6 * factor) << j;
    }
  EXPECT_NEAR(factor, 1 / 0.3, 0.05);
}

TEST(SparsifyRandom, DensityOneKeepsEverythingAndZeroDropsEverything) {
  Vec x = random_vec(100, 9), d = x;
  sparsify_random(d, 1.0, true, 1);
  EXPECT_EQ(d, x);
  sparsify_random(d, 0.0, true, 1);
  EXPECT_EQ(d, Vec(100, 0.0f));
}

TEST(MergeTaskVectors, TaskArithmeticAddsTheWeightedDeltas) {
  Vec base = {1, 1, 1};
  Vec out = task_vectors(base, {{1, 0, -1}, {2, 2, 2}}, {0.5, 0.25}, {});
  EXPECT_EQ(out, (Vec{1 + 0.5f + 0.5f, 1 + 0 + 0.5f, 1 - 0.5f + 0.5f}));
  // normalize divides by the weight sum, lambda scales the result.
  out = task_vectors(base, {{1, 0, -1}, {2, 2, 2}}, {0.5, 0.25}, {false, true, 2.0});
  EXPECT_FLOAT_EQ(out[0], 1 + 2 * (1.0f / 0.75f));
  EXPECT_FLOAT_EQ(out[1], 1 + 2 * (0.5f / 0.75f));
}

TEST(MergeTaskVectors, TiesElectsASignAndAveragesTheAgreeingDeltas) {
  // Three task vectors, weight 1 each, already trimmed. Entry by entry:
  //  0: deltas 2, -1, 0   -> sum +1, elected +; only 2 agrees         -> mean over weight 1: 2
  //  1: deltas -3, 1, 1   -> sum -1, elected -; only -3 agrees        -> -3
  //  2: deltas 1, -1, 0   -> sum 0 counts as +; 1 agrees              -> 1
  //  3: deltas 0, 0, 0    -> nothing agrees; divisor 0 becomes 1      -> 0
  //  4: deltas 2, 4, -1   -> sum +5; 2 and 4 agree, weights 1 + 1     -> 3
  Vec base = {10, 10, 10, 10, 10};
  std::vector<Vec> d = {{2, -3, 1, 0, 2}, {-1, 1, -1, 0, 4}, {0, 1, 0, 0, -1}};
  Vec out = task_vectors(base, d, {1, 1, 1}, {true, true, 1.0});
  EXPECT_EQ(out, (Vec{12, 7, 11, 10, 13}));
  // Without normalize the agreeing deltas are summed, not averaged.
  out = task_vectors(base, d, {1, 1, 1}, {true, false, 1.0});
  EXPECT_EQ(out, (Vec{12, 7, 11, 10, 16}));
}

TEST(MergeTaskVectors, TiesVotesWithTheWeightedDeltas) {
  // A heavier weight can outvote: 0.25 * 3 < 1 * 1 -> elected sign is +; the divisor counts agreeing weights.
  Vec out = task_vectors({0}, {{-3}, {1}}, {0.25, 1}, {true, true, 1.0});
  EXPECT_EQ(out, Vec{1});
}

TEST(MergeTaskVectors, DareTiesIsDropRescaleThenTies) {
  // dare_ties = sparsify_random on each delta, then the TIES combination: composing the two by hand gives the
  // same result, and with a fixed seed it is the same every time.
  Vec base = random_vec(2000, 10), m1 = random_vec(2000, 11), m2 = random_vec(2000, 12);
  Vec d1(2000), d2(2000);
  for (size_t j = 0; j < base.size(); ++j) d1[j] = m1[j] - base[j], d2[j] = m2[j] - base[j];
  Vec s1 = d1, s2 = d2;
  sparsify_random(s1, 0.5, true, 1);
  sparsify_random(s2, 0.7, true, 2);
  Vec out = task_vectors(base, {s1, s2}, {0.6, 0.4}, {true, false, 1.0});
  for (size_t j = 0; j < base.size(); ++j) {
    float w1 = 0.6f * s1[j], w2 = 0.4f * s2[j];
    int elected = w1 + w2 >= 0 ? 1 : -1;
    float mixed = 0;
    if ((w1 > 0) - (w1 < 0) == elected) mixed += w1;
    if ((w2 > 0) - (w2 < 0) == elected) mixed += w2;
    ASSERT_EQ(out[j], base[j] + mixed) << j;
  }
  Vec again1 = d1;
  sparsify_random(again1, 0.5, true, 1);
  EXPECT_EQ(again1, s1);
}
