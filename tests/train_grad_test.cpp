// HybridModel::forward_backward on the CPU: the loss and every parameter gradient against PyTorch (Hugging Face
// transformers, float64; tests/data/train/<model>/train_expected.safetensors made by
// ../shared/fixtures/tools/gen_grad_fixtures.py), three AdamW steps as torch.optim.AdamW takes them, and
// invariances that need no reference: the loss equals cross-entropy of the inference forward's logits, a
// batch's gradients are the sum of its rows', the SSD chunk size and the cross-entropy row chunk change nothing,
// the same step gives the same bits, and central differences of the fp32 loss agree with sampled gradients.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <map>

#include "core/hash_uniform.h"
#include "io/checkpoint.h"
#include "io/safetensors.h"
#include "model/hybrid.h"
#include "fixture_runner.h"
#include "test_util.h"

using namespace bamba;

namespace {

std::string reference_path(const std::string& model) {
  return std::string(BAMBA_SOURCE_DIR) + "/tests/data/train/" + model + "/train_expected.safetensors";
}

std::vector<float> read_f32(const TensorInfo& t) {
  std::vector<float> v(size_t(t.numel()));
  convert_to_f32(t.data, t.dtype, v.size(), v.data());
  return v;
}
std::vector<int32_t> read_i32(const TensorInfo& t) {
  EXPECT_EQ(t.dtype, DType::I32) << t.name;
  std::vector<int32_t> v(size_t(t.numel()));
  std::memcpy(v.data(), t.data, v.size() * 4);
  return v;
}

std::vector<float> host(Backend& be, Tensor t) {
  std::vector<float> v(size_t(t.numel()));
  if (t.contiguous()) be.to_host_f32(t, v.data());
  else
    for (int64_t r = 0; r < t.rows(); ++r) std::memcpy(&v[size_t(r * t.inner())], t.ptr<float>() + r * t.ld, size_t(t.inner()) * 4);
  return v;
}

// Gradients by HF name, on the host.
std::map<std::string, std::vector<float>> named(const ModelConfig& cfg, Backend& be, const ModelWeights& g) {
  std::map<std::string, std::vector<float>> out;
  for (auto& nt : hf_tensors(cfg, g)) out[nt.name] = host(be, nt.t);
  return out;
}

struct Trainer {
  std::unique_ptr<Backend> be = make_cpu_backend();
  std::unique_ptr<HybridModel> model;
  ModelWeights grads;
  explicit Trainer(const std::string& model_name, int64_t chunk_size = 0) {
    const std::string dir = test::model_dir(model_name);
    ModelConfig cfg = load_config(dir);
    if (chunk_size) cfg.mamba_chunk_size = chunk_size;
    Checkpoint ckpt(dir);
    ModelWeights w = load_weights(cfg, ckpt, *be);
    model = std::make_unique<HybridModel>(cfg, std::move(w), *be);
    grads = zeros_like_weights(model->config(), *be);
  }
  const ModelConfig& cfg() const { return model->config(); }
  void zero() {
    for (auto& nt : hf_tensors(cfg(), grads)) be->fill(nt.t, 0.f);
  }
  std::map<std::string, std::vector<float>> run(const TrainBatch& b, TrainResult* res = nullptr, TrainOptions opt = {}) {
    zero();
    TrainResult r = model->forward_backward(b, grads, opt);
    if (res) *res = r;
    return named(cfg(), *be, grads);
  }
};

// rows × T random tokens other than 0 (the fixtures' pad_token_id: its embedding row gets no lookup gradient,
// which a finite difference would not see); labels = ids with a masked prefix in row 1 (as an SFT prompt would
// be) and one more masked token.
TrainBatch random_batch(const ModelConfig& cfg, int32_t rows, int32_t T, uint64_t seed) {
  TrainBatch b{rows, T, {}, {}, {}};
  for (int32_t i = 0; i < rows * T; ++i) b.input_ids.push_back(1 + int32_t(splitmix64(seed * 1000003ull + uint64_t(i)) % uint64_t(cfg.vocab_size - 1)));
  b.labels = b.input_ids;
  if (rows > 1)
    for (int32_t t = 0; t < std::min(T, 9); ++t) b.labels[size_t(T + t)] = -100;
  b.labels[size_t(T / 2)] = -100;
  return b;
}

struct MaxErr {
  double err = 0, scale = 0;
};
MaxErr max_err(const std::vector<float>& got, const std::vector<float>& ref) {
  MaxErr m;
  for (size_t i = 0; i < ref.size(); ++i) {
    m.err = std::max(m.err, double(std::abs(got[i] - ref[i])));
    m.scale = std::max(m.scale, double(std::abs(ref[i])));
  }
  return m;
}

// Every tensor within tol·(1 + max|ref|) of ref.
void expect_grads_close(const std::map<std::string, std::vector<float>>& got,
                        const std::map<std::string, std::vector<float>>& ref, double tol, const std::string& what) {
  ASSERT_EQ(got.size(), ref.size()) << what;
  for (auto& [name, r] : ref) {
    auto it = got.find(name);
    ASSERT_NE(it, got.end()) << what << ": no gradient for " << name;
    ASSERT_EQ(it->second.size(), r.size()) << name;
    const MaxErr m = max_err(it->second, r);
    EXPECT_LE(m.err, tol * (1 + m.scale)) << what << ": " << name << " max|err| " << m.err << " max|ref| " << m.scale;
  }
}

class TrainGrad : public ::testing::TestWithParam<std::string> {};

}  // namespace

