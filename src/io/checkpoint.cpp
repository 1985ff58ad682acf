#include "io/checkpoint.h"

#include <nlohmann/json.hpp>

#include "core/error.h"

namespace bamba {

using json = nlohmann::json;

Checkpoint::Checkpoint(const std::string& dir) : dir_(dir) {
  if (!dir_exists(dir)) fail(dir, ": no such model folder");
  const std::string index_path = dir + "/model.safetensors.index.json", single = dir + "/model.safetensors";
  if (file_exists(index_path)) {
    json idx = json::parse(read_text_file(index_path), nullptr, false);
    if (idx.is_discarded() || !idx.is_object()) fail(index_path, ": not a valid JSON object");
    auto wm = idx.find("weight_map");
    if (wm == idx.end() || !wm->is_object()) fail(index_path, ": missing object field \"weight_map\"");
    std::map<std::string, SafetensorsFile*> by_file;
    for (auto& [name, f] : wm->items()) {
      if (!f.is_string()) fail(index_path, ": weight_map[\"", name, "\"] must be a file name");
      std::string fname = f.get<std::string>();
      if (fname.empty() || fname.find('/') != std::string::npos || fname == "." || fname == "..")
        fail(index_path, ": weight_map[\"", name, "\"] = \"", fname, "\" is not a file name in the folder");
      auto it = by_file.find(fname);
      if (it == by_file.end()) {
        std::string path = dir + "/" + fname;
        if (!file_exists(path)) fail(index_path, ": shard \"", fname, "\" (for tensor ", name, ") does not exist");
        files_.push_back(std::make_unique<SafetensorsFile>(path));
        it = by_file.emplace(fname, files_.back().get()).first;
        total_bytes_ += files_.back()->size_bytes();
      }
      const TensorInfo* t = it->second->find(name);
      if (!t) fail(it->second->path(), ": missing tensor \"", name, "\" (model.safetensors.index.json puts it here)");
      tensors_.emplace(name, t);
    }
  } else if (file_exists(single)) {
    files_.push_back(std::make_unique<SafetensorsFile>(single));
    total_bytes_ = files_.back()->size_bytes();
    for (auto& t : files_.back()->tensors()) tensors_.emplace(t.name, &t);
  } else {
    fail(dir, ": no model.safetensors or model.safetensors.index.json");
  }
}

const TensorInfo* Checkpoint::find(std::string_view name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : it->second;
}

const TensorInfo& Checkpoint::get(std::string_view name) const {
  const TensorInfo* t = find(name);
  if (!t) fail(dir_, ": missing tensor \"", name, "\"");
  return *t;
}

std::vector<std::string> Checkpoint::names() const {
  std::vector<std::string> out;
  for (auto& [k, v] : tensors_) out.push_back(k);
  return out;
}

}  // namespace bamba
