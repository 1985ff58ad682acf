#include "fixture_runner.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <nlohmann/json.hpp>

#include "core/mapped_file.h"
#include "io/safetensors.h"
#include "test_util.h"

namespace bamba::test {
namespace {

std::vector<float> to_f32(const TensorInfo& t) {
  std::vector<float> v(size_t(t.numel()));
  convert_to_f32(t.data, t.dtype, v.size(), v.data());
  return v;
}
std::vector<int32_t> to_i32(const TensorInfo& t) {
  EXPECT_EQ(t.dtype, DType::I32) << t.name;
  std::vector<int32_t> v(size_t(t.numel()));
  std::memcpy(v.data(), t.data, v.size() * 4);
  return v;
}

}  // namespace

std::vector<FixtureSequence> load_fixture_sequences(const std::string& dir, int64_t n_layers) {
  SafetensorsFile f(dir + "/expected.safetensors");
  auto meta = nlohmann::json::parse(read_text_file(dir + "/expected.json"));
  std::vector<FixtureSequence> out;
  for (auto& sq : meta["sequences"]) {
    FixtureSequence e;
    const std::string p = "seq" + std::to_string(sq["index"].get<int>()) + ".";
    e.ids = to_i32(*f.find(p + "input_ids"));
    if (auto* pos = f.find(p + "logits_positions")) {
      e.logit_positions = to_i32(*pos);
      e.logits = to_f32(*f.find(p + "logits_at"));
    } else {
      for (int32_t t = 0; t < int32_t(e.ids.size()); ++t) e.logit_positions.push_back(t);
      e.logits = to_f32(*f.find(p + "logits"));
    }
    if (n_layers >= 0) {
      std::vector<std::string> names = {"embed", "final_norm"};
      for (int64_t i = 0; i < n_layers; ++i) names.push_back("layer" + std::to_string(i));
      for (auto& n : names) e.acts[n] = to_f32(*f.find(p + n));
    }
    // The family fixtures also record greedy by repeated full forwards: the reference (HF's cache path has
    // quirks for some types, e.g. Mamba2 and Zamba2 decode, see docs/family.md).
    if (sq.contains("greedy_nocache_tokens")) {
      e.greedy = sq["greedy_nocache_tokens"].get<std::vector<int32_t>>();
      e.margins = sq["greedy_margins"].get<std::vector<double>>();
    } else if (sq.contains("greedy_new_tokens")) {
      e.greedy = sq["greedy_new_tokens"].get<std::vector<int32_t>>();
      e.margins = sq["greedy_margins"].get<std::vector<double>>();
    }
    out.push_back(std::move(e));
  }
  return out;
}

std::string fixture_model_dir(const std::string& name) {
  // A fixture not there (a GPU run carries only some of them) is "" for the caller to skip, not a failure.
  if (std::find(kFamilyModels.begin(), kFamilyModels.end(), name) == kFamilyModels.end())
    return file_exists(model_dir(name) + "/config.json") ? model_dir(name) : "";
  std::vector<std::string> dirs = {std::string(BAMBA_SOURCE_DIR) + "/tests/data/family/" + name};
  if (const char* e = std::getenv("BAMBA_FAMILY_FIXTURES"); e && *e) {
    dirs.push_back(std::string(e) + "/" + name);
    dirs.push_back(std::string(e) + "/models/" + name);
  }
  for (auto& d : dirs)
    if (file_exists(d + "/expected.safetensors")) return d;
  return "";
}

std::vector<int32_t> prefill_then_decode_cuts(int32_t prefix, int32_t T) {
  std::vector<int32_t> cuts;
  for (int32_t t = prefix; t <= T; ++t) cuts.push_back(t);
  return cuts;
}

std::vector<std::vector<int32_t>> chunked_prefill_plans(int32_t Q, int32_t T) {
  const std::vector<std::vector<int32_t>> splits = {
      {Q - 1, Q + 1, 2 * Q + 3}, {Q, 2 * Q}, {3, Q + 5, Q + 6}, {1, 2, Q}, {T / 3, 2 * T / 3}, {Q / 2, Q / 2 + Q}};
  std::vector<std::vector<int32_t>> plans;
  for (auto& split : splits) {
    std::vector<int32_t> cuts;
    for (int32_t c : split)
      if (c > 0 && c < T && (cuts.empty() || c > cuts.back())) cuts.push_back(c);
    cuts.push_back(T);
    plans.push_back(std::move(cuts));
  }
  return plans;
}

FixtureRunner::FixtureRunner(const std::string& model_dir, std::unique_ptr<Backend> backend, bool with_activations)
    : be(std::move(backend)) {
  model = std::make_unique<HybridModel>(load_model(model_dir, *be));
  seqs = load_fixture_sequences(model_dir, with_activations ? model->config().num_hidden_layers : -1);
  int32_t max_len = 0, total = 0;
  for (auto& e : seqs) {
    max_len = std::max(max_len, int32_t(e.ids.size()) + 16);
    total += int32_t(e.ids.size());
  }
  cache = std::make_unique<HybridCache>(model->config(), *be,
                                        HybridCache::sizes_for(model->config(), int32_t(seqs.size()), max_len, 8));
  ws = std::make_unique<Workspace>(model->config(), *be, total, total);
}

std::vector<float> FixtureRunner::run_pieces(const std::vector<int32_t>& ids, const std::vector<int32_t>& cuts) {
  SeqCache sc;
  std::vector<float> all(ids.size() * size_t(V()));
  int32_t begin = 0;
  for (int32_t end : cuts) {
    EXPECT_TRUE(cache->reserve(sc, end));
    StepBatch b;
    b.add(std::span(ids).subspan(size_t(begin), size_t(end - begin)), begin, sc.slot, sc.blocks, true);
    Tensor lg = model->forward(b, *cache, *ws);
    be->to_host_f32(lg, all.data() + size_t(begin) * size_t(V()));
    begin = end;
  }
  cache->release(sc);
  return all;
}

}  // namespace bamba::test
