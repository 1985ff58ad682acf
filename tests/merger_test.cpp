// Whole merges through the library: fixture models and small folders made here go in, a Hugging Face folder comes
// out, and is read back with Checkpoint and compared with the formulas tensor by tensor.
#include "merge/merger.h"

#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/config_json.h"
#include "merge/merge_config.h"
#include "merge/merge_methods.h"
#include "io/sharded_writer.h"
#include "merge_test_util.h"
#include "test_util.h"

using namespace bamba;
using namespace bamba::test;
namespace fs = std::filesystem;

namespace {

class Merger : public ::testing::Test {
 protected:
  void SetUp() override { tmp_ = make_temp_dir("merge"); }
  void TearDown() override {
    if (!HasFailure()) fs::remove_all(tmp_);
  }

  MergeSummary merge(const std::string& yaml, const std::string& out, MergeOptions opt = {}) {
    opt.out_dir = out;
    return run_merge(parse_merge_config(yaml, "recipe.yml"), opt);
  }
  std::string merge_error(const std::string& yaml, const std::string& out, MergeOptions opt = {}) {
    try {
      merge(yaml, out, opt);
    } catch (const Error& e) {
      return e.what();
    }
    return "(no error)";
  }
  // Folders in tmp_ other than the ones named: a failed merge must leave none behind.
  std::vector<std::string> leftovers(std::initializer_list<std::string> known) {
    std::vector<std::string> out;
    for (const auto& e : fs::directory_iterator(tmp_)) {
      std::string n = e.path().filename().string();
      if (std::find(known.begin(), known.end(), n) == known.end()) out.push_back(n);
    }
    return out;
  }

  std::string tmp_;
  const std::string a_ = model_dir("bamba-tiny-a");
};

// |x - y| <= tol * |y| for every element, with the first offender named.
void expect_close(const std::vector<float>& x, const std::vector<float>& y, double tol, const std::string& what) {
  ASSERT_EQ(x.size(), y.size()) << what;
  for (size_t j = 0; j < x.size(); ++j)
    ASSERT_NEAR(x[j], y[j], tol * std::fabs(y[j]) + 1e-30) << what << " [" << j << "]";
}

std::string slurp(const std::string& p) { return read_text_file(p); }

}  // namespace

TEST_F(Merger, LinearModelWithItselfComesBackInFp32) {
  // The same folder twice, weights summing to 1, no normalization: every tensor within 1e-6 of the original.
  const std::string out = tmp_ + "/out";
  MergeSummary s = merge(cat("merge_method: linear\nmodels:\n  - model: ", a_,
                             "\n    parameters: {weight: 0.3}\n"
                             "  - model: ",
                             a_, "\n    parameters: {weight: 0.7}\nparameters: {normalize: false}\n"),
                         out);
  Checkpoint in(a_), merged(out);
  EXPECT_EQ(merged.names(), in.names());
  EXPECT_EQ(s.tensors, in.names().size());
  for (const auto& n : in.names()) {
    EXPECT_EQ(merged.get(n).dtype, DType::F32) << n;
    EXPECT_EQ(merged.get(n).shape, in.get(n).shape) << n;
    expect_close(read_f32(merged, n), read_f32(in, n), 1e-6, n);
  }
  // A Hugging Face folder: index with total_size and a complete weight_map, config and generation config copied,
  // the recipe kept.
  auto idx = nlohmann::json::parse(slurp(out + "/model.safetensors.index.json"));
  EXPECT_EQ(idx["metadata"]["total_size"].get<uint64_t>(), s.bytes);
  EXPECT_EQ(idx["weight_map"].size(), in.names().size());
  EXPECT_EQ(idx["weight_map"]["lm_head.weight"], "model-00001-of-00001.safetensors");
  EXPECT_EQ(slurp(out + "/config.json"), slurp(a_ + "/config.json"));
  EXPECT_EQ(slurp(out + "/generation_config.json"), slurp(a_ + "/generation_config.json"));
  EXPECT_NE(slurp(out + "/mergekit_config.yml").find("merge_method: linear"), std::string::npos);
  SafetensorsFile shard(out + "/model-00001-of-00001.safetensors");
  EXPECT_EQ(shard.metadata().at("format"), "pt");
  EXPECT_EQ(leftovers({"out"}), std::vector<std::string>{});
}

