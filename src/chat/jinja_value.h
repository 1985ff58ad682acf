// Values of the Jinja interpreter: the slice of Python's object model that chat templates touch (None, bool, int,
// float, str, list, dict, jinja2's Undefined and namespace, callables), with Python's formatting rules (str(),
// repr(), json.dumps as Hugging Face's tojson calls it), so a rendered prompt matches transformers byte for byte.
//
// Lists and dicts are immutable once built (HF renders in jinja2's ImmutableSandboxedEnvironment, where
// list.append and dict.update are refused), so values share them freely. The one mutable object is a namespace;
// namespaces and callables may not be put inside containers, which rules out reference cycles.
#pragma once
#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "core/error.h"

namespace bamba::jinja {

// A template's own failure (syntax, type error, raise_exception, a limit). jinja.cpp prefixes the label and
// line:col of the node that failed and rethrows it as bamba::Error.
struct TemplateError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

template <typename... Args>
[[noreturn]] void raise(Args&&... args) {
  throw TemplateError(cat(std::forward<Args>(args)...));
}

// Bounds on one render. A template is a program supplied with the model: these make every render finish in
// bounded time and memory whatever it says (range(10**9), infinite-looking nests, string doubling, recursion).
struct Limits {
  size_t max_output = 16u << 20;         // bytes of rendered text (also any captured block or macro body)
  size_t max_string = 16u << 20;         // bytes of any one string value
  size_t max_items = 1u << 20;           // elements of any one list or dict
  uint64_t max_iterations = 1000000;     // loop iterations plus macro calls, whole render
  uint64_t max_work = 256ull << 20;      // bytes and elements scanned or copied by expressions, whole render
  int max_recursion = 300;               // nested evaluation frames (macro recursion, deep expressions)
  int max_nesting = 128;                 // lists/dicts inside lists/dicts (input JSON included)
  int64_t max_range = 100000;            // range() length; jinja2's sandbox refuses more (MAX_RANGE)
};

struct Budget {
  Limits lim;
  uint64_t work = 0;
  uint64_t iterations = 0;

  explicit Budget(const Limits& l) : lim(l) {}
  void charge(uint64_t units) {
    work += units;
    if (work > lim.max_work) raise("template exceeded its work limit (", lim.max_work, " units)");
  }
  void iterate() {
    if (++iterations > lim.max_iterations)
      raise("template exceeded ", lim.max_iterations, " loop iterations and macro calls");
  }
  void check_string(size_t n) const {
    if (n > lim.max_string) raise("string of ", n, " bytes exceeds the limit of ", lim.max_string);
  }
  void check_items(size_t n) const {
    if (n > lim.max_items) raise("container of ", n, " items exceeds the limit of ", lim.max_items);
  }
};

// Builds a string that may grow large (repr, JSON, join, replace, format): every piece is paid for and the string
// limit is checked as it grows, so a runaway result fails before it is built.
struct StringBuilder {
  Budget& budget;
  std::string out;
  explicit StringBuilder(Budget& b) : budget(b) {}
  void put(std::string_view s) {
    budget.check_string(out.size() + s.size());
    budget.charge(s.size());
    out.append(s);
  }
  void put(char c) { put(std::string_view(&c, 1)); }
};

struct List;
struct Dict;
struct Callable;

struct Value {
  enum class Kind : uint8_t { Undefined, None, Bool, Int, Float, String, List, Dict, Namespace, Callable };
  Kind kind = Kind::Undefined;
  bool b = false;
  int64_t i = 0;
  double f = 0;
  std::shared_ptr<const std::string> s;  // String; Undefined: why it is undefined, for error messages
  std::shared_ptr<const List> list;
  std::shared_ptr<Dict> dict;  // Dict (never modified after construction) or Namespace (modified by `set ns.x`)
  std::shared_ptr<const Callable> fn;

