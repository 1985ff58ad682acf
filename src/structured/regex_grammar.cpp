#include "structured/regex_grammar.h"

#include <cctype>
#include <memory>
#include <string>

#include "core/error.h"

namespace bamba {

namespace {

using Ranges = ByteNfa::CodepointRanges;

// The pattern's syntax tree; compiled (possibly several times, for repeats) into NFA pieces.
struct Node {
  enum Kind { Chars, Concat, Alt, Repeat } kind = Concat;
  Ranges chars;                              // Chars
  std::vector<std::unique_ptr<Node>> parts;  // Concat, Alt; Repeat: parts[0]
  int32_t min = 0, max = -1;                 // Repeat
};
using NodeP = std::unique_ptr<Node>;

const Ranges kDigit = {{'0', '9'}};
const Ranges kWord = {{'0', '9'}, {'A', 'Z'}, {'_', '_'}, {'a', 'z'}};
const Ranges kSpace = {{'\t', '\r'}, {' ', ' '}};

class Parser {
 public:
  explicit Parser(std::string_view p) : p_(p) {}

  NodeP parse() {
    if (peek('^')) ++i_;
    NodeP n = alternation();
    if (i_ < p_.size()) error(p_[i_] == ')' ? "an unbalanced ')'" : "this");
    return n;
  }

 private:
  [[noreturn]] void error(const std::string& what) const {
    fail("unsupported regular expression: ", what, " at offset ", i_, " of the pattern");
  }
  bool peek(char c) const { return i_ < p_.size() && p_[i_] == c; }

  // One UTF-8 character of the pattern.
  uint32_t next_char() {
    const auto b = uint8_t(p_[i_]);
    const int n = b < 0x80 ? 1 : (b >> 5) == 6 ? 2 : (b >> 4) == 14 ? 3 : (b >> 3) == 30 ? 4 : 0;
    if (n == 0 || i_ + size_t(n) > p_.size()) error("invalid UTF-8");
    uint32_t c = n == 1 ? b : n == 2 ? (b & 0x1F) : n == 3 ? (b & 0x0F) : (b & 0x07);
    for (int k = 1; k < n; ++k) c = (c << 6) | (uint8_t(p_[i_ + size_t(k)]) & 0x3F);
    i_ += size_t(n);
    return c;
  }

  NodeP alternation() {
    auto alt = std::make_unique<Node>();
    alt->kind = Node::Alt;
    alt->parts.push_back(concatenation());
    while (peek('|')) {
      ++i_;
      alt->parts.push_back(concatenation());
    }
    return alt->parts.size() == 1 ? std::move(alt->parts[0]) : std::move(alt);
  }

  NodeP concatenation() {
    auto cat = std::make_unique<Node>();
    while (i_ < p_.size() && p_[i_] != '|' && p_[i_] != ')') {
      if (p_[i_] == '$' && i_ + 1 == p_.size()) {  // the end anchor: the match is whole anyway
        ++i_;
        break;
      }
      NodeP atom_ = atom();
      cat->parts.push_back(quantified(std::move(atom_)));
    }
    return cat;
  }

  int32_t number() {
    size_t start = i_;
    int64_t v = 0;
    while (i_ < p_.size() && p_[i_] >= '0' && p_[i_] <= '9') {
      v = v * 10 + (p_[i_] - '0');
      if (v > 100000) error("a repetition count over 100000");
      ++i_;
    }
    return i_ == start ? -1 : int32_t(v);
  }

  NodeP quantified(NodeP a) {
    for (;;) {
      int32_t lo, hi;
      if (peek('*')) lo = 0, hi = -1, ++i_;
      else if (peek('+')) lo = 1, hi = -1, ++i_;
      else if (peek('?')) lo = 0, hi = 1, ++i_;
      else if (peek('{')) {
        const size_t save = i_++;
        lo = number();
        if (peek(',')) {
          ++i_;
          hi = number();
          if (lo < 0) lo = 0;
        } else {
          hi = lo;
        }
        if (!peek('}') || (lo < 0 && hi < 0)) {  // not a quantifier: Python reads the brace literally
          i_ = save;
          return a;
        }
        ++i_;
        if (hi >= 0 && hi < lo) error("a repetition {m,n} with n < m");
      } else {
        return a;
      }
      if (peek('?')) ++i_;  // lazy: the same language
      else if (peek('+')) error("a possessive quantifier");
      auto r = std::make_unique<Node>();
      r->kind = Node::Repeat;
      r->min = lo;
      r->max = hi;
      r->parts.push_back(std::move(a));
      a = std::move(r);
    }
  }

  NodeP chars(Ranges r) {
    auto n = std::make_unique<Node>();
    n->kind = Node::Chars;
    n->chars = std::move(r);
    return n;
  }

