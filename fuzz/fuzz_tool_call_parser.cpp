// libFuzzer target: any bytes as a model's output, read for tool calls in one of the four formats (the first byte
// picks the format and the streaming piece size). The stream and the whole-output parse must agree: the same
// calls, names announced once and in order, argument chunks that concatenate to the same arguments, the same
// content when the calls parse. A crash, a sanitizer report or a disagreement (trap) is a bug.
//   clang++ -std=c++20 -O1 -g -fsanitize=fuzzer,address,undefined -Isrc fuzz/fuzz_tool_call_parser.cpp \
//       src/chat/tool_call_parser.cpp
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <string_view>

#include "chat/tool_call_parser.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const auto f = bamba::ToolCallFormat(data[0] % 4);
  const size_t step = 1 + (data[0] >> 2) % 8;
  const std::string_view text(reinterpret_cast<const char*>(data) + 1, size - 1);

  bamba::ToolCallParser p(f);
  std::string content;
  std::map<int32_t, std::string> names, args;
  auto take = [&](const bamba::ToolCallParser::Delta& d) {
    content += d.content;
    for (const bamba::ToolCallDelta& t : d.calls) {
      if (t.name) {
        if (names.count(t.index) || t.index != int32_t(names.size())) __builtin_trap();
        names[t.index] = *t.name;
      } else if (!names.count(t.index)) {
        __builtin_trap();
      }
      args[t.index] += t.arguments;
    }
  };
  for (size_t i = 0; i < text.size(); i += step) take(p.feed(text.substr(i, step)));
  take(p.finish());

  const bamba::ToolCallParser::Result whole = bamba::ToolCallParser::parse(f, text);
  if (p.valid() && !p.calls().empty()) {
    if (!whole.valid || whole.content != content || whole.calls.size() != names.size()) __builtin_trap();
    for (size_t i = 0; i < whole.calls.size(); ++i)
      if (whole.calls[i].name != names[int32_t(i)] || whole.calls[i].arguments != args[int32_t(i)]) __builtin_trap();
  } else if (whole.calls.size() != 0 || (whole.valid && whole.content != content)) {
    __builtin_trap();
  }
  return 0;
}
