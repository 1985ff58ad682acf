// Safetensors: the Hugging Face tensor file format, read through mmap and written in one pass.
// Format: u64 little-endian header length, a JSON header {name: {dtype, shape, data_offsets: [begin, end]},
// "__metadata__": {str: str}}, then the raw bytes; offsets are relative to the end of the header.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/dtype.h"
#include "core/mapped_file.h"

namespace bamba {

struct TensorInfo {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  const unsigned char* data = nullptr;  // points into the mapped file; possibly unaligned
  size_t nbytes = 0;
  std::string file;  // path of the file that holds it, for error messages

  int64_t numel() const;
  std::string shape_str() const;  // "[8, 64]"
};

struct SafetensorsHeader {
  std::vector<TensorInfo> tensors;  // in file order of data offsets
  std::map<std::string, std::string> metadata;
};

// Validates and parses a whole safetensors image held in memory. `label` names it in errors.
// Checks: header length within the file, header is a JSON object, every entry has a known dtype, a shape of
// non-negative ints, offsets inside the data region, a byte count equal to numel × dtype size, and no two
// tensors overlap.
SafetensorsHeader parse_safetensors(const unsigned char* data, size_t size, const std::string& label);

class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::string& path);
  const std::string& path() const { return file_.path(); }
  const std::vector<TensorInfo>& tensors() const { return header_.tensors; }
  const std::map<std::string, std::string>& metadata() const { return header_.metadata; }
  const TensorInfo* find(std::string_view name) const;
  size_t size_bytes() const { return file_.size(); }

 private:
  MappedFile file_;
  SafetensorsHeader header_;
  std::map<std::string, size_t, std::less<>> index_;
};

// Streaming writer: declare every tensor first, then write their bytes in declaration order. Writes to
// `path + ".tmp"` and renames on finish(), so a crash never leaves a half-written file under `path`.
class SafetensorsWriter {
 public:
  explicit SafetensorsWriter(std::string path);
  ~SafetensorsWriter();
  void declare(const std::string& name, DType dtype, const std::vector<int64_t>& shape);
  void set_metadata(const std::string& key, const std::string& value);
  void write(const std::string& name, const void* data, size_t nbytes);  // next declared tensor
  void finish();

 private:
  struct Entry {
    std::string name;
    DType dtype;
    std::vector<int64_t> shape;
    size_t nbytes;
  };
  void write_header();
  std::string path_, tmp_path_;
  std::vector<Entry> entries_;
  std::map<std::string, std::string> metadata_;
  size_t next_ = 0;
  std::FILE* f_ = nullptr;
  bool finished_ = false;
};

// One-shot convenience over SafetensorsWriter.
struct TensorData {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  const void* data;
};
void write_safetensors(const std::string& path, const std::vector<TensorData>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace bamba
