#include "chat/jinja_value.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace bamba::jinja {

// ---------------------------------------------------------------------------------------------------------------
// Value

Value Value::undefined(std::string why) {
  Value v;
  if (!why.empty()) v.s = std::make_shared<const std::string>(std::move(why));
  return v;
}
Value Value::none() {
  Value v;
  v.kind = Kind::None;
  return v;
}
Value Value::boolean(bool x) {
  Value v;
  v.kind = Kind::Bool;
  v.b = x;
  return v;
}
Value Value::integer(int64_t x) {
  Value v;
  v.kind = Kind::Int;
  v.i = x;
  return v;
}
Value Value::number(double x) {
  Value v;
  v.kind = Kind::Float;
  v.f = x;
  return v;
}
Value Value::string(std::string x) {
  Value v;
  v.kind = Kind::String;
  v.s = std::make_shared<const std::string>(std::move(x));
  return v;
}

const std::string& Value::str() const {
  static const std::string empty;  // a constant, not state
  return s ? *s : empty;
}
const std::string& Value::why_undefined() const { return str(); }

const Value* Dict::find(const std::string& key) const {
  if (index_.empty()) {
    for (auto& [k, v] : items)
      if (k == key) return &v;
    return nullptr;
  }
  auto it = index_.find(key);
  return it == index_.end() ? nullptr : &items[it->second].second;
}

void Dict::set(const std::string& key, Value v) {
  if (index_.empty()) {
    for (auto& kv : items)
      if (kv.first == key) {
        kv.second = std::move(v);
        return;
      }
  } else if (auto it = index_.find(key); it != index_.end()) {
    items[it->second].second = std::move(v);
    return;
  }
  add(key, std::move(v));
}

void Dict::add(std::string key, Value v) {
  items.emplace_back(std::move(key), std::move(v));
  // Linear search is fastest for the few-key dicts chat messages are; index the big ones (tool schemas, input).
  if (items.size() > 16 && index_.empty())
    for (size_t n = 0; n < items.size(); ++n) index_.emplace(items[n].first, n);
  else if (!index_.empty())
    index_.emplace(items.back().first, items.size() - 1);
}

// ---------------------------------------------------------------------------------------------------------------
// Builders

static int child_depth(const Value& v) {
  if (v.is(Value::Kind::List)) return v.list->depth;
  if (v.is(Value::Kind::Dict)) return v.dict->depth;
  return 0;
}

static void check_element(const Value& v) {
  if (v.is(Value::Kind::Namespace) || v.is(Value::Kind::Callable))
    raise("a ", type_name(v), " cannot be stored inside a list, dict or namespace");
}

Value make_list(std::vector<Value> items, Budget& budget, bool tuple) {
  budget.check_items(items.size());
  budget.charge(16 * items.size() + 1);  // 16: a rough per-element cost, so element count is bounded too
  auto l = std::make_shared<List>();
  l->tuple = tuple;
  for (auto& v : items) {
    check_element(v);
    l->depth = std::max(l->depth, child_depth(v) + 1);
  }
  if (l->depth > budget.lim.max_nesting) raise("lists/dicts nested more than ", budget.lim.max_nesting, " deep");
  l->items = std::move(items);
  Value v;
  v.kind = Value::Kind::List;
  v.list = std::move(l);
  return v;
}

static std::shared_ptr<Dict> checked_dict(Dict d, Budget& budget) {
  budget.check_items(d.items.size());
  budget.charge(16 * d.items.size() + 1);
  d.depth = 1;
  for (auto& [k, v] : d.items) {
    check_element(v);
    d.depth = std::max(d.depth, child_depth(v) + 1);
  }
  if (d.depth > budget.lim.max_nesting) raise("lists/dicts nested more than ", budget.lim.max_nesting, " deep");
  return std::make_shared<Dict>(std::move(d));
}

Value make_dict(Dict d, Budget& budget) {
  Value v;
  v.kind = Value::Kind::Dict;
  v.dict = checked_dict(std::move(d), budget);
  return v;
}

