// StepBatch::state_after on the GPU (conv1d.cu conv_keep_states_kernel, ssd_step.cu ssd_keep_states): the Mamba
// state kept after each chosen token of a step equals the CPU backend's (the fp32 oracle) and the GPU's own state
// after feeding the tokens one step at a time, for sequences of odd lengths continuing from a prefix, from zero
// state, and one that keeps nothing; with fp32 and bf16 SSM state slots. Skips itself, visibly, without a GPU.
#include <gtest/gtest.h>

#include <cmath>

#include "model/hybrid.h"
#include "model/hybrid_cache.h"
#include "test_util.h"

namespace bamba {
namespace {

// slot contents (conv window and SSM state of every Mamba layer) as fp32
std::vector<float> slot_state(Backend& be, const HybridCache& c, const ModelConfig& cfg, int32_t slot) {
  std::vector<float> out;
  for (int64_t l = 0; l < cfg.n_mamba_layers(); ++l)
    for (Tensor t : {c.conv_state(l), c.ssm_state(l)}) {
      std::vector<float> all(size_t(t.numel()));
      be.to_host_f32(t, all.data());
      const size_t per = all.size() / size_t(t.shape[0]);
      out.insert(out.end(), all.begin() + long(size_t(slot) * per), all.begin() + long(size_t(slot + 1) * per));
    }
  return out;
}

struct Kept {
  std::vector<std::vector<float>> kept;  // per (sequence, position) with a kept state
};

// Three sequences: a prefix of 5 / 0 / 3 tokens, then 4 / 7 / 2 tokens with states kept after every one of the
// first and third sequence's new tokens (the second keeps none).
Kept run(Backend& be, DType state_dtype) {
  HybridModel m = load_model(test::model_dir("bamba-tiny-a"), be);
  const ModelConfig& cfg = m.config();
  CacheSizes cs = HybridCache::sizes_for(cfg, 3, 64);
  cs.n_slots = 3 + 7;
  cs.ssm_state_dtype = state_dtype;
  HybridCache cache(cfg, be, cs);
  Workspace ws(cfg, be, 64, 64);
  const std::vector<int32_t> ids = {7, 300, 41, 99, 5, 17, 250, 3, 88, 411, 12, 60, 2};
  const int32_t prefix[3] = {5, 0, 3}, n[3] = {4, 7, 2};
  std::vector<SeqCache> seqs(3);
  StepBatch b;
  for (int s = 0; s < 3; ++s) {
    EXPECT_TRUE(cache.reserve(seqs[size_t(s)], prefix[s] + n[s]));
    if (prefix[s]) b.add(std::span(ids).first(size_t(prefix[s])), 0, seqs[size_t(s)].slot, seqs[size_t(s)].blocks);
  }
  m.forward(b, cache, ws);
  b.clear();
  int32_t next_slot = 3;
  std::vector<int32_t> kept_slots;
  for (int s = 0; s < 3; ++s) {
    b.add(std::span(ids).subspan(size_t(prefix[s]), size_t(n[s])), prefix[s], seqs[size_t(s)].slot,
          seqs[size_t(s)].blocks);
    if (s == 1) continue;
    for (int j = 0; j < n[s]; ++j) {
      b.keep_state_after(b.seq_start[size_t(s)] + j, next_slot);
      kept_slots.push_back(next_slot++);
    }
  }
  m.forward(b, cache, ws);
  Kept r;
  for (int32_t k : kept_slots) r.kept.push_back(slot_state(be, cache, cfg, k));
  return r;
}

// The same states by feeding one token per step.
Kept run_stepwise(Backend& be, DType state_dtype) {
  HybridModel m = load_model(test::model_dir("bamba-tiny-a"), be);
  const ModelConfig& cfg = m.config();
  CacheSizes cs = HybridCache::sizes_for(cfg, 1, 64);
  cs.ssm_state_dtype = state_dtype;
  Workspace ws(cfg, be, 64, 64);
  const std::vector<int32_t> ids = {7, 300, 41, 99, 5, 17, 250, 3, 88, 411, 12, 60, 2};
  const int32_t prefix[3] = {5, 0, 3}, n[3] = {4, 7, 2};
  Kept r;
  for (int s : {0, 2}) {
    HybridCache cache(cfg, be, cs);
    SeqCache q;
    EXPECT_TRUE(cache.reserve(q, 64));
    StepBatch b;
    if (prefix[s]) {
      b.add(std::span(ids).first(size_t(prefix[s])), 0, q.slot, q.blocks);
      m.forward(b, cache, ws);
    }
    for (int j = 0; j < n[s]; ++j) {
      b.clear();
      b.add(std::span(ids).subspan(size_t(prefix[s] + j), 1), prefix[s] + j, q.slot, q.blocks);
      m.forward(b, cache, ws);
      r.kept.push_back(slot_state(be, cache, cfg, q.slot));
    }
  }
  return r;
}

void expect_near(const Kept& got, const Kept& want, double tol, const char* what) {
  ASSERT_EQ(got.kept.size(), want.kept.size());
  for (size_t i = 0; i < got.kept.size(); ++i) {
    ASSERT_EQ(got.kept[i].size(), want.kept[i].size());
    double num = 0, den = 0;
    for (size_t e = 0; e < got.kept[i].size(); ++e) {
      num += (double(got.kept[i][e]) - want.kept[i][e]) * (double(got.kept[i][e]) - want.kept[i][e]);
      den += double(want.kept[i][e]) * want.kept[i][e];
    }
    EXPECT_LE(std::sqrt(num / std::max(den, 1e-30)), tol) << what << ": kept state " << i;
  }
}

TEST(CudaStateAfter, KeptStatesEqualTheCpuAndStepwiseStates) {
  if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA GPU: the per-position state tests need one";
  auto cpu = make_cpu_backend();
  const Kept oracle = run(*cpu, DType::F32);
  expect_near(oracle, run_stepwise(*cpu, DType::F32), 1e-5, "cpu vs cpu stepwise");
  auto gpu = make_backend("cuda", DType::F32);
  expect_near(run(*gpu, DType::F32), oracle, 1e-4, "cuda fp32 vs cpu");
  expect_near(run(*gpu, DType::F32), run_stepwise(*gpu, DType::F32), 1e-4, "cuda fp32 vs cuda stepwise");
  expect_near(run(*gpu, DType::BF16), oracle, 2e-2, "cuda bf16 state vs cpu");
  auto gpu16 = make_backend("cuda", DType::BF16);
  expect_near(run(*gpu16, DType::F32), oracle, 3e-2, "cuda bf16 compute vs cpu");
}

}  // namespace
}  // namespace bamba
