// The training loop with toy Trainables: a bigram softmax model with an analytic gradient (learning, gradient
// accumulation, resume bit for bit, NaN stop, checkpoint layout, pruning) and a stand-in over a fixture
// model's real tensors (the saved folder loads in `bamba logits` and gives the fixture's logits).
#include "train/trainer.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/dtype.h"
#include "core/error.h"
#include "core/hash_uniform.h"
#include "core/mapped_file.h"
#include "io/checkpoint.h"
#include "io/safetensors.h"
#include "test_util.h"
#include "train/checkpoint.h"
#include "train/lr_schedule.h"

namespace bamba {
namespace {

namespace fs = std::filesystem;

// p(next | prev) = softmax(W[:, prev] + b): W [V, V] (decayed), b [V] (not).
class Bigram : public Trainable {
 public:
  explicit Bigram(int V, uint64_t seed = 1) : V_(V), W_(size_t(V) * V), b_(V), gW_(W_.size()), gb_(V) {
    for (size_t i = 0; i < W_.size(); ++i) W_[i] = hash_uniform(seed, i, -0.1f, 0.1f);
  }
  std::vector<ParamRef> params() override {
    return {{"model.bigram.weight", W_.data(), gW_.data(), W_.size(), {V_, V_}, true},
            {"model.bigram.bias", b_.data(), gb_.data(), b_.size(), {V_}, false}};
  }
  // HF's convention: the prediction from tokens[t - 1] is scored against labels[t].
  LossResult loss_and_grad(const TokenBatch& batch, const LossDivisors& div) override {
    ++calls_;
    LossResult r;
    const double scale = 1.0 / double(div.labels);
    std::vector<double> p(static_cast<size_t>(V_));
    for (int64_t row = 0; row < batch.rows; ++row)
      for (int64_t t = 1; t < batch.cols; ++t) {
        const size_t i = size_t(row * batch.cols + t);
        const int y = batch.labels[i], x = batch.tokens[i - 1];
        if (y == -100) continue;
        double mx = -INFINITY, z = 0;
        for (int k = 0; k < V_; ++k) mx = std::max(mx, p[k] = double(W_[size_t(k) * V_ + x]) + b_[k]);
        for (int k = 0; k < V_; ++k) z += p[k] = std::exp(p[k] - mx);
        r.loss += (std::log(z) - std::log(p[y])) * scale;
        ++r.labeled;
        for (int k = 0; k < V_; ++k) {
          const float d = float(scale * (p[k] / z - (k == y)));
          gW_[size_t(k) * V_ + x] += d;
          gb_[k] += d;
        }
      }
    if (calls_ == nan_loss_at_call) r.loss = NAN;
    if (calls_ == inf_grad_at_call) gb_[0] = INFINITY;
    return r;
  }
  std::vector<float> W_bits() const { return W_; }
  std::vector<float> b_bits() const { return b_; }
  int nan_loss_at_call = -1, inf_grad_at_call = -1;

 private:
  int64_t V_;
  std::vector<float> W_, b_, gW_, gb_;
  int calls_ = 0;
};

// A stream of tokens with a learnable pattern (mostly t → t+3 mod V); labels = tokens (HF's convention) except
// position 1 of every row, which is -100 (so 14 of a row's 16 positions are scored).
class PatternSource : public BatchSource {
 public:
  explicit PatternSource(int V) : V_(V) {}
  int token(int64_t k) const { return int((k * 3 + int64_t(splitmix64(uint64_t(k)) % 5 == 0)) % V_); }
  TokenBatch next(int64_t rows, int64_t T) override {
    TokenBatch b;
    b.rows = rows, b.cols = T;
    for (int64_t r = 0; r < rows; ++r, pos_ += T)
      for (int64_t t = 0; t < T; ++t) {
        b.tokens.push_back(token(pos_ + t));
        b.labels.push_back(t == 1 ? -100 : token(pos_ + t));
      }
    return b;
  }
  nlohmann::json state() const override { return {{"position", pos_}}; }
  void restore(const nlohmann::json& s) override { pos_ = s.at("position").get<int64_t>(); }
  int64_t pos_ = 0;

