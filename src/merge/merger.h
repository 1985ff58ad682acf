// Merger: runs a MergeConfig over local checkpoint folders and writes the merged Hugging Face folder. Tensors
// stream one at a time from the mmap'd inputs into the shard being written. Entry-by-entry methods (linear,
// task_arithmetic) go through slices of a tensor, so besides slice buffers they hold only the output tensor in
// its dtype; methods that look at a whole tensor first (slerp, ties, dare_*) hold it in fp32 once per input plus
// once for the output. Either way memory follows the largest tensor, not the model. Every input is validated
// (architecture, tensor names, shapes, dtypes, parameters) before anything is written, and the output is
// assembled in a staging folder that takes the output's name only when complete.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>

#include "merge/merge_config.h"

namespace bamba {

struct MergeProgress {
  size_t tensors_done = 0, tensors_total = 0;
  uint64_t bytes_done = 0, bytes_total = 0;  // of tensor data written
  std::string_view tensor;                   // the one just written (valid during the call)
};

struct MergeOptions {
  std::string out_dir;
  uint64_t max_shard_bytes = 5'000'000'000;               // Hugging Face's default "5GB"
  bool force = false;                                     // replace an existing non-empty out_dir
  uint64_t seed = 0;                                      // DARE's random drop
  size_t slice_elements = size_t(1) << 20;                // slice length of the entry-by-entry methods
  std::function<void(const MergeProgress&)> on_progress;  // after each tensor
};

struct MergeSummary {
  size_t tensors = 0, shards = 0;
  uint64_t bytes = 0;
  uint64_t largest_tensor_elements = 0;
};

MergeSummary run_merge(const MergeConfig& cfg, const MergeOptions& opt);

}  // namespace bamba
