// The bamba program as users meet it: --help everywhere, the built-in and dummy models, logits files against the
// fixtures, tokenize/detokenize, and bad input ending in one clear error line and a non-zero exit.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/mapped_file.h"
#include "io/safetensors.h"
#include "test_util.h"

namespace bamba {
namespace {

using test::run_bamba;

std::vector<float> f32(const TensorInfo& t) {
  std::vector<float> v(size_t(t.numel()));
  convert_to_f32(t.data, t.dtype, v.size(), v.data());
  return v;
}

// Exit 1 and one error message, "error: ...", as the last line of stderr (loading notes may precede it).
void expect_one_error(const test::RunResult& r, const std::string& must_contain) {
  EXPECT_EQ(r.exit_code, 1) << r.err;
  size_t at = r.err.find("error: ");
  ASSERT_NE(at, std::string::npos) << r.err;
  EXPECT_TRUE(at == 0 || r.err[at - 1] == '\n') << r.err;
  EXPECT_EQ(r.err.find("error", at + 1), std::string::npos) << "more than one error: " << r.err;
  EXPECT_EQ(r.err.find('\n', at), r.err.size() - 1) << "the error is not one last line: " << r.err;
  EXPECT_NE(r.err.find(must_contain, at), std::string::npos) << "expected \"" << must_contain << "\" in: " << r.err;
}

TEST(Cli, HelpOnEveryCommand) {
  auto top = run_bamba("--help");
  EXPECT_EQ(top.exit_code, 0);
  for (const char* cmd : {"generate", "logits", "tokenize", "detokenize"}) {
    auto r = run_bamba(std::string(cmd) + " --help");
    EXPECT_EQ(r.exit_code, 0) << cmd;
    EXPECT_NE(top.out.find(cmd), std::string::npos) << cmd;
    EXPECT_NE(r.out.find("--"), std::string::npos) << cmd;
  }
  EXPECT_NE(run_bamba("generate --help").out.find("--top-p"), std::string::npos);
  EXPECT_NE(run_bamba("nonsense").exit_code, 0);
}

// Without --model: the built-in model (models/bamba-recipe, the recipe's merged result), which has learnt its
// corpora: greedy from a verse's opening goes on as the King James Bible does. --model dummy is the tiny model
// with generated weights.
TEST(Cli, GenerateRunsOnTheBuiltInModel) {
  auto r = run_bamba("generate --device cpu --prompt 'And the LORD said' -t 0 --max-tokens 12 --ignore-eos");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out.rfind("And the LORD said", 0), 0u);
  EXPECT_NE(r.out.find(" unto"), std::string::npos) << "not the trained built-in model? " << r.out;
  EXPECT_NE(r.err.find("built-in model bamba-recipe"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("tok/s"), std::string::npos) << r.err;
  // Its generation_config.json samples by default; same seed, same sampled text; stdin works as the prompt.
  auto a = run_bamba("generate -n 16 --ignore-eos --seed 7", "Hi");
  auto b = run_bamba("generate -q -n 16 --ignore-eos --seed 7", "Hi");
  ASSERT_EQ(a.exit_code, 0) << a.err;
  EXPECT_NE(a.err.find("temperature 0.8"), std::string::npos) << a.err;
  EXPECT_EQ(a.out, b.out);
  auto d = run_bamba("generate -m dummy --device cpu --prompt 'Hello' --max-tokens 12 --ignore-eos");
  ASSERT_EQ(d.exit_code, 0) << d.err;
  EXPECT_EQ(d.out.rfind("Hello", 0), 0u);
  EXPECT_NE(d.err.find("dummy"), std::string::npos) << d.err;
}

// `bamba bench` on the built-in tiny shape (CPU): the table, the JSON file, and --profile's per-op tables whose
// rows are the ops a Bamba step runs.
TEST(Cli, BenchWritesTableJsonAndProfile) {
  const std::string json = (std::filesystem::temp_directory_path() / "bamba_cli_bench.json").string();
  auto r = run_bamba("bench --preset tiny --device cpu --reps 2 --tests pp40,tg3,decode2 --prompt 9 --steps 3 "
                     "--profile --json " + json);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  for (const char* row : {"| pp40 |", "| tg3 |", "| decode2 |"}) EXPECT_NE(r.out.find(row), std::string::npos) << r.out;
  // No measured ceilings for a CPU: no percentage rather than one of some other machine's peak.
  EXPECT_NE(r.out.find("GB/s | - |"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("no measured ceilings for this device"), std::string::npos) << r.out;
  std::ifstream f(json);
  auto j = nlohmann::json::parse(f);
  ASSERT_EQ(j["rows"].size(), 3u);
  for (auto& row : j["rows"]) {
    EXPECT_EQ(row["tok_s"].size(), 2u);
    EXPECT_GT(row["mean"].get<double>(), 0.0);
    EXPECT_TRUE(row["pct_of_peak"].is_null()) << row;
  }
  for (const char* op : {"| ssd |", "| attention |", "| conv1d_silu |", "| matmul N=", "| total |"})
    EXPECT_NE(r.err.find(op), std::string::npos) << op << " missing from the profile: " << r.err;
  EXPECT_NE(r.err.find("tg3, every op timed alone"), std::string::npos) << r.err;
  std::filesystem::remove(json);
}

// --leave-out: the named ops never run (so --profile times none of them; the rest still run), by first word or
// by the whole name --profile prints; the table says what was left out; a name no op has is an error.
TEST(Cli, BenchLeavesOutOps) {
  auto r = run_bamba("bench --preset tiny --device cpu --reps 1 --tests tg3 --profile --leave-out "
                     "'ssd,matmul N=64 K=128' --json /dev/null");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("[left out: ssd, matmul N=64 K=128]"), std::string::npos) << r.out;
  for (const char* gone : {"| ssd |", "| matmul N=64 K=128 |"})
    EXPECT_EQ(r.err.find(gone), std::string::npos) << gone << " ran: " << r.err;
  for (const char* kept : {"| conv1d_silu |", "| matmul_swiglu N=256 K=64 |", "| attention |"})
    EXPECT_NE(r.err.find(kept), std::string::npos) << kept << " missing: " << r.err;
  auto bad = run_bamba("bench --preset tiny --device cpu --reps 1 --tests tg2 --leave-out sdd --json /dev/null");
  EXPECT_NE(bad.exit_code, 0);
  EXPECT_NE(bad.err.find("--leave-out \"sdd\" matched no op"), std::string::npos) << bad.err;
}
// Given ceilings: each row's rate as a share of them (decode rows of the GB/s, prefill rows of the TFLOP/s).
TEST(Cli, BenchPercentOfGivenCeilings) {
  const std::string json = (std::filesystem::temp_directory_path() / "bamba_cli_bench_peak.json").string();
  auto r = run_bamba("bench --preset tiny --device cpu --reps 1 --tests pp16,tg2 --peak-gbps 0.5 --peak-tflops 0.001 "
                     "--json " + json);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("of 0.5 GB/s (HBM copy) and 0.001 TFLOP/s (dense bf16 matmul), given"), std::string::npos) << r.out;
  std::ifstream f(json);
  auto j = nlohmann::json::parse(f);
  EXPECT_EQ(j["peak_gbps"].get<double>(), 0.5);
  for (auto& row : j["rows"]) {
    const double peak = row["rate_unit"] == "GB/s" ? 0.5 : 0.001;
    EXPECT_NEAR(row["pct_of_peak"].get<double>(), 100.0 * row["rate"].get<double>() / peak, 1e-9) << row;
  }
  // Split over 2 ranks the rates are two devices': a share of twice the ceiling.
  auto tp = run_bamba("bench --preset tiny --device cpu --reps 1 --tests tg2 --tp 2 --peak-gbps 0.5 --json " + json);
  ASSERT_EQ(tp.exit_code, 0) << tp.err;
  EXPECT_NE(tp.out.find("0.5 GB/s (HBM copy) and none (dense bf16 matmul) per device, × 2 ranks, given"), std::string::npos)
      << tp.out;
  std::ifstream f2(json);
  auto j2 = nlohmann::json::parse(f2);
  EXPECT_EQ(j2["ranks"].get<int>(), 2);
  for (auto& row : j2["rows"])
    EXPECT_NEAR(row["pct_of_peak"].get<double>(), 100.0 * row["rate"].get<double>() / (2 * 0.5), 1e-9) << row;
  std::filesystem::remove(json);
}

TEST(Cli, GenerateStopsAtAStopString) {
  // Greedy is deterministic: generate once, then stop at a piece of that output.
  auto full = run_bamba("generate -q --device cpu -t 0 --prompt 'ab' -n 24 --ignore-eos");
  ASSERT_EQ(full.exit_code, 0) << full.err;
  std::string gen = full.out.substr(2, full.out.size() - 3);  // without the prompt and the final newline
  ASSERT_GE(gen.size(), 6u);
  // A stop string from the middle of the generated text (ASCII-only bytes keep the shell quoting simple).
  size_t at = gen.size() / 2;
  while (at + 2 < gen.size() && (gen[at] < 'a' || gen[at] > 'z')) ++at;
  ASSERT_TRUE(gen[at] >= 'a' && gen[at] <= 'z') << "no lowercase letter in the output to stop at: " << gen;
  std::string stop(1, gen[at]);
  size_t first = gen.find(stop);
  auto r = run_bamba("generate -q --device cpu -t 0 --prompt 'ab' -n 24 --ignore-eos --stop '" + stop + "'");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "ab" + gen.substr(0, first) + "\n");
}