Value make_namespace(Dict d, Budget& budget) {
  Value v;
  v.kind = Value::Kind::Namespace;
  v.dict = checked_dict(std::move(d), budget);
  return v;
}

Value make_callable(std::shared_ptr<const Callable> fn) {
  Value v;
  v.kind = Value::Kind::Callable;
  v.fn = std::move(fn);
  return v;
}

// ---------------------------------------------------------------------------------------------------------------
// Python semantics

bool truthy(const Value& v) {
  using K = Value::Kind;
  switch (v.kind) {
    case K::Undefined:
    case K::None: return false;
    case K::Bool: return v.b;
    case K::Int: return v.i != 0;
    case K::Float: return v.f != 0;
    case K::String: return !v.str().empty();
    case K::List: return !v.list->items.empty();
    case K::Dict: return !v.dict->items.empty();
    case K::Namespace:
    case K::Callable: return true;
  }
  return false;
}

std::string type_name(const Value& v) {
  using K = Value::Kind;
  switch (v.kind) {
    case K::Undefined: return "Undefined";
    case K::None: return "NoneType";
    case K::Bool: return "bool";
    case K::Int: return "int";
    case K::Float: return "float";
    case K::String: return "str";
    case K::List: return "list";
    case K::Dict: return "dict";
    case K::Namespace: return "Namespace";
    case K::Callable: return "function";
  }
  return "?";
}

void raise_undefined(const Value& v) {
  if (!v.why_undefined().empty()) raise(v.why_undefined());
  raise("value is undefined");
}

bool equals(const Value& a, const Value& b, Budget& budget) {
  using K = Value::Kind;
  if (a.is_number() && b.is_number()) {
    if (a.is_int() && b.is_int()) return a.as_int() == b.as_int();
    return a.as_double() == b.as_double();
  }
  if (a.kind != b.kind) return false;
  switch (a.kind) {
    case K::Undefined:
    case K::None: return true;
    case K::String:
      budget.charge(std::min(a.str().size(), b.str().size()));
      return a.str() == b.str();
    case K::List: {
      auto &x = a.list->items, &y = b.list->items;
      if (x.size() != y.size() || a.list->tuple != b.list->tuple) return false;
      budget.charge(x.size());
      for (size_t n = 0; n < x.size(); ++n)
        if (!equals(x[n], y[n], budget)) return false;
      return true;
    }
    case K::Dict: {
      if (a.dict->items.size() != b.dict->items.size()) return false;
      budget.charge(a.dict->items.size());
      for (auto& [k, v] : a.dict->items) {
        const Value* w = b.dict->find(k);
        if (!w || !equals(v, *w, budget)) return false;
      }
      return true;
    }
    case K::Namespace: return a.dict == b.dict;
    case K::Callable: return a.fn == b.fn;
    default: return false;
  }
}

int compare(const Value& a, const Value& b, Budget& budget) {
  using K = Value::Kind;
  if (a.is(K::Undefined)) raise_undefined(a);
  if (b.is(K::Undefined)) raise_undefined(b);
  if (a.is_number() && b.is_number()) {
    if (a.is_int() && b.is_int()) return a.as_int() < b.as_int() ? -1 : a.as_int() > b.as_int();
    double x = a.as_double(), y = b.as_double();
    return x < y ? -1 : x > y;
  }
  if (a.is(K::String) && b.is(K::String)) {
    budget.charge(std::min(a.str().size(), b.str().size()));
    int c = a.str().compare(b.str());  // byte order is code-point order for UTF-8
    return c < 0 ? -1 : c > 0;
  }
  if (a.is(K::List) && b.is(K::List)) {
    auto &x = a.list->items, &y = b.list->items;
    for (size_t n = 0; n < x.size() && n < y.size(); ++n) {
      budget.charge(1);
      if (!equals(x[n], y[n], budget)) return compare(x[n], y[n], budget);
    }
    return x.size() < y.size() ? -1 : x.size() > y.size();
  }
  raise("'<' not supported between instances of '", type_name(a), "' and '", type_name(b), "'");
}

// ---------------------------------------------------------------------------------------------------------------
// Formatting, through StringBuilder: repr or JSON of a huge structure fails as soon as it passes the limit.

