// HybridCache bookkeeping and the rule that makes slot reuse safe: a sequence with past_len == 0 never reads
// its slot, whatever the previous owner left there.
#include <gtest/gtest.h>

#include <optional>

#include "io/checkpoint.h"
#include "model/hybrid.h"
#include "fixture_runner.h"
#include "test_util.h"

namespace bamba {
namespace {

TEST(HybridCache, ReserveAndReleaseReturnEverything) {
  auto be = make_cpu_backend();
  ModelConfig c = dummy_config();
  HybridCache cache(c, *be, {2, 5, 4});
  SeqCache a, b, d;
  ASSERT_TRUE(cache.reserve(a, 9));  // 3 pages
  EXPECT_EQ(a.blocks.size(), 3u);
  EXPECT_EQ(cache.free_blocks(), 2);
  EXPECT_FALSE(cache.reserve(b, 9));  // needs 3, 2 left: nothing taken
  EXPECT_EQ(b.slot, -1);
  EXPECT_EQ(cache.free_blocks(), 2);
  EXPECT_EQ(cache.free_slots(), 1);
  ASSERT_TRUE(cache.reserve(b, 8));
  EXPECT_FALSE(cache.reserve(d, 1));  // no slot left
  ASSERT_TRUE(cache.reserve(a, 12));  // grows within its last page
  EXPECT_EQ(a.blocks.size(), 3u);
  cache.release(a);
  cache.release(b);
  EXPECT_EQ(cache.free_blocks(), 5);
  EXPECT_EQ(cache.free_slots(), 2);
  EXPECT_EQ(a.slot, -1);
  EXPECT_TRUE(a.blocks.empty());
}

// fork: a new slot with the state copied, full pages shared (freed with their last holder), the partly filled
// last page copied; and a forked sequence continued equals the original continued (the eval runner's use).
TEST(HybridCache, ForkSharesFullPagesAndCopiesTheRest) {
  auto be = make_cpu_backend();
  HybridModel m = load_model(test::model_dir("bamba-tiny-a"), *be);  // attention at layers 1 and 3
  const ModelConfig& c = m.config();
  HybridCache cache(c, *be, HybridCache::sizes_for(c, 3, 32, 4));  // 3 slots, 24 pages of 4 tokens
  Workspace ws(c, *be, 32, 32);
  std::vector<int32_t> prompt(10), more = {7, 8, 9};
  for (int32_t i = 0; i < 10; ++i) prompt[size_t(i)] = (i * 37 + 5) % int32_t(c.vocab_size);
  SeqCache a, f, g;
  ASSERT_TRUE(cache.reserve(a, 10));
  StepBatch b;
  b.add(prompt, 0, a.slot, a.blocks);
  m.forward(b, cache, ws);
  a.len = 10;
  const int32_t free_before = cache.free_blocks();
  ASSERT_TRUE(cache.fork(a, f));
  EXPECT_NE(f.slot, a.slot);
  EXPECT_EQ(f.len, 10);
  ASSERT_EQ(f.blocks.size(), 3u);
  EXPECT_EQ(f.blocks[0], a.blocks[0]);  // 2 full pages shared
  EXPECT_EQ(f.blocks[1], a.blocks[1]);
  EXPECT_NE(f.blocks[2], a.blocks[2]);  // the page holding tokens 8, 9 copied
  EXPECT_EQ(cache.free_blocks(), free_before - 1);
  // Continue both with the same tokens: the same logits.
  auto step = [&](SeqCache& s) {
    EXPECT_TRUE(cache.reserve(s, s.len + 3));
    StepBatch x;
    x.add(more, s.len, s.slot, s.blocks);
    Tensor l = m.forward(x, cache, ws);
    std::vector<float> out(size_t(c.vocab_size));
    be->to_host_f32(l, out.data());
    s.len += 3;
    return out;
  };
  const std::vector<float> from_fork = step(f), from_orig = step(a);
  EXPECT_EQ(from_fork, from_orig);
  // Shared pages survive the release of one holder and return with the last.
  ASSERT_TRUE(cache.fork(a, g));
  cache.release(a);
  cache.release(f);
  EXPECT_LT(cache.free_blocks(), 24);
  cache.release(g);
  EXPECT_EQ(cache.free_blocks(), 24);
  EXPECT_EQ(cache.free_slots(), 3);
}

// A cache or workspace built where a freed one lived is still another one: the CUDA backend keys its recorded
// decode graphs (which point into these buffers) by their uids, so the uids must differ where addresses repeat.
TEST(HybridCache, UidsDifferWhereAddressesRepeat) {
  auto be = make_cpu_backend();
  const ModelConfig c = dummy_config();
  std::optional<HybridCache> cache;
  std::optional<Workspace> ws;
  cache.emplace(c, *be, HybridCache::sizes_for(c, 1, 32));
  ws.emplace(c, *be, 8, 8);
  const uint64_t cache_uid = cache->uid(), ws_uid = ws->uid;
  const void* at = &*cache;
  cache.reset();
  ws.reset();
  cache.emplace(c, *be, HybridCache::sizes_for(c, 1, 32));
  ws.emplace(c, *be, 8, 8);
  EXPECT_EQ(static_cast<const void*>(&*cache), at);  // the same storage...
  EXPECT_NE(cache->uid(), cache_uid);                 // ...another cache
  EXPECT_NE(ws->uid, ws_uid);
  EXPECT_NE(cache->uid(), ws->uid);
}

TEST(HybridCache, AReusedSlotStartsFromAZeroState) {
  auto be = make_cpu_backend();
  HybridModel m = load_model(test::model_dir("bamba-tiny-b"), *be);
  const ModelConfig& c = m.config();
  HybridCache cache(c, *be, HybridCache::sizes_for(c, 1, 64, 8));
  Workspace ws(c, *be, 64, 64);
  std::vector<int32_t> ids = {5, 17, 42, 9, 250, 3, 77};
  auto run = [&] {
    SeqCache s;
    EXPECT_TRUE(cache.reserve(s, int32_t(ids.size())));
    StepBatch b;
    b.add(ids, 0, s.slot, s.blocks, true);
    std::vector<float> out(ids.size() * size_t(c.vocab_size));
    be->to_host_f32(m.forward(b, cache, ws), out.data());
    cache.release(s);
    return out;
  };
  std::vector<float> fresh = run();
  // Leave garbage in every state tensor and KV page of the one slot, as a previous owner might.
  for (int64_t i = 0; i < c.n_mamba_layers(); ++i) {
    be->fill(cache.conv_state(i), 7.f);
    be->fill(cache.ssm_state(i), -3.f);
  }
  for (int64_t i = 0; i < c.n_attention_layers(); ++i) {
    be->fill(cache.k_pages(i), 11.f);
    be->fill(cache.v_pages(i), 5.f);
  }
  EXPECT_EQ(run(), fresh);
}

// The relatives' caches (docs/family.md): a layer keeps a Mamba state iff it has a Mamba mixer and KV pages iff
// it has attention; MLP-only layers (Nemotron-H "-" / "E") keep nothing, Falcon-H1 layers keep both, every Zamba2
// layer a state and its hybrid layers KV too.
TEST(HybridCache, LayersWithoutStateOrKvTakeNoMemory) {
  struct Want { const char* name; int64_t mamba, attn; };
  for (const Want& w : {Want{"nemotron_h", 2, 1}, Want{"mamba2", 3, 0}, Want{"llama3", 0, 3},
                        Want{"falcon_h1", 3, 3}, Want{"zamba2", 6, 3}, Want{"granitemoehybrid-moe", 3, 1}}) {
    const std::string dir = test::fixture_model_dir(w.name);
    if (dir.empty()) GTEST_SKIP() << "fixture " << w.name << " not found";
    const ModelConfig c = load_config(dir);
    EXPECT_EQ(c.n_mamba_layers(), w.mamba) << w.name;
    EXPECT_EQ(c.n_attention_layers(), w.attn) << w.name;
    const size_t slot = size_t((c.mamba_d_conv - 1) * c.conv_dim()) * 4 +
                        size_t(c.mamba_n_heads * c.mamba_d_head * c.mamba_d_state) * 4;
    EXPECT_EQ(HybridCache::bytes_per_slot(c), size_t(w.mamba) * slot) << w.name;
    EXPECT_EQ(HybridCache::bytes_per_block(c, 16), size_t(w.attn) * 2 * 16 * size_t(c.num_key_value_heads * c.head_dim) * 4)
        << w.name;
    auto be = make_cpu_backend();
    HybridCache cache(c, *be, HybridCache::sizes_for(c, 2, 64));
    EXPECT_EQ(cache.has_attention(), w.attn > 0) << w.name;
    EXPECT_EQ(cache.sizes().n_blocks, w.attn > 0 ? 2 * 4 : 0) << w.name;
  }
}

// ModelConfig::parameter_count (bench, train and the CLI banner use it) is the checkpoint's parameter count.
TEST(HybridCache, FamilyParameterCountIsTheCheckpoints) {
  for (const std::string& name : test::kFamilyModels) {
    const std::string dir = test::fixture_model_dir(name);
    if (dir.empty()) GTEST_SKIP() << "fixture " << name << " not found";
    const ModelConfig c = load_config(dir);
    Checkpoint ck(dir);
    int64_t n = 0;
    for (const auto& t : ck.names()) n += ck.get(t).numel();
    EXPECT_EQ(c.parameter_count(), n) << name;
  }
}

TEST(StepBatch, RaggedBlockTablesArePadded) {
  StepBatch b;
  std::vector<int32_t> t1 = {1, 2}, t2 = {3};
  std::vector<int32_t> b1 = {4}, b2 = {7, 8, 9};
  b.add(t1, 0, 0, b1);
  b.add(t2, 5, 1, b2, true);
  EXPECT_EQ(b.max_blocks, 3);
  EXPECT_EQ(b.block_table, (std::vector<int32_t>{4, -1, -1, 7, 8, 9}));
  EXPECT_EQ(b.seq_start, (std::vector<int32_t>{0, 2, 3}));
  EXPECT_EQ(b.positions, (std::vector<int32_t>{0, 1, 5}));
  EXPECT_EQ(b.logit_rows, (std::vector<int32_t>{1, 2}));
}

}  // namespace
}  // namespace bamba
