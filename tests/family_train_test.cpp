// Training Bamba's relatives (tests/data/family, docs/family.md) on the CPU. No PyTorch gradient references exist
// for them, so the whole model's gradient is checked against central finite differences of its own loss: for every
// parameter tensor, the element of the largest gradient and the derivative along a random ±1 direction over the
// whole tensor (which every element's gradient enters). Then: the weight-decay split and the HF names a checkpoint
// is saved under, a checkpoint that loads back with the same logits, `bamba train` lowering the loss on a fixture,
// a batch equal to the sum of its rows alone, and no layer kind refused (MoE and Zamba2's shared blocks included).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "core/error.h"
#include "core/hash_uniform.h"
#include "data/token_shard.h"
#include "io/checkpoint.h"
#include "model/hybrid.h"
#include "tokenizer/tokenizer.h"
#include "fixture_runner.h"
#include "test_util.h"
#include "train/adamw.h"
#include "train/checkpoint.h"
#include "train/hybrid_trainable.h"

using namespace bamba;
namespace fs = std::filesystem;

namespace {

// Every relative's fixture: `bamba train` supports them all (MoE routers and experts, Zamba2's shared blocks).
const std::vector<std::string> kTrainable = {"mamba2",    "llama3",           "granitemoehybrid-dense-rope",
                                             "falcon_h1", "granitemoehybrid-moe", "nemotron_h",
                                             "zamba2"};

// "falcon_h1-ungated": the falcon_h1 fixture's shape with mamba_rms_norm false (y ⊙ silu(z), no norm: the default
// of Falcon-H1's config) on generated weights, as no fixture holds one.
const char* kUngated = "falcon_h1-ungated";
// "nemotron_h-dense": the nemotron_h fixture's shape with its MoE layer a relu² MLP (Nemotron-H 8B / 56B are dense),
// on generated weights.
const char* kDense = "nemotron_h-dense";

struct Fixture {
  std::string dir;
  std::unique_ptr<Backend> be = make_cpu_backend();
  std::unique_ptr<HybridModel> model;
  explicit Fixture(const std::string& name)
      : dir(test::fixture_model_dir(name == kUngated ? "falcon_h1" : name == kDense ? "nemotron_h" : name)) {
    if (dir.empty()) return;
    if (name != kUngated && name != kDense) {
      model = std::make_unique<HybridModel>(load_model(dir, *be));
      return;
    }
    ModelConfig cfg = load_config(dir);
    if (name == kUngated) cfg.mamba_gated_norm = false;
    for (MlpKind& k : cfg.mlp_kinds)
      if (k == MlpKind::MoE) k = MlpKind::Relu2;
    ModelWeights w = dummy_weights(cfg, *be, 5);
    model = std::make_unique<HybridModel>(cfg, std::move(w), *be);
  }
  const ModelConfig& cfg() const { return model->config(); }
};

#define NEED_FIXTURE(f)                                                                                     \
  if ((f).dir.empty()) GTEST_SKIP() << "fixture " << GetParam() << " not found in tests/data/family or " \
                                                                   "$BAMBA_FAMILY_FIXTURES"

// rows × T tokens in [1, V) (0 is pad_token_id: its embedding row gets no lookup gradient, which a finite
// difference would see), labels = ids with one masked position.
TrainBatch random_batch(const ModelConfig& cfg, int32_t rows, int32_t T, uint64_t seed) {
  TrainBatch b{rows, T, {}, {}, {}};
  for (int32_t i = 0; i < rows * T; ++i)
    b.input_ids.push_back(1 + int32_t(splitmix64(seed * 1000003ull + uint64_t(i)) % uint64_t(cfg.vocab_size - 1)));
  b.labels = b.input_ids;
  b.labels[size_t(T / 2)] = -100;
  return b;
}

std::vector<float> logits_of(HybridModel& m, Backend& be, const std::vector<int32_t>& ids) {
  const ModelConfig& cfg = m.config();
  const int32_t T = int32_t(ids.size());
  HybridCache cache(cfg, be, HybridCache::sizes_for(cfg, 1, T));
  Workspace ws(cfg, be, T, T);
  SeqCache sc;
  EXPECT_TRUE(cache.reserve(sc, T));
  StepBatch sb;
  sb.add(std::span(ids), 0, sc.slot, sc.blocks, true);
  Tensor logits = m.forward(sb, cache, ws);
  std::vector<float> out(size_t(logits.numel()));
  be.to_host_f32(logits, out.data());
  cache.release(sc);
  return out;
}

// A temp folder with a.bin: 8 documents of one repeated sentence in the byte vocabulary (258, separator 256).
std::string shard_dir(const std::string& tag) {
  const std::string data = test::make_temp_dir(tag);
  TokenShardWriter w(data + "/a.bin", 258, 256);
  for (int d = 0; d < 8; ++d) {
    std::vector<int32_t> doc;
    for (char c : std::string("the river flows north; the bird sings. ")) doc.push_back(static_cast<unsigned char>(c));
    w.add_document(doc);
  }
  w.finish();
  return data;
}

class FamilyTrain : public ::testing::TestWithParam<std::string> {};

}  // namespace

