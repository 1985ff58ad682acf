// JSON Schema (the subset below) compiled into a ByteNfa piece that matches exactly the JSON texts the schema
// accepts, written compactly: at most one space around `:` and `,` and inside brackets, no other whitespace.
//
// Supported keywords: type (string, number, integer, boolean, null, array, object, or a list of them), enum,
// const, anyOf, properties, required, additionalProperties (extra properties are never generated, so false and
// true are both honoured), items, minItems, maxItems, minLength, maxLength, $ref to "#/..." inside the schema
// (not recursive), and the annotations title, description, default, examples, $schema, $id, $comment, strict.
// Properties come out in the schema's order; optional ones may be left out. Anything else is an Error naming
// the keyword and where it is (a JSON pointer), so that the server can answer 400.
//
// Bounds that keep the language regular and the output finite: numbers have at most 18 integer digits (integers fit int64), 16
// fraction digits and a 2-digit exponent (so every number fits a double); a value with no schema (an object without properties, an array
// without items, `{}`, json_object mode) nests at most kJsonAnyDepth levels deep.
#pragma once
#include <nlohmann/json.hpp>

#include "structured/byte_nfa.h"

namespace bamba {

constexpr int kJsonAnyDepth = 5;

ByteNfa::Frag compile_json_schema(ByteNfa& nfa, const nlohmann::ordered_json& schema);
// Any JSON object (response_format json_object; tool arguments whose schema is not supported).
ByteNfa::Frag json_any_object(ByteNfa& nfa);

}  // namespace bamba
