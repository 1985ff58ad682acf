// The builtins of the Jinja subset: filters, tests, Python methods of str/list/dict, and the global functions
// (jinja2's range/namespace/dict plus transformers' raise_exception and strftime_now). Signatures and results follow
// jinja2 3.1 and CPython; where a rule only matters for non-ASCII text (case mapping) it is ASCII-only.
#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <initializer_list>

#include "chat/jinja_ast.h"

namespace bamba::jinja {
namespace {

using K = Value::Kind;

// ---------------------------------------------------------------------------------------------------------------
// Argument helpers

// Binds positional and keyword arguments to parameter names as a Python signature would; missing ones stay
// Undefined.
std::vector<Value> bind(const char* fn, const Args& a, std::initializer_list<const char*> params) {
  std::vector<Value> out(params.size());
  if (a.pos.size() > params.size())
    raise(fn, "() takes at most ", params.size(), " argument(s), ", a.pos.size(), " given");
  for (size_t k = 0; k < a.pos.size(); ++k) out[k] = a.pos[k];
  for (auto& kv : a.kw) {
    auto it = std::find_if(params.begin(), params.end(), [&](const char* p) { return kv.first == p; });
    if (it == params.end()) raise(fn, "() got an unexpected keyword argument '", kv.first, "'");
    out[size_t(it - params.begin())] = kv.second;
  }
  return out;
}

bool given(const Value& v) { return !v.is(K::Undefined); }

const std::string& need_str(const Value& v, const char* what) {
  if (!v.is(K::String)) raise(what, " must be a string, not '", type_name(v), "'");
  return v.str();
}

int64_t need_int(const Value& v, const char* what) {
  if (!v.is_int()) raise(what, " must be an integer, not '", type_name(v), "'");
  return v.as_int();
}

bool opt_bool(const Value& v, bool dflt) { return given(v) ? truthy(v) : dflt; }

// ---------------------------------------------------------------------------------------------------------------
// String helpers (Python semantics on code points)

// Helpers walk UTF-8 in place (utf8_next) rather than decoding into arrays: a 16 MB string must not cost
// hundreds of MB of temporaries.

std::string strip(const std::string& s, const Value& chars, bool left, bool right) {
  bool ws = !given(chars) || chars.is(K::None);
  std::vector<char32_t> set;  // sorted, for binary search
  if (!ws) {
    const std::string& cs = need_str(chars, "strip chars");
    for (size_t p = 0; p < cs.size();) {
      char32_t c;
      p = utf8_next(cs, p, &c);
      set.push_back(c);
    }
    std::sort(set.begin(), set.end());
    set.erase(std::unique(set.begin(), set.end()), set.end());
  }
  auto strip_it = [&](char32_t x) { return ws ? py_isspace(x) : std::binary_search(set.begin(), set.end(), x); };
  size_t b = 0, e = s.size();
  char32_t c;
  if (left)
    for (size_t next; b < s.size() && (next = utf8_next(s, b, &c), strip_it(c));) b = next;
  if (right) {
    e = b;  // the end of the last code point that is kept
    for (size_t p = b; p < s.size();) {
      p = utf8_next(s, p, &c);
      if (!strip_it(c)) e = p;
    }
  }
  return s.substr(b, e - b);
}

char ascii_lower(char c) { return c >= 'A' && c <= 'Z' ? char(c + 32) : c; }
char ascii_upper(char c) { return c >= 'a' && c <= 'z' ? char(c - 32) : c; }
bool ascii_alpha(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }

std::string lower(std::string s) {
  for (auto& c : s) c = ascii_lower(c);
  return s;
}
std::string upper(std::string s) {
  for (auto& c : s) c = ascii_upper(c);
  return s;
}
std::string capitalize(std::string s) {
  s = lower(std::move(s));
  if (!s.empty()) s[0] = ascii_upper(s[0]);
  return s;
}
// str.title(): a letter after a non-letter starts a word ("they're" -> "They'Re", as Python does).
std::string py_title(std::string s) {
  bool prev_letter = false;
  for (auto& c : s) {
    bool letter = ascii_alpha(c);
    c = letter ? (prev_letter ? ascii_lower(c) : ascii_upper(c)) : c;
    prev_letter = letter;
  }
  return s;
}
// jinja2's title filter: words start after whitespace, '-', '(', '{', '[' or '<' ("they're" -> "They're").
std::string jinja_title(std::string s) {
  bool start = true;
  for (auto& c : s) {
    if (c == '-' || c == '(' || c == '{' || c == '[' || c == '<' || c == ' ' || (c >= 9 && c <= 13)) {
      start = true;
    } else {
      c = start ? ascii_upper(c) : ascii_lower(c);
      start = false;
    }
  }
  return s;
}

Value replace(Interp& in, const std::string& s, const std::string& old, const std::string& repl, int64_t count) {
  StringBuilder b(in.budget);
  if (count < 0) count = INT64_MAX;
  if (old.empty()) {  // Python inserts `repl` around every code point
    for (size_t p = 0, q; p < s.size(); p = q) {
      q = utf8_next(s, p);
      if (count > 0) b.put(repl), --count;
      b.put(std::string_view(s).substr(p, q - p));
    }
    if (count > 0) b.put(repl);
    return Value::string(std::move(b.out));
  }
  size_t p = 0;
  for (size_t q; count > 0 && (q = s.find(old, p)) != std::string::npos; --count) {
    b.put(std::string_view(s).substr(p, q - p));
    b.put(repl);
    p = q + old.size();
  }
  b.put(std::string_view(s).substr(p));
  return Value::string(std::move(b.out));
}

// str.split / str.rsplit.
Value split(Interp& in, const std::string& s, const Value& sep_v, const Value& maxsplit_v, bool from_right) {
  int64_t maxsplit = given(maxsplit_v) ? need_int(maxsplit_v, "maxsplit") : -1;
  if (maxsplit < 0) maxsplit = INT64_MAX;
  std::vector<std::string> parts;
  if (!given(sep_v) || sep_v.is(K::None)) {  // runs of whitespace; no empty parts
    std::vector<std::pair<size_t, size_t>> words;  // byte ranges
    for (size_t p = 0; p < s.size();) {
      size_t b = p, e = p;
      char32_t c;
      for (size_t next; p < s.size() && (next = utf8_next(s, p, &c), py_isspace(c));) b = e = p = next;
      for (size_t next; p < s.size() && (next = utf8_next(s, p, &c), !py_isspace(c));) e = p = next;
      if (e > b) words.emplace_back(b, e);
      in.budget.check_items(words.size());
    }
    auto text = [&](size_t b, size_t e) { return s.substr(b, e - b); };
    if (int64_t(words.size()) - 1 <= maxsplit) {
      for (auto [b, e] : words) parts.push_back(text(b, e));
    } else if (!from_right) {
      for (int64_t k = 0; k < maxsplit; ++k) parts.push_back(text(words[size_t(k)].first, words[size_t(k)].second));
      parts.push_back(text(words[size_t(maxsplit)].first, s.size()));  // the rest, trailing spaces kept
    } else {
      size_t keep = words.size() - size_t(maxsplit);
      parts.push_back(text(0, words[keep - 1].second));
      for (size_t k = keep; k < words.size(); ++k) parts.push_back(text(words[k].first, words[k].second));
    }
  } else {
    const std::string& sep = need_str(sep_v, "separator");
    if (sep.empty()) raise("empty separator");
    if (!from_right) {
      size_t p = 0;
      for (size_t q; maxsplit > 0 && (q = s.find(sep, p)) != std::string::npos; --maxsplit) {
        parts.push_back(s.substr(p, q - p));
        p = q + sep.size();
      }
      parts.push_back(s.substr(p));
    } else {
      size_t end = s.size();
      for (; maxsplit > 0 && end >= sep.size(); --maxsplit) {
        size_t q = s.rfind(sep, end - sep.size());
        if (q == std::string::npos) break;
        parts.push_back(s.substr(q + sep.size(), end - q - sep.size()));
        end = q;
      }
      parts.push_back(s.substr(0, end));
      std::reverse(parts.begin(), parts.end());
    }
  }
  std::vector<Value> items;
  for (auto& p : parts) items.push_back(Value::string(std::move(p)));
  return make_list(std::move(items), in.budget);
}

// str.splitlines(): Python's line boundaries.
std::vector<std::string> splitlines(const std::string& s, bool keepends) {
  std::vector<std::string> lines;
  size_t b = 0;
  for (size_t p = 0; p < s.size();) {
    char32_t c;
    size_t next = utf8_next(s, p, &c);
    bool nl = c == '\n' || c == '\r' || c == 0x0b || c == 0x0c || (c >= 0x1c && c <= 0x1e) || c == 0x85 ||
              c == 0x2028 || c == 0x2029;
    if (!nl) {
      p = next;
      continue;
    }
    if (c == '\r' && next < s.size() && s[next] == '\n') ++next;
    lines.push_back(s.substr(b, (keepends ? next : p) - b));
    b = p = next;
  }
  if (b < s.size()) lines.push_back(s.substr(b));
  return lines;
}

size_t cp_index(const std::string& s, size_t byte) { return utf8_length(std::string_view(s).substr(0, byte)); }

// str.format(): {}, {0}, {name}, {{ and }}; format specs and field attributes are not supported.
Value str_format(Interp& in, const std::string& fmt, const Args& a) {
  StringBuilder b(in.budget);
  size_t auto_idx = 0;
  for (size_t p = 0; p < fmt.size(); ++p) {
    char c = fmt[p];
    if (c == '}') {
      if (p + 1 < fmt.size() && fmt[p + 1] == '}') ++p;
      else raise("single '}' encountered in format string");
      b.put("}");
      continue;
    }
    if (c != '{') {
      b.put(std::string_view(&fmt[p], 1));
      continue;
    }
    if (p + 1 < fmt.size() && fmt[p + 1] == '{') {
      b.put("{");
      ++p;
      continue;
    }
    size_t e = fmt.find('}', p);
    if (e == std::string::npos) raise("single '{' encountered in format string");
    std::string field = fmt.substr(p + 1, e - p - 1);
    bool as_repr = false;
    if (field.size() >= 2 && field[field.size() - 2] == '!') {
      as_repr = field.back() == 'r';
      field.resize(field.size() - 2);
    }
    if (field.find_first_of(":.[") != std::string::npos) raise("format specs and field lookups are not supported");
    Value v;
    if (field.empty() || std::all_of(field.begin(), field.end(), [](char ch) { return ch >= '0' && ch <= '9'; })) {
      size_t idx = field.empty() ? auto_idx++ : size_t(std::strtoull(field.c_str(), nullptr, 10));
      if (idx >= a.pos.size()) raise("format: replacement index ", idx, " out of range");
      v = a.pos[idx];
    } else {
      auto it = std::find_if(a.kw.begin(), a.kw.end(), [&](auto& kv) { return kv.first == field; });
      if (it == a.kw.end()) raise("format: no argument named '", field, "'");
      v = it->second;
    }
    b.put(as_repr ? to_repr(v, in.budget) : in.str(v));
    p = e;
  }
  return Value::string(std::move(b.out));
}

std::string html_escape(const std::string& s) {
  std::string o;
  for (char c : s) {
    switch (c) {
      case '&': o += "&amp;"; break;
      case '<': o += "&lt;"; break;
      case '>': o += "&gt;"; break;
      case '"': o += "&#34;"; break;
      case '\'': o += "&#39;"; break;
      default: o += c;
    }
  }
  return o;
}

// "a.b.0": jinja2's attribute paths for sort/map/selectattr (dots walk attributes, numbers index lists).
Value attr_path(Interp& in, Value v, const Value& path) {
  if (path.is_int()) return in.get_item(v, path);
  const std::string& p = need_str(path, "attribute");
  size_t b = 0;
  for (;;) {
    size_t e = p.find('.', b);
    std::string part = p.substr(b, e == std::string::npos ? std::string::npos : e - b);
    bool digits = !part.empty() && std::all_of(part.begin(), part.end(), [](char c) { return c >= '0' && c <= '9'; });
    v = digits ? in.get_item(v, Value::integer(std::atoll(part.c_str()))) : in.get_attr(v, part);
    if (e == std::string::npos) return v;
    b = e + 1;
  }
}

size_t py_len(const Value& v) {
  switch (v.kind) {
    case K::String: return utf8_length(v.str());
    case K::List: return v.list->items.size();
    case K::Dict:
    case K::Namespace: return v.dict->items.size();
    case K::Undefined: return 0;
    default: raise("object of type '", type_name(v), "' has no len()");
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Filters

Value f_trim(Interp& in, const Value& v, Args& a) {
  auto p = bind("trim", a, {"chars"});
  return in.make_str(strip(in.str(v), p[0], true, true));
}
Value f_length(Interp&, const Value& v, Args& a) {
  bind("length", a, {});
  return Value::integer(int64_t(py_len(v)));
}
Value f_first(Interp& in, const Value& v, Args& a) {
  bind("first", a, {});
  if (v.is(K::List)) return v.list->items.empty() ? Value::undefined("first() of an empty list") : v.list->items[0];
  auto items = iterate(in, v);
  return items.empty() ? Value::undefined("first() of an empty sequence") : items.front();
}
Value f_last(Interp& in, const Value& v, Args& a) {
  bind("last", a, {});
  if (v.is(K::List)) return v.list->items.empty() ? Value::undefined("last() of an empty list") : v.list->items.back();
  auto items = iterate(in, v);
  return items.empty() ? Value::undefined("last() of an empty sequence") : items.back();
}
Value f_lower(Interp& in, const Value& v, Args& a) {
  bind("lower", a, {});
  return in.make_str(lower(in.str(v)));
}
Value f_upper(Interp& in, const Value& v, Args& a) {
  bind("upper", a, {});
  return in.make_str(upper(in.str(v)));
}
Value f_title(Interp& in, const Value& v, Args& a) {
  bind("title", a, {});
  return in.make_str(jinja_title(in.str(v)));
}
Value f_capitalize(Interp& in, const Value& v, Args& a) {
  bind("capitalize", a, {});
  return in.make_str(capitalize(in.str(v)));
}
Value f_replace(Interp& in, const Value& v, Args& a) {
  auto p = bind("replace", a, {"old", "new", "count"});
  int64_t count = given(p[2]) && !p[2].is(K::None) ? need_int(p[2], "count") : -1;
  return replace(in, in.str(v), in.str(p[0]), in.str(p[1]), count);
}
Value f_join(Interp& in, const Value& v, Args& a) {
  auto p = bind("join", a, {"d", "attribute"});
  std::string sep = given(p[0]) ? in.str(p[0]) : "";
  StringBuilder b(in.budget);
  bool first = true;
  for (auto& x : iterate(in, v)) {
    if (!first) b.put(sep);
    first = false;
    b.put(in.str(given(p[1]) && !p[1].is(K::None) ? attr_path(in, x, p[1]) : x));
  }
  return Value::string(std::move(b.out));
}
Value f_default(Interp& in, const Value& v, Args& a) {
  auto p = bind("default", a, {"default_value", "boolean"});
  bool use_default = v.is(K::Undefined) || (opt_bool(p[1], false) && !truthy(v));
  if (!use_default) return v;
  return given(p[0]) ? p[0] : in.make_str("");
}
// transformers' tojson: json.dumps(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False), with no
// HTML escaping (jinja2's own tojson would escape <, >, & and ').
Value f_tojson(Interp& in, const Value& v, Args& a) {
  auto p = bind("tojson", a, {"ensure_ascii", "indent", "separators", "sort_keys"});
  JsonStyle st;
  st.ensure_ascii = opt_bool(p[0], false);
  if (given(p[1]) && !p[1].is(K::None)) {
    st.pretty = true;
    st.item_sep = ",";
    if (p[1].is(K::String)) st.indent = p[1].str();
    else st.indent = std::string(size_t(std::clamp<int64_t>(need_int(p[1], "indent"), 0, 64)), ' ');
  }
  if (given(p[2]) && !p[2].is(K::None)) {
    auto seps = iterate(in, p[2]);
    if (seps.size() != 2) raise("tojson separators must be a pair of strings");
    st.item_sep = need_str(seps[0], "separator");
    st.key_sep = need_str(seps[1], "separator");
  }
  st.sort_keys = opt_bool(p[3], false);
  return in.make_str(to_json(v, st, in.budget));
}
Value f_string(Interp& in, const Value& v, Args& a) {
  bind("string", a, {});
  return v.is(K::String) ? v : in.make_str(in.str(v));
}

// int(): Python int() of a number or numeric string, else `default`.
Value f_int(Interp& in, const Value& v, Args& a) {
  auto p = bind("int", a, {"default", "base"});
  Value dflt = given(p[0]) ? p[0] : Value::integer(0);
  int base = given(p[1]) ? int(need_int(p[1], "base")) : 10;
  if (v.is_int()) return Value::integer(v.as_int());
  if (v.is(K::Float)) {
    if (!std::isfinite(v.f) || std::fabs(v.f) >= 9.2e18) return dflt;
    return Value::integer(int64_t(v.f));
  }
  if (!v.is(K::String)) return dflt;
  std::string s = strip(v.str(), Value(), true, true);
  std::string digits;
  for (char c : s)
    if (c != '_') digits += c;
  if (digits.empty() || base < 2 || base > 36) return dflt;
  errno = 0;
  char* end = nullptr;
  long long r = std::strtoll(digits.c_str(), &end, base);
  if (end && *end == 0 && errno == 0) return Value::integer(r);
  double d = std::strtod(digits.c_str(), &end);  // jinja2 falls back to int(float(s))
  if (base == 10 && end && *end == 0 && std::isfinite(d) && std::fabs(d) < 9.2e18) return Value::integer(int64_t(d));
  return dflt;
}
Value f_float(Interp&, const Value& v, Args& a) {
  auto p = bind("float", a, {"default"});
  Value dflt = given(p[0]) ? p[0] : Value::number(0.0);
  if (v.is_number()) return Value::number(v.as_double());
  if (!v.is(K::String)) return dflt;
  std::string s = strip(v.str(), Value(), true, true);
  char* end = nullptr;
  double d = std::strtod(s.c_str(), &end);
  return !s.empty() && end && *end == 0 ? Value::number(d) : dflt;
}
Value f_list(Interp& in, const Value& v, Args& a) {
  bind("list", a, {});
  return make_list(iterate(in, v), in.budget);
}
Value f_items(Interp& in, const Value& v, Args& a) {
  bind("items", a, {});
  if (v.is(K::Undefined)) return make_list({}, in.budget);
  if (!v.is(K::Dict)) raise("can only get item pairs from a mapping, not '", type_name(v), "'");
  std::vector<Value> pairs;
  for (auto& [k, x] : v.dict->items) pairs.push_back(make_list({Value::string(k), x}, in.budget, true));
  return make_list(std::move(pairs), in.budget);
}
Value f_dictsort(Interp& in, const Value& v, Args& a) {
  auto p = bind("dictsort", a, {"case_sensitive", "by", "reverse"});
  if (!v.is(K::Dict)) raise("dictsort expects a mapping, not '", type_name(v), "'");
  bool cs = opt_bool(p[0], false), by_value = given(p[1]) && in.str(p[1]) == "value", rev = opt_bool(p[2], false);
  std::vector<std::pair<std::string, Value>> items = v.dict->items;
  auto key = [&](const std::pair<std::string, Value>& kv) {
    Value k = by_value ? kv.second : Value::string(kv.first);
    return (!cs && k.is(K::String)) ? Value::string(lower(k.str())) : k;
  };
  std::stable_sort(items.begin(), items.end(), [&](auto& x, auto& y) {
    in.budget.charge(16);
    int c = compare(key(x), key(y), in.budget);
    return rev ? c > 0 : c < 0;
  });
  std::vector<Value> pairs;
  for (auto& [k, x] : items) pairs.push_back(make_list({Value::string(k), x}, in.budget, true));
  return make_list(std::move(pairs), in.budget);
}

// select/reject/selectattr/rejectattr: keep the items whose (attribute) passes the named test, or is truthy.
Value select_impl(Interp& in, const Value& v, Args& a, bool by_attr, bool keep_if) {
  const char* fn = by_attr ? (keep_if ? "selectattr" : "rejectattr") : (keep_if ? "select" : "reject");
  size_t k = 0;
  Value attr;
  if (by_attr) {
    if (a.pos.empty()) raise(fn, "() needs an attribute name");
    attr = a.pos[k++];
  }
  TestFn test = nullptr;
  if (k < a.pos.size()) {
    const std::string& name = need_str(a.pos[k++], "test name");
    test = find_test(name);
    if (!test) raise(fn, "(): unknown test '", name, "'");
  }
  Args targs;
  targs.pos.assign(a.pos.begin() + std::ptrdiff_t(k), a.pos.end());
  targs.kw = a.kw;
  std::vector<Value> out;
  for (auto& x : iterate(in, v)) {
    Value subject = by_attr ? attr_path(in, x, attr) : x;
    in.budget.charge(1 + size_units(subject));
    bool pass = test ? test(in, subject, targs) : truthy(subject);
    if (pass == keep_if) out.push_back(x);
  }
  return make_list(std::move(out), in.budget);
}
Value f_select(Interp& in, const Value& v, Args& a) { return select_impl(in, v, a, false, true); }
Value f_reject(Interp& in, const Value& v, Args& a) { return select_impl(in, v, a, false, false); }
Value f_selectattr(Interp& in, const Value& v, Args& a) { return select_impl(in, v, a, true, true); }
Value f_rejectattr(Interp& in, const Value& v, Args& a) { return select_impl(in, v, a, true, false); }

// map(attribute='x', default=d) or map('filter', args...).
Value f_map(Interp& in, const Value& v, Args& a) {
  std::vector<Value> out;
  auto attr_it = std::find_if(a.kw.begin(), a.kw.end(), [](auto& kv) { return kv.first == "attribute"; });
  if (attr_it != a.kw.end()) {
    auto p = bind("map", a, {"attribute", "default"});
    for (auto& x : iterate(in, v)) {
      Value r = attr_path(in, x, p[0]);
      out.push_back(r.is(K::Undefined) && given(p[1]) ? p[1] : r);
    }
    return make_list(std::move(out), in.budget);
  }
  if (a.pos.empty()) raise("map() needs a filter name or attribute=");
  const std::string& name = need_str(a.pos[0], "filter name");
  FilterFn f = find_filter(name);
  if (!f) raise("map(): unknown filter '", name, "'");
  Args fargs;
  fargs.pos.assign(a.pos.begin() + 1, a.pos.end());
  fargs.kw = a.kw;
  for (auto& x : iterate(in, v)) {
    Args copy = fargs;
    in.budget.charge(1 + size_units(x));
    out.push_back(f(in, x, copy));
  }
  return make_list(std::move(out), in.budget);
}

Value f_safe(Interp&, const Value& v, Args& a) {
  bind("safe", a, {});
  return v;
}
Value f_escape(Interp& in, const Value& v, Args& a) {
  bind("escape", a, {});
  return in.make_str(html_escape(in.str(v)));
}
Value f_reverse(Interp& in, const Value& v, Args& a) {
  bind("reverse", a, {});
  if (v.is(K::String)) {  // code points in reverse order: each lands at the mirror of its position
    const std::string& s = v.str();
    std::string r(s.size(), '\0');
    for (size_t p = 0, q; p < s.size(); p = q) {
      q = utf8_next(s, p);
      std::copy(s.begin() + std::ptrdiff_t(p), s.begin() + std::ptrdiff_t(q), r.end() - std::ptrdiff_t(q));
    }
    return in.make_str(std::move(r));
  }
  auto items = iterate(in, v);
  std::reverse(items.begin(), items.end());
  return make_list(std::move(items), in.budget);
}

// The sort key of sort/unique/min/max: the (attribute of the) item, lowercased unless case_sensitive.
Value sort_key(Interp& in, const Value& x, const Value& attr, bool case_sensitive) {
  Value k = given(attr) && !attr.is(K::None) ? attr_path(in, x, attr) : x;
  return (!case_sensitive && k.is(K::String)) ? Value::string(lower(k.str())) : k;
}
Value f_sort(Interp& in, const Value& v, Args& a) {
  auto p = bind("sort", a, {"reverse", "case_sensitive", "attribute"});
  bool rev = opt_bool(p[0], false), cs = opt_bool(p[1], false);
  auto items = iterate(in, v);
  std::vector<std::pair<Value, Value>> keyed;
  for (auto& x : items) keyed.emplace_back(sort_key(in, x, p[2], cs), x);
  std::stable_sort(keyed.begin(), keyed.end(), [&](auto& x, auto& y) {
    in.budget.charge(16);
    int c = compare(x.first, y.first, in.budget);
    return rev ? c > 0 : c < 0;
  });
  items.clear();
  for (auto& kv : keyed) items.push_back(kv.second);
  return make_list(std::move(items), in.budget);
}
Value f_unique(Interp& in, const Value& v, Args& a) {
  auto p = bind("unique", a, {"case_sensitive", "attribute"});
  bool cs = opt_bool(p[0], false);
  std::vector<Value> out, seen;
  for (auto& x : iterate(in, v)) {
    Value k = sort_key(in, x, p[1], cs);
    in.budget.charge(16 * seen.size());  // a linear scan: fine for the short lists templates dedupe
    bool dup = false;
    for (auto& s : seen)
      if ((dup = equals(s, k, in.budget))) break;
    if (!dup) seen.push_back(k), out.push_back(x);
  }
  return make_list(std::move(out), in.budget);
}
Value minmax(Interp& in, const Value& v, Args& a, bool want_max) {
  auto p = bind(want_max ? "max" : "min", a, {"case_sensitive", "attribute"});
  bool cs = opt_bool(p[0], false);
  auto items = iterate(in, v);
  if (items.empty()) return Value::undefined("min/max of an empty sequence");
  size_t best = 0;
  for (size_t k = 1; k < items.size(); ++k) {
    int c = compare(sort_key(in, items[k], p[1], cs), sort_key(in, items[best], p[1], cs), in.budget);
    if (want_max ? c > 0 : c < 0) best = k;
  }
  return items[best];
}
Value f_min(Interp& in, const Value& v, Args& a) { return minmax(in, v, a, false); }
Value f_max(Interp& in, const Value& v, Args& a) { return minmax(in, v, a, true); }
Value f_sum(Interp& in, const Value& v, Args& a) {
  auto p = bind("sum", a, {"attribute", "start"});
  Value total = given(p[1]) ? p[1] : Value::integer(0);
  for (auto& x : iterate(in, v)) {
    Value y = given(p[0]) ? attr_path(in, x, p[0]) : x;
    if (!total.is_number() || !y.is_number()) raise("sum() of non-numbers");
    if (total.is_int() && y.is_int()) {
      int64_t r;
      if (__builtin_add_overflow(total.as_int(), y.as_int(), &r)) raise("integer overflow");
      total = Value::integer(r);
    } else {
      total = Value::number(total.as_double() + y.as_double());
    }
  }
  return total;
}
Value f_abs(Interp&, const Value& v, Args& a) {
  bind("abs", a, {});
  if (v.is(K::Float)) return Value::number(std::fabs(v.f));
  int64_t x = need_int(v, "abs() argument");
  if (x == INT64_MIN) raise("integer overflow");
  return Value::integer(x < 0 ? -x : x);
}
Value f_round(Interp&, const Value& v, Args& a) {
  auto p = bind("round", a, {"precision", "method"});
  if (!v.is_number()) raise("round() of a '", type_name(v), "'");
  int64_t prec = given(p[0]) ? std::clamp<int64_t>(need_int(p[0], "precision"), -20, 20) : 0;
  std::string method = given(p[1]) ? need_str(p[1], "method") : "common";
  double scale = std::pow(10.0, double(prec)), x = v.as_double() * scale;
  if (method == "common") x = std::nearbyint(x);  // Python's round(): half to even
  else if (method == "ceil") x = std::ceil(x);
  else if (method == "floor") x = std::floor(x);
  else raise("round() method must be 'common', 'ceil' or 'floor'");
  return Value::number(x / scale);
}
Value f_indent(Interp& in, const Value& v, Args& a) {
  auto p = bind("indent", a, {"width", "first", "blank"});
  std::string ind = p[0].is(K::String) ? p[0].str()
                    : std::string(size_t(std::clamp<int64_t>(given(p[0]) ? need_int(p[0], "width") : 4, 0, 256)), ' ');
  bool first = opt_bool(p[1], false), blank = opt_bool(p[2], false);
  auto lines = splitlines(in.str(v) + "\n", false);
  StringBuilder b(in.budget);
  for (size_t k = 0; k < lines.size(); ++k) {
    if (k > 0) b.put("\n");
    if ((k > 0 || first) && (blank || !lines[k].empty())) b.put(ind);
    b.put(lines[k]);
  }
  return Value::string(std::move(b.out));
}
Value f_format(Interp& in, const Value& v, Args& a) {
  if (!a.kw.empty() && !a.pos.empty()) raise("format() takes positional or keyword arguments, not both");
  Value args;
  if (!a.kw.empty()) {
    Dict d;
    for (auto& [k, x] : a.kw) d.set(k, x);
    args = make_dict(std::move(d), in.budget);
  } else {
    args = make_list(a.pos, in.budget, true);  // jinja2: str(value) % args, args a tuple
  }
  return format_percent(in, in.str(v), args);
}
// attr(): a Python attribute only (jinja2 calls getattr), so a dict's keys are not found but a namespace's are.
Value f_attr(Interp& in, const Value& v, Args& a) {
  auto p = bind("attr", a, {"name"});
  const std::string& name = need_str(p[0], "attribute name");
  if (v.is(K::Namespace)) return in.get_attr(v, name);
  return Value::undefined(cat("'", type_name(v), " object' has no attribute '", name, "'"));
}
Value f_wordcount(Interp& in, const Value& v, Args& a) {
  bind("wordcount", a, {});
  return Value::integer(int64_t(split(in, in.str(v), Value(), Value(), false).list->items.size()));
}

struct FilterEntry {
  const char* name;
  FilterFn fn;
};
constexpr FilterEntry kFilters[] = {
    {"abs", f_abs},           {"attr", f_attr},         {"capitalize", f_capitalize}, {"count", f_length},
    {"d", f_default},         {"default", f_default},   {"dictsort", f_dictsort},     {"e", f_escape},
    {"escape", f_escape},     {"first", f_first},       {"float", f_float},           {"forceescape", f_escape},
    {"format", f_format},     {"indent", f_indent},     {"int", f_int},               {"items", f_items},
    {"join", f_join},         {"last", f_last},         {"length", f_length},         {"list", f_list},
    {"lower", f_lower},       {"map", f_map},           {"max", f_max},               {"min", f_min},
    {"reject", f_reject},     {"rejectattr", f_rejectattr}, {"replace", f_replace},   {"reverse", f_reverse},
    {"round", f_round},       {"safe", f_safe},         {"select", f_select},         {"selectattr", f_selectattr},
    {"sort", f_sort},         {"string", f_string},     {"sum", f_sum},               {"title", f_title},
    {"tojson", f_tojson},     {"trim", f_trim},         {"unique", f_unique},         {"upper", f_upper},
    {"wordcount", f_wordcount},
};

// ---------------------------------------------------------------------------------------------------------------
// Tests

Value test_arg(const Args& a, const char* test) {
  auto p = bind(test, a, {"other"});
  return p[0];
}
bool cased_all(const Value& v, bool want_lower) {  // str.islower()/isupper(): some cased letters, all one case
  if (!v.is(K::String)) return false;
  bool any = false;
  for (char c : v.str()) {
    if (!ascii_alpha(c)) continue;
    any = true;
    if ((c >= 'a' && c <= 'z') != want_lower) return false;
  }
  return any;
}

bool t_defined(Interp&, const Value& v, Args&) { return !v.is(K::Undefined); }
bool t_undefined(Interp&, const Value& v, Args&) { return v.is(K::Undefined); }
bool t_none(Interp&, const Value& v, Args&) { return v.is(K::None); }
bool t_boolean(Interp&, const Value& v, Args&) { return v.is(K::Bool); }
bool t_true(Interp&, const Value& v, Args&) { return v.is(K::Bool) && v.b; }
bool t_false(Interp&, const Value& v, Args&) { return v.is(K::Bool) && !v.b; }
bool t_integer(Interp&, const Value& v, Args&) { return v.is(K::Int); }
bool t_float(Interp&, const Value& v, Args&) { return v.is(K::Float); }
bool t_number(Interp&, const Value& v, Args&) { return v.is_number(); }
bool t_string(Interp&, const Value& v, Args&) { return v.is(K::String); }
bool t_mapping(Interp&, const Value& v, Args&) { return v.is(K::Dict); }
// Undefined is iterable (and a sequence) in jinja2: it iterates as empty.
bool t_iterable(Interp&, const Value& v, Args&) {
  return v.is(K::String) || v.is(K::List) || v.is(K::Dict) || v.is(K::Undefined);
}
bool t_callable(Interp&, const Value& v, Args&) { return v.is(K::Callable); }
bool t_lower(Interp&, const Value& v, Args&) { return cased_all(v, true); }
bool t_upper(Interp&, const Value& v, Args&) { return cased_all(v, false); }
int64_t mod(const Value& v, int64_t m) {
  int64_t x = need_int(v, "value"), r = x % m;
  return r < 0 ? r + (m < 0 ? -m : m) : r;
}
bool t_odd(Interp&, const Value& v, Args&) { return mod(v, 2) == 1; }
bool t_even(Interp&, const Value& v, Args&) { return mod(v, 2) == 0; }
bool t_divisibleby(Interp&, const Value& v, Args& a) {
  int64_t n = need_int(test_arg(a, "divisibleby"), "divisor");
  if (n == 0) raise("integer division or modulo by zero");
  return n == -1 || mod(v, n) == 0;
}
bool t_eq(Interp& in, const Value& v, Args& a) { return equals(v, test_arg(a, "eq"), in.budget); }
bool t_ne(Interp& in, const Value& v, Args& a) { return !equals(v, test_arg(a, "ne"), in.budget); }
bool t_lt(Interp& in, const Value& v, Args& a) { return compare(v, test_arg(a, "lt"), in.budget) < 0; }
bool t_le(Interp& in, const Value& v, Args& a) { return compare(v, test_arg(a, "le"), in.budget) <= 0; }
bool t_gt(Interp& in, const Value& v, Args& a) { return compare(v, test_arg(a, "gt"), in.budget) > 0; }
bool t_ge(Interp& in, const Value& v, Args& a) { return compare(v, test_arg(a, "ge"), in.budget) >= 0; }
bool t_in(Interp& in, const Value& v, Args& a) {
  Value seq = test_arg(a, "in");
  if (seq.is(K::String) && v.is(K::String)) return seq.str().find(v.str()) != std::string::npos;
  for (auto& x : iterate(in, seq))
    if (equals(x, v, in.budget)) return true;
  return false;
}
// `is sameas`: Python identity. Scalars compare by value (CPython shares None/True/False and small ints).
bool t_sameas(Interp& in, const Value& v, Args& a) {
  Value o = test_arg(a, "sameas");
  if (v.kind != o.kind) return false;
  if (v.is(K::List)) return v.list == o.list;
  if (v.is(K::Dict) || v.is(K::Namespace)) return v.dict == o.dict;
  if (v.is(K::Callable)) return v.fn == o.fn;
  return equals(v, o, in.budget);
}
bool t_escaped(Interp&, const Value&, Args&) { return false; }

struct TestEntry {
  const char* name;
  TestFn fn;
};
constexpr TestEntry kTests[] = {
    {"!=", t_ne},         {"<", t_lt},           {"<=", t_le},       {"==", t_eq},           {">", t_gt},
    {">=", t_ge},         {"boolean", t_boolean}, {"callable", t_callable}, {"defined", t_defined},
    {"divisibleby", t_divisibleby}, {"eq", t_eq}, {"equalto", t_eq}, {"escaped", t_escaped},  {"even", t_even},
    {"false", t_false},   {"float", t_float},    {"ge", t_ge},       {"greaterthan", t_gt},  {"gt", t_gt},
    {"in", t_in},         {"integer", t_integer}, {"iterable", t_iterable}, {"le", t_le},     {"lessthan", t_lt},
    {"lower", t_lower},   {"lt", t_lt},          {"mapping", t_mapping}, {"ne", t_ne},       {"none", t_none},
    {"number", t_number}, {"odd", t_odd},        {"sameas", t_sameas}, {"sequence", t_iterable},
    {"string", t_string}, {"true", t_true},      {"undefined", t_undefined}, {"upper", t_upper},
};

// ---------------------------------------------------------------------------------------------------------------
// Global functions

struct Builtin : Callable {
  Value (*fn)(Interp&, Args&);
  Builtin(std::string n, Value (*f)(Interp&, Args&)) : fn(f) { name = std::move(n); }
  Value call(Interp& in, Args& a) const override { return fn(in, a); }
};

Value g_range(Interp& in, Args& a) {
  if (!a.kw.empty() || a.pos.empty() || a.pos.size() > 3) raise("range() takes 1 to 3 integer arguments");
  int64_t start = 0, stop, step = 1;
  if (a.pos.size() == 1) {
    stop = need_int(a.pos[0], "range() argument");
  } else {
    start = need_int(a.pos[0], "range() argument");
    stop = need_int(a.pos[1], "range() argument");
    if (a.pos.size() == 3) step = need_int(a.pos[2], "range() argument");
  }
  if (step == 0) raise("range() arg 3 must not be zero");
  __int128 span = step > 0 ? __int128(stop) - start : __int128(start) - stop;
  __int128 n = span <= 0 ? 0 : (span + (step > 0 ? step : -__int128(step)) - 1) / (step > 0 ? step : -__int128(step));
  if (n > in.budget.lim.max_range)
    raise("range() of more than ", in.budget.lim.max_range, " items is refused (as in jinja2's sandbox)");
  std::vector<Value> items;
  for (int64_t k = 0; k < int64_t(n); ++k) items.push_back(Value::integer(int64_t(start + __int128(k) * step)));
  return make_list(std::move(items), in.budget);
}

Dict dict_from(Interp& in, Args& a, const char* fn) {
  Dict d;
  if (a.pos.size() > 1) raise(fn, "() takes at most one positional argument");
  if (!a.pos.empty()) {
    const Value& src = a.pos[0];
    if (src.is(K::Dict)) {
      for (auto& [k, v] : src.dict->items) d.set(k, v);
    } else {
      for (auto& pair : iterate(in, src)) {
        auto kv = iterate(in, pair);
        if (kv.size() != 2) raise(fn, "(): each item must be a key, value pair");
        d.set(need_str(kv[0], "key"), kv[1]);
      }
    }
  }
  for (auto& [k, v] : a.kw) d.set(k, v);
  return d;
}
Value g_namespace(Interp& in, Args& a) { return make_namespace(dict_from(in, a, "namespace"), in.budget); }
Value g_dict(Interp& in, Args& a) { return make_dict(dict_from(in, a, "dict"), in.budget); }

// transformers: raise_exception(message) stops rendering with the template's own message.
Value g_raise_exception(Interp& in, Args& a) {
  auto p = bind("raise_exception", a, {"message"});
  raise(in.str(p[0]));
}

// transformers: strftime_now(format) = datetime.now().strftime(format), local time.
Value g_strftime_now(Interp& in, Args& a) {
  auto p = bind("strftime_now", a, {"format"});
  const std::string& fmt = need_str(p[0], "strftime_now format");
  if (fmt.size() > 256) raise("strftime_now format longer than 256 bytes");
  if (fmt.find('\0') != std::string::npos) raise("strftime_now format contains a NUL byte");
  std::tm tm{};
  localtime_r(&in.now, &tm);
  // 256 format bytes expand to well under 16 KiB, so 0 can only mean an empty result.
  std::vector<char> buf(16384);
  size_t n = std::strftime(buf.data(), buf.size(), fmt.c_str(), &tm);
  return in.make_str(std::string(buf.data(), n));
}

// ---------------------------------------------------------------------------------------------------------------
// Methods

std::optional<Value> string_method(Interp& in, const Value& obj, const std::string& m, Args& a) {
  const std::string& s = obj.str();
  in.budget.charge(s.size() + 1);
  auto str_result = [&](std::string r) -> std::optional<Value> { return in.make_str(std::move(r)); };
  if (m == "strip" || m == "lstrip" || m == "rstrip") {
    auto p = bind(m.c_str(), a, {"chars"});
    return str_result(strip(s, p[0], m != "rstrip", m != "lstrip"));
  }
  if (m == "startswith" || m == "endswith") {
    auto p = bind(m.c_str(), a, {"prefix"});
    std::vector<Value> options = p[0].is(K::String) ? std::vector<Value>{p[0]} : iterate(in, p[0]);
    for (auto& o : options) {
      const std::string& x = need_str(o, m == "startswith" ? "prefix" : "suffix");
      bool hit = m == "startswith" ? s.compare(0, x.size(), x) == 0
                                   : s.size() >= x.size() && s.compare(s.size() - x.size(), x.size(), x) == 0;
      if (hit) return Value::boolean(true);
    }
    return Value::boolean(false);
  }
  if (m == "split" || m == "rsplit") {
    auto p = bind(m.c_str(), a, {"sep", "maxsplit"});
    return split(in, s, p[0], p[1], m == "rsplit");
  }
  if (m == "splitlines") {
    auto p = bind("splitlines", a, {"keepends"});
    std::vector<Value> items;
    for (auto& l : splitlines(s, opt_bool(p[0], false))) items.push_back(Value::string(std::move(l)));
    return make_list(std::move(items), in.budget);
  }
  if (m == "upper" || m == "lower" || m == "title" || m == "capitalize") {
    bind(m.c_str(), a, {});
    return str_result(m == "upper" ? upper(s) : m == "lower" ? lower(s) : m == "title" ? py_title(s) : capitalize(s));
  }
  if (m == "replace") {
    auto p = bind("replace", a, {"old", "new", "count"});
    int64_t count = given(p[2]) ? need_int(p[2], "count") : -1;
    return replace(in, s, need_str(p[0], "old"), need_str(p[1], "new"), count);
  }
  if (m == "find" || m == "rfind" || m == "index" || m == "rindex" || m == "count") {
    auto p = bind(m.c_str(), a, {"sub"});
    const std::string& sub = need_str(p[0], "substring");
    if (m == "count") {
      if (sub.empty()) return Value::integer(int64_t(utf8_length(s)) + 1);
      int64_t n = 0;
      for (size_t q = s.find(sub); q != std::string::npos; q = s.find(sub, q + sub.size())) ++n;
      return Value::integer(n);
    }
    size_t q = (m == "find" || m == "index") ? s.find(sub) : s.rfind(sub);
    if (q == std::string::npos) {
      if (m == "index" || m == "rindex") raise("substring not found");
      return Value::integer(-1);
    }
    return Value::integer(int64_t(cp_index(s, q)));
  }
  if (m == "join") {
    auto p = bind("join", a, {"iterable"});
    StringBuilder b(in.budget);
    bool first = true;
    for (auto& x : iterate(in, p[0])) {
      if (!first) b.put(s);
      first = false;
      b.put(need_str(x, "join() item"));
    }
    return Value::string(std::move(b.out));
  }
  if (m == "format") return str_format(in, s, a);
  if (m == "removeprefix" || m == "removesuffix") {
    auto p = bind(m.c_str(), a, {"affix"});
    const std::string& x = need_str(p[0], "affix");
    if (m == "removeprefix") return str_result(s.compare(0, x.size(), x) == 0 ? s.substr(x.size()) : s);
    bool has = s.size() >= x.size() && s.compare(s.size() - x.size(), x.size(), x) == 0;
    return str_result(has ? s.substr(0, s.size() - x.size()) : s);
  }
  if (m == "isdigit" || m == "isalpha" || m == "isalnum" || m == "isspace" || m == "islower" || m == "isupper") {
    bind(m.c_str(), a, {});
    if (m == "islower" || m == "isupper") return Value::boolean(cased_all(obj, m == "islower"));
    if (s.empty()) return Value::boolean(false);
    for (size_t p = 0; p < s.size();) {
      char32_t c;
      p = utf8_next(s, p, &c);
      bool digit = c >= '0' && c <= '9', alpha = c < 128 && ascii_alpha(char(c));
      bool ok = m == "isdigit" ? digit : m == "isalpha" ? alpha : m == "isalnum" ? digit || alpha : py_isspace(c);
      if (!ok) return Value::boolean(false);
    }
    return Value::boolean(true);
  }
  return std::nullopt;
}

std::optional<Value> dict_method(Interp& in, const Value& obj, const std::string& m, Args& a) {
  const Dict& d = *obj.dict;
  if (m == "items" || m == "keys" || m == "values") {
    bind(m.c_str(), a, {});
    in.budget.charge(d.items.size());
    std::vector<Value> out;
    for (auto& [k, v] : d.items) {
      if (m == "items") out.push_back(make_list({Value::string(k), v}, in.budget, true));
      else out.push_back(m == "keys" ? Value::string(k) : v);
    }
    return make_list(std::move(out), in.budget);
  }
  if (m == "get") {
    auto p = bind("get", a, {"key", "default"});
    const Value* v = p[0].is(K::String) ? d.find(p[0].str()) : nullptr;
    return v ? *v : given(p[1]) ? p[1] : Value::none();
  }
  // loop.cycle(a, b, ...): jinja2's loop helper; `loop` is a plain dict here.
  if (m == "cycle" && a.kw.empty() && d.find("index0") && d.find("revindex0")) {
    if (a.pos.empty()) raise("loop.cycle() needs at least one value");
    return a.pos[size_t(d.find("index0")->as_int()) % a.pos.size()];
  }
  return std::nullopt;
}

std::optional<Value> list_method(Interp& in, const Value& obj, const std::string& m, Args& a) {
  const auto& items = obj.list->items;
  if (m == "count" || m == "index") {
    auto p = bind(m.c_str(), a, {"value"});
    in.budget.charge(items.size());
    int64_t n = 0;
    for (size_t k = 0; k < items.size(); ++k)
      if (equals(items[k], p[0], in.budget)) {
        if (m == "index") return Value::integer(int64_t(k));
        ++n;
      }
    if (m == "index") raise("value is not in list");
    return Value::integer(n);
  }
  return std::nullopt;
}

}  // namespace

FilterFn find_filter(const std::string& name) {
  for (auto& f : kFilters)
    if (name == f.name) return f.fn;
  return nullptr;
}

TestFn find_test(const std::string& name) {
  for (auto& t : kTests)
    if (name == t.name) return t.fn;
  return nullptr;
}

std::optional<Value> call_method(Interp& in, const Value& obj, const std::string& name, Args& args) {
  switch (obj.kind) {
    case K::String: return string_method(in, obj, name, args);
    case K::Dict: return dict_method(in, obj, name, args);
    case K::List: return list_method(in, obj, name, args);
    default: return std::nullopt;
  }
}

void add_builtins(std::unordered_map<std::string, Value>& g) {
  g["range"] = make_callable(std::make_shared<Builtin>("range", g_range));
  g["namespace"] = make_callable(std::make_shared<Builtin>("namespace", g_namespace));
  g["dict"] = make_callable(std::make_shared<Builtin>("dict", g_dict));
  g["raise_exception"] = make_callable(std::make_shared<Builtin>("raise_exception", g_raise_exception));
  g["strftime_now"] = make_callable(std::make_shared<Builtin>("strftime_now", g_strftime_now));
}

std::vector<Value> iterate(Interp& in, const Value& v) {
  switch (v.kind) {
    case K::List: in.budget.charge(16 * v.list->items.size()); return v.list->items;
    case K::Dict: {
      in.budget.charge(v.dict->items.size());
      std::vector<Value> keys;
      for (auto& [k, x] : v.dict->items) keys.push_back(Value::string(k));
      return keys;
    }
    case K::String: {
      const std::string& s = v.str();
      size_t n = utf8_length(s);
      in.budget.check_items(n);
      in.budget.charge(16 * n);
      std::vector<Value> chars;
      for (size_t p = 0, q; p < s.size(); p = q) {
        q = utf8_next(s, p);
        chars.push_back(Value::string(s.substr(p, q - p)));
      }
      return chars;
    }
    case K::Undefined: return {};
    default: raise("'", type_name(v), "' object is not iterable");
  }
}

// printf-style `fmt % args`: %s %r %d %i %f %F %e %g %x %o %c %% with flags, width and precision; %(name)s
// takes values from a dict.
Value format_percent(Interp& in, const std::string& fmt, const Value& args) {
  // CPython's rules: a tuple gives the positional arguments, all of which must be used; any other object is the one
  // argument, and must be used too unless it is a mapping (a dict, or a list: lists pass CPython's mapping check).
  std::vector<Value> pos;
  const Dict* named = args.is(K::Dict) ? args.dict.get() : nullptr;
  const bool tuple = args.is(K::List) && args.list->tuple;
  if (tuple) pos = args.list->items;
  else pos.push_back(args);
  const bool may_leave_unused = args.is(K::Dict) || (args.is(K::List) && !tuple);
  size_t next = 0;
  StringBuilder b(in.budget);
  for (size_t p = 0; p < fmt.size(); ++p) {
    if (fmt[p] != '%') {
      b.put(std::string_view(&fmt[p], 1));
      continue;
    }
    if (++p >= fmt.size()) raise("incomplete format");
    Value v;
    bool have = false;
    if (fmt[p] == '(') {
      size_t e = fmt.find(')', p);
      if (e == std::string::npos || !named) raise("format requires a mapping");
      const Value* x = named->find(fmt.substr(p + 1, e - p - 1));
      if (!x) raise("format: no key '", fmt.substr(p + 1, e - p - 1), "'");
      v = *x;
      have = true;
      p = e + 1;
    }
    std::string spec = "%";
    while (p < fmt.size() && std::strchr("-+ #0", fmt[p])) spec += fmt[p++];
    for (int run = 0; p < fmt.size() && (std::isdigit(static_cast<unsigned char>(fmt[p])) || fmt[p] == '.'); ++p) {
      run = fmt[p] == '.' ? 0 : run + 1;
      if (run > 3) raise("format width or precision above 999");  // keeps snprintf's output small
      spec += fmt[p];
    }
    if (spec.size() > 12) raise("format spec too long");
    if (p >= fmt.size()) raise("incomplete format");
    char type = fmt[p];
    if (type == '%') {
      b.put("%");
      continue;
    }
    if (!have) {
      if (next >= pos.size()) raise("not enough arguments for format string");
      v = pos[next++];
    }
    char buf[512];
    switch (type) {
      case 's':
      case 'r': {
        std::string s = type == 's' ? in.str(v) : to_repr(v, in.budget);
        if (spec == "%") b.put(s);
        else {
          std::snprintf(buf, sizeof buf, (spec + "s").c_str(), s.substr(0, 400).c_str());
          b.put(buf);
        }
        break;
      }
      case 'd':
      case 'i':
      case 'x':
      case 'o':
      case 'c': {
        if (!v.is_number()) raise("%", type, " format: a number is required, not ", type_name(v));
        long long n = v.is(K::Float) ? (long long)v.f : (long long)v.as_int();
        if (type == 'c') {
          std::string s;
          utf8_append(s, char32_t(n));
          b.put(s);
        } else {
          std::snprintf(buf, sizeof buf, (spec + "ll" + (type == 'i' ? 'd' : type)).c_str(), n);
          b.put(buf);
        }
        break;
      }
      case 'f':
      case 'F':
      case 'e':
      case 'g': {
        if (!v.is_number()) raise("%", type, " format: a number is required, not ", type_name(v));
        std::snprintf(buf, sizeof buf, (spec + type).c_str(), v.as_double());
        b.put(buf);
        break;
      }
      default: raise("unsupported format character '", std::string(1, type), "'");
    }
  }
  if (next < pos.size() && !may_leave_unused) raise("not all arguments converted during string formatting");
  return Value::string(std::move(b.out));
}

}  // namespace bamba::jinja
