// Prefix caching and forks in the Engine, on the fixture model bamba-tiny-a and the built-in dummy model: outputs
// (greedy tokens and their logprobs) with the prefix cache equal those without it, for a shared system prompt, a
// multi-turn conversation and a repeated prompt, with hit counts as the page/snapshot rules say; prefixes that
// end inside a prefill chunk split it (Scheduler); LRU eviction under a small page pool changes no output and
// leaks nothing; n > 1 choices fork one prefill and each equals the same request run alone.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <thread>

#include "engine/engine.h"
#include "engine/generator.h"
#include "engine/prefix_cache.h"
#include "fixture_runner.h"
#include "engine_runner.h"
#include "test_util.h"

namespace bamba {
namespace {

using namespace std::chrono_literals;

using Result = test::EngineResult;
using test::run_all;

struct Model {
  std::unique_ptr<Backend> be = make_cpu_backend();
  HybridModel model;
  explicit Model(const std::string& name)
      : model(name == "dummy" ? dummy_model(*be) : load_model(test::fixture_model_dir(name), *be)) {}
};

EngineOptions options(const HybridModel& m, bool prefix, int32_t budget = 64, int32_t num_blocks = 0,
                      int32_t snapshots = 8) {
  EngineOptions o;
  o.max_model_len = 256;
  o.sched = {4, budget, std::max(budget, 4)};
  o.sched.prefix_cache = prefix;
  o.sched.prefix_snapshots = prefix ? snapshots : 0;
  o.cache = Engine::cache_sizes(m.config(), 4, o.max_model_len, 1e9, num_blocks, o.sched.prefix_snapshots);
  return o;
}

std::vector<int32_t> random_tokens(int32_t n, int32_t vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int32_t> p(static_cast<size_t>(n));
  for (auto& t : p) t = int32_t(rng() % uint32_t(vocab));
  return p;
}

std::vector<int32_t> concat(std::vector<int32_t> a, const std::vector<int32_t>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

RequestParams greedy(std::vector<int32_t> prompt, int32_t max_tokens) {
  RequestParams p;
  p.prompt = std::move(prompt);
  p.max_tokens = max_tokens;
  p.ignore_eos = true;
  p.logprobs = 3;
  return p;
}

// One request at a time (so that each finds what the earlier ones left in the cache); a turn of the
// conversation (prompt marked by an empty-token sentinel -1 at the front) extends the previous turn's prompt
// and output.
std::vector<Result> run_in_order(Engine& e, std::vector<RequestParams> ps) {
  std::vector<Result> out;
  for (auto& p : ps) {
    if (!p.prompt.empty() && p.prompt[0] == -1) {  // the next turn: previous prompt + output + this message
      std::vector<int32_t> msg(p.prompt.begin() + 1, p.prompt.end());
      p.prompt = concat(concat(ps[out.size() - 1].prompt, out.back().tokens), msg);
    }
    out.push_back(run_all(e, {p})[0]);
  }
  return out;
}

class PrefixCacheModels : public ::testing::TestWithParam<const char*> {};

void outputs_and_hits(const char* model, bool decode_snapshots, uint64_t want_hits) {
  Model m(model);
  const int32_t V = int32_t(m.model.config().vocab_size);
  // 16-token pages. A system prompt of 40 tokens; requests of 60 tokens (chunks of 64 tokens per step).
  const auto sys = random_tokens(40, V, 1);
  std::vector<RequestParams> ps = {
      greedy(concat(sys, random_tokens(20, V, 2)), 8),  // A: miss; snapshot at 48 (its last page boundary)
      greedy(concat(sys, random_tokens(20, V, 3)), 8),  // B: pages 0-1 match, no snapshot there: miss; one at 32
      greedy(concat(sys, random_tokens(20, V, 4)), 8),  // C: hit 32 (the system prompt's full pages)
      greedy(concat(sys, random_tokens(20, V, 2)), 8),  // A again: hit 48
      greedy(concat({-1}, random_tokens(10, V, 5)), 8),  // A's next turn (78 = A + its output + 10): hit 48
      greedy(concat({-1}, random_tokens(30, V, 6)), 8),  // the next (116): hit 64, where the last turn snapshotted
  };
  std::vector<Result> ref, got;
  {
    Engine e(m.model, nullptr, options(m.model, false));
    ref = run_in_order(e, ps);
  }
  EngineOptions with = options(m.model, true);
  with.sched.prefix_decode_snapshots = decode_snapshots;
  Engine e(m.model, nullptr, with);
  got = run_in_order(e, ps);
  double worst = 0;
  for (size_t i = 0; i < ps.size(); ++i) {
    EXPECT_EQ(got[i].tokens, ref[i].tokens) << "request " << i;
    ASSERT_EQ(got[i].logprobs.size(), ref[i].logprobs.size());
    for (size_t k = 0; k < ref[i].logprobs.size(); ++k) {
      const TokenLogprob &a = got[i].logprobs[k], &b = ref[i].logprobs[k];
      worst = std::max(worst, double(std::abs(a.logprob - b.logprob)));
      ASSERT_EQ(a.top.size(), b.top.size());
      for (size_t j = 0; j < a.top.size(); ++j) {
        EXPECT_EQ(a.top[j].first, b.top[j].first) << "request " << i << " token " << k;
        worst = std::max(worst, double(std::abs(a.top[j].second - b.top[j].second)));
      }
    }
  }
  // Not bitwise: a restored state is continued in chunks that start at the snapshot, and the SSD's chunked
  // scan and the attention's sums round differently for other chunk boundaries (as chunked prefill does).
  EXPECT_LT(worst, 2e-4) << "largest logprob difference";
  std::printf("largest logprob difference with / without the prefix cache: %.3g\n", worst);
  const EngineStats st = e.stats();
  EXPECT_EQ(st.prefix_cache_hits, want_hits);
  EXPECT_EQ(st.prefix_cache_queries, 4u * 60u + 78u + 116u);
  EXPECT_EQ(st.prefix_cache_pages > 0, m.model.config().n_attention_layers() > 0);  // a pure Mamba model: none
  EXPECT_LE(st.prefix_cache_snapshots, 8);
}

TEST_P(PrefixCacheModels, OutputsEqualWithoutTheCacheAndHitsCountAsThePagesSay) {
  outputs_and_hits(GetParam(), false, 32 + 48 + 48 + 64);
}

// With decode-time snapshots the next turns restore past the previous answers too: turn 1 at 64 (A's output
// crossed 64), turn 2 at 80.
TEST_P(PrefixCacheModels, DecodeSnapshotsLetTheNextTurnSkipThePreviousAnswer) {
  outputs_and_hits(GetParam(), true, 32 + 48 + 64 + 80);
}

INSTANTIATE_TEST_SUITE_P(Models, PrefixCacheModels, ::testing::Values("bamba-tiny-a", "dummy"));
// Bamba's relatives (tests/data/family): a pure Mamba model (snapshots, no pages), a pure attention one (pages,
// empty snapshots) and the other layer structures.
INSTANTIATE_TEST_SUITE_P(Family, PrefixCacheModels,
                         ::testing::Values("mamba2", "llama3", "granitemoehybrid-moe", "nemotron_h", "falcon_h1", "zamba2"),
                         [](const auto& info) { return test::fixture_param_name(info.param); });

// Many different prompts through a pool of 16 pages (one 256-token sequence): the cache evicts its least
// recently used pages and snapshots for the running sequences, outputs stay those without the cache, and at the
// end every page is free or idle in the cache, every slot free or a snapshot.
TEST(PrefixCache, EvictionUnderASmallPoolChangesNothingAndLeaksNothing) {
  Model m("bamba-tiny-a");
  const int32_t V = int32_t(m.model.config().vocab_size);
  const auto sys = random_tokens(33, V, 7);
  std::vector<RequestParams> ps;
  for (int32_t i = 0; i < 12; ++i) ps.push_back(greedy(concat(sys, random_tokens(20 + 9 * i, V, 100 + uint32_t(i))), 6));
  std::vector<Result> ref;
  {
    Engine e(m.model, nullptr, options(m.model, false, 64, 16));
    ref = run_all(e, ps);
  }
  Engine e(m.model, nullptr, options(m.model, true, 64, 16, /*snapshots=*/2));
  auto first = run_in_order(e, ps);  // one by one: the cache fills and must evict
  auto again = run_all(e, ps);       // all at once over a full cache: it gives way to running sequences
  for (size_t i = 0; i < ps.size(); ++i) {
    EXPECT_EQ(first[i].tokens, ref[i].tokens) << "request " << i;
    EXPECT_EQ(again[i].tokens, ref[i].tokens) << "request " << i;
  }
  EngineStats st;
  for (int i = 0; i < 200; ++i) {
    st = e.stats();
    if (st.num_running + st.num_waiting == 0 && st.kv_cache_usage == 0) break;
    std::this_thread::sleep_for(5ms);
  }
  EXPECT_GT(st.prefix_cache_evicted_pages, 0u);
  EXPECT_GT(st.prefix_cache_evicted_snapshots, 0u);
  EXPECT_GT(st.prefix_cache_hits, 0u);
  EXPECT_EQ(st.kv_cache_usage, 0.0);
  EXPECT_EQ(st.state_slots_usage, 0.0);
  const CacheSizes& cs = e.cache().sizes();
  EXPECT_EQ(st.free_blocks + st.prefix_cache_pages, cs.n_blocks);
  EXPECT_EQ(st.free_slots + st.prefix_cache_snapshots, cs.n_slots);
  EXPECT_LE(st.prefix_cache_snapshots, 2);
}

// n > 1: four choices of one prompt (greedy and seeded sampling) fork the first's prefill, and each equals the
// same request run alone (the Generator: one sequence, its own cache).
TEST(PrefixCache, ChoicesForkOnePrefillAndEachEqualsItsRunAlone) {
  Model m("bamba-tiny-a");
  const int32_t V = int32_t(m.model.config().vocab_size);
  const auto prompt = random_tokens(90, V, 11);
  std::vector<RequestParams> ps;
  for (uint64_t i = 0; i < 4; ++i) {
    ps.push_back(greedy(prompt, 10));
    if (i > 0) ps.back().sampling = {0.9f, 0, 1.f, 77 + i * 0x9e3779b97f4a7c15ull};
  }
  for (bool prefix : {false, true}) {
    Engine e(m.model, nullptr, options(m.model, prefix));
    auto ch = std::make_shared<Channel>();
    e.submit_all(ps, ch);  // together, as the server submits the choices of one request
    std::vector<Result> got(ps.size());
    for (size_t done = 0; done < ps.size();) {
      auto o = ch->pop(120s);
      ASSERT_TRUE(o);
      got[size_t(o->index)].tokens.insert(got[size_t(o->index)].tokens.end(), o->tokens.begin(), o->tokens.end());
      done += o->finish != FinishReason::None;
    }
    for (size_t i = 0; i < ps.size(); ++i) {
      Generator g(m.model, 256, 64);
      std::vector<int32_t> alone;
      g.generate(ps[i].prompt, ps[i].max_tokens, ps[i].sampling, {}, [&](int32_t id) {
        alone.push_back(id);
        return true;
      });
      EXPECT_EQ(got[i].tokens, alone) << "choice " << i << (prefix ? " with" : " without") << " the prefix cache";
    }
    EXPECT_EQ(e.stats().forks, 3u);
  }
}

// Everything at once: 40 requests (four system prompts, choices of one prompt submitted together, seeded
// sampling, scored prompts) through 16 pages, so sequences are preempted, cached pages and snapshots evicted and
// choices forked while the cache fills: the outputs are those of an engine without the prefix cache and forks.
TEST(PrefixCache, UnderPreemptionEvictionAndForksOutputsStayTheSame) {
  Model m("bamba-tiny-a");
  const int32_t V = int32_t(m.model.config().vocab_size);
  std::vector<std::vector<int32_t>> systems;
  for (uint32_t k = 0; k < 4; ++k) systems.push_back(random_tokens(20 + 13 * int32_t(k), V, 50 + k));
  std::vector<RequestParams> ps;
  for (int32_t i = 0; i < 40; ++i) {
    const bool same_as_last = i % 5 == 1;  // the choices of one prompt
    ps.push_back(same_as_last ? ps.back()
                              : greedy(concat(systems[size_t(i % 4)], random_tokens(5 + (i * 7) % 40, V, 200 + uint32_t(i))),
                                       3 + i % 6));
    if (i % 3 == 0) ps.back().sampling = {0.8f, 20, 0.9f, 1000 + uint64_t(i)};
    if (i % 11 == 0) ps.back().prompt_logprobs = 1;
  }
  auto run = [&](bool prefix, bool fork) {
    EngineOptions o = options(m.model, prefix, 64, 16, 4);
    o.fork_choices = fork;
    Engine e(m.model, nullptr, o);
    auto ch = std::make_shared<Channel>();
    e.submit_all(ps, ch);
    std::vector<Result> res(ps.size());
    for (size_t done = 0; done < ps.size();) {
      auto out = ch->pop(120s);
      if (!out) {
        ADD_FAILURE() << "timed out";
        break;
      }
      EXPECT_TRUE(out->error.empty()) << out->error;
      res[size_t(out->index)].tokens.insert(res[size_t(out->index)].tokens.end(), out->tokens.begin(), out->tokens.end());
      done += out->finish != FinishReason::None;
    }
    const EngineStats st = e.stats();
    if (prefix) {
      EXPECT_GT(st.preemptions, 0u);
      EXPECT_GT(st.prefix_cache_hits, 0u);
      EXPECT_GT(st.forks, 0u);
    }
    return res;
  };
  const auto ref = run(false, false), got = run(true, true);
  for (size_t i = 0; i < ps.size(); ++i) EXPECT_EQ(got[i].tokens, ref[i].tokens) << "request " << i;
}

// The Scheduler alone: a prefix that ends inside a prefill chunk splits the chunk at the page boundary (the
// state exists only at the end of a step), and the next request with the prefix starts there.
TEST(PrefixCache, ASnapshotInsideAChunkSplitsIt) {
  auto be = make_cpu_backend();
  HybridModel model = dummy_model(*be);
  HybridCache cache(model.config(), *be, CacheSizes{4, 64, 16});
  SchedulerConfig sc{2, 64, 64};
  sc.prefix_cache = true;
  sc.prefix_snapshots = 2;
  Scheduler sched(sc, cache);
  std::vector<int32_t> prompt(60);
  for (size_t i = 0; i < prompt.size(); ++i) prompt[i] = int32_t(i % 50);
  sched.add(0, prompt, false);
  auto plan = sched.schedule();
  ASSERT_EQ(plan.size(), 1u);
  EXPECT_EQ(plan[0].n, 48);  // not 60: the snapshot at 48, the last page boundary before the last token
  sched.advance(plan[0]);
  EXPECT_EQ(sched.prefix_cache()->snapshots(), 1);
  plan = sched.schedule();
  ASSERT_EQ(plan.size(), 1u);
  EXPECT_EQ(plan[0].begin, 48);
  EXPECT_EQ(plan[0].n, 12);
  sched.advance(plan[0]);
  sched.finish(0);
  sched.add(1, prompt, false);  // the same prompt: starts at 48
  plan = sched.schedule();
  ASSERT_EQ(plan.size(), 1u);
  EXPECT_EQ(plan[0].begin, 48);
  EXPECT_EQ(plan[0].n, 12);
  EXPECT_EQ(sched.prefix_hits(), 48u);
  EXPECT_EQ(sched.prefix_queries(), 120u);  // both starts looked up their 60 tokens
}

TEST(PrefixCache, PageKeysChainTheWholePrefix) {
  const std::vector<int32_t> a = {1, 2, 3}, b = {1, 2, 4};
  EXPECT_NE(PrefixCache::page_hash(0, a), PrefixCache::page_hash(0, b));
  EXPECT_NE(PrefixCache::page_hash(5, a), PrefixCache::page_hash(6, a));  // same page, other prefix
  EXPECT_EQ(PrefixCache::page_hash(5, a), PrefixCache::page_hash(5, a));
}

}  // namespace
}  // namespace bamba
