#include "chat/tool_call_parser.h"

#include <array>
#include <nlohmann/json.hpp>

namespace bamba {

namespace {

struct FormatInfo {
  const char* name;
  std::vector<std::string_view> openers;  // any of these starts the tool-call region
  std::vector<std::string_view> markers;  // text between calls that is part of the format, not content
  const char* opening;                    // what tool_choice forces: the region's opener up to the name
  const char* after_name;
  const char* closing;
};

const FormatInfo& info(ToolCallFormat f) {
  static const std::array<FormatInfo, 4> table = {{
      {"hermes", {"<tool_call>"}, {"<tool_call>", "</tool_call>"}, "<tool_call>\n{\"name\": \"",
       "\", \"arguments\": ", "}\n</tool_call>"},
      {"llama3_json", {"<|python_tag|>"}, {"<|python_tag|>"}, "{\"name\": \"", "\", \"parameters\": ", "}"},
      // Granite 3.x writes <|tool_call|>[...]; some fine-tunes use the Hermes tag.
      {"granite", {"<|tool_call|>", "<tool_call>"}, {"<|tool_call|>", "<tool_call>", "</tool_call>"},
       "<|tool_call|>[{\"name\": \"", "\", \"arguments\": ", "}]"},
      {"mistral", {"[TOOL_CALLS]"}, {"[TOOL_CALLS]"}, "[TOOL_CALLS][{\"name\": \"", "\", \"arguments\": ", "}]"},
  }};
  return table[size_t(f)];
}

bool is_space(char c) { return c == ' ' || c == '\n' || c == '\t' || c == '\r'; }

// The longest k < marker size such that `s` ends with the first k bytes of a marker: text that may still become
// a marker and must not be sent as content yet.
size_t held_back(std::string_view s, const std::vector<std::string_view>& markers) {
  size_t best = 0;
  for (std::string_view m : markers)
    for (size_t k = std::min(s.size(), m.size() - 1); k > best; --k)
      if (s.substr(s.size() - k) == m.substr(0, k)) {
        best = k;
        break;
      }
  return best;
}

std::string trim(std::string_view s) {
  size_t a = 0, b = s.size();
  while (a < b && is_space(s[a])) ++a;
  while (b > a && is_space(s[b - 1])) --b;
  return std::string(s.substr(a, b - a));
}

}  // namespace

std::optional<ToolCallFormat> tool_call_format_from_name(std::string_view name) {
  for (ToolCallFormat f : {ToolCallFormat::Hermes, ToolCallFormat::Llama3Json, ToolCallFormat::Granite, ToolCallFormat::Mistral})
    if (name == info(f).name) return f;
  return std::nullopt;
}

const char* tool_call_format_name(ToolCallFormat f) { return info(f).name; }

std::optional<ToolCallFormat> detect_tool_call_format(std::string_view t) {
  auto has = [&](std::string_view s) { return t.find(s) != std::string_view::npos; };
  // Order matters: Granite 3.x templates mention <|tool_call|>, Granite 4.0 / Qwen / Hermes <tool_call>.
  if (has("<|tool_call|>")) return ToolCallFormat::Granite;
  if (has("[TOOL_CALLS]")) return ToolCallFormat::Mistral;
  if (has("<tool_call>")) return ToolCallFormat::Hermes;
  if (has("<|python_tag|>") || has("Environment: ipython")) return ToolCallFormat::Llama3Json;
  return std::nullopt;
}

std::string tool_call_opening(ToolCallFormat f) { return info(f).opening; }
std::string tool_call_after_name(ToolCallFormat f) { return info(f).after_name; }
std::string tool_call_closing(ToolCallFormat f) { return info(f).closing; }

ToolCallParser::Delta ToolCallParser::feed(std::string_view text) {
  buf_.append(text);
  Delta out;
  scan(out, false);
  return out;
}

ToolCallParser::Delta ToolCallParser::finish() {
  Delta out;
  scan(out, true);
  if (in_obj_) {  // the output ended inside a call (max_tokens)
    valid_ = false;
    junk_ += buf_.substr(obj_start_);
    in_obj_ = false;
  }
  if (in_tools_) {
    // Text between calls that is not part of the format goes back to the client as content.
    std::string rest = junk_;
    for (std::string_view m : info(format_).markers)
      for (size_t p; (p = rest.find(m)) != std::string::npos;) rest.erase(p, m.size());
    bool only_separators = true;
    for (char c : rest) only_separators &= is_space(c) || c == '[' || c == ']' || c == ',' || c == ';';
    if (!only_separators) out.content += trim(rest);
    if (calls_.empty()) valid_ = false;
  }
  return out;
}

void ToolCallParser::scan(Delta& out, bool at_end) {
  if (!in_tools_) scan_content(out, at_end);
  if (in_tools_) scan_tools(out);
}

void ToolCallParser::scan_content(Delta& out, bool at_end) {
  const FormatInfo& fi = info(format_);
  std::string_view s(buf_);
  if (format_ == ToolCallFormat::Llama3Json && !plain_) {
    // Llama 3 answers a call with nothing but the JSON (after an optional <|python_tag|>).
    size_t i = 0;
    while (i < s.size() && is_space(s[i])) ++i;
    std::string_view rest = s.substr(i);
    if (rest.empty() && !at_end) return;
    if (!rest.empty() && rest[0] == '{') {
      in_tools_ = true;
      pos_ = content_sent_ = i;
      return;
    }
    std::string_view tag = fi.openers[0];
    if (rest.substr(0, tag.size()) == tag) {
      in_tools_ = true;
      pos_ = content_sent_ = i + tag.size();
      return;
    }
    if (!at_end && tag.substr(0, rest.size()) == rest) return;  // may still become the tag
    plain_ = true;
  }
  if (plain_) {
    out.content += buf_.substr(content_sent_);
    content_sent_ = buf_.size();
    return;
  }
  size_t first = std::string::npos, len = 0;
  for (std::string_view m : fi.openers) {
    size_t p = s.find(m, content_sent_);
    if (p < first) first = p, len = m.size();
  }
  if (first != std::string::npos) {
    out.content += buf_.substr(content_sent_, first - content_sent_);
    in_tools_ = true;
    content_sent_ = first;
    pos_ = first + len;
    return;
  }
  const size_t hold = at_end ? 0 : held_back(s.substr(content_sent_), fi.openers);
  out.content += buf_.substr(content_sent_, buf_.size() - hold - content_sent_);
  content_sent_ = buf_.size() - hold;
}

void ToolCallParser::value_begin(size_t i) {
  val_start_ = i;
  if (key_ == "arguments" || key_ == "parameters") {
    // A second arguments key: JSON parsers disagree on which one counts, and the first is already streamed.
    if (has_args_) {
      valid_ = false;
      return;
    }
    has_args_ = true;
    args_start_ = i;
  }
}

void ToolCallParser::value_end(size_t end) {
  if (key_ == "name") {
    std::string raw = buf_.substr(val_start_, end - val_start_);
    auto j = nlohmann::json::parse(raw, nullptr, false);
    // A second "name" is not a call: the first was announced already, a JSON parser would keep the last.
    if (j.is_string() && !name_) name_ = j.get<std::string>();
    else valid_ = false;
  } else if (has_args_ && !args_done_ && args_start_ == val_start_) {
    args_end_ = end;
    args_done_ = true;
  }
  primitive_ = false;
  expect_ = Expect::Comma;
}

ToolCallDelta& ToolCallParser::delta_for(Delta& out) const {
  const int32_t index = int32_t(calls_.size());
  if (out.calls.empty() || out.calls.back().index != index) out.calls.push_back({index, std::nullopt, ""});
  return out.calls.back();
}

void ToolCallParser::emit_call(Delta& out) {
  if (name_ && !name_sent_) {
    delta_for(out).name = *name_;
    name_sent_ = true;
  }
  if (!name_sent_ || !has_args_) return;
  // While the arguments value is open every byte scanned so far belongs to it.
  const size_t end = args_done_ ? args_end_ : buf_.size();
  if (end > args_start_ + args_sent_) {
    delta_for(out).arguments += buf_.substr(args_start_ + args_sent_, end - args_start_ - args_sent_);
    args_sent_ = end - args_start_;
  }
}

void ToolCallParser::object_end(Delta& out, size_t end) {
  emit_call(out);
  auto j = nlohmann::ordered_json::parse(buf_.substr(obj_start_, end - obj_start_), nullptr, false);
  const char* args_key = j.is_object() && j.contains("arguments") ? "arguments" : "parameters";
  if (!(j.is_object() && j.contains("name") && j["name"].is_string() && (!j.contains(args_key) || j[args_key].is_object())))
    valid_ = false;
  if (name_) {
    std::string args = "{}";  // a call written without arguments takes none
    if (has_args_) args = trim(std::string_view(buf_).substr(args_start_, args_end_ - args_start_));
    else if (name_sent_) delta_for(out).arguments += args;
    calls_.push_back({*name_, args});
  } else {
    valid_ = false;
  }
  in_obj_ = false;
}

void ToolCallParser::scan_tools(Delta& out) {
  for (size_t i = pos_; i < buf_.size(); ++i) {
    const char c = buf_[i];
    if (!in_obj_) {
      if (c != '{') {
        junk_ += c;
        continue;
      }
      in_obj_ = true;
      depth_ = 1;
      expect_ = Expect::Key;
      obj_start_ = i;
      in_str_ = esc_ = primitive_ = false;
      key_.clear();
      name_.reset();
      name_sent_ = has_args_ = args_done_ = false;
      args_sent_ = 0;
      continue;
    }
    if (in_str_) {
      if (esc_) esc_ = false;
      else if (c == '\\') esc_ = true;
      else if (c == '"') {
        in_str_ = false;
        if (depth_ == 1 && expect_ == Expect::Key) {
          auto k = nlohmann::json::parse(buf_.substr(str_start_, i + 1 - str_start_), nullptr, false);
          key_ = k.is_string() ? k.get<std::string>() : std::string();
          expect_ = Expect::Colon;
        } else if (depth_ == 1 && expect_ == Expect::Value) {
          value_end(i + 1);
        }
      }
      continue;
    }
    if (primitive_ && (c == ',' || c == '}' || c == ']' || is_space(c))) value_end(i);
    switch (c) {
      case '"':
        in_str_ = true;
        if (depth_ == 1 && expect_ == Expect::Key) str_start_ = i;
        else if (depth_ == 1 && expect_ == Expect::Value) value_begin(i);
        break;
      case '{':
      case '[':
        if (depth_ == 1 && expect_ == Expect::Value) value_begin(i);
        ++depth_;
        break;
      case '}':
      case ']':
        --depth_;
        if (depth_ == 1 && expect_ == Expect::Value) value_end(i + 1);
        if (depth_ == 0) object_end(out, i + 1);
        break;
      case ':':
        if (depth_ == 1) expect_ = Expect::Value;
        break;
      case ',':
        if (depth_ == 1) expect_ = Expect::Key;
        break;
      default:
        if (depth_ == 1 && expect_ == Expect::Value && !is_space(c) && !primitive_) {
          primitive_ = true;
          value_begin(i);
        }
    }
  }
  pos_ = buf_.size();
  if (in_obj_) emit_call(out);
}

ToolCallParser::Result ToolCallParser::parse(ToolCallFormat f, std::string_view text) {
  ToolCallParser p(f);
  Result r;
  Delta a = p.feed(text), b = p.finish();
  if (!p.in_tools_) {
    r.content = a.content + b.content;
    return r;
  }
  if (!p.valid()) {
    r.content = std::string(text);
    r.valid = false;
    return r;
  }
  r.content = a.content + b.content;
  r.calls = p.calls();
  return r;
}

}  // namespace bamba
