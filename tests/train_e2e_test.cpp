// bamba train end to end on the CPU: the mixture of token-shard datasets (achieved proportions, resumable state),
// the real model's backward under the trainer (the loss falls; 6 steps straight equal 3 + resume + 3, byte for
// byte), and checkpoints that the inference commands load.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "data/token_shard.h"
#include "test_util.h"
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

}  // namespace
}  // namespace bamba
