// Python literals as ast.literal_eval reads them (strings with escapes and adjacent-string concatenation, ints,
// floats, True/False/None, lists, tuples, dicts), as JSON. lm-eval calls literal_eval on rendered templates
// (doc_to_choice "{{choices.text}}" renders a Python list repr) and on dataset fields (MuSR's `choices`).
#pragma once
#include <string_view>

#include <nlohmann/json.hpp>

namespace bamba::eval {

// Error (naming `what`) when `text` is not one literal.
nlohmann::ordered_json python_literal(std::string_view text, std::string_view what);

}  // namespace bamba::eval