namespace {

void write_repr_string(StringBuilder& w, const std::string& s) {
  // Python picks single quotes unless the text has a ' and no ".
  char q = (s.find('\'') != std::string::npos && s.find('"') == std::string::npos) ? '"' : '\'';
  std::string o(1, q);
  for (unsigned char c : s) {
    if (c == '\\') o += "\\\\";
    else if (c == q) o += std::string("\\") + char(q);
    else if (c == '\n') o += "\\n";
    else if (c == '\r') o += "\\r";
    else if (c == '\t') o += "\\t";
    else if (c < 0x20 || c == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      o += buf;
    } else o += char(c);
  }
  o += q;
  w.put(o);
}

void write_repr(StringBuilder& w, const Value& v) {
  using K = Value::Kind;
  switch (v.kind) {
    case K::Undefined: w.put("Undefined"); return;
    case K::None: w.put("None"); return;
    case K::Bool: w.put(v.b ? "True" : "False"); return;
    case K::Int: w.put(std::to_string(v.i)); return;
    case K::Float: w.put(float_repr(v.f)); return;
    case K::String: write_repr_string(w, v.str()); return;
    case K::List: {
      const bool tuple = v.list->tuple;
      w.put(tuple ? '(' : '[');
      bool first = true;
      for (auto& x : v.list->items) {
        if (!first) w.put(", ");
        first = false;
        write_repr(w, x);
      }
      if (tuple && v.list->items.size() == 1) w.put(',');
      w.put(tuple ? ')' : ']');
      return;
    }
    case K::Dict:
    case K::Namespace: {
      if (v.is(K::Namespace)) w.put("<Namespace ");
      w.put('{');
      bool first = true;
      for (auto& [k, x] : v.dict->items) {
        if (!first) w.put(", ");
        first = false;
        write_repr_string(w, k);
        w.put(": ");
        write_repr(w, x);
      }
      w.put('}');
      if (v.is(K::Namespace)) w.put('>');
      return;
    }
    case K::Callable: w.put("<function " + v.fn->name + ">"); return;
  }
}

void write_json_string(StringBuilder& w, std::string_view s, bool ensure_ascii) {
  std::string o = "\"";
  for (size_t p = 0; p < s.size();) {
    unsigned char c = s[p];
    char buf[16];
    if (c == '"') o += "\\\"", ++p;
    else if (c == '\\') o += "\\\\", ++p;
    else if (c == '\n') o += "\\n", ++p;
    else if (c == '\r') o += "\\r", ++p;
    else if (c == '\t') o += "\\t", ++p;
    else if (c == '\b') o += "\\b", ++p;
    else if (c == '\f') o += "\\f", ++p;
    else if (c < 0x20 || (ensure_ascii && c == 0x7f)) {
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      o += buf, ++p;
    } else if (c < 0x80 || !ensure_ascii) {
      o += char(c), ++p;
    } else {
      char32_t cp;
      p = utf8_next(s, p, &cp);
      if (cp >= 0x10000) {  // Python writes a surrogate pair
        char32_t u = cp - 0x10000;
        std::snprintf(buf, sizeof buf, "\\u%04x\\u%04x", unsigned(0xd800 + (u >> 10)), unsigned(0xdc00 + (u & 0x3ff)));
      } else {
        std::snprintf(buf, sizeof buf, "\\u%04x", unsigned(cp));
      }
      o += buf;
    }
  }
  o += '"';
  w.put(o);
}

void write_json(StringBuilder& w, const Value& v, const JsonStyle& st, int level) {
  using K = Value::Kind;
  auto newline = [&](int lvl) {
    if (!st.pretty) return;
    w.put('\n');
    for (int n = 0; n < lvl; ++n) w.put(st.indent);
  };
  switch (v.kind) {
    case K::None: w.put("null"); return;
    case K::Bool: w.put(v.b ? "true" : "false"); return;
    case K::Int: w.put(std::to_string(v.i)); return;
    case K::Float:
      if (std::isnan(v.f)) w.put("NaN");
      else if (std::isinf(v.f)) w.put(v.f > 0 ? "Infinity" : "-Infinity");
      else w.put(float_repr(v.f));
      return;
    case K::String: write_json_string(w, v.str(), st.ensure_ascii); return;
    case K::List: {
      if (v.list->items.empty()) return w.put("[]");
      w.put('[');
      bool first = true;
      for (auto& x : v.list->items) {
        if (!first) w.put(st.item_sep);
        first = false;
        newline(level + 1);
        write_json(w, x, st, level + 1);
      }
      newline(level);
      w.put(']');
      return;
    }
    case K::Dict: {
      if (v.dict->items.empty()) return w.put("{}");
      std::vector<const std::pair<std::string, Value>*> items;
      for (auto& kv : v.dict->items) items.push_back(&kv);
      if (st.sort_keys)
        std::stable_sort(items.begin(), items.end(), [](auto* a, auto* b) { return a->first < b->first; });
      w.put('{');
      bool first = true;
      for (auto* kv : items) {
        if (!first) w.put(st.item_sep);
        first = false;
        newline(level + 1);
        write_json_string(w, kv->first, st.ensure_ascii);
        w.put(st.key_sep);
        write_json(w, kv->second, st, level + 1);
      }
      newline(level);
      w.put('}');
      return;
    }
    default: raise("Object of type ", type_name(v), " is not JSON serializable");
  }
}

}  // namespace