TEST_F(Merger, LinearNormalizeWithUnnormalizedWeights) {
  // weights 1 and 3 normalized are 0.25 and 0.75; against a perturbed copy, each tensor is the weighted mean.
  const std::string b = tmp_ + "/b", out = tmp_ + "/out";
  write_transformed(a_, b, [](const std::string& n, std::vector<float>& v) { perturb(n, v, 0.1f, 1); });
  merge(cat("merge_method: linear\nmodels:\n  - model: ", a_, "\n    parameters: {weight: 1}\n  - model: ", b,
            "\n    parameters: {weight: 3}\n"),
        out);
  Checkpoint ca(a_), cb(b), m(out);
  for (const auto& n : ca.names()) {
    auto x = read_f32(ca, n), y = read_f32(cb, n), got = read_f32(m, n);
    std::vector<float> want(x.size());
    for (size_t j = 0; j < x.size(); ++j) want[j] = float((1.0 * x[j] + 3.0 * y[j]) / 4.0);
    for (size_t j = 0; j < x.size(); ++j) ASSERT_NEAR(got[j], want[j], 1e-6 * (std::fabs(x[j]) + std::fabs(y[j]))) << n;
  }
}

TEST_F(Merger, Bf16ModelWithItselfIsBitExactAndKeepsItsTokenizer) {
  const std::string e2e = model_dir("bamba-tiny-e2e"), out = tmp_ + "/out";
  merge(cat("merge_method: linear\nmodels:\n  - model: ", e2e, "\n    parameters: {weight: 0.5}\n  - model: ", e2e,
            "\n    parameters: {weight: 0.5}\n"),
        out);
  Checkpoint in(e2e), m(out);
  for (const auto& n : in.names()) {
    const TensorInfo &x = in.get(n), &y = m.get(n);
    ASSERT_EQ(y.dtype, DType::BF16) << n;
    ASSERT_EQ(std::string_view(reinterpret_cast<const char*>(y.data), y.nbytes),
              std::string_view(reinterpret_cast<const char*>(x.data), x.nbytes))
        << n;
  }
  for (const char* f : {"tokenizer.json", "tokenizer_config.json", "config.json", "generation_config.json"})
    EXPECT_EQ(slurp(out + "/" + f), slurp(e2e + "/" + f)) << f;
}

TEST_F(Merger, OutDtypeConvertsTensorsAndConfig) {
  const std::string out = tmp_ + "/out";
  merge(cat("merge_method: linear\nmodels:\n  - model: ", a_, "\n    parameters: {weight: 1}\nout_dtype: bfloat16\n"),
        out);
  Checkpoint in(a_), m(out);
  for (const auto& n : in.names()) {
    ASSERT_EQ(m.get(n).dtype, DType::BF16);
    auto x = read_f32(in, n), y = read_f32(m, n);
    for (size_t j = 0; j < x.size(); ++j) ASSERT_EQ(y[j], bf16_to_f32(f32_to_bf16(x[j]))) << n;
  }
  auto cfg = nlohmann::json::parse(slurp(out + "/config.json"));
  EXPECT_EQ(cfg["torch_dtype"], "bfloat16");
  EXPECT_EQ(cfg["hidden_size"], 64);
}

TEST_F(Merger, ShardsAtTheSizeLimit) {
  const std::string out = tmp_ + "/out";
  MergeOptions opt;
  opt.max_shard_bytes = parse_byte_size("100KB");
  MergeSummary s =
      merge(cat("merge_method: linear\nmodels:\n  - model: ", a_, "\n    parameters: {weight: 1}\n"), out, opt);
  EXPECT_GT(s.shards, 5u);
  auto idx = nlohmann::json::parse(slurp(out + "/model.safetensors.index.json"));
  std::map<std::string, uint64_t> shard_bytes;
  Checkpoint in(a_), m(out);
  for (auto& [name, file] : idx["weight_map"].items()) shard_bytes[file.get<std::string>()] += m.get(name).nbytes;
  ASSERT_EQ(shard_bytes.size(), s.shards);
  size_t k = 1;
  for (auto& [file, bytes] : shard_bytes) {
    char want[64];
    std::snprintf(want, sizeof want, "model-%05zu-of-%05zu.safetensors", k++, s.shards);
    EXPECT_EQ(file, want);
    // Over the limit only when one tensor alone is (the 512 x 64 fp32 embeddings are 131 kB).
    size_t tensors_in_shard = 0;
    for (auto& [name, f] : idx["weight_map"].items()) tensors_in_shard += f == file;
    if (tensors_in_shard > 1) {
      EXPECT_LE(bytes, 100000u) << file;
    }
  }
  for (const auto& n : in.names()) EXPECT_EQ(read_f32(m, n), read_f32(in, n)) << n;
}