// ---- against PyTorch
TEST_P(TrainGrad, LossAndEveryGradientEqualPyTorch) {
  const std::string path = reference_path(GetParam());
  if (!std::filesystem::exists(path))
    GTEST_SKIP() << "training reference " << path << " is missing (make it with gen_grad_fixtures.py, see the file header)";
  SafetensorsFile ref(path);
  Trainer tr(GetParam());
  const TensorInfo* ids = ref.find("batch.input_ids");
  ASSERT_TRUE(ids && ids->shape.size() == 2);
  TrainBatch b{int32_t(ids->shape[0]), int32_t(ids->shape[1]), read_i32(*ids), read_i32(*ref.find("batch.labels")), {}};
  TrainResult res;
  auto got = tr.run(b, &res, {tr.cfg().z_loss_coefficient, 0, 0, 7});
  const double want_loss = read_f32(*ref.find("step0.loss"))[0];
  EXPECT_NEAR(res.loss, want_loss, 1e-4 * (1 + std::abs(want_loss)));
  std::map<std::string, std::vector<float>> want;
  for (auto& t : ref.tensors())
    if (t.name.rfind("grad.", 0) == 0) want[t.name.substr(5)] = read_f32(t);
  expect_grads_close(got, want, 1e-4, GetParam());
  // the observed errors, for the record
  double worst = 0;
  std::string worst_name;
  for (auto& [name, r] : want) {
    const MaxErr m = max_err(got[name], r);
    if (m.err / (1 + m.scale) > worst) worst = m.err / (1 + m.scale), worst_name = name;
  }
  std::printf("[ %s ] loss %.8f (ref %.8f, |diff| %.2e); worst gradient %s: max|err|/(1+max|ref|) = %.2e over %zu tensors\n",
              GetParam().c_str(), res.loss, want_loss, std::abs(res.loss - want_loss), worst_name.c_str(), worst,
              want.size());
}

