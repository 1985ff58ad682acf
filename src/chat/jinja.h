// A Jinja2 subset, enough for the chat templates Hugging Face models ship in tokenizer_config.json: lexer and parser
// to an AST once, then an interpreter over jinja::Value. Written by hand because Debian ships no C++ Jinja library.
//
// It renders the way transformers' apply_chat_template does: jinja2 with trim_blocks and lstrip_blocks on,
// keep_trailing_newline off, no autoescape, the loopcontrols extension (break/continue), HF's {% generation %} tag,
// and HF's tojson (json.dumps: no HTML escaping, non-ASCII kept, keys in their given order). docs/chat-templates.md
// lists what is supported.
#pragma once
#include <ctime>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "chat/jinja_value.h"

namespace bamba::jinja {

struct Program;  // the parsed template (jinja_ast.h)

struct RenderOptions {
  Limits limits;
  std::time_t now = 0;  // the clock strftime_now() reads; 0: the current time
  // jinja2's StrictUndefined (what lm-eval's task templates use): printing an undefined value is an error
  // instead of "" (chat templates probe optional fields, so the default stays lenient).
  bool strict_undefined = false;
};

// jinja2 Environment switches that change how a template's text is read. The defaults are Hugging Face's chat
// template settings; lm-eval's task templates use jinja2's own defaults plus keep_trailing_newline.
struct Syntax {
  bool trim_blocks = true, lstrip_blocks = true, keep_trailing_newline = false;
};

class Template {
 public:
  // Throws bamba::Error "<label>:<line>:<col>: <what>" on a syntax error (unclosed tag, unknown filter or test,
  // unexpected token).
  static Template parse(std::string_view source, const std::string& label, const Syntax& syntax = {});

  // `vars` is a Dict of the template's variables. Throws bamba::Error "<label>:<line>:<col>: <message>" when the
  // template fails: raise_exception(message), a type error, an undefined method, a limit.
  std::string render(const Value& vars, const RenderOptions& options = {}) const;

  // Whether some {% for %} iterates over a `.content` / `['content']`: the template then handles OpenAI-style
  // content part lists itself, otherwise the caller should flatten them to a string (as vLLM does).
  bool iterates_content() const;
  const std::string& label() const;

 private:
  std::shared_ptr<const Program> prog_;
};

}  // namespace bamba::jinja
