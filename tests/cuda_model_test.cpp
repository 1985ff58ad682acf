// The fixture models on the GPU (bf16 weights and activations) against Hugging Face's fp32 logits: one prefill,
// prefill + teacher-forced decode (single and batched, so decode steps are recorded into CUDA graphs and
// replayed), and chunked prefill at splits inside and across chunk boundaries. Per sequence: relative L2 error of
// its logit rows <= 2e-2, and the same argmax wherever the reference top-1/top-2 margin exceeds 0.5
// (docs/numerics.md). Skips itself, visibly, without a GPU.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <nlohmann/json.hpp>

#include "core/mapped_file.h"
#include "io/safetensors.h"
#include "model/hybrid.h"
#include "test_util.h"

namespace bamba {
namespace {

constexpr double kRelL2 = 2e-2;
constexpr double kMargin = 0.5;

struct Ref {
  std::vector<int32_t> ids;
  std::vector<int32_t> positions;  // rows with reference logits
  std::vector<float> logits;       // [positions.size(), V]
};

std::vector<Ref> load_refs(const std::string& dir) {
  SafetensorsFile f(dir + "/expected.safetensors");
  auto meta = nlohmann::json::parse(read_text_file(dir + "/expected.json"));
  auto f32 = [](const TensorInfo& t) {
    std::vector<float> v(static_cast<size_t>(t.numel()));
    convert_to_f32(t.data, t.dtype, v.size(), v.data());
    return v;
  };
  auto i32 = [](const TensorInfo& t) {
    std::vector<int32_t> v(static_cast<size_t>(t.numel()));
    std::memcpy(v.data(), t.data, v.size() * 4);
    return v;
  };
  std::vector<Ref> out;
  for (auto& sq : meta["sequences"]) {
    Ref r;
    const std::string p = "seq" + std::to_string(sq["index"].get<int>()) + ".";
    r.ids = i32(*f.find(p + "input_ids"));
    if (auto* pos = f.find(p + "logits_positions")) {
      r.positions = i32(*pos);
      r.logits = f32(*f.find(p + "logits_at"));
    } else {
      for (int32_t t = 0; t < int32_t(r.ids.size()); ++t) r.positions.push_back(t);
      r.logits = f32(*f.find(p + "logits"));
    }
    out.push_back(std::move(r));
  }
  return out;
}

class CudaFixtureModel : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA GPU: the GPU fixture-model tests need one";
    dir_ = test::model_dir(GetParam());
    be_ = make_backend("cuda");
    model_ = std::make_unique<HybridModel>(load_model(dir_, *be_));
    refs_ = load_refs(dir_);
    int32_t max_len = 0, total = 0;
    for (auto& r : refs_) {
      max_len = std::max(max_len, int32_t(r.ids.size()) + 16);
      total += int32_t(r.ids.size());
    }
    cache_ = std::make_unique<HybridCache>(model_->config(), *be_,
                                           HybridCache::sizes_for(model_->config(), int32_t(refs_.size()), max_len, 8));
    ws_ = std::make_unique<Workspace>(model_->config(), *be_, total, total);
  }
  int64_t V() const { return model_->config().vocab_size; }

  // all: logits for every position of r.ids
  void check(const Ref& r, const std::vector<float>& all, const std::string& what) {
    double num = 0, den = 0;
    int argmax_checked = 0;
    for (size_t k = 0; k < r.positions.size(); ++k) {
      const float* got = all.data() + size_t(r.positions[k]) * size_t(V());
      const float* ref = r.logits.data() + k * size_t(V());
      for (int64_t j = 0; j < V(); ++j) {
        num += (double(got[j]) - ref[j]) * (double(got[j]) - ref[j]);
        den += double(ref[j]) * ref[j];
      }
      std::vector<float> sorted(ref, ref + V());
      std::partial_sort(sorted.begin(), sorted.begin() + 2, sorted.end(), std::greater<float>());
      if (sorted[0] - sorted[1] > kMargin) {
        EXPECT_EQ(std::max_element(got, got + V()) - got, std::max_element(ref, ref + V()) - ref)
            << what << ": argmax of row " << r.positions[k] << " (margin " << sorted[0] - sorted[1] << ")";
        ++argmax_checked;
      }
    }
    const double e = std::sqrt(num / den);
    EXPECT_LE(e, kRelL2) << what << ": relative L2 error of a " << r.ids.size() << "-token sequence";
    RecordProperty(what + " len " + std::to_string(r.ids.size()), std::to_string(e));
  }