TEST_F(Merger, SlerpFollowsGradientsAndFiltersPerLayer) {
  const std::string b = tmp_ + "/b", out = tmp_ + "/out";
  write_transformed(a_, b, [](const std::string& n, std::vector<float>& v) { perturb(n, v, 0.5f, 2); });
  // t: embeddings at 0 (base), lm_head and final norm at 1 (other), layer i of 4 at i/3 along [0, 1], except
  // the mamba mixers, held at 0.25.
  merge(cat("merge_method: slerp\nbase_model: ", a_, "\nmodels:\n  - model: ", a_, "\n  - model: ", b,
            "\nparameters:\n  t:\n    - filter: mamba\n      value: 0.25\n    - value: [0, 1]\n"),
        out);
  Checkpoint ca(a_), cb(b), m(out);
  EXPECT_EQ(read_f32(m, "model.embed_tokens.weight"), read_f32(ca, "model.embed_tokens.weight"));
  EXPECT_EQ(read_f32(m, "lm_head.weight"), read_f32(cb, "lm_head.weight"));
  EXPECT_EQ(read_f32(m, "model.final_layernorm.weight"), read_f32(cb, "model.final_layernorm.weight"));
  for (const auto& n : ca.names()) {
    if (n.find("layers.") == std::string::npos) continue;
    const int layer = n[13] - '0';  // "model.layers.N."
    const double t = n.find("mamba") != std::string::npos ? 0.25 : layer / 3.0;
    auto x = read_f32(ca, n), y = read_f32(cb, n);
    std::vector<float> want(x.size());
    merge_slerp(t, x, y, want);
    EXPECT_EQ(read_f32(m, n), want) << n << " t=" << t;
  }
}

TEST_F(Merger, TaskArithmeticAndTies) {
  const std::string b = tmp_ + "/b", c = tmp_ + "/c", out1 = tmp_ + "/ta", out2 = tmp_ + "/ties";
  write_transformed(a_, b, [](const std::string& n, std::vector<float>& v) { perturb(n, v, 0.1f, 3); });
  write_transformed(a_, c, [](const std::string& n, std::vector<float>& v) { perturb(n, v, 0.1f, 4); });
  const std::string models =
      cat("models:\n  - model: ", b, "\n    parameters: {weight: 0.7, density: 0.5}\n  - model: ", c,
          "\n    parameters: {weight: 0.5, density: 0.3}\n");
  const std::string ta_yaml =
      cat("merge_method: task_arithmetic\nbase_model: ", a_, "\nparameters: {lambda: 0.9}\n", models);
  merge(ta_yaml, out1);
  merge(cat("merge_method: ties\nbase_model: ", a_, "\n", models), out2);
  // Entry-by-entry methods run over slices of each tensor: slices of 1000 entries must give the same bytes.
  MergeOptions sliced;
  sliced.slice_elements = 1000;
  merge(ta_yaml, tmp_ + "/ta-sliced", sliced);
  Checkpoint ca(a_), cb(b), cc(c), ta(out1), ties(out2), ta_sliced(tmp_ + "/ta-sliced");
  for (const auto& n : ca.names()) {
    auto x = read_f32(ca, n), y = read_f32(cb, n), z = read_f32(cc, n);
    std::vector<float> d1(x.size()), d2(x.size()), want(x.size());
    for (size_t j = 0; j < x.size(); ++j) d1[j] = y[j] - x[j], d2[j] = z[j] - x[j];
    // task_arithmetic: base + lambda * (0.7 d1 + 0.5 d2), no normalization, no trimming.
    for (size_t j = 0; j < x.size(); ++j) want[j] = x[j] + 0.9f * (0.7f * d1[j] + 0.5f * d2[j]);
    expect_close(read_f32(ta, n), want, 1e-6, n);
    EXPECT_EQ(read_f32(ta_sliced, n), read_f32(ta, n)) << n;
    // ties: trim each delta to its density, elect signs, average the agreeing ones (normalize defaults to on).
    sparsify_magnitude(d1, 0.5, false);
    sparsify_magnitude(d2, 0.3, false);
    std::vector<std::span<const float>> ds{d1, d2};
    std::vector<double> w{0.7, 0.5};
    merge_task_vectors(x, ds, w, {true, true, 1.0}, want);
    EXPECT_EQ(read_f32(ties, n), want) << n;
  }
}

