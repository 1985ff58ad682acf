#include "structured/json_grammar.h"

#include <set>
#include <string>

#include "core/error.h"

namespace bamba {

namespace {

using json = nlohmann::ordered_json;
using Frag = ByteNfa::Frag;

class SchemaCompiler {
 public:
  SchemaCompiler(ByteNfa& nfa, const json& root) : nfa_(nfa), root_(root) {}

  Frag value(const json& s, const std::string& at) {
    if (++depth_ > 64) fail("the JSON schema nests more than 64 levels deep (at '", at, "')");
    struct Leave {
      int& d;
      ~Leave() { --d; }
    } leave{depth_};
    if (s.is_boolean()) {
      if (!s.get<bool>()) fail("the JSON schema at '", at, "' is false: nothing is valid");
      return any_value(kJsonAnyDepth);
    }
    if (!s.is_object()) fail("the JSON schema at '", at, "' must be an object or a boolean");
    static const std::set<std::string> known = {
        "type", "enum", "const", "anyOf", "properties", "required", "additionalProperties", "items", "minItems",
        "maxItems", "minLength", "maxLength", "$ref", "title", "description", "default", "examples", "$schema",
        "$id", "$comment", "strict", "$defs", "definitions"};
    for (auto it = s.begin(); it != s.end(); ++it)
      if (!known.count(it.key()))
        fail("the JSON schema keyword '", it.key(), "' (at '", at, "') is not supported in structured output");
    if (s.contains("$ref")) return ref(s, at);
    if (s.contains("const")) return literal(s["const"]);
    if (s.contains("enum")) {
      const json& e = s["enum"];
      if (!e.is_array() || e.empty()) fail("'enum' at '", at, "' must be a non-empty list");
      std::vector<Frag> alts;
      for (const json& v : e) alts.push_back(literal(v));
      return nfa_.alt(alts);
    }
    if (s.contains("anyOf")) {
      const json& a = s["anyOf"];
      if (!a.is_array() || a.empty()) fail("'anyOf' at '", at, "' must be a non-empty list");
      std::vector<Frag> alts;
      for (size_t i = 0; i < a.size(); ++i) alts.push_back(value(a[i], cat(at, "/anyOf/", i)));
      return nfa_.alt(alts);
    }
    if (!s.contains("type")) {
      if (s.contains("properties")) return object(s, at);
      if (s.contains("items")) return array(s, at);
      return any_value(kJsonAnyDepth);
    }
    const json& t = s["type"];
    if (t.is_array()) {
      std::vector<Frag> alts;
      for (const json& x : t) alts.push_back(typed(s, x, at));
      if (alts.empty()) fail("'type' at '", at, "' is an empty list");
      return nfa_.alt(alts);
    }
    return typed(s, t, at);
  }

  Frag any_object(int depth) {
    // { } or { member (, member)* } with the member piece built once and looped back to.
    const Frag open = nfa_.bytes("{"), close = nfa_.bytes("}");
    const Frag member = seq({string_value(0, -1), ws(), nfa_.bytes(":"), ws(), any_value(depth - 1)});
    const Frag first = ws();
    nfa_.eps(open.out, first.in);
    nfa_.eps(first.out, member.in);
    const Frag after = ws();
    nfa_.eps(member.out, after.in);
    const Frag comma = seq({nfa_.bytes(","), ws()});
    nfa_.eps(after.out, comma.in);
    nfa_.eps(comma.out, member.in);
    nfa_.eps(after.out, close.in);
    nfa_.eps(first.out, close.in);
    return {open.in, close.out};
  }

 private:
  Frag seq(std::initializer_list<Frag> parts) {
    Frag f = *parts.begin();
    for (auto it = parts.begin() + 1; it != parts.end(); ++it) f = nfa_.seq(f, *it);
    return f;
  }
  Frag ws() { return nfa_.opt(nfa_.bytes(" ")); }

  Frag literal(const json& v) { return nfa_.bytes(v.dump(-1, ' ', false, json::error_handler_t::strict)); }

  int32_t count(const json& s, const char* k, const std::string& at, int32_t def) {
    if (!s.contains(k)) return def;
    const json& v = s[k];
    if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() > 10000)
      fail("'", k, "' at '", at, "' must be an integer in [0, 10000]");
    return int32_t(v.get<int64_t>());
  }