// torch.optim.AdamW (decoupled decay 0.1 on tensors of HF rank >= 2, betas 0.9/0.95, eps 1e-8, lr 1e-3) after
// torch.nn.utils.clip_grad_norm_(1.0), as gen_grad_fixtures.py runs it: a test-local optimizer (the trainer's
// own lives in src/train/), here only to check that three steps on our gradients land where PyTorch's do.
TEST_P(TrainGrad, ThreeAdamWStepsEqualPyTorch) {
  const std::string path = reference_path(GetParam());
  if (!std::filesystem::exists(path))
    GTEST_SKIP() << "training reference " << path << " is missing (make it with gen_grad_fixtures.py, see the file header)";
  SafetensorsFile ref(path);
  Trainer tr(GetParam());
  const TensorInfo* ids = ref.find("batch.input_ids");
  TrainBatch b{int32_t(ids->shape[0]), int32_t(ids->shape[1]), read_i32(*ids), read_i32(*ref.find("batch.labels")), {}};
  const TrainOptions opt{tr.cfg().z_loss_coefficient, 0, 0, 256};
  const double lr = 1e-3, b1 = 0.9, b2 = 0.95, eps = 1e-8, wd = 0.1, max_norm = 1.0;
  std::vector<NamedTensor> params = hf_tensors(tr.cfg(), tr.model->weights()), grads = hf_tensors(tr.cfg(), tr.grads);
  std::vector<std::vector<double>> m(params.size()), v(params.size());
  for (size_t i = 0; i < params.size(); ++i) m[i].assign(size_t(params[i].t.numel()), 0.0), v[i].assign(size_t(params[i].t.numel()), 0.0);
  for (int step = 0; step <= 3; ++step) {
    TrainResult res;
    tr.run(b, &res, opt);
    const double want = read_f32(*ref.find("step" + std::to_string(step) + ".loss"))[0];
    EXPECT_NEAR(res.loss, want, 1e-4 * (1 + std::abs(want))) << "loss before step " << step;
    std::printf("[ %s ] step %d loss %.8f (ref %.8f)\n", GetParam().c_str(), step, res.loss, want);
    if (step == 3) break;
    double sq = 0;
    for (auto& g : grads)
      for (int64_t k = 0; k < g.t.numel(); ++k) sq += double(g.t.ptr<float>()[k]) * g.t.ptr<float>()[k];
    const double clip = std::min(1.0, max_norm / (std::sqrt(sq) + 1e-6));
    const double bc1 = 1 - std::pow(b1, step + 1), bc2 = 1 - std::pow(b2, step + 1);
    for (size_t i = 0; i < params.size(); ++i) {
      float* p = params[i].t.ptr<float>();
      const float* g = grads[i].t.ptr<float>();
      const double decay = params[i].shape.size() >= 2 ? wd : 0.0;
      for (int64_t k = 0; k < params[i].t.numel(); ++k) {
        const double gk = double(g[k]) * clip;
        double& mk = m[i][size_t(k)];
        double& vk = v[i][size_t(k)];
        mk = b1 * mk + (1 - b1) * gk;
        vk = b2 * vk + (1 - b2) * gk * gk;
        double pk = double(p[k]) * (1 - lr * decay);
        pk -= lr / bc1 * mk / (std::sqrt(vk) / std::sqrt(bc2) + eps);
        p[k] = float(pk);
      }
    }
  }
  std::map<std::string, std::vector<float>> got, want;
  for (auto& nt : params) got[nt.name] = host(*tr.be, nt.t);
  for (auto& t : ref.tensors())
    if (t.name.rfind("param.", 0) == 0) want[t.name.substr(6)] = read_f32(t);
  expect_grads_close(got, want, 1e-4, GetParam() + " parameters after 3 AdamW steps");
  double worst = 0;
  for (auto& [name, r] : want) {
    const MaxErr e = max_err(got[name], r);
    worst = std::max(worst, e.err / (1 + e.scale));
  }
  std::printf("[ %s ] parameters after 3 steps: worst max|err|/(1+max|ref|) = %.2e\n", GetParam().c_str(), worst);
}

// ---- invariances (no reference needed)
TEST_P(TrainGrad, LossEqualsCrossEntropyOfTheInferenceLogits) {
  Trainer tr(GetParam());
  const ModelConfig& cfg = tr.cfg();
  const int32_t T = int32_t(2 * cfg.mamba_chunk_size + 5);
  TrainBatch b = random_batch(cfg, 3, T, 11);
  TrainOptions opt;
  opt.z_loss_coefficient = 1e-2f;
  TrainResult res;
  tr.run(b, &res, opt);
  // the inference forward, row by row, and cross-entropy by hand in double
  HybridCache cache(cfg, *tr.be, HybridCache::sizes_for(cfg, 1, T));
  Workspace ws(cfg, *tr.be, T, T);
  const int64_t V = cfg.vocab_size;
  double ce = 0, z = 0;
  int64_t n = 0;
  for (int32_t r = 0; r < b.rows; ++r) {
    SeqCache sc;
    ASSERT_TRUE(cache.reserve(sc, T));
    StepBatch sb;
    sb.add(std::span(b.input_ids).subspan(size_t(r * T), size_t(T)), 0, sc.slot, sc.blocks, true);
    Tensor logits = tr.model->forward(sb, cache, ws);
    std::vector<float> l = host(*tr.be, logits);
    for (int32_t t = 0; t < T; ++t) {
      const float* row = &l[size_t(t) * size_t(V)];
      double mx = *std::max_element(row, row + V), s = 0;
      for (int64_t v = 0; v < V; ++v) s += std::exp(double(row[v]) - mx);
      const double lse = mx + std::log(s);
      z += lse * lse;
      const int32_t lab = t + 1 < T ? b.labels[size_t(r * T + t + 1)] : -100;
      if (lab >= 0) ce += lse - row[lab], ++n;
    }
    cache.release(sc);
  }
  EXPECT_EQ(res.label_count, n);
  const double want = ce / double(n) + 1e-2 * z / double(b.rows * T);
  EXPECT_NEAR(res.loss, want, 1e-5 * (1 + want));
}