 private:
  int V_;
};

TrainConfig toy_config(const std::string& out, int64_t steps) {
  TrainConfig c = parse_train_config(cat("seq_len: 16\nmicro_batch_size: 2\nbatch_tokens: 64\nsteps: ", steps,
                                         "\noptimizer: {lr: 0.05}\nschedule: {warmup_steps: 2, final_lr_ratio: 0.2}\n"
                                         "save_every: 0\noutput: ",
                                         out, "\n"),
                                     "toy.yml");
  return c;
}

CheckpointOptions toy_ckpt() {
  CheckpointOptions o;
  o.config_json = "{\"model_type\": \"bigram\", \"torch_dtype\": \"float32\"}";
  return o;
}

TrainerHooks quiet() {
  TrainerHooks h;
  h.progress = false;
  return h;
}

std::vector<nlohmann::json> read_jsonl(const std::string& path) {
  std::vector<nlohmann::json> out;
  std::istringstream in(read_text_file(path));
  for (std::string line; std::getline(in, line);) out.push_back(nlohmann::json::parse(line));
  return out;
}

TEST(Trainer, LearnsAndLogsEveryStep) {
  const std::string out = test::make_temp_dir("trainer-learn");
  TrainConfig cfg = toy_config(out, 40);
  Bigram model(8);
  PatternSource data(8);
  Trainer tr(cfg, model, data, toy_ckpt(), quiet());
  TrainRunResult r = tr.run();
  EXPECT_EQ(r.step, 40);
  EXPECT_FALSE(r.interrupted);
  auto lines = read_jsonl(out + "/metrics.jsonl");
  ASSERT_EQ(lines.size(), 40u);
  EXPECT_NEAR(lines[0]["loss"].get<double>(), std::log(8.0), 0.05);  // near-uniform start
  EXPECT_LT(r.loss, 0.6 * std::log(8.0));                            // the pattern is learned
  const LrSchedule s = cfg.lr_schedule();
  for (size_t i = 0; i < lines.size(); ++i) {
    EXPECT_EQ(lines[i]["step"].get<int64_t>(), int64_t(i) + 1);
    EXPECT_DOUBLE_EQ(lines[i]["lr"].get<double>(), 0.05 * lr_multiplier(s, int64_t(i)));
    EXPECT_EQ(lines[i]["tokens"].get<int64_t>(), 64 * (int64_t(i) + 1));
  }
  EXPECT_EQ(data.pos_, 40 * 64);  // two micro-batches of 2 × 16 tokens per step
  const std::string svg = read_text_file(out + "/metrics.svg");
  EXPECT_EQ(svg.rfind("<svg", 0), 0u);
  EXPECT_NE(svg.find("<polyline"), std::string::npos);
  EXPECT_TRUE(fs::exists(out + "/checkpoint-40/trainer_state.json"));  // the final save
  fs::remove_all(out);
}

TEST(Trainer, EvalEveryNStepsIsLogged) {
  const std::string out = test::make_temp_dir("trainer-eval");
  TrainConfig cfg = toy_config(out, 6);
  cfg.eval_every = 4;
  cfg.save_every = 0;
  Bigram model(8);
  PatternSource data(8);
  TrainerHooks h = quiet();
  int evals = 0;
  h.eval = [&] { return 1.5 + ++evals; };
  Trainer(cfg, model, data, toy_ckpt(), h).run();
  EXPECT_EQ(evals, 1);
  auto lines = read_jsonl(out + "/metrics.jsonl");
  ASSERT_EQ(lines.size(), 6u);
  EXPECT_FALSE(lines[2].contains("eval_loss"));
  EXPECT_DOUBLE_EQ(lines[3]["eval_loss"].get<double>(), 2.5);
  fs::remove_all(out);
}

// Records the divisors it is given.
class DivisorSpy : public Bigram {
 public:
  DivisorSpy() : Bigram(8) {}
  LossResult loss_and_grad(const TokenBatch& b, const LossDivisors& div) override {
    seen.push_back(div);
    return Bigram::loss_and_grad(b, div);
  }
  std::vector<LossDivisors> seen;
};

TEST(Trainer, LossDivisorsAreTheWholeStepsCounts) {
  TokenBatch b{.rows = 2, .cols = 3, .tokens = {1, 2, 3, 4, 5, 6}, .labels = {-100, 2, -100, 4, 5, 6}, .seq_start = {}};
  EXPECT_EQ(b.labeled(), 3);  // position 0 of a row is never scored, whatever its label
  EXPECT_EQ(b.labeled_sequences(), 2);
  {  // packed with resets: the first position of every sequence is unscored, and a sequence may score nothing
    TokenBatch p = b;
    p.seq_start = {0, 1, 3, 4, 6};  // [0] | [1, 2] | [3] | [4, 5]
    p.labels = {5, 2, 3, 4, 5, 6};
    EXPECT_EQ(p.labeled(), 2);            // positions 2 and 5 (1 and 4 start their sequences)
    EXPECT_EQ(p.labeled_sequences(), 2);  // [1, 2] and [4, 5]
    p.seq_start = {0, 2, 6};              // a sequence across the row boundary at 3
    EXPECT_THROW(p.labeled(), Error);
  }
  double loss[2];
  for (int sum = 0; sum < 2; ++sum) {
    const std::string out = test::make_temp_dir("trainer-div");
    TrainConfig cfg = toy_config(out, 2);
    cfg.steps = 1;  // one step: the same start in both runs
    cfg.loss_sum = sum;
    DivisorSpy model;
    PatternSource data(8);
    loss[sum] = Trainer(cfg, model, data, toy_ckpt(), quiet()).run().loss;
    ASSERT_EQ(model.seen.size(), 2u);  // two micro-batches of 2 rows × 16
    for (const auto& d : model.seen) {
      EXPECT_EQ(d.labels, sum ? 4 : 2 * 2 * 14);  // sum: the step's 4 sequences (rows) with a scored token
      EXPECT_EQ(d.positions, 64);
    }
    fs::remove_all(out);
  }
  EXPECT_NEAR(loss[0], loss[1], 1e-12);  // the logged loss is per scored token in both reductions
  EXPECT_NEAR(loss[0], std::log(8.0), 0.05);
}

TEST(Trainer, AccumulatedMicroBatchesEqualOneBigBatch) {
  // Rows reach the model in the same order either way, so the gradients (and the updates) are bit-identical.
  const std::string out = test::make_temp_dir("trainer-accum");
  TrainConfig big = toy_config(out + "/a", 3), small = toy_config(out + "/b", 3);
  big.micro_batch_size = 4;    // one micro-batch of 4 rows
  small.micro_batch_size = 1;  // four of 1 row
  ASSERT_EQ(big.accumulation_steps(), 1);
  ASSERT_EQ(small.accumulation_steps(), 4);
  Bigram m1(8), m2(8);
  PatternSource d1(8), d2(8);
  Trainer(big, m1, d1, toy_ckpt(), quiet()).run();
  Trainer(small, m2, d2, toy_ckpt(), quiet()).run();
  EXPECT_EQ(m1.W_bits(), m2.W_bits());
  EXPECT_EQ(m1.b_bits(), m2.b_bits());
  fs::remove_all(out);
}

void expect_resume_is_exact(Precision precision, const std::string& save_dtype) {
  const std::string out = test::make_temp_dir("trainer-resume");
  auto config = [&](const std::string& dir) {
    TrainConfig c = toy_config(dir, 8);
    c.precision = precision;
    c.save_dtype = save_dtype;
    return c;
  };
  // A: 8 steps straight.
  TrainConfig ca = config(out + "/a");
  Bigram ma(8);
  PatternSource da(8);
  Trainer ta(ca, ma, da, toy_ckpt(), quiet());
  ta.run();

  // B: stopped (as by Ctrl-C) after step 4, which saves; C: a fresh process resumes from B's folder.
  TrainConfig cb = config(out + "/b");
  Bigram mb(8, /*seed=*/99);  // different start: everything must come from the checkpoint
  PatternSource db(8);
  int polls = 0;
  TrainerHooks stop = quiet();
  stop.stop_requested = [&] { return ++polls == 4; };
  Bigram mb0(8);
  PatternSource db0(8);
  TrainRunResult rb = Trainer(cb, mb0, db0, toy_ckpt(), stop).run();
  ASSERT_TRUE(rb.interrupted);
  ASSERT_EQ(rb.step, 4);
  ASSERT_EQ(rb.last_checkpoint, out + "/b/checkpoint-4");
  Trainer tc(cb, mb, db, toy_ckpt(), quiet());
  tc.resume(out + "/b");  // the output folder: its newest checkpoint
  EXPECT_EQ(tc.step(), 4);
  EXPECT_EQ(db.pos_, 4 * 64);
  TrainRunResult rc = tc.run();
  EXPECT_EQ(rc.step, 8);

  EXPECT_EQ(ma.W_bits(), mb.W_bits());
  EXPECT_EQ(ma.b_bits(), mb.b_bits());
  for (size_t i = 0; i < 2; ++i) {
    EXPECT_EQ(
        0, std::memcmp(ta.optimizer().exp_avg_data(i), tc.optimizer().exp_avg_data(i), ta.optimizer().moment_bytes(i)));
    EXPECT_EQ(0, std::memcmp(ta.optimizer().exp_avg_sq_data(i), tc.optimizer().exp_avg_sq_data(i),
                             ta.optimizer().moment_bytes(i)));
  }
  auto la = read_jsonl(out + "/a/metrics.jsonl"), lb = read_jsonl(out + "/b/metrics.jsonl");
  ASSERT_EQ(la.size(), 8u);
  ASSERT_EQ(lb.size(), 8u);
  for (size_t i = 0; i < 8; ++i) {
    EXPECT_EQ(la[i]["loss"].get<double>(), lb[i]["loss"].get<double>()) << i;
    EXPECT_EQ(la[i]["grad_norm"].get<double>(), lb[i]["grad_norm"].get<double>()) << i;
  }
  fs::remove_all(out);
}

TEST(Trainer, ResumeIsBitExact) { expect_resume_is_exact(Precision::Bf16Mixed, "float32"); }
TEST(Trainer, ResumeIsBitExactWithBf16MomentsAndBf16Weights) {
  expect_resume_is_exact(Precision::Bf16Memory, "bfloat16");  // master.safetensors carries the fp32 weights
}

TEST(Trainer, ResumingFromAnEarlierCheckpointRedoesTheBranch) {
  const std::string out = test::make_temp_dir("trainer-branch");
  TrainConfig cfg = toy_config(out, 6);
  cfg.save_every = 2;
  cfg.keep_last = 0;
  Bigram m1(8);
  PatternSource d1(8);
  Trainer(cfg, m1, d1, toy_ckpt(), quiet()).run();
  EXPECT_EQ(checkpoint_steps(out), (std::vector<int64_t>{2, 4, 6}));

  // A fresh run into the same folder would mix two runs.
  Bigram m2(8);
  PatternSource d2(8);
  try {
    Trainer(cfg, m2, d2, toy_ckpt(), quiet()).run();
    ADD_FAILURE() << "started a fresh run over existing checkpoints";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("already holds checkpoints (up to checkpoint-6)"), std::string::npos)
        << e.what();
  }