std::string float_repr(double d) {
  if (std::isnan(d)) return "nan";
  if (std::isinf(d)) return d > 0 ? "inf" : "-inf";
  if (d == 0) return std::signbit(d) ? "-0.0" : "0.0";
  // The shortest %e that reads back as d: Python's repr digits.
  char buf[40];
  for (int prec = 0; prec < 17; ++prec) {
    std::snprintf(buf, sizeof buf, "%.*e", prec, d);
    if (std::strtod(buf, nullptr) == d) break;
  }
  std::string s = buf;
  bool neg = s[0] == '-';
  if (neg) s.erase(0, 1);
  size_t e = s.find('e');
  int exp = std::atoi(s.c_str() + e + 1);
  std::string digits;
  for (size_t n = 0; n < e; ++n)
    if (s[n] != '.') digits += s[n];
  while (digits.size() > 1 && digits.back() == '0') digits.pop_back();
  std::string out = neg ? "-" : "";
  if (exp >= -4 && exp < 16) {  // repr's switch to scientific notation
    if (exp >= 0) {
      std::string ip = digits.substr(0, std::min<size_t>(digits.size(), size_t(exp) + 1));
      ip.append(size_t(exp) + 1 - ip.size(), '0');
      std::string fp = digits.size() > size_t(exp) + 1 ? digits.substr(size_t(exp) + 1) : "0";
      out += ip + "." + fp;
    } else {
      out += "0." + std::string(size_t(-exp - 1), '0') + digits;
    }
  } else {
    out += digits.substr(0, 1);
    if (digits.size() > 1) out += "." + digits.substr(1);
    char eb[16];
    std::snprintf(eb, sizeof eb, "e%c%02d", exp < 0 ? '-' : '+', std::abs(exp));
    out += eb;
  }
  return out;
}

std::string to_str(const Value& v, Budget& budget) {
  using K = Value::Kind;
  switch (v.kind) {
    case K::Undefined: return "";
    case K::String: return v.str();
    default: {
      StringBuilder w(budget);
      write_repr(w, v);
      return std::move(w.out);
    }
  }
}

std::string to_repr(const Value& v, Budget& budget) {
  StringBuilder w(budget);
  write_repr(w, v);
  return std::move(w.out);
}

std::string to_json(const Value& v, const JsonStyle& style, Budget& budget) {
  StringBuilder w(budget);
  write_json(w, v, style, 0);
  return std::move(w.out);
}

// ---------------------------------------------------------------------------------------------------------------
// JSON input

