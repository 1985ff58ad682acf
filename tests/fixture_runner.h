// The fixture models (../shared/fixtures/models) as both model suites use them: the reference sequences of
// expected.safetensors / expected.json, the model loaded on a backend with a cache and workspace for all of them
// at once, feeding a sequence in pieces, and the piece plans (prefill + decode, splits inside and across
// chunk_size boundaries). model_fixture_test.cpp holds the CPU to 1e-3 per element, cuda_model_test.cpp the GPU
// to 2e-2 relative L2 (docs/numerics.md).
#pragma once
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "model/hybrid.h"

namespace bamba::test {

// The fixture models both suites run, and their gtest parameter names ("bamba_tiny_a").
inline const std::vector<std::string> kFixtureModels = {"bamba-tiny-a", "bamba-tiny-b", "bamba-tiny-e2e"};
// Tiny random models of Bamba's relatives (docs/family.md; made by ../shared/fixtures/tools/gen_family_fixtures.py
// with transformers 5.17), kept as test data in tests/data/family/<name>.
inline const std::vector<std::string> kFamilyModels = {"mamba2",     "llama3",   "granitemoehybrid-dense-rope",
                                                       "granitemoehybrid-moe", "nemotron_h", "falcon_h1", "zamba2"};
// The folder of a fixture model: a family model in tests/data/family/<name>, else $BAMBA_FAMILY_FIXTURES/<name>
// (or .../models/<name>); "" if absent. The Bamba ones: model_dir(name).
std::string fixture_model_dir(const std::string& name);
inline std::string fixture_param_name(const std::string& model) {
  std::string s = model;
  for (char& c : s)
    if (c == '-') c = '_';
  return s;
}

struct FixtureSequence {
  std::vector<int32_t> ids;
  std::vector<int32_t> logit_positions;            // rows of logits we have references for
  std::vector<float> logits;                       // [logit_positions.size(), V]
  std::map<std::string, std::vector<float>> acts;  // embed, layerI, final_norm: [T, H] (when asked for)
  std::vector<int32_t> greedy;                     // may be empty (the no-cache reference when recorded)
  std::vector<double> margins;
};

// n_layers >= 0 also loads the per-layer activations.
std::vector<FixtureSequence> load_fixture_sequences(const std::string& dir, int64_t n_layers = -1);

// Piece ends (exclusive; the last is T) for prefilling `prefix` tokens and decoding the rest one by one.
std::vector<int32_t> prefill_then_decode_cuts(int32_t prefix, int32_t T);
// Piece-end lists for chunked prefill of a T-token sequence with chunk_size Q: splits just before, at and after
// chunk boundaries, tiny first pieces, and thirds.
std::vector<std::vector<int32_t>> chunked_prefill_plans(int32_t Q, int32_t T);

struct FixtureRunner {
  FixtureRunner(const std::string& model_dir, std::unique_ptr<Backend> backend, bool with_activations);
  int64_t V() const { return model->config().vocab_size; }
  // Feeds `ids` as one fresh sequence in pieces ending at `cuts`; returns logits for every position [T, V].
  std::vector<float> run_pieces(const std::vector<int32_t>& ids, const std::vector<int32_t>& cuts);

  std::unique_ptr<Backend> be;
  std::unique_ptr<HybridModel> model;
  std::vector<FixtureSequence> seqs;
  std::unique_ptr<HybridCache> cache;
  std::unique_ptr<Workspace> ws;
};

}  // namespace bamba::test
