// Structured output: the regex compiler against std::regex on random strings, the JSON-schema compiler on
// random walks of its automaton (every accepted text parses and validates against the schema, with a validator
// written here) and on hand-written texts, the token masks against walking each token alone, and the errors
// that name the unsupported construct.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <random>
#include <regex>

#include "core/error.h"
#include "server/grammar_cache.h"
#include "structured/byte_dfa.h"
#include "structured/json_grammar.h"
#include "structured/regex_grammar.h"
#include "structured/token_grammar.h"
#include "test_util.h"
#include "tokenizer/tokenizer.h"

namespace bamba {
namespace {

using ojson = nlohmann::ordered_json;

ByteNfa regex_nfa(const std::string& pattern) {
  ByteNfa nfa;
  nfa.finish(compile_regex(nfa, pattern));
  return nfa;
}
ByteNfa schema_nfa(const ojson& schema) {
  ByteNfa nfa;
  nfa.finish(compile_json_schema(nfa, schema));
  return nfa;
}

bool accepts(ByteDfa& d, const std::string& s) {
  int32_t st = d.start();
  for (char c : s) {
    st = d.step(st, uint8_t(c));
    if (st == ByteDfa::kDead) return false;
  }
  return d.accepting(st);
}

TEST(StructuredRegex, FullMatchEqualsStdRegexOnRandomStrings) {
  const std::vector<std::string> patterns = {
      "a*b", "(ab|a)*c?", "[a-c]{2,4}", "a{3}", "(a|b)+c{0,2}", "[^a]b*", "a?b?c?", "(?:ab){1,}a?", "\\d+(\\.\\d{1,2})?",
      "[abc]*a[abc]", "a|b|", "(a(b(c)?)?)*", "[a-]b", "c{,2}a"};
  std::mt19937 rng(3);
  const std::string alphabet = "abc1.-";
  for (const std::string& p : patterns) {
    ByteDfa d(regex_nfa(p));
    const std::regex ref(p == "c{,2}a" ? "c{0,2}a" : p);  // (ECMAScript has no {,n})
    int matched = 0;
    for (int i = 0; i < 3000; ++i) {
      std::string s;
      for (size_t n = rng() % 7; n > 0; --n) s += alphabet[rng() % alphabet.size()];
      const bool want = std::regex_match(s, ref);
      matched += want;
      ASSERT_EQ(accepts(d, s), want) << "pattern " << p << " on \"" << s << "\"";
    }
    EXPECT_GT(matched, 0) << p;
  }
}

TEST(StructuredRegex, UnicodeClassesAndEscapes) {
  ByteDfa d(regex_nfa("[^x]é\\u00e9.\\w\\s\\x41"));
  EXPECT_TRUE(accepts(d, "€ééz_ A"));
  EXPECT_TRUE(accepts(d, "yéé😀9\tA"));
  EXPECT_FALSE(accepts(d, "xééz_ A"));
  EXPECT_FALSE(accepts(d, "yéé\n9 A"));    // . is not \n
  EXPECT_FALSE(accepts(d, "y\xc3\xa9\xc3"));  // a cut character is not accepted, only continued
  ByteDfa dot(regex_nfa("^.$"));
  EXPECT_TRUE(accepts(dot, "\xf4\x8f\xbf\xbf"));   // U+10FFFF
  EXPECT_FALSE(accepts(dot, "\xed\xa0\x80"));      // a surrogate is not a character
  EXPECT_FALSE(accepts(dot, "\xc0\x80"));          // overlong
}

TEST(StructuredRegex, UnsupportedConstructsNameThemselves) {
  for (auto [p, what] : std::vector<std::pair<std::string, std::string>>{
           {"(a)\\1", "backreference"}, {"a(?=b)", "group syntax"}, {"a\\bb", "escape \\b"}, {"(?i)a", "group syntax"},
           {"a++", "possessive"}, {"(a", "missing ')'"}, {"a)", "unbalanced"}, {"[a", "unterminated"}, {"a^b", "anchor"}}) {
    try {
      regex_nfa(p);
      ADD_FAILURE() << p << " was accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << p << ": " << e.what();
    }
  }
}

// A validator for the supported subset, written independently of the compiler.
bool valid(const ojson& v, const ojson& s, const ojson& root) {
  if (s.contains("$ref")) return valid(v, root.at(ojson::json_pointer(s["$ref"].get<std::string>().substr(1))), root);
  if (s.contains("const")) return v == s["const"];
  if (s.contains("enum")) return std::find(s["enum"].begin(), s["enum"].end(), v) != s["enum"].end();
  if (s.contains("anyOf")) {
    for (const ojson& a : s["anyOf"])
      if (valid(v, a, root)) return true;
    return false;
  }
  if (!s.contains("type")) return true;
  std::vector<std::string> types;
  if (s["type"].is_array()) for (auto& t : s["type"]) types.push_back(t);
  else types.push_back(s["type"]);
  for (const std::string& t : types) {
    if (t == "string" && v.is_string()) {
      // characters, counting UTF-8 lead bytes
      size_t n = 0;
      for (unsigned char c : v.get<std::string>()) n += (c & 0xC0) != 0x80;
      if (n >= s.value("minLength", 0u) && n <= s.value("maxLength", size_t(-1))) return true;
    }
    if (t == "integer" && v.is_number_integer()) return true;
    if (t == "number" && v.is_number()) return true;
    if (t == "boolean" && v.is_boolean()) return true;
    if (t == "null" && v.is_null()) return true;
    if (t == "array" && v.is_array()) {
      if (v.size() < s.value("minItems", 0u) || v.size() > s.value("maxItems", size_t(-1))) continue;
      bool ok = true;
      if (s.contains("items"))
        for (auto& x : v) ok = ok && valid(x, s["items"], root);
      if (ok) return true;
    }
    if (t == "object" && v.is_object()) {
      bool ok = true;
      if (s.contains("properties")) {
        for (auto it = v.begin(); it != v.end(); ++it)
          ok = ok && s["properties"].contains(it.key()) && valid(*it, s["properties"][it.key()], root);
        for (auto& r : s.value("required", ojson::array())) ok = ok && v.contains(r.get<std::string>());
      }
      if (ok) return true;
    }
  }
  return false;
}

// A random accepted text: random live bytes, stopping at an accepting state with probability 1/4 (or when
// nothing else is possible).
std::string random_text(ByteDfa& d, std::mt19937& rng) {
  std::string s;
  int32_t st = d.start();
  for (int steps = 0; steps < 5000; ++steps) {
    std::vector<int> live;
    for (int b = 0; b < 256; ++b)
      if (d.step(st, uint8_t(b)) != ByteDfa::kDead) live.push_back(b);
    if (d.accepting(st) && (live.empty() || rng() % 4 == 0)) return s;
    EXPECT_FALSE(live.empty()) << "a live state without a way on: " << s;
    if (live.empty()) return s;
    // Prefer structure over long strings: printable ASCII most of the time.
    std::vector<int> ascii;
    for (int b : live)
      if (b >= 0x20 && b < 0x7f) ascii.push_back(b);
    const auto& pool = !ascii.empty() && rng() % 8 ? ascii : live;
    const int b = pool[rng() % pool.size()];
    s += char(b);
    st = d.step(st, uint8_t(b));
  }
  ADD_FAILURE() << "no end after 5000 bytes: " << s;
  return s;
}

TEST(StructuredJson, RandomAcceptedTextsParseAndValidate) {
  const std::vector<ojson> schemas = {
      ojson::parse(R"({"type": "object", "properties": {"name": {"type": "string", "maxLength": 6},
        "age": {"type": "integer"}, "score": {"type": "number"}, "ok": {"type": "boolean"},
        "tags": {"type": "array", "items": {"enum": ["a", "b", 3]}, "maxItems": 3},
        "kind": {"const": "x"}, "none": {"type": "null"}}, "required": ["name", "ok"], "additionalProperties": false})"),
      ojson::parse(R"({"anyOf": [{"type": "integer"}, {"type": "array", "items": {"type": "string", "maxLength": 2},
        "minItems": 2, "maxItems": 4}]})"),
      ojson::parse(R"({"type": "object", "properties": {"p": {"$ref": "#/$defs/P"}, "q": {"type": ["string", "null"], "maxLength": 3}},
        "$defs": {"P": {"type": "object", "properties": {"x": {"type": "number"}, "y": {"type": "number"}}, "required": ["x", "y"]}}})"),
      ojson::parse(R"({"type": "object", "properties": {"a": {"type": "boolean"}, "b": {"type": "boolean"}, "c": {"type": "boolean"}}})"),
      ojson::parse(R"({"type": "object"})"),
  };
  std::mt19937 rng(9);
  for (const ojson& schema : schemas) {
    ByteDfa d(schema_nfa(schema));
    for (int i = 0; i < 300; ++i) {
      const std::string text = random_text(d, rng);
      ojson v = ojson::parse(text, nullptr, false);
      ASSERT_FALSE(v.is_discarded()) << "not JSON: " << text << "\nschema " << schema.dump();
      ASSERT_TRUE(valid(v, schema, schema)) << text << "\nschema " << schema.dump();
    }
  }
}