  // An escape after the backslash: a class (\d ...) or one character.
  Ranges escape(bool in_class) {
    if (i_ >= p_.size()) error("a trailing backslash");
    const char c = p_[i_++];
    auto hex = [&](int n) {
      uint32_t v = 0;
      for (int k = 0; k < n; ++k) {
        if (i_ >= p_.size() || !std::isxdigit(uint8_t(p_[i_]))) error("a bad hex escape");
        const char h = p_[i_++];
        v = v * 16 + uint32_t(h <= '9' ? h - '0' : (h | 0x20) - 'a' + 10);
      }
      if (v > 0x10FFFF) error("an escape beyond U+10FFFF");
      return Ranges{{v, v}};
    };
    switch (c) {
      case 'd': return kDigit;
      case 'w': return kWord;
      case 's': return kSpace;
      case 'D': return ByteNfa::complement(kDigit);
      case 'W': return ByteNfa::complement(kWord);
      case 'S': return ByteNfa::complement(kSpace);
      case 'n': return {{'\n', '\n'}};
      case 't': return {{'\t', '\t'}};
      case 'r': return {{'\r', '\r'}};
      case 'f': return {{'\f', '\f'}};
      case 'v': return {{'\v', '\v'}};
      case 'a': return {{'\a', '\a'}};
      case '0': return {{0, 0}};
      case 'x': return hex(2);
      case 'u': return hex(4);
      case 'U': return hex(8);
      case 'b':
        if (in_class) return {{'\b', '\b'}};
        break;
      default:
        if (!std::isalnum(uint8_t(c))) {
          --i_;
          const uint32_t ch = next_char();
          return {{ch, ch}};
        }
    }
    --i_;
    error(std::string("the escape \\") + c);
  }

  NodeP char_class() {  // after '['
    const bool negate = peek('^');
    if (negate) ++i_;
    Ranges r;
    bool first = true;
    for (;;) {
      if (i_ >= p_.size()) error("an unterminated '['");
      if (p_[i_] == ']' && !first) {
        ++i_;
        break;
      }
      if (p_[i_] == '[' && i_ + 1 < p_.size() && p_[i_ + 1] == ':') error("a POSIX class [:...:]");
      first = false;
      Ranges lo;
      if (p_[i_] == '\\') {
        ++i_;
        lo = escape(true);
      } else {
        const uint32_t c = next_char();
        lo = {{c, c}};
      }
      // A range a-b (a '-' first, last or after a class escape is literal).
      if (lo.size() == 1 && lo[0].first == lo[0].second && peek('-') && i_ + 1 < p_.size() && p_[i_ + 1] != ']') {
        ++i_;
        uint32_t hi;
        if (p_[i_] == '\\') {
          ++i_;
          Ranges h = escape(true);
          if (h.size() != 1 || h[0].first != h[0].second) error("a range ending in a class");
          hi = h[0].first;
        } else {
          hi = next_char();
        }
        if (hi < lo[0].first) error("a reversed range in a class");
        lo[0].second = hi;
      }
      r.insert(r.end(), lo.begin(), lo.end());
    }
    return chars(negate ? ByteNfa::complement(std::move(r)) : std::move(r));
  }

  NodeP atom() {
    const char c = p_[i_];
    if (c == '(') {
      ++i_;
      if (peek('?')) {
        ++i_;
        if (peek(':')) {
          ++i_;
        } else if ((peek('P') && i_ + 1 < p_.size() && p_[i_ + 1] == '<') || (peek('<') && i_ + 1 < p_.size() &&
                                                                              p_[i_ + 1] != '=' && p_[i_ + 1] != '!')) {
          i_ = p_.find('>', i_);
          if (i_ == std::string_view::npos) {
            i_ = p_.size();
            error("an unterminated group name");
          }
          ++i_;
        } else {
          --i_;
          error("the group syntax (?...) other than (?:...) and named groups");
        }
      }
      if (++depth_ > 100) error("groups nested more than 100 deep");
      NodeP inner = alternation();
      --depth_;
      if (!peek(')')) error("a missing ')'");
      ++i_;
      return inner;
    }
    if (c == '[') {
      ++i_;
      return char_class();
    }
    if (c == '.') {
      ++i_;
      return chars(ByteNfa::complement({{'\n', '\n'}}));
    }
    if (c == '\\') {
      ++i_;
      if (i_ < p_.size() && p_[i_] >= '1' && p_[i_] <= '9') error("a backreference");
      return chars(escape(false));
    }
    if (c == '*' || c == '+' || c == '?') error("a quantifier with nothing before it");
    if (c == '^' || c == '$') error(std::string("the anchor '") + c + "' inside the pattern");
    const uint32_t ch = next_char();
    return chars({{ch, ch}});
  }

  std::string_view p_;
  size_t i_ = 0;
  int depth_ = 0;
};

ByteNfa::Frag build(ByteNfa& nfa, const Node& n) {
  switch (n.kind) {
    case Node::Chars: return nfa.chars(n.chars);
    case Node::Alt: {
      std::vector<ByteNfa::Frag> parts;
      for (const auto& p : n.parts) parts.push_back(build(nfa, *p));
      return nfa.alt(parts);
    }
    case Node::Repeat: return nfa.repeat([&] { return build(nfa, *n.parts[0]); }, n.min, n.max);
    case Node::Concat: break;
  }
  ByteNfa::Frag f = nfa.empty();
  for (const auto& p : n.parts) f = nfa.seq(f, build(nfa, *p));
  return f;
}

}  // namespace

ByteNfa::Frag compile_regex(ByteNfa& nfa, std::string_view pattern) {
  NodeP root = Parser(pattern).parse();
  return build(nfa, *root);
}

}  // namespace bamba
