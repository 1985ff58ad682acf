#include "train/trainable.h"

#include <algorithm>
#include <string_view>

#include "core/error.h"

namespace bamba {

std::vector<int32_t> TokenBatch::sequences() const {
  const int64_t T = rows * cols;
  if (seq_start.empty()) {
    std::vector<int32_t> s;
    for (int64_t r = 0; r <= rows; ++r) s.push_back(int32_t(r * cols));
    return s;
  }
  BAMBA_CHECK(seq_start.front() == 0 && seq_start.back() == T, "training batch: seq_start runs from ",
              seq_start.front(), " to ", seq_start.back(), ", expected 0 to ", T);
  for (size_t i = 1; i < seq_start.size(); ++i)
    BAMBA_CHECK(seq_start[i] > seq_start[i - 1], "training batch: seq_start[", i, "] = ", seq_start[i],
                " does not increase (an empty sequence)");
  for (int64_t r = 1; r < rows; ++r)
    BAMBA_CHECK(std::binary_search(seq_start.begin(), seq_start.end(), int32_t(r * cols)), "training batch: row ", r,
                " starts inside a sequence (seq_start must hold every row start)");
  return seq_start;
}

int64_t TokenBatch::labeled() const {
  const std::vector<int32_t> s = sequences();
  int64_t n = 0;
  for (size_t i = 0; i + 1 < s.size(); ++i)
    for (int32_t t = s[i] + 1; t < s[i + 1]; ++t) n += labels[size_t(t)] != -100;
  return n;
}

int64_t TokenBatch::labeled_sequences() const {
  const std::vector<int32_t> s = sequences();
  int64_t n = 0;
  for (size_t i = 0; i + 1 < s.size(); ++i)
    for (int32_t t = s[i] + 1; t < s[i + 1]; ++t)
      if (labels[size_t(t)] != -100) {
        ++n;
        break;
      }
  return n;
}

LossResult Trainable::loss(const TokenBatch&, const LossDivisors&) {
  fail("this model has no loss-only pass (validation)");
}

bool default_weight_decay(const std::string& hf_name, const std::vector<int64_t>& shape) {
  if (shape.size() < 2) return false;
  std::string_view leaf = hf_name;
  if (size_t dot = leaf.rfind('.'); dot != std::string_view::npos) leaf.remove_prefix(dot + 1);
  return leaf != "A_log" && leaf != "D" && leaf != "dt_bias";
}

}  // namespace bamba
