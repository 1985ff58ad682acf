// The CPU model against Hugging Face transformers' numbers (../shared/fixtures/models, and for Bamba's relatives
// tests/data/family, docs/family.md): logits and every captured
// activation within |ours - ref| <= 1e-3 (1 + |ref|), fed (a) in one prefill, (b) prefill + teacher-forced decode,
// (c) in pieces split inside and across chunk_size boundaries, (d) in one batch with the other sequences; and
// greedy generation up to the first near-tie.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <map>

#include "fixture_runner.h"
#include "model/hybrid.h"
#include "test_util.h"

namespace bamba {
namespace {

using test::FixtureSequence;

// Max over elements of |a - r| / (1 + |r|); the fixtures' tolerance is 1e-3.
double max_rel_err(const float* a, const float* r, size_t n) {
  double m = 0;
  for (size_t i = 0; i < n; ++i) m = std::max(m, std::fabs(double(a[i]) - r[i]) / (1.0 + std::fabs(r[i])));
  return m;
}
constexpr double kTol = 1e-3;

class FixtureModel : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    const std::string dir = test::fixture_model_dir(GetParam());
    if (dir.empty())
      GTEST_SKIP() << "fixture " << GetParam() << " not found in tests/data/family or $BAMBA_FAMILY_FIXTURES "
                   << "(make it with ../shared/fixtures/tools/gen_family_fixtures.py)";
    r_ = std::make_unique<test::FixtureRunner>(dir, make_cpu_backend(), true);
    be_ = r_->be.get();
    model_ = r_->model.get();
    cache_ = r_->cache.get();
    ws_ = r_->ws.get();
  }
  int64_t V() const { return r_->V(); }
  std::vector<float> run_pieces(const std::vector<int32_t>& ids, const std::vector<int32_t>& cuts) {
    return r_->run_pieces(ids, cuts);
  }

  void expect_logits_match(const FixtureSequence& e, const std::vector<float>& all, const std::string& what) {
    for (size_t k = 0; k < e.logit_positions.size(); ++k) {
      const size_t t = size_t(e.logit_positions[k]);
      double err = max_rel_err(all.data() + t * size_t(V()), e.logits.data() + k * size_t(V()), size_t(V()));
      ASSERT_LE(err, kTol) << what << ": logits row " << t << " of a " << e.ids.size() << "-token sequence";
    }
  }

  std::unique_ptr<test::FixtureRunner> r_;
  Backend* be_ = nullptr;
  HybridModel* model_ = nullptr;
  HybridCache* cache_ = nullptr;
  Workspace* ws_ = nullptr;
};

TEST_P(FixtureModel, PrefillMatchesLogitsAndEveryActivation) {
  const int64_t H = model_->config().hidden_size;
  double worst_act = 0, worst_logit = 0;  // reported: the margin under the 1e-3 tolerance
  for (auto& e : r_->seqs) {
    std::map<std::string, std::vector<float>> got;
    SeqCache sc;
    ASSERT_TRUE(cache_->reserve(sc, int32_t(e.ids.size())));
    StepBatch b;
    b.add(e.ids, 0, sc.slot, sc.blocks, true);
    Tensor lg = model_->forward(b, *cache_, *ws_, [&](const std::string& name, Tensor h) {
      auto& v = got[name];
      v.resize(size_t(h.numel()));
      be_->to_host_f32(h, v.data());
    });
    std::vector<float> all(e.ids.size() * size_t(V()));
    be_->to_host_f32(lg, all.data());
    cache_->release(sc);
    ASSERT_EQ(got.size(), e.acts.size());
    for (auto& [name, ref] : e.acts) {
      ASSERT_EQ(got[name].size(), ref.size()) << name;
      for (size_t t = 0; t < e.ids.size(); ++t) {
        double err = max_rel_err(got[name].data() + t * size_t(H), ref.data() + t * size_t(H), size_t(H));
        EXPECT_LE(err, kTol) << name << " row " << t << " of a " << e.ids.size() << "-token sequence";
        worst_act = std::max(worst_act, err);
      }
    }
    for (size_t k = 0; k < e.logit_positions.size(); ++k)
      worst_logit = std::max(worst_logit, max_rel_err(all.data() + size_t(e.logit_positions[k]) * size_t(V()),
                                                       e.logits.data() + k * size_t(V()), size_t(V())));
    expect_logits_match(e, all, "prefill");
  }
  std::printf("[ %s ] max |ours - ref| / (1 + |ref|): activations %.3g, logits %.3g\n", GetParam().c_str(), worst_act,
              worst_logit);
}