TEST_F(Merger, DareTiesIsDeterministicForASeed) {
  const std::string b = tmp_ + "/b";
  write_transformed(a_, b, [](const std::string& n, std::vector<float>& v) { perturb(n, v, 0.1f, 5); });
  const std::string yaml = cat("merge_method: dare_ties\nbase_model: ", a_, "\nmodels:\n  - model: ", b,
                               "\n    parameters: {weight: 1.0, density: 0.5}\nparameters: {rescale: false}\n");
  MergeOptions s7, s8;
  s7.seed = 7;
  s8.seed = 8;
  merge(yaml, tmp_ + "/r1", s7);
  merge(yaml, tmp_ + "/r2", s7);
  merge(yaml, tmp_ + "/r3", s8);
  Checkpoint ca(a_), cb(b), r1(tmp_ + "/r1"), r2(tmp_ + "/r2"), r3(tmp_ + "/r3");
  size_t kept = 0, total = 0, differ = 0;
  for (const auto& n : ca.names()) {
    auto x = read_f32(ca, n), y = read_f32(cb, n), o = read_f32(r1, n);
    EXPECT_EQ(o, read_f32(r2, n)) << n;
    auto o3 = read_f32(r3, n);
    for (size_t j = 0; j < x.size(); ++j) {
      // One model, weight 1, no rescale: each entry is the base (dropped) or base + delta (kept).
      const float full = x[j] + (y[j] - x[j]);
      ASSERT_TRUE(o[j] == x[j] || o[j] == full) << n << " [" << j << "]";
      kept += o[j] == full && full != x[j];
      differ += o[j] != o3[j];
      ++total;
    }
  }
  EXPECT_NEAR(double(kept) / double(total), 0.5, 0.01);
  EXPECT_GT(differ, total / 4);  // another seed drops other entries
}

TEST_F(Merger, MismatchedInputsNameTheTensor) {
  auto t = [](std::string name, std::vector<int64_t> shape) {
    int64_t n = 1;
    for (auto d : shape) n *= d;
    return FakeTensor{std::move(name), shape, std::vector<float>(size_t(n), 1.0f)};
  };
  const std::string ok = tmp_ + "/ok", shape = tmp_ + "/shape", missing = tmp_ + "/missing", vocab = tmp_ + "/vocab",
                    arch = tmp_ + "/arch", extra = tmp_ + "/extra", out = tmp_ + "/out";
  const std::vector<FakeTensor> base = {t("model.embed_tokens.weight", {16, 4}), t("model.layers.0.mlp.weight", {4, 4}),
                                        t("model.norm.weight", {4})};
  write_model(ok, base);
  write_model(shape, {t("model.embed_tokens.weight", {16, 4}), t("model.layers.0.mlp.weight", {4, 5}),
                      t("model.norm.weight", {4})});
  write_model(missing, {t("model.embed_tokens.weight", {16, 4}), t("model.norm.weight", {4})});
  write_model(
      vocab,
      {t("model.embed_tokens.weight", {20, 4}), t("model.layers.0.mlp.weight", {4, 4}), t("model.norm.weight", {4})},
      20);
  write_model(arch, base, 16, "LlamaForCausalLM");
  write_model(extra, {t("model.embed_tokens.weight", {16, 4}), t("model.layers.0.mlp.weight", {4, 4}),
                      t("model.norm.weight", {4}), t("lm_head.weight", {16, 4})});
  auto recipe = [&](const std::string& other) {
    return cat("merge_method: linear\nmodels:\n  - model: ", ok, "\n    parameters: {weight: 1}\n  - model: ", other,
               "\n    parameters: {weight: 1}\n");
  };
  std::string e = merge_error(recipe(shape), out);
  EXPECT_NE(e.find("tensor \"model.layers.0.mlp.weight\" is [4, 5] in " + shape + " but [4, 4]"), std::string::npos)
      << e;
  e = merge_error(recipe(missing), out);
  EXPECT_NE(e.find(missing + ": missing tensor \"model.layers.0.mlp.weight\""), std::string::npos) << e;
  e = merge_error(recipe(vocab), out);
  EXPECT_NE(e.find("tensor \"model.embed_tokens.weight\" is [20, 4]"), std::string::npos) << e;
  EXPECT_NE(e.find("different vocabularies (vocab_size 20 vs 16)"), std::string::npos) << e;
  e = merge_error(recipe(arch), out);
  EXPECT_NE(e.find("config.json: architectures [\"LlamaForCausalLM\"] differs"), std::string::npos) << e;
  e = merge_error(recipe(extra), out);
  EXPECT_NE(e.find("has tensor \"lm_head.weight\" that " + ok + " lacks"), std::string::npos) << e;
  // Two real fixtures of the same class but other layouts: named by their first differing tensor.
  e = merge_error(recipe(model_dir("bamba-tiny-b")), out);
  EXPECT_NE(e.find("tensor \""), std::string::npos) << e;
  EXPECT_FALSE(fs::exists(out));
  EXPECT_EQ(leftovers({"ok", "shape", "missing", "vocab", "arch", "extra"}), std::vector<std::string>{});
}

