#include "train/trainable.h"

#include <string_view>

namespace bamba {

int64_t TokenBatch::labeled() const {
  int64_t n = 0;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t t = 1; t < cols; ++t) n += labels[size_t(r * cols + t)] != -100;
  return n;
}

bool default_weight_decay(const std::string& hf_name, const std::vector<int64_t>& shape) {
  if (shape.size() < 2) return false;
  std::string_view leaf = hf_name;
  if (size_t dot = leaf.rfind('.'); dot != std::string_view::npos) leaf.remove_prefix(dot + 1);
  return leaf != "A_log" && leaf != "D" && leaf != "dt_bias";
}

}  // namespace bamba
