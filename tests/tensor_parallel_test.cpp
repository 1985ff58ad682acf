// Tensor parallelism on the CPU: the thread communicator's collectives, and models split over N = 1, 2, 4 thread
// ranks against Hugging Face's logits (the Bamba fixtures and Bamba's relatives in tests/data/family) within the
// fixtures' 1e-3, fed as prefill + decode and as one batch of all sequences; a fork of a split cache; clear errors
// for shapes that do not split.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>

#include "backend/thread_communicator.h"
#include "core/error.h"
#include "fixture_runner.h"
#include "io/safetensors.h"
#include "model/tensor_parallel.h"
#include "test_util.h"
#include "tokenizer/tokenizer.h"

namespace bamba {
namespace {

// Runs fn(rank, comm) on n threads and rethrows the first exception.
template <typename F>
void on_ranks(std::vector<std::unique_ptr<Communicator>>& comms, F fn) {
  std::vector<std::thread> ts;
  std::vector<std::exception_ptr> errs(comms.size());
  for (size_t r = 0; r < comms.size(); ++r)
    ts.emplace_back([&, r] {
      try {
        fn(int(r), *comms[r]);
      } catch (...) {
        errs[r] = std::current_exception();
      }
    });
  for (auto& t : ts) t.join();
  for (auto& e : errs)
    if (e) std::rethrow_exception(e);
}

TEST(ThreadCommunicator, AllReduceAddsInRankOrderAndEveryRankGetsTheSameBits) {
  for (int n : {1, 2, 3, 4}) {
    auto comms = make_thread_communicators(n);
    const size_t count = 1001;  // not a multiple of n: the last rank's share is longer
    std::vector<std::vector<float>> bufs(static_cast<size_t>(n));
    for (int r = 0; r < n; ++r)
      for (size_t i = 0; i < count; ++i) bufs[size_t(r)].push_back(std::sin(float(i * 7 + r * 13)) * std::pow(10.f, float(r % 3) * 3));
    std::vector<float> want(count);
    for (size_t i = 0; i < count; ++i) {
      float s = bufs[0][i];
      for (int r = 1; r < n; ++r) s += bufs[size_t(r)][i];
      want[i] = s;
    }
    on_ranks(comms, [&](int r, Communicator& c) {
      EXPECT_EQ(c.rank(), r);
      EXPECT_EQ(c.size(), n);
      c.all_reduce_sum(bufs[size_t(r)].data(), count, DType::F32);
    });
    for (int r = 0; r < n; ++r)
      for (size_t i = 0; i < count; ++i) ASSERT_EQ(bufs[size_t(r)][i], want[i]) << "rank " << r << " element " << i;
  }
}

TEST(ThreadCommunicator, GatherBroadcastAndHostSums) {
  const int n = 3;
  auto comms = make_thread_communicators(n);
  std::vector<std::vector<float>> gathered(n, std::vector<float>(size_t(4 * n))), bcast(n);
  std::vector<std::vector<float>> cols(n, std::vector<float>(size_t(2 * 5 * n + 2 * 3), -1.f));
  std::vector<double> sums(n);
  on_ranks(comms, [&](int r, Communicator& c) {
    std::vector<float> mine = {float(r), float(r) + .5f, float(r) + .25f, float(r) + .125f};
    c.all_gather(gathered[size_t(r)].data(), mine.data(), 4, DType::F32);
    bcast[size_t(r)] = {float(r), float(10 * r)};
    c.broadcast(bcast[size_t(r)].data(), 2, DType::F32, 2);
    // all_gather_cols into a row-strided view: [2 rows, 5n cols] of a [2, 5n + 3] buffer
    std::vector<float> in(2 * 5);
    for (int i = 0; i < 10; ++i) in[size_t(i)] = float(100 * r + i);
    Tensor out(cols[size_t(r)].data(), DType::F32, Device::CPU, {2, 5 * n + 3});
    c.all_gather_cols(out.slice_cols(0, 5 * n), Tensor(in.data(), DType::F32, Device::CPU, {2, 5}));
    double v[1] = {double(r + 1)};
    c.all_reduce_host(v);
    sums[size_t(r)] = v[0];
    c.barrier();
  });
  for (int r = 0; r < n; ++r) {
    for (int k = 0; k < n; ++k) EXPECT_EQ(gathered[size_t(r)][size_t(4 * k + 1)], float(k) + .5f);
    EXPECT_EQ(bcast[size_t(r)], (std::vector<float>{2.f, 20.f}));
    EXPECT_EQ(sums[size_t(r)], 6.0);
    for (int row = 0; row < 2; ++row) {
      for (int k = 0; k < n; ++k)
        for (int j = 0; j < 5; ++j)
          ASSERT_EQ(cols[size_t(r)][size_t(row * (5 * n + 3) + 5 * k + j)], float(100 * k + 5 * row + j));
      for (int j = 5 * n; j < 5 * n + 3; ++j) ASSERT_EQ(cols[size_t(r)][size_t(row * (5 * n + 3) + j)], -1.f);  // untouched
    }
  }
}

TEST(ThreadCommunicator, AFailedRankMakesTheOthersThrowInsteadOfWaiting) {
  auto comms = make_thread_communicators(3);
  std::atomic<int> threw{0};
  std::vector<std::string> msgs(3);
  on_ranks(comms, [&](int r, Communicator& c) {
    float x = 1;
    try {
      if (r == 1) c.abort("out of memory in layer 3");
      else c.all_reduce_sum(&x, 1, DType::F32);
    } catch (const Error& e) {
      ++threw;
      msgs[size_t(r)] = e.what();
    }
  });
  EXPECT_EQ(threw.load(), 2);
  EXPECT_NE(msgs[0].find("rank 1 of 3 failed: out of memory in layer 3"), std::string::npos) << msgs[0];
  EXPECT_NE(msgs[2].find("rank 1 of 3 failed"), std::string::npos) << msgs[2];
}

TEST(ThreadCommunicator, ARankThatNeverComesIsATimeoutNotAHang) {
  auto comms = make_thread_communicators(2, std::chrono::milliseconds(200));
  float x = 1;
  try {
    comms[0]->all_reduce_sum(&x, 1, DType::F32);  // rank 1 never calls
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("never came"), std::string::npos) << e.what();
  }
  // The group stays aborted: rank 1's next collective fails at once.
  EXPECT_THROW(comms[1]->barrier(), Error);
}

TEST(ThreadCommunicator, MismatchedCountsAreAnError) {
  auto comms = make_thread_communicators(2);
  EXPECT_THROW(on_ranks(comms,
                        [&](int r, Communicator& c) {
                          std::vector<float> v(size_t(3 + r));
                          c.all_reduce_sum(v.data(), v.size(), DType::F32);
                        }),
               Error);
}

// ---- split models against the fixtures

struct TpModel {
  std::unique_ptr<Backend> full_be, be0;
  std::unique_ptr<HybridModel> model;
};

TpModel split(const std::string& dir, int n) {
  TpModel m;
  m.full_be = make_cpu_backend();
  HybridModel full = load_model(dir, *m.full_be);
  m.be0 = make_cpu_backend();
  std::vector<std::unique_ptr<Backend>> others;
  for (int r = 1; r < n; ++r) others.push_back(make_cpu_backend());
  m.model = make_tensor_parallel_model(full.config(), full.weights(), *m.full_be, *m.be0, std::move(others),
                                       make_thread_communicators(n));
  return m;
}

double max_rel_err(const float* a, const float* r, size_t n) {
  double m = 0;
  for (size_t i = 0; i < n; ++i) m = std::max(m, std::fabs(double(a[i]) - r[i]) / (1.0 + std::fabs(r[i])));
  return m;
}

struct Case {
  std::string model;
  int n;
};
std::string case_name(const ::testing::TestParamInfo<Case>& i) {
  return test::fixture_param_name(i.param.model) + "_tp" + std::to_string(i.param.n);
}

class TensorParallelFixture : public ::testing::TestWithParam<Case> {
 protected:
  void SetUp() override {
    dir_ = test::fixture_model_dir(GetParam().model);
    if (dir_.empty()) GTEST_SKIP() << "fixture " << GetParam().model << " not found";
  }
  std::string dir_;
};

TEST_P(TensorParallelFixture, PrefillAndDecodeMatchTheReferenceLogits) {
  const int n = GetParam().n;
  TpModel m = split(dir_, n);
  const ModelConfig& c = m.model->config();
  ASSERT_EQ(c.tp_size, n);
  const size_t V = size_t(c.vocab_size);
  auto seqs = test::load_fixture_sequences(dir_);
  int32_t max_len = 0, total = 0;
  for (auto& e : seqs) max_len = std::max(max_len, int32_t(e.ids.size()) + 16), total += int32_t(e.ids.size());
  HybridCache cache(c, *m.be0, HybridCache::sizes_for(c, int32_t(seqs.size()) + 1, max_len, 8));
  Workspace ws(c, *m.be0, total, total);
  double worst = 0;
  // (a) each sequence: a prefill of half, then one token at a time
  for (auto& e : seqs) {
    const int32_t T = int32_t(e.ids.size());
    SeqCache sc;
    std::vector<float> all(size_t(T) * V);
    int32_t begin = 0;
    for (int32_t end : test::prefill_then_decode_cuts(std::max(1, T / 2), T)) {
      ASSERT_TRUE(cache.reserve(sc, end));
      StepBatch b;
      b.add(std::span(e.ids).subspan(size_t(begin), size_t(end - begin)), begin, sc.slot, sc.blocks, true);
      Tensor lg = m.model->forward(b, cache, ws);
      m.be0->to_host_f32(lg, all.data() + size_t(begin) * V);
      begin = end;
    }
    cache.release(sc);
    for (size_t k = 0; k < e.logit_positions.size(); ++k) {
      const size_t t = size_t(e.logit_positions[k]);
      const double err = max_rel_err(all.data() + t * V, e.logits.data() + k * V, V);
      worst = std::max(worst, err);
      ASSERT_LE(err, 1e-3) << "logits row " << t << " of a " << T << "-token sequence, " << n << " ranks";
    }
  }
  // (b) all sequences in one step
  StepBatch b;
  std::vector<SeqCache> scs(seqs.size());
  for (size_t s = 0; s < seqs.size(); ++s) {
    ASSERT_TRUE(cache.reserve(scs[s], int32_t(seqs[s].ids.size())));
    b.add(seqs[s].ids, 0, scs[s].slot, scs[s].blocks, true);
  }
  Tensor lg = m.model->forward(b, cache, ws);
  std::vector<float> all(size_t(b.n_tokens()) * V);
  m.be0->to_host_f32(lg, all.data());
  size_t row0 = 0;
  for (size_t s = 0; s < seqs.size(); ++s) {
    const auto& e = seqs[s];
    for (size_t k = 0; k < e.logit_positions.size(); ++k) {
      const size_t t = row0 + size_t(e.logit_positions[k]);
      ASSERT_LE(max_rel_err(all.data() + t * V, e.logits.data() + k * V, V), 1e-3) << "batched, sequence " << s;
    }
    row0 += e.ids.size();
    cache.release(scs[s]);
  }
  std::printf("[tensor parallel] %s over %d ranks: worst logits error %.2e (tolerance 1e-3)\n", GetParam().model.c_str(),
              n, worst);
}

// A fork copies the state of every rank's cache (HybridCache::mirrors): the fork and the original, fed the same
// next token, give the same logits.
TEST_P(TensorParallelFixture, AForkedSequenceContinuesOnEveryRank) {
  const int n = GetParam().n;
  TpModel m = split(dir_, n);
  const ModelConfig& c = m.model->config();
  const size_t V = size_t(c.vocab_size);
  auto seqs = test::load_fixture_sequences(dir_);
  const auto& ids = std::max_element(seqs.begin(), seqs.end(), [](auto& x, auto& y) { return x.ids.size() < y.ids.size(); })->ids;
  ASSERT_GE(ids.size(), 2u);
  const int32_t T = int32_t(ids.size());
  HybridCache cache(c, *m.be0, HybridCache::sizes_for(c, 2, T + 4, 8));
  Workspace ws(c, *m.be0, T, 2);
  SeqCache a, f;
  ASSERT_TRUE(cache.reserve(a, T - 1));
  StepBatch p;
  p.add(std::span(ids).subspan(0, size_t(T - 1)), 0, a.slot, a.blocks, false);
  m.model->forward(p, cache, ws);
  a.len = T - 1;
  ASSERT_TRUE(cache.fork(a, f));
  ASSERT_TRUE(cache.reserve(a, T));
  ASSERT_TRUE(cache.reserve(f, T));
  StepBatch d;
  d.add(std::span(ids).subspan(size_t(T - 1), 1), T - 1, a.slot, a.blocks, true);
  d.add(std::span(ids).subspan(size_t(T - 1), 1), T - 1, f.slot, f.blocks, true);
  Tensor lg = m.model->forward(d, cache, ws);
  std::vector<float> out(2 * V);
  m.be0->to_host_f32(lg, out.data());
  for (size_t v = 0; v < V; ++v) ASSERT_EQ(out[v], out[V + v]) << "token " << v;
  ASSERT_EQ(cache.mirrors().size(), size_t(n - 1));
}

// Every shape that splits evenly, up to 4 ranks (heads, KV heads or their multiple, Mamba heads and groups,
// intermediate, shared and expert widths, vocabulary); every family fixture at N = 1 and 2. N = 4 does not split
// falcon_h1 and nemotron_h (6 Mamba heads: ShapesThatDoNotSplitAreClearErrors).
INSTANTIATE_TEST_SUITE_P(Fixtures, TensorParallelFixture,
                         ::testing::Values(Case{"bamba-tiny-a", 1}, Case{"bamba-tiny-a", 2}, Case{"bamba-tiny-a", 4},
                                           Case{"bamba-tiny-b", 1}, Case{"bamba-tiny-e2e", 2},
                                           Case{"llama3", 1}, Case{"llama3", 2}, Case{"llama3", 4},
                                           Case{"mamba2", 1}, Case{"mamba2", 2}, Case{"mamba2", 4},
                                           Case{"falcon_h1", 1}, Case{"falcon_h1", 2},
                                           Case{"granitemoehybrid-dense-rope", 1}, Case{"granitemoehybrid-dense-rope", 2},
                                           Case{"granitemoehybrid-dense-rope", 4},
                                           // MoE: softmax top-k SwiGLU experts + a shared MLP (2 KV heads: copied at N = 4)
                                           Case{"granitemoehybrid-moe", 1}, Case{"granitemoehybrid-moe", 2},
                                           Case{"granitemoehybrid-moe", 4},
                                           // MoE: sigmoid grouped routing with e_score_correction_bias, relu² experts
                                           Case{"nemotron_h", 1}, Case{"nemotron_h", 2},
                                           // shared blocks with LoRA adapters (N = 4: the gated norm gathered)
                                           Case{"zamba2", 1}, Case{"zamba2", 2}, Case{"zamba2", 4}),
                         case_name);

TEST(TensorParallel, ShapesThatDoNotSplitAreClearErrors) {
  auto msg = [](const std::string& model, int n) -> std::string {
    const std::string dir = test::fixture_model_dir(model);
    if (dir.empty()) return "skip";
    try {
      shard_config(load_config(dir), 0, n);
    } catch (const Error& e) {
      return e.what();
    }
    return "";
  };
  auto has = [](const std::string& s, const std::string& part) {
    return s == "skip" || s.find(part) != std::string::npos;
  };
  // bamba-tiny-b: 6 heads, 3 KV heads
  EXPECT_TRUE(has(msg("bamba-tiny-b", 2), "num_key_value_heads 3 neither divides nor is divisible by the 2 ranks"));
  EXPECT_TRUE(has(msg("bamba-tiny-b", 4), "num_attention_heads 6 is not divisible by the 4 ranks"));
  EXPECT_TRUE(has(msg("bamba-tiny-e2e", 4), "num_attention_heads 2 is not divisible by the 4 ranks"));
  EXPECT_TRUE(has(msg("bamba-tiny-a", 3), "does not split"));  // vocab 512
  EXPECT_TRUE(has(msg("nemotron_h", 4), "the Mamba head count 6 is not divisible by the 4 ranks"));
  EXPECT_TRUE(has(msg("falcon_h1", 4), "the Mamba head count 6 is not divisible by the 4 ranks"));
  EXPECT_EQ(msg("bamba-tiny-a", 4), msg("bamba-tiny-a", 4) == "skip" ? "skip" : "");
  for (const char* ok : {"zamba2", "granitemoehybrid-moe"}) {  // once refused, now split
    const std::string m = msg(ok, 4);
    EXPECT_TRUE(m.empty() || m == "skip") << ok << ": " << m;
  }
}

// The feed-forward widths name their config.json field (per model type) when they do not split.
TEST(TensorParallel, WidthsThatDoNotSplitNameTheirField) {
  auto msg = [](ModelConfig c, int n) -> std::string {
    try {
      shard_config(c, 0, n);
    } catch (const Error& e) {
      return e.what();
    }
    return "";
  };
  const std::string granite = test::fixture_model_dir("granitemoehybrid-moe"), nemotron = test::fixture_model_dir("nemotron_h"),
                    zamba = test::fixture_model_dir("zamba2");
  if (granite.empty() || nemotron.empty() || zamba.empty()) GTEST_SKIP() << "family fixtures not found";
  ModelConfig g = load_config(granite);  // experts 32 wide, shared MLP 48
  g.moe_intermediate_size = 34;
  EXPECT_NE(msg(g, 4).find("intermediate_size (the width of one expert) 34 is not divisible by the 4 ranks"), std::string::npos) << msg(g, 4);
  g = load_config(granite);
  g.shared_intermediate_size = g.intermediate_size = 50;
  EXPECT_NE(msg(g, 4).find("shared_intermediate_size 50 is not divisible by the 4 ranks"), std::string::npos) << msg(g, 4);
  ModelConfig nh = load_config(nemotron);
  nh.moe_intermediate_size = 33;
  EXPECT_NE(msg(nh, 2).find("moe_intermediate_size 33 is not divisible by the 2 ranks"), std::string::npos) << msg(nh, 2);
  nh = load_config(nemotron);
  nh.shared_intermediate_size = 47;
  EXPECT_NE(msg(nh, 2).find("moe_shared_expert_intermediate_size 47 is not divisible"), std::string::npos) << msg(nh, 2);
  nh = load_config(nemotron);
  nh.intermediate_size = 95;
  EXPECT_NE(msg(nh, 2).find("intermediate_size 95 is not divisible by the 2 ranks"), std::string::npos) << msg(nh, 2);
  ModelConfig z = load_config(zamba);  // the shared blocks' MLP
  z.intermediate_size = 98;
  EXPECT_NE(msg(z, 4).find("intermediate_size 98 is not divisible by the 4 ranks"), std::string::npos) << msg(z, 4);
  // The split config: experts and shared MLP each 1/N wide, routing unchanged.
  ModelConfig s = shard_config(load_config(granite), 1, 4);
  EXPECT_EQ(s.moe_intermediate_size, 8);
  EXPECT_EQ(s.shared_intermediate_size, 12);
  EXPECT_EQ(s.intermediate_size, 12);
  EXPECT_EQ(s.num_experts, 4);
  EXPECT_EQ(s.num_experts_per_tok, 2);
}

}  // namespace
}  // namespace bamba

