// Data-parallel training with the thread communicator: 2 and 4 ranks, each reading its rows of the same global
// micro-batches, train the tiny Bamba like one rank does on the whole global batch — the same loss at every
// step and the same parameters after 3 AdamW steps, to fp32 reduction-order tolerance (the ranks' gradients are
// summed in another order than one backward accumulates them) — with ZeRO-1 sharded moments gathered into the
// same checkpoint. Also: bucketed gradient sums and parameter ownership.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <sstream>
#include <thread>

#include "backend/thread_communicator.h"
#include "core/error.h"
#include "core/hash_uniform.h"
#include "core/mapped_file.h"
#include "model/hybrid.h"
#include "test_util.h"
#include "train/checkpoint.h"
#include "train/data_parallel.h"
#include "train/hybrid_trainable.h"
#include "train/train_config.h"
#include "train/trainer.h"
#include "train/weight_init.h"

namespace bamba {
namespace {

// One global stream of rows; with `world` ranks each call is a global micro-batch of rows × world rows and rank r
// gets rows [r·rows, (r+1)·rows) — the contract of MixtureSource's rank/world.
class GlobalStream : public BatchSource {
 public:
  GlobalStream(int rank, int world, int V) : rank_(rank), world_(world), V_(V) {}
  TokenBatch next(int64_t rows, int64_t T) override {
    TokenBatch b;
    b.rows = rows, b.cols = T;
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t g = row_ + rank_ * rows + r;  // the global row
      for (int64_t t = 0; t < T; ++t) {
        const int tok = int(splitmix64(uint64_t(g * 1000 + t)) % uint64_t(V_));
        b.tokens.push_back(tok);
        b.labels.push_back((g + t) % 7 == 3 ? -100 : tok);  // rows differ in their scored counts
      }
    }
    row_ += rows * world_;
    return b;
  }
  nlohmann::json state() const override { return {{"row", row_}}; }
  void restore(const nlohmann::json& s) override { row_ = s.at("row").get<int64_t>(); }

 private:
  int64_t rank_, world_, row_ = 0;
  int V_;
};

struct DpRun {
  std::vector<double> losses;             // per step (metrics.jsonl)
  std::vector<std::vector<float>> params; // after the last step
  std::string checkpoint;
};

// `world` thread ranks training the same fresh tiny Bamba for 3 steps of 8 rows × 16 tokens (2 micro-batches).
DpRun train(int world, const std::string& out) {
  std::filesystem::remove_all(out);
  const ModelConfig mc = dummy_config();
  TrainConfig cfg = parse_train_config(cat("seq_len: 16\nmicro_batch_size: ", 4 / world, "\nbatch_tokens: 128\nsteps: 3\n"
                                           "optimizer: {lr: 0.01, eps: 1.0e-6, weight_decay: 0.1, grad_clip: 0.5}\nschedule: {warmup_steps: 1}\n"
                                           "save_every: 0\noutput: ", out, "\n"),
                                       "dp.yml");
  CheckpointOptions ck;
  ck.config_json = config_to_json(mc);
  auto comms = make_thread_communicators(world);
  DpRun res;
  std::vector<std::exception_ptr> errs(static_cast<size_t>(world));
  std::vector<std::vector<std::vector<float>>> per_rank(static_cast<size_t>(world));
  std::vector<std::thread> ts;
  for (int r = 0; r < world; ++r)
    ts.emplace_back([&, r] {
      try {
        auto be = make_cpu_backend();
        HybridModel model(mc, init_weights(mc, *be, 7), *be);
        HybridTrainable tr(model);
        GlobalStream data(r, world, int(mc.vocab_size));
        DataParallel dp(*comms[size_t(r)], 4096);  // small buckets: several per step
        TrainerHooks h;
        h.progress = false;
        h.data_parallel = &dp;
        Trainer trainer(cfg, tr, data, ck, h);
        TrainRunResult rr = trainer.run();
        if (r == 0) res.checkpoint = rr.last_checkpoint;
        for (const auto& p : tr.params()) per_rank[size_t(r)].emplace_back(p.value, p.value + p.size);
      } catch (const std::exception& e) {
        comms[size_t(r)]->abort(e.what());
        errs[size_t(r)] = std::current_exception();
      }
    });
  for (auto& t : ts) t.join();
  for (auto& e : errs)
    if (e) std::rethrow_exception(e);
  for (int r = 1; r < world; ++r)  // the owners' broadcasts leave every replica with the same bits
    EXPECT_TRUE(per_rank[size_t(r)] == per_rank[0]) << "rank " << r << " of " << world << " holds other weights";
  res.params = per_rank[0];
  std::istringstream in(read_text_file(out + "/metrics.jsonl"));
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) res.losses.push_back(nlohmann::json::parse(line)["loss"].get<double>());
  return res;
}

