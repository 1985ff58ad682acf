// The NCCL communicator on the GPUs this machine has (skips itself without one, saying why). On one GPU NCCL allows
// one rank per device, so there: a group of one (every collective, groups, abort, the non-blocking init of a
// launched rank) and a data-parallel trainer of one rank (the device paths of ZeRO-1: moments gathered for the checkpoint,
// parameters broadcast, model copies refreshed) against the plain trainer, bit for bit. With two GPUs or more: a
// model split over two GPUs against the fixture's logits.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>

#include "backend/communicator.h"
#include "core/error.h"
#include "fixture_runner.h"
#include "model/hybrid.h"
#include "model/tensor_parallel.h"
#include "test_util.h"
#include "train/data_parallel.h"
#include "train/hybrid_trainable.h"
#include "train/train_config.h"
#include "train/trainer.h"
#include "train/weight_init.h"

namespace bamba {
namespace {

std::string no_gpu() {
#ifdef BAMBA_HAVE_CUDA
  return "no CUDA GPU visible: the NCCL tests need one (this build has CUDA and NCCL)";
#else
  return "built without CUDA: the NCCL communicator is not compiled";
#endif
}

TEST(Nccl, AGroupOfOneRunsEveryCollective) {
  if (cuda_device_count() == 0) GTEST_SKIP() << no_gpu();
  auto be = make_backend("cuda", DType::F32);
  auto comms = make_group_communicators({be.get()}, {0});
  Communicator& c = *comms[0];
  EXPECT_EQ(c.name(), "nccl");
  EXPECT_EQ(c.size(), 1);
  std::vector<float> host(15);
  for (size_t i = 0; i < host.size(); ++i) host[i] = float(i) * 0.5f - 3.f;
  Tensor t = be->alloc(DType::F32, {3, 5});
  be->from_host_f32(t, host.data());
  c.all_reduce_sum(t);  // a sum over one rank: the same values
  c.broadcast(t, 0);
  Tensor wide = be->alloc(DType::F32, {3, 8});
  c.all_gather_cols(wide.slice_cols(0, 5), t);  // into a row-strided view
  c.group_start();
  c.all_reduce_sum(t);
  c.all_reduce_sum(t);
  c.group_end();
  std::vector<float> back(15), w(24);
  be->to_host_f32(t, back.data());
  be->to_host_f32(wide, w.data());
  EXPECT_EQ(back, host);
  for (int r = 0; r < 3; ++r)
    for (int j = 0; j < 8; ++j) EXPECT_EQ(w[size_t(r * 8 + j)], j < 5 ? host[size_t(r * 5 + j)] : 0.f) << r << "," << j;
  double v[2] = {1.5, -2};
  c.all_reduce_host(v);
  EXPECT_EQ(v[0], 1.5);
  c.barrier();
  c.abort("a test gives up");
  try {
    c.barrier();
    FAIL() << "a collective after abort did not throw";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("rank 0 of 1 failed: a test gives up"), std::string::npos) << e.what();
  }
}

// (With one rank there is no one to send the id to: this checks the launched path's non-blocking init and wait.)
TEST(Nccl, ALaunchedRankOfOneInitialises) {
  if (cuda_device_count() == 0) GTEST_SKIP() << no_gpu();
  auto be = make_backend("cuda", DType::F32);
  LaunchEnv env;
  env.world_size = 1;
  env.master_port = 29731;
  auto c = make_launch_communicator(env, 0, be->native_stream());
  double v[1] = {4};
  c->all_reduce_host(v);
  EXPECT_EQ(v[0], 4);
}

// One optimizer step path through DataParallel on the GPU equals the plain trainer's, bit for bit (one rank: the
// sums are identities, so any difference is a bug in the device paths).
TEST(Nccl, ADataParallelTrainerOfOneRankEqualsThePlainOne) {
  if (cuda_device_count() == 0) GTEST_SKIP() << no_gpu();
  const ModelConfig mc = dummy_config();
  auto run = [&](bool dp_on, const std::string& out) {
    std::filesystem::remove_all(out);
    TrainConfig cfg = parse_train_config(cat("seq_len: 16\nmicro_batch_size: 2\nbatch_tokens: 64\nsteps: 2\n"
                                             "optimizer: {lr: 0.01}\nsave_every: 0\noutput: ", out, "\n"),
                                         "nccl.yml");
    CheckpointOptions ck;
    ck.config_json = config_to_json(mc);
    auto be = make_backend("cuda", DType::BF16);
    HybridModel model(mc, init_weights(mc, *be, 3), *be);
    HybridTrainable tr(model);
    struct Stream : BatchSource {
      int64_t pos = 0;
      TokenBatch next(int64_t rows, int64_t T) override {
        TokenBatch b;
        b.rows = rows, b.cols = T;
        for (int64_t k = 0; k < rows * T; ++k, ++pos) b.tokens.push_back(int((pos * 7) % 250)), b.labels.push_back(int((pos * 7) % 250));
        return b;
      }
      nlohmann::json state() const override { return {{"pos", pos}}; }
      void restore(const nlohmann::json& s) override { pos = s["pos"]; }
    } data;
    auto comms = make_group_communicators({be.get()}, {0});
    DataParallel dp(*comms[0]);
    TrainerHooks h;
    h.progress = false;
    if (dp_on) h.data_parallel = &dp;
    Trainer trainer(cfg, tr, data, ck, h);
    trainer.run();
    std::vector<std::vector<float>> out_params;
    for (const auto& p : tr.params()) {
      std::vector<float> v(p.size);
      tr.param_device()->master_to_host(p, v.data());
      out_params.push_back(v);
    }
    return out_params;
  };
  const std::string base = test::make_temp_dir("nccl-dp");
  EXPECT_TRUE(run(true, base + "/dp") == run(false, base + "/plain"));
}

TEST(Nccl, AModelSplitOverTwoGpusGivesTheFixtureLogits) {
  if (cuda_device_count() < 2) GTEST_SKIP() << (cuda_device_count() == 0 ? no_gpu() : "one GPU: tensor parallelism over NCCL needs two");
  const std::string dir = test::model_dir("bamba-tiny-a");
  auto host = make_cpu_backend();
  HybridModel full = load_model(dir, *host);
  auto be0 = make_rank_backend("cuda", 0, DType::F32);
  std::vector<std::unique_ptr<Backend>> others;
  others.push_back(make_rank_backend("cuda", 1, DType::F32));
  auto comms = make_group_communicators({be0.get(), others[0].get()}, {0, 1});
  auto model = make_tensor_parallel_model(full.config(), full.weights(), *host, *be0, std::move(others), std::move(comms));
  const ModelConfig& c = model->config();
  const size_t V = size_t(c.vocab_size);
  for (auto& e : test::load_fixture_sequences(dir)) {
    const int32_t T = int32_t(e.ids.size());
    HybridCache cache(c, *be0, HybridCache::sizes_for(c, 1, T, 16));
    Workspace ws(c, *be0, T, T);
    SeqCache sc;
    ASSERT_TRUE(cache.reserve(sc, T));
    StepBatch b;
    b.add(e.ids, 0, sc.slot, sc.blocks, true);
    std::vector<float> all(size_t(T) * V);
    be0->to_host_f32(model->forward(b, cache, ws), all.data());
    for (size_t k = 0; k < e.logit_positions.size(); ++k) {
      std::vector<float> got(all.begin() + e.logit_positions[k] * int64_t(V), all.begin() + (e.logit_positions[k] + 1) * int64_t(V));
      std::vector<float> ref(e.logits.begin() + int64_t(k * V), e.logits.begin() + int64_t((k + 1) * V));
      EXPECT_LE(test::rel_l2(got, ref), 1e-3) << "logits row " << e.logit_positions[k];
    }
  }
}

}  // namespace
}  // namespace bamba