TEST(Cli, LogitsFileMatchesTheReference) {
  std::string dir = test::model_dir("bamba-tiny-a"), tmp = test::make_temp_dir("logits");
  SafetensorsFile ref(dir + "/expected.safetensors");
  const TensorInfo* ids_t = ref.find("seq4.input_ids");
  ASSERT_NE(ids_t, nullptr);
  std::vector<int32_t> ids(size_t(ids_t->numel()));
  std::memcpy(ids.data(), ids_t->data, ids.size() * 4);
  std::string list;
  for (int32_t id : ids) list += (list.empty() ? "" : ",") + std::to_string(id);
  // --chunk 7 also runs the chunked path through the CLI.
  auto r = run_bamba("logits -q --device cpu --model '" + dir + "' --ids " + list + " --chunk 7 --activations --out '" +
                     tmp + "/out.safetensors'");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  SafetensorsFile got(tmp + "/out.safetensors");
  for (std::string name : {"logits", "embed", "layer0", "layer1", "layer2", "layer3", "final_norm"}) {
    const TensorInfo* g = got.find(name);
    ASSERT_NE(g, nullptr) << name;
    auto a = f32(*g), e = f32(*ref.find("seq4." + name));
    ASSERT_EQ(a.size(), e.size()) << name;
    for (size_t i = 0; i < a.size(); ++i) ASSERT_LE(std::fabs(a[i] - e[i]), 1e-3 * (1 + std::fabs(e[i]))) << name << " " << i;
  }
  std::filesystem::remove_all(tmp);
}

