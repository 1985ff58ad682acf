// Speculative decoding in the serving engine (Engine with EngineOptions::drafter): many concurrent requests of
// mixed lengths, some stopping inside a verified draft (stop ids, stop strings, max_tokens), give the tokens of
// the engine without drafts, token for token, with both rollbacks (recompute, per-position) and four drafters:
// prompt lookup, the target as its own draft model (accepts nearly all), a draft of unrelated weights (accepts
// little) and a scripted one (the known output with a spoiled token at a moving place: partial acceptances, and
// accepted runs into stop ids, stop strings and max_tokens, where the rest of the verification is dropped). Also: seeded sampling and penalties, the per-request opt-out, preemption, no leaked slots or
// pages, StepBatch::state_after (the per-position states) against feeding the tokens one step at a time, the
// scheduler's draft budget, and `bamba serve --speculative` over HTTP.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <random>
#include <thread>

#include "engine/drafter.h"
#include "engine/engine.h"
#include "fixture_runner.h"
#include "server_util.h"
#include "engine_runner.h"
#include "test_util.h"
#include "tokenizer/tokenizer.h"

namespace bamba {
namespace {

using namespace std::chrono_literals;

using Result = test::EngineResult;
using test::run_all;

// The engine's stats once it has settled after the last output (its gauges are updated after the step that sent it).
EngineStats settled(const Engine& e) {
  for (int i = 0; i < 500 && e.stats().num_running + e.stats().num_waiting > 0; ++i)
    std::this_thread::sleep_for(10ms);
  std::this_thread::sleep_for(20ms);
  return e.stats();
}

// Proposes the continuation of a known output (from a run without drafts), spoiled at chosen places: drafts are
// accepted in full, in part (the spoiled token and everything after it rejected) or not at all, in a pattern
// that moves with the sequence's length, and they run into stop tokens, stop strings and max_tokens.
class ScriptedDrafter : public Drafter {
 public:
  ScriptedDrafter(std::vector<std::vector<int32_t>> known, int32_t vocab) : known_(std::move(known)), vocab_(vocab) {}
  std::vector<int32_t> propose(std::span<const int32_t> ids, int32_t k) override {
    for (const auto& w : known_) {
      if (w.size() <= ids.size() || !std::equal(ids.begin(), ids.end(), w.begin())) continue;
      std::vector<int32_t> d(w.begin() + long(ids.size()), w.begin() + long(std::min(w.size(), ids.size() + size_t(k))));
      const size_t spoil = ids.size() % 5;  // 0..4: the draft token to spoil (none when past the end)
      if (spoil < d.size()) d[spoil] = (d[spoil] + 1) % vocab_;
      return d;
    }
    return {};
  }
  std::string name() const override { return "scripted"; }

