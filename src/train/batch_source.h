// BatchSource: the seam between the trainer and the data loader. It hands out micro-batches in a fixed order
// and can describe its position as JSON and return to it, which is what makes a resumed run see the same data.
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>

#include "train/trainable.h"

namespace bamba {

class BatchSource {
 public:
  virtual ~BatchSource() = default;
  // The next `rows` × `seq_len` tokens with their labels.
  virtual TokenBatch next(int64_t rows, int64_t seq_len) = 0;
  // The position after the last batch handed out; opaque to the trainer, stored in trainer_state.json.
  virtual nlohmann::json state() const = 0;
  virtual void restore(const nlohmann::json& state) = 0;
};

}  // namespace bamba