  Frag typed(const json& s, const json& t, const std::string& at) {
    if (!t.is_string()) fail("'type' at '", at, "' must be a string or a list of strings");
    const std::string ty = t.get<std::string>();
    if (ty == "string") {
      const int32_t lo = count(s, "minLength", at, 0), hi = count(s, "maxLength", at, -1);
      if (hi >= 0 && hi < lo) fail("'maxLength' < 'minLength' at '", at, "'");
      return string_value(lo, hi);
    }
    if (ty == "integer") return integer();
    if (ty == "number") return number();
    if (ty == "boolean") return nfa_.alt({nfa_.bytes("true"), nfa_.bytes("false")});
    if (ty == "null") return nfa_.bytes("null");
    if (ty == "object") return s.contains("properties") ? object(s, at) : any_object(kJsonAnyDepth);
    if (ty == "array") return array(s, at);
    fail("the JSON schema type '", ty, "' (at '", at, "') is not one of string, number, integer, boolean, null, "
         "array, object");
  }

  // A JSON string of lo..hi characters (hi < 0: unbounded); an escape counts as one.
  Frag string_value(int32_t lo, int32_t hi) {
    auto ch = [&] {
      const Frag plain = nfa_.chars(ByteNfa::complement({{0, 0x1F}, {'"', '"'}, {'\\', '\\'}}));
      const Frag simple = nfa_.chars({{'"', '"'}, {'\\', '\\'}, {'/', '/'}, {'b', 'b'}, {'f', 'f'}, {'n', 'n'},
                                      {'r', 'r'}, {'t', 't'}});
      // \uXXXX outside the surrogates (a lone surrogate is refused by most parsers; characters beyond the BMP
      // come out as UTF-8).
      auto hex = [&] { return nfa_.chars({{'0', '9'}, {'A', 'F'}, {'a', 'f'}}); };
      const Frag not_d = seq({nfa_.chars({{'0', '9'}, {'A', 'C'}, {'E', 'F'}, {'a', 'c'}, {'e', 'f'}}), hex(), hex(), hex()});
      const Frag d = seq({nfa_.chars({{'D', 'D'}, {'d', 'd'}}), nfa_.chars({{'0', '7'}}), hex(), hex()});
      const Frag u = nfa_.seq(nfa_.bytes("u"), nfa_.alt({not_d, d}));
      return nfa_.alt({plain, nfa_.seq(nfa_.bytes("\\"), nfa_.alt({simple, u}))});
    };
    return seq({nfa_.bytes("\""), nfa_.repeat(ch, lo, hi), nfa_.bytes("\"")});
  }

  Frag digits(int32_t lo, int32_t hi) {
    return nfa_.repeat([&] { return nfa_.chars({{'0', '9'}}); }, lo, hi);
  }
  Frag integer() {
    const Frag mag = nfa_.alt({nfa_.bytes("0"), nfa_.seq(nfa_.chars({{'1', '9'}}), digits(0, 17))});
    return nfa_.seq(nfa_.opt(nfa_.bytes("-")), mag);
  }
  Frag number() {
    const Frag frac = nfa_.opt(nfa_.seq(nfa_.bytes("."), digits(1, 16)));
    const Frag exp = nfa_.opt(seq({nfa_.chars({{'E', 'E'}, {'e', 'e'}}), nfa_.opt(nfa_.chars({{'+', '+'}, {'-', '-'}})),
                                   digits(1, 2)}));
    return seq({integer(), frac, exp});
  }

  Frag any_value(int depth) {
    std::vector<Frag> alts = {string_value(0, -1), number(), nfa_.bytes("true"), nfa_.bytes("false"),
                              nfa_.bytes("null")};
    if (depth > 0) {
      alts.push_back(any_object(depth));
      alts.push_back(any_array(depth));
    }
    return nfa_.alt(alts);
  }

  Frag any_array(int depth) { return list([&] { return any_value(depth - 1); }, 0, -1); }

  // [ item (, item)* ] with lo..hi items (hi < 0: unbounded).
  Frag list(const std::function<Frag()>& item, int32_t lo, int32_t hi) {
    const Frag open = seq({nfa_.bytes("["), ws()});
    const Frag close = seq({ws(), nfa_.bytes("]")});
    if (hi == 0) return nfa_.seq(open, close);
    if (lo <= 1 && hi < 0) {  // one item piece, looped back to after each comma
      const Frag it = item();
      const Frag comma = seq({ws(), nfa_.bytes(","), ws()});
      nfa_.eps(open.out, it.in);
      nfa_.eps(it.out, comma.in);
      nfa_.eps(comma.out, it.in);
      nfa_.eps(it.out, close.in);
      if (lo == 0) nfa_.eps(open.out, close.in);
      return {open.in, close.out};
    }
    auto more = [&] { return seq({ws(), nfa_.bytes(","), ws(), item()}); };
    Frag body = nfa_.seq(item(), nfa_.repeat(more, std::max(lo, 1) - 1, hi < 0 ? -1 : hi - 1));
    if (lo == 0) body = nfa_.opt(body);
    return seq({open, body, close});
  }

