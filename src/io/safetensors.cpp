#include "io/safetensors.h"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>

#include "core/error.h"

namespace bamba {

using json = nlohmann::json;

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string TensorInfo::shape_str() const {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

namespace {
// Largest header we accept; the format's reference implementation uses the same 100 MB bound.
constexpr uint64_t kMaxHeader = 100u << 20;
}  // namespace

SafetensorsHeader parse_safetensors(const unsigned char* data, size_t size, const std::string& label) {
  if (size < 8) fail(label, ": truncated safetensors file (", size, " bytes, expected at least an 8-byte header length)");
  uint64_t hlen = 0;
  for (int i = 7; i >= 0; --i) hlen = hlen << 8 | data[i];
  if (hlen > kMaxHeader) fail(label, ": safetensors header length ", hlen, " exceeds the 100 MB limit (corrupted file?)");
  if (hlen > size - 8)
    fail(label, ": safetensors header length ", hlen, " runs past the end of the file (", size, " bytes; truncated?)");
  const char* hbeg = reinterpret_cast<const char*>(data + 8);
  json h = json::parse(hbeg, hbeg + hlen, nullptr, /*allow_exceptions=*/false);
  if (h.is_discarded()) fail(label, ": safetensors header is not valid JSON");
  if (!h.is_object()) fail(label, ": safetensors header must be a JSON object");

  const size_t data_size = size - 8 - size_t(hlen);
  const unsigned char* base = data + 8 + hlen;
  SafetensorsHeader out;
  for (auto& [name, v] : h.items()) {
    if (name == "__metadata__") {
      if (!v.is_object()) fail(label, ": __metadata__ must be an object of strings");
      for (auto& [k, mv] : v.items()) {
        if (!mv.is_string()) fail(label, ": __metadata__[\"", k, "\"] must be a string");
        out.metadata[k] = mv.get<std::string>();
      }
      continue;
    }
    const std::string where = cat(label, ": tensor \"", name, "\"");
    if (!v.is_object()) fail(where, ": header entry must be an object");
    auto dt = v.find("dtype"), sh = v.find("shape"), of = v.find("data_offsets");
    if (dt == v.end() || !dt->is_string()) fail(where, ": missing string field \"dtype\"");
    if (sh == v.end() || !sh->is_array()) fail(where, ": missing array field \"shape\"");
    if (of == v.end() || !of->is_array() || of->size() != 2) fail(where, ": \"data_offsets\" must be [begin, end]");
    TensorInfo t;
    t.name = name;
    t.file = label;
    if (!parse_dtype(dt->get<std::string>(), &t.dtype))
      fail(where, ": unknown dtype \"", dt->get<std::string>(), "\" (expected F32, BF16, F16, F64, F8_E4M3, I64, I32, I16, I8, U8 or BOOL)");
    uint64_t numel = 1;
    for (auto& d : *sh) {
      if (!d.is_number_unsigned()) fail(where, ": shape entries must be non-negative integers (got ", sh->dump(), ")");
      uint64_t x = d.get<uint64_t>();
      if (x > (uint64_t(1) << 40) || (x && numel > (uint64_t(1) << 62) / x)) fail(where, ": shape is too large");
      numel *= x;
      t.shape.push_back(int64_t(x));
    }
    for (auto& o : *of)
      if (!o.is_number_unsigned()) fail(where, ": data_offsets must be non-negative integers (got ", of->dump(), ")");
    uint64_t b = (*of)[0].get<uint64_t>(), e = (*of)[1].get<uint64_t>();
    if (b > e) fail(where, ": data_offsets [", b, ", ", e, "] has begin after end");
    if (e > data_size)
      fail(where, ": data_offsets [", b, ", ", e, "] outside the data region of ", data_size, " bytes (truncated file?)");
    if (numel > (uint64_t(1) << 62) / dtype_size(t.dtype)) fail(where, ": shape is too large");
    if (e - b != numel * dtype_size(t.dtype))
      fail(where, ": holds ", e - b, " bytes but ", dt->get<std::string>(), " ", t.shape_str(), " needs ",
           numel * dtype_size(t.dtype));
    t.data = base + b;
    t.nbytes = size_t(e - b);
    out.tensors.push_back(std::move(t));
  }
  std::sort(out.tensors.begin(), out.tensors.end(), [](const TensorInfo& a, const TensorInfo& b) {
    return a.data != b.data ? a.data < b.data : a.nbytes < b.nbytes;
  });
  // Sorted by start, the non-empty tensors are disjoint iff each one starts at or after the end of the previous
  // non-empty one. Empty tensors are skipped, not compared: one sorted between two overlapping tensors must not
  // hide the overlap.
  const TensorInfo* prev = nullptr;
  for (const TensorInfo& c : out.tensors) {
    if (c.nbytes == 0) continue;
    if (prev && prev->data + prev->nbytes > c.data)
      fail(label, ": tensors \"", prev->name, "\" and \"", c.name, "\" overlap in the data region");
    prev = &c;
  }
  return out;
}

SafetensorsFile::SafetensorsFile(const std::string& path) : file_(path) {
  header_ = parse_safetensors(file_.data(), file_.size(), path);
  for (size_t i = 0; i < header_.tensors.size(); ++i) index_.emplace(header_.tensors[i].name, i);
}

const TensorInfo* SafetensorsFile::find(std::string_view name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &header_.tensors[it->second];
}

// ---------------------------------------------------------------------------------------------------------------

SafetensorsWriter::SafetensorsWriter(std::string path) : path_(std::move(path)), tmp_path_(path_ + ".tmp") {}

SafetensorsWriter::~SafetensorsWriter() {
  if (f_) std::fclose(f_);
  if (!finished_) std::remove(tmp_path_.c_str());
}

void SafetensorsWriter::declare(const std::string& name, DType dtype, const std::vector<int64_t>& shape) {
  BAMBA_CHECK(!f_, path_, ": declare(\"", name, "\") after writing started");
  size_t n = dtype_size(dtype);
  for (int64_t d : shape) n *= size_t(d);
  entries_.push_back({name, dtype, shape, n});
}

void SafetensorsWriter::set_metadata(const std::string& key, const std::string& value) { metadata_[key] = value; }

void SafetensorsWriter::write_header() {
  json h = json::object();
  if (!metadata_.empty()) h["__metadata__"] = metadata_;
  size_t off = 0;
  for (auto& e : entries_) {
    h[e.name] = {{"dtype", std::string(dtype_name(e.dtype))}, {"shape", e.shape}, {"data_offsets", {off, off + e.nbytes}}};
    off += e.nbytes;
  }
  std::string s = h.dump();
  s.append((8 - s.size() % 8) % 8, ' ');  // keep the data region 8-byte aligned
  f_ = std::fopen(tmp_path_.c_str(), "wb");
  if (!f_) fail(tmp_path_, ": cannot create (", std::strerror(errno), ")");
  unsigned char len[8];
  for (int i = 0; i < 8; ++i) len[i] = uint8_t(uint64_t(s.size()) >> (8 * i));
  if (std::fwrite(len, 1, 8, f_) != 8 || std::fwrite(s.data(), 1, s.size(), f_) != s.size())
    fail(tmp_path_, ": write failed (", std::strerror(errno), ")");
}

void SafetensorsWriter::write(const std::string& name, const void* data, size_t nbytes) {
  if (!f_) write_header();
  BAMBA_CHECK(next_ < entries_.size() && entries_[next_].name == name, path_, ": tensor \"", name,
              "\" written out of declaration order");
  BAMBA_CHECK(entries_[next_].nbytes == nbytes, path_, ": tensor \"", name, "\" has ", nbytes, " bytes, declared ",
              entries_[next_].nbytes);
  if (nbytes && std::fwrite(data, 1, nbytes, f_) != nbytes) fail(tmp_path_, ": write failed (", std::strerror(errno), ")");
  ++next_;
}

void SafetensorsWriter::finish() {
  if (!f_) write_header();
  BAMBA_CHECK(next_ == entries_.size(), path_, ": finish() with ", entries_.size() - next_, " tensors not written");
  if (std::fclose(f_) != 0) {
    f_ = nullptr;
    fail(tmp_path_, ": write failed (", std::strerror(errno), ")");
  }
  f_ = nullptr;
  if (std::rename(tmp_path_.c_str(), path_.c_str()) != 0) fail(path_, ": rename failed (", std::strerror(errno), ")");
  finished_ = true;
}

void write_safetensors(const std::string& path, const std::vector<TensorData>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  SafetensorsWriter w(path);
  for (auto& [k, v] : metadata) w.set_metadata(k, v);
  for (auto& t : tensors) w.declare(t.name, t.dtype, t.shape);
  for (auto& t : tensors) {
    size_t n = dtype_size(t.dtype);
    for (int64_t d : t.shape) n *= size_t(d);
    w.write(t.name, t.data, n);
  }
  w.finish();
}

}  // namespace bamba
