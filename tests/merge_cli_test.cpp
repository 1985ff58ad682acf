// `bamba merge` as a user runs it: help, a merge end to end, warnings, and errors as one line and exit code 1.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>

#include "core/error.h"
#include "io/checkpoint.h"
#include "io/safetensors.h"
#include "fixture_runner.h"
#include "merge_test_util.h"
#include "test_util.h"

using namespace bamba;
using namespace bamba::test;
namespace fs = std::filesystem;

namespace {

class MergeCli : public ::testing::Test {
 protected:
  void SetUp() override { tmp_ = make_temp_dir("merge-cli"); }
  void TearDown() override {
    if (!HasFailure()) fs::remove_all(tmp_);
  }
  // Writes the recipe and runs `bamba merge RECIPE --out OUT EXTRA`.
  RunResult merge(const std::string& yaml, const std::string& out, const std::string& extra = "") {
    write_text(tmp_ + "/recipe.yml", yaml);
    return run_bamba("merge '" + tmp_ + "/recipe.yml' --out '" + out + "' " + extra);
  }
  std::string self_merge_yaml() const {
    return cat("merge_method: linear\nmodels:\n  - model: ", a_, "\n    parameters: {weight: 0.5}\n  - model: ", a_,
               "\n    parameters: {weight: 0.5}\n");
  }
  std::string tmp_;
  const std::string a_ = model_dir("bamba-tiny-a");
};

}  // namespace

// Bamba's relatives merge like Bamba (tensors by name, whatever their rank: MoE expert stacks are 3-D) and the
// merged folder loads and computes what the input does.
TEST_F(MergeCli, MergesEveryFamilyModelType) {
  for (const char* name : {"granitemoehybrid-moe", "nemotron_h", "zamba2", "falcon_h1", "mamba2", "llama3"}) {
    const std::string in_dir = fixture_model_dir(name), out = tmp_ + "/" + name;
    if (in_dir.empty()) GTEST_SKIP() << "fixture " << name << " not found";
    RunResult r = merge(cat("merge_method: linear\nmodels:\n  - model: ", in_dir, "\n    parameters: {weight: 0.5}\n",
                            "  - model: ", in_dir, "\n    parameters: {weight: 0.5}\n"),
                        out);
    ASSERT_EQ(r.exit_code, 0) << name << ": " << r.err;
    Checkpoint in(in_dir), m(out);
    ASSERT_EQ(m.names(), in.names()) << name;
    for (const auto& n : in.names()) EXPECT_EQ(read_f32(m, n), read_f32(in, n)) << name << " " << n;
    RunResult a = run_bamba("logits --device cpu -m '" + out + "' --ids 5,6,7,8,9 --out '" + tmp_ + "/a.st'");
    RunResult b = run_bamba("logits --device cpu -m '" + in_dir + "' --ids 5,6,7,8,9 --out '" + tmp_ + "/b.st'");
    ASSERT_EQ(a.exit_code, 0) << name << ": " << a.err;
    ASSERT_EQ(b.exit_code, 0) << name << ": " << b.err;
    SafetensorsFile la(tmp_ + "/a.st"), lb(tmp_ + "/b.st");
    EXPECT_EQ(read_f32(*la.find("logits")), read_f32(*lb.find("logits"))) << name;
  }
}

TEST_F(MergeCli, HelpListsTheOptions) {
  RunResult r = run_bamba("merge --help");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  for (const char* opt : {"--out", "--max-shard-size", "--force", "--random-seed", "docs/merge.md"})
    EXPECT_NE(r.out.find(opt), std::string::npos) << opt;
}

TEST_F(MergeCli, MergesEndToEnd) {
  const std::string out = tmp_ + "/merged";
  RunResult r = merge(self_merge_yaml(), out, "--max-shard-size 200KB");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("merged 47 tensors"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("5 shards"), std::string::npos) << r.err;
  Checkpoint in(a_), m(out);
  ASSERT_EQ(m.names(), in.names());
  for (const auto& n : in.names()) EXPECT_EQ(read_f32(m, n), read_f32(in, n)) << n;  // 0.5x + 0.5x is exact
}

TEST_F(MergeCli, WarnsAboutSettingsItIgnores) {
  RunResult r = merge(self_merge_yaml() + "chat_template: chatml\n", tmp_ + "/merged");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("warning: " + tmp_ + "/recipe.yml:7: chat_template: not used by bamba merge"), std::string::npos)
      << r.err;
}

TEST_F(MergeCli, ErrorsAreOneLineAndExitCodeOne) {
  RunResult r = merge("merge_method: linear\nmodels:\n  - model: /nonexistent/model\n    parameters: {weight: 1}\n",
                      tmp_ + "/merged");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.err.rfind("error: ", 0), 0u) << r.err;
  EXPECT_NE(r.err.find("\"/nonexistent/model\" is not a local folder"), std::string::npos) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;

  r = run_bamba("merge '" + tmp_ + "/no-such-recipe.yml' --out '" + tmp_ + "/merged'");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("error: " + tmp_ + "/no-such-recipe.yml: cannot open"), std::string::npos) << r.err;

  r = merge(self_merge_yaml(), tmp_ + "/merged", "--max-shard-size 5parsecs");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("unknown unit \"parsecs\""), std::string::npos) << r.err;

  r = run_bamba("merge '" + tmp_ + "/recipe.yml'");  // --out is required
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("--out"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(tmp_ + "/merged"));
}

TEST_F(MergeCli, ReplacesAnExistingOutputOnlyWithForce) {
  const std::string out = tmp_ + "/merged";
  ASSERT_EQ(merge(self_merge_yaml(), out).exit_code, 0);
  RunResult r = merge(self_merge_yaml(), out);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("pass --force to replace it"), std::string::npos) << r.err;
  r = merge(self_merge_yaml(), out, "--force");
  EXPECT_EQ(r.exit_code, 0) << r.err;
}

// A merged fixture loads and runs in `bamba logits` and reproduces the fixture's reference logits (a model merged
// with itself is the model).
TEST_F(MergeCli, MergedModelRunsInLogits) {
  const std::string out = tmp_ + "/merged";
  ASSERT_EQ(merge(self_merge_yaml(), out).exit_code, 0);
  SafetensorsFile expected(a_ + "/expected.safetensors");
  const TensorInfo* ids = expected.find("seq1.input_ids");
  const TensorInfo* ref = expected.find("seq1.logits");
  ASSERT_TRUE(ids && ref);
  std::string tokens;
  for (int64_t i = 0; i < ids->numel(); ++i) {
    int32_t v;
    std::memcpy(&v, ids->data + 4 * i, 4);
    if (i) tokens += ',';
    tokens += std::to_string(v);
  }
  RunResult r = run_bamba("logits -q --device cpu --model '" + out + "' --ids " + tokens + " --out '" + tmp_ + "/logits.safetensors'");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  SafetensorsFile got(tmp_ + "/logits.safetensors");
  const TensorInfo* logits = got.find("logits");
  ASSERT_TRUE(logits) << "no tensor \"logits\" in the output of bamba logits";
  auto x = read_f32(*logits), y = read_f32(*ref);
  ASSERT_EQ(x.size(), y.size());
  for (size_t j = 0; j < x.size(); ++j) ASSERT_NEAR(x[j], y[j], 1e-3 * (1 + std::fabs(y[j]))) << j;
}