TEST_F(Merger, ModelsMustBeLocalFolders) {
  std::string e = merge_error(
      "merge_method: linear\nmodels:\n  - model: ibm-ai-platform/Bamba-9B-v2\n"
      "    parameters: {weight: 1}\n",
      tmp_ + "/out");
  EXPECT_NE(e.find("\"ibm-ai-platform/Bamba-9B-v2\" is not a local folder"), std::string::npos) << e;
  EXPECT_NE(e.find("Hugging Face Hub"), std::string::npos) << e;
}

TEST_F(Merger, MissingParametersAreNamed) {
  std::string e = merge_error(cat("merge_method: linear\nmodels:\n  - model: ", a_, "\n"), tmp_ + "/out");
  EXPECT_NE(e.find("has no parameter weight"), std::string::npos) << e;
  e = merge_error(cat("merge_method: slerp\nbase_model: ", a_, "\nmodels:\n  - model: ", a_, "\n  - model: ", a_, "\n"),
                  tmp_ + "/out");
  EXPECT_NE(e.find("missing top-level parameter t"), std::string::npos) << e;
  // TIES trimming to int(density * n) = 0 entries is refused before anything is written, naming the tensor.
  const std::string b = tmp_ + "/b";
  write_transformed(a_, b, [](const std::string&, std::vector<float>&) {});
  e = merge_error(cat("merge_method: ties\nbase_model: ", a_, "\nmodels:\n  - model: ", b,
                      "\n    parameters: {weight: 1, density: 0.1}\n"),
                  tmp_ + "/out");
  EXPECT_NE(e.find("density 0.1 keeps no entry of tensor model.layers.0.mamba.A_log (8 elements"), std::string::npos)
      << e;
  EXPECT_FALSE(fs::exists(tmp_ + "/out"));
}

TEST_F(Merger, RefusesToOverwriteUnlessForced) {
  const std::string out = tmp_ + "/out",
                    yaml = cat("merge_method: linear\nmodels:\n  - model: ", a_, "\n    parameters: {weight: 1}\n");
  fs::create_directories(out);
  merge(yaml, out);  // an empty folder may be replaced
  std::string e = merge_error(yaml, out);
  EXPECT_NE(e.find("exists and is not an empty folder"), std::string::npos) << e;
  write_text(out + "/stale.txt", "old");
  MergeOptions force;
  force.force = true;
  merge(yaml, out, force);
  EXPECT_FALSE(fs::exists(out + "/stale.txt"));
  EXPECT_TRUE(fs::exists(out + "/model.safetensors.index.json"));
  EXPECT_EQ(leftovers({"out"}), std::vector<std::string>{});
  e = merge_error(yaml, a_, force);
  EXPECT_NE(e.find("is one of the input models"), std::string::npos) << e;
  // Nor may --force replace a folder that holds an input.
  const std::string holder = tmp_ + "/holder";
  write_transformed(a_, holder + "/a", [](const std::string&, std::vector<float>&) {});
  e = merge_error(cat("merge_method: linear\nmodels:\n  - model: ", holder, "/a\n    parameters: {weight: 1}\n"),
                  holder, force);
  EXPECT_NE(e.find("contains one of the input models"), std::string::npos) << e;
  EXPECT_TRUE(fs::exists(holder + "/a/model.safetensors"));
  fs::remove_all(holder);
}

TEST_F(Merger, AFailureHalfwayLeavesNoOutput) {
  // The weights of lm_head sum to 0 (and only its), so normalizing fails on the last tensor, after the others have
  // been written to the staging folder: neither the output nor the staging folder may remain.
  const std::string out = tmp_ + "/out";
  std::string e = merge_error(cat("merge_method: linear\nmodels:\n  - model: ", a_,
                                  "\n    parameters: {weight: 1}\n"
                                  "  - model: ",
                                  a_,
                                  "\n    parameters:\n      weight:\n        - filter: lm_head\n"
                                  "          value: -1\n        - value: 1\n"),
                              out);
  EXPECT_NE(e.find("tensor \"lm_head.weight\": linear with normalize: the weights sum to 0"), std::string::npos) << e;
  EXPECT_EQ(leftovers({}), std::vector<std::string>{});
}