TEST_P(FixtureModel, PrefillThenTeacherForcedDecode) {
  for (auto& e : r_->seqs) {
    const int32_t T = int32_t(e.ids.size());
    for (int32_t prefix : {1, std::max(1, T / 2)}) {
      expect_logits_match(e, run_pieces(e.ids, test::prefill_then_decode_cuts(prefix, T)),
                          "prefill " + std::to_string(prefix) + " + decode");
    }
  }
}

TEST_P(FixtureModel, ChunkedPrefillAtManySplits) {
  const int32_t Q = int32_t(model_->config().mamba_chunk_size);
  for (auto& e : r_->seqs) {
    const int32_t T = int32_t(e.ids.size());
    for (const auto& cuts : test::chunked_prefill_plans(Q, T)) {
      std::string what = "split at";
      for (int32_t c : cuts) what += " " + std::to_string(c);
      expect_logits_match(e, run_pieces(e.ids, cuts), what);
    }
  }
}

TEST_P(FixtureModel, BatchedWithTheOtherSequences) {
  // All sequences in one step, then, after a prefix of each, the rest as a mixed batch of chunks and decodes.
  for (int32_t split_mode = 0; split_mode < 2; ++split_mode) {
    std::vector<SeqCache> sc(r_->seqs.size());
    std::vector<std::vector<float>> all(r_->seqs.size());
    std::vector<int32_t> done(r_->seqs.size(), 0);
    for (size_t i = 0; i < r_->seqs.size(); ++i) all[i].resize(r_->seqs[i].ids.size() * size_t(V()));
    for (int step = 0; step < 2; ++step) {
      StepBatch b;
      std::vector<std::pair<size_t, int32_t>> order;  // (sequence, first row) in batch order
      for (size_t k = 0; k < r_->seqs.size(); ++k) {
        size_t i = split_mode ? r_->seqs.size() - 1 - k : k;  // reversed order the second time
        const int32_t T = int32_t(r_->seqs[i].ids.size());
        int32_t end = step == 0 ? (split_mode ? std::max(1, T / 2) : T) : T;
        if (end <= done[i]) continue;
        ASSERT_TRUE(cache_->reserve(sc[i], end));
        order.emplace_back(i, done[i]);
        b.add(std::span(r_->seqs[i].ids).subspan(size_t(done[i]), size_t(end - done[i])), done[i], sc[i].slot,
              sc[i].blocks, true);
        done[i] = end;
      }
      if (order.empty()) continue;
      Tensor lg = model_->forward(b, *cache_, *ws_);
      std::vector<float> host(size_t(lg.numel()));
      be_->to_host_f32(lg, host.data());
      size_t row = 0;
      for (size_t k = 0; k < order.size(); ++k) {
        auto [i, first] = order[k];
        const int32_t n = b.seq_len(int32_t(k));
        std::memcpy(all[i].data() + size_t(first) * size_t(V()), host.data() + row * size_t(V()),
                    size_t(n) * size_t(V()) * 4);
        row += size_t(n);
      }
    }
    for (size_t i = 0; i < r_->seqs.size(); ++i) {
      expect_logits_match(r_->seqs[i], all[i], "batched (mode " + std::to_string(split_mode) + ")");
      cache_->release(sc[i]);
    }
  }
}

TEST_P(FixtureModel, GreedyGenerationUpToFirstNearTie) {
  int checked = 0;
  for (auto& e : r_->seqs) {
    if (e.greedy.empty()) continue;
    SeqCache sc;
    std::vector<int32_t> ids = e.ids;
    int32_t past = 0;
    for (size_t k = 0; k < e.greedy.size(); ++k) {
      ASSERT_TRUE(cache_->reserve(sc, int32_t(ids.size())));
      StepBatch b;
      b.add(std::span(ids).subspan(size_t(past)), past, sc.slot, sc.blocks);
      Tensor lg = model_->forward(b, *cache_, *ws_);
      std::vector<float> row(static_cast<size_t>(V()));
      be_->to_host_f32(lg, row.data());
      int32_t best = int32_t(std::max_element(row.begin(), row.end()) - row.begin());
      if (e.margins[k] < 1e-2) break;  // a near-tie: HF's own rounding may pick either
      ASSERT_EQ(best, e.greedy[k]) << "greedy step " << k;
      ++checked;
      past = int32_t(ids.size());
      ids.push_back(best);
    }
    cache_->release(sc);
  }
  EXPECT_GT(checked, 0);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, FixtureModel, ::testing::ValuesIn(test::kFixtureModels),
                         [](const auto& info) { return test::fixture_param_name(info.param); });
INSTANTIATE_TEST_SUITE_P(Family, FixtureModel, ::testing::ValuesIn(test::kFamilyModels),
                         [](const auto& info) { return test::fixture_param_name(info.param); });

}  // namespace
}  // namespace bamba
