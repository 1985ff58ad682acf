#include "io/python_json.h"

#include <limits>
#include <string_view>

#include "core/error.h"

namespace bamba {
namespace {

// The literals travel through nlohmann as strings with this prefix.
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

std::optional<double> named_nonfinite(std::string_view s) {
  if (s == "Infinity" || s == "inf") return std::numeric_limits<double>::infinity();
  if (s == "-Infinity" || s == "-inf") return -std::numeric_limits<double>::infinity();
  if (s == "NaN" || s == "nan") return std::numeric_limits<double>::quiet_NaN();
  return std::nullopt;
}

}  // namespace

nlohmann::ordered_json parse_python_json(const std::string& text) {
  return nlohmann::ordered_json::parse(quote_bare_literals(text), nullptr, /*allow_exceptions=*/false);
}

std::string dump_python_json(const nlohmann::ordered_json& j, int indent) {
  std::string s = j.dump(indent);
  for (std::string_view lit : kBareLiterals) {
    const std::string quoted = cat('"', kMark, lit, '"');
    for (size_t p; (p = s.find(quoted)) != std::string::npos;) s.replace(p, quoted.size(), lit);
  }
  return s;
}

std::optional<double> json_nonfinite(const nlohmann::ordered_json& v) {
  if (v.is_string()) {
    const std::string& s = v.get_ref<const std::string&>();
    if (s.rfind(kMark, 0) == 0) return named_nonfinite(std::string_view(s).substr(kMark.size()));
    return std::nullopt;
  }
  if (v.is_object() && v.size() == 1 && v.contains("__float__") && v["__float__"].is_string())
    return named_nonfinite(v["__float__"].get_ref<const std::string&>());
  return std::nullopt;
}

}  // namespace bamba
