// Bad inputs for the loaders: every corrupt safetensors file, checkpoint folder and config.json must end in a
// bamba::Error whose message names the file / tensor / field and says what was expected -- never a crash.
// Folders are built at test time in temp dirs from copies of the fixtures, then corrupted.
// Also the positive edge cases of the same parsers (5.x config spellings, writer round trips, dtype conversions).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>

#include "backend/backend.h"
#include "core/error.h"
#include "core/mapped_file.h"
#include "io/checkpoint.h"
#include "io/safetensors.h"
#include "model/config.h"
#include "model/hybrid.h"
#include "fixture_runner.h"
#include "test_util.h"

namespace bamba {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

// The message of the bamba::Error that f throws; a test failure if it returns or throws anything else.
template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "threw a non-bamba exception: " << e.what();
    return "";
  }
  ADD_FAILURE() << "no error thrown";
  return "";
}

// EXPECT_ERROR(statement, "substring", ...): the statement throws a bamba::Error naming every substring.
#define EXPECT_ERROR(stmt, ...)                                                         \
  do {                                                                                  \
    const std::string msg_ = error_of([&] { stmt; });                                   \
    for (const std::string& s_ : std::vector<std::string>{__VA_ARGS__})                 \
      EXPECT_NE(msg_.find(s_), std::string::npos) << "message: " << msg_ << "\nlacks: " << s_; \
  } while (0)

struct TempDir {
  std::string path = test::make_temp_dir("bad-input");
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string operator/(const std::string& f) const { return path + "/" + f; }
};

// Copies fixture model `name` (config and weights, not the expected outputs) into `dir`, writable.
void copy_fixture(const std::string& name, const TempDir& dir) {
  for (auto& e : fs::directory_iterator(test::model_dir(name))) {
    std::string f = e.path().filename().string();
    if (f.rfind("expected", 0) == 0) continue;
    fs::copy_file(e.path(), dir / f);
    fs::permissions(dir / f, fs::perms::owner_write, fs::perm_options::add);
  }
}

std::string slurp(const std::string& path) { return read_text_file(path); }
void spit(const std::string& path, const std::string& text) { std::ofstream(path, std::ios::binary) << text; }

// A checkpoint file's tensors as plain values, to edit and write back.
struct RawTensor {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  std::vector<unsigned char> bytes;
};
std::vector<RawTensor> read_tensors(const std::string& path) {
  SafetensorsFile f(path);
  std::vector<RawTensor> out;
  for (auto& t : f.tensors()) out.push_back({t.name, t.dtype, t.shape, {t.data, t.data + t.nbytes}});
  return out;
}
void write_tensors(const std::string& path, const std::vector<RawTensor>& ts) {
  std::vector<TensorData> td;
  for (auto& t : ts) td.push_back({t.name, t.dtype, t.shape, t.bytes.data()});
  write_safetensors(path, td);
}
RawTensor& find(std::vector<RawTensor>& ts, const std::string& name) {
  for (auto& t : ts)
    if (t.name == name) return t;
  throw std::runtime_error("test bug: no tensor " + name);
}

void load(const std::string& dir) {
  auto be = make_cpu_backend();
  HybridModel m = load_model(dir, *be);
}

// A safetensors image: 8-byte little-endian header length (or `len`), the header text, then data_bytes zeros.
std::vector<unsigned char> st_image(const std::string& header, size_t data_bytes, uint64_t len = UINT64_MAX) {
  if (len == UINT64_MAX) len = header.size();
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[size_t(i)] = char(uint8_t(len >> (8 * i)));
  s += header;
  s.resize(s.size() + data_bytes);
  return {s.begin(), s.end()};
}
SafetensorsHeader parse(const std::vector<unsigned char>& img) {
  return parse_safetensors(img.data(), img.size(), "t.safetensors");
}
SafetensorsHeader parse(const std::string& header, size_t data_bytes) { return parse(st_image(header, data_bytes)); }

// ---------------------------------------------------------------------------------------------------------------
// safetensors

TEST(BadSafetensors, ShorterThanTheLengthField) {
  EXPECT_ERROR(parse(std::vector<unsigned char>{1, 2, 3}), "t.safetensors", "truncated", "3 bytes",
               "8-byte header length");
  EXPECT_ERROR(parse(std::vector<unsigned char>{}), "t.safetensors", "truncated", "0 bytes");
}

TEST(BadSafetensors, HeaderLengthPastTheEnd) {
  EXPECT_ERROR(parse(st_image("{}", 0, 1000)), "t.safetensors", "header length 1000", "past the end", "10 bytes");
  EXPECT_ERROR(parse(st_image("{}", 0, UINT64_MAX - 3)), "t.safetensors", "header length", "100 MB");
}

TEST(BadSafetensors, DataCutShort) {
  EXPECT_ERROR(parse(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", 10), "t.safetensors",
               "tensor \"a\"", "data_offsets [0, 16]", "data region of 10 bytes", "truncated");
}

TEST(BadSafetensors, HeaderNotJson) {
  EXPECT_ERROR(parse(R"({"a":{"dtype":"F32",)", 0), "t.safetensors", "header is not valid JSON");
  EXPECT_ERROR(parse(std::string("{\"a\xff\":1}"), 0), "t.safetensors", "not valid JSON");  // bad UTF-8
}

TEST(BadSafetensors, HeaderNotAnObject) {
  EXPECT_ERROR(parse("[1, 2]", 0), "t.safetensors", "header must be a JSON object");
  EXPECT_ERROR(parse(R"("x")", 0), "must be a JSON object");
  EXPECT_ERROR(parse(R"({"a": 3})", 0), "tensor \"a\"", "header entry must be an object");
}

TEST(BadSafetensors, EntryMissingAField) {
  EXPECT_ERROR(parse(R"({"w":{"shape":[1],"data_offsets":[0,4]}})", 4), "t.safetensors", "tensor \"w\"",
               "\"dtype\"");
  EXPECT_ERROR(parse(R"({"w":{"dtype":"F32","data_offsets":[0,4]}})", 4), "tensor \"w\"", "\"shape\"");
  EXPECT_ERROR(parse(R"({"w":{"dtype":"F32","shape":[1]}})", 4), "tensor \"w\"", "\"data_offsets\"",
               "[begin, end]");
  EXPECT_ERROR(parse(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0]}})", 4), "tensor \"w\"",
               "\"data_offsets\" must be [begin, end]");
  EXPECT_ERROR(parse(R"({"w":{"dtype":7,"shape":[1],"data_offsets":[0,4]}})", 4), "tensor \"w\"", "\"dtype\"");
}