 private:
  std::vector<std::vector<int32_t>> known_;
  int32_t vocab_;
};

std::vector<std::vector<int32_t>> known(const std::vector<RequestParams>& ps, const std::vector<std::vector<int32_t>>& outs) {
  std::vector<std::vector<int32_t>> w;
  for (size_t i = 0; i < ps.size(); ++i) {
    w.push_back(ps[i].prompt);
    w.back().insert(w.back().end(), outs[i].begin(), outs[i].end());
  }
  return w;
}

struct Model {
  std::unique_ptr<Backend> be = make_cpu_backend();
  HybridModel model;
  explicit Model(const std::string& name)
      : model(name == "dummy" ? dummy_model(*be) : load_model(test::fixture_model_dir(name), *be)) {}
};

constexpr int32_t kSeqs = 4, kK = 4;

EngineOptions options(const HybridModel& m, Drafter* d, SpecRollback r, int32_t num_blocks = 0) {
  EngineOptions o;
  o.max_model_len = 256;
  o.sched = {kSeqs, kSeqs * (kK + 1) + 32, kSeqs * (kK + 1)};
  o.drafter = d;
  o.num_speculative_tokens = kK;
  o.spec_rollback = r;
  o.cache = Engine::cache_sizes(m.config(), kSeqs, o.max_model_len, 1e9, num_blocks,
                                d ? Engine::speculative_slots(kSeqs, kK, r) : 0);
  return o;
}

// Prompts that repeat a phrase (prompt lookup finds drafts), of mixed lengths.
std::vector<int32_t> repetitive(int32_t vocab, uint32_t seed, int32_t phrase_len, int32_t times) {
  std::mt19937 rng(seed);
  std::vector<int32_t> phrase(static_cast<size_t>(phrase_len)), p;
  for (auto& t : phrase) t = int32_t(rng() % uint32_t(std::min(vocab, 200)));  // bytes: text for stop strings
  for (int i = 0; i < times; ++i) p.insert(p.end(), phrase.begin(), phrase.end());
  return p;
}

RequestParams req(std::vector<int32_t> prompt, int32_t max_tokens) {
  RequestParams p;
  p.prompt = std::move(prompt);
  p.max_tokens = max_tokens;
  p.ignore_eos = true;
  p.logprobs = 2;
  return p;
}

std::vector<std::vector<int32_t>> g_known_outputs;  // workload()'s outputs without stops, max_tokens 40

// The workload: 10 requests (more than kSeqs: some wait), with max_tokens from 1 to 40; then stop ids and stop
// strings taken from the plain outputs so that they hit in the middle of the output (inside a verified draft
// when drafts are accepted).
std::vector<RequestParams> workload(Engine& plain, int32_t V) {
  std::vector<RequestParams> ps;
  const int32_t lens[] = {1, 3, 7, 40, 17, 33, 2, 25, 40, 12};
  for (int i = 0; i < 10; ++i) ps.push_back(req(repetitive(V, uint32_t(i + 1), 3 + i % 5, 2 + i % 4), lens[i]));
  std::vector<RequestParams> longer = ps;  // the outputs past where stops will end them (for ScriptedDrafter)
  for (auto& p : longer) p.max_tokens = 40;
  const std::vector<Result> base = run_all(plain, longer);
  for (const Result& r : base) g_known_outputs.push_back(r.tokens);
  // A stop id: a token of the output that first appears at j >= 3.
  for (int i : {3, 8}) {
    const auto& t = base[size_t(i)].tokens;
    for (size_t j = 3; j < t.size(); ++j)
      if (std::find(t.begin(), t.begin() + long(j), t[j]) == t.begin() + long(j)) {
        ps[size_t(i)].stop_token_ids = {t[j]};
        break;
      }
  }
  // A stop string: two characters from the middle of the text.
  for (int i : {5, 7}) {
    const std::string& s = base[size_t(i)].text;
    if (s.size() >= 8) ps[size_t(i)].stop = {s.substr(s.size() / 2, 2)};
  }
  return ps;
}

void expect_same(const std::vector<Result>& got, const std::vector<Result>& want, const std::string& what) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    EXPECT_EQ(got[i].tokens, want[i].tokens) << what << ", request " << i;
    EXPECT_EQ(got[i].text, want[i].text) << what << ", request " << i;
    EXPECT_EQ(got[i].finish, want[i].finish) << what << ", request " << i;
    ASSERT_EQ(got[i].logprobs.size(), want[i].logprobs.size()) << what << ", request " << i;
    for (size_t j = 0; j < got[i].logprobs.size(); ++j)
      EXPECT_NEAR(got[i].logprobs[j].logprob, want[i].logprobs[j].logprob, 1e-3) << what << ", request " << i;
  }
}

struct Case {
  const char* model;
  SpecRollback rollback;
};

class ServerSpeculative : public ::testing::TestWithParam<Case> {};