template <typename J>
static Value convert(const J& j, Budget& budget, int depth) {
  if (depth > budget.lim.max_nesting) raise("input JSON nested more than ", budget.lim.max_nesting, " deep");
  switch (j.type()) {
    case nlohmann::json::value_t::null: return Value::none();
    case nlohmann::json::value_t::boolean: return Value::boolean(j.template get<bool>());
    case nlohmann::json::value_t::number_integer: return Value::integer(j.template get<int64_t>());
    case nlohmann::json::value_t::number_unsigned: {
      uint64_t u = j.template get<uint64_t>();
      return u <= uint64_t(INT64_MAX) ? Value::integer(int64_t(u)) : Value::number(double(u));
    }
    case nlohmann::json::value_t::number_float: return Value::number(j.template get<double>());
    case nlohmann::json::value_t::string: {
      const auto& s = j.template get_ref<const std::string&>();
      budget.check_string(s.size());
      budget.charge(s.size());
      return Value::string(s);
    }
    case nlohmann::json::value_t::array: {
      std::vector<Value> items;
      items.reserve(j.size());
      for (const auto& x : j) items.push_back(convert(x, budget, depth + 1));
      return make_list(std::move(items), budget);
    }
    case nlohmann::json::value_t::object: {
      Dict d;
      for (auto it = j.begin(); it != j.end(); ++it) d.add(it.key(), convert(it.value(), budget, depth + 1));
      return make_dict(std::move(d), budget);
    }
    default: raise("unsupported JSON value (binary or discarded)");
  }
}

Value from_json(const nlohmann::json& j, Budget& budget) { return convert(j, budget, 0); }
Value from_json(const nlohmann::ordered_json& j, Budget& budget) { return convert(j, budget, 0); }

// ---------------------------------------------------------------------------------------------------------------
// UTF-8

size_t utf8_next(std::string_view s, size_t pos, char32_t* cp) {
  unsigned char c = s[pos];
  size_t len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
  char32_t v = len == 1 ? c : len == 2 ? (c & 0x1f) : len == 3 ? (c & 0x0f) : (c & 0x07);
  if (len == 0 || pos + len > s.size()) {
    if (cp) *cp = c;  // a stray byte: one "code point" of its own
    return pos + 1;
  }
  for (size_t k = 1; k < len; ++k) {
    unsigned char d = s[pos + k];
    if ((d >> 6) != 2) {
      if (cp) *cp = c;
      return pos + 1;
    }
    v = (v << 6) | (d & 0x3f);
  }
  if (cp) *cp = v;
  return pos + len;
}

size_t utf8_length(std::string_view s) {
  size_t n = 0;
  for (size_t p = 0; p < s.size(); p = utf8_next(s, p)) ++n;
  return n;
}

std::vector<uint32_t> utf8_offsets(std::string_view s) {  // strings are far below 4 GiB (Limits::max_string)
  std::vector<uint32_t> o;
  for (size_t p = 0; p < s.size(); p = utf8_next(s, p)) o.push_back(uint32_t(p));
  o.push_back(uint32_t(s.size()));
  return o;
}

void utf8_append(std::string& out, char32_t cp) {
  if (cp >= 0xd800 && cp < 0xe000) cp = 0xfffd;  // lone surrogates cannot be encoded
  if (cp < 0x80) {
    out += char(cp);
  } else if (cp < 0x800) {
    out += char(0xc0 | (cp >> 6));
    out += char(0x80 | (cp & 0x3f));
  } else if (cp < 0x10000) {
    out += char(0xe0 | (cp >> 12));
    out += char(0x80 | ((cp >> 6) & 0x3f));
    out += char(0x80 | (cp & 0x3f));
  } else if (cp < 0x110000) {
    out += char(0xf0 | (cp >> 18));
    out += char(0x80 | ((cp >> 12) & 0x3f));
    out += char(0x80 | ((cp >> 6) & 0x3f));
    out += char(0x80 | (cp & 0x3f));
  } else {
    utf8_append(out, 0xfffd);
  }
}

bool py_isspace(char32_t c) {
  return (c >= 9 && c <= 13) || c == ' ' || (c >= 0x1c && c <= 0x1f) || c == 0x85 || c == 0xa0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 || c == 0x202f || c == 0x205f || c == 0x3000;
}

}  // namespace bamba::jinja