TEST(BadSafetensors, UnknownDtype) {
  EXPECT_ERROR(parse(R"({"w":{"dtype":"F8_E9","shape":[1],"data_offsets":[0,1]}})", 1), "t.safetensors",
               "tensor \"w\"", "unknown dtype \"F8_E9\"", "expected", "BF16");
}

TEST(BadSafetensors, BadShape) {
  EXPECT_ERROR(parse(R"({"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", 4), "tensor \"w\"",
               "non-negative integers", "-1");
  EXPECT_ERROR(parse(R"({"w":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}})", 4), "tensor \"w\"",
               "non-negative integers", "1.5");
  EXPECT_ERROR(parse(R"({"w":{"dtype":"F32","shape":["2"],"data_offsets":[0,8]}})", 8), "non-negative integers");
  EXPECT_ERROR(parse(R"({"w":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,4]}})", 4),
               "tensor \"w\"", "too large");
}

TEST(BadSafetensors, OffsetsOutOfRange) {
  EXPECT_ERROR(parse(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", 8), "tensor \"w\"",
               "data_offsets [4, 12]", "outside the data region of 8 bytes");
  EXPECT_ERROR(parse(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[-4,4]}})", 8), "tensor \"w\"",
               "data_offsets", "non-negative integers");
  EXPECT_ERROR(parse(R"({"w":{"dtype":"U8","shape":[0],"data_offsets":[18446744073709551615,18446744073709551615]}})", 8),
               "tensor \"w\"", "outside the data region");
}

TEST(BadSafetensors, BeginAfterEnd) {
  EXPECT_ERROR(parse(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[8,4]}})", 8), "t.safetensors",
               "tensor \"w\"", "data_offsets [8, 4]", "begin after end");
}

TEST(BadSafetensors, OverlappingTensors) {
  EXPECT_ERROR(parse(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},
                         "b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", 12),
               "t.safetensors", "\"a\"", "\"b\"", "overlap");
  // b lies inside a, and an empty tensor sorts between them: still an overlap.
  EXPECT_ERROR(parse(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},
                         "z":{"dtype":"F32","shape":[0],"data_offsets":[4,4]},
                         "b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})", 16),
               "\"a\"", "\"b\"", "overlap");
  // Identical ranges.
  EXPECT_ERROR(parse(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},
                         "b":{"dtype":"I32","shape":[1],"data_offsets":[0,4]}})", 4),
               "\"a\"", "\"b\"", "overlap");
}

TEST(BadSafetensors, ByteCountNotShapeTimesDtype) {
  EXPECT_ERROR(parse(R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8), "t.safetensors",
               "tensor \"w\"", "holds 8 bytes", "F32 [3] needs 12");
  EXPECT_ERROR(parse(R"({"w":{"dtype":"BF16","shape":[2,2],"data_offsets":[0,4]}})", 8), "tensor \"w\"",
               "holds 4 bytes", "BF16 [2, 2] needs 8");
}

TEST(BadSafetensors, BadMetadata) {
  EXPECT_ERROR(parse(R"({"__metadata__":{"format":1}})", 0), "t.safetensors", "__metadata__[\"format\"]",
               "string");
  EXPECT_ERROR(parse(R"({"__metadata__":[1]})", 0), "__metadata__ must be an object");
}

TEST(BadSafetensors, FileErrorsNameThePath) {
  TempDir d;
  EXPECT_ERROR(SafetensorsFile(d / "none.safetensors"), d / "none.safetensors", "cannot open");
  spit(d / "short.safetensors", "abc");
  EXPECT_ERROR(SafetensorsFile(d / "short.safetensors"), d / "short.safetensors", "truncated");
  spit(d / "empty.safetensors", "");
  EXPECT_ERROR(SafetensorsFile(d / "empty.safetensors"), d / "empty.safetensors", "truncated");
  EXPECT_ERROR(SafetensorsFile(d.path), d.path, "not a regular file");
}

TEST(Safetensors, AcceptsEdgeCases) {
  // Empty header, zero-size tensors anywhere (even at the very end), trailing padding after the data.
  EXPECT_TRUE(parse("{}", 0).tensors.empty());
  auto h = parse(R"({"z":{"dtype":"F32","shape":[0,3],"data_offsets":[8,8]},
                     "a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},
                     "s":{"dtype":"I64","shape":[],"data_offsets":[8,16]}})", 24);
  ASSERT_EQ(h.tensors.size(), 3u);
  EXPECT_EQ(h.tensors[0].name, "a");
  EXPECT_EQ(h.tensors[2].name, "s");
  EXPECT_EQ(h.tensors[2].numel(), 1);
}

// ---------------------------------------------------------------------------------------------------------------
// checkpoint folders and weights

TEST(BadCheckpoint, MissingFolder) {
  TempDir d;
  const std::string dir = d / "no-such-model";
  EXPECT_ERROR(load(dir), dir, "no such model folder");
  EXPECT_ERROR(Checkpoint{dir}, dir, "no such model folder");
}

TEST(BadCheckpoint, MissingConfig) {
  TempDir d;
  copy_fixture("bamba-tiny-b", d);
  fs::remove(d / "config.json");
  EXPECT_ERROR(load(d.path), d.path, "missing config.json");
}

TEST(BadCheckpoint, BadConfigNamesItsPath) {
  TempDir d;
  copy_fixture("bamba-tiny-b", d);
  spit(d / "config.json", "{\"model_type\": \"bamba\", \"hidden_size\": \"48\"}");
  EXPECT_ERROR(load(d.path), d / "config.json", "\"hidden_size\"", "integer");
}

TEST(BadCheckpoint, MissingWeights) {
  TempDir d;
  copy_fixture("bamba-tiny-b", d);
  fs::remove(d / "model.safetensors");
  EXPECT_ERROR(load(d.path), d.path, "no model.safetensors or model.safetensors.index.json");
}