TEST_P(ServerSpeculative, GreedyOutputsEqualPlainDecodingWithEveryDrafter) {
  Model m(GetParam().model);
  const ModelConfig& cfg = m.model.config();
  const int32_t V = int32_t(cfg.vocab_size);
  Tokenizer tok = Tokenizer::byte_level_default();
  Engine plain(m.model, &tok, options(m.model, nullptr, GetParam().rollback));
  g_known_outputs.clear();
  const std::vector<RequestParams> ps = workload(plain, V);
  ScriptedDrafter scripted(known(ps, g_known_outputs), V);
  const std::vector<Result> want = run_all(plain, ps);
  int stopped = 0;
  for (const Result& r : want) stopped += r.finish == FinishReason::Stop;
  EXPECT_GE(stopped, 2);  // the stop ids and strings hit

  NgramDrafter ngram(1, 4);
  BatchModelDrafter self(m.model, V, kSeqs, 256, 64);  // the target drafting for itself: agrees nearly always
  HybridModel other(cfg, dummy_weights(cfg, *m.be, 99), *m.be);
  BatchModelDrafter rarely(other, V, kSeqs, 256, 64);  // unrelated weights: agrees rarely
  for (auto [d, name] : {std::pair<Drafter*, const char*>{&ngram, "ngram"}, {&self, "self"}, {&rarely, "other"},
                         {&scripted, "scripted"}}) {
    const EngineOptions o = options(m.model, d, GetParam().rollback);
    Engine spec(m.model, &tok, o);
    const EngineStats before = spec.stats();
    expect_same(run_all(spec, ps), want, name);
    const EngineStats st = settled(spec);
    EXPECT_GT(st.spec_draft_tokens, 0u) << name;
    EXPECT_LE(st.spec_accepted_tokens, st.spec_draft_tokens) << name;
    if (d == &self) {
      EXPECT_GT(st.spec_accepted_tokens, st.spec_draft_tokens * 8 / 10) << name;
    } else if (d == &rarely) {
      EXPECT_LT(st.spec_accepted_tokens, st.spec_draft_tokens / 2) << name;
    } else if (d == &scripted) {  // spoiled drafts are rejected, the rest accepted
      EXPECT_GT(st.spec_accepted_tokens, st.spec_draft_tokens / 3) << name;
      EXPECT_LT(st.spec_accepted_tokens, st.spec_draft_tokens) << name;
    }  // (prompt lookup: these random models rarely copy their prompt; its acceptance is measured in bench-serve)
    if (d == &self || d == &scripted) {
      EXPECT_LT(st.steps, plain.stats().steps) << name << ": accepted drafts save steps";
    }
    // Everything given back: sequence slots, rollback slots, KV pages (a page pool is checked by free_blocks).
    EXPECT_EQ(st.free_slots, before.free_slots) << name;
    EXPECT_EQ(st.free_blocks, before.free_blocks) << name;
  }
}

TEST_P(ServerSpeculative, SampledAndPenalisedRequestsEqualPlainDecoding) {
  Model m(GetParam().model);
  const int32_t V = int32_t(m.model.config().vocab_size);
  std::vector<RequestParams> ps;
  for (int i = 0; i < 6; ++i) {
    RequestParams p = req(repetitive(V, uint32_t(i + 20), 4 + i, 3), 24);
    if (i % 3 == 0) p.sampling = {0.8f, 0, 1.f, uint64_t(i + 1)};          // seeded sampling
    if (i % 3 == 1) p.sampling = {0.7f, 20, 0.9f, uint64_t(i + 1)};        // with top-k and top-p
    if (i % 2 == 0) p.presence_penalty = 0.5f, p.frequency_penalty = 0.3f;  // penalties see the drafts as output
    if (i == 5) p.logit_bias = {{p.prompt[1], 5.f}}, p.repetition_penalty = 1.3f;
    ps.push_back(p);
  }
  Engine plain(m.model, nullptr, options(m.model, nullptr, GetParam().rollback));
  const std::vector<Result> want = run_all(plain, ps);
  NgramDrafter ngram(1, 4);
  std::vector<std::vector<int32_t>> outs;
  for (const Result& r : want) outs.push_back(r.tokens);
  ScriptedDrafter scripted(known(ps, outs), V);
  for (Drafter* d : {static_cast<Drafter*>(&ngram), static_cast<Drafter*>(&scripted)}) {
    Engine spec(m.model, nullptr, options(m.model, d, GetParam().rollback));
    expect_same(run_all(spec, ps), want, d->name());
    EXPECT_GT(spec.stats().spec_draft_tokens, 0u) << d->name();
    if (d == &scripted) {
      EXPECT_GT(spec.stats().spec_accepted_tokens, 0u);
    }
  }
}

