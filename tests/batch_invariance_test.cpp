// Batch invariance (`--deterministic`, docs/serving.md): a request's tokens and logprobs are bitwise the same
// whether it runs alone or among 63 others — mixed prompt lengths, greedy and seeded sampling, logprobs and prompt
// logprobs, a token budget that makes chunks wait and a KV pool small enough to preempt and recompute — on the
// CPU and on the GPU (bf16 and fp32, the built-in tiny model and a wider one whose shapes take the flash attention
// and the tensor-core SSD scan, 16- and 256-token chunks; skipped without a GPU). Also: the CPU's invariant matmul
// gives a row the same bits whatever M is, and the scheduler's deterministic parts are a function of the sequence
// alone; and on the command line, `logits --deterministic` still gives the fixture's reference logits.
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <cstdlib>
#include <random>
#include <thread>

#include "backend/cpu/invariant_gemm.h"
#include "core/error.h"
#include "engine/engine.h"
#include "io/safetensors.h"
#include "engine_runner.h"
#include "test_util.h"
#include "engine/generator.h"
#include "model/hybrid.h"
#include "model/presets.h"
#include "model/weights.h"

namespace bamba {
namespace {

using namespace std::chrono_literals;

// ---- the CPU kernel

TEST(InvariantGemm, RowsDoNotDependOnTheOtherRows) {
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  for (auto [M, N, K] : {std::tuple{67, 37, 131}, {1, 9, 8}, {5, 1, 3}, {33, 130, 1000}, {64, 300, 512}}) {
    std::vector<float> x(static_cast<size_t>(M * K)), W(static_cast<size_t>(N * K)), y(static_cast<size_t>(M * N)),
        y1(static_cast<size_t>(N));
    for (float& v : x) v = u(rng);
    for (float& v : W) v = u(rng);
    cpu::invariant_gemm_nt(x.data(), K, W.data(), K, y.data(), N, M, N, K);
    for (int m = 0; m < M; ++m) {
      // Alone (M = 1, one thread), the same row must give the same bits; and each output is the one dot product.
      cpu::invariant_gemm_nt(x.data() + m * K, K, W.data(), K, y1.data(), N, 1, N, K);
      for (int n = 0; n < N; ++n) {
        const float alone = y1[size_t(n)], in_batch = y[size_t(m * N + n)];
        ASSERT_EQ(std::bit_cast<uint32_t>(alone), std::bit_cast<uint32_t>(in_batch)) << M << "x" << N << "x" << K << " row " << m << " col " << n;
        ASSERT_EQ(std::bit_cast<uint32_t>(cpu::invariant_dot(x.data() + m * K, W.data() + n * K, K)),
                  std::bit_cast<uint32_t>(in_batch));
        double ref = 0;
        for (int k = 0; k < K; ++k) ref += double(x[size_t(m * K + k)]) * W[size_t(n * K + k)];
        ASSERT_NEAR(in_batch, ref, 1e-5 * K) << "row " << m << " col " << n;
      }
    }
  }
}

// ---- the scheduler: a sequence's parts are (prompt chunks to multiples of C or the prompt's end, then one token at
// a time), whatever the budget and the other sequences; a step never mixes one-token parts with longer ones.

TEST(BatchInvariantScheduler, PartsAreAFunctionOfTheSequenceAlone) {
  auto be = make_cpu_backend();
  HybridModel model = dummy_model(*be);
  constexpr int32_t C = 16, seqs = 12;
  HybridCache cache(model.config(), *be, CacheSizes{seqs, 16, 16});  // 16 pages of 16: preemption happens
  SchedulerConfig sc{seqs, 40, 40};
  sc.deterministic_chunk = C;
  Scheduler sched(sc, cache);
  std::mt19937 rng(3);
  std::vector<int32_t> prompt_len, target;
  for (int32_t i = 0; i < 30; ++i) {
    prompt_len.push_back(1 + int32_t(rng() % 70));
    target.push_back(prompt_len.back() + 1 + int32_t(rng() % 20));
    sched.add(i, std::vector<int32_t>(size_t(prompt_len.back()), 3), false);
  }
  int32_t done = 0, steps = 0, empty = 0;
  const int64_t before = sched.num_preemptions();
  while (done < 30) {
    ASSERT_LT(++steps, 20000) << "no progress";
    auto plan = sched.schedule();
    if (plan.empty()) {  // the kind whose turn it was could not run (no page, no slot): the other kind next
      ASSERT_LT(++empty, 2) << "two empty steps in a row";
      continue;
    }
    empty = 0;
    bool single = false, multi = false;
    for (const ScheduledSeq& p : plan) {
      (p.n == 1 ? single : multi) = true;
      const Sequence& s = *p.seq;
      ASSERT_EQ(p.begin, s.computed);
      const int32_t want = s.computed < s.prompt_len ? std::min((s.computed / C + 1) * C, s.prompt_len) - s.computed : 1;
      ASSERT_EQ(p.n, want) << "sequence " << s.id << " at " << s.computed << " (prompt " << s.prompt_len << ")";
    }
    ASSERT_FALSE(single && multi) << "a step mixes one-token parts with longer ones";
    std::vector<int64_t> finished;
    for (const ScheduledSeq& p : plan) {
      const bool draws = p.samples();
      sched.advance(p);
      if (!draws) continue;
      p.seq->tokens.push_back(5);
      if (int32_t(p.seq->tokens.size()) >= target[size_t(p.seq->id)]) finished.push_back(p.seq->id);
    }
    for (int64_t id : finished) sched.finish(id), ++done;
  }
  EXPECT_GT(sched.num_preemptions(), before) << "the pool was meant to be too small: recomputation is not tested";
}

TEST(BatchInvariantScheduler, RefusesThePrefixCacheAndChunksOverTheBudget) {
  auto be = make_cpu_backend();
  HybridModel model = dummy_model(*be);
  HybridCache cache(model.config(), *be, CacheSizes{8, 40, 16});
  SchedulerConfig sc{4, 32, 32};
  sc.deterministic_chunk = 64;
  EXPECT_THROW(Scheduler s(sc, cache), Error);
  sc.deterministic_chunk = 16;
  sc.prefix_cache = true;
  sc.prefix_snapshots = 2;
  EXPECT_THROW(Scheduler s(sc, cache), Error);
}

// ---- the command line: the flags, the fixture's reference logits through the invariant kernels, a clear refusal

TEST(BatchInvarianceCli, LogitsAndGenerateUnderDeterministic) {
  const std::string dir = test::model_dir("bamba-tiny-a"), tmp = test::make_temp_dir("determ");
  SafetensorsFile ref(dir + "/expected.safetensors");
  const TensorInfo* ids_t = ref.find("seq4.input_ids");
  ASSERT_NE(ids_t, nullptr);
  std::vector<int32_t> ids(static_cast<size_t>(ids_t->numel()));
  std::memcpy(ids.data(), ids_t->data, ids.size() * 4);
  std::string list;
  for (int32_t id : ids) list += (list.empty() ? "" : ",") + std::to_string(id);
  auto r = test::run_bamba("logits -q --device cpu --deterministic --model '" + dir + "' --ids " + list + " --out '" + tmp +
                           "/out.safetensors'");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  {
    SafetensorsFile got(tmp + "/out.safetensors");
    const TensorInfo *g = got.find("logits"), *e = ref.find("seq4.logits");
    ASSERT_TRUE(g && e);
    std::vector<float> a(static_cast<size_t>(g->numel())), want(static_cast<size_t>(e->numel()));
    convert_to_f32(g->data, g->dtype, a.size(), a.data());
    convert_to_f32(e->data, e->dtype, want.size(), want.data());
    ASSERT_EQ(a.size(), want.size());
    for (size_t i = 0; i < a.size(); ++i) ASSERT_LE(std::fabs(a[i] - want[i]), 1e-3 * (1 + std::fabs(want[i]))) << i;
  }
  std::filesystem::remove_all(tmp);
  const std::string gen = "generate -q --model dummy --device cpu --deterministic --temperature 0.9 --seed 5 -n 12 "
                          "--ignore-eos";
  auto a = test::run_bamba(gen, "Hello"), b = test::run_bamba(gen, "Hello");
  ASSERT_EQ(a.exit_code, 0) << a.err;
  EXPECT_EQ(a.out, b.out);
  auto bad = test::run_bamba("generate -q --model dummy --device cpu --deterministic --speculative ngram -n 4", "Hi");
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_NE(bad.err.find("--deterministic cannot be combined with --speculative"), std::string::npos) << bad.err;
}

// ---- the engine, alone vs among 63 others

using Result = test::EngineResult;
// (these suites look at error outputs themselves)
std::vector<Result> run_all(Engine& e, const std::vector<RequestParams>& ps) { return test::run_all(e, ps, false); }

// 64 requests: prompts of 1 to max_prompt tokens, greedy or seeded sampling (temperature, top-k, top-p), some
// with logprobs and top logprobs, some scoring their prompt.
std::vector<RequestParams> crowd(int32_t vocab, int32_t max_prompt) {
  std::vector<RequestParams> ps;
  for (int32_t i = 0; i < 64; ++i) {
    RequestParams p;
    std::mt19937 rng(uint32_t(100 + i));
    p.prompt.resize(size_t(1 + (i * 37) % max_prompt));
    for (int32_t& t : p.prompt) t = int32_t(rng() % uint32_t(vocab));
    p.max_tokens = 3 + i % 11;
    p.ignore_eos = true;
    if (i % 3 == 1) p.sampling = {0.9f, i % 2 ? 0 : 40, i % 4 == 1 ? 0.95f : 1.f, 7000 + uint64_t(i)};
    if (i % 4 != 3) p.logprobs = i % 4;  // 0: the chosen token's; 1, 2: + top logprobs
    if (i % 7 == 2) p.prompt_logprobs = 2;
    ps.push_back(std::move(p));
  }
  return ps;
}

// Bitwise: floats by their bits (the first prompt token's NaN included).
std::string differences(const Result& a, const Result& b) {
  std::string d;
  auto same = [](float x, float y) { return std::bit_cast<uint32_t>(x) == std::bit_cast<uint32_t>(y); };
  auto cmp = [&](const std::vector<TokenLogprob>& x, const std::vector<TokenLogprob>& y, const char* what) {
    if (x.size() != y.size()) return d += std::string(what) + ": counts differ; ", void();
    for (size_t i = 0; i < x.size(); ++i) {
      bool eq = x[i].id == y[i].id && same(x[i].logprob, y[i].logprob) && x[i].top.size() == y[i].top.size();
      for (size_t j = 0; eq && j < x[i].top.size(); ++j)
        eq = x[i].top[j].first == y[i].top[j].first && same(x[i].top[j].second, y[i].top[j].second);
      if (!eq) {
        d += std::string(what) + " " + std::to_string(i) + ": " + std::to_string(x[i].logprob) + " vs " +
             std::to_string(y[i].logprob) + "; ";
        return;
      }
    }
  };
  if (a.tokens != b.tokens) d += "tokens differ; ";
  cmp(a.logprobs, b.logprobs, "logprob");
  cmp(a.prompt_logprobs, b.prompt_logprobs, "prompt logprob");
  return d;
}

// The built-in dummy model, one as wide as the GPU's tensor-core paths need (attention head_dim 64: the flash
// kernel; SSD head_dim 64, d_state 128: the chunked scan), or Bamba-9B's shape; generated weights all.
enum class Shape { Tiny, Wide, Bamba9B };
HybridModel make_model(Backend& be, Shape shape) {
  if (shape == Shape::Tiny) return dummy_model(be);
  if (shape == Shape::Bamba9B) {
    const ModelConfig c = preset_config("bamba-9b");
    return HybridModel(c, dummy_weights(c, be, 1), be);
  }
  const ModelConfig c = parse_config(R"({"model_type": "bamba", "vocab_size": 1000, "hidden_size": 256,
      "intermediate_size": 512, "num_hidden_layers": 4, "attn_layer_indices": [1, 3], "num_attention_heads": 4,
      "num_key_value_heads": 2, "mamba_n_heads": 8, "mamba_d_head": 64, "mamba_n_groups": 1, "mamba_d_state": 128,
      "mamba_d_conv": 4, "mamba_expand": 2, "mamba_chunk_size": 256, "rms_norm_eps": 1e-5,
      "tie_word_embeddings": false})", "batch-invariance test model");
  return HybridModel(c, dummy_weights(c, be, 3), be);
}

struct Case {
  const char* name;
  const char* device;
  DType dtype;
  Shape shape;
  int32_t chunk, max_prompt, budget, pages;  // --deterministic-chunk, longest prompt, tokens per step, KV pages
};

class BatchInvariance : public ::testing::TestWithParam<Case> {
 protected:
  void SetUp() override {
    if (std::string(GetParam().device) == "cuda" && cuda_device_count() == 0)
      GTEST_SKIP() << "no CUDA GPU: the GPU batch-invariance test needs one";
    const char* big = std::getenv("BAMBA_TEST_9B");
    if (GetParam().shape == Shape::Bamba9B && !(big && std::string(big) == "1"))
      GTEST_SKIP() << "the Bamba-9B-shaped case (18 GB of generated weights) runs with BAMBA_TEST_9B=1";
    be_ = make_backend(GetParam().device, GetParam().dtype);
    model_ = std::make_unique<HybridModel>(make_model(*be_, GetParam().shape));
  }
  // An engine of 64 sequences with a small token budget (chunks wait for room) and a KV pool too small for all
  // of them (preemption and recomputation).
  std::unique_ptr<Engine> engine(bool deterministic) {
    const Case& c = GetParam();
    EngineOptions o;
    o.max_model_len = c.max_prompt + 32;
    o.sched = {64, c.budget, c.budget};
    o.sched.deterministic_chunk = deterministic ? c.chunk : 0;
    o.cache = Engine::cache_sizes(model_->config(), 64, o.max_model_len, 1e9, c.pages);
    return std::make_unique<Engine>(*model_, nullptr, o);
  }
  std::unique_ptr<Backend> be_;
  std::unique_ptr<HybridModel> model_;
};

TEST_P(BatchInvariance, AloneEqualsAmong63Others) {
  const std::vector<RequestParams> ps = crowd(int32_t(model_->config().vocab_size), GetParam().max_prompt);
  std::vector<Result> together;
  {
    auto e = engine(true);
    together = run_all(*e, ps);
    for (int i = 0; i < 200 && e->stats().preemptions == 0; ++i) std::this_thread::sleep_for(5ms);
    EXPECT_GT(e->stats().preemptions, 0u) << "the KV pool was meant to be too small: recomputation is not tested";
  }
  int compared = 0;
  for (size_t i = 0; i < ps.size(); i += (i < 8 ? 1 : 5)) {  // 8 + 12 of them alone, each in a fresh engine
    auto e = engine(true);
    const Result alone = run_all(*e, {ps[i]})[0];
    ASSERT_TRUE(alone.error.empty() && together[i].error.empty()) << alone.error << together[i].error;
    ASSERT_EQ(alone.tokens.size(), size_t(ps[i].max_tokens));
    EXPECT_EQ(differences(alone, together[i]), "") << "request " << i << " (prompt of " << ps[i].prompt.size()
                                                   << " tokens)";
    ++compared;
  }
  EXPECT_EQ(compared, 20);
  // `bamba generate --deterministic` runs the same steps on the same kernels: the server's tokens (greedy and
  // seeded: draw k uses splitmix64(seed + k) in both).
  be_->set_batch_invariant(GetParam().chunk);
  for (size_t i = 0; i < 8; ++i) {
    Generator g(*model_, GetParam().max_prompt + 32, GetParam().chunk);
    std::vector<int32_t> out;
    g.generate(ps[i].prompt, ps[i].max_tokens, ps[i].sampling, {}, [&](int32_t id) {
      out.push_back(id);
      return true;
    });
    EXPECT_EQ(out, together[i].tokens) << "generate vs serve, request " << i;
  }
  be_->set_batch_invariant(0);
  // For the record (not a requirement): without --deterministic the same comparison usually differs somewhere.
  std::vector<Result> free_run;
  {
    auto e = engine(false);
    free_run = run_all(*e, ps);
  }
  int differ = 0;
  for (size_t i = 0; i < ps.size(); i += (i < 8 ? 1 : 5)) {
    auto e = engine(false);
    differ += !differences(run_all(*e, {ps[i]})[0], free_run[i]).empty();
  }
  std::printf("[ info ] %s: without --deterministic, %d of 20 requests differ alone vs among 63 others\n",
              be_->name().c_str(), differ);
}

INSTANTIATE_TEST_SUITE_P(
    Devices, BatchInvariance,
    ::testing::Values(Case{"cpu", "cpu", DType::F32, Shape::Tiny, 16, 120, 64, 24},
                      Case{"cpu_wide", "cpu", DType::F32, Shape::Wide, 16, 120, 64, 24},
                      Case{"cuda_bf16", "cuda", DType::BF16, Shape::Tiny, 16, 120, 64, 24},
                      Case{"cuda_bf16_wide", "cuda", DType::BF16, Shape::Wide, 16, 120, 64, 24},
                      Case{"cuda_bf16_wide_long", "cuda", DType::BF16, Shape::Wide, 256, 700, 512, 96},
                      Case{"cuda_fp32_wide", "cuda", DType::F32, Shape::Wide, 16, 120, 64, 24},
                      Case{"cuda_fp32_wide_long", "cuda", DType::F32, Shape::Wide, 256, 700, 512, 96},
                      Case{"cuda_bf16_bamba9b", "cuda", DType::BF16, Shape::Bamba9B, 256, 700, 512, 96}),
    [](const auto& info) { return std::string(info.param.name); });

}  // namespace
}  // namespace bamba