TEST_P(TrainGrad, BatchGradientIsTheSumOfItsRows) {
  Trainer tr(GetParam());
  const int32_t T = int32_t(2 * tr.cfg().mamba_chunk_size + 3);
  TrainBatch b = random_batch(tr.cfg(), 3, T, 5);
  TrainOptions opt;
  opt.z_loss_coefficient = 1e-3f;
  TrainResult whole;
  auto g = tr.run(b, &whole, opt);
  // each row alone, with the batch's divisors (the reduction over the batch accounted for)
  opt.label_count = whole.label_count;
  opt.position_count = int64_t(b.rows) * T;
  std::map<std::string, std::vector<float>> sum;
  double loss = 0;
  for (int32_t r = 0; r < b.rows; ++r) {
    TrainBatch one{1, T, {b.input_ids.begin() + r * T, b.input_ids.begin() + (r + 1) * T},
                   {b.labels.begin() + r * T, b.labels.begin() + (r + 1) * T}, {}};
    TrainResult res;
    auto gr = tr.run(one, &res, opt);
    loss += res.loss;
    for (auto& [name, v] : gr) {
      auto& acc = sum[name];
      if (acc.empty()) acc.assign(v.size(), 0.f);
      for (size_t i = 0; i < v.size(); ++i) acc[i] += v[i];
    }
  }
  EXPECT_NEAR(loss, whole.loss, 1e-6 * whole.loss);
  expect_grads_close(sum, g, 1e-5, "sum of rows vs batch");
}

// Packing with resets: a packed row whose documents are marked by seq_start gives the same loss and gradients as
// running each document as its own row (with the packed batch's divisors: the same scored tokens). The documents
// are cut at odd places, one longer than a Mamba chunk, so the conv window, the SSD chunk states, attention and
// RoPE positions must all restart at each document. Without seq_start the same tokens give other gradients.
TEST_P(TrainGrad, PackedRowWithResetsEqualsItsDocumentsAsRows) {
  Trainer tr(GetParam());
  const int32_t Q = int32_t(tr.cfg().mamba_chunk_size), T = 2 * Q + 11;
  TrainBatch b = random_batch(tr.cfg(), 2, T, 11);
  b.seq_start = {0, 5, 5 + Q + 3, T, T + 1, T + 9, 2 * T};  // row 1 opens with a 1-token document
  TrainResult packed;
  auto g = tr.run(b, &packed);
  TrainOptions opt;
  opt.label_count = packed.label_count;
  opt.position_count = int64_t(b.rows) * T;
  std::map<std::string, std::vector<float>> sum;
  double loss = 0;
  int64_t labels = 0;
  for (size_t s = 0; s + 1 < b.seq_start.size(); ++s) {
    const int32_t t0 = b.seq_start[s], len = b.seq_start[s + 1] - t0;
    TrainBatch one{1, len, {b.input_ids.begin() + t0, b.input_ids.begin() + t0 + len},
                   {b.labels.begin() + t0, b.labels.begin() + t0 + len}, {}};
    TrainResult res;
    auto gr = tr.run(one, &res, opt);
    loss += res.loss;
    labels += res.label_count;
    for (auto& [name, v] : gr) {
      auto& acc = sum[name];
      if (acc.empty()) acc.assign(v.size(), 0.f);
      for (size_t i = 0; i < v.size(); ++i) acc[i] += v[i];
    }
  }
  EXPECT_EQ(labels, packed.label_count);  // each document's first label is unscored, as a row's is
  EXPECT_NEAR(loss, packed.loss, 1e-6 * packed.loss);
  expect_grads_close(sum, g, 1e-5, "documents as rows vs packed with resets");

  // The loss alone (validation) is the same number and leaves the gradients alone.
  opt = {};
  opt.loss_only = true;
  tr.zero();
  const TrainResult only = tr.model->forward_backward(b, tr.grads, opt);
  EXPECT_NEAR(only.loss, packed.loss, 1e-9 * packed.loss);
  for (auto& [name, v] : named(tr.cfg(), *tr.be, tr.grads))
    for (float x : v) ASSERT_EQ(x, 0.f) << name << ": loss_only wrote a gradient";

  // Control: the same rows without the document boundaries are another computation.
  TrainBatch flat = b;
  flat.seq_start.clear();
  TrainResult across;
  tr.run(flat, &across);
  EXPECT_GT(std::abs(across.loss - packed.loss), 1e-4);
}

