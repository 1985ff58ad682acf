// Sessions in the Engine (bamba-tiny-a): a request naming a kept session whose prompt extends it computes only
// the new tokens and answers as the whole conversation run alone; forked sessions each equal their run alone;
// a saved session loaded under another id goes on the same way; bad ids, missing sessions and sessions on an
// engine without them are clear errors.
#include <gtest/gtest.h>

#include <random>

#include "core/error.h"
#include "engine/engine.h"
#include "engine/generator.h"
#include "test_util.h"

namespace bamba {
namespace {

using namespace std::chrono_literals;

struct Fixture {
  std::unique_ptr<Backend> be = make_cpu_backend();
  HybridModel model = load_model(test::model_dir("bamba-tiny-a"), *be);
  int32_t V = int32_t(model.config().vocab_size);

  EngineOptions options(int32_t sessions) const {
    EngineOptions o;
    o.max_model_len = 256;
    o.sched = {4, 64, 64};
    o.max_sessions = sessions;
    o.cache = Engine::cache_sizes(model.config(), 4, o.max_model_len, 1e9, 0, sessions);
    return o;
  }
  std::vector<int32_t> tokens(int32_t n, uint32_t seed) const {
    std::mt19937 rng(seed);
    std::vector<int32_t> p(static_cast<size_t>(n));
    for (auto& t : p) t = int32_t(rng() % uint32_t(V));
    return p;
  }
  std::vector<int32_t> alone(const std::vector<int32_t>& prompt, int32_t n) const {
    Generator g(model, 256, 64);
    std::vector<int32_t> out;
    g.generate(prompt, n, {}, {}, [&](int32_t id) {
      out.push_back(id);
      return true;
    });
    return out;
  }
};

std::vector<int32_t> run(Engine& e, std::vector<int32_t> prompt, int32_t n, const std::string& session) {
  RequestParams p;
  p.prompt = std::move(prompt);
  p.max_tokens = n;
  p.ignore_eos = true;
  p.session = session;
  auto ch = std::make_shared<Channel>();
  e.submit(p, ch);
  std::vector<int32_t> out;
  for (;;) {
    auto o = ch->pop(60s);
    if (!o) {
      ADD_FAILURE() << "timed out";
      return out;
    }
    EXPECT_TRUE(o->error.empty()) << o->error;
    out.insert(out.end(), o->tokens.begin(), o->tokens.end());
    if (o->finish != FinishReason::None) return out;
  }
}

std::vector<int32_t> operator+(std::vector<int32_t> a, const std::vector<int32_t>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

TEST(Sessions, ContinueForkSaveAndLoadEqualTheirRunsAlone) {
  Fixture f;
  Engine e(f.model, nullptr, f.options(4));
  const auto p1 = f.tokens(40, 1);
  const auto out1 = run(e, p1, 8, "chat");
  EXPECT_EQ(out1, f.alone(p1, 8));
  auto list = e.sessions();
  ASSERT_EQ(list.size(), 1u);
  EXPECT_EQ(list[0].id, "chat");
  EXPECT_EQ(list[0].tokens, 48);
  EXPECT_EQ(list[0].cached, 47);  // the last drawn token is fed with the next turn

  // Turn 2 continues from the state: only the new tokens are computed.
  const auto turn2 = p1 + out1 + f.tokens(11, 2);
  EXPECT_EQ(run(e, turn2, 8, "chat"), f.alone(turn2, 8));
  EXPECT_EQ(e.stats().session_hits, 47u);

  // Fork: two branches of the conversation, each as if run alone.
  e.fork_session("chat", "branch");
  const auto base = turn2 + f.alone(turn2, 8);
  const auto a = base + f.tokens(5, 3), b = base + f.tokens(9, 4);
  EXPECT_EQ(run(e, a, 6, "chat"), f.alone(a, 6));
  EXPECT_EQ(run(e, b, 6, "branch"), f.alone(b, 6));
  EXPECT_EQ(e.stats().session_hits, 47u + 2 * uint64_t(base.size() - 1));

  // Save, delete, load under another id: the same continuation.
  const std::string bytes = e.save_session("branch");
  EXPECT_TRUE(e.delete_session("branch"));
  EXPECT_FALSE(e.delete_session("branch"));
  e.load_session("restored", bytes);
  const auto c = b + f.alone(b, 6) + f.tokens(4, 5);
  EXPECT_EQ(run(e, c, 5, "restored"), f.alone(c, 5));

  // A prompt that does not extend the session starts afresh (and replaces the session when it finishes).
  const auto other = f.tokens(30, 6);
  EXPECT_EQ(run(e, other, 4, "restored"), f.alone(other, 4));
  for (const SessionInfo& i : e.sessions())
    if (i.id == "restored") {
      EXPECT_EQ(i.tokens, 34);
    }

  // Errors.
  auto msg = [](const std::function<void()>& fn) {
    try {
      fn();
    } catch (const Error& err) {
      return std::string(err.what());
    }
    return std::string("(no error)");
  };
  EXPECT_EQ(msg([&] { e.save_session("nope"); }), "no session \"nope\"");
  EXPECT_EQ(msg([&] { e.fork_session("nope", "x"); }), "no session \"nope\"");
  EXPECT_NE(msg([&] { e.fork_session("chat", "bad id"); }).find("only letters"), std::string::npos);
  EXPECT_NE(msg([&] { e.load_session("x", "garbage"); }).find("session \"x\": "), std::string::npos);
  RequestParams p;
  p.prompt = {1, 2};
  p.session = "a/b";
  EXPECT_THROW(e.validate(p), Error);
  Engine off(f.model, nullptr, f.options(0));
  p.session = "fine";
  EXPECT_NE(msg([&] { off.validate(p); }).find("sessions are off"), std::string::npos);
}

TEST(Sessions, TheLeastRecentlyUsedGoesBeyondTheLimit) {
  Fixture f;
  Engine e(f.model, nullptr, f.options(2));
  run(e, f.tokens(20, 1), 2, "a");
  run(e, f.tokens(20, 2), 2, "b");
  run(e, f.tokens(20, 3), 2, "c");
  auto list = e.sessions();
  ASSERT_EQ(list.size(), 2u);
  EXPECT_EQ(list[0].id, "b");
  EXPECT_EQ(list[1].id, "c");
  EXPECT_TRUE(e.delete_session("b"));
  EXPECT_TRUE(e.delete_session("c"));
  // Everything back: slots and pages.
  for (int i = 0; i < 100 && e.stats().free_slots != e.cache().sizes().n_slots; ++i) std::this_thread::sleep_for(5ms);
  EXPECT_EQ(e.stats().free_slots, e.cache().sizes().n_slots);
  EXPECT_EQ(e.stats().free_blocks, e.cache().sizes().n_blocks);
}

}  // namespace
}  // namespace bamba
