// Speculative decoding (engine/drafter.h, engine/generator.cpp): prompt-lookup proposals; greedy and seeded
// sampled outputs equal plain decoding token for token, with drafts accepted, rejected (state rolled back) and
// with a draft model that agrees always (the model itself) or rarely (other weights of the same shape).
#include <gtest/gtest.h>

#include <algorithm>
#include <random>

#include "core/error.h"
#include "engine/drafter.h"
#include "engine/generator.h"
#include "test_util.h"

namespace bamba {
namespace {

TEST(NgramDrafter, ProposesWhatFollowedTheLatestMatchOfTheLongestTail) {
  NgramDrafter d(1, 3);
  const std::vector<int32_t> ids = {5, 6, 7, 8, 1, 6, 7, 9, 2, 6, 7};
  // tail [6, 7]: its latest earlier occurrence is at 5 (followed by 9, 2, 6, 7)
  EXPECT_EQ(d.propose(ids, 3), (std::vector<int32_t>{9, 2, 6}));
  EXPECT_EQ(d.propose(ids, 10), (std::vector<int32_t>{9, 2, 6, 7}));  // up to the end of ids
  // tail [2, 6, 7] (n = 3) has no earlier match, [6, 7] does
  const std::vector<int32_t> three = {1, 2, 3, 4, 9, 2, 3, 4};
  EXPECT_EQ(d.propose(three, 2), (std::vector<int32_t>{9, 2}));  // [2, 3, 4] matched at 1
  EXPECT_TRUE(d.propose(std::vector<int32_t>{1, 2, 3}, 4).empty());
  EXPECT_TRUE(d.propose(std::vector<int32_t>{7}, 4).empty());
  EXPECT_THROW(NgramDrafter(0, 2), Error);
}

struct Output {
  std::vector<int32_t> tokens;
  GenerationStats st;
};

Output generate(const HybridModel& m, std::span<const int32_t> prompt, int32_t n, SamplingParams sp,
             Drafter* drafter = nullptr, int32_t k = 4) {
  Generator g(m, 256, 32, {drafter, k});
  Output r;
  r.st = g.generate(prompt, n, sp, {}, [&](int32_t id) {
    r.tokens.push_back(id);
    return true;
  });
  return r;
}

// A prompt that repeats itself, so that prompt lookup has something to propose.
std::vector<int32_t> repetitive_prompt(int64_t vocab) {
  std::mt19937 rng(3);
  std::vector<int32_t> phrase(9), p;
  for (auto& t : phrase) t = int32_t(rng() % uint32_t(vocab));
  for (int i = 0; i < 4; ++i) p.insert(p.end(), phrase.begin(), phrase.end());
  return p;
}

class Speculative : public ::testing::TestWithParam<const char*> {
 protected:
  std::unique_ptr<Backend> be = make_cpu_backend();
};

TEST_P(Speculative, GreedyWithPromptLookupEqualsPlainDecoding) {
  HybridModel m = load_model(test::model_dir(GetParam()), *be);
  const auto prompt = repetitive_prompt(m.config().vocab_size);
  const Output plain = generate(m, prompt, 40, {});
  NgramDrafter ngram(1, 4);
  for (int32_t k : {1, 3, 5}) {
    const Output spec = generate(m, prompt, 40, {}, &ngram, k);
    EXPECT_EQ(spec.tokens, plain.tokens) << "k = " << k;
    EXPECT_GT(spec.st.drafted, 0);
    EXPECT_GT(spec.st.verify_steps, 0);
    EXPECT_LE(spec.st.accepted, spec.st.drafted);
  }
}

TEST_P(Speculative, SeededSamplingWithPromptLookupEqualsPlainDecoding) {
  HybridModel m = load_model(test::model_dir(GetParam()), *be);
  const auto prompt = repetitive_prompt(m.config().vocab_size);
  NgramDrafter ngram(1, 4);
  for (uint64_t seed : {1u, 2u}) {
    const SamplingParams sp{0.7f, 0, 1.f, seed};
    const Output plain = generate(m, prompt, 30, sp), spec = generate(m, prompt, 30, sp, &ngram, 3);
    EXPECT_EQ(spec.tokens, plain.tokens) << "seed " << seed;
  }
}

TEST_P(Speculative, DraftModelsThatAgreeAlwaysOrRarelyGiveThePlainOutput) {
  HybridModel m = load_model(test::model_dir(GetParam()), *be);
  const auto prompt = repetitive_prompt(m.config().vocab_size);
  const Output plain = generate(m, prompt, 40, {});

  ModelDrafter self(m, m.config().vocab_size, 256, 16);  // the target as its own draft: every draft accepted
  const Output a = generate(m, prompt, 40, {}, &self, 4);
  EXPECT_EQ(a.tokens, plain.tokens);
  EXPECT_EQ(a.st.accepted, a.st.drafted);
  EXPECT_LT(a.st.decode_steps, 40 / 2);  // ~5 tokens per target step

  HybridModel other(m.config(), dummy_weights(m.config(), *be, 99), *be);  // same shape, unrelated weights
  ModelDrafter rarely(other, m.config().vocab_size, 256, 16);
  const Output b = generate(m, prompt, 40, {}, &rarely, 3);
  EXPECT_EQ(b.tokens, plain.tokens);
  EXPECT_LT(b.st.accepted, b.st.drafted);  // rejections: the state was rolled back

  ModelConfig small = m.config();
  small.vocab_size += 1;
  EXPECT_THROW(ModelDrafter(m, small.vocab_size, 256), Error);
}

TEST_P(Speculative, StopsAtMaxTokensAndEosInsideAnAcceptedRun) {
  HybridModel m = load_model(test::model_dir(GetParam()), *be);
  const auto prompt = repetitive_prompt(m.config().vocab_size);
  const Output plain = generate(m, prompt, 40, {});
  ModelDrafter self(m, m.config().vocab_size, 256, 16);
  for (int32_t n : {1, 2, 7}) EXPECT_EQ(generate(m, prompt, n, {}, &self, 4).tokens,
                                        std::vector<int32_t>(plain.tokens.begin(), plain.tokens.begin() + n));
  // EOS = a plain token that first appears at j >= 1: generation ends there, whatever was drafted past it
  size_t j = 1;
  while (j < plain.tokens.size() &&
         std::find(plain.tokens.begin(), plain.tokens.begin() + long(j), plain.tokens[j]) != plain.tokens.begin() + long(j))
    ++j;
  ASSERT_LT(j, plain.tokens.size());
  Generator g(m, 256, 32, {&self, 4});
  std::vector<int32_t> out;
  GenerationStats st = g.generate(prompt, 40, {}, {plain.tokens[j]}, [&](int32_t id) {
    out.push_back(id);
    return true;
  });
  EXPECT_TRUE(st.hit_eos);
  EXPECT_EQ(st.new_tokens, int32_t(j + 1));
  EXPECT_EQ(out, std::vector<int32_t>(plain.tokens.begin(), plain.tokens.begin() + long(j)));  // EOS is not streamed
}

INSTANTIATE_TEST_SUITE_P(Models, Speculative, ::testing::Values("bamba-tiny-a", "bamba-tiny-b"),
                         [](const auto& i) { return std::string(i.param) == "bamba-tiny-a" ? "tiny_a" : "tiny_b"; });

}  // namespace
}  // namespace bamba
