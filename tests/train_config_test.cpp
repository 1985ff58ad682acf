// TrainConfig: defaults, every field read, and errors that name the line and field.
#include "train/train_config.h"

#include <gtest/gtest.h>

#include <string>

#include "core/error.h"
#include "model/config.h"

namespace bamba {
namespace {

std::string error_of(const std::string& yaml) {
  try {
    parse_train_config(yaml, "t.yml");
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(TrainConfig, EmptyFileGivesTheDefaults) {
  TrainConfig c = parse_train_config("", "t.yml");
  EXPECT_EQ(c.model_preset, "tiny");
  EXPECT_TRUE(c.model_path.empty());
  EXPECT_EQ(c.seq_len, 4096);
  EXPECT_EQ(c.batch_tokens, 4096);  // one micro-batch of one row
  EXPECT_EQ(c.accumulation_steps(), 1);
  EXPECT_EQ(c.steps, 1000);
  EXPECT_DOUBLE_EQ(c.lr, 3e-4);
  EXPECT_DOUBLE_EQ(c.beta2, 0.95);
  EXPECT_DOUBLE_EQ(c.weight_decay, 0.1);
  EXPECT_DOUBLE_EQ(c.grad_clip, 1.0);
  EXPECT_EQ(c.precision, Precision::Bf16Mixed);
  EXPECT_EQ(c.schedule, LrSchedule::Kind::Cosine);
  EXPECT_EQ(c.lr_schedule().warmup_steps, 50);  // min(2000, 1000/20)
  EXPECT_EQ(c.keep_last, 3);
  EXPECT_EQ(c.output, "train-out");
  EXPECT_TRUE(c.shuffle);
  EXPECT_EQ(c.packing, Packing::Continuous);
  EXPECT_EQ(c.eval_tokens, c.batch_tokens);
}

TEST(TrainConfig, ReadsEveryField) {
  TrainConfig c = parse_train_config(R"(
model: {path: /models/bamba, tokenizer: /models/tok}
data:
  - {name: web, path: /data/web, weight: 0.7}
  - {path: /data/code, weight: 0.3}
seq_len: 2048
micro_batch_size: 2
batch_tokens: 16384
tokens: 1.6e5
optimizer: {name: adamw, lr: 2e-5, betas: [0.8, 0.99], eps: 1e-6, weight_decay: 0.05, grad_clip: 0.5, no_decay: [embed]}
schedule: {name: wsd, warmup_steps: 2, warmup: linear, final_lr_ratio: 0, decay_steps: 3, decay_shape: sqrt}
precision: bf16-memory
activation_checkpointing: true
activation_checkpointing_layers: 20
loss_reduction: sum
z_loss: 1e-4
save_every: 5
eval_every: 2
keep_last: 0
save_dtype: bfloat16
max_shard_size: 2GB
output: out/run1
seed: 42
shuffle: false
packing: per-document
validation:
  - {name: held-out, path: /data/val}
eval_tokens: 8192
)",
                                     "t.yml");
  EXPECT_EQ(c.model_path, "/models/bamba");
  EXPECT_EQ(c.tokenizer_path, "/models/tok");
  ASSERT_EQ(c.data.size(), 2u);
  EXPECT_EQ(c.data[0].name, "web");
  EXPECT_EQ(c.data[1].name, "/data/code");  // the path when unnamed
  EXPECT_DOUBLE_EQ(c.data[1].weight, 0.3);
  EXPECT_EQ(c.accumulation_steps(), 4);  // 16384 / (2 · 2048)
  EXPECT_EQ(c.steps, 10);                // ceil(160000 / 16384)
  EXPECT_DOUBLE_EQ(c.lr, 2e-5);
  EXPECT_DOUBLE_EQ(c.beta1, 0.8);
  EXPECT_DOUBLE_EQ(c.beta2, 0.99);
  EXPECT_DOUBLE_EQ(c.eps, 1e-6);
  EXPECT_DOUBLE_EQ(c.grad_clip, 0.5);
  ASSERT_EQ(c.no_decay.size(), 1u);
  EXPECT_EQ(c.schedule, LrSchedule::Kind::Wsd);
  EXPECT_EQ(c.lr_schedule().decay_steps, 3);
  EXPECT_EQ(c.decay_shape, LrSchedule::DecayShape::Sqrt);
  EXPECT_EQ(c.warmup, LrSchedule::Warmup::Linear);
  EXPECT_EQ(c.precision, Precision::Bf16Memory);
  EXPECT_EQ(c.activation_checkpointing, Checkpointing::Full);
  EXPECT_EQ(c.checkpoint_layers, 20);
  EXPECT_TRUE(c.loss_sum);
  EXPECT_DOUBLE_EQ(c.z_loss, 1e-4);
  EXPECT_EQ(c.save_every, 5);
  EXPECT_EQ(c.eval_every, 2);
  EXPECT_EQ(c.keep_last, 0);
  EXPECT_EQ(c.save_dtype, "bfloat16");
  EXPECT_EQ(c.output, "out/run1");
  EXPECT_EQ(c.seed, 42u);
  EXPECT_FALSE(c.shuffle);
  EXPECT_EQ(c.packing, Packing::PerDocument);
  ASSERT_EQ(c.validation.size(), 1u);
  EXPECT_EQ(c.validation[0].name, "held-out");
  EXPECT_EQ(c.validation[0].path, "/data/val");
  EXPECT_EQ(c.eval_tokens, 8192);
}

TEST(TrainConfig, ErrorsNameTheLineAndField) {
  EXPECT_EQ(error_of("seq_len: 128\nlearning_rate: 1e-3\n").substr(0, 33), "t.yml:2: learning_rate: unknown f");
  EXPECT_NE(error_of("optimizer:\n  lr: 1e-3\n  momentum: 0.9\n").find("t.yml:3: optimizer.momentum: unknown field"),
            std::string::npos);
  EXPECT_NE(error_of("seq_len: lots\n").find("t.yml:1: seq_len: expected a number, got \"lots\""), std::string::npos);
  EXPECT_NE(error_of("seq_len: 12.5\n").find("seq_len: expected a whole number"), std::string::npos);
  EXPECT_NE(error_of("seq_len: 0\n").find("seq_len: 0 is out of range"), std::string::npos);
  EXPECT_NE(error_of("precision: fp8\n").find("t.yml:1: precision: unknown value \"fp8\" (expected one of: bf16-mixed"),
            std::string::npos);
  EXPECT_NE(error_of("seq_len: 100\nbatch_tokens: 250\n").find("t.yml:2: batch_tokens: 250 is not a multiple"),
            std::string::npos);
  EXPECT_NE(error_of("steps: 10\ntokens: 1000\n").find("tokens: give either steps or tokens"), std::string::npos);
  EXPECT_NE(error_of("data:\n  - {name: a, path: x}\n  - {name: a, path: y}\n")
                .find("t.yml:3: data[1].name: \"a\" appears twice"),
            std::string::npos);
  EXPECT_NE(error_of("data:\n  - {name: a}\n").find("data[0]: missing path"), std::string::npos);
  EXPECT_NE(error_of("data:\n  - {path: a, wieght: 2}\n").find("data[0].wieght: unknown field"), std::string::npos);
  EXPECT_NE(error_of("data: /x\n").find("data: expected a list"), std::string::npos);
  EXPECT_NE(error_of("optimizer: {betas: [0.9]}\n").find("optimizer.betas: expected [beta1, beta2]"),
            std::string::npos);
  EXPECT_NE(error_of("optimizer: {betas: [0.9, 1.5]}\n").find("optimizer.betas[1]: 1.5 is out of range"),
            std::string::npos);
  EXPECT_NE(error_of("optimizer: {name: sgd}\n").find("optimizer.name: unknown optimizer \"sgd\""), std::string::npos);
  EXPECT_NE(error_of("model: {preset: llama}\n").find("model.preset: unknown preset \"llama\""), std::string::npos);
  EXPECT_NE(error_of("model: {path: /m, preset: tiny}\n").find("give either model.path or model.preset"),
            std::string::npos);
  EXPECT_NE(error_of("model: {config: c.json, preset: tiny}\n").find("model.config: give one of model.path"),
            std::string::npos);
  EXPECT_NE(error_of("model: {config: c.json, path: /m}\n").find("model.config: give one of model.path"),
            std::string::npos);
  EXPECT_EQ(parse_train_config("model: {config: small.json}\n", "t.yml").model_config, "small.json");
  EXPECT_NE(error_of("steps: 10\nschedule: {warmup_steps: 20}\n").find("schedule.warmup_steps: 20 is more than the 10"),
            std::string::npos);
  EXPECT_NE(error_of("schedule: {name: cosine, decay_steps: 5}\n").find("only the wsd schedule reads it"),
            std::string::npos);
  EXPECT_NE(error_of("activation_checkpointing: maybe\n").find("expected true, false, full or selective, got \"maybe\""),
            std::string::npos);
  EXPECT_EQ(parse_train_config("activation_checkpointing: selective\n", "t.yml").activation_checkpointing,
            Checkpointing::Selective);
  EXPECT_EQ(parse_train_config("activation_checkpointing: full\n", "t.yml").activation_checkpointing,
            Checkpointing::Full);
  EXPECT_EQ(parse_train_config("activation_checkpointing: no\n", "t.yml").activation_checkpointing, Checkpointing::Off);
  EXPECT_EQ(parse_train_config("activation_checkpointing: off\n", "t.yml").activation_checkpointing, Checkpointing::Off);
  EXPECT_EQ(parse_train_config("", "t.yml").checkpoint_layers, -1);
  EXPECT_NE(error_of("activation_checkpointing_layers: -2\n").find("activation_checkpointing_layers"), std::string::npos);
  EXPECT_NE(error_of("activation_checkpointing_layers: some\n").find("activation_checkpointing_layers"), std::string::npos);
  EXPECT_NE(error_of("activation_checkpointing_layers: 2\n")
                .find("t.yml:1: activation_checkpointing_layers: only with activation_checkpointing"),
            std::string::npos);  // (checkpointing is off: it would do nothing)
  EXPECT_NE(error_of("max_shard_size: 5 parsecs\n").find("max_shard_size: size \"5 parsecs\""), std::string::npos);
  EXPECT_NE(error_of("seq_len: [1\n").find("t.yml:"), std::string::npos);  // not YAML
  EXPECT_NE(error_of("- 1\n- 2\n").find("expected a YAML map"), std::string::npos);
  EXPECT_NE(error_of("packing: tight\n").find("t.yml:1: packing: unknown value \"tight\" (expected one of: continuous, "
                                             "per-document, whole-documents)"),
            std::string::npos);
  EXPECT_NE(error_of("validation:\n  - {path: v, weight: 2}\n").find("validation[0].weight: unknown field"),
            std::string::npos);
  EXPECT_NE(error_of("validation:\n  - {path: v}\n").find("validation: give eval_every"), std::string::npos);
  EXPECT_NE(error_of("optimizer: 3\n").find("optimizer: expected a map of fields"), std::string::npos);
}

TEST(TrainConfig, ReadsPhases) {
  const TrainConfig c = parse_train_config(
      "seq_len: 16\nbatch_tokens: 64\n"
      "phases:\n"
      "  - {name: pretrain, tokens: 600,\n"
      "     data: [{name: web, path: w, weight: 90.5}, {name: code, path: c, weight: 9.5}]}\n"
      "  - name: anneal\n    steps: 3\n    data:\n"
      "      - {name: web, path: w, weight: 1}\n      - {name: math, path: m}\n",
      "t.yml");
  ASSERT_EQ(c.phases.size(), 2u);
  EXPECT_TRUE(c.data.empty());
  EXPECT_EQ(c.phases[0].name, "pretrain");
  EXPECT_EQ(c.phases[0].steps, 10);  // 600 tokens: 9.4 steps of 64, rounded up
  EXPECT_EQ(c.phases[0].data[1].weight, 9.5);
  EXPECT_EQ(c.phases[1].steps, 3);
  EXPECT_EQ(c.steps, 13);  // the run is the sum
  const std::vector<DatasetSpec> all = c.all_datasets();
  ASSERT_EQ(all.size(), 3u);  // web once
  EXPECT_EQ(all[0].name, "web");
  EXPECT_EQ(all[2].name, "math");
  // A top-level length that agrees is accepted; a data list alone is one implicit phase.
  const TrainConfig agree = parse_train_config(
      "steps: 5\nphases:\n  - {steps: 2, data: [{path: a}]}\n  - {steps: 3, data: [{path: b}]}\n", "t.yml");
  EXPECT_EQ(agree.phases[1].name, "phase2");
  const TrainConfig d = parse_train_config("steps: 7\ndata: [{name: a, path: a}]\n", "t.yml");
  ASSERT_EQ(d.mixture_phases().size(), 1u);
  EXPECT_EQ(d.mixture_phases()[0].name, "");
  EXPECT_EQ(d.mixture_phases()[0].steps, 7);
}

TEST(TrainConfig, PhaseErrorsNameTheField) {
  const std::string ab = "[{name: a, path: a}]";
  EXPECT_NE(error_of("data: " + ab + "\nphases:\n  - {steps: 1, data: " + ab + "}\n")
                .find("t.yml:1: data: give either data (one mixture) or phases"),
            std::string::npos);
  EXPECT_NE(error_of("phases:\n  - {steps: 1, data: " + ab + ", weight: 2}\n").find("phases[0].weight: unknown field"),
            std::string::npos);
  EXPECT_NE(error_of("phases:\n  - {name: p, steps: 1}\n").find("phases[0].data: the phase has no datasets"),
            std::string::npos);
  EXPECT_NE(error_of("phases:\n  - {steps: 1, data: []}\n").find("phases[0].data: the phase has no datasets"),
            std::string::npos);
  EXPECT_NE(error_of("phases:\n  - {steps: 1, data: [{path: a, weight: 0}]}\n")
                .find("t.yml:2: phases[0].data: the weights add up to 0"),
            std::string::npos);
  EXPECT_NE(error_of("phases:\n  - {steps: 1, data: [{path: a, wieght: 1}]}\n")
                .find("phases[0].data[0].wieght: unknown field"),
            std::string::npos);
  EXPECT_NE(error_of("phases:\n  - {data: " + ab + "}\n").find("phases[0]: give the phase's length as steps or tokens"),
            std::string::npos);
  EXPECT_NE(error_of("phases:\n  - {steps: 1, tokens: 9, data: " + ab + "}\n")
                .find("phases[0].tokens: give either steps or tokens"),
            std::string::npos);
  EXPECT_NE(error_of("phases:\n  - {steps: 0, data: " + ab + "}\n").find("phases[0].steps: 0 is out of range"),
            std::string::npos);
  EXPECT_NE(error_of("steps: 4\nphases:\n  - {steps: 1, data: " + ab + "}\n  - {steps: 2, data: " + ab + "}\n")
                .find("t.yml:1: steps: 4 steps, but the phases add up to 3"),
            std::string::npos);
  EXPECT_NE(error_of("seq_len: 10\ntokens: 100\nphases:\n  - {tokens: 50, data: " + ab + "}\n")
                .find("t.yml:2: tokens: 100 tokens is 10 steps of 10 tokens, but the phases add up to 5"),
            std::string::npos);
  EXPECT_NE(error_of("phases:\n  - {name: p, steps: 1, data: " + ab + "}\n  - {name: p, steps: 1, data: " + ab + "}\n")
                .find("t.yml:3: phases[1].name: \"p\" appears twice"),
            std::string::npos);
  EXPECT_NE(error_of("phases:\n  - {steps: 1, data: [{name: a, path: x}]}\n"
                     "  - {steps: 1, data: [{name: a, path: y}]}\n")
                .find("phases[1].data[0].path: dataset \"a\" is y here but x in phase phase1"),
            std::string::npos);
  EXPECT_NE(error_of("phases: {steps: 1}\n").find("phases: expected a non-empty list"), std::string::npos);
  EXPECT_NE(error_of("phases: []\n").find("phases: expected a non-empty list"), std::string::npos);
  EXPECT_NE(error_of("phases: [3]\n").find("phases[0]: expected {name, steps or tokens, data}"), std::string::npos);
}

TEST(ConfigToJson, PresetShapesRoundTripThroughConfigJson) {
  // A preset's checkpoint carries config.json written from the shape; reading it back must give the same model.
  for (const ModelConfig& c : {dummy_config(), bamba_9b_config()}) {
    const ModelConfig r = parse_config(config_to_json(c), "written");
    EXPECT_EQ(r.vocab_size, c.vocab_size);
    EXPECT_EQ(r.hidden_size, c.hidden_size);
    EXPECT_EQ(r.intermediate_size, c.intermediate_size);
    EXPECT_EQ(r.layer_kinds, c.layer_kinds);
    EXPECT_EQ(r.num_attention_heads, c.num_attention_heads);
    EXPECT_EQ(r.num_key_value_heads, c.num_key_value_heads);
    EXPECT_EQ(r.head_dim, c.head_dim);
    EXPECT_EQ(r.rotary_dim, c.rotary_dim);
    EXPECT_EQ(r.mamba_n_heads, c.mamba_n_heads);
    EXPECT_EQ(r.mamba_d_head, c.mamba_d_head);
    EXPECT_EQ(r.mamba_n_groups, c.mamba_n_groups);
    EXPECT_EQ(r.mamba_d_state, c.mamba_d_state);
    EXPECT_EQ(r.mamba_chunk_size, c.mamba_chunk_size);
    EXPECT_EQ(r.mamba_inner, c.mamba_inner);
    EXPECT_EQ(r.parameter_count(), c.parameter_count());
    EXPECT_EQ(r.bos_token_id, c.bos_token_id);
    EXPECT_EQ(r.eos_token_ids, c.eos_token_ids);
    EXPECT_EQ(r.dtype, c.dtype);
    EXPECT_EQ(r.time_step_max, c.time_step_max);
  }
  EXPECT_EQ(bamba_9b_config().parameter_count(),
            parse_config(config_to_json(bamba_9b_config()), "x").parameter_count());
}

}  // namespace
}  // namespace bamba
