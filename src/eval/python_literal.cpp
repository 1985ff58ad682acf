#include "eval/python_literal.h"

#include <cctype>
#include <cstdlib>

#include "core/error.h"

namespace bamba::eval {
namespace {

using json = nlohmann::ordered_json;

void put_utf8(std::string& s, uint32_t c) {
  if (c < 0x80) {
    s += char(c);
  } else if (c < 0x800) {
    s += char(0xC0 | (c >> 6)), s += char(0x80 | (c & 0x3F));
  } else if (c < 0x10000) {
    s += char(0xE0 | (c >> 12)), s += char(0x80 | ((c >> 6) & 0x3F)), s += char(0x80 | (c & 0x3F));
  } else {
    s += char(0xF0 | (c >> 18)), s += char(0x80 | ((c >> 12) & 0x3F)), s += char(0x80 | ((c >> 6) & 0x3F));
    s += char(0x80 | (c & 0x3F));
  }
}

class Reader {
 public:
  Reader(std::string_view t, std::string_view what) : t_(t), what_(what) {}

  json value() {
    space();
    if (p_ >= t_.size()) fail("unexpected end");
    const char c = t_[p_];
    if (c == '[') return sequence('[', ']');
    if (c == '(') return sequence('(', ')');
    if (c == '{') return dict();
    if (c == '\'' || c == '"' || ((c == 'u' || c == 'r' || c == 'U' || c == 'R') && p_ + 1 < t_.size() &&
                                   (t_[p_ + 1] == '\'' || t_[p_ + 1] == '"'))) {
      std::string s;
      do {
        s += string();
        space();
      } while (p_ < t_.size() && (t_[p_] == '\'' || t_[p_] == '"'));
      return s;
    }
    if (word("True")) return true;
    if (word("False")) return false;
    if (word("None")) return nullptr;
    return number();
  }

  void end() {
    space();
    if (p_ != t_.size()) fail("unexpected text after the literal");
  }

 private:
  [[noreturn]] void fail(const char* why) const {
    throw Error(std::string(what_) + ": not a Python literal (" + why + " at offset " + std::to_string(p_) + ")");
  }
  void space() {
    while (p_ < t_.size() && (t_[p_] == ' ' || t_[p_] == '\t' || t_[p_] == '\n' || t_[p_] == '\r')) ++p_;
  }
  bool word(std::string_view w) {
    if (t_.substr(p_, w.size()) != w) return false;
    p_ += w.size();
    return true;
  }
  json sequence(char open, char close) {
    ++p_;
    json out = json::array();
    space();
    while (p_ < t_.size() && t_[p_] != close) {
      out.push_back(value());
      space();
      if (p_ < t_.size() && t_[p_] == ',') ++p_, space();
      else if (p_ >= t_.size() || t_[p_] != close) fail(open == '[' ? "expected ',' or ']'" : "expected ',' or ')'");
    }
    if (p_ >= t_.size()) fail("unclosed bracket");
    ++p_;
    return out;
  }
  json dict() {
    ++p_;
    json out = json::object();
    space();
    while (p_ < t_.size() && t_[p_] != '}') {
      json k = value();
      if (!k.is_string()) fail("only string keys are supported");
      space();
      if (p_ >= t_.size() || t_[p_] != ':') fail("expected ':'");
      ++p_;
      out[k.get<std::string>()] = value();
      space();
      if (p_ < t_.size() && t_[p_] == ',') ++p_, space();
      else if (p_ >= t_.size() || t_[p_] != '}') fail("expected ',' or '}'");
    }
    if (p_ >= t_.size()) fail("unclosed brace");
    ++p_;
    return out;
  }
  std::string string() {
    bool raw = false;
    while (t_[p_] != '\'' && t_[p_] != '"') raw = raw || t_[p_] == 'r' || t_[p_] == 'R', ++p_;
    const char q = t_[p_];
    const bool triple = t_.substr(p_, 3) == std::string(3, q);
    p_ += triple ? 3 : 1;
    std::string s;
    while (true) {
      if (p_ >= t_.size()) fail("unterminated string");
      const char c = t_[p_];
      if (c == q && (!triple || t_.substr(p_, 3) == std::string(3, q))) {
        p_ += triple ? 3 : 1;
        return s;
      }
      if (c == '\n' && !triple) fail("newline in a string");
      if (c != '\\' || raw) {
        s += c, ++p_;
        continue;
      }
      if (++p_ >= t_.size()) fail("unterminated string");
      const char e = t_[p_++];
      switch (e) {
        case 'n': s += '\n'; break;
        case 't': s += '\t'; break;
        case 'r': s += '\r'; break;
        case '0': s += '\0'; break;
        case 'a': s += '\a'; break;
        case 'b': s += '\b'; break;
        case 'f': s += '\f'; break;
        case 'v': s += '\v'; break;
        case '\n': break;  // line continuation
        case 'x': s += char(hex(2)); break;
        case 'u': put_utf8(s, hex(4)); break;
        case 'U': put_utf8(s, hex(8)); break;
        case '\\': case '\'': case '"': s += e; break;
        default: s += '\\', s += e;  // Python keeps unknown escapes as written
      }
    }
  }
  uint32_t hex(int n) {
    if (p_ + size_t(n) > t_.size()) fail("truncated escape");
    uint32_t v = 0;
    for (int i = 0; i < n; ++i) {
      const char c = t_[p_++];
      v <<= 4;
      if (c >= '0' && c <= '9') v |= uint32_t(c - '0');
      else if (c >= 'a' && c <= 'f') v |= uint32_t(c - 'a' + 10);
      else if (c >= 'A' && c <= 'F') v |= uint32_t(c - 'A' + 10);
      else fail("bad hex escape");
    }
    return v;
  }
  json number() {
    const size_t b = p_;
    if (p_ < t_.size() && (t_[p_] == '-' || t_[p_] == '+')) ++p_;
    bool is_float = false;
    while (p_ < t_.size() && (std::isdigit(static_cast<unsigned char>(t_[p_])) || t_[p_] == '.' || t_[p_] == 'e' ||
                              t_[p_] == 'E' || t_[p_] == '_' ||
                              ((t_[p_] == '-' || t_[p_] == '+') && (t_[p_ - 1] == 'e' || t_[p_ - 1] == 'E')))) {
      is_float = is_float || t_[p_] == '.' || t_[p_] == 'e' || t_[p_] == 'E';
      ++p_;
    }
    std::string s;
    for (size_t i = b; i < p_; ++i)
      if (t_[i] != '_') s += t_[i];
    if (s.empty() || s == "-" || s == "+") fail("expected a value");
    char* end = nullptr;
    if (is_float) {
      const double d = std::strtod(s.c_str(), &end);
      if (*end) fail("bad number");
      return d;
    }
    const long long v = std::strtoll(s.c_str(), &end, 10);
    if (*end) fail("bad number");
    return v;
  }

  std::string_view t_, what_;
  size_t p_ = 0;
};

}  // namespace

nlohmann::ordered_json python_literal(std::string_view text, std::string_view what) {
  Reader r(text, what);
  json v = r.value();
  r.end();
  return v;
}

}  // namespace bamba::eval
