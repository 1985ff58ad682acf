#include "chat/chat_template.h"

#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.h"

namespace bamba {
namespace fs = std::filesystem;

namespace {

std::string read_file(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  BAMBA_CHECK(f, "cannot open ", p.string());
  std::ostringstream ss;
  ss << f.rdbuf();
  BAMBA_CHECK(!f.bad(), "cannot read ", p.string());
  return ss.str();
}

nlohmann::json read_json(const fs::path& p) {
  try {
    return nlohmann::json::parse(read_file(p));
  } catch (const nlohmann::json::exception& e) {
    fail(p.string(), ": invalid JSON: ", e.what());
  }
}

// A special token as tokenizer_config.json writes it: "<s>", {"content": "<s>", ...} (AddedToken), or null.
std::optional<std::string> token_text(const nlohmann::json& cfg, const char* key) {
  auto it = cfg.find(key);
  if (it == cfg.end() || it->is_null()) return std::nullopt;
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object() && it->contains("content") && (*it)["content"].is_string())
    return (*it)["content"].get<std::string>();
  return std::nullopt;
}

// One message with its content as the template wants it: text parts joined with "\n" (vLLM's "string" content
// format) unless the template walks the parts itself. Bamba is text-only, so other part types are refused.
template <typename J>
jinja::Value message_value(const J& msg, size_t index, bool keep_parts, jinja::Budget& budget) {
  BAMBA_CHECK(msg.is_object(), "messages[", index, "] must be an object");
  auto content = msg.find("content");
  if (content == msg.end() || !content->is_array()) return jinja::from_json(msg, budget);
  std::string text;
  for (size_t k = 0; k < content->size(); ++k) {
    const auto& part = (*content)[k];
    BAMBA_CHECK(part.is_object() && part.contains("type") && part["type"].is_string(), "messages[", index,
                "].content[", k, "] must be an object with a \"type\"");
    auto type = part["type"].template get<std::string>();
    BAMBA_CHECK(type == "text", "messages[", index, "].content[", k, "]: content type \"", type,
                "\" is not supported (text only)");
    BAMBA_CHECK(part.contains("text") && part["text"].is_string(), "messages[", index, "].content[", k,
                "] needs a string \"text\"");
    if (keep_parts) continue;
    if (k) text += "\n";
    text += part["text"].template get<std::string>();
  }
  if (keep_parts) return jinja::from_json(msg, budget);
  J flat = msg;
  flat["content"] = text;
  return jinja::from_json(flat, budget);
}

}  // namespace

ChatTemplate ChatTemplate::parse(std::string_view source, const std::string& label) {
  ChatTemplate t;
  t.tmpl_ = jinja::Template::parse(source, label);
  t.source_ = source;
  return t;
}

std::optional<ChatTemplate> ChatTemplate::from_model_dir(const std::string& dir) {
  const fs::path d(dir);
  std::optional<ChatTemplate> t;
  nlohmann::json cfg = nlohmann::json::object();
  if (fs::exists(d / "tokenizer_config.json")) cfg = read_json(d / "tokenizer_config.json");
  BAMBA_CHECK(cfg.is_object(), (d / "tokenizer_config.json").string(), ": expected a JSON object");

  if (fs::exists(d / "chat_template.jinja")) {
    auto path = (d / "chat_template.jinja").string();
    t = parse(read_file(path), path);
  } else if (cfg.contains("chat_template") && !cfg["chat_template"].is_null()) {
    const auto& ct = cfg["chat_template"];
    std::string label = (d / "tokenizer_config.json").string() + " chat_template";
    if (ct.is_string()) {
      t = parse(ct.get<std::string>(), label);
    } else if (ct.is_array()) {  // [{"name": "default", "template": ...}, {"name": "tool_use", ...}]
      std::string names;
      for (const auto& e : ct) {
        if (!e.is_object() || !e.contains("name") || !e["name"].is_string()) continue;
        std::string name = e["name"].get<std::string>();
        names += (names.empty() ? "" : ", ") + name;
        if (name == "default") {
          BAMBA_CHECK(e.contains("template") && e["template"].is_string(), label, ": template \"default\" is not a string");
          t = parse(e["template"].get<std::string>(), label + " (default)");
        }
      }
      BAMBA_CHECK(t, label, ": no template named \"default\" (has: ", names, ")");
    } else {
      fail(label, ": expected a string or a list of {name, template}");
    }
  } else if (fs::exists(d / "chat_template.json")) {  // processors' layout
    auto path = (d / "chat_template.json").string();
    auto j = read_json(path);
    BAMBA_CHECK(j.is_object() && j.contains("chat_template") && j["chat_template"].is_string(), path,
                ": expected {\"chat_template\": \"...\"}");
    t = parse(j["chat_template"].get<std::string>(), path);
  }
  if (!t) return std::nullopt;

  t->bos_token = token_text(cfg, "bos_token");
  t->eos_token = token_text(cfg, "eos_token");
  if ((!t->bos_token || !t->eos_token) && fs::exists(d / "special_tokens_map.json")) {
    auto map = read_json(d / "special_tokens_map.json");
    if (map.is_object()) {
      if (!t->bos_token) t->bos_token = token_text(map, "bos_token");
      if (!t->eos_token) t->eos_token = token_text(map, "eos_token");
    }
  }
  return t;
}

template <typename J>
std::string ChatTemplate::render_impl(const J& messages, bool add_generation_prompt, const J& extra) const {
  using jinja::Value;
  BAMBA_CHECK(messages.is_array(), "chat messages must be a JSON array");
  BAMBA_CHECK(extra.is_null() || extra.is_object(), "chat template variables must be a JSON object");
  jinja::Budget budget(limits);  // bounds the input conversion the same way as the render
  jinja::Dict vars;
  std::vector<Value> msgs;
  Value vars_value;
  const bool keep_parts = tmpl_.iterates_content();
  try {
    for (size_t k = 0; k < messages.size(); ++k) msgs.push_back(message_value(messages[k], k, keep_parts, budget));
    vars.set("messages", jinja::make_list(std::move(msgs), budget));
    vars.set("tools", Value::none());  // transformers always passes these two, None when absent
    vars.set("documents", Value::none());
    vars.set("add_generation_prompt", Value::boolean(add_generation_prompt));
    if (bos_token) vars.set("bos_token", Value::string(*bos_token));
    if (eos_token) vars.set("eos_token", Value::string(*eos_token));
    if (extra.is_object())
      for (auto it = extra.begin(); it != extra.end(); ++it) {
        BAMBA_CHECK(it.key() != "messages" && it.key() != "add_generation_prompt", "chat template variable \"",
                    it.key(), "\" cannot be overridden");
        vars.set(it.key(), jinja::from_json(it.value(), budget));
      }
    vars_value = jinja::make_dict(std::move(vars), budget);
  } catch (const jinja::TemplateError& e) {
    fail("chat messages: ", e.what());
  }
  jinja::RenderOptions opt;
  opt.limits = limits;
  opt.now = now;
  return tmpl_.render(vars_value, opt);
}

std::string ChatTemplate::render(const nlohmann::json& messages, bool add_generation_prompt,
                                 const nlohmann::json& extra) const {
  return render_impl(messages, add_generation_prompt, extra);
}

std::string ChatTemplate::render(const nlohmann::ordered_json& messages, bool add_generation_prompt,
                                 const nlohmann::ordered_json& extra) const {
  return render_impl(messages, add_generation_prompt, extra);
}

}  // namespace bamba
