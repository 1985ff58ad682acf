// Checkpoint: the tensors of a Hugging Face checkpoint folder, single-file (model.safetensors) or sharded
// (model.safetensors.index.json + shards), all mmap'd; tensors are looked up by their HF name.
#pragma once
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "io/safetensors.h"

namespace bamba {

class Checkpoint {
 public:
  explicit Checkpoint(const std::string& dir);  // throws Error naming the folder/file and what was expected

  const std::string& dir() const { return dir_; }
  const TensorInfo* find(std::string_view name) const;
  const TensorInfo& get(std::string_view name) const;  // Error "<dir>: missing tensor <name>"
  std::vector<std::string> names() const;                // sorted
  size_t total_bytes() const { return total_bytes_; }
  const std::vector<std::unique_ptr<SafetensorsFile>>& files() const { return files_; }

 private:
  std::string dir_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, const TensorInfo*, std::less<>> tensors_;
  size_t total_bytes_ = 0;
};

}  // namespace bamba
