// The Scheduler on its own (a real HybridCache of the dummy model, no forward): token budget, chunked prefill,
// decodes before prompts, preemption of the newest sequence, and every slot and page back at the end.
#include <gtest/gtest.h>

#include <numeric>

#include "backend/backend.h"
#include "engine/scheduler.h"
#include "model/hybrid.h"

namespace bamba {
namespace {

struct Fixture {
  std::unique_ptr<Backend> be = make_cpu_backend();
  HybridModel model = dummy_model(*be);
  std::unique_ptr<HybridCache> cache;
  std::unique_ptr<Scheduler> sched;
  Fixture(int32_t seqs, int32_t blocks, int32_t budget) {
    CacheSizes cs{seqs, blocks, 16};
    cache = std::make_unique<HybridCache>(model.config(), *be, cs);
    sched = std::make_unique<Scheduler>(SchedulerConfig{seqs, budget, std::max(budget, seqs)}, *cache);
  }
  // What the engine does after a step: the scheduled tokens are in the cache; a sequence that reached its end
  // draws one token.
  void run(const std::vector<ScheduledSeq>& plan) {
    for (auto& p : plan) {
      bool end = p.samples();
      p.seq->computed += p.n;
      if (end) p.seq->tokens.push_back(7);
    }
  }
};

std::vector<int32_t> prompt(int32_t n) { return std::vector<int32_t>(size_t(n), 3); }

TEST(Scheduler, ChunksLongPromptsUnderTheBudget) {
  Fixture f(4, 64, 32);
  f.sched->add(0, prompt(100), false);
  auto plan = f.sched->schedule();
  ASSERT_EQ(plan.size(), 1u);
  EXPECT_EQ(plan[0].n, 32);
  EXPECT_FALSE(plan[0].samples());
  f.run(plan);
  f.run(f.sched->schedule());
  f.run(f.sched->schedule());
  plan = f.sched->schedule();  // the last 4 prompt tokens, then it samples
  ASSERT_EQ(plan.size(), 1u);
  EXPECT_EQ(plan[0].begin, 96);
  EXPECT_EQ(plan[0].n, 4);
  EXPECT_TRUE(plan[0].samples());
}

TEST(Scheduler, DecodesGoFirstAndPromptsTakeWhatIsLeft) {
  Fixture f(4, 64, 16);
  f.sched->add(0, prompt(5), false);
  f.sched->add(1, prompt(5), false);
  f.run(f.sched->schedule());  // both prompts in one step (10 <= 16)
  f.sched->add(2, prompt(50), false);
  auto plan = f.sched->schedule();
  ASSERT_EQ(plan.size(), 3u);
  EXPECT_EQ(plan[0].seq->id, 0);
  EXPECT_EQ(plan[0].n, 1);
  EXPECT_EQ(plan[1].n, 1);
  EXPECT_EQ(plan[2].seq->id, 2);
  EXPECT_EQ(plan[2].n, 14);  // the chunk fills the budget
  int32_t total = 0;
  for (auto& p : plan) total += p.n;
  EXPECT_EQ(total, 16);
}

TEST(Scheduler, MaxNumSeqsBoundsTheRunningSet) {
  Fixture f(2, 64, 64);
  for (int i = 0; i < 5; ++i) f.sched->add(i, prompt(3), false);
  auto plan = f.sched->schedule();
  EXPECT_EQ(plan.size(), 2u);
  EXPECT_EQ(f.sched->num_running(), 2);
  EXPECT_EQ(f.sched->num_waiting(), 3);
}

TEST(Scheduler, ScoredPromptsCountTheirLogitRows) {
  Fixture f(4, 64, 64);
  f.sched->add(0, prompt(40), true);  // every prompt row needs logits; logit budget = 64 rows
  f.sched->add(1, prompt(40), true);
  auto plan = f.sched->schedule();
  ASSERT_EQ(plan.size(), 2u);
  EXPECT_TRUE(plan[0].all_logits);
  EXPECT_EQ(plan[0].n + plan[1].n, 64);
}

TEST(Scheduler, PreemptsTheNewestAndRecomputesIt) {
  // 6 pages of 16 tokens: two sequences of 40 fit (3 pages each); growing past 48 needs a 4th page.
  Fixture f(4, 6, 256);
  f.sched->add(0, prompt(40), false);
  f.sched->add(1, prompt(40), false);
  f.run(f.sched->schedule());
  const int32_t start_blocks = 6, start_slots = 4;
  for (int step = 0; step < 8; ++step) f.run(f.sched->schedule());  // both at 48 tokens, all pages used
  EXPECT_EQ(f.cache->free_blocks(), 0);
  EXPECT_EQ(f.sched->num_preemptions(), 0);
  auto plan = f.sched->schedule();  // 0 needs a page: 1 (newest) is preempted
  EXPECT_EQ(f.sched->num_preemptions(), 1);
  ASSERT_EQ(plan.size(), 1u);
  EXPECT_EQ(plan[0].seq->id, 0);
  Sequence* s1 = f.sched->find(1);
  EXPECT_EQ(s1->computed, 0);
  EXPECT_EQ(s1->cache.slot, -1);
  EXPECT_EQ(int32_t(s1->tokens.size()), 49);  // prompt + generated kept: recomputed as one prompt
  f.run(plan);
  f.sched->finish(0);
  plan = f.sched->schedule();  // 1 comes back and recomputes all 49 tokens
  ASSERT_EQ(plan.size(), 1u);
  EXPECT_EQ(plan[0].seq->id, 1);
  EXPECT_EQ(plan[0].begin, 0);
  EXPECT_EQ(plan[0].n, 49);
  f.run(plan);
  f.sched->finish(1);
  EXPECT_EQ(f.cache->free_blocks(), start_blocks);
  EXPECT_EQ(f.cache->free_slots(), start_slots);
}

TEST(Scheduler, NothingLeaksUnderChurn) {
  Fixture f(8, 40, 48);
  const int32_t blocks0 = f.cache->free_blocks(), slots0 = f.cache->free_slots();
  int64_t next = 0;
  std::vector<int64_t> live;
  for (int step = 0; step < 400; ++step) {
    if (step % 3 == 0 && next < 60) {
      f.sched->add(next, prompt(1 + int32_t(next * 37 % 150)), next % 4 == 0);
      live.push_back(next++);
    }
    f.run(f.sched->schedule());
    // Finish (or cancel) every sequence that has 20 tokens beyond its prompt, and every 7th one early.
    for (auto it = live.begin(); it != live.end();) {
      Sequence* s = f.sched->find(*it);
      if (int32_t(s->tokens.size()) >= s->prompt_len + 20 || (*it % 7 == 3 && step % 11 == 0)) {
        f.sched->finish(*it);
        it = live.erase(it);
      } else {
        ++it;
      }
    }
  }
  for (int64_t id : live) f.sched->finish(id);
  EXPECT_GT(f.sched->num_preemptions(), 0);
  EXPECT_EQ(f.sched->num_running() + f.sched->num_waiting(), 0);
  EXPECT_EQ(f.cache->free_blocks(), blocks0);
  EXPECT_EQ(f.cache->free_slots(), slots0);
}

}  // namespace
}  // namespace bamba
