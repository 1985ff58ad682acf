#include "io/config_json.h"

#include "core/error.h"
#include "io/python_json.h"

namespace bamba {

nlohmann::ordered_json parse_config_json(const std::string& text, const std::string& label) {
  auto j = parse_python_json(text);
  if (j.is_discarded() || !j.is_object()) fail(label, ": not a valid JSON object");
  return j;
}

std::string config_json_with_dtype(const std::string& text, std::string_view dtype, const std::string& label) {
  auto j = parse_config_json(text, label);
  bool set = false;
  for (const char* key : {"torch_dtype", "dtype"})
    if (j.contains(key)) j[key] = std::string(dtype), set = true;
  if (!set) j["torch_dtype"] = std::string(dtype);
  return dump_python_json(j) + "\n";
}

}  // namespace bamba
