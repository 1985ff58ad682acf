// ShardedWriter: writes a list of tensors, whose names, dtypes and shapes are known up front, as a Hugging Face
// sharded checkpoint: model-0000K-of-0000N.safetensors files of at most `max_shard_bytes` of tensor data each
// (a tensor larger than that gets a shard of its own) and model.safetensors.index.json. Tensors stream through
// one at a time, in the given order; nothing is held in memory.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "io/safetensors.h"

namespace bamba {

struct TensorSpec {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  uint64_t nbytes() const;
};

class ShardedWriter {
 public:
  ShardedWriter(std::string dir, std::vector<TensorSpec> tensors, uint64_t max_shard_bytes);
  ~ShardedWriter();

  // The next tensor in the order given to the constructor.
  void write(const std::string& name, const void* data, size_t nbytes);
  // Closes the last shard and writes the index (metadata.total_size, weight_map).
  void finish();

  size_t num_shards() const { return shards_.size(); }
  uint64_t total_bytes() const { return total_bytes_; }
  std::string shard_name(size_t k) const;  // model-0000K-of-0000N.safetensors (K from 0 here, 1 on disk)

 private:
  std::string dir_;
  std::vector<TensorSpec> tensors_;
  std::vector<std::vector<size_t>> shards_;  // tensor indices per shard, in order
  std::vector<size_t> shard_of_;
  uint64_t total_bytes_ = 0, total_params_ = 0;
  size_t next_ = 0;
  std::unique_ptr<SafetensorsWriter> open_;
};

// "5GB", "500MB", "2GiB", "100kb", "123456" -> bytes; decimal units are powers of 1000 as in Hugging Face's
// max_shard_size, binary (KiB, MiB, GiB, TiB) powers of 1024.
uint64_t parse_byte_size(const std::string& s);

}  // namespace bamba
