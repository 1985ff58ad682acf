// Lexer, parser and interpreter of the Jinja subset (see jinja.h). The grammar and the whitespace rules follow
// jinja2 3.x (lexer.py / parser.py) so templates render exactly as transformers renders them.
#include "chat/jinja.h"

#include <algorithm>
#include <cmath>
#include <initializer_list>
#include <optional>

#include "chat/jinja_ast.h"

namespace bamba::jinja {
namespace {

// Parser nesting bound (statements and expressions): keeps the recursive-descent parser's stack small whatever
// the input; real templates nest a few levels.
constexpr int kMaxParseDepth = 200;

std::string squote(std::string_view s) { return cat("'", s, "'"); }

// ---------------------------------------------------------------------------------------------------------------
// Lexer

enum class Tok { Text, VarBegin, VarEnd, BlockBegin, BlockEnd, Name, Int, Float, Str, Op, Eof };

struct Token {
  Tok type = Tok::Eof;
  std::string s;  // text, name, decoded string literal, or operator
  int64_t i = 0;
  double f = 0;
  Pos pos;
};

bool is_name_start(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'; }
bool is_name_char(char c) { return is_name_start(c) || (c >= '0' && c <= '9'); }
bool is_digit(char c) { return c >= '0' && c <= '9'; }

class Lexer {
 public:
  Lexer(std::string_view source, const std::string& label, const Syntax& syntax) : label_(label), syntax_(syntax) {
    // jinja2 normalizes newlines and, with keep_trailing_newline off (HF's setting), drops one final newline.
    src_.reserve(source.size());
    for (size_t p = 0; p < source.size(); ++p) {
      if (source[p] == '\r') {
        src_ += '\n';
        if (p + 1 < source.size() && source[p + 1] == '\n') ++p;
      } else {
        src_ += source[p];
      }
    }
    if (!syntax_.keep_trailing_newline && !src_.empty() && src_.back() == '\n') src_.pop_back();
    for (size_t p = 0; p < src_.size(); ++p)
      if (src_[p] == '\n') line_starts_.push_back(p + 1);
  }

  std::vector<Token> run() {
    const size_t n = src_.size();
    while (p_ < n) {
      size_t start = find_tag(p_);
      if (start == std::string::npos) {
        emit_text(p_, n, 0, true);
        break;
      }
      char kind = src_[start + 1];
      char mod = start + 2 < n && (src_[start + 2] == '-' || src_[start + 2] == '+') ? src_[start + 2] : 0;
      emit_text(p_, start, mod, kind == '{');
      size_t q = start + 2 + (mod ? 1 : 0);
      if (kind == '#') {
        size_t end = src_.find("#}", q);
        if (end == std::string::npos) fail_at(start, "unclosed comment: missing '#}'");
        char endmod = end > q && (src_[end - 1] == '-' || src_[end - 1] == '+') ? src_[end - 1] : 0;
        p_ = end + 2;
        after_block_end(endmod);
      } else if (kind == '%') {
        if (raw_block(start, q)) continue;
        push(Tok::BlockBegin, start);
        p_ = q;
        tag(false, start);
      } else {
        push(Tok::VarBegin, start);
        p_ = q;
        tag(true, start);
      }
    }
    push(Tok::Eof, src_.size());
    return std::move(out_);
  }

 private:
  std::string src_;
  const std::string& label_;
  Syntax syntax_;
  std::vector<size_t> line_starts_{0};
  std::vector<Token> out_;
  size_t p_ = 0;

  Pos pos_at(size_t off) const {
    size_t line = size_t(std::upper_bound(line_starts_.begin(), line_starts_.end(), off) - line_starts_.begin());
    return {int(line), int(off - line_starts_[line - 1]) + 1};
  }
  template <typename... Args>
  [[noreturn]] void fail_at(size_t off, Args&&... args) const {
    Pos p = pos_at(off);
    fail(label_, ":", p.line, ":", p.col, ": ", std::forward<Args>(args)...);
  }
  Token& push(Tok type, size_t off, std::string s = {}) {
    Token t;
    t.type = type;
    t.s = std::move(s);
    t.pos = pos_at(off);
    out_.push_back(std::move(t));
    return out_.back();
  }
  bool starts(std::string_view s) const { return src_.compare(p_, s.size(), s) == 0; }

  size_t find_tag(size_t from) const {
    for (size_t p = src_.find('{', from); p != std::string::npos; p = src_.find('{', p + 1))
      if (p + 1 < src_.size() && (src_[p + 1] == '{' || src_[p + 1] == '%' || src_[p + 1] == '#')) return p;
    return std::string::npos;
  }

  // Python's \s: what `-` strips and what separates tokens.
  size_t space_at(size_t p) const {  // length of the whitespace code point at p, 0 if none
    if (p >= src_.size()) return 0;
    char32_t cp;
    size_t next = utf8_next(src_, p, &cp);
    return py_isspace(cp) ? next - p : 0;
  }
  void skip_space() {
    while (size_t k = space_at(p_)) p_ += k;
  }
  bool all_space(size_t b, size_t e) const {
    while (b < e) {
      size_t k = space_at(b);
      if (!k) return false;
      b += k;
    }
    return true;
  }
  size_t rstrip_space(size_t b, size_t e) const {  // new end after stripping trailing whitespace from [b, e)
    size_t keep = b;
    for (size_t p = b; p < e;) {
      size_t k = space_at(p);
      if (!k) keep = p = utf8_next(src_, p);
      else p += k;
    }
    return std::min(keep, e);
  }

  // The text before a tag, with the tag's whitespace control: `{%-` strips all whitespace before it; otherwise
  // lstrip_blocks removes the spaces between the start of its line and a {% or {# tag.
  void emit_text(size_t b, size_t e, char mod, bool before_var) {
    if (mod == '-') {
      e = rstrip_space(b, e);
    } else if (mod != '+' && !before_var && syntax_.lstrip_blocks) {
      size_t nl = src_.rfind('\n', e == 0 ? 0 : e - 1);
      size_t line = (nl == std::string::npos || nl < b) ? b : nl + 1;
      bool line_starting = line > b || b == 0 || src_[b - 1] == '\n';
      if (line_starting && line < e && all_space(line, e)) e = line;
    }
    if (e > b) push(Tok::Text, b, src_.substr(b, e - b));
  }

  // After %} or #}: `-%}` strips all whitespace after it, `+%}` nothing, plain `%}` one newline (trim_blocks).
  void after_block_end(char mod) {
    if (mod == '-') skip_space();
    else if (mod != '+' && syntax_.trim_blocks && p_ < src_.size() && src_[p_] == '\n') ++p_;
  }

  // {% raw %}...{% endraw %}: the text in between is kept verbatim.
  bool raw_block(size_t start, size_t q) {
    size_t p = q;
    while (size_t k = space_at(p)) p += k;
    if (src_.compare(p, 3, "raw") != 0 || (p + 3 < src_.size() && is_name_char(src_[p + 3]))) return false;
    p_ = p + 3;
    skip_space();
    if (starts("-%}")) {
      p_ += 3;
      skip_space();
    } else if (starts("%}")) {
      p_ += 2;
    } else {
      fail_at(p_, "expected '%}' after 'raw'");
    }
    for (size_t r = src_.find("{%", p_); r != std::string::npos; r = src_.find("{%", r + 1)) {
      size_t m = r + 2;
      char mod = m < src_.size() && (src_[m] == '-' || src_[m] == '+') ? src_[m++] : 0;
      while (size_t k = space_at(m)) m += k;
      if (src_.compare(m, 6, "endraw") != 0) continue;
      m += 6;
      while (size_t k = space_at(m)) m += k;
      char endmod = 0;
      if (src_.compare(m, 3, "-%}") == 0 || src_.compare(m, 3, "+%}") == 0) endmod = src_[m++];
      if (src_.compare(m, 2, "%}") != 0) continue;
      emit_text(p_, r, mod, false);
      p_ = m + 2;
      after_block_end(endmod);
      return true;
    }
    fail_at(start, "unclosed '{% raw %}': missing '{% endraw %}'");
  }

  // The tokens of one {{ ... }} or {% ... %}, up to its end marker outside any brackets.
  void tag(bool var, size_t start) {
    std::vector<char> brackets;
    for (;;) {
      skip_space();
      if (p_ >= src_.size())
        fail_at(start, var ? "unclosed '{{': missing '}}'" : "unclosed '{%': missing '%}'");
      if (brackets.empty()) {
        if (var && (starts("-}}") || starts("}}"))) {
          bool dash = src_[p_] == '-';
          push(Tok::VarEnd, p_);
          p_ += dash ? 3 : 2;
          if (dash) skip_space();
          return;
        }
        if (!var && (starts("-%}") || starts("+%}") || starts("%}"))) {
          char mod = src_[p_] == '%' ? 0 : src_[p_];
          push(Tok::BlockEnd, p_);
          p_ += mod ? 3 : 2;
          after_block_end(mod);
          return;
        }
      }
      token(brackets);
    }
  }

  void token(std::vector<char>& brackets) {
    const size_t b = p_;
    const char c = src_[p_];
    if (is_name_start(c)) {
      while (p_ < src_.size() && is_name_char(src_[p_])) ++p_;
      push(Tok::Name, b, src_.substr(b, p_ - b));
    } else if (is_digit(c)) {
      number();
    } else if (c == '\'' || c == '"') {
      string_literal();
    } else {
      static constexpr std::string_view two[] = {"//", "**", "==", "!=", "<=", ">="};
      for (auto op : two)
        if (starts(op)) {
          push(Tok::Op, b, std::string(op));
          p_ += 2;
          return;
        }
      if (std::string_view("+-*/%~<>=.,:|()[]{}").find(c) == std::string_view::npos)
        fail_at(b, "unexpected character ", squote(std::string(1, c)));
      if (c == '(' || c == '[' || c == '{') brackets.push_back(c);
      if (c == ')' || c == ']' || c == '}') {
        char open = c == ')' ? '(' : c == ']' ? '[' : '{';
        if (brackets.empty()) fail_at(b, "unexpected ", squote(std::string(1, c)));
        if (brackets.back() != open) {
          char want = brackets.back() == '(' ? ')' : brackets.back() == '[' ? ']' : '}';
          fail_at(b, "unexpected ", squote(std::string(1, c)), ", expected ", squote(std::string(1, want)));
        }
        brackets.pop_back();
      }
      push(Tok::Op, b, std::string(1, c));
      ++p_;
    }
  }

  void number() {
    const size_t b = p_;
    auto digits = [&](auto ok) {
      while (p_ < src_.size() && (ok(src_[p_]) || (src_[p_] == '_' && p_ + 1 < src_.size() && ok(src_[p_ + 1]))))
        ++p_;
    };
    auto dec = [](char ch) { return is_digit(ch); };
    if (src_[p_] == '0' && p_ + 1 < src_.size() && std::string_view("xXoObB").find(src_[p_ + 1]) != std::string::npos) {
      char base_ch = char(src_[p_ + 1] | 0x20);
      int base = base_ch == 'x' ? 16 : base_ch == 'o' ? 8 : 2;
      p_ += 2;
      size_t db = p_;
      digits([&](char ch) {
        int d = is_digit(ch) ? ch - '0' : (ch | 0x20) >= 'a' && (ch | 0x20) <= 'f' ? (ch | 0x20) - 'a' + 10 : 99;
        return d < base;
      });
      if (p_ == db) fail_at(b, "invalid integer literal");
      uint64_t v = 0;
      for (size_t k = db; k < p_; ++k) {
        if (src_[k] == '_') continue;
        char ch = char(src_[k] | 0x20);
        int d = is_digit(src_[k]) ? src_[k] - '0' : ch - 'a' + 10;
        if (v > (uint64_t(INT64_MAX) - uint64_t(d)) / uint64_t(base)) fail_at(b, "integer literal too large");
        v = v * uint64_t(base) + uint64_t(d);
      }
      push(Tok::Int, b).i = int64_t(v);
      return;
    }
    digits(dec);
    bool is_float = false;
    // A number right after '.' is an attribute index (x.0.1), never a float: jinja2's (?<!\.) rule.
    bool after_dot = b > 0 && src_[b - 1] == '.';
    if (!after_dot && p_ + 1 < src_.size() && src_[p_] == '.' && is_digit(src_[p_ + 1])) {
      ++p_;
      digits(dec);
      is_float = true;
    }
    if (!after_dot && p_ < src_.size() && (src_[p_] | 0x20) == 'e') {
      size_t e = p_ + 1;
      if (e < src_.size() && (src_[e] == '+' || src_[e] == '-')) ++e;
      if (e < src_.size() && is_digit(src_[e])) {
        p_ = e;
        digits(dec);
        is_float = true;
      }
    }
    std::string text;
    for (size_t k = b; k < p_; ++k)
      if (src_[k] != '_') text += src_[k];
    if (is_float) {
      push(Tok::Float, b).f = std::strtod(text.c_str(), nullptr);
      return;
    }
    uint64_t v = 0;
    for (char ch : text) {
      if (v > (uint64_t(INT64_MAX) - uint64_t(ch - '0')) / 10) fail_at(b, "integer literal too large");
      v = v * 10 + uint64_t(ch - '0');
    }
    push(Tok::Int, b).i = int64_t(v);
  }

  // A Python string literal: backslash escapes as in Python ('\n', '\x41', '\u00e9', ...); may span lines.
  void string_literal() {
    const size_t b = p_;
    const char q = src_[p_++];
    std::string v;
    auto hex = [&](size_t n) {
      char32_t cp = 0;
      for (size_t k = 0; k < n; ++k, ++p_) {
        char ch = p_ < src_.size() ? src_[p_] : 0;
        int d = is_digit(ch) ? ch - '0' : (ch | 0x20) >= 'a' && (ch | 0x20) <= 'f' ? (ch | 0x20) - 'a' + 10 : -1;
        if (d < 0) fail_at(b, "truncated \\x, \\u or \\U escape in string literal");
        cp = cp * 16 + char32_t(d);
      }
      return cp;
    };
    for (;;) {
      if (p_ >= src_.size()) fail_at(b, "unterminated string literal");
      char c = src_[p_++];
      if (c == q) break;
      if (c != '\\') {
        v += c;
        continue;
      }
      if (p_ >= src_.size()) fail_at(b, "unterminated string literal");
      char e = src_[p_++];
      switch (e) {
        case '\n': break;  // line continuation
        case '\\': v += '\\'; break;
        case '\'': v += '\''; break;
        case '"': v += '"'; break;
        case 'a': v += '\a'; break;
        case 'b': v += '\b'; break;
        case 'f': v += '\f'; break;
        case 'n': v += '\n'; break;
        case 'r': v += '\r'; break;
        case 't': v += '\t'; break;
        case 'v': v += '\v'; break;
        case 'x': utf8_append(v, hex(2)); break;
        case 'u': utf8_append(v, hex(4)); break;
        case 'U': utf8_append(v, hex(8)); break;
        default:
          if (e >= '0' && e <= '7') {
            char32_t cp = char32_t(e - '0');
            for (int k = 0; k < 2 && p_ < src_.size() && src_[p_] >= '0' && src_[p_] <= '7'; ++k)
              cp = cp * 8 + char32_t(src_[p_++] - '0');
            utf8_append(v, cp);
          } else {
            v += '\\';  // Python keeps unknown escapes as written
            v += e;
          }
      }
    }
    push(Tok::Str, b, std::move(v));
  }
};

// ---------------------------------------------------------------------------------------------------------------
// Parser: jinja2's recursive descent, one function per precedence level.

class Parser {
 public:
  Parser(std::vector<Token> toks, const std::string& label) : t_(std::move(toks)), label_(label) {}

  Body parse_template() {
    std::string found;
    return subparse({}, &found, {}, "");
  }

 private:
  std::vector<Token> t_;
  size_t k_ = 0;
  const std::string& label_;
  int depth_ = 0;
  int loops_ = 0;  // enclosing {% for %} bodies, for break/continue

  struct Nest {
    Parser& p;
    Nest(Parser& parser, Pos pos) : p(parser) {
      if (++p.depth_ > kMaxParseDepth) p.fail(pos, "template nested more than ", kMaxParseDepth, " levels deep");
    }
    ~Nest() { --p.depth_; }
  };

  const Token& cur() const { return t_[k_]; }
  const Token& peek() const { return t_[std::min(k_ + 1, t_.size() - 1)]; }
  void next() {
    if (k_ + 1 < t_.size()) ++k_;
  }
  bool is_op(std::string_view op) const { return cur().type == Tok::Op && cur().s == op; }
  bool is_name(std::string_view n) const { return cur().type == Tok::Name && cur().s == n; }
  bool skip_op(std::string_view op) {
    if (!is_op(op)) return false;
    next();
    return true;
  }
  bool skip_name(std::string_view n) {
    if (!is_name(n)) return false;
    next();
    return true;
  }

  template <typename... Args>
  [[noreturn]] void fail(Pos p, Args&&... args) const {
    bamba::fail(label_, ":", p.line, ":", p.col, ": ", std::forward<Args>(args)...);
  }
  static std::string describe(const Token& t) {
    switch (t.type) {
      case Tok::Text: return "template text";
      case Tok::VarBegin: return "'{{'";
      case Tok::VarEnd: return "'}}'";
      case Tok::BlockBegin: return "'{%'";
      case Tok::BlockEnd: return "'%}'";
      case Tok::Name: return squote(t.s);
      case Tok::Int: return cat("integer ", t.i);
      case Tok::Float: return cat("number ", float_repr(t.f));
      case Tok::Str: return "string literal";
      case Tok::Op: return squote(t.s);
      case Tok::Eof: return "end of template";
    }
    return "?";
  }
  void expect_op(std::string_view op) {
    if (!skip_op(op)) fail(cur().pos, "expected ", squote(op), ", got ", describe(cur()));
  }
  std::string expect_name() {
    if (cur().type != Tok::Name) fail(cur().pos, "expected a name, got ", describe(cur()));
    std::string s = cur().s;
    next();
    return s;
  }
  void block_end() {
    if (cur().type != Tok::BlockEnd) fail(cur().pos, "expected '%}', got ", describe(cur()));
    next();
  }

  static ExprP node(Expr::Kind k, Pos p) {
    auto e = std::make_unique<Expr>();
    e->kind = k;
    e->pos = p;
    return e;
  }
  static ExprP node(Expr::Kind k, Pos p, ExprP a, ExprP b = nullptr) {
    auto e = node(k, p);
    e->args.push_back(std::move(a));
    if (b) e->args.push_back(std::move(b));
    return e;
  }
  static StmtP stmt(Stmt::Kind k, Pos p) {
    auto s = std::make_unique<Stmt>();
    s->kind = k;
    s->pos = p;
    return s;
  }

  // --- statements

  // Statements up to a {% name %} with name in `ends` (consumed through the name, which lands in *found).
  Body subparse(std::initializer_list<std::string_view> ends, std::string* found, Pos open, std::string_view what) {
    Body body;
    for (;;) {
      const Token& t = cur();
      if (t.type == Tok::Eof) {
        if (ends.size() == 0) return body;
        std::string want;
        for (auto e : ends) want += (want.empty() ? "" : " or ") + squote(cat("{% ", e, " %}"));
        fail(open, "unclosed ", squote(cat("{% ", what, " %}")), ": expected ", want, " before the end of the template");
      }
      if (t.type == Tok::Text) {
        auto s = stmt(Stmt::Kind::Text, t.pos);
        s->text = t.s;
        body.push_back(std::move(s));
        next();
      } else if (t.type == Tok::VarBegin) {
        auto s = stmt(Stmt::Kind::Output, t.pos);
        next();
        s->expr = parse_tuple(true);  // {{ a, b }} prints a tuple, as in jinja2
        if (cur().type != Tok::VarEnd) fail(cur().pos, "expected '}}', got ", describe(cur()));
        next();
        body.push_back(std::move(s));
      } else if (t.type == Tok::BlockBegin) {
        const Token& n = peek();
        if (n.type == Tok::Name && std::find(ends.begin(), ends.end(), n.s) != ends.end()) {
          next();
          *found = n.s;
          next();
          return body;
        }
        body.push_back(parse_statement());
      } else {
        fail(t.pos, "unexpected ", describe(t));
      }
    }
  }

  StmtP parse_statement() {
    Pos pos = cur().pos;
    next();  // {%
    if (cur().type != Tok::Name) fail(cur().pos, "expected a statement name after '{%', got ", describe(cur()));
    Nest nest(*this, pos);
    const std::string kw = cur().s;
    Pos kpos = cur().pos;
    next();
    if (kw == "if") return parse_if(pos);
    if (kw == "for") return parse_for(pos);
    if (kw == "set") return parse_set(pos);
    if (kw == "macro") return parse_macro(pos);
    if (kw == "call") return parse_call_block(pos);
    if (kw == "filter") return parse_filter_block(pos);
    if (kw == "with") return parse_with(pos);
    if (kw == "generation") {  // transformers' assistant-mask tag: renders its body in place
      auto s = stmt(Stmt::Kind::Group, pos);
      block_end();
      std::string found;
      s->body = subparse({"endgeneration"}, &found, pos, "generation");
      block_end();
      return s;
    }
    if (kw == "break" || kw == "continue") {
      if (loops_ == 0) fail(kpos, squote(kw), " outside of a loop");
      block_end();
      return stmt(kw == "break" ? Stmt::Kind::Break : Stmt::Kind::Continue, pos);
    }
    for (auto u : {"include", "import", "from", "extends", "block", "autoescape", "do", "trans"})
      if (kw == u) fail(kpos, squote(cat("{% ", kw, " %}")), " is not supported by bamba's chat template engine");
    if (kw.rfind("end", 0) == 0 || kw == "else" || kw == "elif") fail(kpos, "unexpected ", squote(kw));
    fail(kpos, "unknown tag ", squote(kw));
  }

  StmtP parse_if(Pos pos) {
    auto s = stmt(Stmt::Kind::If, pos);
    s->expr = parse_tuple(false);
    block_end();
    std::string found;
    s->body = subparse({"elif", "else", "endif"}, &found, pos, "if");
    if (found == "elif") {
      Nest nest(*this, pos);  // an elif chain recurses
      s->orelse.push_back(parse_if(t_[k_ - 1].pos));
    } else if (found == "else") {
      block_end();
      s->orelse = subparse({"endif"}, &found, pos, "if");
      block_end();
    } else {
      block_end();
    }
    return s;
  }

  std::vector<std::string> parse_targets() {
    std::vector<std::string> names;
    bool paren = skip_op("(");
    do {
      if (paren && is_op(")")) break;
      names.push_back(expect_name());
    } while (skip_op(","));
    if (paren) expect_op(")");
    return names;
  }

  StmtP parse_for(Pos pos) {
    auto s = stmt(Stmt::Kind::For, pos);
    s->targets = parse_targets();
    if (!skip_name("in")) fail(cur().pos, "expected 'in', got ", describe(cur()));
    s->expr = parse_tuple(false);
    if (skip_name("if")) s->cond = parse_expression();
    if (is_name("recursive")) fail(cur().pos, "recursive loops are not supported");
    block_end();
    std::string found;
    ++loops_;
    s->body = subparse({"else", "endfor"}, &found, pos, "for");
    --loops_;
    if (found == "else") {
      block_end();
      s->orelse = subparse({"endfor"}, &found, pos, "for");
    }
    block_end();
    return s;
  }

  StmtP parse_set(Pos pos) {
    if (cur().type == Tok::Name && peek().type == Tok::Op && peek().s == ".") {  // set ns.attr = value
      auto s = stmt(Stmt::Kind::SetAttr, pos);
      s->targets.push_back(expect_name());
      next();
      s->targets.push_back(expect_name());
      expect_op("=");
      s->expr = parse_tuple(true);
      block_end();
      return s;
    }
    auto targets = parse_targets();
    if (skip_op("=")) {
      auto s = stmt(Stmt::Kind::Set, pos);
      s->targets = std::move(targets);
      s->values.push_back(parse_tuple(true));
      block_end();
      return s;
    }
    if (targets.size() != 1) fail(cur().pos, "expected '=', got ", describe(cur()));
    auto s = stmt(Stmt::Kind::SetBlock, pos);
    s->targets = std::move(targets);
    block_end();
    std::string found;
    s->body = subparse({"endset"}, &found, pos, "set");
    block_end();
    return s;
  }

  void parse_params(Stmt& s) {
    expect_op("(");
    while (!skip_op(")")) {
      if (!s.targets.empty()) {
        expect_op(",");
        if (skip_op(")")) break;
      }
      s.targets.push_back(expect_name());
      s.values.push_back(skip_op("=") ? parse_expression() : nullptr);
    }
  }

  // A macro or caller body: break/continue there cannot reach an enclosing loop.
  Body function_body(std::string_view end, Pos pos, std::string_view what) {
    int saved = loops_;
    loops_ = 0;
    std::string found;
    Body b = end == "endmacro" ? subparse({"endmacro"}, &found, pos, what) : subparse({"endcall"}, &found, pos, what);
    loops_ = saved;
    block_end();
    return b;
  }

  StmtP parse_macro(Pos pos) {
    auto s = stmt(Stmt::Kind::Macro, pos);
    s->text = expect_name();
    parse_params(*s);
    block_end();
    s->body = function_body("endmacro", pos, "macro");
    return s;
  }

  StmtP parse_call_block(Pos pos) {
    auto s = stmt(Stmt::Kind::CallBlock, pos);
    if (is_op("(")) parse_params(*s);
    Pos epos = cur().pos;
    s->expr = parse_expression();
    if (s->expr->kind != Expr::Kind::Call) fail(epos, "expected a macro call after 'call'");
    block_end();
    s->body = function_body("endcall", pos, "call");
    return s;
  }

  StmtP parse_filter_block(Pos pos) {
    auto s = stmt(Stmt::Kind::FilterBlock, pos);
    s->expr = parse_filter(node(Expr::Kind::BlockBody, pos), true);
    block_end();
    std::string found;
    s->body = subparse({"endfilter"}, &found, pos, "filter");
    block_end();
    return s;
  }

  StmtP parse_with(Pos pos) {
    auto s = stmt(Stmt::Kind::With, pos);
    while (cur().type != Tok::BlockEnd) {
      if (!s->targets.empty()) expect_op(",");
      s->targets.push_back(expect_name());
      expect_op("=");
      s->values.push_back(parse_expression());
    }
    block_end();
    std::string found;
    s->body = subparse({"endwith"}, &found, pos, "with");
    block_end();
    return s;
  }

  // --- expressions, loosest binding first

  ExprP parse_expression(bool with_condexpr = true) { return with_condexpr ? parse_condexpr() : parse_or(); }

  // `a, b` (a tuple, kept as a list) or a single expression; `()` is an empty tuple.
  ExprP parse_tuple(bool with_condexpr, bool parenthesized = false) {
    Pos pos = cur().pos;
    std::vector<ExprP> items;
    bool tuple = false;
    for (;;) {
      if (!items.empty()) expect_op(",");
      const Token& t = cur();
      if (t.type == Tok::VarEnd || t.type == Tok::BlockEnd || (t.type == Tok::Op && t.s == ")")) break;
      items.push_back(parse_expression(with_condexpr));
      if (is_op(",")) tuple = true;
      else break;
    }
    if (!tuple) {
      if (items.size() == 1) return std::move(items[0]);
      if (!parenthesized) fail(pos, "expected an expression, got ", describe(cur()));
    }
    auto e = node(Expr::Kind::List, pos);
    e->name = "tuple";
    e->args = std::move(items);
    return e;
  }

  ExprP parse_condexpr() {
    Nest nest(*this, cur().pos);
    ExprP e = parse_or();
    while (is_name("if")) {
      Pos pos = cur().pos;
      next();
      ExprP cond = parse_or();
      ExprP other = skip_name("else") ? parse_condexpr() : nullptr;
      auto c = node(Expr::Kind::Cond, pos, std::move(e), std::move(cond));
      c->args.push_back(std::move(other));
      e = std::move(c);
    }
    return e;
  }

  ExprP parse_or() {
    ExprP e = parse_and();
    while (is_name("or")) {
      Pos pos = cur().pos;
      next();
      e = node(Expr::Kind::Or, pos, std::move(e), parse_and());
    }
    return e;
  }

  ExprP parse_and() {
    ExprP e = parse_not();
    while (is_name("and")) {
      Pos pos = cur().pos;
      next();
      e = node(Expr::Kind::And, pos, std::move(e), parse_not());
    }
    return e;
  }

  ExprP parse_not() {
    if (is_name("not")) {
      Pos pos = cur().pos;
      Nest nest(*this, pos);
      next();
      return node(Expr::Kind::Not, pos, parse_not());
    }
    return parse_compare();
  }

  ExprP parse_compare() {
    Pos pos = cur().pos;
    ExprP first = parse_math1();
    std::vector<std::string> ops;
    std::vector<ExprP> operands;
    for (;;) {
      if (cur().type == Tok::Op &&
          (cur().s == "==" || cur().s == "!=" || cur().s == "<" || cur().s == "<=" || cur().s == ">" || cur().s == ">=")) {
        ops.push_back(cur().s);
        next();
      } else if (is_name("in")) {
        ops.push_back("in");
        next();
      } else if (is_name("not") && peek().type == Tok::Name && peek().s == "in") {
        ops.push_back("notin");
        next();
        next();
      } else {
        break;
      }
      operands.push_back(parse_math1());
    }
    if (ops.empty()) return first;
    auto e = node(Expr::Kind::Compare, pos, std::move(first));
    for (auto& o : operands) e->args.push_back(std::move(o));
    e->ops = std::move(ops);
    return e;
  }

  template <typename Next>
  ExprP binary_level(std::initializer_list<std::string_view> ops, Next next_level) {
    ExprP e = (this->*next_level)();
    for (;;) {
      if (cur().type != Tok::Op || std::find(ops.begin(), ops.end(), cur().s) == ops.end()) return e;
      Pos pos = cur().pos;
      std::string op = cur().s;
      next();
      e = node(Expr::Kind::Binary, pos, std::move(e), (this->*next_level)());
      e->name = op;
    }
  }
  ExprP parse_math1() { return binary_level({"+", "-"}, &Parser::parse_concat); }
  ExprP parse_concat() { return binary_level({"~"}, &Parser::parse_math2); }
  ExprP parse_math2() { return binary_level({"*", "/", "//", "%"}, &Parser::parse_pow); }
  ExprP parse_pow() { return binary_level({"**"}, &Parser::parse_unary_filtered); }  // left-assoc, as jinja2
  ExprP parse_unary_filtered() { return parse_unary(true); }

  ExprP parse_unary(bool with_filter) {
    Pos pos = cur().pos;
    Nest nest(*this, pos);
    ExprP e;
    if (skip_op("-")) e = node(Expr::Kind::Neg, pos, parse_unary(false));
    else if (skip_op("+")) e = node(Expr::Kind::Plus, pos, parse_unary(false));
    else e = parse_primary();
    e = parse_postfix(std::move(e));
    if (with_filter) e = parse_filter_expr(std::move(e));
    return e;
  }

  ExprP parse_primary() {
    const Token& t = cur();
    Pos pos = t.pos;
    if (t.type == Tok::Name) {
      auto e = node(Expr::Kind::Const, pos);
      if (t.s == "true" || t.s == "True") e->value = Value::boolean(true);
      else if (t.s == "false" || t.s == "False") e->value = Value::boolean(false);
      else if (t.s == "none" || t.s == "None") e->value = Value::none();
      else {
        e->kind = Expr::Kind::Name;
        e->name = t.s;
      }
      next();
      return e;
    }
    if (t.type == Tok::Str) {  // adjacent literals concatenate, as in Python
      std::string s;
      while (cur().type == Tok::Str) {
        s += cur().s;
        next();
      }
      auto e = node(Expr::Kind::Const, pos);
      e->value = Value::string(std::move(s));
      return e;
    }
    if (t.type == Tok::Int || t.type == Tok::Float) {
      auto e = node(Expr::Kind::Const, pos);
      e->value = t.type == Tok::Int ? Value::integer(t.i) : Value::number(t.f);
      next();
      return e;
    }
    if (skip_op("(")) {
      ExprP e = parse_tuple(true, true);
      expect_op(")");
      return e;
    }
    if (skip_op("[")) {
      auto e = node(Expr::Kind::List, pos);
      while (!skip_op("]")) {
        if (!e->args.empty()) {
          expect_op(",");
          if (skip_op("]")) break;
        }
        e->args.push_back(parse_expression());
      }
      return e;
    }
    if (skip_op("{")) {
      auto e = node(Expr::Kind::Dict, pos);
      while (!skip_op("}")) {
        if (!e->args.empty()) {
          expect_op(",");
          if (skip_op("}")) break;
        }
        e->args.push_back(parse_expression());
        expect_op(":");
        e->args.push_back(parse_expression());
      }
      return e;
    }
    fail(pos, "unexpected ", describe(t));
  }

  ExprP parse_postfix(ExprP e) {
    for (;;) {
      Pos pos = cur().pos;
      if (skip_op(".")) {
        if (cur().type == Tok::Name) {
          e = node(Expr::Kind::Attr, cur().pos, std::move(e));  // errors point at the attribute's name
          e->name = cur().s;
        } else if (cur().type == Tok::Int) {  // x.0 is x[0]
          auto idx = node(Expr::Kind::Const, cur().pos);
          idx->value = Value::integer(cur().i);
          e = node(Expr::Kind::Item, pos, std::move(e), std::move(idx));
        } else {
          fail(cur().pos, "expected an attribute name after '.', got ", describe(cur()));
        }
        next();
      } else if (skip_op("[")) {
        e = parse_subscript(std::move(e), pos);
        expect_op("]");
      } else if (is_op("(")) {
        e = parse_call(std::move(e));
      } else {
        return e;
      }
    }
  }

  ExprP parse_subscript(ExprP obj, Pos pos) {
    ExprP start;
    if (!is_op(":")) {
      start = parse_expression();
      if (!is_op(":")) {
        if (is_op(",")) fail(cur().pos, "tuple subscripts are not supported");
        return node(Expr::Kind::Item, pos, std::move(obj), std::move(start));
      }
    }
    next();  // ':'
    auto e = node(Expr::Kind::Slice, pos, std::move(obj));
    e->args.push_back(std::move(start));
    e->args.push_back(is_op("]") || is_op(":") ? nullptr : parse_expression());
    e->args.push_back(skip_op(":") && !is_op("]") ? parse_expression() : nullptr);
    return e;
  }

  // (args): positional first, then name=value.
  void parse_call_args(Expr& e) {
    expect_op("(");
    std::vector<ExprP> kwargs;
    bool first = true;
    while (!skip_op(")")) {
      if (!first) {
        expect_op(",");
        if (skip_op(")")) break;
      }
      first = false;
      if (is_op("*") || is_op("**")) fail(cur().pos, "*args and **kwargs are not supported");
      if (cur().type == Tok::Name && peek().type == Tok::Op && peek().s == "=") {
        e.kwnames.push_back(cur().s);
        next();
        next();
        kwargs.push_back(parse_expression());
      } else {
        if (!kwargs.empty()) fail(cur().pos, "positional argument after keyword argument");
        e.args.push_back(parse_expression());
      }
    }
    for (auto& k : kwargs) e.args.push_back(std::move(k));
  }

  ExprP parse_call(ExprP callee) {
    Pos pos = callee->pos;  // errors point at what is called
    auto e = node(Expr::Kind::Call, pos, std::move(callee));
    parse_call_args(*e);
    return e;
  }

  ExprP parse_filter_expr(ExprP e) {
    for (;;) {
      if (is_op("|")) e = parse_filter(std::move(e), false);
      else if (is_name("is")) e = parse_test(std::move(e));
      else if (is_op("(")) e = parse_call(std::move(e));
      else return e;
    }
  }

  std::string dotted_name() {
    std::string name = expect_name();
    while (skip_op(".")) name += "." + expect_name();
    return name;
  }

  ExprP parse_filter(ExprP e, bool start_inline) {
    while (is_op("|") || start_inline) {
      if (!start_inline) next();
      start_inline = false;
      Pos pos = cur().pos;
      std::string name = dotted_name();
      FilterFn fn = find_filter(name);
      if (!fn) fail(pos, "unknown filter ", squote(name));
      e = node(Expr::Kind::Filter, pos, std::move(e));
      e->name = name;
      e->filter = fn;
      if (is_op("(")) parse_call_args(*e);
    }
    return e;
  }

  ExprP parse_test(ExprP e) {
    Pos pos = cur().pos;
    next();  // is
    bool negated = skip_name("not");
    Pos npos = cur().pos;
    std::string name = dotted_name();
    TestFn fn = find_test(name);
    if (!fn) fail(npos, "unknown test ", squote(name));
    e = node(Expr::Kind::Test, pos, std::move(e));
    e->name = name;
    e->test = fn;
    const Token& t = cur();
    if (is_op("(")) {
      parse_call_args(*e);
    } else if ((t.type == Tok::Name || t.type == Tok::Str || t.type == Tok::Int || t.type == Tok::Float ||
                (t.type == Tok::Op && (t.s == "[" || t.s == "{"))) &&
               !is_name("else") && !is_name("or") && !is_name("and")) {
      if (is_name("is")) fail(t.pos, "tests cannot be chained with 'is'");
      e->args.push_back(parse_postfix(parse_primary()));  // `x is divisibleby 3`
    }
    return negated ? node(Expr::Kind::Not, pos, std::move(e)) : std::move(e);
  }
};

// Does any {% for %} iterate over something's `content` (possibly through filters)?
bool expr_is_content(const Expr* e) {
  while (e && e->kind == Expr::Kind::Filter) e = e->args[0].get();
  if (!e) return false;
  if (e->kind == Expr::Kind::Attr) return e->name == "content";
  if (e->kind == Expr::Kind::Item) {
    const Expr& k = *e->args[1];
    return k.kind == Expr::Kind::Const && k.value.is(Value::Kind::String) && k.value.str() == "content";
  }
  return false;
}
bool body_iterates_content(const Body& body) {
  for (auto& s : body) {
    if (s->kind == Stmt::Kind::For && expr_is_content(s->expr.get())) return true;
    if (body_iterates_content(s->body) || body_iterates_content(s->orelse)) return true;
  }
  return false;
}

}  // namespace

// A {% macro %} (or the `caller` of a {% call %} block): renders its body in a fresh scope whose parent is the
// scope it was defined in. The weak pointer avoids a scope -> macro -> scope cycle.
struct MacroFn : Callable {
  const Stmt* def;  // owned by the Program, which outlives every render
  std::weak_ptr<Scope> defined_in;

