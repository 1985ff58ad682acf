// ChatTemplate: a model's chat template (the Jinja program in its Hugging Face folder) turned into a prompt the
// way transformers' apply_chat_template does, for /v1/chat/completions.
#pragma once
#include <ctime>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>

#include "chat/jinja.h"

namespace bamba {

struct ChatTemplate {
  // Parses once; bamba::Error "<label>:<line>:<col>: ..." on a syntax error.
  static ChatTemplate parse(std::string_view source, const std::string& label);

  // The template of a Hugging Face folder: chat_template.jinja (the newer layout, which wins, as in transformers),
  // else tokenizer_config.json's "chat_template" (a string, or a list of {name, template}: the "default" one),
  // else chat_template.json. std::nullopt if the model has none. bos_token/eos_token come from
  // tokenizer_config.json (string or {"content": ...}), else special_tokens_map.json.
  static std::optional<ChatTemplate> from_model_dir(const std::string& dir);

  // Renders `messages` (an array of {role, content, ...}; content a string, null, or a list of {type:"text", text}
  // parts) with add_generation_prompt, bos_token, eos_token, tools = documents = None (as transformers passes them)
  // and every key of `extra` (tools, documents, date_string, enable_thinking, ...; it may override the tokens).
  // Content part lists are joined with "\n" into a string unless the template iterates over content itself.
  // Runtime failures (raise_exception, type errors, undefined methods, limits) -> bamba::Error with the message.
  // const and safe to call from several threads at once: each render has its own interpreter state.
  std::string render(const nlohmann::json& messages, bool add_generation_prompt,
                     const nlohmann::json& extra = nullptr) const;
  // The same for ordered_json, which keeps the keys of tools/documents in the client's order when tojson prints
  // them (nlohmann::json sorts keys; transformers keeps the order it was given).
  std::string render(const nlohmann::ordered_json& messages, bool add_generation_prompt,
                     const nlohmann::ordered_json& extra = nullptr) const;

  std::optional<std::string> bos_token, eos_token;  // passed as variables when set
  jinja::Limits limits;                            // bounds on one render
  std::time_t now = 0;                             // strftime_now()'s clock; 0: the current time

  const std::string& label() const { return tmpl_.label(); }
  // The template's text (the server reads which tool-call format it teaches, and whether it renders tools).
  const std::string& source() const { return source_; }
  // Whether the template consumes content part lists itself (see jinja::Template::iterates_content).
  bool takes_content_parts() const { return tmpl_.iterates_content(); }

 private:
  jinja::Template tmpl_;
  std::string source_;

  template <typename J>
  std::string render_impl(const J& messages, bool add_generation_prompt, const J& extra) const;
};

}  // namespace bamba
