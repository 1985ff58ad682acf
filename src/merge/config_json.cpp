#include "merge/config_json.h"

#include "core/error.h"

namespace bamba {

namespace {

// Bare Infinity / -Infinity / NaN (outside strings) travel as marked strings through nlohmann, which rejects
// them, and are put back bare when writing.
constexpr std::string_view kMark = "__bamba_bare_json__:";
constexpr std::string_view kBareLiterals[] = {"-Infinity", "Infinity", "NaN"};

std::string quote_bare_literals(const std::string& s) {
  std::string out;
  bool in_string = false;
  for (size_t i = 0; i < s.size();) {
    const char c = s[i];
    if (in_string) {
      out += c;
      if (c == '\\' && i + 1 < s.size())
        out += s[++i];
      else if (c == '"')
        in_string = false;
      ++i;
      continue;
    }
    if (c == '"') in_string = true;
    bool replaced = false;
    for (std::string_view lit : kBareLiterals)
      if (s.compare(i, lit.size(), lit) == 0) {
        out += cat('"', kMark, lit, '"');
        i += lit.size();
        replaced = true;
        break;
      }
    if (!replaced) out += s[i++];
  }
  return out;
}

std::string unquote_bare_literals(std::string s) {
  for (std::string_view lit : kBareLiterals) {
    const std::string quoted = cat('"', kMark, lit, '"');
    for (size_t p; (p = s.find(quoted)) != std::string::npos;) s.replace(p, quoted.size(), lit);
  }
  return s;
}

}  // namespace

nlohmann::ordered_json parse_config_json(const std::string& text, const std::string& label) {
  auto j = nlohmann::ordered_json::parse(quote_bare_literals(text), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) fail(label, ": not a valid JSON object");
  return j;
}

std::string config_json_with_dtype(const std::string& text, std::string_view dtype, const std::string& label) {
  auto j = parse_config_json(text, label);
  bool set = false;
  for (const char* key : {"torch_dtype", "dtype"})
    if (j.contains(key)) j[key] = std::string(dtype), set = true;
  if (!set) j["torch_dtype"] = std::string(dtype);
  return unquote_bare_literals(j.dump(2)) + "\n";
}

}  // namespace bamba
