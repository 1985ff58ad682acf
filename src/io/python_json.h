// JSON as Python's json module writes it: config.json files may hold the bare literals Infinity, -Infinity and
// NaN (json.dump's default), which strict parsers, nlohmann's included, reject. They are read here as marked
// strings, recognised by json_nonfinite, and written back bare by dump_python_json, so a config passes through
// the merge unchanged and loads as a model.
#pragma once
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

namespace bamba {

// The parsed document, or a discarded value (is_discarded()) when the text is not JSON even with the literals.
nlohmann::ordered_json parse_python_json(const std::string& text);
// j.dump(indent) with the marked literals written bare again.
std::string dump_python_json(const nlohmann::ordered_json& j, int indent = 2);
// The value of a non-finite number in either spelling: a bare literal read by parse_python_json, or
// transformers 5's {"__float__": "Infinity" | "-Infinity" | "NaN"} (also "inf", "-inf", "nan"). nullopt otherwise.
std::optional<double> json_nonfinite(const nlohmann::ordered_json& v);

}  // namespace bamba
