#include "io/sharded_writer.h"

#include <cctype>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"

namespace bamba {

uint64_t TensorSpec::nbytes() const {
  uint64_t n = dtype_size(dtype);
  for (int64_t d : shape) n *= uint64_t(d);
  return n;
}

ShardedWriter::ShardedWriter(std::string dir, std::vector<TensorSpec> tensors, uint64_t max_shard_bytes)
    : dir_(std::move(dir)), tensors_(std::move(tensors)) {
  BAMBA_CHECK(max_shard_bytes > 0, "the maximum shard size must be positive");
  // Hugging Face's rule: start a new shard when the next tensor would push a non-empty one past the limit.
  uint64_t cur = 0;
  for (size_t i = 0; i < tensors_.size(); ++i) {
    const uint64_t b = tensors_[i].nbytes();
    if (shards_.empty() || (!shards_.back().empty() && cur + b > max_shard_bytes)) shards_.emplace_back(), cur = 0;
    shards_.back().push_back(i);
    shard_of_.push_back(shards_.size() - 1);
    cur += b;
    total_bytes_ += b;
    total_params_ += b / dtype_size(tensors_[i].dtype);
  }
}

ShardedWriter::~ShardedWriter() = default;  // an unfinished SafetensorsWriter removes its .tmp file

std::string ShardedWriter::shard_name(size_t k) const {
  char buf[64];
  std::snprintf(buf, sizeof buf, "model-%05zu-of-%05zu.safetensors", k + 1, shards_.size());
  return buf;
}

void ShardedWriter::write(const std::string& name, const void* data, size_t nbytes) {
  BAMBA_CHECK(next_ < tensors_.size() && tensors_[next_].name == name, dir_, ": tensor \"", name,
              "\" written out of the planned order");
  const size_t k = shard_of_[next_];
  if (!open_) {
    open_ = std::make_unique<SafetensorsWriter>(dir_ + "/" + shard_name(k));
    open_->set_metadata("format", "pt");  // transformers refuses safetensors files without it
    for (size_t i : shards_[k]) open_->declare(tensors_[i].name, tensors_[i].dtype, tensors_[i].shape);
  }
  open_->write(name, data, nbytes);
  if (next_ == shards_[k].back()) {
    open_->finish();
    open_.reset();
  }
  ++next_;
}

void ShardedWriter::finish() {
  BAMBA_CHECK(next_ == tensors_.size(), dir_, ": ", tensors_.size() - next_, " tensors were never written");
  nlohmann::json index;
  index["metadata"] = {{"total_size", total_bytes_}, {"total_parameters", total_params_}};
  index["weight_map"] = nlohmann::json::object();
  for (size_t i = 0; i < tensors_.size(); ++i) index["weight_map"][tensors_[i].name] = shard_name(shard_of_[i]);
  const std::string path = dir_ + "/model.safetensors.index.json";
  std::ofstream f(path, std::ios::binary);
  f << index.dump(2) << "\n";
  f.close();
  if (!f) fail(path, ": write failed");
}

uint64_t parse_byte_size(const std::string& s) {
  size_t i = 0;
  while (i < s.size() && (std::isdigit(static_cast<unsigned char>(s[i])) || s[i] == '.')) ++i;
  std::string num = s.substr(0, i), unit;
  for (char c : s.substr(i))
    if (!std::isspace(static_cast<unsigned char>(c))) unit += char(std::tolower(static_cast<unsigned char>(c)));
  double v = 0;
  try {
    size_t used = 0;
    v = std::stod(num, &used);
    if (used != num.size()) throw std::invalid_argument("trailing");
  } catch (const std::exception&) {
    fail("size \"", s, "\": expected a number with an optional unit, like 5GB, 500MB or 2GiB");
  }
  struct Unit {
    const char* name;
    double scale;
  };
  constexpr Unit kUnits[] = {
      {"", 1},      {"b", 1},        {"kb", 1e3},        {"mb", 1e6},           {"gb", 1e9},
      {"tb", 1e12}, {"kib", 1024.0}, {"mib", 1048576.0}, {"gib", 1073741824.0}, {"tib", 1099511627776.0}};
  for (const auto& u : kUnits)
    if (unit == u.name) {
      double b = v * u.scale;
      if (b < 1 || b > 1e18) fail("size \"", s, "\": expected at least 1 byte and at most an exabyte");
      return uint64_t(b);
    }
  fail("size \"", s, "\": unknown unit \"", unit, "\" (expected B, KB, MB, GB, TB, KiB, MiB, GiB or TiB)");
}

}  // namespace bamba