// The loss is the cross-entropy of the inference forward's logits (the training forward computes the same
// function, multipliers included).
TEST_P(FamilyTrain, LossEqualsCrossEntropyOfTheInferenceLogits) {
  Fixture f(GetParam());
  NEED_FIXTURE(f);
  const int32_t T = 37;
  TrainBatch b = random_batch(f.cfg(), 1, T, 3);
  ModelWeights g = zeros_like_weights(f.cfg(), *f.be);
  const TrainResult res = f.model->forward_backward(b, g, {});
  release_weights(f.cfg(), g, *f.be);
  const std::vector<float> l = logits_of(*f.model, *f.be, b.input_ids);
  const int64_t V = f.cfg().vocab_size;
  double ce = 0;
  int64_t n = 0;
  for (int32_t t = 0; t + 1 < T; ++t) {
    const int32_t lab = b.labels[size_t(t + 1)];
    if (lab < 0) continue;
    const float* row = &l[size_t(t) * size_t(V)];
    double mx = *std::max_element(row, row + V), s = 0;
    for (int64_t v = 0; v < V; ++v) s += std::exp(double(row[v]) - mx);
    ce += mx + std::log(s) - row[lab], ++n;
  }
  EXPECT_EQ(res.label_count, n);
  EXPECT_NEAR(res.loss, ce / double(n), 1e-5 * (1 + res.loss));
}