  // Back to step 2, saving every 3 now: checkpoint-4 and -6 of the old branch go at the first save, -6 is redone.
  cfg.save_every = 3;
  Trainer t3(cfg, m2, d2, toy_ckpt(), quiet());
  t3.resume(out + "/checkpoint-2");
  t3.run();
  EXPECT_EQ(checkpoint_steps(out), (std::vector<int64_t>{2, 3, 6}));
  EXPECT_EQ(m1.W_bits(), m2.W_bits());  // the same steps again, deterministically
  auto lines = read_jsonl(out + "/metrics.jsonl");
  ASSERT_EQ(lines.size(), 6u);
  for (size_t i = 0; i < 6; ++i) EXPECT_EQ(lines[i]["step"].get<int64_t>(), int64_t(i) + 1);
  fs::remove_all(out);
}

TEST(Trainer, NonFiniteLossOrGradientStopsAndKeepsTheLastGoodCheckpoint) {
  for (int which = 0; which < 2; ++which) {
    const std::string out = test::make_temp_dir("trainer-nan");
    TrainConfig cfg = toy_config(out, 10);
    cfg.save_every = 2;
    Bigram model(8);
    PatternSource data(8);
    // Two micro-batches per step: call 9 is the first of step 5.
    (which == 0 ? model.nan_loss_at_call : model.inf_grad_at_call) = 9;
    Trainer tr(cfg, model, data, toy_ckpt(), quiet());
    std::string msg;
    try {
      tr.run();
    } catch (const Error& e) {
      msg = e.what();
    }
    EXPECT_NE(msg.find(which == 0 ? "step 5: the loss is nan" : "step 5: the gradient norm is inf"), std::string::npos)
        << msg;
    EXPECT_NE(msg.find("the last good checkpoint is " + out + "/checkpoint-4"), std::string::npos) << msg;
    EXPECT_TRUE(fs::exists(out + "/checkpoint-4/trainer_state.json"));
    EXPECT_FALSE(fs::exists(out + "/checkpoint-6"));
    EXPECT_EQ(read_jsonl(out + "/metrics.jsonl").size(), 4u);
    fs::remove_all(out);
  }
}

TEST(Trainer, CheckpointLayoutAndKeepLast) {
  const std::string out = test::make_temp_dir("trainer-layout");
  TrainConfig cfg = toy_config(out, 6);
  cfg.save_every = 2;
  cfg.keep_last = 2;
  Bigram model(8);
  PatternSource data(8);
  CheckpointOptions co = toy_ckpt();
  co.max_shard_bytes = 200;  // W (256 B) and b (32 B) in separate shards
  Trainer(cfg, model, data, co, quiet()).run();

  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(out)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (std::vector<std::string>{"checkpoint-4", "checkpoint-6", "metrics.jsonl", "metrics.svg"}));