TEST_P(ServerSpeculative, PreemptionAndTheOptOutChangeNothing) {
  Model m(GetParam().model);
  const int32_t V = int32_t(m.model.config().vocab_size);
  std::vector<RequestParams> ps;
  for (int i = 0; i < 6; ++i) ps.push_back(req(repetitive(V, uint32_t(i + 40), 5, 6), 48));
  // Few pages: sequences are preempted and recomputed (pure Mamba models have no pages: no preemption then).
  const int32_t blocks = 16;
  Engine plain(m.model, nullptr, options(m.model, nullptr, GetParam().rollback, blocks));
  const std::vector<Result> want = run_all(plain, ps);
  std::vector<std::vector<int32_t>> outs;
  for (const Result& r : want) outs.push_back(r.tokens);
  ScriptedDrafter scripted(known(ps, outs), V);
  Engine spec(m.model, nullptr, options(m.model, &scripted, GetParam().rollback, blocks));
  expect_same(run_all(spec, ps), want, "preempted");
  const EngineStats st = settled(spec);
  EXPECT_GT(st.spec_accepted_tokens, 0u);
  if (m.model.config().n_attention_layers() > 0) {
    EXPECT_GT(st.preemptions, 0u);
  }
  EXPECT_EQ(st.free_blocks, spec.cache().sizes().n_blocks);
  EXPECT_EQ(st.free_slots, spec.cache().sizes().n_slots);
  // One speculating sequence per step at most (--speculative-max-seqs 1): the others decode plainly meanwhile.
  EngineOptions one = options(m.model, &scripted, GetParam().rollback);
  one.speculative_max_seqs = 1;
  Engine capped(m.model, nullptr, one);
  expect_same(run_all(capped, ps), want, "one speculating sequence per step");
  EXPECT_GT(capped.stats().spec_drafts, 0u);
  EXPECT_LE(capped.stats().spec_drafts, capped.stats().steps);
  // "speculative": false: no drafts at all.
  for (auto& p : ps) p.speculative = false;
  Engine off(m.model, nullptr, options(m.model, &scripted, GetParam().rollback));
  expect_same(run_all(off, ps), want, "opted out");
  EXPECT_EQ(off.stats().spec_draft_tokens, 0u);
}

INSTANTIATE_TEST_SUITE_P(Models, ServerSpeculative,
                         ::testing::Values(Case{"bamba-tiny-a", SpecRollback::Recompute},
                                           Case{"bamba-tiny-a", SpecRollback::PerPosition},
                                           Case{"dummy", SpecRollback::Recompute},
                                           Case{"dummy", SpecRollback::PerPosition}),
                         [](const auto& i) {
                           return std::string(i.param.model == std::string("dummy") ? "dummy" : "tiny_a") +
                                  (i.param.rollback == SpecRollback::Recompute ? "_recompute" : "_per_position");
                         });

