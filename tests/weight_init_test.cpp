// Fresh training weights (train/weight_init.h): each kind of tensor gets the distribution mamba_ssm gives it.
#include "train/weight_init.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "test_util.h"

namespace bamba {
namespace {

using test::host;

double stddev(const std::vector<float>& v) {
  double s = 0, s2 = 0;
  for (float x : v) s += x, s2 += double(x) * x;
  const double m = s / double(v.size());
  return std::sqrt(s2 / double(v.size()) - m * m);
}

TEST(WeightInit, EachTensorKindHasItsDistribution) {
  auto be = make_cpu_backend();
  ModelConfig c = dummy_config();
  ModelWeights w = init_weights(c, *be, 7);
  const double residual_std = 0.02 / std::sqrt(2.0 * double(c.num_hidden_layers));
  int seen_mamba = 0;
  for (const NamedTensor& p : hf_tensors(c, w)) {
    const std::vector<float> v = host(*be, p.t);
    const std::string& n = p.name;
    SCOPED_TRACE(n);
    auto is = [&](const char* suffix) { return n.size() >= strlen(suffix) && n.ends_with(suffix); };
    if (is("A_log")) {
      ++seen_mamba;
      for (float x : v) EXPECT_TRUE(x >= 0.f && x <= std::log(16.f));
    } else if (is(".D")) {
      for (float x : v) EXPECT_EQ(x, 1.f);
    } else if (is("dt_bias")) {
      for (float x : v) {
        const double dt = std::log1p(std::exp(double(x)));  // softplus
        EXPECT_GE(dt, 1e-3 * 0.999);
        EXPECT_LE(dt, 0.1 * 1.001);
      }
    } else if (n.find("conv1d") != std::string::npos) {
      for (float x : v) EXPECT_LE(std::fabs(x), 1.0 / std::sqrt(double(c.mamba_d_conv)));
    } else if (is("norm.weight")) {
      for (float x : v) EXPECT_EQ(x, 1.f);
    } else if (is("out_proj.weight") || is("o_proj.weight") || is("down_proj.weight")) {
      EXPECT_NEAR(stddev(v), residual_std, 0.1 * residual_std);
    } else if (p.shape.size() == 2) {
      EXPECT_NEAR(stddev(v), 0.02, 0.002);
    }
  }
  EXPECT_EQ(seen_mamba, c.n_mamba_layers());
  // Deterministic in the seed; another seed differs.
  ModelWeights again = init_weights(c, *be, 7), other = init_weights(c, *be, 8);
  EXPECT_EQ(host(*be, w.embed_tokens), host(*be, again.embed_tokens));
  EXPECT_NE(host(*be, w.embed_tokens), host(*be, other.embed_tokens));
}

}  // namespace
}  // namespace bamba