// Central differences (in double, of the fp32 model's loss) for every parameter tensor: at its largest-gradient
// element, and along a random ±1 direction u over the whole tensor, (L(w + εu) − L(w − εu)) / 2ε = Σ g·u.
// MoE: the loss is differentiable only while every token keeps its top-k experts (the choice gets no gradient, as in
// PyTorch), so a difference whose perturbation moved a choice (TrainResult::routing differs) is retried with ε
// halved, up to 6 times; the few still straddling a switch are skipped and counted (at most 1 in 10 checks).
void check_gradient(Fixture& f, const std::string& label) {
  const ModelConfig& cfg = f.cfg();
  TrainBatch b = random_batch(cfg, 2, int32_t(cfg.mamba_chunk_size + 5), 9);
  ModelWeights g = zeros_like_weights(cfg, *f.be), scratch = zeros_like_weights(cfg, *f.be);
  TrainOptions rec;
  rec.record_routing = true;
  const TrainResult base = f.model->forward_backward(b, g, rec);
  // the loss, or NaN when the weights as they are now move a top-k choice away from the base point's
  auto loss = [&] {
    const TrainResult r = f.model->forward_backward(b, scratch, rec);
    return r.routing == base.routing ? r.loss : std::nan("");
  };
  // fp32 rounding of the loss, over the step 2h: the part of a central difference that is noise
  auto noise = [&](double h) { return 3e-7 * (1 + std::abs(base.loss)) / h; };
  const std::vector<NamedTensor> params = hf_tensors(cfg, f.model->weights()), grads = hf_tensors(cfg, g);
  ASSERT_EQ(params.size(), grads.size());
  double worst_elem = 0, worst_dir = 0;
  std::string worst_elem_name, worst_dir_name;
  int checks = 0, retried = 0, skipped = 0;
  for (size_t p = 0; p < params.size(); ++p) {
    const std::string& name = params[p].name;
    float* w = params[p].t.ptr<float>();
    const float* gp = grads[p].t.ptr<float>();
    const size_t n = size_t(params[p].t.numel());
    // the largest-gradient element
    size_t k = 0;
    for (size_t i = 0; i < n; ++i)
      if (std::abs(gp[i]) > std::abs(gp[k])) k = i;
    const float keep = w[k];
    double num = std::nan(""), h_used = 0;
    ++checks;
    for (int tries = 0; tries < 7 && std::isnan(num); ++tries) {
      const float h = 2e-3f / float(1 << tries);
      w[k] = keep + h;
      const double lp = loss();
      w[k] = keep - h;
      const double lm = loss();
      w[k] = keep;
      num = (lp - lm) / (double(keep + h) - double(keep - h));
      h_used = h;
      retried += tries == 1;
    }
    if (std::isnan(num)) {
      ++skipped;
    } else {
      EXPECT_NEAR(gp[k], num, 1e-2 * std::abs(num) + 1e-3 + noise(h_used)) << name << " element " << k;
      const double e1 = std::abs(gp[k] - num) / (std::abs(num) + 1e-3);
      if (e1 > worst_elem) worst_elem = e1, worst_elem_name = name;
    }
    // a random direction over the whole tensor
    std::vector<float> saved(w, w + n), plus(n), minus(n);
    double gsum = 0;
    for (size_t i = 0; i < n; ++i) gsum += std::abs(double(gp[i]));
    ++checks;
    double want = 0, dir = std::nan("");
    for (int tries = 0; tries < 7 && std::isnan(dir); ++tries) {
      const float eps = 1e-3f / float(1 << tries);
      want = 0;
      for (size_t i = 0; i < n; ++i) {
        const float u = (splitmix64(uint64_t(p) * 7919u + i) & 1) ? 1.f : -1.f;
        plus[i] = saved[i] + eps * u, minus[i] = saved[i] - eps * u;
        want += double(gp[i]) * ((double(plus[i]) - double(minus[i])) / (2.0 * eps));  // the step as rounded
      }
      std::copy(plus.begin(), plus.end(), w);
      const double dp = loss();
      std::copy(minus.begin(), minus.end(), w);
      const double dm = loss();
      std::copy(saved.begin(), saved.end(), w);
      dir = (dp - dm) / (2.0 * eps);
      h_used = eps;
      retried += tries == 1;
    }
    if (std::isnan(dir)) {
      ++skipped;
      continue;
    }
    // Σ|g| bounds how large a wrong gradient could make Σ g·u; the fp32 loss's rounding is ~1e-6 / 2ε.
    EXPECT_NEAR(want, dir, 1e-2 * std::abs(dir) + 2e-3 * gsum + 2e-3 + noise(h_used)) << name << ": Σ g·u vs central difference";
    const double e2 = std::abs(want - dir) / (std::abs(dir) + 1e-3);
    if (e2 > worst_dir) worst_dir = e2, worst_dir_name = name;
  }
  EXPECT_LE(skipped * 10, checks) << skipped << " of " << checks << " checks straddled a top-k switch at every ε";
  std::printf("[ %s ] %zu tensors: largest-gradient element worst |g − fd| / (|fd| + 1e-3) = %.2e (%s); "
              "random direction worst |Σg·u − fd| / (|fd| + 1e-3) = %.2e (%s); %d of %d differences retried with a "
              "smaller step, %d skipped (a top-k switch at every step)\n",
              label.c_str(), params.size(), worst_elem, worst_elem_name.c_str(), worst_dir, worst_dir_name.c_str(),
              retried, checks, skipped);
  release_weights(cfg, g, *f.be);
  release_weights(cfg, scratch, *f.be);
}
TEST_P(FamilyTrain, GradientMatchesFiniteDifferences) {
  Fixture f(GetParam());
  NEED_FIXTURE(f);
  check_gradient(f, GetParam());
}

