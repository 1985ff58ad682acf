// bamba train end to end on the CPU: the mixture of token-shard datasets (achieved proportions, resumable state),
// the real model's backward under the trainer (the loss falls; 6 steps straight equal 3 + resume + 3, byte for
// byte), and checkpoints that the inference commands load.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include <cmath>
#include <cstring>

#include "core/error.h"
#include "data/token_shard.h"
#include "io/safetensors.h"
#include "model/hybrid.h"
#include "test_util.h"
#include "train/adamw.h"
#include "train/hybrid_trainable.h"
#include "train/mixture_source.h"

namespace bamba {
namespace {

namespace fs = std::filesystem;

// Two datasets of the byte vocabulary (the tiny preset's 258 tokens; 256 = BOS as separator): "a" repeats a short
// phrase, "b" counts; a few documents each, two shards for "a".
std::string make_data(const std::string& tag) {
  const std::string dir = test::make_temp_dir(tag);
  fs::create_directories(dir + "/a");
  for (int shard = 0; shard < 2; ++shard) {
    TokenShardWriter w(dir + "/a/shard-0000" + std::to_string(shard) + ".bin", 258, 256);
    for (int d = 0; d < 5; ++d) {
      std::vector<int32_t> doc;
      for (char c : std::string("the river flows north; the bird sings. ")) doc.push_back(static_cast<unsigned char>(c));
      w.add_document(doc);
    }
    w.finish();
  }
  TokenShardWriter w(dir + "/b.bin", 258, 256);
  for (int d = 0; d < 7; ++d) {
    std::vector<int32_t> doc;
    for (int i = 0; i < 37; ++i) doc.push_back('0' + (i + d) % 10);
    w.add_document(doc);
  }
  w.finish();
  return dir;
}

TEST(MixtureSource, FollowsTheWeightsAndResumes) {
  const std::string dir = make_data("mixture");
  std::vector<DatasetSpec> ds = {{"a", dir + "/a", 3}, {"b", dir + "/b.bin", 1}};
  MixtureSource src(ds, 258);
  for (int step = 0; step < 25; ++step) src.next(4, 16);
  auto drawn = src.drawn();
  EXPECT_EQ(drawn[0].second, 75 * 16);  // 100 rows: the most-behind dataset is drawn next, so exactly 3:1
  EXPECT_EQ(drawn[1].second, 25 * 16);
  const nlohmann::json st = src.state();
  const TokenBatch after = src.next(3, 16);
  MixtureSource again(ds, 258);
  again.restore(st);
  const TokenBatch resumed = again.next(3, 16);
  EXPECT_EQ(resumed.tokens, after.tokens);
  EXPECT_EQ(resumed.labels, resumed.tokens);
  // Wrong state or shards are clear errors.
  nlohmann::json bad = st;
  bad[0]["name"] = "c";
  EXPECT_THROW(again.restore(bad), Error);
  EXPECT_THROW(MixtureSource({{"x", dir + "/nothing", 1}}, 258), Error);
  EXPECT_THROW(MixtureSource(ds, 100), Error);  // the shards' vocabulary exceeds the model's
}

std::string read_bytes(const std::string& p) {
  std::ifstream f(p, std::ios::binary);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

TEST(TrainEndToEnd, TinyModelLearnsAndResumesExactly) {
  const std::string data = make_data("train_data");
  const std::string out = test::make_temp_dir("train_out");
  fs::remove_all(out);
  const std::string cfg = data + "/run.yml";
  std::ofstream(cfg) << "model: {preset: tiny}\n"
                     << "data:\n  - {name: a, path: " << data << "/a, weight: 3}\n  - {name: b, path: " << data
                     << "/b.bin, weight: 1}\n"
                     << "seq_len: 32\nmicro_batch_size: 2\nbatch_tokens: 128\nsteps: 6\n"
                     << "optimizer: {lr: 0.01}\nschedule: {name: constant, warmup_steps: 1}\n"
                     << "precision: fp32\nsave_every: 3\nkeep_last: 0\noutput: " << out << "\n";
  test::RunResult r = test::run_bamba("train " + cfg + " -q");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  ASSERT_TRUE(fs::exists(out + "/checkpoint-3/trainer_state.json"));
  ASSERT_TRUE(fs::exists(out + "/checkpoint-6/config.json"));
  // The loss falls over six steps on this repetitive data.
  std::ifstream log(out + "/metrics.jsonl");
  std::vector<double> losses;
  for (std::string line; std::getline(log, line);) losses.push_back(nlohmann::json::parse(line)["loss"].get<double>());
  ASSERT_EQ(losses.size(), 6u);
  {  // metrics.jsonl logs the achieved mixture: after 6 steps of 4 rows, 18 rows of "a" and 6 of "b" (3:1)
    std::ifstream again(out + "/metrics.jsonl");
    std::string last;
    for (std::string line; std::getline(again, line);) last = line;
    const nlohmann::json data = nlohmann::json::parse(last)["data"];
    ASSERT_EQ(data.size(), 2u) << last;
    EXPECT_EQ(data[0]["drawn"].get<int64_t>(), 18 * 32);
    EXPECT_EQ(data[1]["drawn"].get<int64_t>(), 6 * 32);
  }
  EXPECT_LT(losses.back(), losses.front() - 0.1) << "loss " << losses.front() << " -> " << losses.back();
  const std::string straight = read_bytes(out + "/checkpoint-6/model-00001-of-00001.safetensors");
  ASSERT_FALSE(straight.empty());
  // Resume from step 3: steps 4-6 are redone and give the same bytes.
  r = test::run_bamba("train " + cfg + " -q --resume " + out + "/checkpoint-3");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(read_bytes(out + "/checkpoint-6/model-00001-of-00001.safetensors"), straight);
  // The checkpoint is a model folder the inference commands load.
  r = test::run_bamba("logits -m " + out + "/checkpoint-6 --ids 256,116,104,101 --out " + out + "/l.safetensors -q");
  EXPECT_EQ(r.exit_code, 0) << r.err;
}

// The product path — HybridTrainable's gradients, clip_grad_norm and train/adamw's AdamW — against PyTorch's three
// steps in tests/data/train (gen_grad_fixtures.py: torch.optim.AdamW lr 1e-3, betas 0.9/0.95, eps 1e-8, decay 0.1
// on tensors of rank >= 2, clip_grad_norm_ 1.0; HF's mean cross-entropy over the labels != -100).
TEST(TrainEndToEnd, TrainersAdamWStepsEqualPyTorch) {
  for (const std::string name : {"bamba-tiny-a", "bamba-tiny-b"}) {
    const std::string ref_path = std::string(BAMBA_SOURCE_DIR) + "/tests/data/train/" + name + "/train_expected.safetensors";
    if (!fs::exists(ref_path)) GTEST_SKIP() << "training reference " << ref_path << " is missing";
    SafetensorsFile ref(ref_path);
    auto f32 = [&](const std::string& n) {
      const TensorInfo* t = ref.find(n);
      EXPECT_NE(t, nullptr) << n;
      std::vector<float> v(size_t(t->numel()));
      std::memcpy(v.data(), t->data, t->nbytes);
      return v;
    };
    auto i32 = [&](const std::string& n) {
      const TensorInfo* t = ref.find(n);
      std::vector<int32_t> v(size_t(t->numel()));
      std::memcpy(v.data(), t->data, t->nbytes);
      return v;
    };
    std::unique_ptr<Backend> be = make_cpu_backend();
    HybridModel model = load_model(test::model_dir(name), *be);
    HybridTrainable trainable(model, model.config().z_loss_coefficient);
    const std::vector<ParamRef> params = trainable.params();
    AdamW opt(params, AdamWOptions{});  // defaults are the reference's betas, eps and decay
    TokenBatch b;
    b.rows = ref.find("batch.input_ids")->shape[0];
    b.cols = ref.find("batch.input_ids")->shape[1];
    b.tokens = i32("batch.input_ids");
    b.labels = i32("batch.labels");
    for (int step = 0; step <= 3; ++step) {
      for (const ParamRef& p : params) std::fill_n(p.grad, p.size, 0.f);
      const LossResult r = trainable.loss_and_grad(b, LossDivisors{b.labeled(), b.rows * b.cols});
      const double want = f32("step" + std::to_string(step) + ".loss")[0];
      EXPECT_NEAR(r.loss, want, 1e-4 * (1 + std::abs(want))) << name << " loss before step " << step;
      if (step == 3) break;
      clip_grad_norm(params, 1.0);
      opt.step(params, 1e-3);
    }
    for (const ParamRef& p : params) {
      EXPECT_EQ(p.decay, p.shape.size() >= 2) << p.name;  // the reference's rule
      const std::vector<float> w = f32("param." + p.name);
      ASSERT_EQ(w.size(), p.size) << p.name;
      double err = 0, scale = 0;
      for (size_t k = 0; k < p.size; ++k) err = std::max(err, double(std::abs(p.value[k] - w[k]))), scale = std::max(scale, double(std::abs(w[k])));
      EXPECT_LE(err, 1e-4 * (1 + scale)) << name << " " << p.name;
    }
  }
}

}  // namespace
}  // namespace bamba