TEST(ShardedWriterSizes, ParsesHuggingFaceSizes) {
  EXPECT_EQ(parse_byte_size("5GB"), 5'000'000'000u);
  EXPECT_EQ(parse_byte_size("500MB"), 500'000'000u);
  EXPECT_EQ(parse_byte_size("2GiB"), 2147483648u);
  EXPECT_EQ(parse_byte_size("1.5kb"), 1500u);
  EXPECT_EQ(parse_byte_size("123456"), 123456u);
  EXPECT_THROW(parse_byte_size("5 parsecs"), Error);
  EXPECT_THROW(parse_byte_size("GB"), Error);
  EXPECT_THROW(parse_byte_size("0"), Error);
}

TEST_F(Merger, DtypeRoundsTheInputsAndReportsProgress) {
  // dtype: bfloat16 with out_dtype: float32 and a single weight-1 input gives the bf16-rounded model in fp32.
  const std::string out = tmp_ + "/out";
  std::vector<MergeProgress> seen;
  std::vector<std::string> names;  // MergeProgress::tensor is valid during the call only
  MergeOptions opt;
  opt.on_progress = [&](const MergeProgress& p) { seen.push_back(p), names.emplace_back(p.tensor); };
  MergeSummary s = merge(cat("merge_method: linear\nmodels:\n  - model: ", a_,
                             "\n    parameters: {weight: 1}\ndtype: bfloat16\nout_dtype: float32\n"),
                         out, opt);
  Checkpoint in(a_), m(out);
  for (const auto& n : in.names()) {
    ASSERT_EQ(m.get(n).dtype, DType::F32);
    auto x = read_f32(in, n), y = read_f32(m, n);
    for (size_t j = 0; j < x.size(); ++j) ASSERT_EQ(y[j], bf16_to_f32(f32_to_bf16(x[j]))) << n;
  }
  EXPECT_EQ(nlohmann::json::parse(slurp(out + "/config.json"))["torch_dtype"], "float32");
  ASSERT_EQ(seen.size(), s.tensors);
  for (size_t i = 0; i < seen.size(); ++i) EXPECT_EQ(seen[i].tensors_done, i + 1);
  EXPECT_EQ(seen.back().bytes_done, seen.back().bytes_total);
  EXPECT_EQ(seen.back().bytes_total, s.bytes);
  // Embeddings first, then the layers in order, then what follows them.
  EXPECT_EQ(names.front(), "model.embed_tokens.weight");
  EXPECT_EQ(names[1], "model.layers.0.feed_forward.down_proj.weight");
  EXPECT_EQ(names.back(), "model.final_layernorm.weight");
}

TEST(ConfigJson, KeepsPythonsBareLiteralsAndSetsTheDtype) {
  const std::string text =
      "{\n  \"dtype\": \"float32\",\n  \"time_step_limit\": [0.0, Infinity],\n  \"x\": -Infinity,\n"
      "  \"note\": \"NaN and Infinity in a string stay\",\n  \"rope_theta\": 10000.0\n}\n";
  auto j = parse_config_json(text, "config.json");
  EXPECT_EQ(j["rope_theta"], 10000.0);
  std::string out = config_json_with_dtype(text, "bfloat16", "config.json");
  EXPECT_NE(out.find("\"dtype\": \"bfloat16\""), std::string::npos) << out;
  EXPECT_NE(out.find("Infinity\n  ]"), std::string::npos) << out;
  EXPECT_NE(out.find("\"x\": -Infinity"), std::string::npos) << out;
  EXPECT_NE(out.find("\"NaN and Infinity in a string stay\""), std::string::npos) << out;
  EXPECT_EQ(out.find("torch_dtype"), std::string::npos) << out;  // transformers 5 spelling kept alone
  // Neither key: torch_dtype is added, which both transformers 4 and 5 read.
  out = config_json_with_dtype("{\"a\": 1}", "float16", "config.json");
  EXPECT_NE(out.find("\"torch_dtype\": \"float16\""), std::string::npos) << out;
  EXPECT_THROW(parse_config_json("{\"a\": ", "config.json"), Error);
}
