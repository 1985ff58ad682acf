// Logits processing (penalties, logit_bias, min_p, the token mask) against a plain dense reference written from
// vLLM's definitions, and the CUDA kernel against the CPU backend bit for bit (skips itself without a GPU).
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "backend/backend.h"
#include "engine/logits_processors.h"

namespace bamba {
namespace {

struct Case {
  std::vector<float> logits;  // [V]
  RequestParams p;
  std::vector<int32_t> output;
  std::vector<uint32_t> mask;  // empty: none
};

Case random_case(std::mt19937& rng, int32_t V, bool with_mask) {
  Case c;
  std::normal_distribution<float> n(0.f, 3.f);
  for (int32_t j = 0; j < V; ++j) c.logits.push_back(n(rng));
  std::uniform_int_distribution<int32_t> tok(0, V - 1);
  for (int i = 0; i < 40; ++i) c.p.prompt.push_back(tok(rng) % 97);  // repeats, overlapping the outputs
  for (int i = 0; i < 30; ++i) c.output.push_back(tok(rng) % 131);
  c.p.presence_penalty = 0.7f;
  c.p.frequency_penalty = -0.3f;
  c.p.repetition_penalty = 1.3f;
  c.p.min_p = 0.05f;
  c.p.sampling.temperature = 0.8f;
  for (int i = 0; i < 12; ++i) c.p.logit_bias.push_back({tok(rng), float(i) - 6.f});
  std::sort(c.p.logit_bias.begin(), c.p.logit_bias.end());
  c.p.logit_bias.erase(std::unique(c.p.logit_bias.begin(), c.p.logit_bias.end(),
                                   [](auto& a, auto& b) { return a.first == b.first; }),
                       c.p.logit_bias.end());
  if (with_mask) {
    c.mask.assign(size_t(V + 31) / 32, 0u);
    for (int32_t j = 0; j < V; ++j)
      if (rng() % 3) c.mask[size_t(j) >> 5] |= 1u << (j & 31);
  }
  return c;
}

// vLLM's order, dense: mask; logit_bias; repetition penalty on prompt ∪ output; frequency·count + presence
// on the output; min_p on softmax(x / T) probabilities.
std::vector<float> reference(const Case& c) {
  const int32_t V = int32_t(c.logits.size());
  std::vector<float> x = c.logits;
  std::vector<int32_t> count(size_t(V), 0);
  std::vector<bool> in_prompt(size_t(V), false);
  for (int32_t t : c.output) ++count[size_t(t)];
  for (int32_t t : c.p.prompt) in_prompt[size_t(t)] = true;
  const float ninf = -INFINITY;
  for (int32_t j = 0; j < V; ++j) {
    if (!c.mask.empty() && !((c.mask[size_t(j) >> 5] >> (j & 31)) & 1u)) x[size_t(j)] = ninf;
    for (auto& [id, b] : c.p.logit_bias)
      if (id == j) x[size_t(j)] += b;
    const float r = c.p.repetition_penalty;
    if (in_prompt[size_t(j)] || count[size_t(j)] > 0) x[size_t(j)] = x[size_t(j)] > 0 ? x[size_t(j)] / r : x[size_t(j)] * r;
    if (count[size_t(j)] > 0) x[size_t(j)] -= c.p.frequency_penalty * float(count[size_t(j)]) + c.p.presence_penalty;
  }
  double mx = -INFINITY;
  for (float v : x) mx = std::max(mx, double(v));
  double z = 0;
  for (float v : x) z += std::exp((double(v) - mx) / c.p.sampling.temperature);
  const double pmax = 1.0 / z;
  for (float& v : x)
    if (std::exp((double(v) - mx) / c.p.sampling.temperature) / z < c.p.min_p * pmax) v = ninf;
  return x;
}

// The engine's path: TokenHistory + logits_row + Backend::process_logits.
std::vector<float> processed(Backend& be, const Case& c) {
  const int32_t V = int32_t(c.logits.size());
  TokenHistory h(c.p);
  for (int32_t t : c.output) h.add(t);
  LogitsProcessing proc;
  // Row 1 of a 3-row batch, so that the row index is honoured.
  LogitsRow r = logits_row(c.p, h, 1, proc.edits);
  if (!c.mask.empty()) {
    r.mask_offset = 0;
    proc.masks = c.mask;
  }
  proc.rows.push_back(r);
  std::vector<float> all(size_t(3 * V), 0.5f);
  std::copy(c.logits.begin(), c.logits.end(), all.begin() + V);
  Tensor t = be.alloc(DType::F32, {3, V});
  be.from_host_f32(t, all.data());
  be.process_logits(t, proc);
  be.to_host_f32(t, all.data());
  be.release(t);
  for (int32_t j = 0; j < V; ++j) {
    EXPECT_EQ(all[size_t(j)], 0.5f);
    EXPECT_EQ(all[size_t(2 * V + j)], 0.5f);
  }
  return std::vector<float>(all.begin() + V, all.begin() + 2 * V);
}

TEST(LogitsProcessing, MatchesTheDenseReference) {
  std::mt19937 rng(5);
  auto be = make_cpu_backend();
  for (int32_t V : {37, 1000, 4099}) {
    for (bool with_mask : {false, true}) {
      Case c = random_case(rng, V, with_mask);
      std::vector<float> want = reference(c), got = processed(*be, c);
      int kept = 0;
      for (int32_t j = 0; j < V; ++j) {
        if (std::isinf(want[size_t(j)])) {
          EXPECT_TRUE(std::isinf(got[size_t(j)]) && got[size_t(j)] < 0) << "V " << V << " token " << j;
        } else {
          ++kept;
          EXPECT_NEAR(got[size_t(j)], want[size_t(j)], 1e-5f * (1 + std::abs(want[size_t(j)]))) << "token " << j;
        }
      }
      EXPECT_GT(kept, 0);
      EXPECT_LT(kept, V);  // min_p (and the mask) removed something
    }
  }
}

TEST(LogitsProcessing, EachProcessorAlone) {
  auto be = make_cpu_backend();
  Case c;
  c.logits = {2.f, -1.f, 0.5f, 3.f, -2.f};
  c.p.sampling.temperature = 1.f;
  auto run = [&](const Case& k) { return processed(*be, k); };
  {  // repetition penalty: prompt token 0 (positive: divided), output token 1 (negative: multiplied)
    Case k = c;
    k.p.prompt = {0};
    k.output = {1};
    k.p.repetition_penalty = 2.f;
    EXPECT_EQ(run(k), (std::vector<float>{1.f, -2.f, 0.5f, 3.f, -2.f}));
  }
  {  // presence and frequency over the output only: token 3 twice, token 0 in the prompt untouched
    Case k = c;
    k.p.prompt = {0};
    k.output = {3, 3, 4};
    k.p.presence_penalty = 0.5f;
    k.p.frequency_penalty = 0.25f;
    EXPECT_EQ(run(k), (std::vector<float>{2.f, -1.f, 0.5f, 2.f, -2.75f}));
  }
  {  // logit_bias
    Case k = c;
    k.p.prompt = {0};
    k.p.logit_bias = {{1, 5.f}, {3, -100.f}};
    EXPECT_EQ(run(k), (std::vector<float>{2.f, 4.f, 0.5f, -97.f, -2.f}));
  }
  {  // min_p 0.3 at T 1: p_j / p_max = e^(x_j - 3) >= 0.3 keeps x_j >= 3 + ln 0.3 = 1.796: tokens 0 and 3
    Case k = c;
    k.p.prompt = {0};
    k.p.min_p = 0.3f;
    std::vector<float> got = run(k);
    EXPECT_EQ(got[0], 2.f);
    EXPECT_EQ(got[3], 3.f);
    EXPECT_TRUE(std::isinf(got[1]) && std::isinf(got[2]) && std::isinf(got[4]));
    k.p.sampling.temperature = 4.f;  // T 4: 3 + 4 ln 0.3 = -1.82 keeps all but token 4
    got = run(k);
    EXPECT_EQ(got[1], -1.f);
    EXPECT_TRUE(std::isinf(got[4]));
    k.p.min_p = 1.f;  // only the maximum
    got = run(k);
    EXPECT_EQ(got[3], 3.f);
    EXPECT_TRUE(std::isinf(got[0]));
  }
  // Nothing asked: nothing to do.
  Case k = c;
  k.p.prompt = {0};
  EXPECT_FALSE(needs_logits_processing(k.p));
  k.p.min_p = 0.5f;
  k.p.sampling.temperature = 0.f;  // greedy: min_p cannot change the argmax
  EXPECT_FALSE(needs_logits_processing(k.p));
}

TEST(LogitsProcessing, GreedyDrawsTheProcessedArgmax) {
  auto be = make_cpu_backend();
  std::vector<float> l = {1.f, 3.f, 2.5f};
  Tensor t = be->alloc(DType::F32, {1, 3});
  be->from_host_f32(t, l.data());
  RequestParams p;
  p.prompt = {1};
  p.repetition_penalty = 2.f;  // 3 -> 1.5: token 2 wins
  TokenHistory h(p);
  LogitsProcessing proc;
  proc.rows.push_back(logits_row(p, h, 0, proc.edits));
  be->process_logits(t, proc);
  SamplingParams sp;
  int32_t out = -1;
  be->sample(t, std::span(&sp, 1), &out);
  EXPECT_EQ(out, 2);
  be->release(t);
}

TEST(LogitsProcessing, CudaEqualsCpuBitForBit) {
  if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA GPU: the CUDA logits-processing test needs one";
  auto cpu = make_cpu_backend();
  auto gpu = make_backend("cuda", DType::BF16);
  std::mt19937 rng(11);
  for (int32_t V : {37, 1000, 128257}) {
    for (bool with_mask : {false, true}) {
      Case c = random_case(rng, V, with_mask);
      std::vector<float> a = processed(*cpu, c), b = processed(*gpu, c);
      for (int32_t j = 0; j < V; ++j) ASSERT_EQ(a[size_t(j)], b[size_t(j)]) << "V " << V << " token " << j;
    }
  }
}

}  // namespace
}  // namespace bamba