TEST_P(TrainGrad, ChunkSizesRepeatsAndCheckpointingChangeNothing) {
  Trainer a(GetParam());
  const int32_t T = int32_t(2 * a.cfg().mamba_chunk_size + 7);
  TrainBatch b = random_batch(a.cfg(), 2, T, 3);
  auto ga = a.run(b);
  expect_grads_close(a.run(b), ga, 0, "the same step twice");  // bit for bit
  for (int64_t q : {1, 5, 1000}) {
    Trainer c(GetParam(), q);
    expect_grads_close(c.run(b), ga, 0, "mamba_chunk_size " + std::to_string(q));
  }
  TrainOptions opt;
  // cross-entropy a row at a time: only summation orders may differ — dW's over the chunks, and the 1-row dx that
  // BLAS computes with other kernels (OpenBLAS's blocking depends on the CPU and its thread count), a rounding that
  // the backward carries into every layer (~2e-6 of the largest gradient on a 2-core EPYC)
  opt.ce_chunk_rows = 1;
  expect_grads_close(a.run(b, nullptr, opt), ga, 1e-5, "ce_chunk_rows 1");
  for (Checkpointing c : {Checkpointing::Full, Checkpointing::Selective}) {  // recomputed in the backward: the same bits
    TrainOptions ckpt;
    ckpt.activation_checkpointing = c;
    expect_grads_close(a.run(b, nullptr, ckpt), ga, 0,
                       c == Checkpointing::Full ? "activation checkpointing" : "selective activation checkpointing");
    // only the first k layers checkpointed, the rest keeping everything (k = 0: none)
    for (int64_t k = 0; k < a.cfg().num_hidden_layers; ++k) {
      ckpt.checkpoint_layers = k;
      expect_grads_close(a.run(b, nullptr, ckpt), ga, 0,
                         std::string(c == Checkpointing::Full ? "full" : "selective") +
                             " activation checkpointing of the first " + std::to_string(k) + " layers");
    }
  }
}

// Central differences of the fp32 loss at the largest-gradient element of every tensor: a coarse check of the
// model's wiring that needs no reference (the ops' own float64 checks are in backward_test.cpp).
TEST_P(TrainGrad, SampledFiniteDifferences) {
  Trainer tr(GetParam());
  const int32_t T = int32_t(tr.cfg().mamba_chunk_size + 5);
  TrainBatch b = random_batch(tr.cfg(), 2, T, 9);
  auto g = tr.run(b);
  auto params = hf_tensors(tr.cfg(), tr.model->weights());
  ModelWeights scratch = zeros_like_weights(tr.cfg(), *tr.be);
  auto loss = [&] { return tr.model->forward_backward(b, scratch, {}).loss; };
  double worst = 0;
  for (auto& p : params) {
    const std::vector<float>& gp = g[p.name];
    size_t k = 0;
    for (size_t i = 0; i < gp.size(); ++i)
      if (std::abs(gp[i]) > std::abs(gp[k])) k = i;
    float* w = p.t.ptr<float>() + k;
    const float keep = *w, h = 2e-3f;
    *w = keep + h;
    const double lp = loss();
    *w = keep - h;
    const double lm = loss();
    *w = keep;
    const double num = (lp - lm) / (double(keep + h) - double(keep - h));
    EXPECT_NEAR(gp[k], num, 1e-2 * std::abs(num) + 2e-3) << p.name << " element " << k;
    worst = std::max(worst, std::abs(gp[k] - num) / (std::abs(num) + 1e-3));
  }
  std::printf("[ %s ] sampled central differences: worst |g − fd| / (|fd| + 1e-3) = %.2e over %zu tensors\n",
              GetParam().c_str(), worst, params.size());
  release_weights(tr.cfg(), scratch, *tr.be);
}

INSTANTIATE_TEST_SUITE_P(Models, TrainGrad, ::testing::Values("bamba-tiny-a", "bamba-tiny-b"),
                         [](const auto& info) { return test::fixture_param_name(info.param); });
