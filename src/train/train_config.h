// TrainConfig: the YAML file of `bamba train CONFIG.yml` as plain data. Every field has a default; an unknown
// field, a wrong type or an out-of-range value is an Error naming the file, line and field. docs/training.md is
// the reference of every field.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "model/hybrid.h"
#include "train/lr_schedule.h"

namespace bamba {

struct DatasetSpec {
  std::string name;   // for logs and the per-dataset token counts
  std::string path;   // token shards (format: the data loader's)
  double weight = 1;  // sampling weight, normalised over the list
};

// One stage of a run with its own mixture (`phases:`), e.g. pretraining then annealing. A dataset named in
// several phases is one stream: it continues where the previous phase left it (same documents, same epoch).
struct PhaseSpec {
  std::string name;
  int64_t steps = 0;  // optimizer steps of this phase (given as steps, or tokens rounded up to whole steps)
  std::vector<DatasetSpec> data;
};

enum class Precision { Bf16Mixed, Bf16Memory, Fp32 };

// How documents share a row (train/mixture_source.h): running across each other (Bamba's pretraining), or each
// its own sequence inside the packed row (state reset, attention within the document), and then optionally
// never split across rows unless longer than a row (SFT: a conversation keeps its prompt).
enum class Packing { Continuous, PerDocument, WholeDocuments };

struct TrainConfig {
  std::string label;  // the YAML's path, for messages

  // model: a Hugging Face folder to continue from, or a shape with fresh weights (train/weight_init.h): a
  // config.json file or a preset
  std::string model_path;
  std::string model_config;           // a config.json giving the shape (when no path)
  std::string model_preset = "tiny";  // tiny | bamba-9b (when neither path nor config)
  std::string tokenizer_path;         // folder whose tokenizer files are copied into checkpoints (default: model)

  std::vector<DatasetSpec> data;          // one mixture for the whole run, or
  std::vector<PhaseSpec> phases;          // a mixture per phase, in order (steps is then their sum)
  bool shuffle = true;                    // documents in a seeded order, a new one every epoch
  Packing packing = Packing::Continuous;  // packing: continuous | per-document
  std::vector<DatasetSpec> validation;    // held-out datasets: loss of each every eval_every steps
  int64_t eval_tokens = 0;                // tokens scored per validation dataset; 0 = batch_tokens

  int64_t seq_len = 4096;
  int64_t micro_batch_size = 1;  // rows per forward/backward
  int64_t batch_tokens = 0;      // tokens per optimizer step; 0 = one micro-batch (micro_batch_size · seq_len)
  int64_t steps = 0;             // optimizer steps; 0 = from `tokens`, or 1000 when that is 0 too
  int64_t tokens = 0;            // training length in tokens (rounded up to whole steps)

  // optimizer (AdamW)
  double lr = 3e-4, beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0.1, grad_clip = 1.0;
  std::vector<std::string> no_decay;  // extra name substrings excluded from weight decay

  // schedule (multiplier of lr, train/lr_schedule.h)
  LrSchedule::Kind schedule = LrSchedule::Kind::Cosine;
  LrSchedule::Warmup warmup = LrSchedule::Warmup::Quadratic;
  LrSchedule::DecayShape decay_shape = LrSchedule::DecayShape::Linear;
  int64_t warmup_steps = -1;  // -1 = min(2000, steps / 20) as fms-fsdp
  int64_t decay_steps = -1;   // wsd; -1 = steps / 5
  double final_lr_ratio = 0.1;

  Precision precision = Precision::Bf16Mixed;
  Checkpointing activation_checkpointing = Checkpointing::Off;  // true = full, or selective (model/hybrid.h)
  int64_t checkpoint_layers = -1;  // activation_checkpointing_layers: only the first N layers (-1: all)
  bool loss_sum = false;  // loss_reduction: sum (else per-token mean over the global batch)
  double z_loss = 0;

  int64_t save_every = 1000;           // steps; 0 = only at the end
  int64_t eval_every = 0;              // steps; 0 = never
  int64_t keep_last = 3;               // checkpoints kept; 0 = all
  std::string save_dtype = "float32";  // weights in the HF folder: float32 | bfloat16
  std::string max_shard_size = "5GB";
  std::string output = "train-out";
  uint64_t seed = 0;

  // derived (after validation)
  int64_t rows_per_step() const { return batch_tokens / seq_len; }
  int64_t accumulation_steps() const { return rows_per_step() / micro_batch_size; }
  LrSchedule lr_schedule() const;
  // The phases, or the one implicit phase (no name, the whole run) of a `data:` list.
  std::vector<PhaseSpec> mixture_phases() const;
  // Every dataset of the mixture once (first appearance; a dataset shared by phases keeps its first entry).
  std::vector<DatasetSpec> all_datasets() const;
};

TrainConfig parse_train_config(const std::string& yaml_text, const std::string& label);
TrainConfig load_train_config(const std::string& path);

std::string precision_name(Precision p);

}  // namespace bamba