TEST(StructuredJson, AcceptsWhatTheSchemaAllowsAndRejectsTheRest) {
  const ojson schema = ojson::parse(R"({"type": "object", "properties": {"a": {"type": "integer"},
      "b": {"type": "string", "minLength": 1}, "c": {"type": "array", "items": {"type": "boolean"}}}, "required": ["b"]})");
  ByteDfa d(schema_nfa(schema));
  for (const char* ok : {R"({"b": "x"})", R"({"a": -12, "b": "\u00e9\n", "c": [true, false]})", R"({ "a":0,"b" : "é" })",
                         R"({"b": "x", "c": []})"})
    EXPECT_TRUE(accepts(d, ok)) << ok;
  for (const char* no : {R"({"a": 1})", R"({"b": ""})", R"({"b": "x", "a": 1})", R"({"a": 01, "b": "x"})",
                         R"({"b": "x",})", R"({"b": "x"} )", R"({"b": "x", "d": 1})", R"({"b": "\x"})", "{\"b\": \"\x01\"}",
                         R"({"a": 1.5, "b": "x"})", R"({"b":  "x"})"})
    EXPECT_FALSE(accepts(d, no)) << no;
}

TEST(StructuredJson, UnsupportedKeywordsNameThemselves) {
  for (auto [s, what] : std::vector<std::pair<std::string, std::string>>{
           {R"({"type": "string", "pattern": "a+"})", "'pattern'"},
           {R"({"type": "object", "properties": {"x": {"type": "integer", "minimum": 0}}})", "'minimum' (at '#/properties/x')"},
           {R"({"oneOf": [{"type": "string"}]})", "'oneOf'"},
           {R"({"type": "date"})", "'date'"},
           {R"({"$ref": "#/$defs/A", "$defs": {"A": {"type": "array", "items": {"$ref": "#/$defs/A"}}}})", "recursive"},
           {R"({"type": "object", "properties": {"a": {}}, "required": ["b"]})", "'b'"}}) {
    try {
      schema_nfa(ojson::parse(s));
      ADD_FAILURE() << s << " was accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << s << ": " << e.what();
    }
  }
}

// The mask of a state = the tokens whose bytes, walked one by one from it, do not die.
void expect_masks_equal_brute_force(TokenGrammar& g, const TokenVocab& v, const std::vector<int32_t>& states) {
  for (int32_t st : states) {
    const std::vector<uint32_t> m = g.mask(st);
    for (int32_t id = 0; id < v.size(); ++id) {
      const bool bit = (m[size_t(id) >> 5] >> (id & 31)) & 1u;
      ASSERT_EQ(bit, g.advance(st, id) >= 0) << "state " << st << " token " << id << " \"" << v.bytes(id) << "\"";
    }
  }
}

TEST(StructuredTokens, MasksEqualWalkingEachTokenOnASmallVocabulary) {
  auto v = std::make_shared<const TokenVocab>(std::vector<std::string>{
      "a", "b", "ab", "abc", "", "ba", "c", "{\"", "\"", "\":", "1", "12", "x\"}", "\xc3", "\xa9", "\xc3\xa9"});
  ByteNfa nfa = regex_nfa("(ab|ba)*c?\\{\"é*\":1+\\}?");
  TokenGrammar g(nfa, v);
  std::vector<int32_t> states = {g.start()};
  // Follow some tokens to reach other states.
  for (int32_t t : {2, 5, 6, 7, 15, 13, 14, 9, 10, 10}) {
    int32_t s = g.advance(states.back(), t);
    ASSERT_GE(s, 0) << t;
    states.push_back(s);
  }
  expect_masks_equal_brute_force(g, *v, states);
  EXPECT_FALSE(g.accepting(states.front()));
  EXPECT_TRUE(g.accepting(states.back()));
  EXPECT_FALSE(g.complete(states.back()));  // more 1s or a } may follow
  int32_t end = g.advance(states.back(), 12);  // x"} is not allowed
  EXPECT_LT(end, 0);
}

TEST(StructuredTokens, MasksEqualWalkingEachTokenOnTheLlama3Vocabulary) {
  Tokenizer tok = Tokenizer::from_file(test::model_dir("bamba-tiny-e2e") + "/tokenizer.json");
  auto v = std::make_shared<const TokenVocab>(tok);
  ByteNfa nfa = schema_nfa(ojson::parse(R"({"type": "object", "properties": {"name": {"type": "string"},
      "n": {"type": "integer"}}, "required": ["name", "n"]})"));
  TokenGrammar g(nfa, v);
  std::vector<int32_t> states = {g.start()};
  for (const char* piece : {"{\"", "name", "\":", " \"", "Hello", " wor", "\",", " \"n", "\": ", "12"}) {
    std::vector<int32_t> ids = tok.encode(piece, false);
    for (int32_t id : ids) {
      int32_t s = g.advance(states.back(), id);
      ASSERT_GE(s, 0) << piece;
      states.push_back(s);
    }
  }
  expect_masks_equal_brute_force(g, *v, {states[0], states[3], states[6], states.back()});
  // Special tokens never come out of a structured output.
  EXPECT_LT(g.advance(states[6], 128001), 0);
}

}  // namespace
}  // namespace bamba

namespace bamba {
namespace {

TEST(GrammarCacheTest, ReusesByKeyAndDropsTheLeastRecentlyUsed) {
  auto v = std::make_shared<const TokenVocab>(std::vector<std::string>{"a", "b"});
  GrammarCache cache(2);
  int built = 0;
  auto make = [&] {
    ++built;
    return std::make_shared<TokenGrammar>(regex_nfa("a+"), v);
  };
  auto g1 = cache.get("x", make);
  EXPECT_EQ(cache.get("x", make), g1);
  EXPECT_EQ(built, 1);
  cache.get("y", make);
  cache.get("x", make);  // x is now the most recent
  cache.get("z", make);  // drops y
  EXPECT_EQ(built, 3);
  EXPECT_EQ(cache.get("x", make), g1);
  cache.get("y", make);
  EXPECT_EQ(built, 4);
  EXPECT_EQ(cache.size(), 2u);
  EXPECT_THROW(cache.get("bad", [&]() -> std::shared_ptr<TokenGrammar> { throw Error("no"); }), Error);
  EXPECT_EQ(cache.size(), 2u);
}

}  // namespace
}  // namespace bamba
