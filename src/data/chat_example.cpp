#include "data/chat_example.h"

#include "core/error.h"
#include "tokenizer/tokenizer.h"

namespace bamba {

namespace {

using ojson = nlohmann::ordered_json;

ojson first(const ojson& messages, size_t n) {
  ojson out = ojson::array();
  for (size_t i = 0; i < n; ++i) out.push_back(messages[i]);
  return out;
}

}  // namespace

ChatTokens tokenize_chat(const ChatTemplate& tmpl, const Tokenizer& tok, const ojson& conv, const std::string& where,
                         const std::string& drop_prefix) {
  if (!conv.is_object()) fail(where, ": expected a JSON object with \"messages\", got ", conv.type_name());
  auto it = conv.find("messages");
  if (it == conv.end()) fail(where, ": no field \"messages\"");
  const ojson& messages = *it;
  if (!messages.is_array() || messages.empty()) fail(where, ": \"messages\" must be a non-empty list");
  for (size_t i = 0; i < messages.size(); ++i) {
    const ojson& m = messages[i];
    if (!m.is_object() || !m.contains("role") || !m["role"].is_string())
      fail(where, ": messages[", i, "] must be an object with a string \"role\"");
  }
  ojson extra = ojson::object();
  if (auto t = conv.find("tools"); t != conv.end() && !t->is_null()) {
    if (!t->is_array()) fail(where, ": \"tools\" must be a list of tool definitions");
    extra["tools"] = *t;
  }
  auto render = [&](const ojson& msgs, bool gen, size_t i) {
    try {
      return tmpl.render(msgs, gen, extra);
    } catch (const Error& e) {
      fail(where, ": the chat template fails on the conversation up to messages[", i, "]: ", e.what());
    }
  };

  const std::string full = render(messages, false, messages.size());
  // [begin, end) of each assistant message in `full`
  std::vector<std::pair<size_t, size_t>> spans;
  for (size_t i = 0; i < messages.size(); ++i) {
    if (messages[i]["role"] != "assistant") continue;
    const std::string before = render(first(messages, i), true, i);
    const std::string through = render(first(messages, i + 1), false, i);
    if (!full.starts_with(before) || !full.starts_with(through) || through.size() < before.size())
      fail(where, ": messages[", i, "] (assistant): the chat template does not render the conversation up to this "
           "message as a prefix of the whole conversation (it changes earlier turns once later ones follow), so the "
           "assistant's tokens cannot be located; give the training data in a form this template renders "
           "incrementally, or a template that does");
    if (!spans.empty() && before.size() < spans.back().second)
      fail(where, ": messages[", i, "] (assistant) starts inside the previous assistant message's rendering");
    if (through.size() > before.size()) spans.push_back({before.size(), through.size()});
  }
  if (spans.empty()) fail(where, ": no assistant message with content to train on");

  size_t start = full.starts_with(drop_prefix) ? drop_prefix.size() : 0;
  ChatTokens out;
  out.assistant_turns = int(spans.size());
  auto add = [&](size_t b, size_t e, uint8_t m) {
    if (e <= b) return;
    const std::vector<int32_t> ids = tok.encode(std::string_view(full).substr(b, e - b), /*add_special=*/false);
    out.tokens.insert(out.tokens.end(), ids.begin(), ids.end());
    out.mask.insert(out.mask.end(), ids.size(), m);
  };
  for (const auto& [b, e] : spans) {
    add(start, std::max(start, b), 0);
    add(std::max(start, b), e, 1);
    start = std::max(start, e);
  }
  add(start, full.size(), 0);
  return out;
}

}  // namespace bamba
