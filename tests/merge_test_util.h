// Helpers for the merge tests: small model folders written on the fly, tensors read back as fp32, recipes.
#pragma once
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/mapped_file.h"
#include "io/checkpoint.h"
#include "io/safetensors.h"

namespace bamba::test {

struct FakeTensor {
  std::string name;
  std::vector<int64_t> shape;
  std::vector<float> values;  // written as F32
};

inline void write_text(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::binary) << text;
}

// A model folder with config.json (architectures, model_type, vocab_size) and one model.safetensors.
inline void write_model(const std::string& dir, const std::vector<FakeTensor>& tensors, int vocab_size = 16,
                        const std::string& arch = "BambaForCausalLM") {
  std::filesystem::create_directories(dir);
  write_text(dir + "/config.json", "{\n  \"architectures\": [\"" + arch +
                                       "\"],\n  \"model_type\": \"bamba\",\n"
                                       "  \"vocab_size\": " +
                                       std::to_string(vocab_size) + ",\n  \"torch_dtype\": \"float32\"\n}\n");
  std::vector<TensorData> td;
  for (const auto& t : tensors) td.push_back({t.name, DType::F32, t.shape, t.values.data()});
  write_safetensors(dir + "/model.safetensors", td, {{"format", "pt"}});
}

inline std::vector<float> read_f32(const TensorInfo& t) {
  std::vector<float> v(size_t(t.numel()));
  convert_to_f32(t.data, t.dtype, v.size(), v.data());
  return v;
}
inline std::vector<float> read_f32(const Checkpoint& c, const std::string& name) { return read_f32(c.get(name)); }

// A copy of a checkpoint folder (config.json + one F32 model.safetensors) with every tensor passed through f.
inline void write_transformed(const std::string& src, const std::string& dst,
                              const std::function<void(const std::string&, std::vector<float>&)>& f) {
  Checkpoint c(src);
  std::vector<FakeTensor> ts;
  for (const auto& n : c.names()) {
    FakeTensor t{n, c.get(n).shape, read_f32(c, n)};
    f(n, t.values);
    ts.push_back(std::move(t));
  }
  std::filesystem::create_directories(dst);
  std::vector<TensorData> td;
  for (const auto& t : ts) td.push_back({t.name, DType::F32, t.shape, t.values.data()});
  write_safetensors(dst + "/model.safetensors", td, {{"format", "pt"}});
  std::filesystem::copy_file(src + "/config.json", dst + "/config.json");
}

// A deterministic pseudo-random perturbation in [-scale, scale], different per tensor name and `salt`.
inline void perturb(const std::string& name, std::vector<float>& v, float scale, uint32_t salt) {
  uint32_t h = 2166136261u ^ salt;
  for (char c : name) h = (h ^ uint8_t(c)) * 16777619u;
  for (float& x : v) {
    h = h * 1664525u + 1013904223u;
    x += scale * (float(h >> 8) / float(1u << 24) * 2 - 1);
  }
}

}  // namespace bamba::test