// A batch of rows is the sum of its rows alone (with the batch's divisors): the loss and every gradient. Nothing
// crosses rows: MoE routing is per token, the Zamba2 embeddings concatenated are each row's own.
TEST_P(FamilyTrain, BatchEqualsTheSumOfItsRowsAlone) {
  Fixture f(GetParam());
  NEED_FIXTURE(f);
  const ModelConfig& cfg = f.cfg();
  const int32_t rows = 3, T = 21;
  TrainBatch b = random_batch(cfg, rows, T, 23);
  ModelWeights whole = zeros_like_weights(cfg, *f.be), parts = zeros_like_weights(cfg, *f.be);
  const TrainResult res = f.model->forward_backward(b, whole, {});
  TrainOptions opt;
  opt.label_count = res.label_count, opt.position_count = int64_t(rows) * T;
  double sum = 0;
  for (int32_t r = 0; r < rows; ++r) {
    TrainBatch one{1, T, {}, {}, {}};
    one.input_ids.assign(b.input_ids.begin() + r * T, b.input_ids.begin() + (r + 1) * T);
    one.labels.assign(b.labels.begin() + r * T, b.labels.begin() + (r + 1) * T);
    sum += f.model->forward_backward(one, parts, opt).loss;
  }
  EXPECT_NEAR(res.loss, sum, 1e-6 * (1 + std::abs(sum)));
  const auto gw = hf_tensors(cfg, whole), gp = hf_tensors(cfg, parts);
  for (size_t p = 0; p < gw.size(); ++p) {
    const float *a = gw[p].t.ptr<float>(), *c = gp[p].t.ptr<float>();
    double scale = 0, worst = 0;
    for (int64_t i = 0; i < gw[p].t.numel(); ++i)
      scale = std::max(scale, double(std::abs(a[i]))), worst = std::max(worst, double(std::abs(a[i] - c[i])));
    // fp32 sums in another order: zamba2's summed-over-uses gradients reach 1.5e-5 of their scale on the device
    // machine's CPU (other BLAS kernels); a lost or doubled row would be O(1).
    EXPECT_LE(worst, 5e-5 * scale + 1e-9) << gw[p].name;
  }
  release_weights(cfg, whole, *f.be);
  release_weights(cfg, parts, *f.be);
}

// Activation checkpointing recomputes each layer (Full) or what lies between its projections (Selective) in the
// backward, of every layer or of the first few: the same bits.
TEST_P(FamilyTrain, CheckpointingChangesNothing) {
  Fixture f(GetParam());
  NEED_FIXTURE(f);
  const ModelConfig& cfg = f.cfg();
  TrainBatch b = random_batch(cfg, 2, 29, 4);
  ModelWeights a = zeros_like_weights(cfg, *f.be);
  TrainOptions opt;
  const double la = f.model->forward_backward(b, a, opt).loss;
  const auto ga = hf_tensors(cfg, a);
  for (Checkpointing mode : {Checkpointing::Full, Checkpointing::Selective})
    for (int64_t layers : {int64_t(-1), int64_t(1), cfg.num_hidden_layers / 2}) {
      SCOPED_TRACE(std::string(mode == Checkpointing::Full ? "full" : "selective") + ", layers " + std::to_string(layers));
      ModelWeights c = zeros_like_weights(cfg, *f.be);
      opt.activation_checkpointing = mode;
      opt.checkpoint_layers = layers;
      const double lc = f.model->forward_backward(b, c, opt).loss;
      EXPECT_EQ(la, lc);
      const auto gc = hf_tensors(cfg, c);
      for (size_t p = 0; p < ga.size(); ++p)
        ASSERT_EQ(std::memcmp(ga[p].t.data, gc[p].t.data, size_t(ga[p].t.numel()) * 4), 0) << ga[p].name;
      release_weights(cfg, c, *f.be);
    }
  release_weights(cfg, a, *f.be);
}