// The scheduler gives drafts only what leaves every later running sequence a token and a logit row, and gives
// none to a sequence still in its prompt.
TEST(SchedulerDrafts, DraftsLeaveEveryLaterDecodeItsTokenAndRow) {
  auto be = make_cpu_backend();
  const ModelConfig cfg = dummy_config();
  HybridCache cache(cfg, *be, HybridCache::sizes_for(cfg, 4, 64));
  Scheduler s({4, 8, 8}, cache);
  for (int64_t i = 0; i < 3; ++i) s.add(i, {1, 2}, false);
  for (const ScheduledSeq& p : s.schedule()) s.advance(p);  // the three prompts in one step
  for (int64_t i = 0; i < 3; ++i) {
    s.find(i)->tokens.push_back(5);  // each drew a token: decoding
    s.find(i)->draft = {6, 7, 8, 9};
  }
  s.add(3, {1, 2, 3}, false);
  s.find(3)->draft = {6};  // (a waiting sequence's draft is ignored)
  const std::vector<ScheduledSeq> plan = s.schedule();
  ASSERT_EQ(plan.size(), 3u);  // 8 tokens: 1 + 4 drafts, 1 + 1, 1 + 0; nothing left for the prompt
  EXPECT_EQ(plan[0].n_draft, 4);
  EXPECT_EQ(plan[1].n_draft, 1);
  EXPECT_EQ(plan[2].n_draft, 0);
  EXPECT_EQ(s.find(0)->draft.size(), 4u);
  EXPECT_EQ(s.find(1)->draft.size(), 1u);
  EXPECT_TRUE(s.find(2)->draft.empty());
  for (const ScheduledSeq& p : plan) EXPECT_EQ(p.n, 1);
}

// `bamba serve --speculative`: HTTP outputs (greedy, dummy model) equal a server's without drafts, the request
// field "speculative": false turns drafting off for that request (the draft counter does not move), a non-boolean
// value is a 400, and /metrics reports the draft counters and the acceptance rate.
double spec_metric(const test::ServerProcess& s, const std::string& name) {
  auto r = s.client().Get("/metrics");
  if (!r) return -1;
  const std::string key = "bamba:" + name + "{model_name=\"bamba-dummy\"} ";
  const size_t at = r->body.find(key);
  return at == std::string::npos ? -2 : std::stod(r->body.substr(at + key.size()));
}

TEST(ServeSpeculative, HttpOutputsMetricsAndThePerRequestSwitch) {
  using nlohmann::json;
  test::ServerProcess plain("--model dummy --max-num-seqs 4");
  ASSERT_TRUE(plain.ready()) << plain.log();
  for (const char* rollback : {"per-position", "recompute"}) {
    test::ServerProcess spec(std::string("--model dummy --max-num-seqs 4 --speculative ngram --num-speculative-tokens 3 "
                                         "--speculative-rollback ") + rollback);
    ASSERT_TRUE(spec.ready()) << spec.log();
    EXPECT_NE(spec.log().find("speculative decoding: ngram, 3 tokens per step"), std::string::npos) << spec.log();
    for (int i = 0; i < 3; ++i) {
      json body = {{"prompt", repetitive(258, uint32_t(i + 7), 4 + i, 5)}, {"max_tokens", 40}, {"temperature", 0},
                   {"ignore_eos", true}};
      auto a = plain.client().Post("/v1/completions", body.dump(), "application/json");
      auto b = spec.client().Post("/v1/completions", body.dump(), "application/json");
      ASSERT_TRUE(a && b && a->status == 200 && b->status == 200);
      EXPECT_EQ(json::parse(a->body)["choices"][0]["text"], json::parse(b->body)["choices"][0]["text"]) << rollback;
    }
    std::this_thread::sleep_for(100ms);  // (the counters are added at the end of the step that sent the answer)
    const double drafted = spec_metric(spec, "spec_decode_num_draft_tokens_total");
    EXPECT_GT(drafted, 0) << rollback;
    EXPECT_GE(spec_metric(spec, "spec_decode_num_accepted_tokens_total"), 0);
    const double rate = spec_metric(spec, "spec_decode_draft_acceptance_rate");
    EXPECT_GE(rate, 0);
    EXPECT_LE(rate, 1);
    EXPECT_GT(spec_metric(spec, "engine_steps_total"), 0);
    json off = {{"prompt", repetitive(258, 3, 4, 5)}, {"max_tokens", 20}, {"ignore_eos", true}, {"speculative", false}};
    auto c = spec.client().Post("/v1/completions", off.dump(), "application/json");
    ASSERT_TRUE(c && c->status == 200);
    std::this_thread::sleep_for(100ms);
    EXPECT_EQ(spec_metric(spec, "spec_decode_num_draft_tokens_total"), drafted) << "a request that opted out drafted";
    off["speculative"] = "no";
    auto d = spec.client().Post("/v1/completions", off.dump(), "application/json");
    ASSERT_TRUE(d);
    EXPECT_EQ(d->status, 400) << d->body;
  }
}