  std::vector<float> run_pieces(const std::vector<int32_t>& ids, const std::vector<int32_t>& cuts) {
    SeqCache sc;
    std::vector<float> all(ids.size() * size_t(V()));
    int32_t begin = 0;
    for (int32_t end : cuts) {
      EXPECT_TRUE(cache_->reserve(sc, end));
      StepBatch b;
      b.add(std::span(ids).subspan(size_t(begin), size_t(end - begin)), begin, sc.slot, sc.blocks, true);
      Tensor lg = model_->forward(b, *cache_, *ws_);
      be_->to_host_f32(lg, all.data() + size_t(begin) * size_t(V()));
      begin = end;
    }
    cache_->release(sc);
    return all;
  }

  std::string dir_;
  std::unique_ptr<Backend> be_;
  std::unique_ptr<HybridModel> model_;
  std::vector<Ref> refs_;
  std::unique_ptr<HybridCache> cache_;
  std::unique_ptr<Workspace> ws_;
};

TEST_P(CudaFixtureModel, Prefill) {
  for (auto& r : refs_) check(r, run_pieces(r.ids, {int32_t(r.ids.size())}), "prefill");
}

TEST_P(CudaFixtureModel, PrefillThenDecode) {
  for (auto& r : refs_) {
    const int32_t T = int32_t(r.ids.size());
    for (int32_t prefix : {1, std::max(1, T / 2)}) {
      std::vector<int32_t> cuts;
      for (int32_t t = prefix; t <= T; ++t) cuts.push_back(t);
      check(r, run_pieces(r.ids, cuts), "prefill " + std::to_string(prefix) + " + decode");
    }
  }
}

TEST_P(CudaFixtureModel, ChunkedPrefill) {
  const int32_t Q = int32_t(model_->config().mamba_chunk_size);
  for (auto& r : refs_) {
    const int32_t T = int32_t(r.ids.size());
    for (std::vector<int32_t> plan : std::vector<std::vector<int32_t>>{{Q - 1, Q + 1, 2 * Q + 3}, {3, Q + 5, Q + 6}, {T / 3, 2 * T / 3}}) {
      std::vector<int32_t> cuts;
      for (int32_t c : plan)
        if (c > 0 && c < T && (cuts.empty() || c > cuts.back())) cuts.push_back(c);
      cuts.push_back(T);
      check(r, run_pieces(r.ids, cuts), "chunked");
    }
  }
}

// All sequences prefilled together (first halves), then decoded together one token per step; sequences drop out
// as they end, so several batch sizes are recorded and replayed as graphs.
TEST_P(CudaFixtureModel, BatchedPrefillThenBatchedDecode) {
  std::vector<SeqCache> sc(refs_.size());
  std::vector<std::vector<float>> all(refs_.size());
  std::vector<int32_t> done(refs_.size(), 0);
  for (size_t i = 0; i < refs_.size(); ++i) all[i].resize(refs_[i].ids.size() * size_t(V()));
  for (int step = 0;; ++step) {
    StepBatch b;
    std::vector<size_t> order;
    for (size_t i = 0; i < refs_.size(); ++i) {
      const int32_t T = int32_t(refs_[i].ids.size());
      const int32_t end = step == 0 ? std::max(1, T / 2) : done[i] + 1;
      if (done[i] >= T) continue;
      ASSERT_TRUE(cache_->reserve(sc[i], end));
      b.add(std::span(refs_[i].ids).subspan(size_t(done[i]), size_t(end - done[i])), done[i], sc[i].slot, sc[i].blocks,
            true);
      order.push_back(i);
    }
    if (order.empty()) break;
    Tensor lg = model_->forward(b, *cache_, *ws_);
    std::vector<float> host(static_cast<size_t>(lg.numel()));
    be_->to_host_f32(lg, host.data());
    for (size_t k = 0; k < order.size(); ++k) {
      const size_t i = order[k];
      const int32_t n = b.seq_len(int32_t(k));
      std::memcpy(all[i].data() + size_t(done[i]) * size_t(V()), host.data() + size_t(b.seq_start[k]) * size_t(V()),
                  size_t(n) * size_t(V()) * 4);
      done[i] += n;
    }
  }
  for (size_t i = 0; i < refs_.size(); ++i) {
    check(refs_[i], all[i], "batched decode");
    cache_->release(sc[i]);
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, CudaFixtureModel, ::testing::Values("bamba-tiny-a", "bamba-tiny-b", "bamba-tiny-e2e"),
                         [](const auto& info) {
                           std::string s = info.param;
                           for (char& c : s)
                             if (c == '-') c = '_';
                           return s;
                         });

}  // namespace
}  // namespace bamba