// training_step_memory (what `bamba train --check` prints) counts exactly what a step allocates, in every mode, and
// checkpointing takes less: full <= selective <= none, full < none once there are three layers or more.
TEST_P(FamilyTrain, StepMemoryIsWhatTheStepTakes) {
  Fixture f(GetParam());
  NEED_FIXTURE(f);
  const ModelConfig& cfg = f.cfg();
  const int64_t rows = 2, seq = 29, L = cfg.num_hidden_layers;
  TrainBatch b = random_batch(cfg, rows, seq, 5);
  ModelWeights g = zeros_like_weights(cfg, *f.be);
  auto taken = [&](const TrainOptions& opt) {
    const int64_t planned = training_step_memory(cfg, rows, seq, opt, f.be->activation_dtype()).activations;
    EXPECT_EQ(f.model->forward_backward(b, g, opt).activation_bytes, planned);
    return planned;
  };
  TrainOptions opt;
  opt.loss_only = true;  // first: the model keeps a step's buffers, and a validation step reuses a training step's
  const int64_t loss_only = taken(opt);
  opt.loss_only = false;
  const int64_t off = taken(opt);
  EXPECT_LT(loss_only, off);
  int64_t full = 0, selective = 0;
  for (Checkpointing mode : {Checkpointing::Full, Checkpointing::Selective})
    for (int64_t layers : {int64_t(-1), int64_t(1), L / 2}) {
      SCOPED_TRACE(std::string(mode == Checkpointing::Full ? "full" : "selective") + ", layers " + std::to_string(layers));
      opt.activation_checkpointing = mode;
      opt.checkpoint_layers = layers;
      const int64_t n = taken(opt);
      if (layers == -1) (mode == Checkpointing::Full ? full : selective) = n;
    }
  if (L >= 2) {
    EXPECT_LE(full, selective);
    EXPECT_LE(selective, off);
  }
  if (L >= 3) {
    EXPECT_LT(full, off);
  }
  const StepMemory m = training_step_memory(cfg, rows, seq, TrainOptions{}, DType::BF16);
  // bf16 activations take half of fp32's, but for an MoE layer's F32 router logits and weights and I32 ids
  if (std::count(cfg.mlp_kinds.begin(), cfg.mlp_kinds.end(), MlpKind::MoE) == 0) {
    EXPECT_EQ(m.activations * 2, off);
  } else {
    EXPECT_GT(m.activations * 2, off);
  }
  // The step's cache holds K and V pages for every row and no Mamba state (its sequences keep none: slot -1).
  const CacheSizes cs = HybridCache::sizes_for(cfg, int32_t(rows), int32_t(seq));
  EXPECT_EQ(m.cache, int64_t(cs.n_blocks * HybridCache::bytes_per_block(cfg, cs.block_size, DType::BF16)));
  EXPECT_EQ(m.cache > 0, cfg.n_attention_layers() > 0);
  release_weights(cfg, g, *f.be);
}

// The buffers and the cache a model keeps from one step for the next (HybridModel::TrainState) change nothing:
// after steps on another batch, a validation step, and a packed batch of more sequences (a larger cache), a step
// gives a fresh model's loss and gradients bit for bit, in every checkpointing mode.
TEST_P(FamilyTrain, ReusedBuffersChangeNothing) {
  Fixture f(GetParam());
  NEED_FIXTURE(f);
  const ModelConfig& cfg = f.cfg();
  const TrainBatch x = random_batch(cfg, 2, 29, 11);
  TrainBatch y = random_batch(cfg, 2, 29, 12);
  for (Checkpointing mode : {Checkpointing::Off, Checkpointing::Full, Checkpointing::Selective})
    for (bool packed : {false, true}) {
      SCOPED_TRACE(std::string(packed ? "packed, " : "") + "mode " + std::to_string(int(mode)));
      y.seq_start = packed ? std::vector<int32_t>{0, 7, 29, 31, 44, 58} : std::vector<int32_t>{};
      TrainOptions opt, val;
      opt.activation_checkpointing = val.activation_checkpointing = mode;
      val.loss_only = true;
      ModelWeights scratch = zeros_like_weights(cfg, *f.be), kept = zeros_like_weights(cfg, *f.be);
      f.model->forward_backward(x, scratch, opt);                      // the kept buffers hold x's step
      const double lv = f.model->forward_backward(y, scratch, val).loss;  // validation in the training step's set
      const double lk = f.model->forward_backward(y, kept, opt).loss;
      Fixture once(GetParam());  // a model of its own: the loss-only set, then a training set made anew
      ModelWeights ref = zeros_like_weights(cfg, *once.be);
      EXPECT_EQ(lv, once.model->forward_backward(y, ref, val).loss);
      EXPECT_EQ(lk, once.model->forward_backward(y, ref, opt).loss);
      const auto gk = hf_tensors(cfg, kept), gr = hf_tensors(cfg, ref);
      for (size_t p = 0; p < gk.size(); ++p)
        ASSERT_EQ(std::memcmp(gk[p].t.data, gr[p].t.data, size_t(gk[p].t.numel()) * 4), 0) << gk[p].name;
      release_weights(cfg, scratch, *f.be), release_weights(cfg, kept, *f.be), release_weights(cfg, ref, *once.be);
    }
}

