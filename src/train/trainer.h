// Trainer: the loop around a Trainable's gradients. Per optimizer step: zero the grads, run the step's
// micro-batches (batch_tokens / (micro_batch_size · seq_len) of them) accumulating gradients with the whole
// step's loss divisors, so they add up to the per-token mean over the step (or the plain sum); stop on a
// non-finite loss or gradient; clip by the global norm; set the learning rate from the schedule (a function of
// the step only); take the AdamW step; log the metrics; save every save_every steps. A stop request (Ctrl-C)
// saves and returns after the current step. Resuming from a checkpoint continues bit for bit: N steps straight
// equal N/2, save, resume, N/2.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "train/adamw.h"
#include "train/batch_source.h"
#include "train/checkpoint.h"
#include "train/data_parallel.h"
#include "train/metrics_log.h"
#include "train/train_config.h"
#include "train/trainable.h"

namespace bamba {

struct TrainerHooks {
  std::function<bool()> stop_requested;  // polled after every step (the CLI's SIGINT flag)
  std::function<double()> eval;          // eval loss, run every eval_every steps
  // Validation loss per dataset ({"name": loss}), run every eval_every steps: logged as "eval" (and its mean as
  // eval_loss) and printed.
  std::function<nlohmann::ordered_json()> validate;
  double peak_flops = 0;                 // the device's peak FLOP/s, for MFU (with Trainable::flops_per_token)
  bool progress = true;                  // the progress bar on stderr
  // Data parallelism (train/data_parallel.h): this trainer is one rank; `data` hands out this rank's rows of each
  // global micro-batch. Rank 0 alone logs, draws the bar and writes checkpoints. Null: one rank.
  DataParallel* data_parallel = nullptr;
};

struct TrainRunResult {
  int64_t step = 0;  // optimizer steps done
  bool interrupted = false;
  double loss = 0;              // of the last step
  std::string last_checkpoint;  // "" when none was written
};

class Trainer {
 public:
  // `ckpt` describes the HF side of the checkpoints (config.json, tokenizer); precision bf16-memory gives bf16
  // moments. Parameters get weight decay by their ParamRef.decay unless a config.no_decay substring matches.
  Trainer(const TrainConfig& cfg, Trainable& model, BatchSource& data, CheckpointOptions ckpt, TrainerHooks hooks = {});

  // Loads a checkpoint folder (or the newest checkpoint of an output folder): weights, moments, step, data position.
  // The run then continues from there; checkpoints of the output folder after that step (a branch that is being
  // redone) are replaced or deleted as the new run saves.
  void resume(const std::string& path);
  // Without resume(), an output folder that already holds checkpoints is an Error (it would mix two runs).
  TrainRunResult run();

  int64_t step() const { return state_.step; }
  const AdamW& optimizer() const { return opt_; }  // this rank's shard under data parallelism

 private:
  std::string save();

  const TrainConfig cfg_;
  Trainable& model_;
  BatchSource& data_;
  CheckpointOptions ckpt_;
  TrainerHooks hooks_;
  std::vector<ParamRef> params_;
  std::vector<ParamRef> owned_;  // the parameters this rank's optimizer updates (all of them on one rank)
  size_t first_owned_ = 0;
  AdamW opt_;
  TrainerState state_;
  std::string last_checkpoint_;
  bool resumed_ = false;
};

}  // namespace bamba
