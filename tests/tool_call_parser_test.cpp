// ToolCallParser on hand-written outputs in the four formats: whole outputs give the content and calls written
// below by hand; the same outputs streamed byte by byte and in uneven pieces give the same content and, per call,
// the name once and then argument chunks that concatenate to the same arguments text.
#include "chat/tool_call_parser.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

namespace bamba {
namespace {

struct Case {
  const char* name;
  ToolCallFormat format;
  const char* output;
  const char* content;                                      // expected content
  std::vector<std::pair<std::string, std::string>> calls;  // expected (name, arguments)
};

const Case kCases[] = {
    {"HermesTwoCallsAfterText", ToolCallFormat::Hermes,
     "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Z\xc3\xbcrich\"}}\n"
     "</tool_call>\n<tool_call>\n{\"name\": \"search_docs\", \"arguments\": {\"query\": \"a}b\\\"c{\", \"limit\": 3}}\n"
     "</tool_call>",
     "Let me check.\n",
     {{"get_weather", "{\"city\": \"Z\xc3\xbcrich\"}"}, {"search_docs", "{\"query\": \"a}b\\\"c{\", \"limit\": 3}"}}},
    {"HermesNoCall", ToolCallFormat::Hermes, "The weather is <b>fine</b> {really}.", "The weather is <b>fine</b> {really}.", {}},
    {"HermesCallWithoutArguments", ToolCallFormat::Hermes, "<tool_call>{\"name\": \"now\"}</tool_call>", "",
     {{"now", "{}"}}},
    {"HermesArgumentsFirstAndNested", ToolCallFormat::Hermes,
     "<tool_call>\n{\"arguments\": {\"a\": [1, {\"b\": \"]\"}], \"c\": null}, \"name\": \"f\"}\n</tool_call>", "",
     {{"f", "{\"a\": [1, {\"b\": \"]\"}], \"c\": null}"}}},
    {"HermesTextAfterTheCalls", ToolCallFormat::Hermes,
     "<tool_call>\n{\"name\": \"f\", \"arguments\": {}}\n</tool_call>\nDone.", "Done.", {{"f", "{}"}}},
    {"Llama3Json", ToolCallFormat::Llama3Json, "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}", "",
     {{"get_weather", "{\"city\": \"Paris\"}"}}},
    {"Llama3PythonTagAndTwoCalls", ToolCallFormat::Llama3Json,
     "<|python_tag|>{\"name\": \"a\", \"parameters\": {\"x\": 1}}; {\"name\": \"b\", \"parameters\": {}}", "",
     {{"a", "{\"x\": 1}"}, {"b", "{}"}}},
    {"Llama3PlainText", ToolCallFormat::Llama3Json, "  Paris is {sunny}.", "  Paris is {sunny}.", {}},
    {"Granite", ToolCallFormat::Granite,
     "<|tool_call|>[{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}, "
     "{\"name\": \"search_docs\", \"arguments\": {\"query\": \"x\"}}]",
     "", {{"get_weather", "{\"city\": \"Paris\"}"}, {"search_docs", "{\"query\": \"x\"}"}}},
    {"Mistral", ToolCallFormat::Mistral,
     "[TOOL_CALLS][{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"unit\": \"celsius\"}}]", "",
     {{"get_weather", "{\"city\": \"Paris\", \"unit\": \"celsius\"}"}}},
};

class Formats : public ::testing::TestWithParam<Case> {};

TEST_P(Formats, WholeOutput) {
  const Case& c = GetParam();
  ToolCallParser::Result r = ToolCallParser::parse(c.format, c.output);
  EXPECT_TRUE(r.valid);
  EXPECT_EQ(r.content, c.content);
  ASSERT_EQ(r.calls.size(), c.calls.size());
  for (size_t i = 0; i < c.calls.size(); ++i) {
    EXPECT_EQ(r.calls[i].name, c.calls[i].first);
    EXPECT_EQ(r.calls[i].arguments, c.calls[i].second);
  }
}

// Streams the output in pieces of `step` bytes (cycling through the sizes) and reassembles it.
void expect_streamed_equal(const Case& c, std::vector<size_t> steps) {
  ToolCallParser p(c.format);
  std::string content;
  std::map<int32_t, std::string> names, args;
  std::string text = c.output;
  auto take = [&](const ToolCallParser::Delta& d) {
    content += d.content;
    for (const ToolCallDelta& t : d.calls) {
      if (t.name) {
        EXPECT_FALSE(names.count(t.index)) << "name of call " << t.index << " sent twice";
        EXPECT_EQ(t.index, int32_t(names.size())) << "calls are announced in order";
        names[t.index] = *t.name;
      } else {
        EXPECT_TRUE(names.count(t.index)) << "arguments before the name of call " << t.index;
      }
      args[t.index] += t.arguments;
    }
  };
  for (size_t i = 0, k = 0; i < text.size(); ++k) {
    const size_t n = std::min(steps[k % steps.size()], text.size() - i);
    take(p.feed(text.substr(i, n)));
    i += n;
  }
  take(p.finish());
  EXPECT_TRUE(p.valid() || c.calls.empty());
  EXPECT_EQ(content, c.content);
  ASSERT_EQ(names.size(), c.calls.size());
  for (size_t i = 0; i < c.calls.size(); ++i) {
    EXPECT_EQ(names[int32_t(i)], c.calls[i].first);
    EXPECT_EQ(args[int32_t(i)], c.calls[i].second);
  }
}

TEST_P(Formats, StreamedByteByByte) { expect_streamed_equal(GetParam(), {1}); }
TEST_P(Formats, StreamedInUnevenPieces) { expect_streamed_equal(GetParam(), {3, 7, 1, 13, 2}); }

INSTANTIATE_TEST_SUITE_P(ToolCallParser, Formats, ::testing::ValuesIn(kCases),
                         [](const auto& info) { return std::string(info.param.name); });

TEST(ToolCallParser, HoldsBackOnlyWhatMayBecomeAMarker) {
  ToolCallParser p(ToolCallFormat::Hermes);
  EXPECT_EQ(p.feed("Hi <tool").content, "Hi ");
  EXPECT_EQ(p.feed("box> and <").content, "<toolbox> and ");
  EXPECT_EQ(p.feed("3").content, "<3");
  ToolCallParser q(ToolCallFormat::Hermes);
  EXPECT_EQ(q.feed("x <tool_c").content, "x ");
  ToolCallParser::Delta d = q.feed("all>{\"name\": \"f\", \"argu");
  EXPECT_EQ(d.content, "");
  ASSERT_EQ(d.calls.size(), 1u);
  EXPECT_EQ(d.calls[0].name, "f");
  EXPECT_EQ(d.calls[0].arguments, "");
  d = q.feed("ments\": {\"a\": 1");
  ASSERT_EQ(d.calls.size(), 1u);
  EXPECT_FALSE(d.calls[0].name);
  EXPECT_EQ(d.calls[0].arguments, "{\"a\": 1");
  // Text that may still become the marker is sent when the output ends.
  ToolCallParser r(ToolCallFormat::Mistral);
  EXPECT_EQ(r.feed("ok [TOOL").content, "ok ");
  EXPECT_EQ(r.finish().content, "[TOOL");
}

// A call object with its "name" or its arguments twice is not a call: the stream has announced the first name and
// streamed the first arguments already, while a JSON parser would keep the last (found by fuzz_tool_call_parser).
TEST(ToolCallParser, DuplicateKeysMakeTheOutputContent) {
  for (const char* text : {"{\"name\": \"\", \"name\": \"f\"}",
                           "{\"name\": \"f\", \"parameters\": {\"a\": 1}, \"parameters\": {\"b\": 2}}"}) {
    const ToolCallParser::Result r = ToolCallParser::parse(ToolCallFormat::Llama3Json, text);
    EXPECT_FALSE(r.valid) << text;
    EXPECT_TRUE(r.calls.empty()) << text;
    EXPECT_EQ(r.content, text);
    ToolCallParser p(ToolCallFormat::Llama3Json);
    for (const char* c = text; *c; ++c) p.feed(std::string_view(c, 1));
    p.finish();
    EXPECT_FALSE(p.valid()) << text;
  }
}

TEST(ToolCallParser, BrokenCallsMakeTheWholeOutputContent) {
  for (const char* out : {"Sure. <tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": ",  // cut (max_tokens)
                          "<tool_call>\n{\"name\": 5, \"arguments\": {}}\n</tool_call>",             // name not a string
                          "<tool_call>\n{\"name\": \"f\", \"arguments\": [1]}\n</tool_call>",        // not an object
                          "<tool_call>\nno json here\n</tool_call>"}) {
    ToolCallParser::Result r = ToolCallParser::parse(ToolCallFormat::Hermes, out);
    EXPECT_FALSE(r.valid) << out;
    EXPECT_TRUE(r.calls.empty()) << out;
    EXPECT_EQ(r.content, out);
  }
}

TEST(ToolCallParser, FormatNamesAndForcedOpenings) {
  for (const char* n : {"hermes", "llama3_json", "granite", "mistral"}) {
    auto f = tool_call_format_from_name(n);
    ASSERT_TRUE(f) << n;
    EXPECT_STREQ(tool_call_format_name(*f), n);
    // A forced opening + name + arguments + closing is one valid call.
    std::string call = tool_call_opening(*f) + "get_weather" + tool_call_after_name(*f) + "{\"city\": \"Paris\"}" +
                       tool_call_closing(*f);
    ToolCallParser::Result r = ToolCallParser::parse(*f, call);
    ASSERT_EQ(r.calls.size(), 1u) << call;
    EXPECT_EQ(r.calls[0].name, "get_weather");
    EXPECT_EQ(r.calls[0].arguments, "{\"city\": \"Paris\"}");
    EXPECT_EQ(r.content, "");
  }
  EXPECT_FALSE(tool_call_format_from_name("pythonic"));
}

std::string read(const std::string& path) {
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

TEST(ToolCallParser, DefaultFormatFromRealTemplates) {
  const std::string dir = std::string(BAMBA_SOURCE_DIR) + "/tests/data/tools/templates/";
  const std::map<std::string, std::optional<ToolCallFormat>> want = {
      {"llama31", ToolCallFormat::Llama3Json}, {"llama32", ToolCallFormat::Llama3Json},
      {"granite30", ToolCallFormat::Granite},  {"granite31", ToolCallFormat::Granite},
      {"granite33", ToolCallFormat::Granite},  {"granite40", ToolCallFormat::Hermes},
      {"qwen25", ToolCallFormat::Hermes},      {"hermes2pro", ToolCallFormat::Hermes},
      {"mistral_nemo", ToolCallFormat::Mistral}};
  for (auto& [name, f] : want) {
    std::string src = read(dir + name + ".jinja");
    ASSERT_FALSE(src.empty()) << name;
    EXPECT_EQ(detect_tool_call_format(src), f) << name;
  }
  EXPECT_EQ(detect_tool_call_format("{% for m in messages %}{{ m.content }}{% endfor %}"), std::nullopt);
}

}  // namespace
}  // namespace bamba
