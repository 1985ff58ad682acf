// ToolCallParser: the tool calls in a model's output, in the format its family writes them (Hermes/Qwen
// `<tool_call>{...}</tool_call>`, Llama-3 bare JSON, Granite `<|tool_call|>[...]`, Mistral `[TOOL_CALLS][...]`),
// as whole calls (non-streaming) or as the OpenAI-shaped pieces a stream sends: first a call's name, then its
// arguments in chunks. One parser per generated sequence. Table of formats: docs/chat-templates.md.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace bamba {

enum class ToolCallFormat { Hermes, Llama3Json, Granite, Mistral };

// "hermes", "llama3_json", "granite", "mistral" (std::nullopt for another name).
std::optional<ToolCallFormat> tool_call_format_from_name(std::string_view name);
const char* tool_call_format_name(ToolCallFormat f);
// The format a chat template teaches its model, read off the template's text (the `auto` default).
std::optional<ToolCallFormat> detect_tool_call_format(std::string_view template_source);

// The text that opens a call with the function name still to come (`{"name": "` included), and the text that
// follows the name to reach the arguments value (`", "arguments": `). tool_choice required / named writes these
// after the prompt so that the model can only continue a call.
std::string tool_call_opening(ToolCallFormat f);
std::string tool_call_after_name(ToolCallFormat f);
// The text that closes a call whose arguments have been written (`}\n</tool_call>`, `}]`, ...).
std::string tool_call_closing(ToolCallFormat f);

struct ToolCall {
  std::string name;
  std::string arguments;  // the arguments value as the model wrote it (JSON text)
};

// One streamed piece of a call: its name once (first), then arguments text to append.
struct ToolCallDelta {
  int32_t index = 0;
  std::optional<std::string> name;
  std::string arguments;
};

class ToolCallParser {
 public:
  explicit ToolCallParser(ToolCallFormat f) : format_(f) {}

  struct Delta {
    std::string content;  // plain text for the client
    std::vector<ToolCallDelta> calls;
  };
  // Streaming: the next generated text; returns what can be sent now (text that may still turn into a call
  // marker is held back).
  Delta feed(std::string_view text);
  // The end of the output: whatever was held back, and text in the tool-call region that formed no call.
  Delta finish();

  // After finish(): the calls seen, and whether every one was a complete, valid call (JSON object with a string
  // "name" and an object "arguments"/"parameters") and the output did not end inside one.
  const std::vector<ToolCall>& calls() const { return calls_; }
  bool valid() const { return valid_; }
  std::string_view text() const { return buf_; }

  // Non-streaming: the content and the calls of a whole output. If the tool-call region does not parse, the whole
  // output is content and there are no calls (as vLLM answers).
  struct Result {
    std::string content;
    std::vector<ToolCall> calls;
    bool valid = true;  // false: something looked like a call but did not parse
  };
  static Result parse(ToolCallFormat f, std::string_view text);

 private:
  enum class Expect { Key, Colon, Value, Comma };
  void scan(Delta& out, bool at_end);
  void scan_content(Delta& out, bool at_end);
  void scan_tools(Delta& out);
  void value_begin(size_t i);
  void value_end(size_t end);
  void object_end(Delta& out, size_t end);
  void emit_call(Delta& out);
  ToolCallDelta& delta_for(Delta& out) const;

  ToolCallFormat format_;
  std::string buf_;
  size_t pos_ = 0;             // scanned up to here
  bool in_tools_ = false;      // past the first call marker
  bool plain_ = false;         // Llama-3 JSON: the output did not open with a call, so it is all content
  size_t content_sent_ = 0;    // content mode: bytes of buf_ sent
  std::string junk_;           // tool mode: text between calls
  // The object being scanned.
  bool in_obj_ = false, in_str_ = false, esc_ = false, primitive_ = false;
  int depth_ = 0;
  Expect expect_ = Expect::Key;
  size_t obj_start_ = 0, str_start_ = 0, val_start_ = 0;
  std::string key_;
  std::optional<std::string> name_;
  bool name_sent_ = false;
  size_t args_start_ = 0, args_end_ = 0, args_sent_ = 0;
  bool has_args_ = false, args_done_ = false;
  std::vector<ToolCall> calls_;
  bool valid_ = true;
};

}  // namespace bamba