TEST(DataParallel, RanksTrainLikeOneRankOnTheSameGlobalBatch) {
  const std::string base = test::make_temp_dir("dp-train");
  const DpRun one = train(1, base + "/w1");
  ASSERT_EQ(one.losses.size(), 3u);
  for (int world : {2, 4}) {
    const DpRun many = train(world, base + "/w" + std::to_string(world));
    ASSERT_EQ(many.losses.size(), 3u);
    for (size_t s = 0; s < 3; ++s)
      EXPECT_NEAR(many.losses[s], one.losses[s], 1e-5 * std::fabs(one.losses[s])) << world << " ranks, step " << s + 1;
    ASSERT_EQ(many.params.size(), one.params.size());
    // Adam divides each gradient element by its own magnitude, so an element whose gradient is mostly cancellation
    // (|g| ~ 1e-10) can take a different-sized step when the ranks add the same terms in another order; eps = 1e-6
    // bounds such a step to lr · |g| / eps. Every weight must then agree to 1e-3 of the 3 · lr it can move.
    double worst = 0;
    for (size_t i = 0; i < one.params.size(); ++i)
      for (size_t j = 0; j < one.params[i].size(); ++j)
        worst = std::max(worst, std::fabs(double(many.params[i][j]) - one.params[i][j]));
    EXPECT_LT(worst, 3e-5) << world << " ranks";
    // The checkpoint (written by rank 0 from the gathered ZeRO-1 shards) holds the same moments.
    ASSERT_FALSE(many.checkpoint.empty());
    const auto a = read_text_file(one.checkpoint + "/trainer_state.json");
    const auto b = read_text_file(many.checkpoint + "/trainer_state.json");
    EXPECT_EQ(nlohmann::json::parse(a)["step"], nlohmann::json::parse(b)["step"]);
    std::printf("[data parallel] %d ranks vs 1: step losses %.6f %.6f %.6f vs %.6f %.6f %.6f, worst parameter "
                "difference %.2e (absolute; lr 0.01)\n",
                world, many.losses[0], many.losses[1], many.losses[2], one.losses[0], one.losses[1], one.losses[2], worst);
  }
}

TEST(DataParallel, OwnershipIsContiguousBalancedAndCoversEveryParameter) {
  std::vector<float> dummy(1000);
  std::vector<ParamRef> ps;
  for (size_t n : {100u, 10u, 300u, 5u, 5u, 200u, 80u, 300u}) ps.push_back({"p", dummy.data(), dummy.data(), n, {int64_t(n)}});
  for (int world : {1, 2, 3, 4, 8, 16}) {
    auto comms = make_thread_communicators(world);
    size_t next = 0;
    for (int r = 0; r < world; ++r) {
      DataParallel dp(*comms[size_t(r)]);
      auto [first, last] = dp.owned(ps);
      if (first == last) continue;  // a rank may own nothing when there are more ranks than parameters
      EXPECT_EQ(first, next) << world << " ranks, rank " << r;
      for (size_t i = first; i < last; ++i) EXPECT_EQ(dp.owner(ps, i), r);
      next = last;
    }
    EXPECT_EQ(next, ps.size()) << world << " ranks";
  }
}