namespace bamba {
namespace {

// `bamba logits -q --device cpu ARGS` written to tmp/lN.safetensors, read back as floats; empty (and the test
// failed) if the command or the file is not as expected.
std::vector<float> cli_logits(const std::string& args, const std::string& tmp, int n) {
  const std::string out = tmp + "/l" + std::to_string(n) + ".safetensors";
  auto r = test::run_bamba(cat("logits -q --device cpu ", args, " -o '", out, "'"));
  if (r.exit_code != 0) {
    ADD_FAILURE() << "bamba logits " << args << ": exit " << r.exit_code << "\n" << r.err;
    return {};
  }
  SafetensorsFile f(out);
  const TensorInfo* t = f.find("logits");
  if (!t) {
    ADD_FAILURE() << out << ": no logits tensor";
    return {};
  }
  std::vector<float> v(size_t(t->numel()));
  convert_to_f32(t->data, t->dtype, v.size(), v.data());
  return v;
}

// The command line: --tensor-parallel-size N gives the logits and the generated text of one rank; a shape that
// does not split is a one-line error naming the field.
TEST(TensorParallelCli, LogitsAndGenerateOverThreadRanks) {
  const std::string dir = test::model_dir("bamba-tiny-e2e");
  if (test::fixture_model_dir("bamba-tiny-e2e").empty()) GTEST_SKIP() << "fixture bamba-tiny-e2e not found";
  const std::string tmp = test::make_temp_dir("tp-cli");
  std::vector<std::vector<float>> logits;
  std::vector<std::string> texts;
  for (int n : {1, 2}) {
    logits.push_back(cli_logits(cat("-m '", dir, "' --tensor-parallel-size ", n, " --ids 1,2,3,4,5"), tmp, n));
    if (logits.back().empty()) return;
    auto g = test::run_bamba(cat("generate -q --device cpu -m '", dir, "' --tp ", n, " --prompt 'the cat' --max-tokens 12 --temperature 0"));
    ASSERT_EQ(g.exit_code, 0) << g.err;
    texts.push_back(g.out);
  }
  ASSERT_EQ(logits[0].size(), logits[1].size());
  EXPECT_LE(max_rel_err(logits[1].data(), logits[0].data(), logits[0].size()), 1e-4);
  EXPECT_EQ(texts[1], texts[0]);
  auto bad = test::run_bamba(cat("logits -q --device cpu -m '", dir, "' --tp 4 --ids 1,2 -o '", tmp, "/bad.safetensors'"));
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_NE(bad.err.find("num_attention_heads 2 is not divisible by the 4 ranks"), std::string::npos) << bad.err;
  std::filesystem::remove_all(tmp);
}

// --quantization fp8 with --tp: the whole model is quantized before the split, so a one-token step (W8A16) gives the
// one-device FP8 logits (tests/fp8_test.cpp checks the split itself on several models).
TEST(TensorParallelCli, Fp8QuantizationSplitsWithItsScales) {
  if (test::fixture_model_dir("bamba-tiny-a").empty()) GTEST_SKIP() << "fixture bamba-tiny-a not found";
  const std::string dir = test::model_dir("bamba-tiny-a"), tmp = test::make_temp_dir("tp-cli-fp8");
  std::vector<std::vector<float>> logits;
  for (int n : {1, 2}) {
    logits.push_back(cli_logits(cat("-m '", dir, "' --quantization fp8 --tp ", n, " --ids 7"), tmp, n));
    if (logits.back().empty()) return;
  }
  ASSERT_EQ(logits[0].size(), logits[1].size());
  EXPECT_LE(max_rel_err(logits[1].data(), logits[0].data(), logits[0].size()), 1e-5);
  std::filesystem::remove_all(tmp);
}

// Every family type from the command line over 2 thread ranks (the fixtures split at N = 2): greedy text equal to
// one rank's, and `bamba eval`'s scores (loglikelihoods through the engine) equal to one rank's. The fixtures have
// no tokenizer: each is run from a folder beside it with the byte-level one, its vocabulary filled up to the model's.
TEST(TensorParallelCli, EveryFamilyTypeGeneratesAndEvaluatesAsOneRank) {
  const std::string tmp = test::make_temp_dir("tp-cli-family"), tasks = std::string(BAMBA_SOURCE_DIR) + "/tests/data/eval";
  int ran = 0;
  for (const std::string& name : test::kFamilyModels) {
    const std::string src = test::fixture_model_dir(name);
    if (src.empty()) continue;
    ++ran;
    const std::string dir = tmp + "/" + name;
    std::filesystem::create_directories(dir);
    for (const char* f : {"config.json", "model.safetensors", "generation_config.json"})
      if (std::filesystem::exists(src + "/" + f)) std::filesystem::create_symlink(src + "/" + f, dir + "/" + f);
    nlohmann::json tok = nlohmann::json::parse(Tokenizer::byte_level_default_json());
    const int64_t V = load_config(src).vocab_size;  // the ids above the bytes and specials: plain tokens "x<id>"
    for (int64_t id = int64_t(tok["model"]["vocab"].size() + tok["added_tokens"].size()); id < V; ++id)
      tok["model"]["vocab"]["x" + std::to_string(id)] = id;
    std::ofstream(dir + "/tokenizer.json") << tok.dump();
    std::vector<std::string> text;
    std::vector<nlohmann::json> scores;
    for (int n : {1, 2}) {
      auto g = test::run_bamba(cat("generate -q --device cpu -m '", dir, "' --tp ", n,
                                   " --prompt 'the river' -t 0 -n 12 --ignore-eos --no-bos"));
      ASSERT_EQ(g.exit_code, 0) << name << " --tp " << n << ": " << g.err;
      text.push_back(g.out);
      const std::string out = dir + "/eval" + std::to_string(n) + ".json";
      auto e = test::run_bamba(cat("eval -q --device cpu -m '", dir, "' --tp ", n, " --tasks-dir ", tasks, " --data-dir ",
                                   tasks, " --tasks tiny_mc,tiny_rolling --limit 2 -o '", out, "'"));
      ASSERT_EQ(e.exit_code, 0) << name << " --tp " << n << ": " << e.err;
      std::ifstream f(out);
      scores.push_back(nlohmann::json::parse(f)["results"]);
    }
    EXPECT_EQ(text[1], text[0]) << name;
    const double p1 = scores[0]["tiny_rolling"]["word_perplexity,none"].get<double>(),
                 p2 = scores[1]["tiny_rolling"]["word_perplexity,none"].get<double>();
    EXPECT_NEAR(std::log(p2), std::log(p1), 1e-4) << name;
    EXPECT_EQ(scores[1]["tiny_mc"]["acc,none"], scores[0]["tiny_mc"]["acc,none"]) << name;
    std::printf("[tensor parallel cli] %s: --tp 2 text %s one rank's; word perplexity %.6g / %.6g\n", name.c_str(),
                text[1] == text[0] ? "==" : "!=", p1, p2);
  }
  if (ran == 0) GTEST_SKIP() << "no family fixture found";
  std::filesystem::remove_all(tmp);
}

}  // namespace
}  // namespace bamba
