// libFuzzer target: any bytes as a chat template, parsed, then rendered for a small fixed conversation (with and
// without tools). bamba::Error is the expected answer to bad input; a crash, a sanitizer report, a leak or a hang
// (libFuzzer's -timeout) is a bug.
//   clang++ -std=c++20 -O1 -g -fsanitize=fuzzer,address,undefined -Isrc fuzz/fuzz_chat_template.cpp src/chat/*.cpp
#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string_view>

#include "chat/chat_template.h"
#include "core/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const auto messages = nlohmann::ordered_json::parse(R"([
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Hello!"},
    {"role": "assistant", "content": "Hi!", "tool_calls": [{"type": "function",
      "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
    {"role": "tool", "content": "{\"temp_c\": 21}"},
    {"role": "user", "content": [{"type": "text", "text": "What is 2+2?"}, {"type": "text", "text": "Äh?"}]}])");
  static const auto extra = nlohmann::ordered_json::parse(R"({
    "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Weather",
      "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}],
    "documents": [{"doc_id": 1, "text": "Paris is in France."}], "thinking": true})");
  try {
    auto t = bamba::ChatTemplate::parse(std::string_view(reinterpret_cast<const char*>(data), size), "fuzz");
    t.bos_token = "<s>";
    t.eos_token = "</s>";
    t.now = 1721044800;
    // Smaller bounds than the defaults keep each run short; what is under test is that they hold, not their size.
    t.limits.max_iterations = 20000;
    t.limits.max_work = 8u << 20;
    t.limits.max_output = 1u << 20;
    t.limits.max_string = 1u << 20;
    t.limits.max_items = 1u << 14;
    t.render(messages, true);
    t.render(messages, false, extra);
  } catch (const bamba::Error&) {
  }
  return 0;
}
