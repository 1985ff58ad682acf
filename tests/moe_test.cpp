// The CPU twin's mixture-of-experts ops on hand-checked cases: the two routers (including Nemotron-H's group
// selection, which the tiny fixture with n_group = 1 does not reach) and the grouped expert MLP against a
// token-by-token evaluation of its definition.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>

#include "backend/backend.h"

namespace bamba {
namespace {

struct Routed {
  std::vector<int32_t> experts;
  std::vector<float> weights;
};

Routed route(Backend& be, const std::vector<float>& logits, int64_t T, const MoeOpsConfig& c, const std::vector<float>& bias = {}) {
  Tensor lg = be.alloc(DType::F32, {T, c.n_experts}), ex = be.alloc(DType::I32, {T, c.top_k}),
         w = be.alloc(DType::F32, {T, c.top_k}), b;
  be.from_host_f32(lg, logits.data());
  if (!bias.empty()) {
    b = be.alloc(DType::F32, {c.n_experts});
    be.from_host_f32(b, bias.data());
  }
  be.moe_route(ex, w, lg, b, c);
  Routed r{std::vector<int32_t>(size_t(T * c.top_k)), std::vector<float>(size_t(T * c.top_k))};
  std::memcpy(r.experts.data(), ex.data, r.experts.size() * 4);
  be.to_host_f32(w, r.weights.data());
  return r;
}

float logit_of(float s) { return std::log(s / (1.f - s)); }

TEST(Moe, SoftmaxOverTheTopK) {
  auto be = make_cpu_backend();
  const MoeOpsConfig c{4, 2, MoeRouting::SoftmaxTopK};
  Routed r = route(*be, {1.f, 3.f, 2.f, 0.f, /* ties: lower index first */ 5.f, 5.f, 5.f, -1.f}, 2, c);
  EXPECT_EQ(r.experts, (std::vector<int32_t>{1, 2, 0, 1}));
  const float a = 1.f / (1.f + std::exp(-1.f));  // softmax([3, 2])[0]
  EXPECT_NEAR(r.weights[0], a, 1e-6);
  EXPECT_NEAR(r.weights[1], 1.f - a, 1e-6);
  EXPECT_NEAR(r.weights[2], 0.5f, 1e-6);
}

TEST(Moe, SigmoidRouterKeepsTheBestGroupsAndWeighsUnbiased) {
  auto be = make_cpu_backend();
  // Groups {0,1} {2,3} {4,5} {6,7}; pair sums 1.0, 1.2, 1.1, 0.85: groups 1 and 2 are kept, so experts 2 and 3
  // (0.6 each) win over the overall best 0 (0.9) and 6 (0.8).
  const std::vector<float> s = {0.9f, 0.1f, 0.6f, 0.6f, 0.55f, 0.55f, 0.8f, 0.05f};
  std::vector<float> logits;
  for (float v : s) logits.push_back(logit_of(v));
  MoeOpsConfig c{8, 2, MoeRouting::SigmoidGroup, 4, 2, true, 2.5f};
  Routed r = route(*be, logits, 1, c);
  EXPECT_EQ(r.experts, (std::vector<int32_t>{2, 3}));
  EXPECT_NEAR(r.weights[0], 1.25f, 1e-5);  // 0.6 / 1.2 × 2.5
  EXPECT_NEAR(r.weights[1], 1.25f, 1e-5);
  // All groups kept: the overall best. A bias changes the choice but not the weights (the unbiased scores).
  c.topk_group = 4;
  r = route(*be, logits, 1, c);
  EXPECT_EQ(r.experts, (std::vector<int32_t>{0, 6}));
  r = route(*be, logits, 1, c, {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 1.f});
  EXPECT_EQ(r.experts, (std::vector<int32_t>{7, 0}));
  EXPECT_NEAR(r.weights[0], 0.05f / 0.95f * 2.5f, 1e-5);
  c.norm_topk_prob = false;
  r = route(*be, logits, 1, c);
  EXPECT_NEAR(r.weights[0], 0.9f * 2.5f, 1e-5);
}

// moe_experts against Σ_j w_j · down_e(act(up_e x)) evaluated token by token in double.
TEST(Moe, GroupedExpertsEqualTheirDefinition) {
  auto be = make_cpu_backend();
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> d(-1.f, 1.f);
  const int64_t T = 13, H = 10, F = 6, E = 5, k = 3;
  for (ExpertAct act : {ExpertAct::SwiGLU, ExpertAct::Relu2}) {
    const int64_t U = act == ExpertAct::SwiGLU ? 2 * F : F;
    std::vector<float> x(size_t(T * H)), up(size_t(E * U * H)), down(size_t(E * H * F)), w(size_t(T * k));
    for (auto* v : {&x, &up, &down, &w})
      for (float& f : *v) f = d(rng);
    std::vector<int32_t> ex(size_t(T * k));
    for (int64_t t = 0; t < T; ++t)
      for (int64_t j = 0; j < k; ++j) ex[size_t(t * k + j)] = int32_t((t * 3 + j * 2) % E);  // expert 4 gets few
    Tensor X = be->alloc(DType::F32, {T, H}), Up = be->alloc(DType::F32, {E, U, H}), Dn = be->alloc(DType::F32, {E, H, F}),
           W = be->alloc(DType::F32, {T, k}), Ex = be->alloc(DType::I32, {T, k}), Out = be->alloc(DType::F32, {T, H});
    be->from_host_f32(X, x.data());
    be->from_host_f32(Up, up.data());
    be->from_host_f32(Dn, down.data());
    be->from_host_f32(W, w.data());
    std::memcpy(Ex.data, ex.data(), ex.size() * 4);
    MoeScratch sc{be->alloc(DType::F32, {T * k, U}), be->alloc(DType::F32, {T * k, F}), be->alloc(DType::F32, {T * k, H}),
                  be->alloc(DType::I32, {2 * T * k + 2 * E + 2})};
    be->moe_experts(Out, X, Up, Dn, Ex, W, act, sc);
    std::vector<float> got(size_t(T * H));
    be->to_host_f32(Out, got.data());
    for (int64_t t = 0; t < T; ++t)
      for (int64_t c = 0; c < H; ++c) {
        double ref = 0;
        for (int64_t j = 0; j < k; ++j) {
          const int64_t e = ex[size_t(t * k + j)];
          double o = 0;
          for (int64_t f = 0; f < F; ++f) {
            double g = 0, u = 0;
            for (int64_t h = 0; h < H; ++h) {
              g += double(up[size_t((e * U + f) * H + h)]) * x[size_t(t * H + h)];
              if (act == ExpertAct::SwiGLU) u += double(up[size_t((e * U + F + f) * H + h)]) * x[size_t(t * H + h)];
            }
            const double a = act == ExpertAct::SwiGLU ? g / (1 + std::exp(-g)) * u : std::max(g, 0.0) * std::max(g, 0.0);
            o += double(down[size_t((e * H + c) * F + f)]) * a;
          }
          ref += double(w[size_t(t * k + j)]) * o;
        }
        EXPECT_NEAR(got[size_t(t * H + c)], ref, 1e-5 * (1 + std::fabs(ref))) << "token " << t << " channel " << c;
      }
  }
}

}  // namespace
}  // namespace bamba