  Frag array(const json& s, const std::string& at) {
    const int32_t lo = count(s, "minItems", at, 0), hi = count(s, "maxItems", at, -1);
    if (hi >= 0 && hi < lo) fail("'maxItems' < 'minItems' at '", at, "'");
    if (!s.contains("items")) return list([&] { return any_value(kJsonAnyDepth - 1); }, lo, hi);
    const json& items = s["items"];
    return list([&] { return value(items, at + "/items"); }, lo, hi);
  }

  // Properties in order; the optional ones may be skipped. Two tracks: before the first property written (no
  // comma) and after (a comma before each); each property's piece is built once and entered from both.
  Frag object(const json& s, const std::string& at) {
    const json& props = s["properties"];
    if (!props.is_object()) fail("'properties' at '", at, "' must be an object");
    std::set<std::string> required;
    if (s.contains("required")) {
      if (!s["required"].is_array()) fail("'required' at '", at, "' must be a list of names");
      for (const json& r : s["required"]) {
        if (!r.is_string()) fail("'required' at '", at, "' must be a list of names");
        if (!props.contains(r.get<std::string>()))
          fail("'required' at '", at, "' names '", r.get<std::string>(), "', which is not in 'properties'");
        required.insert(r.get<std::string>());
      }
    }
    if (s.contains("additionalProperties")) {
      const json& ap = s["additionalProperties"];
      if (!ap.is_boolean() && !ap.is_object()) fail("'additionalProperties' at '", at, "' must be a boolean or a schema");
    }
    const Frag open = seq({nfa_.bytes("{"), ws()});
    int32_t none = open.out;  // track "nothing written yet"
    int32_t some = -1;        // track "something written" (none of it yet)
    for (auto it = props.begin(); it != props.end(); ++it) {
      const Frag key = nfa_.bytes(json(it.key()).dump());
      const Frag p = seq({key, ws(), nfa_.bytes(":"), ws(), value(it.value(), at + "/properties/" + it.key())});
      const bool req = required.count(it.key()) > 0;
      const int32_t none2 = req ? -1 : nfa_.state(), some2 = nfa_.state();
      if (none >= 0) {
        nfa_.eps(none, p.in);
        if (!req) nfa_.eps(none, none2);
      }
      if (some >= 0) {
        const Frag comma = seq({ws(), nfa_.bytes(","), ws()});
        nfa_.eps(some, comma.in);
        nfa_.eps(comma.out, p.in);
        if (!req) nfa_.eps(some, some2);
      }
      nfa_.eps(p.out, some2);
      none = none2;
      some = some2;
    }
    const Frag close = seq({ws(), nfa_.bytes("}")});
    if (none >= 0) nfa_.eps(none, close.in);
    if (some >= 0) nfa_.eps(some, close.in);
    return {open.in, close.out};
  }

  // "#/a/b" inside the root schema, expanded in place; a reference to itself (directly or not) is an Error.
  Frag ref(const json& s, const std::string& at) {
    if (s.size() > 1) {
      for (auto it = s.begin(); it != s.end(); ++it)
        if (it.key() != "$ref" && it.key() != "description" && it.key() != "title" && it.key() != "default" &&
            it.key() != "$defs" && it.key() != "definitions" && it.key() != "$schema")
          fail("'$ref' at '", at, "' next to '", it.key(), "' is not supported");
    }
    if (!s["$ref"].is_string()) fail("'$ref' at '", at, "' must be a string");
    const std::string r = s["$ref"].get<std::string>();
    if (r.rfind("#", 0) != 0) fail("'$ref' \"", r, "\" (at '", at, "'): only references inside the schema (#/...) are supported");
    if (std::find(refs_.begin(), refs_.end(), r) != refs_.end())
      fail("'$ref' \"", r, "\" (at '", at, "') is recursive: recursive schemas are not supported");
    const json* target = &root_;
    try {
      if (r.size() > 1) target = &root_.at(json::json_pointer(r.substr(1)));
    } catch (const std::exception&) {
      fail("'$ref' \"", r, "\" (at '", at, "') points nowhere in the schema");
    }
    refs_.push_back(r);
    Frag f = value(*target, r);
    refs_.pop_back();
    return f;
  }

  ByteNfa& nfa_;
  const json& root_;
  std::vector<std::string> refs_;
  int depth_ = 0;
};

}  // namespace

ByteNfa::Frag compile_json_schema(ByteNfa& nfa, const nlohmann::ordered_json& schema) {
  return SchemaCompiler(nfa, schema).value(schema, "#");
}

ByteNfa::Frag json_any_object(ByteNfa& nfa) {
  const json none;
  return SchemaCompiler(nfa, none).any_object(kJsonAnyDepth);
}

}  // namespace bamba
