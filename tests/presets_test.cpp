// Preset shapes (model/presets.h): each parses through the config code a downloaded folder goes through, with the
// published size.
#include "model/presets.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "core/error.h"

namespace bamba {
namespace {

TEST(Presets, EveryPresetParsesWithItsPublishedSize) {
  for (const std::string& n : preset_names()) EXPECT_NO_THROW(preset_config(n)) << n;
  // Llama-3.1-8B's parameter count as Meta and HF report it, exactly.
  EXPECT_EQ(preset_config("llama-3.1-8b").parameter_count(), 8030261248);
  const ModelConfig g = preset_config("granite-4.0-h-tiny"), n = preset_config("nemotron-h-8b");
  EXPECT_EQ(g.model_type, "granitemoehybrid");
  EXPECT_EQ(g.n_attention_layers(), 4);
  EXPECT_NEAR(double(g.parameter_count()), 6.9e9, 0.3e9);  // "7B total, 1B active"
  const double active = double(g.parameter_count()) - double(g.routed_expert_parameter_count()) *
                                                          (1.0 - double(g.num_experts_per_tok) / double(g.num_experts));
  // "1B active" is IBM's rounding: 40 layers × (6 of 64 experts 14.2 M + shared MLP 4.7 M) + 36 Mamba mixers
  // × 14.6 M + 4 attention blocks × 7.1 M + the tied embeddings 154 M ≈ 1.46 B.
  EXPECT_NEAR(active, 1.46e9, 0.05e9);
  EXPECT_EQ(n.routed_expert_parameter_count(), 0);  // Nemotron-H-8B is dense
  EXPECT_EQ(n.model_type, "nemotron_h");
  EXPECT_EQ(n.n_attention_layers(), 4);
  EXPECT_EQ(n.n_mamba_layers(), 24);
  EXPECT_NEAR(double(n.parameter_count()), 8.1e9, 0.3e9);
  EXPECT_NEAR(double(preset_config("bamba-9b").parameter_count()), 9.78e9, 0.05e9);
  // The config.json `bamba init` writes spells what the published one does where other engines read it:
  // llama.cpp's converter takes Nemotron-H's RMS epsilon from rms_norm_eps only (without it the GGUF does not load).
  const auto nj = nlohmann::json::parse(preset_config_json("nemotron-h-8b"));
  EXPECT_EQ(nj.value("rms_norm_eps", 0.0), 1e-5);
  EXPECT_EQ(nj.value("layer_norm_epsilon", 0.0), 1e-5);
  EXPECT_EQ(nj.value("attention_head_dim", 0), 128);
  EXPECT_EQ(n.head_dim, 128);
  try {
    preset_config("llama-70b");
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("unknown preset \"llama-70b\" (expected one of: tiny, bamba-9b"),
              std::string::npos);
  }
}

}  // namespace
}  // namespace bamba
