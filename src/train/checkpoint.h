// Training checkpoints. Each save is one folder, <output>/checkpoint-<step>/, that is at the same time
//   - a Hugging Face model folder `bamba generate --model` loads as it is: config.json (dtype set to the saved
//     one), model-0000K-of-0000N.safetensors + model.safetensors.index.json under the HF tensor names, and the
//     tokenizer files (tokenizer.json, tokenizer_config.json, ...) copied from the model's folder;
//   - and the trainer's state (docs/training.md, "Checkpoints"):
//       trainer_state.json     format "bamba-trainer-state" version 1: step, tokens seen, optimizer settings and
//                              step count, RNG scheme and seed, the data loader's position (an opaque JSON value
//                              the caller gives), the config text;
//       optimizer.safetensors  "<name>.exp_avg", "<name>.exp_avg_sq" per parameter, F32 (or BF16 in the memory
//                              mode), in the parameter's HF shape;
//       master.safetensors     the fp32 master weights, only when the model weights were saved as bf16.
// The folder is written under a hidden temporary name beside it and renamed into place when complete
// (io/staging_dir.h), so a crash or Ctrl-C never leaves a half-written folder under a checkpoint's name.
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "train/adamw.h"
#include "train/trainable.h"

namespace bamba {

struct TrainerState {
  int64_t step = 0;         // optimizer steps done
  int64_t tokens_seen = 0;  // tokens fed (all positions, labeled or not)
  uint64_t seed = 0;
  nlohmann::json data;      // the data loader's position, opaque here
  std::string config_text;  // the training YAML, kept for the record
};

struct CheckpointOptions {
  std::string config_json;             // config.json text (its dtype field is set to save_dtype)
  std::string tokenizer_dir;           // tokenizer files are copied from here; "" = none
  std::string save_dtype = "float32";  // float32 | bfloat16
  uint64_t max_shard_bytes = 5'000'000'000;
};

// "<output>/checkpoint-<step>"
std::string checkpoint_dir(const std::string& output, int64_t step);

// Writes `dir` from the parameters, the optimizer and `state`. An existing `dir` is an Error unless `replace`
// (then it is swapped out only once the new folder is complete).
void save_checkpoint(const std::string& dir, const std::vector<ParamRef>& params, const AdamW& opt,
                     const TrainerState& state, const CheckpointOptions& o, bool replace = false);

// Reads a checkpoint written by save_checkpoint back into the parameters (values: exact fp32), the optimizer's
// moments and step count, and `state`. Every parameter must be there with its shape, and the optimizer's moment
// dtype must match; Errors name the file and tensor.
void load_checkpoint(const std::string& dir, const std::vector<ParamRef>& params, AdamW& opt, TrainerState& state);

// `path` itself when it holds trainer_state.json, else its checkpoint-<step> subfolder with the highest step;
// Error when there is none.
std::string resolve_checkpoint(const std::string& path);

// The steps of the checkpoint-<step> folders (with a trainer_state.json) in `output`, ascending.
std::vector<int64_t> checkpoint_steps(const std::string& output);

// Deletes the checkpoint-<step> folders of `output` after `current_step` (left by a run that was resumed from an
// earlier checkpoint: the abandoned branch), then all but the `keep` newest (keep 0: no more).
void prune_checkpoints(const std::string& output, int64_t keep, int64_t current_step);

}  // namespace bamba