TEST(BadCheckpoint, IndexNamesAMissingShard) {
  TempDir d;
  copy_fixture("bamba-tiny-a", d);
  fs::remove(d / "model-00004-of-00004.safetensors");
  EXPECT_ERROR(load(d.path), d / "model.safetensors.index.json", "shard \"model-00004-of-00004.safetensors\"",
               "does not exist");
}

TEST(BadCheckpoint, IndexNamesATensorItsShardLacks) {
  TempDir d;
  copy_fixture("bamba-tiny-a", d);
  json idx = json::parse(slurp(d / "model.safetensors.index.json"));
  ASSERT_EQ(idx["weight_map"]["lm_head.weight"], "model-00004-of-00004.safetensors");
  idx["weight_map"]["lm_head.weight"] = "model-00001-of-00004.safetensors";
  spit(d / "model.safetensors.index.json", idx.dump());
  EXPECT_ERROR(load(d.path), d / "model-00001-of-00004.safetensors", "missing tensor \"lm_head.weight\"",
               "model.safetensors.index.json");
}

TEST(BadCheckpoint, BadIndex) {
  TempDir d;
  copy_fixture("bamba-tiny-a", d);
  const std::string idx = d / "model.safetensors.index.json";
  spit(idx, "{\"weight_map\": ");
  EXPECT_ERROR(Checkpoint{d.path}, idx, "not a valid JSON object");
  spit(idx, R"({"metadata": {}})");
  EXPECT_ERROR(Checkpoint{d.path}, idx, "\"weight_map\"");
  spit(idx, R"({"weight_map": {"lm_head.weight": 4}})");
  EXPECT_ERROR(Checkpoint{d.path}, idx, "weight_map[\"lm_head.weight\"]", "file name");
  spit(idx, R"({"weight_map": {"lm_head.weight": "../model-00004-of-00004.safetensors"}})");
  EXPECT_ERROR(Checkpoint{d.path}, idx, "is not a file name in the folder");
}

TEST(BadCheckpoint, TruncatedShard) {
  TempDir d;
  copy_fixture("bamba-tiny-b", d);
  const std::string f = d / "model.safetensors";
  fs::resize_file(f, fs::file_size(f) / 2);
  EXPECT_ERROR(load(d.path), f, "tensor \"", "outside the data region", "truncated");
  fs::resize_file(f, 100);  // now the header itself is cut
  EXPECT_ERROR(load(d.path), f, "header length", "past the end");
}

TEST(BadWeights, IntegerTensorWhereAWeightIsExpected) {
  TempDir d;
  copy_fixture("bamba-tiny-b", d);
  auto ts = read_tensors(d / "model.safetensors");
  find(ts, "model.final_layernorm.weight").dtype = DType::I32;  // same byte count as F32
  write_tensors(d / "model.safetensors", ts);
  EXPECT_ERROR(load(d.path), d / "model.safetensors", "tensor \"model.final_layernorm.weight\"", "dtype I32",
               "expected F32, BF16 or F16");
}

TEST(BadWeights, WrongShape) {
  TempDir d;
  copy_fixture("bamba-tiny-b", d);
  auto ts = read_tensors(d / "model.safetensors");
  RawTensor& t = find(ts, "model.layers.2.mamba.out_proj.weight");
  ASSERT_EQ(t.shape, (std::vector<int64_t>{48, 96}));
  t.shape = {96, 48};  // transposed: same bytes, wrong layout
  write_tensors(d / "model.safetensors", ts);
  EXPECT_ERROR(load(d.path), d / "model.safetensors", "tensor \"model.layers.2.mamba.out_proj.weight\"",
               "shape [96, 48]", "expected [48, 96]", "config.json");
}

TEST(BadWeights, MissingTensor) {
  TempDir d;
  copy_fixture("bamba-tiny-b", d);
  auto ts = read_tensors(d / "model.safetensors");
  std::erase_if(ts, [](const RawTensor& t) { return t.name == "model.layers.3.mamba.D"; });
  write_tensors(d / "model.safetensors", ts);
  EXPECT_ERROR(load(d.path), d.path, "missing tensor \"model.layers.3.mamba.D\"", "expected [6]");
}

TEST(BadWeights, UnexpectedTensor) {
  TempDir d;
  copy_fixture("bamba-tiny-b", d);
  auto ts = read_tensors(d / "model.safetensors");
  ts.push_back({"model.layers.0.mamba.D", DType::F32, {6}, std::vector<unsigned char>(24)});  // layer 0 is attention
  write_tensors(d / "model.safetensors", ts);
  EXPECT_ERROR(load(d.path), d / "model.safetensors", "unexpected tensor \"model.layers.0.mamba.D\"",
               "attn_layer_indices");
}

TEST(BadWeights, ConfigDisagreesWithCheckpoint) {
  TempDir d;
  copy_fixture("bamba-tiny-b", d);
  json c = json::parse(slurp(d / "config.json"));
  c["hidden_size"] = 96;  // consistent config, but not this checkpoint's
  c["mamba_n_heads"] = 12;
  spit(d / "config.json", c.dump());
  EXPECT_ERROR(load(d.path), d / "model.safetensors", "tensor \"", "has shape", "expected", "96");
}

