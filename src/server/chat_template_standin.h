// Stand-in for chat/chat_template.h (branch `jinja`, not on main yet): the same API, so the chat route compiles
// and answers; render() says that the renderer is missing. Delete this file when the jinja branch is merged and
// include "chat/chat_template.h" instead.
#pragma once
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "core/error.h"
#include "core/mapped_file.h"

namespace bamba {

class ChatTemplate {
 public:
  static constexpr bool kStandIn = true;
  static ChatTemplate parse(std::string source, std::string label) { return ChatTemplate{std::move(source)}; }
  static std::optional<ChatTemplate> from_model_dir(const std::string& dir) {
    const std::string cfg = dir + "/tokenizer_config.json", jinja = dir + "/chat_template.jinja";
    if (file_exists(jinja)) return ChatTemplate{read_text_file(jinja)};
    if (!file_exists(cfg)) return std::nullopt;
    auto j = nlohmann::json::parse(read_text_file(cfg), nullptr, false);
    if (j.is_object() && j.contains("chat_template") && j["chat_template"].is_string())
      return ChatTemplate{j["chat_template"].get<std::string>()};
    return std::nullopt;
  }
  std::string render(const nlohmann::json&, bool, const nlohmann::json& = {}) const {
    fail("chat templates need the Jinja2 renderer, which this build does not have yet");
  }
  std::string source;
};

}  // namespace bamba
