// Internals shared by the interpreter (jinja.cpp) and the builtins (jinja_builtins.cpp): the AST and the
// interpreter's state. Not part of the public API.
#pragma once
#include <ctime>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "chat/jinja.h"
#include "chat/jinja_value.h"

namespace bamba::jinja {

struct Pos {
  int line = 0, col = 0;
};

using FilterFn = Value (*)(Interp& in, const Value& subject, Args& args);
using TestFn = bool (*)(Interp& in, const Value& subject, Args& args);
FilterFn find_filter(const std::string& name);  // nullptr if unknown
TestFn find_test(const std::string& name);

struct Expr;
using ExprP = std::unique_ptr<Expr>;

struct Expr {
  enum class Kind {
    Const,      // value
    Name,       // name
    List,       // args: the elements; name "tuple" for a tuple
    Dict,       // args: key, value, key, value...
    Attr,       // args[0].name
    Item,       // args[0][args[1]]
    Slice,      // args[0][args[1]:args[2]:args[3]], null for an omitted bound
    Call,       // args[0](args[1..]); the last kwnames.size() args are keyword arguments
    Filter,     // args[0] | name(args[1..]) through `filter`; keyword args as in Call
    Test,       // args[0] is name(args[1..]) through `test`
    Not,        // not args[0]
    Neg,        // -args[0]
    Plus,       // +args[0]
    Binary,     // args[0] <name> args[1]: + - * / // % ** ~
    Compare,    // args[0] ops[0] args[1] ops[1] args[2]...: == != < <= > >= in notin
    And,        // args[0] and args[1]
    Or,         // args[0] or args[1]
    Cond,       // args[0] if args[1] else args[2] (args[2] null: undefined)
    BlockBody,  // the rendered body of the enclosing {% filter %} block
  };
  Kind kind = Kind::Const;
  Pos pos;
  Value value;
  std::string name;
  std::vector<ExprP> args;
  std::vector<std::string> kwnames;
  std::vector<std::string> ops;
  FilterFn filter = nullptr;
  TestFn test = nullptr;
};

struct Stmt;
using StmtP = std::unique_ptr<Stmt>;
using Body = std::vector<StmtP>;

struct Stmt {
  enum class Kind {
    Text,         // text
    Output,       // {{ expr }}
    If,           // if expr: body else orelse (elif is an If inside orelse)
    For,          // for targets in expr [if cond]: body else orelse
    Set,          // set targets = values[0]
    SetAttr,      // set targets[0].targets[1] = expr   (namespace attribute)
    SetBlock,     // set targets[0]: body rendered to a string
    Macro,        // macro text(targets = values defaults): body
    CallBlock,    // call(targets = values) expr: body is `caller`
    FilterBlock,  // filter expr (a filter chain over BlockBody): body
    With,         // with targets = values: body
    Group,        // HF's {% generation %}: body, rendered in place
    Break,
    Continue,
  };
  Kind kind = Kind::Text;
  Pos pos;
  std::string text;
  std::vector<std::string> targets;
  std::vector<ExprP> values;  // Macro/CallBlock: parameter defaults, null where there is none
  ExprP expr, cond;
  Body body, orelse;
};

struct Program {
  std::string label;
  Body body;
  bool iterates_content = false;
};

struct Scope {
  std::unordered_map<std::string, Value> vars;
  std::shared_ptr<Scope> parent;
};

class Interp {
 public:
  Interp(const Program& prog, const Value& vars, const RenderOptions& opt);
  std::string run();

  Budget budget;
  std::time_t now;
  bool strict_undefined;

  Value eval(const Expr& e);
  Value call(const Value& fn, Args& args, const std::string& what);
  Value get_attr(const Value& obj, const std::string& name);
  Value get_item(const Value& obj, const Value& key);
  std::string str(const Value& v) { return to_str(v, budget); }
  Value make_str(std::string s);  // checks the string limit

  // Rendering a body into a string (macros, {% set %} blocks, {% filter %} blocks).
  std::string capture(const Body& body, std::shared_ptr<Scope> scope);

 private:
  enum class Flow { Normal, Break, Continue };
  struct Frame;  // RAII recursion counter

  const Program& prog_;
  std::shared_ptr<Scope> scope_;
  std::unordered_map<std::string, Value> builtins_;
  std::string* out_ = nullptr;
  std::vector<Value> block_values_;  // BlockBody values of the enclosing {% filter %} blocks
  int depth_ = 0;

  Flow exec(const Body& body);
  Flow exec_stmt(const Stmt& s);
  Flow exec_for(const Stmt& s);
  void emit(const std::string& s);
  Value lookup(const std::string& name);
  Value eval_node(const Expr& e);
  Value eval_call(const Expr& e, const Value* caller);
  Args eval_args(const Expr& e, size_t first);
  void assign(const std::vector<std::string>& targets, const Value& v, Scope& scope);
  friend struct MacroFn;
};

// Python methods on str/list/dict values (`s.strip()`, `d.items()`); nullopt if `obj` has no such method.
std::optional<Value> call_method(Interp& in, const Value& obj, const std::string& name, Args& args);
// The global functions: range, namespace, dict, raise_exception, strftime_now.
void add_builtins(std::unordered_map<std::string, Value>& globals);
// `fmt % args`: printf-style formatting (the `%` operator on strings and the `format` filter).
Value format_percent(Interp& in, const std::string& fmt, const Value& args);
// Items of a for loop / the `list` filter: list items, dict keys, string characters; Undefined iterates as empty.
std::vector<Value> iterate(Interp& in, const Value& v);

}  // namespace bamba::jinja