// --quantization fp8 through the CLI, with --fp8-lm-head (lm_head in FP8 too) and without: different logits (the
// flag reached the weights), yet close (Fp8.AccuracyOnTheFixtures measures 0.02-0.04 on these random fixtures);
// the flag alone is an error.
TEST(Cli, Fp8LmHeadQuantizesTheHead) {
  std::string dir = test::model_dir("bamba-tiny-a"), tmp = test::make_temp_dir("logits");
  std::vector<float> got[2];
  for (int i = 0; i < 2; ++i) {
    const std::string out = tmp + "/o" + std::to_string(i) + ".safetensors";
    auto r = run_bamba("logits -q --device cpu --model '" + dir + "' --ids 1,5,9,13,200 --quantization fp8" +
                       (i ? " --fp8-lm-head" : "") + " --out '" + out + "'");
    ASSERT_EQ(r.exit_code, 0) << r.err;
    SafetensorsFile f(out);
    got[i] = f32(*f.find("logits"));
  }
  ASSERT_EQ(got[0].size(), got[1].size());
  EXPECT_NE(got[0], got[1]) << "--fp8-lm-head changed nothing";
  EXPECT_LT(test::rel_l2(got[1], got[0]), 0.1);
  expect_one_error(run_bamba("logits -q --device cpu --model '" + dir + "' --ids 1,2 --fp8-lm-head --out '" + tmp +
                             "/x.safetensors'"),
                   "--fp8-lm-head: only with --quantization fp8");
  std::filesystem::remove_all(tmp);
}