// AdamW's decay split by HF name: norms, biases, A_log, D and dt_bias are not decayed, the matrices (and the
// conv kernels) are; and a few AdamW steps on one batch, saved as a checkpoint, load back as a model folder with
// the fixture's tensor names and the trained model's logits bit for bit.
TEST_P(FamilyTrain, DecaySplitAndACheckpointThatLoadsBack) {
  Fixture f(GetParam());
  NEED_FIXTURE(f);
  const ModelConfig& cfg = f.cfg();
  HybridTrainable tr(*f.model);
  std::vector<ParamRef> params = tr.params();
  int decayed = 0;
  for (const ParamRef& p : params) {
    const std::string leaf = p.name.substr(p.name.rfind('.') + 1);  // "A_log", "weight", "bias", ...
    const bool norm = p.name.find("norm") != std::string::npos;  // input_layernorm, mixer.norm, norm_f, ...
    const bool no_decay = p.shape.size() < 2 || norm || leaf == "bias" || leaf == "A_log" || leaf == "D" || leaf == "dt_bias";
    if (norm || leaf == "bias" || leaf == "A_log" || leaf == "D" || leaf == "dt_bias") {
      EXPECT_FALSE(p.decay) << p.name;
    }
    EXPECT_EQ(p.decay, !no_decay) << p.name;
    decayed += p.decay;
  }
  EXPECT_GT(decayed, 0);
  // The fixture's own names (HF's); a tied lm_head is stored by some fixtures and ignored on load.
  std::set<std::string> want, got;
  for (auto& n : Checkpoint(f.dir).names())
    if (!(cfg.tie_word_embeddings && n == "lm_head.weight")) want.insert(n);
  for (const ParamRef& p : params) got.insert(p.name);
  EXPECT_EQ(got, want);

  AdamWOptions ao;
  AdamW opt(params, ao);
  TokenBatch tb;
  tb.rows = 2, tb.cols = 24;
  TrainBatch b = random_batch(cfg, 2, 24, 17);
  tb.tokens = b.input_ids, tb.labels = b.labels;
  std::vector<double> losses;
  for (int step = 0; step < 4; ++step) {
    for (ParamRef& p : params) std::fill(p.grad, p.grad + p.size, 0.f);
    losses.push_back(tr.loss_and_grad(tb, {tb.labeled(), tb.rows * tb.cols}).loss);
    if (step < 3) opt.step(params, 3e-3);
  }
  EXPECT_LT(losses.back(), losses.front() - 1e-3) << losses.front() << " -> " << losses.back();
  const std::string out = test::make_temp_dir("family-train-ckpt-" + test::fixture_param_name(GetParam()));
  fs::remove_all(out);
  std::ifstream cj(f.dir + "/config.json");
  std::stringstream text;
  text << cj.rdbuf();
  CheckpointOptions co;
  co.config_json = text.str();
  TrainerState st;
  st.step = 3;
  save_checkpoint(out, params, opt, st, co);
  std::set<std::string> saved;
  for (auto& n : Checkpoint(out).names()) saved.insert(n);
  EXPECT_EQ(saved, want);
  std::unique_ptr<Backend> be2 = make_cpu_backend();
  HybridModel back = load_model(out, *be2);
  EXPECT_EQ(back.config().model_type, cfg.model_type);
  const std::vector<int32_t> ids = {5, 9, 100, 7, 300, 2, 44, 45, 46, 1, 511, 12, 13, 14, 15, 16, 17, 18, 19};
  const std::vector<float> l1 = logits_of(*f.model, *f.be, ids), l2 = logits_of(back, *be2, ids);
  ASSERT_EQ(l1.size(), l2.size());
  EXPECT_EQ(std::memcmp(l1.data(), l2.data(), l1.size() * 4), 0) << "the saved model's logits differ";
  fs::remove_all(out);
}

