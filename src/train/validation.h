// Validation: the loss of each held-out dataset (the config's `validation` list), computed during training every
// eval_every steps. Each dataset is read from its start in file order (no shuffling), packed as training packs,
// for eval_tokens tokens (or all of its tokens, when it has fewer) rounded up to whole micro-batches: the same
// tokens every time, so the numbers of one run form a curve. The loss is per scored token over those tokens (labels -100 and sequence starts excluded), the
// forward only (Trainable::loss).
#pragma once
#include <nlohmann/json.hpp>

#include "train/train_config.h"
#include "train/trainable.h"

namespace bamba {

class Validation {
 public:
  // Opens every validation dataset now, so that a bad path fails before training starts.
  Validation(const TrainConfig& cfg, Trainable& model, int64_t vocab_size);
  // {"<name>": loss per scored token, ...} in the config's order.
  nlohmann::ordered_json run();

 private:
  const TrainConfig& cfg_;
  Trainable& model_;
  int64_t vocab_;
};

}  // namespace bamba