TEST(Weights, LoadsBf16AndF16Checkpoints) {
  for (DType dt : {DType::BF16, DType::F16}) {
    TempDir d;
    copy_fixture("bamba-tiny-b", d);
    auto ts = read_tensors(d / "model.safetensors");
    for (auto& t : ts) {
      std::vector<unsigned char> out(t.bytes.size() / 2);
      convert_from_f32(reinterpret_cast<const float*>(t.bytes.data()), t.bytes.size() / 4, dt, out.data());
      t.bytes = std::move(out);
      t.dtype = dt;
    }
    write_tensors(d / "model.safetensors", ts);
    EXPECT_NO_THROW(load(d.path)) << dtype_name(dt);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// config.json

json fixture_config(const std::string& name) { return json::parse(slurp(test::model_dir(name) + "/config.json")); }
ModelConfig parse(const json& j) { return parse_config(j.dump(), "cfg.json"); }

TEST(BadConfig, InvalidJson) {
  EXPECT_ERROR(parse_config("{\"model_type\": \"bamba\",", "cfg.json"), "cfg.json", "not valid JSON");
  EXPECT_ERROR(parse_config("", "cfg.json"), "cfg.json", "not valid JSON");
  EXPECT_ERROR(parse_config("[1]", "cfg.json"), "cfg.json", "expected a JSON object");
}

TEST(BadConfig, ModelType) {
  json j = fixture_config("bamba-tiny-b");
  j["model_type"] = "gpt2";
  EXPECT_ERROR(parse(j), "cfg.json", "model_type \"gpt2\" is not supported", "\"bamba\"", "\"nemotron_h\"");
  j.erase("model_type");
  EXPECT_ERROR(parse(j), "cfg.json", "missing field \"model_type\"", "\"bamba\"");
  j["model_type"] = 3;
  EXPECT_ERROR(parse(j), "cfg.json", "\"model_type\" must be a string");
}

// Bamba's relatives (docs/family.md): their own fields, each error naming the field.
TEST(BadConfig, FamilyModelTypes) {
  auto family = [](const std::string& name) {
    const std::string dir = test::fixture_model_dir(name);
    return dir.empty() ? json() : json::parse(slurp(dir + "/config.json"));
  };
  json n = family("nemotron_h");
  if (n.is_null()) GTEST_SKIP() << "family fixtures not found";
  n.erase("layers_block_type");
  n["hybrid_override_pattern"] = "M-*X";
  EXPECT_ERROR(parse(n), "cfg.json", "hybrid_override_pattern has 'X'");
  n["hybrid_override_pattern"] = "M-*EM";
  n["num_hidden_layers"] = 4;
  EXPECT_ERROR(parse(n), "cfg.json", "num_hidden_layers 4 differs from the 5 layer types");
  n["num_hidden_layers"] = 5;
  EXPECT_EQ(parse(n).mlp_kinds[3], MlpKind::MoE);
  n["moe_latent_size"] = 16;
  EXPECT_ERROR(parse(n), "cfg.json", "\"moe_latent_size\"");

  json f = family("falcon_h1");
  f["mamba_norm_before_gate"] = true;
  EXPECT_ERROR(parse(f), "cfg.json", "mamba_norm_before_gate");
  f["mamba_norm_before_gate"] = false;
  f["ssm_multipliers"] = {1.0, 2.0};
  EXPECT_ERROR(parse(f), "cfg.json", "\"ssm_multipliers\" must be a list of 5 numbers");

  json m = family("mamba2");
  m["num_heads"] = 7;
  EXPECT_ERROR(parse(m), "cfg.json", "must equal num_heads * head_dim");

  json l = family("llama3");
  l["rope_parameters"]["rope_type"] = "yarn";
  EXPECT_ERROR(parse(l), "cfg.json", "rope_type \"yarn\" is not supported", "\"llama3\"");
  l["rope_parameters"]["rope_type"] = "llama3";
  l["rope_parameters"]["high_freq_factor"] = 0.5;
  EXPECT_ERROR(parse(l), "cfg.json", "high_freq_factor > low_freq_factor");

  json g = family("granitemoehybrid-moe");
  g["num_experts_per_tok"] = 9;
  EXPECT_ERROR(parse(g), "cfg.json", "num_experts_per_tok 9 exceeds num_local_experts 4");
  g["num_experts_per_tok"] = 2;
  g["position_embedding_type"] = "alibi";
  EXPECT_ERROR(parse(g), "cfg.json", "\"position_embedding_type\" = \"alibi\"");

  json z = family("zamba2");
  z["layers_block_type"][1] = "attention";
  EXPECT_ERROR(parse(z), "cfg.json", "layers_block_type[1] = \"attention\"", "\"hybrid\"");
}

// Nemotron-H in transformers 5.x's module spelling ("model." prefix, experts stacked [E, F, H], and "embedding"
// for "embeddings" as older checkpoints have it) loads too, and
// computes the same logits as the hub spelling 5.17 saves; "mtp." tensors are skipped like transformers does.
TEST(BadConfig, NemotronHBothSpellings) {
  const std::string src = test::fixture_model_dir("nemotron_h");
  if (src.empty()) GTEST_SKIP() << "family fixtures not found";
  const std::string dir = test::make_temp_dir("nemotron-spelling");
  std::vector<RawTensor> in = read_tensors(src + "/model.safetensors"), out;
  std::map<std::string, RawTensor> stacks;  // merged experts by name
  for (RawTensor& t : in) {
    std::string n = t.name.rfind("backbone.", 0) == 0 ? "model." + t.name.substr(9) : t.name;
    const size_t e = n.find(".experts.");
    if (e != std::string::npos) {  // model.layers.3.mixer.experts.{e}.up_proj.weight -> ...experts.up_proj
      const size_t dot = n.find('.', e + 9);
      const std::string merged = n.substr(0, e) + ".experts." + n.substr(dot + 1, n.size() - dot - 1 - 7);
      RawTensor& m = stacks[merged];
      if (m.name.empty()) m = {merged, t.dtype, {0, t.shape[0], t.shape[1]}, {}};
      m.shape[0] += 1;  // experts are stored in order 0, 1, ... in the file's sorted header
      m.bytes.insert(m.bytes.end(), t.bytes.begin(), t.bytes.end());
      continue;
    }
    t.name = n == "model.embeddings.weight" ? "model.embedding.weight" : n;  // the older spelling, also read
    out.push_back(t);
  }
  for (auto& [n, t] : stacks) out.push_back(t);
  out.push_back({"mtp.layers.0.norm.weight", DType::F32, {2}, std::vector<unsigned char>(8)});
  write_tensors(dir + "/model.safetensors", out);
  spit(dir + "/config.json", slurp(src + "/config.json"));
  auto be = make_cpu_backend();
  HybridModel a = load_model(src, *be), b = load_model(dir, *be);
  auto logits = [&](const HybridModel& m) {
    HybridCache cache(m.config(), *be, HybridCache::sizes_for(m.config(), 1, 16));
    Workspace ws(m.config(), *be, 16, 16);
    SeqCache sc;
    EXPECT_TRUE(cache.reserve(sc, 6));
    StepBatch sb;
    std::vector<int32_t> ids = {5, 9, 200, 7, 31, 4};
    sb.add(ids, 0, sc.slot, sc.blocks, true);
    std::vector<float> v(6 * size_t(m.config().vocab_size));
    be->to_host_f32(m.forward(sb, cache, ws), v.data());
    return v;
  };
  EXPECT_EQ(logits(a), logits(b));
  std::filesystem::remove_all(dir);
}

// Falcon-H1 with mamba_rms_norm = false (the mixer output is y * silu(z), no norm): the checkpoint has no
// mamba.norm.weight, and one that has it is told it does not match.
TEST(BadConfig, FalconH1WithoutMambaNorm) {
  const std::string src = test::fixture_model_dir("falcon_h1");
  if (src.empty()) GTEST_SKIP() << "family fixtures not found";
  TempDir d;
  json cfg = json::parse(slurp(src + "/config.json"));
  cfg["mamba_rms_norm"] = false;
  spit(d.path + "/config.json", cfg.dump());
  std::vector<RawTensor> all = read_tensors(src + "/model.safetensors");
  write_tensors(d.path + "/model.safetensors", all);
  EXPECT_ERROR(load(d.path), "unexpected tensor \"model.layers.0.mamba.norm.weight\"");
  std::erase_if(all, [](const RawTensor& t) { return t.name.find("mamba.norm.weight") != std::string::npos; });
  write_tensors(d.path + "/model.safetensors", all);
  auto be = make_cpu_backend();
  HybridModel m = load_model(d.path, *be);
  EXPECT_FALSE(m.config().mamba_gated_norm);
  HybridCache cache(m.config(), *be, HybridCache::sizes_for(m.config(), 1, 16));
  Workspace ws(m.config(), *be, 16, 16);
  SeqCache sc;
  ASSERT_TRUE(cache.reserve(sc, 5));
  StepBatch b;
  std::vector<int32_t> ids = {3, 4, 5, 6, 7};
  b.add(ids, 0, sc.slot, sc.blocks, true);
  std::vector<float> v(5 * size_t(m.config().vocab_size));
  be->to_host_f32(m.forward(b, cache, ws), v.data());
  for (float x : v) ASSERT_TRUE(std::isfinite(x));
}

TEST(BadConfig, WrongFieldTypes) {
  json j = fixture_config("bamba-tiny-b");
  j["hidden_size"] = "48";
  EXPECT_ERROR(parse(j), "cfg.json", "field \"hidden_size\" must be an integer", "\"48\"");
  j = fixture_config("bamba-tiny-b");
  j["hidden_size"] = 48.5;
  EXPECT_ERROR(parse(j), "\"hidden_size\" must be an integer");
  j = fixture_config("bamba-tiny-b");
  j["num_hidden_layers"] = 0;
  EXPECT_ERROR(parse(j), "\"num_hidden_layers\" must be >= 1", "got 0");
  j = fixture_config("bamba-tiny-b");
  j["vocab_size"] = uint64_t(1) << 63;  // would wrap negative as an int64
  EXPECT_ERROR(parse(j), "\"vocab_size\" must be <= 2147483647", "got 9223372036854775808");
  j = fixture_config("bamba-tiny-b");
  j["tie_word_embeddings"] = "yes";
  EXPECT_ERROR(parse(j), "\"tie_word_embeddings\" must be true or false");
  j = fixture_config("bamba-tiny-b");
  j["rms_norm_eps"] = "small";
  EXPECT_ERROR(parse(j), "\"rms_norm_eps\" must be a number");
  j = fixture_config("bamba-tiny-b");
  j["eos_token_id"] = "2";
  EXPECT_ERROR(parse(j), "\"eos_token_id\" must be an integer or a list of integers");
}

TEST(BadConfig, HiddenNotDivisibleByHeads) {
  json j = fixture_config("bamba-tiny-b");
  j["hidden_size"] = 50;
  EXPECT_ERROR(parse(j), "cfg.json", "hidden_size 50 is not divisible by num_attention_heads 6");
}

TEST(BadConfig, MambaHeadsTimesHeadDim) {
  json j = fixture_config("bamba-tiny-b");
  j["mamba_n_heads"] = 5;
  EXPECT_ERROR(parse(j), "cfg.json", "mamba_n_heads 5 x mamba_d_head 16", "mamba_expand*hidden_size = 96");
  j = fixture_config("bamba-tiny-b");
  j["mamba_expand"] = 0;
  EXPECT_ERROR(parse(j), "cfg.json", "mamba_expand");
  for (const char* bad : {"NaN", "Infinity"}) {
    j["mamba_expand"] = {{"__float__", bad}};
    EXPECT_ERROR(parse(j), "cfg.json", "mamba_expand");
  }
  j["mamba_expand"] = 1e30;
  EXPECT_ERROR(parse(j), "cfg.json", "mamba_expand * hidden_size", "must be in [1, 2147483647]");
}

TEST(BadConfig, MambaHeadsNotDivisibleByGroups) {
  json j = fixture_config("bamba-tiny-b");
  j["mamba_n_groups"] = 4;
  EXPECT_ERROR(parse(j), "cfg.json", "mamba_n_heads 6 is not divisible by mamba_n_groups 4");
}

TEST(BadConfig, HeadsNotDivisibleByKvHeads) {
  json j = fixture_config("bamba-tiny-b");
  j["num_key_value_heads"] = 4;
  EXPECT_ERROR(parse(j), "cfg.json", "num_attention_heads 6 is not divisible by num_key_value_heads 4");
}

TEST(BadConfig, AttnLayerIndicesOutOfRange) {
  json j = fixture_config("bamba-tiny-b");
  j["attn_layer_indices"] = {0, 5};
  EXPECT_ERROR(parse(j), "cfg.json", "attn_layer_indices entry 5", "[0, 5)");
  j["attn_layer_indices"] = {-1};
  EXPECT_ERROR(parse(j), "attn_layer_indices entry -1", "[0, 5)");
  j["attn_layer_indices"] = {"1"};
  EXPECT_ERROR(parse(j), "attn_layer_indices entry \"1\"");
  j["attn_layer_indices"] = 1;
  EXPECT_ERROR(parse(j), "\"attn_layer_indices\" must be a list");
}

TEST(BadConfig, LayerTypes) {
  json j = fixture_config("bamba-tiny-b");
  j.erase("attn_layer_indices");
  j["layer_types"] = {"full_attention", "linear_attention", "conv", "linear_attention", "linear_attention"};
  EXPECT_ERROR(parse(j), "cfg.json", "layer_types[2] = \"conv\"", "\"full_attention\" or \"linear_attention\"");
  j["layer_types"] = {"full_attention", 1, "mamba", "mamba", "mamba"};
  EXPECT_ERROR(parse(j), "layer_types[1] = 1");
  j["layer_types"] = {"full_attention", "mamba"};
  EXPECT_ERROR(parse(j), "\"layer_types\"", "num_hidden_layers = 5");
  j["layer_types"] = "mamba";
  EXPECT_ERROR(parse(j), "\"layer_types\"", "list");
  // Both spellings present and disagreeing.
  j["layer_types"] = {"linear_attention", "full_attention", "mamba", "mamba", "mamba"};
  j["attn_layer_indices"] = {0};
  EXPECT_ERROR(parse(j), "\"layer_types\" and \"attn_layer_indices\" disagree");
}

TEST(BadConfig, TimeStepLimit) {
  json j = fixture_config("bamba-tiny-b");
  j["time_step_limit"] = {0.0};
  EXPECT_ERROR(parse(j), "cfg.json", "\"time_step_limit\" must be [min, max]");
  j["time_step_limit"] = "0,inf";
  EXPECT_ERROR(parse(j), "\"time_step_limit\" must be [min, max]");
  j["time_step_limit"] = {"0", 1.0};
  EXPECT_ERROR(parse(j), "\"time_step_limit[0]\" must be a number");
  j["time_step_limit"] = {0.0, {{"__float__", "lots"}}};
  EXPECT_ERROR(parse(j), "\"time_step_limit[1]\" must be a number", "lots");
  j["time_step_limit"] = {1.0, 0.5};
  EXPECT_ERROR(parse(j), "\"time_step_limit\" must have min <= max");
  j["time_step_limit"] = {{{"__float__", "NaN"}}, 1.0};
  EXPECT_ERROR(parse(j), "\"time_step_limit\" must have min <= max");
}

TEST(BadConfig, RopeType) {
  json j = fixture_config("bamba-tiny-b");
  j["rope_parameters"]["rope_type"] = "yarn";
  EXPECT_ERROR(parse(j), "cfg.json", "rope_type \"yarn\" is not supported", "\"default\"");
  j = fixture_config("bamba-tiny-b");
  j["rope_parameters"] = "default";
  EXPECT_ERROR(parse(j), "\"rope_parameters\" must be an object");
  j = fixture_config("bamba-tiny-a");
  j["rope_scaling"] = {{"type", "linear"}, {"factor", 2.0}};
  EXPECT_ERROR(parse(j), "\"rope_scaling\" is not supported");
  j["rope_scaling"] = nullptr;  // what HF writes for "none"
  EXPECT_NO_THROW(parse(j));
  j["rope_theta"] = -1;
  EXPECT_ERROR(parse(j), "rope_theta must be > 0");
}

TEST(BadConfig, UnsupportedDtype) {
  json j = fixture_config("bamba-tiny-b");
  j["dtype"] = "int8";
  EXPECT_ERROR(parse(j), "cfg.json", "\"dtype\" = \"int8\" is not a supported dtype", "bfloat16");
  j = fixture_config("bamba-tiny-a");
  j["torch_dtype"] = "float8_e4m3fn";
  EXPECT_ERROR(parse(j), "\"torch_dtype\" = \"float8_e4m3fn\"", "bfloat16");
}

TEST(BadConfig, OtherFields) {
  json j = fixture_config("bamba-tiny-b");
  j["hidden_act"] = "gelu";
  EXPECT_ERROR(parse(j), "\"hidden_act\" = \"gelu\" is not supported");
  j = fixture_config("bamba-tiny-b");
  j["rms_norm_eps"] = 0;
  EXPECT_ERROR(parse(j), "\"rms_norm_eps\" must be > 0");
  j = fixture_config("bamba-tiny-b");
  j["mamba_d_head"] = "big";
  EXPECT_ERROR(parse(j), "\"mamba_d_head\" must be an integer or \"auto\"");
  j["mamba_d_head"] = "auto";
  EXPECT_EQ(parse(j).mamba_d_head, 16);
  j = fixture_config("bamba-tiny-b");
  j["num_hidden_layers"] = 100000000;  // would size per-layer tables from a corrupt field
  j.erase("attn_layer_indices");
  EXPECT_ERROR(parse(j), "\"num_hidden_layers\" must be <= 65536");
  j = fixture_config("bamba-tiny-b");
  j["mamba_d_state"] = 2147483647;  // each field fits, but conv_dim() * mamba_d_conv would overflow int64
  j["mamba_d_conv"] = 2147483647;
  EXPECT_ERROR(parse(j), "cfg.json", "parameters (more than 2^48");
}

TEST(Config, Transformers5) {
  ModelConfig c = parse(fixture_config("bamba-tiny-b"));
  EXPECT_EQ(c.time_step_min, 0.f);
  EXPECT_TRUE(std::isinf(c.time_step_max) && c.time_step_max > 0);  // {"__float__": "Infinity"}
  EXPECT_EQ(c.dtype, DType::F32);
  EXPECT_EQ(c.rotary_dim, 4);  // head_dim 8 x the forced partial_rotary_factor 0.5
  EXPECT_EQ(c.layer_kinds, (std::vector<LayerKind>{LayerKind::Attention, LayerKind::Mamba, LayerKind::Mamba,
                                                   LayerKind::Mamba, LayerKind::Mamba}));
  EXPECT_EQ(c.source, "cfg.json");
}

// Python's json.dump writes non-finite floats bare; such a config.json loads (and the merge keeps it as is).
TEST(Config, BarePythonNonFiniteLiterals) {
  std::string text = fixture_config("bamba-tiny-b").dump();
  const std::string from = "{\"__float__\":\"Infinity\"}";
  ASSERT_NE(text.find(from), std::string::npos) << text;
  text.replace(text.find(from), from.size(), "Infinity");
  ModelConfig c = parse_config(text, "cfg.json");
  EXPECT_TRUE(std::isinf(c.time_step_max) && c.time_step_max > 0);
  auto j = fixture_config("bamba-tiny-b");
  j["mamba_expand"] = 2;
  text = j.dump();
  text.replace(text.find("\"mamba_expand\":2"), 16, "\"mamba_expand\":NaN");
  EXPECT_ERROR(parse_config(text, "cfg.json"), "cfg.json", "mamba_expand");
  text = j.dump();
  text.replace(text.find("\"hidden_size\":"), 14, "\"hidden_size\":-Infinity,\"x\":");
  EXPECT_ERROR(parse_config(text, "cfg.json"), "\"hidden_size\" must be an integer (got -Infinity)");
}

TEST(Config, LayerTypesSpellings) {
  json j = fixture_config("bamba-tiny-b");
  j.erase("attn_layer_indices");
  j["layer_types"] = {"linear_attention", "full_attention", "linear_attention", "full_attention", "linear_attention"};
  const std::vector<LayerKind> want{LayerKind::Mamba, LayerKind::Attention, LayerKind::Mamba, LayerKind::Attention,
                                    LayerKind::Mamba};
  EXPECT_EQ(parse(j).layer_kinds, want);
  j["layer_types"] = {"mamba", "attention", "mamba", "attention", "mamba"};  // 4.x spelling
  EXPECT_EQ(parse(j).layer_kinds, want);
  j.erase("layer_types");
  j["layers_block_type"] = {"mamba", "attention", "mamba", "attention", "mamba"};
  EXPECT_EQ(parse(j).layer_kinds, want);
  j["attn_layer_indices"] = {1, 3};  // agreeing duplicates are fine
  EXPECT_EQ(parse(j).layer_kinds, want);
}

TEST(Config, EosTokenIdList) {
  json j = fixture_config("bamba-tiny-b");
  j["eos_token_id"] = {2, 7};
  EXPECT_EQ(parse(j).eos_token_ids, (std::vector<int64_t>{2, 7}));
  j["eos_token_id"] = 5;
  EXPECT_EQ(parse(j).eos_token_ids, (std::vector<int64_t>{5}));
  j["eos_token_id"] = {2, "x"};
  EXPECT_ERROR(parse(j), "\"eos_token_id\" must be an integer or a list of integers");
}

TEST(Config, TorchDtype) {
  json j = fixture_config("bamba-tiny-a");  // 4.x: torch_dtype, rope_theta at the top level
  EXPECT_EQ(parse(j).dtype, DType::F32);
  j["torch_dtype"] = "bfloat16";
  EXPECT_EQ(parse(j).dtype, DType::BF16);
  j["torch_dtype"] = "torch.float16";
  EXPECT_EQ(parse(j).dtype, DType::F16);
  j["dtype"] = "float32";  // 5.x's name wins when both are present
  EXPECT_EQ(parse(j).dtype, DType::F32);
  EXPECT_EQ(parse(j).layer_kinds[1], LayerKind::Attention);
}

// ---------------------------------------------------------------------------------------------------------------
// writer round trips and dtype conversions

TEST(Safetensors, WriterRoundTrip) {
  TempDir d;
  const std::vector<float> f32{1.f, -2.5f, 3.25f, 0.f, -0.f, 1e-30f};
  const std::vector<uint16_t> bf16{0x3f80, 0xc020, 0x7f80, 0x0001, 0x7fc0};
  const std::vector<uint16_t> f16{0x3c00, 0xc100, 0x7c00, 0x0001, 0x7bff, 0x8000};
  const std::vector<int32_t> i32{-1, 0, 2147483647, -2147483647 - 1};
  const std::string path = d / "rt.safetensors";
  write_safetensors(path,
                    {{"f32", DType::F32, {2, 3}, f32.data()},
                     {"bf16", DType::BF16, {5}, bf16.data()},
                     {"empty", DType::F32, {0, 4}, nullptr},
                     {"f16", DType::F16, {3, 2}, f16.data()},
                     {"i32", DType::I32, {4}, i32.data()},
                     {"scalar", DType::I32, {}, i32.data()}},
                    {{"format", "pt"}, {"note", "a \"quoted\" value"}});
  EXPECT_FALSE(file_exists(path + ".tmp"));
  SafetensorsFile f(path);
  EXPECT_EQ(f.metadata(), (std::map<std::string, std::string>{{"format", "pt"}, {"note", "a \"quoted\" value"}}));
  ASSERT_EQ(f.tensors().size(), 6u);
  auto check = [&](const char* name, DType dt, std::vector<int64_t> shape, const void* want, size_t nbytes) {
    const TensorInfo* t = f.find(name);
    ASSERT_NE(t, nullptr) << name;
    EXPECT_EQ(t->dtype, dt) << name;
    EXPECT_EQ(t->shape, shape) << name;
    ASSERT_EQ(t->nbytes, nbytes) << name;
    if (nbytes) {
      EXPECT_EQ(std::memcmp(t->data, want, nbytes), 0) << name;
    }
    EXPECT_EQ(t->file, path);
  };
  check("f32", DType::F32, {2, 3}, f32.data(), 24);
  check("bf16", DType::BF16, {5}, bf16.data(), 10);
  check("empty", DType::F32, {0, 4}, nullptr, 0);
  check("f16", DType::F16, {3, 2}, f16.data(), 12);
  check("i32", DType::I32, {4}, i32.data(), 16);
  check("scalar", DType::I32, {}, i32.data(), 4);
  EXPECT_EQ(f.find("nope"), nullptr);
  // The data region starts 8-byte aligned (the writer pads the header).
  const std::string raw = slurp(path);
  uint64_t hlen = 0;
  for (int i = 7; i >= 0; --i) hlen = hlen << 8 | uint8_t(raw[size_t(i)]);
  EXPECT_EQ((8 + hlen) % 8, 0u);
}

TEST(Safetensors, WriterMisuse) {
  TempDir d;
  const float x[2] = {1, 2};
  {
    SafetensorsWriter w(d / "a.safetensors");
    w.declare("a", DType::F32, {2});
    w.declare("b", DType::F32, {2});
    EXPECT_ERROR(w.write("b", x, 8), "tensor \"b\"", "out of declaration order");
    EXPECT_ERROR(w.write("a", x, 4), "tensor \"a\"", "4 bytes, declared 8");
    w.write("a", x, 8);
    EXPECT_ERROR(w.finish(), "1 tensors not written");
  }
  EXPECT_FALSE(file_exists(d / "a.safetensors"));      // never finished: nothing under the real name
  EXPECT_FALSE(file_exists(d / "a.safetensors.tmp"));  // and the temp file is cleaned up
}

float from_bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
uint32_t bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

// Every 16-bit pattern survives half -> f32 -> half (NaNs as some NaN).
template <typename ToF32, typename FromF32>
void expect_every_half_round_trips(ToF32 to_f32, FromF32 from_f32) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const float f = to_f32(uint16_t(h));
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(to_f32(from_f32(f)))) << h;
    } else {
      EXPECT_EQ(from_f32(f), h) << std::hex << h;
    }
  }
}

