// The continuous-batching Engine on the fixture models (token ids, no tokenizer): greedy tokens equal the
// single-sequence Generator's alone, among 32 concurrent requests of different lengths, with chunked prefill and
// with forced preemption; seeded sampling survives preemption; prompt scoring equals the log-softmax of one
// prefill; cancelled and finished requests give back every slot and page; a reused slot starts from zero.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <thread>

#include "core/error.h"
#include "engine/engine.h"
#include "engine/generator.h"
#include "fixture_runner.h"
#include "engine_runner.h"
#include "test_util.h"

namespace bamba {
namespace {

using namespace std::chrono_literals;

using Result = test::EngineResult;
// (these suites look at error outputs themselves)
std::vector<Result> run_all(Engine& e, const std::vector<RequestParams>& ps) { return test::run_all(e, ps, false); }

struct Model {
  std::unique_ptr<Backend> be = make_cpu_backend();
  HybridModel model;
  explicit Model(const std::string& name) : model(load_model(test::fixture_model_dir(name), *be)) {}
};

EngineOptions options(const HybridModel& m, int32_t seqs, int32_t budget, int32_t num_blocks = 0) {
  EngineOptions o;
  o.max_model_len = 256;
  o.sched = {seqs, budget, std::max(budget, seqs)};
  o.cache = Engine::cache_sizes(m.config(), seqs, o.max_model_len, 1e9, num_blocks);
  return o;
}

std::vector<int32_t> random_prompt(int32_t n, int32_t vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int32_t> p(static_cast<size_t>(n));
  for (auto& t : p) t = int32_t(rng() % uint32_t(vocab));
  return p;
}

RequestParams greedy(std::vector<int32_t> prompt, int32_t max_tokens) {
  RequestParams p;
  p.prompt = std::move(prompt);
  p.max_tokens = max_tokens;
  p.ignore_eos = true;
  return p;
}

// Greedy tokens of one sequence through the Generator (one sequence, its own cache): the reference.
std::vector<int32_t> alone(const HybridModel& m, const RequestParams& p) {
  Generator g(m, 256, 64);
  std::vector<int32_t> out;
  g.generate(p.prompt, p.max_tokens, p.sampling, {}, [&](int32_t id) {
    out.push_back(id);
    return true;
  });
  return out;
}

// The engine publishes its gauges after the step that finished the last request: wait for them.
void expect_all_free(const Engine& e) {
  const CacheSizes& cs = e.cache().sizes();
  EngineStats st;
  for (int i = 0; i < 200; ++i) {
    st = e.stats();
    if (st.free_slots == cs.n_slots && st.free_blocks == cs.n_blocks && st.num_running + st.num_waiting == 0) break;
    std::this_thread::sleep_for(5ms);
  }
  EXPECT_EQ(st.free_slots, cs.n_slots);
  EXPECT_EQ(st.free_blocks, cs.n_blocks);
  EXPECT_EQ(st.num_running + st.num_waiting, 0);
}

std::vector<RequestParams> mixed_requests(int32_t n, int32_t vocab) {
  std::vector<RequestParams> ps;
  for (int32_t i = 0; i < n; ++i) {
    ps.push_back(greedy(random_prompt(1 + (i * 53) % 150, vocab, uint32_t(i)), 4 + i % 9));
    if (i % 3 == 0) ps.back().sampling = {0.8f, 20, 0.9f, 1000 + uint64_t(i)};  // seeded: same draws as alone
  }
  return ps;
}

class EngineFixture : public ::testing::TestWithParam<const char*> {
 protected:
  void SetUp() override {
    if (test::fixture_model_dir(GetParam()).empty()) GTEST_SKIP() << "fixture " << GetParam() << " not found";
  }
};

TEST_P(EngineFixture, Among32ConcurrentWithChunkedPrefillEqualsAlone) {
  Model m(GetParam());
  auto ps = mixed_requests(32, int32_t(m.model.config().vocab_size));
  Engine e(m.model, nullptr, options(m.model, 32, 64));  // 64 tokens per step: long prompts go in chunks
  auto res = run_all(e, ps);
  for (size_t i = 0; i < ps.size(); ++i) {
    EXPECT_EQ(res[i].tokens, alone(m.model, ps[i])) << "request " << i << ", prompt " << ps[i].prompt.size();
    EXPECT_EQ(res[i].finish, FinishReason::Length);
  }
  EXPECT_EQ(e.stats().preemptions, 0u);
  expect_all_free(e);
}

TEST_P(EngineFixture, ForcedPreemptionChangesNoOutput) {
  Model m(GetParam());
  if (m.model.config().n_attention_layers() == 0) GTEST_SKIP() << "no KV cache to run out of (state slots only)";
  auto ps = mixed_requests(32, int32_t(m.model.config().vocab_size));
  std::vector<Result> ref;
  {
    Engine e(m.model, nullptr, options(m.model, 32, 512));  // everything fits: no preemption
    ref = run_all(e, ps);
    EXPECT_EQ(e.stats().preemptions, 0u);
  }
  Engine e(m.model, nullptr, options(m.model, 32, 96, /*num_blocks=*/16));  // 16 pages: one 256-token sequence
  auto res = run_all(e, ps);
  EXPECT_GT(e.stats().preemptions, 0u);
  for (size_t i = 0; i < ps.size(); ++i) EXPECT_EQ(res[i].tokens, ref[i].tokens) << "request " << i;
  expect_all_free(e);
}

TEST_P(EngineFixture, ScoredPromptEqualsLogSoftmaxOfOnePrefill) {
  Model m(GetParam());
  const int32_t V = int32_t(m.model.config().vocab_size);
  auto prompt = random_prompt(97, V, 5);
  // Reference: one prefill of the whole prompt, all rows.
  std::vector<float> logits(prompt.size() * size_t(V));
  {
    HybridCache cache(m.model.config(), *m.be, HybridCache::sizes_for(m.model.config(), 1, 128));
    Workspace ws(m.model.config(), *m.be, 128, 128);
    SeqCache seq;
    ASSERT_TRUE(cache.reserve(seq, int32_t(prompt.size())));
    StepBatch b;
    b.add(prompt, 0, seq.slot, seq.blocks, true);
    m.be->to_host_f32(m.model.forward(b, cache, ws), logits.data());
  }
  RequestParams p = greedy(prompt, 1);
  p.prompt_logprobs = 1;
  p.logprobs = 1;
  Engine e(m.model, nullptr, options(m.model, 4, 32));  // scored in chunks of 32 rows
  auto r = run_all(e, {p, p})[1];
  ASSERT_EQ(r.prompt_logprobs.size(), prompt.size());
  EXPECT_TRUE(std::isnan(r.prompt_logprobs[0].logprob));
  for (size_t j = 1; j <= prompt.size(); ++j) {  // (row 0 has no logprob: checked as NaN above)
    const float* row = logits.data() + (j - 1) * size_t(V);
    double mx = *std::max_element(row, row + V), sum = 0;
    for (int32_t v = 0; v < V; ++v) sum += std::exp(double(row[v]) - mx);
    const int32_t tok = j < prompt.size() ? prompt[j] : r.tokens[0];
    const TokenLogprob& got = j < prompt.size() ? r.prompt_logprobs[j] : r.logprobs[0];
    EXPECT_EQ(got.id, tok);
    EXPECT_NEAR(got.logprob, double(row[tok]) - mx - std::log(sum), 1e-4) << "position " << j;
    ASSERT_EQ(got.top.size(), 1u);
    EXPECT_EQ(got.top[0].first, int32_t(std::max_element(row, row + V) - row));
  }
  // max_tokens 0: the prompt scored, nothing generated.
  p.max_tokens = 0;
  auto z = run_all(e, {p})[0];
  EXPECT_TRUE(z.tokens.empty());
  EXPECT_EQ(z.finish, FinishReason::Length);
  EXPECT_EQ(z.prompt_logprobs.size(), prompt.size());
  expect_all_free(e);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, EngineFixture, ::testing::Values("bamba-tiny-a", "bamba-tiny-b"));
// Bamba's relatives (tests/data/family): one of each layer structure.
INSTANTIATE_TEST_SUITE_P(Family, EngineFixture,
                         ::testing::Values("mamba2", "llama3", "granitemoehybrid-moe", "nemotron_h", "falcon_h1", "zamba2"),
                         [](const auto& info) { return test::fixture_param_name(info.param); });

TEST(Engine, ReusedSlotStartsFromZeroState) {
  Model m("bamba-tiny-a");
  const int32_t V = int32_t(m.model.config().vocab_size);
  auto a = greedy(random_prompt(80, V, 1), 20), b = greedy(random_prompt(9, V, 2), 10);
  Engine e(m.model, nullptr, options(m.model, 1, 64));  // one slot: b reuses a's
  auto ra = run_all(e, {a})[0];
  auto rb = run_all(e, {b})[0];
  EXPECT_EQ(ra.tokens, alone(m.model, a));
  EXPECT_EQ(rb.tokens, alone(m.model, b));
  expect_all_free(e);
}

TEST(Engine, CancelFreesAtOnce) {
  Model m("bamba-tiny-b");
  Engine e(m.model, nullptr, options(m.model, 4, 64));
  auto ch = std::make_shared<Channel>();
  auto r = e.submit(greedy(random_prompt(30, 300, 3), 200), ch, 0);
  auto other = e.submit(greedy(random_prompt(10, 300, 4), 5), ch, 1);
  auto first = ch->pop(60s);
  ASSERT_TRUE(first);
  r->cancel();
  bool aborted = false, other_done = false;
  for (int i = 0; i < 400 && !(aborted && other_done); ++i) {
    auto o = ch->pop(60s);
    ASSERT_TRUE(o);
    if (o->index == 0 && o->finish == FinishReason::Abort) aborted = true;
    if (o->index == 1 && o->finish == FinishReason::Length) other_done = true;
  }
  EXPECT_TRUE(aborted);
  EXPECT_TRUE(other_done);
  expect_all_free(e);
  EXPECT_EQ(e.stats().finished["abort"], 1u);
}

TEST(Engine, RejectsBadRequests) {
  Model m("bamba-tiny-b");
  Engine e(m.model, nullptr, options(m.model, 4, 64));
  auto ch = std::make_shared<Channel>();
  EXPECT_THROW(e.submit(greedy({}, 4), ch), Error);
  EXPECT_THROW(e.submit(greedy({1, 300}, 4), ch), Error);             // id out of range
  EXPECT_THROW(e.submit(greedy(random_prompt(250, 300, 1), 10), ch), Error);  // over max_model_len
  RequestParams p = greedy({1, 2}, 4);
  p.sampling.top_p = 0;
  EXPECT_THROW(e.submit(p, ch), Error);
  EXPECT_TRUE(e.alive());
  EXPECT_EQ(run_all(e, {greedy({1, 2, 3}, 3)})[0].tokens.size(), 3u);
}

}  // namespace
}  // namespace bamba
