// Tool calling in the chat API without HTTP: requests with tools render, byte for byte, what transformers'
// apply_chat_template renders for nine real templates (tests/data/tools: cases.json, the templates, render.py and
// its output expected.json); tool_choice forces a call's opening; bad tool fields are 400s naming the field; and
// hand-written engine outputs become OpenAI-shaped tool_calls, whole and streamed.
#include <gtest/gtest.h>

#include <fstream>
#include <map>
#include <sstream>

#include "server/openai_api.h"

namespace bamba {
namespace {

const std::string kData = std::string(BAMBA_SOURCE_DIR) + "/tests/data/tools/";

std::string read(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

ServingContext context(const std::string& template_file, const json& bos, const json& eos) {
  ServingContext ctx;
  ctx.model_name = "m";
  ctx.max_model_len = 4096;
  ctx.chat_template = ChatTemplate::parse(read(kData + template_file), template_file);
  if (bos.is_string()) ctx.template_vars["bos_token"] = bos;
  if (eos.is_string()) ctx.template_vars["eos_token"] = eos;
  ctx.tool_format = detect_tool_call_format(ctx.chat_template->source());
  return ctx;
}

TEST(ChatTools, PromptsEqualTransformersApplyChatTemplate) {
  const json cases = json::parse(read(kData + "cases.json"));
  const json expected = json::parse(read(kData + "expected.json"));
  ASSERT_GE(cases.size(), 30u);
  std::cout << "expected prompts rendered by " << expected["renderer"].get<std::string>() << "\n";
  for (const json& c : cases) {
    const std::string name = c["name"];
    SCOPED_TRACE(name);
    ASSERT_TRUE(expected["prompts"].contains(name));
    const json& want = expected["prompts"][name];
    ServingContext ctx = context(c["template"], c["bos_token"], c["eos_token"]);
    if (want.is_object()) {  // transformers raised: so must we, as a 400 on messages
      try {
        chat_prompt(c["request"], ctx);
        ADD_FAILURE() << "expected an error like " << want["error"];
      } catch (const ApiError& e) {
        EXPECT_EQ(e.status, 400);
        EXPECT_EQ(e.param, "messages");
      }
      continue;
    }
    EXPECT_EQ(chat_prompt(c["request"], ctx).text, want.get<std::string>());
  }
}

json weather_request() {
  json cases = json::parse(read(kData + "cases.json"));
  for (json& c : cases)
    if (c["name"] == "qwen25_ask") return c["request"];
  return nullptr;
}

TEST(ChatTools, ToolChoiceForcesTheOpeningOfACall) {
  ServingContext ctx = context("templates/qwen25.jinja", nullptr, "<|im_end|>");
  ASSERT_EQ(ctx.tool_format, ToolCallFormat::Hermes);
  json req = weather_request();
  const std::string plain = chat_prompt(req, ctx).text;
  ASSERT_TRUE(plain.ends_with("<|im_start|>assistant\n"));

  req["tool_choice"] = "auto";
  ChatPrompt a = chat_prompt(req, ctx);
  EXPECT_EQ(a.text, plain);
  EXPECT_TRUE(a.tools.parse);
  EXPECT_EQ(a.tools.names, (std::vector<std::string>{"get_weather", "search_docs"}));

  req["tool_choice"] = "required";
  ChatPrompt r = chat_prompt(req, ctx);
  EXPECT_EQ(r.text, plain + "<tool_call>\n{\"name\": \"");
  EXPECT_FALSE(r.tools.forced_whole);

  req["tool_choice"] = {{"type", "function"}, {"function", {{"name", "get_weather"}}}};
  ChatPrompt n = chat_prompt(req, ctx);
  EXPECT_EQ(n.text, plain + "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": ");
  EXPECT_EQ(n.tools.named, "get_weather");

  req["tool_choice"] = "none";  // the template still sees the tools (as in vLLM); the output is not parsed
  ChatPrompt none = chat_prompt(req, ctx);
  EXPECT_EQ(none.text, plain);
  EXPECT_FALSE(none.tools.parse);

  // A function without parameters has exactly one call: it is written whole.
  req["tools"].push_back(json::parse(R"({"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}})"));
  req["tool_choice"] = {{"type", "function"}, {"function", {{"name", "get_time"}}}};
  ChatPrompt w = chat_prompt(req, ctx);
  EXPECT_TRUE(w.tools.forced_whole);
  EXPECT_TRUE(w.text.ends_with("<|im_start|>assistant\n<tool_call>\n{\"name\": \"get_time\", \"arguments\": {}}\n</tool_call>"));
}

TEST(ChatTools, UnsupportedOrMalformedToolFieldsAre400sNamingTheField) {
  ServingContext ctx = context("templates/qwen25.jinja", nullptr, "<|im_end|>");
  auto param_of = [&](json req) -> std::string {
    try {
      chat_prompt(req, ctx);
    } catch (const ApiError& e) {
      EXPECT_EQ(e.status, 400);
      return e.param;
    }
    return "(accepted)";
  };
  const json base = weather_request();
  auto with = [&](const char* key, json v) {
    json r = base;
    r[key] = std::move(v);
    return r;
  };
  EXPECT_EQ(param_of(base), "(accepted)");
  EXPECT_EQ(param_of(with("tools", "get_weather")), "tools");
  EXPECT_EQ(param_of(with("tools", json::parse(R"([{"type": "code_interpreter"}])"))), "tools");
  EXPECT_EQ(param_of(with("tools", json::parse(R"([{"type": "function", "function": {"description": "x"}}])"))), "tools");
  EXPECT_EQ(param_of(with("tools", json::parse(R"([{"type": "function", "function": {"name": "f", "parameters": "x"}}])"))), "tools");
  EXPECT_EQ(param_of(with("tools", json::parse(R"([{"type": "function", "function": {"name": "f"}}, {"type": "function", "function": {"name": "f"}}])"))), "tools");
  EXPECT_EQ(param_of(with("tool_choice", "always")), "tool_choice");
  EXPECT_EQ(param_of(with("tool_choice", json::parse(R"({"type": "function", "function": {"name": "nope"}})"))), "tool_choice");
  EXPECT_EQ(param_of(with("tool_choice", 3)), "tool_choice");
  EXPECT_EQ(param_of(with("parallel_tool_calls", "yes")), "parallel_tool_calls");
  EXPECT_EQ(param_of(with("functions", json::array())), "functions");
  EXPECT_EQ(param_of(with("function_call", "auto")), "function_call");
  EXPECT_EQ(param_of(with("documents", "x")), "documents");
  EXPECT_EQ(param_of(with("chat_template_kwargs", json::parse(R"({"messages": []})"))), "chat_template_kwargs");
  json no_tools = base;
  no_tools.erase("tools");
  no_tools["tool_choice"] = "required";
  EXPECT_EQ(param_of(no_tools), "tool_choice");
  json bad_args = json::parse(read(kData + "cases.json"))[1]["request"];  // llama31_call
  bad_args["messages"][2]["tool_calls"][0]["function"]["arguments"] = "{not json";
  EXPECT_EQ(param_of(bad_args), "messages");
  // A template that does not render tools, and a model whose format is unknown.
  ServingContext plain = ctx;
  plain.chat_template = ChatTemplate::parse("{% for m in messages %}{{ m.content }}{% endfor %}", "plain");
  plain.tool_format = std::nullopt;
  try {
    chat_prompt(base, plain);
    ADD_FAILURE();
  } catch (const ApiError& e) {
    EXPECT_EQ(e.param, "tools");
    EXPECT_NE(std::string(e.what()).find("does not render tools"), std::string::npos) << e.what();
  }
  ServingContext unknown = ctx;
  unknown.tool_format = std::nullopt;
  try {
    chat_prompt(base, unknown);
    ADD_FAILURE();
  } catch (const ApiError& e) {
    EXPECT_EQ(e.param, "tools");
    EXPECT_NE(std::string(e.what()).find("--tool-call-parser"), std::string::npos) << e.what();
  }
  json none = base;
  none["tool_choice"] = "none";  // no parsing asked for: no parser needed
  EXPECT_NO_THROW(chat_prompt(none, unknown));
}

// ---- engine outputs -> responses

Job tool_job(bool stream, std::string forced = {}) {
  Job job;
  job.chat = true;
  job.stream = stream;
  job.prompts = {{1, 2, 3}};
  job.tools.parse = true;
  job.tools.format = ToolCallFormat::Hermes;
  job.tools.names = {"get_weather", "search_docs"};
  job.tools.forced = std::move(forced);
  if (!job.tools.forced.empty()) job.tools.named = "get_weather";
  return job;
}

RequestOutput out(std::string text, FinishReason f = FinishReason::None) {
  RequestOutput o;
  o.text = std::move(text);
  o.tokens = {7};
  o.finish = f;
  return o;
}

const char* const kPieces[] = {"I'll look.", "\n<tool", "_call>\n{\"name\": \"get_", "weather\", \"arguments\": {\"ci",
                               "ty\": \"Paris\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"search_docs\", \"arguments\": ",
                               "{\"query\": \"rain\"}}\n</tool_call>"};

TEST(ChatTools, WholeResponseHasToolCalls) {
  ServingContext ctx;
  ctx.model_name = "m";
  Job job = tool_job(false);
  ResponseBuilder b(job, ctx, "id", 0);
  for (const char* p : kPieces) b.add(out(p));
  b.add(out("", FinishReason::Stop));
  ASSERT_TRUE(b.all_done());
  EXPECT_EQ(b.error(), "");
  json r = b.response();
  const json& ch = r["choices"][0];
  EXPECT_EQ(ch["finish_reason"], "tool_calls");
  EXPECT_EQ(ch["message"]["content"], "I'll look.\n");
  const json& calls = ch["message"]["tool_calls"];
  ASSERT_EQ(calls.size(), 2u);
  EXPECT_EQ(calls[0]["type"], "function");
  EXPECT_EQ(calls[0]["function"]["name"], "get_weather");
  EXPECT_EQ(calls[0]["function"]["arguments"], "{\"city\": \"Paris\"}");
  EXPECT_EQ(calls[1]["function"]["name"], "search_docs");
  EXPECT_EQ(calls[1]["function"]["arguments"], "{\"query\": \"rain\"}");
  EXPECT_TRUE(calls[0]["id"].get<std::string>().starts_with("call_"));
  EXPECT_NE(calls[0]["id"], calls[1]["id"]);
  // parallel_tool_calls: false keeps the first call.
  Job one = tool_job(false);
  one.tools.parallel = false;
  ResponseBuilder b1(one, ctx, "id", 0);
  for (const char* p : kPieces) b1.add(out(p));
  b1.add(out("", FinishReason::Stop));
  EXPECT_EQ(b1.response()["choices"][0]["message"]["tool_calls"].size(), 1u);
  // No call in the output: plain content, the engine's finish reason.
  ResponseBuilder b2(job, ctx, "id", 0);
  b2.add(out("Sunny.", FinishReason::Stop));
  EXPECT_EQ(b2.response()["choices"][0]["message"]["content"], "Sunny.");
  EXPECT_FALSE(b2.response()["choices"][0]["message"].contains("tool_calls"));
  EXPECT_EQ(b2.response()["choices"][0]["finish_reason"], "stop");
}

TEST(ChatTools, StreamSendsOpenAiShapedToolCallDeltas) {
  ServingContext ctx;
  ctx.model_name = "m";
  Job job = tool_job(true);
  ResponseBuilder b(job, ctx, "id", 0);
  std::vector<json> chunks;
  for (const char* p : kPieces)
    for (json& c : b.add(out(p))) chunks.push_back(std::move(c));
  for (json& c : b.add(out("", FinishReason::Stop))) chunks.push_back(std::move(c));
  ASSERT_GE(chunks.size(), 3u);
  EXPECT_EQ(chunks[0]["choices"][0]["delta"]["role"], "assistant");
  std::string content;
  std::map<int, json> calls;  // index -> {id, name, arguments}
  for (size_t i = 1; i < chunks.size(); ++i) {
    const json& d = chunks[i]["choices"][0]["delta"];
    EXPECT_EQ(chunks[i]["object"], "chat.completion.chunk");
    if (d.contains("content")) content += d["content"].get<std::string>();
    if (!d.contains("tool_calls")) continue;
    for (const json& t : d["tool_calls"]) {
      const int idx = t["index"];
      if (t.contains("id")) {  // the first delta of a call: id, type, name
        EXPECT_FALSE(calls.count(idx));
        EXPECT_EQ(t["type"], "function");
        calls[idx] = {{"id", t["id"]}, {"name", t["function"]["name"]}, {"arguments", ""}};
      }
      ASSERT_TRUE(calls.count(idx)) << "arguments before the call's first delta";
      EXPECT_FALSE(t.contains("id") != t["function"].contains("name"));
      calls[idx]["arguments"] = calls[idx]["arguments"].get<std::string>() + t["function"]["arguments"].get<std::string>();
    }
  }
  EXPECT_EQ(content, "I'll look.\n");
  ASSERT_EQ(calls.size(), 2u);
  EXPECT_EQ(calls[0]["name"], "get_weather");
  EXPECT_EQ(calls[0]["arguments"], "{\"city\": \"Paris\"}");
  EXPECT_EQ(calls[1]["name"], "search_docs");
  EXPECT_EQ(calls[1]["arguments"], "{\"query\": \"rain\"}");
  EXPECT_EQ(chunks.back()["choices"][0]["finish_reason"], "tool_calls");
  for (size_t i = 0; i + 1 < chunks.size(); ++i) EXPECT_TRUE(chunks[i]["choices"][0]["finish_reason"].is_null());
}

TEST(ChatTools, ForcedCallIsCheckedWholeAndStreamed) {
  ServingContext ctx;
  ctx.model_name = "m";
  const std::string opening = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": ";
  for (bool stream : {false, true}) {
    SCOPED_TRACE(stream ? "stream" : "whole");
    Job job = tool_job(stream, opening);
    ResponseBuilder ok(job, ctx, "id", 0);
    std::string args;
    for (const char* p : {"{\"city\": ", "\"Oslo\"}}\n</tool_call>"})
      for (json& c : ok.add(out(p)))
        if (c["choices"][0]["delta"].contains("tool_calls"))
          args += c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].get<std::string>();
    ok.add(out("", FinishReason::Stop));
    EXPECT_EQ(ok.error(), "");
    if (stream) EXPECT_EQ(args, "{\"city\": \"Oslo\"}");
    else EXPECT_EQ(ok.response()["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"], "{\"city\": \"Oslo\"}");
    // Arguments that never close (max_tokens): an error, not a silent plain answer.
    ResponseBuilder cut(job, ctx, "id", 0);
    cut.add(out("{\"city\": \"Os"));
    cut.add(out("", FinishReason::Length));
    EXPECT_NE(cut.error().find("not a call of \"get_weather\""), std::string::npos) << cut.error();
  }
}

}  // namespace
}  // namespace bamba