  MacroFn(const Stmt* s, std::weak_ptr<Scope> scope, std::string n) : def(s), defined_in(std::move(scope)) {
    name = std::move(n);
  }

  Value call(Interp& in, Args& a) const override {
    in.budget.iterate();
    auto parent = defined_in.lock();
    if (!parent) raise("macro ", squote(name), " called after the scope that defined it ended");
    auto scope = std::make_shared<Scope>();
    scope->parent = parent;
    const auto& params = def->targets;
    if (a.pos.size() > params.size())
      raise("macro ", squote(name), " takes at most ", params.size(), " argument(s), ", a.pos.size(), " given");
    std::vector<bool> given(params.size());
    for (size_t k = 0; k < a.pos.size(); ++k) {
      scope->vars[params[k]] = a.pos[k];
      given[k] = true;
    }
    for (auto& [key, v] : a.kw) {
      auto it = std::find(params.begin(), params.end(), key);
      if (it != params.end()) {
        size_t k = size_t(it - params.begin());
        if (given[k]) raise("macro ", squote(name), " got multiple values for argument ", squote(key));
        scope->vars[key] = v;
        given[k] = true;
      } else if (key == "caller") {
        scope->vars[key] = v;
      } else {
        raise("macro ", squote(name), " has no argument named ", squote(key));
      }
    }
    auto saved = in.scope_;
    in.scope_ = scope;  // defaults may refer to earlier parameters
    for (size_t k = 0; k < params.size(); ++k)
      if (!given[k])
        scope->vars[params[k]] = def->values[k] ? in.eval(*def->values[k])
                                                : Value::undefined(cat("'", params[k], "' is undefined"));
    in.scope_ = saved;
    return in.make_str(in.capture(def->body, scope));
  }
};

namespace {
struct Located : TemplateError {
  using TemplateError::TemplateError;
};
std::string at(Pos p) { return cat(p.line, ":", p.col, ": "); }

// Byte offset of code point `idx` of s (the end if s is shorter); cp_offset_from counts from byte `from`.
size_t cp_offset_from(const std::string& s, size_t from, int64_t idx) {
  size_t p = from;
  for (; idx > 0 && p < s.size(); --idx) p = utf8_next(s, p);
  return p;
}
size_t cp_offset(const std::string& s, int64_t idx) { return cp_offset_from(s, 0, idx); }
}  // namespace

// ---------------------------------------------------------------------------------------------------------------
// Interpreter

struct Interp::Frame {
  Interp& in;
  explicit Frame(Interp& i) : in(i) {
    if (++in.depth_ > in.budget.lim.max_recursion) {
      --in.depth_;
      raise("template recursion deeper than ", in.budget.lim.max_recursion, " levels");
    }
  }
  ~Frame() { --in.depth_; }
};

Interp::Interp(const Program& prog, const Value& vars, const RenderOptions& opt)
    : budget(opt.limits), now(opt.now ? opt.now : std::time(nullptr)), strict_undefined(opt.strict_undefined), prog_(prog) {
  auto globals = std::make_shared<Scope>();
  if (vars.is(Value::Kind::Dict))
    for (auto& [k, v] : vars.dict->items) globals->vars[k] = v;
  scope_ = std::make_shared<Scope>();
  scope_->parent = globals;
  add_builtins(builtins_);
}

std::string Interp::run() {
  std::string result;
  out_ = &result;
  exec(prog_.body);
  return result;
}

Value Interp::make_str(std::string s) {
  budget.check_string(s.size());
  budget.charge(s.size());  // every new string is paid for, so building strings in a loop is bounded
  return Value::string(std::move(s));
}

void Interp::emit(const std::string& s) {
  budget.charge(s.size());
  if (out_->size() + s.size() > budget.lim.max_output)
    raise("rendered text exceeds the limit of ", budget.lim.max_output, " bytes");
  out_->append(s);
}

std::string Interp::capture(const Body& body, std::shared_ptr<Scope> scope) {
  std::string buf;
  std::string* saved_out = out_;
  auto saved_scope = scope_;
  out_ = &buf;
  scope_ = std::move(scope);
  exec(body);
  out_ = saved_out;
  scope_ = saved_scope;
  return buf;
}

Value Interp::lookup(const std::string& name) {
  for (Scope* s = scope_.get(); s; s = s->parent.get()) {
    auto it = s->vars.find(name);
    if (it != s->vars.end()) return it->second;
  }
  auto it = builtins_.find(name);
  if (it != builtins_.end()) return it->second;
  return Value::undefined(cat("'", name, "' is undefined"));
}

void Interp::assign(const std::vector<std::string>& targets, const Value& v, Scope& scope) {
  if (targets.size() == 1) {
    scope.vars[targets[0]] = v;
    return;
  }
  std::vector<Value> items = iterate(*this, v);
  if (items.size() != targets.size())
    raise("cannot unpack ", items.size(), " value(s) into ", targets.size(), " names");
  for (size_t k = 0; k < targets.size(); ++k) scope.vars[targets[k]] = items[k];
}

Interp::Flow Interp::exec(const Body& body) {
  for (auto& s : body) {
    Flow f = exec_stmt(*s);
    if (f != Flow::Normal) return f;
  }
  return Flow::Normal;
}

Interp::Flow Interp::exec_stmt(const Stmt& s) {
  using K = Stmt::Kind;
  try {
    Frame frame(*this);
    switch (s.kind) {
      case K::Text: emit(s.text); return Flow::Normal;
      case K::Output: {
        Value v = eval(*s.expr);
        if (strict_undefined && v.is(Value::Kind::Undefined)) raise_undefined(v);
        emit(str(v));
        return Flow::Normal;
      }
      case K::If: return exec(truthy(eval(*s.expr)) ? s.body : s.orelse);
      case K::For: return exec_for(s);
      case K::Set: assign(s.targets, eval(*s.values[0]), *scope_); return Flow::Normal;
      case K::SetAttr: {
        Value ns = lookup(s.targets[0]);
        if (!ns.is(Value::Kind::Namespace))
          raise("cannot assign attribute ", squote(s.targets[1]), " on ", squote(s.targets[0]),
                ", which is not a namespace()");
        Value v = eval(*s.expr);
        if (v.is(Value::Kind::Namespace) || v.is(Value::Kind::Callable))
          raise("a ", type_name(v), " cannot be stored inside a namespace");
        ns.dict->set(s.targets[1], std::move(v));
        return Flow::Normal;
      }
      case K::SetBlock: scope_->vars[s.targets[0]] = make_str(capture(s.body, scope_)); return Flow::Normal;
      case K::Macro:
        scope_->vars[s.text] = make_callable(std::make_shared<MacroFn>(&s, scope_, s.text));
        return Flow::Normal;
      case K::CallBlock: {
        Value caller = make_callable(std::make_shared<MacroFn>(&s, scope_, "caller"));
        emit(str(eval_call(*s.expr, &caller)));
        return Flow::Normal;
      }
      case K::FilterBlock: {
        block_values_.push_back(make_str(capture(s.body, scope_)));
        Value r = eval(*s.expr);
        block_values_.pop_back();
        emit(str(r));
        return Flow::Normal;
      }
      case K::With: {
        auto scope = std::make_shared<Scope>();
        scope->parent = scope_;
        for (size_t k = 0; k < s.targets.size(); ++k) scope->vars[s.targets[k]] = eval(*s.values[k]);
        auto saved = scope_;
        scope_ = scope;
        Flow f = exec(s.body);
        scope_ = saved;
        return f;
      }
      case K::Group: return exec(s.body);
      case K::Break: return Flow::Break;
      case K::Continue: return Flow::Continue;
    }
    return Flow::Normal;
  } catch (const Located&) {
    throw;
  } catch (const TemplateError& e) {
    throw Located(at(s.pos) + e.what());
  }
}

// Each iteration gets a fresh scope under the enclosing one, so a plain {% set %} in the body does not outlive its
// iteration: jinja2's scoping, which is why templates carry state across iterations in a namespace().
Interp::Flow Interp::exec_for(const Stmt& s) {
  std::vector<Value> items = iterate(*this, eval(*s.expr));
  auto outer = scope_;
  if (s.cond) {  // `for x in xs if cond`: filtered before the loop, so loop.length counts the kept items
    std::vector<Value> kept;
    for (auto& it : items) {
      budget.iterate();
      auto scope = std::make_shared<Scope>();
      scope->parent = outer;
      assign(s.targets, it, *scope);
      scope_ = scope;
      bool keep = truthy(eval(*s.cond));
      scope_ = outer;
      if (keep) kept.push_back(it);
    }
    items = std::move(kept);
  }
  // The else block runs unless some iteration reached the end of its body: jinja2 clears its flag there, so a loop
  // whose every iteration ends in break or continue runs it too.
  bool completed = false;
  const int64_t n = int64_t(items.size());
  for (int64_t k = 0; k < n; ++k) {
    budget.iterate();
    auto scope = std::make_shared<Scope>();
    scope->parent = outer;
    assign(s.targets, items[size_t(k)], *scope);
    Dict loop;
    loop.items.reserve(11);
    loop.add("index", Value::integer(k + 1));
    loop.add("index0", Value::integer(k));
    loop.add("revindex", Value::integer(n - k));
    loop.add("revindex0", Value::integer(n - k - 1));
    loop.add("first", Value::boolean(k == 0));
    loop.add("last", Value::boolean(k == n - 1));
    loop.add("length", Value::integer(n));
    loop.add("depth", Value::integer(1));
    loop.add("depth0", Value::integer(0));
    loop.add("previtem", k > 0 ? items[size_t(k - 1)] : Value::undefined("there is no previous item"));
    loop.add("nextitem", k + 1 < n ? items[size_t(k + 1)] : Value::undefined("there is no next item"));
    scope->vars["loop"] = make_dict(std::move(loop), budget);
    scope_ = scope;
    Flow f = exec(s.body);
    scope_ = outer;
    if (f == Flow::Normal) completed = true;
    if (f == Flow::Break) break;
  }
  return completed ? Flow::Normal : exec(s.orelse);
}

Value Interp::eval(const Expr& e) {
  try {
    Frame frame(*this);
    return eval_node(e);
  } catch (const Located&) {
    throw;
  } catch (const TemplateError& err) {
    throw Located(at(e.pos) + err.what());
  }
}

Args Interp::eval_args(const Expr& e, size_t first) {
  Args a;
  size_t npos = e.args.size() - e.kwnames.size();
  for (size_t k = first; k < npos; ++k) a.pos.push_back(eval(*e.args[k]));
  for (size_t k = 0; k < e.kwnames.size(); ++k) a.kw.emplace_back(e.kwnames[k], eval(*e.args[npos + k]));
  return a;
}

Value Interp::call(const Value& fn, Args& args, const std::string& what) {
  if (fn.is(Value::Kind::Callable)) return fn.fn->call(*this, args);
  if (fn.is(Value::Kind::Undefined)) {
    if (!fn.why_undefined().empty()) raise(fn.why_undefined());
    raise(squote(what), " is undefined");
  }
  raise("'", type_name(fn), "' object is not callable");
}

Value Interp::eval_call(const Expr& e, const Value* caller) {
  const Expr& callee = *e.args[0];
  if (callee.kind == Expr::Kind::Attr) {  // obj.method(...): a Python method, else an attribute holding a callable
    Value obj = eval(*callee.args[0]);
    Args a = eval_args(e, 1);
    if (caller) a.kw.emplace_back("caller", *caller);
    if (auto r = call_method(*this, obj, callee.name, a)) return *r;
    return call(get_attr(obj, callee.name), a, callee.name);
  }
  Value fn = eval(callee);
  Args a = eval_args(e, 1);
  if (caller) a.kw.emplace_back("caller", *caller);
  return call(fn, a, callee.kind == Expr::Kind::Name ? callee.name : "expression");
}

// jinja2's sandbox getattr/getitem: a missing attribute, key or index is Undefined, never an error. Attribute
// access on Undefined stays Undefined (jinja2 would raise; chat templates probe optional fields this way).
Value Interp::get_attr(const Value& obj, const std::string& name) {
  using K = Value::Kind;
  if (obj.is(K::Dict) || obj.is(K::Namespace)) {
    if (const Value* v = obj.dict->find(name)) return *v;
    return Value::undefined(cat("'", type_name(obj), " object' has no attribute ", squote(name)));
  }
  if (obj.is(K::Undefined)) return obj;
  return Value::undefined(cat("'", type_name(obj), " object' has no attribute ", squote(name)));
}

Value Interp::get_item(const Value& obj, const Value& key) {
  using K = Value::Kind;
  if (obj.is(K::Undefined)) return obj;
  if (key.is(K::String)) return get_attr(obj, key.str());
  if (key.is_int() && (obj.is(K::List) || obj.is(K::String))) {
    int64_t idx = key.as_int();
    if (obj.is(K::List)) {
      int64_t n = int64_t(obj.list->items.size());
      if (idx < 0) idx += n;
      if (idx >= 0 && idx < n) return obj.list->items[size_t(idx)];
    } else {
      const std::string& s = obj.str();
      budget.charge(s.size());
      if (idx < 0) idx += int64_t(utf8_length(s));
      if (idx >= 0) {
        size_t b = cp_offset(s, idx);
        if (b < s.size()) return Value::string(s.substr(b, utf8_next(s, b) - b));
      }
    }
    return Value::undefined(cat(type_name(obj), " index out of range"));
  }
  return Value::undefined(cat("'", type_name(obj), " object' has no item ", to_repr(key, budget)));
}

namespace {

// Python's slice.indices(): clamped start and step, and how many items the slice has.
struct SliceSpec {
  int64_t start = 0, step = 1, count = 0;
};
SliceSpec slice_indices(int64_t n, const Value& start, const Value& stop, const Value& step_v) {
  auto as_index = [](const Value& v, const char* what) -> std::optional<int64_t> {
    if (v.is(Value::Kind::None) || v.is(Value::Kind::Undefined)) return std::nullopt;
    if (!v.is_int()) raise("slice ", what, " must be an integer, not '", type_name(v), "'");
    return v.as_int();
  };
  SliceSpec sl;
  sl.step = as_index(step_v, "step").value_or(1);
  if (sl.step == 0) raise("slice step cannot be zero");
  if (sl.step == INT64_MIN) sl.step = -INT64_MAX;
  int64_t lower = sl.step < 0 ? -1 : 0, upper = sl.step < 0 ? n - 1 : n;
  auto clamp = [&](std::optional<int64_t> v, int64_t dflt) {
    if (!v) return dflt;
    int64_t x = *v < 0 ? std::max(*v, -n - 1) + n : *v;
    return std::clamp(x, lower, upper);
  };
  sl.start = clamp(as_index(start, "start"), sl.step < 0 ? upper : lower);
  int64_t end = clamp(as_index(stop, "stop"), sl.step < 0 ? lower : upper);
  if (sl.step > 0 && end > sl.start) sl.count = (end - sl.start + sl.step - 1) / sl.step;
  if (sl.step < 0 && end < sl.start) sl.count = (sl.start - end - sl.step - 1) / -sl.step;
  return sl;
}

// a OP b on int64 with Python's answer or an error (Python ints never overflow; ours refuse to).
int64_t checked_op(char op, int64_t a, int64_t b) {
  int64_t r = 0;
  bool overflow = op == '+' ? __builtin_add_overflow(a, b, &r)
                  : op == '-' ? __builtin_sub_overflow(a, b, &r)
                              : __builtin_mul_overflow(a, b, &r);
  if (overflow) raise("integer overflow");
  return r;
}

Value repeat(Interp& in, const Value& seq, int64_t times) {
  if (times < 0) times = 0;
  if (seq.is(Value::Kind::String)) {
    const std::string& s = seq.str();
    if (!s.empty() && uint64_t(times) > in.budget.lim.max_string / s.size())
      raise("string repetition exceeds the limit of ", in.budget.lim.max_string, " bytes");
    std::string r;
    in.budget.charge(s.size() * uint64_t(times));
    for (int64_t k = 0; k < times; ++k) r += s;
    return in.make_str(std::move(r));
  }
  const auto& items = seq.list->items;
  if (!items.empty() && uint64_t(times) > in.budget.lim.max_items / items.size())
    raise("list repetition exceeds the limit of ", in.budget.lim.max_items, " items");
  std::vector<Value> r;
  for (int64_t k = 0; k < times; ++k) r.insert(r.end(), items.begin(), items.end());
  return make_list(std::move(r), in.budget);
}

Value binop(Interp& in, const std::string& op, const Value& a, const Value& b) {
  using K = Value::Kind;
  if (op == "~") return in.make_str(in.str(a) + in.str(b));
  if (a.is(K::Undefined)) raise_undefined(a);
  if (b.is(K::Undefined)) raise_undefined(b);
  auto type_error = [&]() -> Value {
    raise("unsupported operand type(s) for ", op, ": '", type_name(a), "' and '", type_name(b), "'");
  };
  const bool ints = a.is_int() && b.is_int(), nums = a.is_number() && b.is_number();
  int64_t x = a.as_int(), y = b.as_int();
  double p = a.as_double(), q = b.as_double();
  if (op == "+") {
    if (ints) return Value::integer(checked_op('+', x, y));
    if (nums) return Value::number(p + q);
    if (a.is(K::String) && b.is(K::String)) {
      in.budget.check_string(a.str().size() + b.str().size());
      in.budget.charge(a.str().size() + b.str().size());
      return Value::string(a.str() + b.str());
    }
    if (a.is(K::List) && b.is(K::List)) {
      std::vector<Value> v = a.list->items;
      v.insert(v.end(), b.list->items.begin(), b.list->items.end());
      return make_list(std::move(v), in.budget);
    }
    return type_error();
  }
  if (op == "-") {
    if (ints) return Value::integer(checked_op('-', x, y));
    if (nums) return Value::number(p - q);
    return type_error();
  }
  if (op == "*") {
    if (ints) return Value::integer(checked_op('*', x, y));
    if (nums) return Value::number(p * q);
    if ((a.is(K::String) || a.is(K::List)) && b.is_int()) return repeat(in, a, y);
    if (a.is_int() && (b.is(K::String) || b.is(K::List))) return repeat(in, b, x);
    return type_error();
  }
  if (op == "/") {
    if (!nums) return type_error();
    if (q == 0) raise("division by zero");
    return Value::number(p / q);
  }
  if (op == "//" || op == "%") {
    if (a.is(K::String) && op == "%") return format_percent(in, a.str(), b);
    if (!nums) return type_error();
    if (q == 0) raise(op == "//" ? "integer division or modulo by zero" : "modulo by zero");
    if (ints) {
      if (x == INT64_MIN && y == -1) raise("integer overflow");
      int64_t d = x / y, m = x % y;
      if (m != 0 && ((m < 0) != (y < 0))) --d, m += y;  // Python floors
      return Value::integer(op == "//" ? d : m);
    }
    if (op == "//") return Value::number(std::floor(p / q));
    double m = std::fmod(p, q);
    if (m != 0 && ((m < 0) != (q < 0))) m += q;
    if (m == 0) m = std::copysign(0.0, q);  // Python: a zero remainder takes the divisor's sign
    return Value::number(m);
  }
  if (op == "**") {
    if (ints && y >= 0) {
      int64_t res = 1, base = x;
      for (int64_t e = y; e > 0; e >>= 1) {
        if (e & 1) res = checked_op('*', res, base);
        if (e > 1) base = checked_op('*', base, base);
      }
      return Value::integer(res);
    }
    if (nums) return Value::number(std::pow(p, q));
    return type_error();
  }
  raise("unknown operator ", op);
}

bool contains(Interp& in, const Value& container, const Value& item) {
  using K = Value::Kind;
  switch (container.kind) {
    case K::String:
      if (!item.is(K::String)) raise("'in <string>' requires string as left operand, not ", type_name(item));
      in.budget.charge(container.str().size());
      return container.str().find(item.str()) != std::string::npos;
    case K::List:
      in.budget.charge(container.list->items.size());
      for (auto& x : container.list->items)
        if (equals(x, item, in.budget)) return true;
      return false;
    case K::Dict:
    case K::Namespace: return item.is(K::String) && container.dict->find(item.str()) != nullptr;
    case K::Undefined: return false;  // Undefined iterates as empty
    default: raise("argument of type '", type_name(container), "' is not iterable");
  }
}

bool compare_op(Interp& in, const std::string& op, const Value& a, const Value& b) {
  if (op == "==") return equals(a, b, in.budget);
  if (op == "!=") return !equals(a, b, in.budget);
  if (op == "in") return contains(in, b, a);
  if (op == "notin") return !contains(in, b, a);
  int c = compare(a, b, in.budget);
  if (op == "<") return c < 0;
  if (op == "<=") return c <= 0;
  if (op == ">") return c > 0;
  return c >= 0;  // >=
}

}  // namespace

Value Interp::eval_node(const Expr& e) {
  using K = Expr::Kind;
  switch (e.kind) {
    case K::Const: return e.value;
    case K::Name: return lookup(e.name);
    case K::List: {
      std::vector<Value> items;
      for (auto& a : e.args) items.push_back(eval(*a));
      return make_list(std::move(items), budget, e.name == "tuple");
    }
    case K::Dict: {
      Dict d;
      for (size_t k = 0; k < e.args.size(); k += 2) {
        Value key = eval(*e.args[k]);
        if (!key.is(Value::Kind::String)) raise("dict keys must be strings, not '", type_name(key), "'");
        d.set(key.str(), eval(*e.args[k + 1]));
      }
      return make_dict(std::move(d), budget);
    }
    case K::Attr: return get_attr(eval(*e.args[0]), e.name);
    case K::Item: {
      Value obj = eval(*e.args[0]);
      return get_item(obj, eval(*e.args[1]));
    }
    case K::Slice: {
      Value obj = eval(*e.args[0]);
      Value bounds[3];
      for (int k = 0; k < 3; ++k)
        if (e.args[size_t(k) + 1]) bounds[k] = eval(*e.args[size_t(k) + 1]);
      if (obj.is(Value::Kind::List)) {
        const auto& items = obj.list->items;
        SliceSpec sl = slice_indices(int64_t(items.size()), bounds[0], bounds[1], bounds[2]);
        std::vector<Value> out;
        for (int64_t k = 0, i = sl.start; k < sl.count; ++k, i += sl.step) out.push_back(items[size_t(i)]);
        return make_list(std::move(out), budget, obj.list->tuple);
      }
      if (obj.is(Value::Kind::String)) {
        const std::string& s = obj.str();
        budget.charge(s.size());
        SliceSpec sl = slice_indices(int64_t(utf8_length(s)), bounds[0], bounds[1], bounds[2]);
        if (sl.step == 1) {  // the common case: one substring, no index table
          size_t b = cp_offset(s, sl.start);
          return make_str(s.substr(b, cp_offset_from(s, b, sl.count) - b));
        }
        auto off = utf8_offsets(s);
        std::string out;
        for (int64_t k = 0, i = sl.start; k < sl.count; ++k, i += sl.step)
          out.append(s, off[size_t(i)], off[size_t(i) + 1] - off[size_t(i)]);
        return make_str(std::move(out));
      }
      if (obj.is(Value::Kind::Undefined)) return obj;
      return Value::undefined(cat("'", type_name(obj), "' object cannot be sliced"));
    }
    case K::Call: return eval_call(e, nullptr);
    case K::Filter:
    case K::Test: {
      Value subject = eval(*e.args[0]);
      Args a = eval_args(e, 1);
      // Filters scan their input: charge its size so a loop of them stays within the work limit.
      budget.charge(1 + size_units(subject));
      if (e.kind == K::Filter) return e.filter(*this, subject, a);
      return Value::boolean(e.test(*this, subject, a));
    }
    case K::Not: return Value::boolean(!truthy(eval(*e.args[0])));
    case K::Neg:
    case K::Plus: {
      Value v = eval(*e.args[0]);
      if (v.is(Value::Kind::Undefined)) raise_undefined(v);
      if (!v.is_number()) raise("bad operand type for unary ", e.kind == K::Neg ? "-" : "+", ": '", type_name(v), "'");
      if (e.kind == K::Plus) return v.is(Value::Kind::Float) ? v : Value::integer(v.as_int());
      if (v.is(Value::Kind::Float)) return Value::number(-v.f);
      if (v.as_int() == INT64_MIN) raise("integer overflow");
      return Value::integer(-v.as_int());
    }
    case K::Binary: {
      Value a = eval(*e.args[0]);
      return binop(*this, e.name, a, eval(*e.args[1]));
    }
    case K::Compare: {
      Value left = eval(*e.args[0]);
      for (size_t k = 0; k < e.ops.size(); ++k) {
        Value right = eval(*e.args[k + 1]);
        if (!compare_op(*this, e.ops[k], left, right)) return Value::boolean(false);
        left = std::move(right);
      }
      return Value::boolean(true);
    }
    case K::And: {
      Value l = eval(*e.args[0]);
      return truthy(l) ? eval(*e.args[1]) : l;
    }
    case K::Or: {
      Value l = eval(*e.args[0]);
      return truthy(l) ? l : eval(*e.args[1]);
    }
    case K::Cond:
      if (truthy(eval(*e.args[1]))) return eval(*e.args[0]);
      return e.args[2] ? eval(*e.args[2]) : Value::undefined("the inline if was false and has no else");
    case K::BlockBody: return block_values_.back();
  }
  raise("unknown expression");
}

// ---------------------------------------------------------------------------------------------------------------
// Template

Template Template::parse(std::string_view source, const std::string& label, const Syntax& syntax) {
  auto prog = std::make_shared<Program>();
  prog->label = label;
  Parser parser(Lexer(source, label, syntax).run(), label);
  prog->body = parser.parse_template();
  prog->iterates_content = body_iterates_content(prog->body);
  Template t;
  t.prog_ = std::move(prog);
  return t;
}

std::string Template::render(const Value& vars, const RenderOptions& options) const {
  Interp in(*prog_, vars, options);
  try {
    return in.run();
  } catch (const Located& e) {
    fail(prog_->label, ":", e.what());
  } catch (const TemplateError& e) {
    fail(prog_->label, ": ", e.what());
  }
}

bool Template::iterates_content() const { return prog_->iterates_content; }
const std::string& Template::label() const { return prog_->label; }

}  // namespace bamba::jinja
