// Hybrid vs transformer on one engine, the tooling on tiny shapes (CPU): `bamba bench` decodeS@C over a synthetic
// cache, `bamba serve --preset` answering token-id prompts of an exact length, bench-serve's time cap, and
// `bamba bench-matrix` end to end (tiny hybrid vs tiny transformer) writing its table, chart and JSON.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/mapped_file.h"
#include "engine/engine.h"
#include "model/presets.h"
#include "test_util.h"

namespace bamba {
namespace {

using test::run_bamba;
using json = nlohmann::json;

std::string temp_dir(const std::string& name) {
  const auto d = std::filesystem::temp_directory_path() / (name + "_" + std::to_string(::getpid()));
  std::filesystem::remove_all(d);
  std::filesystem::create_directories(d);
  return d.string();
}

// The server's cache budget counts KV pages at the dtype they hold: bf16 pages (the GPU's) are half an fp32 page,
// so the same --cache-memory holds twice the tokens.
TEST(BenchDepth, KvPagesAreCountedAtTheirDtype) {
  const ModelConfig c = preset_config("llama-3.1-8b");
  EXPECT_EQ(HybridCache::bytes_per_block(c, 16, DType::BF16), size_t(32) * 2 * 16 * 8 * 128 * 2);  // 128 KiB/token
  EXPECT_EQ(HybridCache::bytes_per_block(c, 16, DType::F32), 2 * HybridCache::bytes_per_block(c, 16, DType::BF16));
  const double gib = double(1u << 30);
  const CacheSizes f = Engine::cache_sizes(c, 16, 8192, 10 * gib, 0, 0, DType::F32);
  const CacheSizes b = Engine::cache_sizes(c, 16, 8192, 10 * gib, 0, 0, DType::BF16);
  EXPECT_EQ(b.n_blocks, 2 * f.n_blocks);
  EXPECT_EQ(b.n_blocks, 10 * 1024 / 2);  // 10 GiB of 2 MiB pages (under 16 sequences × 512 pages)
}

// Decode at depth: the rows say synthetic cache, time each step, and leave out what the budget cannot hold.
TEST(BenchDepth, SyntheticCacheRowsAndTheBudget) {
  const std::string dir = temp_dir("bamba_bench_depth"), js = dir + "/b.json";
  // tiny: 2 attention layers × 2 × 16 tokens × 2 KV heads × 16 dims × 4 bytes = 8 KiB per page (fp32 on the CPU).
  auto r = run_bamba("bench --preset tiny --device cpu --reps 1 --steps 3 --tests decode3@200,decode64@1000,tg2 "
                     "--cache-memory 0.004 --json " + js);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("synthetic cache"), std::string::npos) << r.out;
  json j = json::parse(read_text_file(js));
  ASSERT_EQ(j["rows"].size(), 3u);
  const json& a = j["rows"][0];
  EXPECT_EQ(a["test"], "decode3@200");
  EXPECT_EQ(a["synthetic_cache"], true);
  EXPECT_EQ(a["n_seqs"], 3);
  EXPECT_EQ(a["depth"], 200);
  EXPECT_GT(a["mean"].get<double>(), 0.0);
  EXPECT_GT(a["step_ms_p50"].get<double>(), 0.0);
  EXPECT_GE(a["step_ms_p99"].get<double>(), a["step_ms_p50"].get<double>());
  // 64 sequences of ~1000 tokens do not fit 4 MiB: fewer ran, and the note says how many of how many.
  const json& b = j["rows"][1];
  EXPECT_EQ(b["requested_seqs"], 64);
  EXPECT_GT(b["n_seqs"].get<int>(), 0);
  EXPECT_LT(b["n_seqs"].get<int>(), 64);
  EXPECT_NE(b["note"].get<std::string>().find(" of 64 fit"), std::string::npos) << b["note"];
  EXPECT_FALSE(j["rows"][2].contains("synthetic_cache"));  // tg2 is a real decode after a real prompt
  // The same with the transformer preset (no state slots, KV only).
  r = run_bamba("bench --preset tiny-llama --device cpu --reps 1 --steps 2 --tests decode2@100 --json " + js);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_GT(json::parse(read_text_file(js))["rows"][0]["mean"].get<double>(), 0.0);
  r = run_bamba("bench --preset tiny --device cpu --tests decode4@x --json " + js);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("decodeS@C"), std::string::npos) << r.err;
  std::filesystem::remove_all(dir);
}