TEST(Cli, LogitsFromTextUsesTheTokenizerWithBos) {
  std::string dir = test::model_dir("bamba-tiny-e2e"), tmp = test::make_temp_dir("logits");
  auto cases = nlohmann::json::parse(read_text_file(dir + "/generate_cases.json"));
  auto r = run_bamba("logits -q --device cpu --model '" + dir + "' --prompt '" + cases[0]["prompt"].get<std::string>() +
                     "' --out '" + tmp + "/o.safetensors'");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  SafetensorsFile got(tmp + "/o.safetensors");
  const TensorInfo* ids = got.find("input_ids");
  ASSERT_NE(ids, nullptr);
  std::vector<int32_t> v(size_t(ids->numel()));
  std::memcpy(v.data(), ids->data, v.size() * 4);
  EXPECT_EQ(v, cases[0]["prompt_ids"].get<std::vector<int32_t>>());
  // The greedy next token is the reference's first generated token (its margin is 0.15).
  auto lg = f32(*got.find("logits"));
  const size_t V = size_t(got.find("logits")->shape[1]);
  auto last = lg.begin() + long((v.size() - 1) * V);
  EXPECT_EQ(std::max_element(last, last + long(V)) - last, cases[0]["greedy_new_tokens"][0].get<long>());
  std::filesystem::remove_all(tmp);
}

TEST(Cli, GenerateGreedyOnTheE2eModelReproducesTheReference) {
  std::string dir = test::model_dir("bamba-tiny-e2e");
  auto cases = nlohmann::json::parse(read_text_file(dir + "/generate_cases.json"));
  int checked = 0;
  for (auto& c : cases) {
    // Compare up to the first near-tie, via the tokenizer: text of the tokens before it.
    auto margins = c["greedy_margins"].get<std::vector<double>>();
    auto toks = c["greedy_new_tokens"].get<std::vector<int32_t>>();
    size_t n = 0;
    while (n < margins.size() && margins[n] >= 1e-2) ++n;
    if (n == 0) continue;
    nlohmann::json prefix(std::vector<int32_t>(toks.begin(), toks.begin() + long(n)));
    auto want = run_bamba("detokenize --model '" + dir + "'", prefix.dump());
    ASSERT_EQ(want.exit_code, 0) << want.err;
    auto r = run_bamba("generate -q --device cpu --model '" + dir + "' --max-tokens " + std::to_string(n) +
                           " --ignore-eos --temperature 0",
                       c["prompt"].get<std::string>());
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(r.out, c["prompt"].get<std::string>() + want.out + "\n");
    ++checked;
  }
  EXPECT_GT(checked, 0);
}

TEST(Cli, TokenizeAndDetokenize) {
  std::string dir = test::model_dir("bamba-tiny-e2e");
  auto r = run_bamba("tokenize --model '" + dir + "' --add-special", "Hello, my name is");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "[128000,9906,11,856,836,374]\n");
  auto j = run_bamba("tokenize --tokenizer '" + dir + "/tokenizer.json' --jsonl", "\"Hello\"\n\"The capital of France is\"\n");
  ASSERT_EQ(j.exit_code, 0) << j.err;
  EXPECT_EQ(j.out, "[9906]\n[791,6864,315,9822,374]\n");
  auto d = run_bamba("detokenize --model '" + dir + "'", "[9906,11,856,836,374]");
  EXPECT_EQ(d.out, "Hello, my name is");
  expect_one_error(run_bamba("tokenize --model '" + dir + "'", std::string("bad \xff\xfe utf8")), "UTF-8");
}

TEST(Cli, BadInputEndsInOneClearError) {
  std::string tmp = test::make_temp_dir("bad");
  expect_one_error(run_bamba("logits --device cpu --model /nonexistent/model --ids 1 --out x.safetensors"),
                   "/nonexistent/model");
  std::filesystem::create_directories(tmp + "/llama");
  std::ofstream(tmp + "/llama/config.json") << R"({"model_type": "llama", "hidden_size": 64})";
  expect_one_error(run_bamba("logits --device cpu --model '" + tmp + "/llama' --ids 1 --out x.safetensors"), "llama");
  std::string a = test::model_dir("bamba-tiny-a");
  expect_one_error(run_bamba("logits --device cpu --model '" + a + "' --ids 1,2,3,4,5 --max-model-len 4 --out x.st"),
                   "--max-model-len");
  expect_one_error(run_bamba("logits --device cpu --model '" + a + "' --ids 1,x --out x.st"), "--ids");
  expect_one_error(run_bamba("logits --device cpu --model '" + a + "' --ids 9999 --out x.st"), "vocab_size");
  expect_one_error(run_bamba("generate --device cpu --model '" + a + "' --prompt hi"), "tokenizer.json");
  expect_one_error(run_bamba("generate --device cpu --max-model-len 3 --prompt 'a long prompt'"), "--max-model-len");
  expect_one_error(run_bamba("generate --device cpu", std::string("\xc3\x28")), "UTF-8");
  std::filesystem::remove_all(tmp);
}

}  // namespace
}  // namespace bamba