  static Value undefined(std::string why = {});
  static Value none();
  static Value boolean(bool v);
  static Value integer(int64_t v);
  static Value number(double v);
  static Value string(std::string v);

  bool is(Kind k) const { return kind == k; }
  bool is_int() const { return kind == Kind::Int || kind == Kind::Bool; }  // Python: bool is an int
  bool is_number() const { return is_int() || kind == Kind::Float; }
  double as_double() const { return kind == Kind::Float ? f : double(kind == Kind::Bool ? int64_t(b) : i); }
  int64_t as_int() const { return kind == Kind::Bool ? int64_t(b) : i; }
  const std::string& str() const;  // String only
  const std::string& why_undefined() const;
};

struct List {
  std::vector<Value> items;
  int depth = 1;       // 1 + deepest nested container
  bool tuple = false;  // a Python tuple: prints as (a, b); otherwise the same as a list here
};

// An insertion-ordered dict with string keys (JSON's model; Python dicts keep insertion order too).
struct Dict {
  std::vector<std::pair<std::string, Value>> items;
  int depth = 1;

  const Value* find(const std::string& key) const;
  void set(const std::string& key, Value v);  // replaces in place, or appends
  void add(std::string key, Value v);         // appends a key the caller knows is new (no duplicate scan)

 private:
  std::unordered_map<std::string, size_t> index_;  // built once the dict grows past a few keys
};

class Interp;
struct Args {
  std::vector<Value> pos;
  std::vector<std::pair<std::string, Value>> kw;
};
struct Callable {
  std::string name;
  virtual ~Callable() = default;
  virtual Value call(Interp& in, Args& args) const = 0;
};

// What scanning a value costs, in work units: its bytes or elements.
inline uint64_t size_units(const Value& v) {
  if (v.is(Value::Kind::String)) return v.str().size();
  if (v.is(Value::Kind::List)) return v.list->items.size();
  if (v.is(Value::Kind::Dict)) return v.dict->items.size();
  return 0;
}

// Builders: every list/dict is made here, so the size, nesting and no-namespace-inside rules hold everywhere.
Value make_list(std::vector<Value> items, Budget& budget, bool tuple = false);
Value make_dict(Dict d, Budget& budget);
Value make_namespace(Dict d, Budget& budget);
Value make_callable(std::shared_ptr<const Callable> fn);

// Python semantics.
bool truthy(const Value& v);
bool equals(const Value& a, const Value& b, Budget& budget);
int compare(const Value& a, const Value& b, Budget& budget);  // <0, 0, >0, or a TypeError like Python's
std::string type_name(const Value& v);                         // 'str', 'int', 'dict', ...
[[noreturn]] void raise_undefined(const Value& v);

std::string to_str(const Value& v, Budget& budget);   // str(v); Undefined renders as ""
std::string to_repr(const Value& v, Budget& budget);  // repr(v)
std::string float_repr(double d);                     // repr(float): shortest round-trip, Python's layout

struct JsonStyle {
  std::string indent;  // per level; only used when `pretty`
  bool pretty = false;
  bool sort_keys = false;
  bool ensure_ascii = false;
  std::string item_sep = ", ", key_sep = ": ";
};
std::string to_json(const Value& v, const JsonStyle& style, Budget& budget);  // json.dumps

Value from_json(const nlohmann::json& j, Budget& budget);
Value from_json(const nlohmann::ordered_json& j, Budget& budget);

// UTF-8 as Python's code-point strings see it. Invalid bytes count as one code point each, so nothing fails.
size_t utf8_next(std::string_view s, size_t pos, char32_t* cp = nullptr);  // end of the code point at pos
size_t utf8_length(std::string_view s);
std::vector<uint32_t> utf8_offsets(std::string_view s);  // start of each code point, then s.size()
void utf8_append(std::string& out, char32_t cp);
bool py_isspace(char32_t c);  // str.isspace(): ASCII whitespace, \x1c-\x1f and the Unicode spaces

}  // namespace bamba::jinja