  const std::string ck = out + "/checkpoint-6";
  for (const char* f : {"config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
                        "model.safetensors.index.json", "optimizer.safetensors", "trainer_state.json"})
    EXPECT_TRUE(fs::exists(ck + "/" + f)) << f;
  EXPECT_FALSE(fs::exists(ck + "/master.safetensors"));  // fp32 weights are the master weights
  Checkpoint hf(ck);
  EXPECT_EQ(hf.get("model.bigram.weight").shape, (std::vector<int64_t>{8, 8}));
  EXPECT_EQ(hf.get("model.bigram.bias").dtype, DType::F32);
  std::vector<float> w(64);
  std::memcpy(w.data(), hf.get("model.bigram.weight").data, 256);
  EXPECT_EQ(w, model.W_bits());

  auto st = nlohmann::json::parse(read_text_file(ck + "/trainer_state.json"));
  EXPECT_EQ(st["format"], "bamba-trainer-state");
  EXPECT_EQ(st["version"], 1);
  EXPECT_EQ(st["step"], 6);
  EXPECT_EQ(st["tokens_seen"], 6 * 64);
  EXPECT_EQ(st["optimizer"]["steps_taken"], 6);
  EXPECT_EQ(st["optimizer"]["moments_dtype"], "float32");
  EXPECT_EQ(st["data"]["position"], 6 * 64);
  EXPECT_EQ(st["master_weights"], "model");
  SafetensorsFile opt(ck + "/optimizer.safetensors");
  ASSERT_NE(opt.find("model.bigram.weight.exp_avg_sq"), nullptr);
  EXPECT_EQ(opt.find("model.bigram.bias.exp_avg")->shape, (std::vector<int64_t>{8}));
  auto cj = nlohmann::json::parse(read_text_file(ck + "/config.json"));
  EXPECT_EQ(cj["torch_dtype"], "float32");
  fs::remove_all(out);
}

