// config.json as the merge and the trainer's checkpoints see it: read (tolerating the bare Infinity / NaN that
// Python's json module writes, io/python_json.h) to compare architectures and vocabularies, and copied into a
// written model folder with its dtype field updated and everything else kept as it was.
#pragma once
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

namespace bamba {

// Parses the config.json text; `label` names it in errors.
nlohmann::ordered_json parse_config_json(const std::string& text, const std::string& label);

// The same text with "torch_dtype" (transformers 4) and/or "dtype" (transformers 5) set to `dtype`
// ("bfloat16", ...); "torch_dtype" is added when neither is present.
std::string config_json_with_dtype(const std::string& text, std::string_view dtype, const std::string& label);

}  // namespace bamba