// `bamba train` on the fixture: the loss falls over a few steps on repetitive data, and the checkpoint is a model
// folder of the same type that `bamba logits` loads.
TEST_P(FamilyTrain, BambaTrainLowersTheLossAndSavesALoadableModel) {
  const std::string dir = test::fixture_model_dir(GetParam());
  if (dir.empty()) GTEST_SKIP() << "fixture " << GetParam() << " not found";
  const std::string data = shard_dir("family-train-data-" + test::fixture_param_name(GetParam()));
  const std::string out = data + "/out";
  std::ofstream(data + "/run.yml") << "model: {path: " << dir << "}\n"
                                   << "data:\n  - {name: a, path: " << data << "/a.bin}\n"
                                   << "seq_len: 32\nmicro_batch_size: 2\nbatch_tokens: 128\nsteps: 6\n"
                                   << "optimizer: {lr: 0.01}\nschedule: {name: constant, warmup_steps: 1}\n"
                                   << "precision: fp32\nsave_every: 6\nkeep_last: 0\noutput: " << out << "\n";
  test::RunResult r = test::run_bamba("train " + data + "/run.yml -q");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  std::ifstream log(out + "/metrics.jsonl");
  std::vector<double> losses;
  for (std::string line; std::getline(log, line);) losses.push_back(nlohmann::json::parse(line)["loss"].get<double>());
  ASSERT_EQ(losses.size(), 6u);
  EXPECT_LT(losses.back(), losses.front() - 0.1) << "loss " << losses.front() << " -> " << losses.back();
  std::printf("[ %s ] bamba train: loss %.4f -> %.4f in 6 steps\n", GetParam().c_str(), losses.front(), losses.back());
  std::ifstream cj(out + "/checkpoint-6/config.json");
  ASSERT_TRUE(cj.good());
  EXPECT_EQ(nlohmann::json::parse(cj)["model_type"], load_config(dir).model_type);
  r = test::run_bamba("logits -m " + out + "/checkpoint-6 --ids 256,116,104,101 --out " + out + "/l.safetensors -q");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  // ... and that `bamba generate` runs, given the byte-level tokenizer the shard was written in (the fixtures
  // have none): ids 0..255 the bytes, as byte_level_default spells them.
  Tokenizer bytes = Tokenizer::byte_level_default();
  nlohmann::json vocab = nlohmann::json::object();
  for (int32_t c = 0; c < 256; ++c) vocab[std::string(bytes.id_to_token(c))] = c;
  std::ofstream(out + "/checkpoint-6/tokenizer.json")
      << nlohmann::json{{"version", "1.0"},
                        {"added_tokens", nlohmann::json::array()},
                        {"normalizer", nullptr},
                        {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}},
                        {"post_processor", nullptr},
                        {"decoder", {{"type", "ByteLevel"}}},
                        {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", nlohmann::json::array()}}}}
             .dump();
  r = test::run_bamba("generate -m " + out + "/checkpoint-6 --device cpu --prompt 'the river' -t 0 -n 8 --ignore-eos "
                      "--no-bos -q");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out.rfind("the river", 0), 0u) << r.out;
  std::printf("[ %s ] bamba generate on the checkpoint: \"%s\"\n", GetParam().c_str(), r.out.c_str());
  fs::remove_all(data);
}

