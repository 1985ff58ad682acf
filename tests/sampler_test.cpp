// Backend::sample on the CPU (the oracle the GPU sampler is compared with): greedy, top-k and top-p supports,
// frequencies that follow the softmax at the temperature, and determinism per seed.
#include <gtest/gtest.h>

#include <cmath>
#include <map>

#include "backend/backend.h"
#include "core/error.h"
#include "core/hash_uniform.h"

namespace bamba {
namespace {

struct Fixture {
  std::unique_ptr<Backend> be = make_cpu_backend();
  int32_t draw(const std::vector<float>& logits, SamplingParams p) {
    Tensor t = be->alloc(DType::F32, {1, int64_t(logits.size())});
    be->from_host_f32(t, logits.data());
    int32_t out = -1;
    be->sample(t, std::span(&p, 1), &out);
    be->release(t);
    return out;
  }
};

TEST(Sampling, GreedyIsTheFirstArgmax) {
  Fixture f;
  std::vector<float> l = {0.1f, 3.f, -1.f, 3.f};
  EXPECT_EQ(f.draw(l, {0.f, 0, 1.f, 1}), 1);
  EXPECT_EQ(f.draw(l, {1.f, 1, 1.f, 1}), 1);  // top-k 1 is greedy at any temperature
}

TEST(Sampling, SameSeedSameDrawAndTopKTopPRestrictTheSupport) {
  Fixture f;
  std::vector<float> l = {2.f, 1.5f, 1.f, 0.f, -1.f, -3.f};
  for (uint64_t s = 0; s < 50; ++s) EXPECT_EQ(f.draw(l, {1.f, 0, 1.f, s}), f.draw(l, {1.f, 0, 1.f, s}));
  for (uint64_t s = 0; s < 200; ++s) EXPECT_LT(f.draw(l, {1.f, 2, 1.f, splitmix64(s)}), 2);
  // p(0) = 0.45, p(1) = 0.27: top_p 0.5 keeps tokens 0 and 1 only.
  std::map<int32_t, int> seen;
  for (uint64_t s = 0; s < 400; ++s) seen[f.draw(l, {1.f, 0, 0.5f, splitmix64(s)})]++;
  EXPECT_EQ(seen.size(), 2u);
  EXPECT_GT(seen[0], seen[1]);
}

TEST(Sampling, FrequenciesFollowTheSoftmax) {
  Fixture f;
  std::vector<float> l = {0.f, std::log(3.f)};  // p = 1/4, 3/4
  const int n = 20000;
  int ones = 0;
  for (int i = 0; i < n; ++i) ones += f.draw(l, {1.f, 0, 1.f, splitmix64(uint64_t(i))});
  EXPECT_NEAR(double(ones) / n, 0.75, 0.015);
  ones = 0;  // temperature 1/4: p ∝ 1, 81
  for (int i = 0; i < n; ++i) ones += f.draw(l, {0.25f, 0, 1.f, splitmix64(uint64_t(i))});
  EXPECT_NEAR(double(ones) / n, 81.0 / 82.0, 0.01);
}

TEST(Sampling, RejectsBadParameters) {
  EXPECT_THROW(check_sampling({-1.f, 0, 1.f, 0}), Error);
  EXPECT_THROW(check_sampling({1.f, 0, 0.f, 0}), Error);
  EXPECT_THROW(check_sampling({1.f, -2, 1.f, 0}), Error);
  EXPECT_NO_THROW(check_sampling({0.7f, 40, 0.9f, 0}));
}

}  // namespace
}  // namespace bamba
