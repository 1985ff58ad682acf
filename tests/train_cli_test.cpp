// `bamba train` as a user runs it: help, --check's plan, and errors as one line with exit code 1.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "test_util.h"

using namespace bamba::test;
namespace fs = std::filesystem;

namespace {

class TrainCli : public ::testing::Test {
 protected:
  void SetUp() override {
    tmp_ = make_temp_dir("train-cli");
    fs::create_directories(tmp_ + "/shards");
  }
  void TearDown() override {
    if (!HasFailure()) fs::remove_all(tmp_);
  }
  RunResult train(const std::string& yaml, const std::string& extra = "") {
    std::ofstream(tmp_ + "/t.yml") << yaml;
    return run_bamba("train '" + tmp_ + "/t.yml' " + extra);
  }
  std::string valid() const {
    return "model: {path: " + model_dir("bamba-tiny-a") + "}\ndata:\n  - {name: web, path: " + tmp_ +
           "/shards}\nseq_len: 512\nmicro_batch_size: 2\nbatch_tokens: 4096\ntokens: 1e6\noutput: " + tmp_ + "/out\n";
  }
  std::string tmp_;
};

TEST_F(TrainCli, HelpNamesTheOptions) {
  RunResult r = run_bamba("train --help");
  EXPECT_EQ(r.exit_code, 0);
  for (const char* s : {"--resume", "--check", "--peak-tflops", "--device", "--bench", "Ctrl-C", "docs/training.md"})
    EXPECT_NE(r.out.find(s), std::string::npos) << s;
}

TEST_F(TrainCli, CheckPrintsThePlan) {
  // The MiB that --check prints for a micro-batch's activations (the tiny model's are MiB, not GiB)
  auto activations_mib = [](const std::string& err) {
    const size_t at = err.find("activations ");
    EXPECT_NE(at, std::string::npos) << err;
    EXPECT_NE(err.find(" MiB (", at), std::string::npos) << err;
    return at == std::string::npos ? -1.0 : std::stod(err.substr(at + 12));
  };
  RunResult r = train(valid(), "--check");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("4096 tokens = 8 rows of 512, 4 micro-batches of 2 rows"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("245 steps"), std::string::npos) << r.err;  // ceil(1e6 / 4096)
  EXPECT_NE(r.err.find("(18 bytes a parameter)\n"), std::string::npos) << r.err;  // bf16-mixed
  EXPECT_NE(r.err.find("a micro-batch of 1024 tokens: activations "), std::string::npos) << r.err;
  EXPECT_NE(r.err.find(" (fp32, no checkpointing) + its cache "), std::string::npos) << r.err;  // --device cpu
  const double none = activations_mib(r.err);
  EXPECT_GT(none, 1.0);
  EXPECT_FALSE(fs::exists(tmp_ + "/out"));                         // nothing written
  r = train(valid() + "precision: bf16-memory\nactivation_checkpointing: selective\nactivation_checkpointing_layers: 2\n",
            "--check");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("(12 bytes a parameter)"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("(fp32, selective checkpointing of the first 2 of 4 layers)"), std::string::npos) << r.err;
  const double selective = activations_mib(r.err);
  EXPECT_LT(selective, none);
  EXPECT_GT(selective, 0.5 * none);  // half the layers keep every activation
  r = train(valid() + "activation_checkpointing: true\n", "--check --device cuda");  // the plan makes no backend
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("(bf16, full checkpointing of every layer)"), std::string::npos) << r.err;
  EXPECT_LT(activations_mib(r.err), 0.5 * selective);
  // --gpu-memory: whether it fits a GPU of that size, and if not what checkpointing would take
  r = train(valid(), "--check --gpu-memory 1");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("(bf16, no checkpointing)"), std::string::npos) << r.err;  // planned for a GPU
  EXPECT_NE(r.err.find(" of the GPU (1 GiB) for the op scratch and the CUDA context"), std::string::npos) << r.err;
  r = train(valid(), "--check --gpu-memory 0.005");  // 5.12 MiB: less than the parameter state
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("does not fit the GPU (5.12 MiB); checkpointing every layer: selective "), std::string::npos)
      << r.err;
  EXPECT_NE(r.err.find(", full "), std::string::npos) << r.err;
  r = train(valid(), "--check --nproc 4");  // ZeRO-1: the moments (8 of the 18 bytes) split over the ranks
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("(12 bytes a parameter, the moments split over 4 ranks)"), std::string::npos) << r.err;
}