TEST(Checkpoint, RefusesToOverwriteAndRejectsAMismatchedModel) {
  const std::string out = test::make_temp_dir("trainer-ckpt");
  Bigram model(8);
  auto ps = model.params();
  AdamW opt(ps, AdamWOptions{});
  TrainerState st;
  st.step = 1;
  save_checkpoint(out + "/c", ps, opt, st, toy_ckpt());
  EXPECT_THROW(save_checkpoint(out + "/c", ps, opt, st, toy_ckpt()), Error);
  Bigram other(4);
  auto ops = other.params();
  AdamW oopt(ops, AdamWOptions{});
  TrainerState ost;
  try {
    load_checkpoint(out + "/c", ops, oopt, ost);
    ADD_FAILURE() << "loaded a checkpoint of another shape";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("\"model.bigram.weight\" is F32 [8, 8], expected F32"), std::string::npos)
        << e.what();
  }
  AdamW bf(ps, AdamWOptions{.bf16_moments = true});
  EXPECT_THROW(load_checkpoint(out + "/c", ps, bf, ost), Error);  // moments dtype differs
  EXPECT_THROW(resolve_checkpoint(out + "/nothing"), Error);
  fs::remove_all(out);
}

// Every tensor of a fixture model as an fp32 parameter, with loss ½Σθ² per labeled token: the point is the
// names, shapes and config that the saved folder carries.
class FixtureParams : public Trainable {
 public:
  explicit FixtureParams(const std::string& dir) {
    Checkpoint ck(dir);
    for (const auto& name : ck.names()) {
      const TensorInfo& t = ck.get(name);
      names_.push_back(name);
      shapes_.push_back(t.shape);
      values_.emplace_back(size_t(t.numel()));
      convert_to_f32(t.data, t.dtype, values_.back().size(), values_.back().data());
      grads_.emplace_back(values_.back().size());
    }
  }
  std::vector<ParamRef> params() override {
    std::vector<ParamRef> out;
    for (size_t i = 0; i < names_.size(); ++i)
      out.push_back({names_[i], values_[i].data(), grads_[i].data(), values_[i].size(), shapes_[i],
                     default_weight_decay(names_[i], shapes_[i])});
    return out;
  }
  LossResult loss_and_grad(const TokenBatch& b, const LossDivisors& div) override {
    LossResult r;
    r.labeled = b.labeled();
    const double w = double(r.labeled) / double(div.labels);
    for (size_t i = 0; i < values_.size(); ++i)
      for (size_t j = 0; j < values_[i].size(); ++j) {
        r.loss += 0.5 * double(values_[i][j]) * values_[i][j] * w;
        grads_[i][j] += float(w) * values_[i][j];
      }
    return r;
  }