// Data parallelism (`bamba train --nproc N`, docs/multi-gpu.md) for every type: 2 and 4 thread ranks, each reading
// its rows of the same global batches, give the one-rank step losses (their gradients summed in another order).
TEST_P(FamilyTrain, DataParallelRanksGiveTheOneRankLosses) {
  const std::string dir = test::fixture_model_dir(GetParam());
  if (dir.empty()) GTEST_SKIP() << "fixture " << GetParam() << " not found";
  const std::string data = shard_dir("family-train-dp-" + test::fixture_param_name(GetParam()));
  std::vector<std::vector<double>> losses;
  for (int n : {1, 2, 4}) {
    const std::string out = data + "/out" + std::to_string(n), yml = data + "/run" + std::to_string(n) + ".yml";
    std::ofstream(yml) << "model: {path: " << dir << "}\n"
                       << "data:\n  - {name: a, path: " << data << "/a.bin}\n"
                       << "seq_len: 32\nmicro_batch_size: 2\nbatch_tokens: 256\nsteps: 3\n"
                       << "optimizer: {lr: 0.01}\nschedule: {name: constant, warmup_steps: 1}\n"
                       << "precision: fp32\nsave_every: 0\nkeep_last: 0\noutput: " << out << "\n";
    test::RunResult r = test::run_bamba("train " + yml + " --nproc " + std::to_string(n) + " -q");
    ASSERT_EQ(r.exit_code, 0) << "--nproc " << n << ": " << r.err;
    std::ifstream log(out + "/metrics.jsonl");
    losses.emplace_back();
    for (std::string line; std::getline(log, line);) losses.back().push_back(nlohmann::json::parse(line)["loss"].get<double>());
    ASSERT_EQ(losses.back().size(), 3u) << "--nproc " << n;
  }
  for (size_t k = 1; k < losses.size(); ++k)
    for (size_t s = 0; s < 3; ++s)
      EXPECT_NEAR(losses[k][s], losses[0][s], 1e-5 * std::fabs(losses[0][s])) << "--nproc " << (k == 1 ? 2 : 4) << " step " << s;
  std::printf("[ %s ] bamba train --nproc 1 / 2 / 4: last loss %.7f / %.7f / %.7f\n", GetParam().c_str(), losses[0][2],
              losses[1][2], losses[2][2]);
  fs::remove_all(data);
}

// Falcon-H1 without mamba_rms_norm (generated weights: the other tests need a fixture folder on disk).
TEST(FamilyTrainGenerated, FalconWithoutMambaNormGradientMatchesFiniteDifferences) {
  Fixture f(kUngated);
  if (f.dir.empty()) GTEST_SKIP() << "fixture falcon_h1 not found";
  ASSERT_FALSE(f.cfg().mamba_gated_norm);
  check_gradient(f, kUngated);
}

INSTANTIATE_TEST_SUITE_P(Family, FamilyTrain, ::testing::ValuesIn(kTrainable),
                         [](const auto& info) { return test::fixture_param_name(info.param); });

// From scratch: `model: {config: <a relative's config.json>}` initialises fresh weights of that type and saves
// checkpoints with that config.json (not Bamba's).
TEST(FamilyTrainScratch, Mamba2FromItsConfigJson) {
  const std::string dir = test::fixture_model_dir("mamba2");
  if (dir.empty()) GTEST_SKIP() << "fixture mamba2 not found";
  const std::string data = shard_dir("family-train-scratch");
  const std::string out = data + "/out";
  std::ofstream(data + "/run.yml") << "model: {config: " << dir << "/config.json}\n"
                                   << "data:\n  - {name: a, path: " << data << "/a.bin}\n"
                                   << "seq_len: 32\nmicro_batch_size: 2\nbatch_tokens: 64\nsteps: 2\n"
                                   << "precision: fp32\nsave_every: 2\nkeep_last: 0\noutput: " << out << "\n";
  test::RunResult r = test::run_bamba("train " + data + "/run.yml -q");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  std::ifstream cj(out + "/checkpoint-2/config.json");
  ASSERT_TRUE(cj.good());
  EXPECT_EQ(nlohmann::json::parse(cj)["model_type"], "mamba2");
  r = test::run_bamba("logits -m " + out + "/checkpoint-2 --ids 256,116,104 --out " + out + "/l.safetensors -q");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  fs::remove_all(data);
}

// Nemotron-H with dense relu² MLPs, NoPE attention, MLP-only layers (generated weights).
TEST(FamilyTrainGenerated, DenseNemotronHGradientMatchesFiniteDifferences) {
  Fixture f(kDense);
  if (f.dir.empty()) GTEST_SKIP() << "fixture nemotron_h not found";
  ASSERT_EQ(f.model->training_unsupported(), "");
  check_gradient(f, kDense);
}

// Every layer kind has a backward now: nothing is refused.
TEST(FamilyTrainSupported, NoLayerKindIsRefused) {
  int ran = 0;
  for (const std::string& name : kTrainable) {
    Fixture f(name);
    if (f.dir.empty()) continue;
    ++ran;
    EXPECT_EQ(f.model->training_unsupported(), "") << name;
  }
  if (ran == 0) GTEST_SKIP() << "no family fixture found";
}
