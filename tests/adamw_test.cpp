// AdamW, gradient clipping and the learning-rate schedules against values computed independently: torch's
// AdamW formulas in plain Python doubles (the script is below), hand-derived schedule values.
#include "train/adamw.h"

#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "core/bf16_split.h"
#include "core/dtype.h"
#include "train/lr_schedule.h"

namespace bamba {
namespace {

// Expected values from this script (python3, no torch needed: torch.optim.AdamW's single-tensor update):
//   def adamw(params, grads_per_step, lrs, b1=0.9, b2=0.95, eps=1e-8, wd=0.1, decay=None):
//       m = [[0.0]*len(p) for p in params]; v = [[0.0]*len(p) for p in params]
//       for t,(grads,lr) in enumerate(zip(grads_per_step, lrs), start=1):
//           bc1 = 1 - b1**t; bc2 = 1 - b2**t
//           for i,p in enumerate(params):
//               for j in range(len(p)):
//                   g = grads[i][j]
//                   if decay[i]: p[j] *= 1 - lr*wd
//                   m[i][j] += (1-b1)*(g - m[i][j])
//                   v[i][j] = b2*v[i][j] + (1-b2)*g*g
//                   p[j] -= lr/bc1 * m[i][j] / (math.sqrt(v[i][j])/math.sqrt(bc2) + eps)
//       return params, m, v
struct Toy {
  std::vector<float> W{0.5f, -1.25f, 2.0f, 0.0f}, b{0.1f, -0.3f}, gW = std::vector<float>(4),
                                                                  gb = std::vector<float>(2);
  std::vector<ParamRef> params() {
    return {{"w", W.data(), gW.data(), 4, {2, 2}, true}, {"b", b.data(), gb.data(), 2, {2}, false}};
  }
};
const float kGrads[3][6] = {{0.2f, -0.1f, 0.05f, 1.5f, 0.3f, -0.02f},
                            {-0.4f, 0.0f, 0.1f, 1.0f, 0.25f, 0.01f},
                            {0.1f, 0.3f, -0.2f, -2.0f, -0.5f, 0.0f}};
const double kLrs[3] = {1e-2, 5e-3, 2e-2};

void run_three_steps(Toy& t, AdamW& opt) {
  auto ps = t.params();
  for (int s = 0; s < 3; ++s) {
    for (int j = 0; j < 4; ++j) t.gW[j] = kGrads[s][j];
    for (int j = 0; j < 2; ++j) t.gb[j] = kGrads[s][4 + j];
    opt.step(ps, kLrs[s]);
  }
}

TEST(AdamW, MatchesTorchFormulasOverThreeSteps) {
  Toy t;
  AdamW opt(t.params(), AdamWOptions{});  // β (0.9, 0.95), eps 1e-8, wd 0.1: fms-fsdp's settings
  run_three_steps(t, opt);
  const double W[] = {0.4928344387818602, -1.240942427875908, 1.9820594654211199, -0.01538318351593559};
  const double b[] = {0.08567106371831197, -0.2844555082295211};
  const double mW[] = {-0.009800000000000001, 0.021899999999999996, -0.006949999999999996, 0.01150000000000001};
  const double vW[] = {0.00990500000000001, 0.004951250000000004, 0.0025878125000000024, 0.34903125000000035};
  const double mb[] = {-0.0032000000000000015, -0.0007199999999999999};
  const double vb[] = {0.019530000000000016, 2.280000000000002e-05};
  for (int j = 0; j < 4; ++j) {
    EXPECT_NEAR(t.W[j], W[j], 2e-6) << j;
    EXPECT_NEAR(opt.exp_avg(0)[j], mW[j], 1e-7) << j;
    EXPECT_NEAR(opt.exp_avg_sq(0)[j], vW[j], 1e-7 * (1 + vW[j])) << j;
  }
  for (int j = 0; j < 2; ++j) {
    EXPECT_NEAR(t.b[j], b[j], 2e-6) << j;
    EXPECT_NEAR(opt.exp_avg(1)[j], mb[j], 1e-7) << j;
    EXPECT_NEAR(opt.exp_avg_sq(1)[j], vb[j], 1e-7 * (1 + vb[j])) << j;
  }
  EXPECT_EQ(opt.steps_taken(), 3);
}

TEST(AdamW, NoDecayParameterIsUntouchedByWeightDecayAlone) {
  // With zero gradients m = v = 0 and the update is 0/(0 + eps) = 0: only decay moves a parameter.
  Toy t;
  AdamW opt(t.params(), AdamWOptions{.weight_decay = 0.5});
  auto ps = t.params();
  opt.step(ps, 0.1);
  EXPECT_FLOAT_EQ(t.W[0], 0.5f * (1 - 0.1f * 0.5f));
  EXPECT_FLOAT_EQ(t.b[0], 0.1f);
}

TEST(AdamW, Bf16MomentsStayCloseAndAreStoredAsBf16) {
  Toy a, b;
  AdamW full(a.params(), AdamWOptions{});
  AdamW half(b.params(), AdamWOptions{.bf16_moments = true, .seed = 7});
  run_three_steps(a, full);
  run_three_steps(b, half);
  EXPECT_EQ(half.moment_bytes(0), 4u * 2);
  for (int j = 0; j < 4; ++j) {
    const float m = half.exp_avg(0)[j];
    EXPECT_EQ(f32_to_bf16(m), *(reinterpret_cast<const uint16_t*>(half.exp_avg_data(0)) + j));  // a bf16 value
    // Within a couple of bf16 ulps of the largest value m took (0.235 for j = 3: ulp 2^-10), as errors carry over.
    EXPECT_NEAR(m, full.exp_avg(0)[j], 2e-3) << j;
    EXPECT_NEAR(half.exp_avg_sq(0)[j], full.exp_avg_sq(0)[j], 1e-2 * full.exp_avg_sq(0)[j]) << j;
    EXPECT_NEAR(b.W[j], a.W[j], 1e-3) << j;
  }
}

TEST(AdamW, StochasticRoundingIsUnbiased) {
  // x lies 1/4 of the way from its lower bf16 neighbour to the upper: over all 2^16 random words it must round
  // up exactly 1/4 of the time, so the mean is x exactly.
  const float lo = 1.0f, hi = bf16_to_f32(f32_to_bf16(1.0f) + 1);
  const float x = lo + (hi - lo) * 0.25f;
  double sum = 0;
  int up = 0;
  for (uint32_t r = 0; r < 65536; ++r) {
    const float y = bf16_to_f32(bf16_stochastic_round(x, r));
    ASSERT_TRUE(y == lo || y == hi);
    up += y == hi;
    sum += y;
  }
  EXPECT_EQ(up, 16384);
  EXPECT_DOUBLE_EQ(sum / 65536, double(x));
  EXPECT_EQ(bf16_stochastic_round(lo, 0xffff), f32_to_bf16(lo));  // exact values never move
  EXPECT_TRUE(std::isnan(bf16_to_f32(bf16_stochastic_round(NAN, 0x1234))));
}

TEST(ClipGradNorm, ScalesLikeTorchAndReturnsTheNormBefore) {
  Toy t;
  for (int j = 0; j < 4; ++j) t.gW[j] = kGrads[0][j];
  for (int j = 0; j < 2; ++j) t.gb[j] = kGrads[0][4 + j];
  auto ps = t.params();
  const double norm = clip_grad_norm(ps, 1.0);
  EXPECT_NEAR(norm, 1.5469001260585635, 1e-7);  // √Σg², by hand in Python
  const double coef = 0.6464537281370765;       // 1 / (norm + 1e-6)
  for (int j = 0; j < 4; ++j) EXPECT_NEAR(t.gW[j], kGrads[0][j] * coef, 1e-7);
  EXPECT_NEAR(global_grad_norm(ps), 1.0, 1e-6);
  // Below the limit nothing changes.
  const float before = t.gW[3];
  EXPECT_NEAR(clip_grad_norm(ps, 5.0), 1.0, 1e-6);
  EXPECT_EQ(t.gW[3], before);
}

TEST(DefaultWeightDecay, MatricesOnlyAndNeverTheSsmParameters) {
  EXPECT_TRUE(default_weight_decay("model.layers.0.mamba.in_proj.weight", {96, 64}));
  EXPECT_FALSE(default_weight_decay("model.layers.0.mamba.A_log", {8}));
  EXPECT_FALSE(default_weight_decay("model.layers.0.mamba.D", {8}));
  EXPECT_FALSE(default_weight_decay("model.layers.0.mamba.dt_bias", {8}));
  EXPECT_FALSE(default_weight_decay("model.layers.0.input_layernorm.weight", {64}));
  EXPECT_FALSE(default_weight_decay("model.layers.0.mamba.conv1d.bias", {160}));
  EXPECT_TRUE(default_weight_decay("model.layers.0.mamba.conv1d.weight", {160, 1, 4}));
  EXPECT_FALSE(default_weight_decay("model.layers.0.mamba.A_log", {8, 1}));  // by name, whatever the shape
}

TEST(LrSchedule, WarmupShapes) {
  LrSchedule s{
      .kind = LrSchedule::Kind::Constant, .warmup = LrSchedule::Warmup::Linear, .warmup_steps = 10, .total_steps = 100};
  EXPECT_DOUBLE_EQ(lr_multiplier(s, 0), 0.1);
  EXPECT_DOUBLE_EQ(lr_multiplier(s, 4), 0.5);
  EXPECT_DOUBLE_EQ(lr_multiplier(s, 9), 1.0);
  EXPECT_DOUBLE_EQ(lr_multiplier(s, 50), 1.0);
  s.warmup = LrSchedule::Warmup::Quadratic;
  EXPECT_NEAR(lr_multiplier(s, 0), 0.19, 1e-15);  // 1 − (1 − 0.1)²
  EXPECT_NEAR(lr_multiplier(s, 4), 0.75, 1e-15);  // 1 − 0.5²
  EXPECT_DOUBLE_EQ(lr_multiplier(s, 9), 1.0);
}

TEST(LrSchedule, CosineLinearAndWsd) {
  LrSchedule c{.kind = LrSchedule::Kind::Cosine, .warmup_steps = 10, .total_steps = 110, .final_ratio = 0.1};
  EXPECT_DOUBLE_EQ(lr_multiplier(c, 10), 1.0);
  EXPECT_NEAR(lr_multiplier(c, 60), 0.55, 1e-15);  // halfway: 0.1 + 0.9·½(1 + cos π/2)
  EXPECT_NEAR(lr_multiplier(c, 35), 0.1 + 0.45 * (1 + std::cos(M_PI / 4)), 1e-15);
  EXPECT_DOUBLE_EQ(lr_multiplier(c, 110), 0.1);
  EXPECT_DOUBLE_EQ(lr_multiplier(c, 500), 0.1);

  LrSchedule l = c;
  l.kind = LrSchedule::Kind::Linear;
  l.final_ratio = 0;
  EXPECT_NEAR(lr_multiplier(l, 35), 0.75, 1e-15);
  EXPECT_NEAR(lr_multiplier(l, 109), 0.01, 1e-15);

  LrSchedule w{.kind = LrSchedule::Kind::Wsd, .total_steps = 100, .decay_steps = 20, .final_ratio = 0.1};
  EXPECT_DOUBLE_EQ(lr_multiplier(w, 0), 1.0);
  EXPECT_DOUBLE_EQ(lr_multiplier(w, 80), 1.0);
  EXPECT_NEAR(lr_multiplier(w, 90), 0.55, 1e-15);
  w.decay_shape = LrSchedule::DecayShape::Sqrt;
  EXPECT_NEAR(lr_multiplier(w, 90), 0.36360389693210726, 1e-15);  // 1 − 0.9·√½
  w.decay_shape = LrSchedule::DecayShape::Cosine;
  EXPECT_NEAR(lr_multiplier(w, 85), 0.1 + 0.45 * (1 + std::cos(M_PI / 4)), 1e-15);
  EXPECT_DOUBLE_EQ(lr_multiplier(w, 100), 0.1);
}

TEST(LrSchedule, FmsFsdpBambaCosineAtItsQuarterPoints) {
  // fms-fsdp main_training_mamba.py: quadratic warmup over w, then 0.1 + 0.45(1 + cos(πx/N)) after it.
  LrSchedule s{.kind = LrSchedule::Kind::Cosine,
               .warmup = LrSchedule::Warmup::Quadratic,
               .warmup_steps = 2000,
               .total_steps = 402000,
               .final_ratio = 0.1};
  EXPECT_NEAR(lr_multiplier(s, 2000 + 100000), 0.1 + 0.45 * (1 + std::cos(M_PI * 0.25)), 1e-12);
  EXPECT_NEAR(lr_multiplier(s, 2000 + 300000), 0.1 + 0.45 * (1 + std::cos(M_PI * 0.75)), 1e-12);
}

// The memory mode's split master (core/bf16_split.h): hi and lo give back every finite fp32 value below bf16's
// overflow exactly; hi is round-to-nearest-even's bf16 except at exact ties, which go away from zero; the low halves
// travel through the I16 conversions exactly.
TEST(Bf16Split, JoinsBackExactlyAndHiIsTheNearestBf16) {
  auto check = [](uint32_t u) {
    const float x = f32_from_bits(u);
    uint16_t hi, lo;
    bf16_split(x, hi, lo);
    const float y = bf16_join(hi, lo);
    if (std::isnan(x)) {
      EXPECT_TRUE(std::isnan(y)) << std::hex << u;
      return;
    }
    if (std::fabs(x) > 3.3961e38f) {  // past bf16's largest finite: truncated, still finite
      EXPECT_TRUE(std::isfinite(y) || std::isinf(x)) << std::hex << u;
      EXPECT_EQ(hi, uint16_t(u >> 16)) << std::hex << u;
      return;
    }
    ASSERT_EQ(f32_bits(y), u) << std::hex << "0x" << u << " split into 0x" << hi << ", 0x" << lo;
    if ((u & 0xffffu) == 0x8000u) EXPECT_EQ(hi, uint16_t((u >> 16) + 1)) << std::hex << u;  // a tie: away from 0
    else EXPECT_EQ(hi, f32_to_bf16(x)) << std::hex << u;
  };
  for (uint64_t u = 0; u < (1ull << 32); u += 4093) check(uint32_t(u));
  for (uint32_t u : {0x00000000u, 0x80000000u, 0x00000001u, 0x80008000u, 0x3f808000u, 0x3f818000u, 0xbf808000u,
                     0x3f807fffu, 0x3f80ffffu, 0x7f7f7fffu, 0x7f7f8000u, 0xff7fffffu, 0x7f800000u, 0xff800000u,
                     0x7fc00000u, 0x7f800001u, 0x007fffffu})
    check(u);
  // the low halves as I16 through the float conversions of device copies: exact, every pattern
  std::vector<int16_t> all(65536);
  for (int i = 0; i < 65536; ++i) all[size_t(i)] = int16_t(i - 32768);
  std::vector<float> f(all.size());
  convert_to_f32(all.data(), DType::I16, all.size(), f.data());
  std::vector<int16_t> back(all.size());
  convert_from_f32(f.data(), f.size(), DType::I16, back.data());
  EXPECT_EQ(back, all);
}

}  // namespace
}  // namespace bamba
