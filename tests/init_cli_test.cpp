// `bamba init`: a preset shape with generated weights written as a Hugging Face folder that the checkpoint reader,
// `bamba logits` and `bamba generate` load as they load a downloaded one, holding exactly the generated weights.
#include <gtest/gtest.h>

#include <filesystem>

#include "core/dtype.h"
#include "core/mapped_file.h"
#include "io/checkpoint.h"
#include "io/config_json.h"
#include "io/safetensors.h"
#include "model/config.h"
#include "test_util.h"

namespace bamba {
namespace {

namespace fs = std::filesystem;
using test::run_bamba;

std::vector<float> tensor_f32(const SafetensorsFile& f, const std::string& name) {
  const TensorInfo* t = f.find(name);
  if (!t) return {};
  std::vector<float> v(size_t(t->numel()));
  convert_to_f32(t->data, t->dtype, v.size(), v.data());
  return v;
}

// fp32 with the dummy model's seed: the folder's logits are bit for bit those of `--model dummy`, which runs the
// same generated weights from memory, so every tensor was written under its own name, shape and values.
TEST(InitCli, TinyPresetFolderLoadsAndHoldsTheGeneratedWeights) {
  const std::string dir = test::make_temp_dir("init_tiny_fp32");
  auto r = run_bamba("init --preset tiny --out " + dir + " --dtype fp32 --seed 0 --device cpu --max-shard-size 200kB");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("wrote " + dir), std::string::npos) << r.err;

  Checkpoint ckpt(dir);  // the sharded safetensors reader: every shard and the index agree
  EXPECT_GT(ckpt.files().size(), 1u);
  const ModelConfig cfg = load_config(dir);
  EXPECT_EQ(cfg.model_type, "bamba");
  EXPECT_EQ(cfg.dtype, DType::F32);
  for (const std::string& n : ckpt.names()) EXPECT_EQ(ckpt.get(n).dtype, DType::F32) << n;

  const std::string a = dir + "/a.safetensors", b = dir + "/b.safetensors";
  auto la = run_bamba("logits --device cpu -m " + dir + " --ids 1,2,3,200,7 -o " + a);
  auto lb = run_bamba("logits --device cpu -m dummy --ids 1,2,3,200,7 -o " + b);
  ASSERT_EQ(la.exit_code, 0) << la.err;
  ASSERT_EQ(lb.exit_code, 0) << lb.err;
  const std::vector<float> got = tensor_f32(SafetensorsFile(a), "logits");
  const std::vector<float> want = tensor_f32(SafetensorsFile(b), "logits");
  ASSERT_FALSE(want.empty());
  EXPECT_EQ(got, want);

  // The byte-level tokenizer written beside them: generate runs from text.
  auto g = run_bamba("generate --device cpu -m " + dir + " --prompt 'Hi' --max-tokens 4 --ignore-eos");
  EXPECT_EQ(g.exit_code, 0) << g.err;
  EXPECT_EQ(g.out.rfind("Hi", 0), 0u) << g.out;
  fs::remove_all(dir);
}

// bf16 files (the default), a transformer preset with its hub config.json, a tokenizer folder copied in, and the
// folder refused as a destination once it exists.
TEST(InitCli, Bf16TransformerWithTokenizerAndExistingFolder) {
  const std::string dir = test::make_temp_dir("init_tiny_llama");
  const std::string tok = test::model_dir("bamba-tiny-e2e");
  auto r = run_bamba("init --preset tiny-llama --out " + dir + " --device cpu -q");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(r.err.empty()) << r.err;
  const ModelConfig cfg = load_config(dir);
  EXPECT_EQ(cfg.model_type, "llama");
  EXPECT_EQ(cfg.dtype, DType::BF16);
  Checkpoint ckpt(dir);
  EXPECT_EQ(ckpt.get("model.layers.0.self_attn.q_proj.weight").dtype, DType::BF16);
  EXPECT_EQ(ckpt.get("lm_head.weight").shape, (std::vector<int64_t>{258, 64}));
  auto l = run_bamba("logits --device cpu -m " + dir + " --ids 256,65,66 -o " + dir + "/l.safetensors");
  EXPECT_EQ(l.exit_code, 0) << l.err;

  auto again = run_bamba("init --preset tiny-llama --out " + dir + " --device cpu");
  EXPECT_EQ(again.exit_code, 1);
  EXPECT_NE(again.err.find(dir), std::string::npos) << again.err;
  auto forced = run_bamba("init --preset tiny --out " + dir + " --device cpu --force -q --tokenizer " + tok);
  ASSERT_EQ(forced.exit_code, 0) << forced.err;
  EXPECT_EQ(read_text_file(dir + "/tokenizer.json"), read_text_file(tok + "/tokenizer.json"));
  EXPECT_TRUE(file_exists(dir + "/tokenizer_config.json"));
  EXPECT_EQ(load_config(dir).model_type, "bamba");

  auto bad = run_bamba("init --preset llama-70b --out " + dir + "-x");
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_NE(bad.err.find("unknown preset \"llama-70b\""), std::string::npos) << bad.err;
  auto no_tok = run_bamba("init --preset tiny --out " + dir + "-y --device cpu --tokenizer " + dir + "-none");
  EXPECT_EQ(no_tok.exit_code, 1);
  EXPECT_NE(no_tok.err.find("has no tokenizer.json"), std::string::npos) << no_tok.err;
  EXPECT_FALSE(fs::exists(dir + "-y")) << "a failed init leaves no folder behind";
  EXPECT_FALSE(fs::exists(dir + "-x"));
  fs::remove_all(dir);
}

// --config: any shape bamba reads. For each family fixture (transformers' own save_pretrained output), the folder
// holds exactly the tensors, names and shapes transformers wrote, so converters written for hub folders read it.
TEST(InitCli, ConfigOfEveryFamilyWritesTransformersTensorNames) {
  const std::string base = std::string(BAMBA_SOURCE_DIR) + "/tests/data/family/";
  for (const char* fam : {"granitemoehybrid-moe", "granitemoehybrid-dense-rope", "nemotron_h", "llama3", "mamba2",
                          "falcon_h1", "zamba2"}) {
    const std::string dir = test::make_temp_dir(std::string("init_") + fam);
    auto r = run_bamba("init --config " + base + fam + "/config.json --out " + dir + " --device cpu -q");
    ASSERT_EQ(r.exit_code, 0) << fam << ": " << r.err;
    Checkpoint got(dir), want(base + fam);
    EXPECT_EQ(got.names(), want.names()) << fam;
    for (const std::string& n : want.names()) {
      const TensorInfo* t = got.find(n);
      if (t) {
        EXPECT_EQ(t->shape, want.get(n).shape) << fam << " " << n;
      }
    }
    EXPECT_EQ(load_config(dir).model_type, load_config(base + fam).model_type) << fam;
    fs::remove_all(dir);
  }
  auto none = run_bamba("init --out /tmp/bamba-init-nothing");
  EXPECT_EQ(none.exit_code, 1);
  EXPECT_NE(none.err.find("give --preset or --config"), std::string::npos) << none.err;
}

}  // namespace
}  // namespace bamba