TEST(DTypeConversion, F16KnownBitPatterns) {
  const float inf = std::numeric_limits<float>::infinity();
  const struct {
    float f;
    uint16_t h;
  } cases[] = {
      {0.f, 0x0000},          {-0.f, 0x8000},           {1.f, 0x3c00},           {-2.f, 0xc000},
      {0.5f, 0x3800},         {65504.f, 0x7bff},        {65519.f, 0x7bff},       {65520.f, 0x7c00},  // RNE to inf
      {1e6f, 0x7c00},         {inf, 0x7c00},            {-inf, 0xfc00},          {0.1f, 0x2e66},
      {0.333333343f, 0x3555}, {std::ldexp(1.f, -14), 0x0400},   // smallest normal
      {std::ldexp(1.f, -24), 0x0001},                           // smallest subnormal
      {std::ldexp(1023.f, -24), 0x03ff},                        // largest subnormal
      {std::ldexp(1.f, -25), 0x0000},                           // half the smallest subnormal: tie to even (0)
      {std::ldexp(3.f, -25), 0x0002},                           // 1.5 x 2^-24: tie to even (2)
      {std::ldexp(-1.f, -24), 0x8001}, {1e-10f, 0x0000},        // underflow to 0
      {1.00048828125f, 0x3c00},                                 // 1 + 2^-11: tie to even (down)
      {1.00146484375f, 0x3c02},                                 // 1 + 3 x 2^-11: tie to even (up)
  };
  for (auto& c : cases) EXPECT_EQ(f32_to_f16(c.f), c.h) << c.f;
  EXPECT_EQ(f16_to_f32(0x0001), std::ldexp(1.f, -24));
  EXPECT_EQ(f16_to_f32(0x03ff), std::ldexp(1023.f, -24));
  EXPECT_EQ(f16_to_f32(0x7bff), 65504.f);
  EXPECT_EQ(f16_to_f32(0x7c00), inf);
  EXPECT_EQ(f16_to_f32(0xfc00), -inf);
  EXPECT_EQ(bits(f16_to_f32(0x8000)), 0x80000000u);
  // NaN stays NaN (any payload), both ways.
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (float n : {nan, -nan, from_bits(0x7f800001)}) {  // including a signalling NaN
    uint16_t h = f32_to_f16(n);
    EXPECT_EQ(h & 0x7c00, 0x7c00);
    EXPECT_NE(h & 0x03ff, 0);
  }
  EXPECT_TRUE(std::isnan(f16_to_f32(0x7e00)));
  EXPECT_TRUE(std::isnan(f16_to_f32(0x7c01)));
  expect_every_half_round_trips(f16_to_f32, f32_to_f16);
}

