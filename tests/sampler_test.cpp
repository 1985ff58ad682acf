#include <gtest/gtest.h>

#include <map>

#include "core/error.h"
#include "engine/sampler.h"

namespace bamba {
namespace {

TEST(Sampler, GreedyIsTheFirstArgmax) {
  Sampler s({0.f, 0, 1.f, 1});
  std::vector<float> l = {0.1f, 3.f, -1.f, 3.f};
  EXPECT_EQ(s.sample(l), 1);
  Sampler k1({1.f, 1, 1.f, 1});  // top-k 1 is greedy at any temperature
  EXPECT_EQ(k1.sample(l), 1);
}

TEST(Sampler, SameSeedSameDrawsAndTopKTopPRestrictTheSupport) {
  std::vector<float> l = {2.f, 1.5f, 1.f, 0.f, -1.f, -3.f};
  Sampler a({1.f, 0, 1.f, 42}), b({1.f, 0, 1.f, 42});
  for (int i = 0; i < 50; ++i) EXPECT_EQ(a.sample(l), b.sample(l));
  Sampler k({1.f, 2, 1.f, 3});
  for (int i = 0; i < 200; ++i) EXPECT_LT(k.sample(l), 2);
  // p(0) = 0.45, p(1) = 0.27: top_p 0.5 keeps tokens 0 and 1 only.
  Sampler p({1.f, 0, 0.5f, 5});
  std::map<int32_t, int> seen;
  for (int i = 0; i < 400; ++i) seen[p.sample(l)]++;
  EXPECT_EQ(seen.size(), 2u);
  EXPECT_GT(seen[0], seen[1]);
}

TEST(Sampler, FrequenciesFollowTheSoftmax) {
  std::vector<float> l = {0.f, std::log(3.f)};  // p = 1/4, 3/4
  Sampler s({1.f, 0, 1.f, 9});
  int ones = 0;
  const int n = 20000;
  for (int i = 0; i < n; ++i) ones += s.sample(l);
  EXPECT_NEAR(double(ones) / n, 0.75, 0.015);
  Sampler cold({0.25f, 0, 1.f, 9});  // temperature 1/4: p ∝ 1, 81
  ones = 0;
  for (int i = 0; i < n; ++i) ones += cold.sample(l);
  EXPECT_NEAR(double(ones) / n, 81.0 / 82.0, 0.01);
}

TEST(Sampler, RejectsBadParameters) {
  EXPECT_THROW(Sampler({-1.f, 0, 1.f, 0}), Error);
  EXPECT_THROW(Sampler({1.f, 0, 0.f, 0}), Error);
  EXPECT_THROW(Sampler({1.f, -2, 1.f, 0}), Error);
}

}  // namespace
}  // namespace bamba