TEST(DataParallel, BucketedGradientSumsEqualThePlainSum) {
  const int world = 3;
  auto comms = make_thread_communicators(world);
  std::vector<std::vector<std::vector<float>>> grads(world);
  std::vector<std::thread> ts;
  for (int r = 0; r < world; ++r) {
    for (size_t n : {7u, 1000u, 3u, 64u}) {
      std::vector<float> g(n);
      for (size_t j = 0; j < n; ++j) g[j] = float(r + 1) * 0.5f + float(j);
      grads[size_t(r)].push_back(g);
    }
  }
  for (int r = 0; r < world; ++r)
    ts.emplace_back([&, r] {
      std::vector<ParamRef> ps;
      for (auto& g : grads[size_t(r)]) ps.push_back({"p", g.data(), g.data(), g.size(), {int64_t(g.size())}});
      DataParallel(*comms[size_t(r)], 300).all_reduce_gradients(ps);  // 300 bytes: several buckets, one oversized
    });
  for (auto& t : ts) t.join();
  for (int r = 0; r < world; ++r)
    for (auto& g : grads[size_t(r)])
      for (size_t j = 0; j < g.size(); ++j) ASSERT_EQ(g[j], 0.5f + 1.f + 1.5f + 3.f * float(j));
}

}  // namespace
}  // namespace bamba

namespace bamba {
namespace {

// The launchers' variables: torchrun's first, then srun's and Open MPI's; bad values are errors naming the variable.
TEST(LaunchEnv, ReadsTorchrunSlurmAndMpiVariables) {
  const char* names[] = {"WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_STEP_NUM_TASKS",
                         "SLURM_PROCID", "SLURM_LOCALID", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK",
                         "OMPI_COMM_WORLD_LOCAL_RANK", "PMI_SIZE", "PMI_RANK", "MPI_LOCALRANKID"};
  std::vector<std::pair<std::string, std::string>> saved;
  for (const char* n : names)
    if (const char* v = std::getenv(n)) saved.emplace_back(n, v);
  auto clear = [&] {
    for (const char* n : names) unsetenv(n);
  };
  clear();
  LaunchEnv e = launch_env();
  EXPECT_EQ(e.world_size, 1);
  EXPECT_FALSE(e.launched);
  setenv("WORLD_SIZE", "8", 1), setenv("RANK", "5", 1), setenv("LOCAL_RANK", "1", 1);
  setenv("MASTER_ADDR", "node0", 1), setenv("MASTER_PORT", "1234", 1);
  e = launch_env();
  EXPECT_TRUE(e.launched);
  EXPECT_EQ(e.world_size, 8);
  EXPECT_EQ(e.rank, 5);
  EXPECT_EQ(e.local_rank, 1);
  EXPECT_EQ(e.master_addr, "node0");
  EXPECT_EQ(e.master_port, 1234);
  clear();
  setenv("SLURM_STEP_NUM_TASKS", "16", 1), setenv("SLURM_PROCID", "9", 1), setenv("SLURM_LOCALID", "1", 1);
  e = launch_env();
  EXPECT_EQ(e.world_size, 16);
  EXPECT_EQ(e.rank, 9);
  EXPECT_EQ(e.local_rank, 1);
  clear();
  setenv("OMPI_COMM_WORLD_SIZE", "4", 1), setenv("OMPI_COMM_WORLD_RANK", "3", 1);
  e = launch_env();
  EXPECT_EQ(e.world_size, 4);
  EXPECT_EQ(e.rank, 3);
  setenv("OMPI_COMM_WORLD_RANK", "4", 1);
  EXPECT_THROW(launch_env(), Error);  // rank 4 of 4
  clear();
  setenv("WORLD_SIZE", "two", 1);
  try {
    launch_env();
    ADD_FAILURE() << "no error";
  } catch (const Error& err) {
    EXPECT_NE(std::string(err.what()).find("WORLD_SIZE=\"two\""), std::string::npos) << err.what();
  }
  clear();
  for (auto& [n, v] : saved) setenv(n.c_str(), v.c_str(), 1);
}

}  // namespace
}  // namespace bamba