 private:
  std::vector<std::string> names_;
  std::vector<std::vector<int64_t>> shapes_;
  std::vector<std::vector<float>> values_, grads_;
};

TEST(Trainer, CheckpointIsAModelFolderThatBambaLoads) {
  const std::string fixture = test::model_dir("bamba-tiny-a");
  if (!fs::exists(fixture + "/config.json")) GTEST_SKIP() << "fixture bamba-tiny-a missing at " << fixture;
  const std::string out = test::make_temp_dir("trainer-hf");
  TrainConfig cfg = toy_config(out, 2);
  cfg.lr = 0;  // weights unchanged: the saved folder must give the fixture's logits exactly
  FixtureParams model(fixture);
  PatternSource data(8);
  CheckpointOptions co;
  co.config_json = read_text_file(fixture + "/config.json");
  co.tokenizer_dir = fixture;
  co.max_shard_bytes = 64 << 10;
  Trainer(cfg, model, data, co, quiet()).run();
  const std::string ck = out + "/checkpoint-2";
  EXPECT_TRUE(fs::exists(ck + "/generation_config.json"));  // copied with the tokenizer files
  EXPECT_GT(Checkpoint(ck).files().size(), 1u);             // sharded at 64 KB
  auto a = test::run_bamba("logits -q -m " + fixture + " --ids 1,5,9,200 -o " + out + "/a.safetensors");
  auto b = test::run_bamba("logits -q -m " + ck + " --ids 1,5,9,200 -o " + out + "/b.safetensors");
  ASSERT_EQ(a.exit_code, 0) << a.err;
  ASSERT_EQ(b.exit_code, 0) << b.err;
  SafetensorsFile fa(out + "/a.safetensors"), fb(out + "/b.safetensors");
  const TensorInfo *la = fa.find("logits"), *lb = fb.find("logits");
  ASSERT_TRUE(la && lb);
  ASSERT_EQ(la->nbytes, lb->nbytes);
  EXPECT_EQ(0, std::memcmp(la->data, lb->data, la->nbytes));

  // In bf16 the folder still loads; the fp32 master copy comes along for resuming.
  cfg.save_dtype = "bfloat16";
  cfg.output = out + "/bf16";
  co.save_dtype = "bfloat16";
  FixtureParams model2(fixture);
  PatternSource data2(8);
  Trainer(cfg, model2, data2, co, quiet()).run();
  EXPECT_TRUE(fs::exists(out + "/bf16/checkpoint-2/master.safetensors"));
  auto c = test::run_bamba("logits -q -m " + out + "/bf16/checkpoint-2 --ids 1,5,9,200 -o " + out + "/c.safetensors");
  ASSERT_EQ(c.exit_code, 0) << c.err;
  EXPECT_EQ(nlohmann::json::parse(read_text_file(out + "/bf16/checkpoint-2/config.json"))["torch_dtype"], "bfloat16");
  fs::remove_all(out);
}

}  // namespace
}  // namespace bamba