TEST(DTypeConversion, Bf16) {
  const float inf = std::numeric_limits<float>::infinity();
  EXPECT_EQ(f32_to_bf16(1.f), 0x3f80);
  EXPECT_EQ(f32_to_bf16(-2.f), 0xc000);
  EXPECT_EQ(f32_to_bf16(inf), 0x7f80);
  EXPECT_EQ(f32_to_bf16(-inf), 0xff80);
  EXPECT_EQ(f32_to_bf16(from_bits(0x3f808000)), 0x3f80);  // tie to even: down
  EXPECT_EQ(f32_to_bf16(from_bits(0x3f818000)), 0x3f82);  // tie to even: up
  EXPECT_EQ(f32_to_bf16(from_bits(0x3f808001)), 0x3f81);
  EXPECT_EQ(f32_to_bf16(from_bits(0x7f7fffff)), 0x7f80);  // FLT_MAX rounds to inf, as torch does
  EXPECT_EQ(f32_to_bf16(from_bits(0x00000001)), 0x0000);  // tiny subnormal rounds to 0
  EXPECT_EQ(f32_to_bf16(from_bits(0x00010000)), 0x0001);  // bf16 subnormal kept
  EXPECT_EQ(bf16_to_f32(0x0001), from_bits(0x00010000));
  EXPECT_EQ(bf16_to_f32(0xff80), -inf);
  for (uint32_t n : {0x7fc00000u, 0xffc00000u, 0x7f800001u, 0x7fffffffu}) {  // NaNs, incl. signalling
    uint16_t h = f32_to_bf16(from_bits(n));
    EXPECT_TRUE(std::isnan(bf16_to_f32(h))) << std::hex << n;
    EXPECT_EQ(h & 0x8000, (n >> 16) & 0x8000);  // sign kept
  }
  expect_every_half_round_trips(bf16_to_f32, f32_to_bf16);
}

TEST(DTypeConversion, BulkAndUnaligned) {
  const std::vector<float> v{1.f, -0.f, 3.5f, std::numeric_limits<float>::infinity(), 0.1f};
  for (DType dt : {DType::F32, DType::BF16, DType::F16}) {
    std::vector<unsigned char> buf(1 + v.size() * dtype_size(dt));
    convert_from_f32(v.data(), v.size(), dt, buf.data() + 1);  // odd address, as in an mmap'd file
    std::vector<float> back(v.size());
    convert_to_f32(buf.data() + 1, dt, v.size(), back.data());
    for (size_t i = 0; i < 4; ++i) EXPECT_EQ(bits(back[i]), bits(v[i])) << dtype_name(dt) << " " << i;
  }
  float out[1] = {0};
  int32_t i = 1;
  EXPECT_ERROR(convert_to_f32(&i, DType::I32, 1, out), "I32", "F32, BF16, F16, F64, F8_E4M3 or I16");
  EXPECT_ERROR(convert_from_f32(out, 1, DType::I64, &i), "I64", "F32, BF16, F16 or I16");
}

}  // namespace
}  // namespace bamba