// The matrix on two tiny models: every depth cell ran, the served cells sent prompts of exactly C token ids,
// cells over --serve-max-tokens are marked, and the table and chart are written.
TEST(BenchMatrix, TinyHybridVsTinyTransformerEndToEnd) {
  const std::string dir = temp_dir("bamba_bench_matrix");
  auto r = run_bamba("bench-matrix --models tiny,tiny-llama --streams 1,3 --contexts 40,200 --device cpu "
                     "--output-len 4 --depth-steps 2 --cell-cap 20 --cache-memory 0.05 --serve-max-tokens 300 "
                     "--out " + dir);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  json j = json::parse(read_text_file(dir + "/matrix.json"));
  ASSERT_EQ(j["cells"].size(), 8u);
  for (const json& c : j["cells"]) {
    const int s = c["streams"], ctx = c["context"];
    EXPECT_TRUE(c["depth"]["ran"].get<bool>()) << c.dump();
    EXPECT_EQ(c["depth"]["seqs_run"], s) << c.dump();
    if (s * ctx > 300) {
      EXPECT_FALSE(c["serve"]["ran"].get<bool>()) << c.dump();
      EXPECT_NE(c["serve"]["skipped"].get<std::string>().find("--serve-max-tokens"), std::string::npos);
      continue;
    }
    ASSERT_TRUE(c["serve"]["ran"].get<bool>()) << c.dump();
    EXPECT_EQ(c["serve"]["completed"], s) << c.dump();
    EXPECT_EQ(c["serve"]["failed"], 0) << c.dump();
    EXPECT_GT(c["serve"]["output_tok_s"].get<double>(), 0.0);
    // bench-serve's own record of the cell: S prompts of exactly C tokens, S × output-len tokens back.
    const std::string model = c["model"];
    json cell = json::parse(read_text_file(dir + "/serve-" + model + "-" + std::to_string(s) + "x" +
                                           std::to_string(ctx) + ".json"));
    EXPECT_EQ(cell["total_input_tokens"], s * ctx);
    EXPECT_EQ(cell["server_prompt_tokens"], s * ctx);  // the server took the token ids as they were, no BOS added
    EXPECT_EQ(cell["total_output_tokens"], s * 4);
    EXPECT_TRUE(cell["max_running"].is_number());
  }
  const std::string md = read_text_file(dir + "/matrix.md");
  for (const char* want : {"synthetic cache", "| 40 | 3 |", "tiny / tiny-llama", "over --serve-max-tokens"})
    EXPECT_NE(md.find(want), std::string::npos) << want << "\n" << md;
  EXPECT_EQ(r.out, md);
  const std::string svg = read_text_file(dir + "/matrix.svg");
  EXPECT_EQ(svg.rfind("<svg", 0), 0u);
  EXPECT_NE(svg.find("context 200"), std::string::npos);
  EXPECT_NE(svg.find("<polyline"), std::string::npos);
  EXPECT_NE(svg.find("</svg>"), std::string::npos);
  std::filesystem::remove_all(dir);
}

// bench-serve's --max-duration: requests still streaming at the cap are cut (counted apart, not failures), and
// the server frees them.
TEST(BenchMatrix, CellCapCutsLongRequests) {
  const std::string dir = temp_dir("bamba_bench_matrix_cap");
  auto r = run_bamba("bench-matrix --models tiny --streams 2 --contexts 16 --device cpu --modes serve "
                     "--output-len 100000 --cell-cap 1 --cache-memory 0.2 --out " + dir);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  json c = json::parse(read_text_file(dir + "/matrix.json"))["cells"][0];
  EXPECT_TRUE(c["serve"]["ran"].get<bool>()) << c.dump();
  EXPECT_EQ(c["serve"]["cut"], 2) << c.dump();
  EXPECT_EQ(c["serve"]["failed"], 0) << c.dump();
  EXPECT_GT(c["serve"]["output_tok_s"].get<double>(), 0.0) << c.dump();
  EXPECT_FALSE(c["depth"]["ran"].get<bool>());  // --modes serve
  std::filesystem::remove_all(dir);
}

TEST(BenchMatrix, BadOptionsFailClearly) {
  auto r = run_bamba("bench-matrix --models tiny,llama-70b --device cpu --out /tmp/never");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("unknown preset \"llama-70b\""), std::string::npos) << r.err;
  r = run_bamba("bench-matrix --models tiny --streams 1,x --device cpu --out /tmp/never");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("--streams: \"x\""), std::string::npos) << r.err;
  r = run_bamba("bench-matrix --models tiny,tiny --device cpu --out /tmp/never");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("twice"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace bamba