// The per-position states of a step (StepBatch::state_after) equal the states after feeding the same tokens
// one step at a time, for two sequences in one batch with a third that keeps none.
TEST(StateAfter, EqualsTheStateOfFeedingTokenByToken) {
  Model m("bamba-tiny-a");
  const ModelConfig& cfg = m.model.config();
  CacheSizes cs = HybridCache::sizes_for(cfg, 3, 64);
  cs.n_slots = 3 + 3 * 5 + 1;
  HybridCache cache(cfg, *m.be, cs);
  Workspace ws(cfg, *m.be, 64, 64);
  const int32_t V = int32_t(cfg.vocab_size);
  const std::vector<std::vector<int32_t>> toks = {repetitive(V, 1, 7, 1), repetitive(V, 2, 6, 1), repetitive(V, 3, 5, 1)};
  std::vector<SeqCache> seqs(3);
  const int32_t prefix = 4;
  // A prefix first (continuing sequences read their slots' state), then the rest with per-position states.
  std::vector<int32_t> extra = {9, 1, 200, 17, 3};
  StepBatch b;
  for (int s = 0; s < 3; ++s) {
    ASSERT_TRUE(cache.reserve(seqs[size_t(s)], prefix + int32_t(extra.size())));
    b.add(std::span(toks[size_t(s)]).first(prefix), 0, seqs[size_t(s)].slot, seqs[size_t(s)].blocks);
  }
  m.model.forward(b, cache, ws);
  std::vector<int32_t> hist;  // sequence s, position j: slot 3 + s * 5 + j
  b.clear();
  for (int s = 0; s < 3; ++s) {
    b.add(std::span(extra).first(size_t(3 + s)), prefix, seqs[size_t(s)].slot, seqs[size_t(s)].blocks);
    if (s == 1) continue;  // keeps none
    for (int j = 0; j < 3 + s; ++j) b.keep_state_after(b.seq_start[size_t(s)] + j, 3 + s * 5 + j);
  }
  m.model.forward(b, cache, ws);
  // Reference: the same prefix, then the extra tokens one step each, into fresh slots.
  CacheSizes rs = HybridCache::sizes_for(cfg, 1, 64);
  for (int s : {0, 2}) {
    HybridCache ref(cfg, *m.be, rs);
    SeqCache q;
    ASSERT_TRUE(ref.reserve(q, 64));
    StepBatch r;
    r.add(std::span(toks[size_t(s)]).first(prefix), 0, q.slot, q.blocks);
    m.model.forward(r, ref, ws);
    for (int j = 0; j < 3 + s; ++j) {
      r.clear();
      r.add(std::span(extra).subspan(size_t(j), 1), prefix + j, q.slot, q.blocks);
      m.model.forward(r, ref, ws);
      for (int64_t l = 0; l < cfg.n_mamba_layers(); ++l) {
        for (auto [got_t, want_t] : {std::pair{cache.conv_state(l), ref.conv_state(l)}, {cache.ssm_state(l), ref.ssm_state(l)}}) {
          std::vector<float> got(size_t(got_t.numel())), want(size_t(want_t.numel()));
          m.be->to_host_f32(got_t, got.data());
          m.be->to_host_f32(want_t, want.data());
          const size_t per = want.size();  // one slot
          const float* g = got.data() + size_t(3 + s * 5 + j) * per;
          for (size_t e = 0; e < per; ++e)
            ASSERT_NEAR(g[e], want[e], 1e-4f * (1.f + std::abs(want[e]))) << "seq " << s << " pos " << j << " layer " << l;
        }
      }
    }
  }
}

}  // namespace
}  // namespace bamba