TEST_F(TrainCli, ErrorsAreOneLineWithExitCode1) {
  auto expect_error = [&](const RunResult& r, const std::string& what) {
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_EQ(r.err.rfind("error: ", 0), 0u) << r.err;
    EXPECT_NE(r.err.find(what), std::string::npos) << r.err;
    EXPECT_EQ(r.err.find('\n'), r.err.size() - 1) << r.err;
  };
  expect_error(train("seq_len: 512\nlearnin_rate: 1\n"), "t.yml:2: learnin_rate: unknown field");
  expect_error(train("model: {path: " + tmp_ + "/none}\ndata: [{path: " + tmp_ + "}]\n"), "no such model folder");
  expect_error(train("data:\n  - {name: web, path: " + tmp_ + "/missing}\n", "--check"),
               "data[0] (web): " + tmp_ + "/missing does not exist");
  expect_error(train("seq_len: 64\n", "--check"), "data: no datasets");
  expect_error(train(valid(), "--resume " + tmp_ + "/nowhere"), "neither a checkpoint folder");
  // A data folder with no token shards stops the run before anything is written.
  expect_error(train(valid(), "-q"), "no *.bin token shards");
  EXPECT_FALSE(fs::exists(tmp_ + "/out"));
}

// --bench needs no config: timed steps of the tiny preset on the CPU (with the per-op table), and a config-less
// run without --bench is an error naming what is missing.
TEST_F(TrainCli, BenchRunsWithoutAConfig) {
  RunResult r = run_bamba("train --bench --preset tiny --seq-len 32 --bench-steps 1 --profile --activation-checkpointing");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("train bench: "), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("| ssd_backward |"), std::string::npos) << r.out;
  EXPECT_NE(r.err.find("activation checkpointing"), std::string::npos) << r.err;
  r = run_bamba("train --bench --preset tiny --seq-len 32 --bench-steps 1 --activation-checkpointing=selective "
                "--peak-tflops 1");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("selective activation checkpointing"), std::string::npos) << r.err;
  EXPECT_NE(r.out.find("(HFU at 6."), std::string::npos) << r.out;  // 6N + 2 × the MLPs' up projections
  r = run_bamba("train --bench --preset tiny --activation-checkpointing=some");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("some not in {full,selective}"), std::string::npos) << r.err;
  r = run_bamba("train --bench --preset tiny --checkpoint-layers 1");  // without checkpointing: would do nothing
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("--checkpoint-layers: only with --activation-checkpointing"), std::string::npos) << r.err;
  r = run_bamba("train");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("a config file is required (or --bench)"), std::string::npos) << r.err;
  r = run_bamba("train --bench --preset huge");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("--preset huge"), std::string::npos) << r.err;
}

// --batch-tokens runs a step as several micro-batches and one optimizer step, as training does: the per-op table
// shows 4× the forward/backward calls of a one-micro-batch step; the step's loss
// (the mean over its tokens) is that of the single micro-batch, since the bench repeats its tokens.
TEST_F(TrainCli, BenchBatchTokensAccumulatesMicroBatches) {
  auto calls = [](const std::string& out, const std::string& op) {
    const size_t at = out.find("| " + op + " | ");
    EXPECT_NE(at, std::string::npos) << op << " not in\n" << out;
    return at == std::string::npos ? -1.0 : std::stod(out.substr(at + op.size() + 5));
  };
  auto first_loss = [](const std::string& err) {
    const size_t at = err.find("loss ");
    return at == std::string::npos ? -1.0 : std::stod(err.substr(at + 5));
  };
  const std::string base = "train --bench --preset tiny --seq-len 32 --bench-steps 1 --profile";
  RunResult one = run_bamba(base), four = run_bamba(base + " --batch-tokens 128");
  ASSERT_EQ(one.exit_code, 0) << one.err;
  ASSERT_EQ(four.exit_code, 0) << four.err;
  EXPECT_NE(four.err.find("4 micro-batches of 1 × 32 tokens per step"), std::string::npos) << four.err;
  EXPECT_DOUBLE_EQ(calls(four.out, "ssd_backward"), 4 * calls(one.out, "ssd_backward"));
  EXPECT_NEAR(first_loss(four.err), first_loss(one.err), 1e-4);
  RunResult bad = run_bamba(base + " --batch-tokens 100");
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_NE(bad.err.find("--batch-tokens 100 is not a multiple of micro_batch_size × seq_len = 32"), std::string::npos)
      << bad.err;
}

}  // namespace
