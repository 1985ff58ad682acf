// vLLM's sampling parameters and structured output through `bamba serve` over HTTP, on the bamba-tiny-e2e
// fixture (random weights, real Llama-3 tokenizer: unconstrained, its output is noise): penalties, logit_bias,
// min_p, seeds and n, top logprobs; response_format / guided_* outputs that always parse and validate; tool_choice
// "required" and named functions that always come back as tool_calls; and the 400s naming the field.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <regex>
#include <set>

#include "server_util.h"

namespace bamba {
namespace {

using json = nlohmann::json;
using test::ServerProcess;

std::string e2e() { return test::model_dir("bamba-tiny-e2e"); }

struct Reply {
  int status = 0;
  json body;
};
Reply post(const ServerProcess& s, const std::string& path, const json& body) {
  auto r = s.client().Post(path, body.dump(), "application/json");
  if (!r) return {};
  return {r->status, json::parse(r->body, nullptr, false)};
}
// The SSE payloads of a streamed request ([DONE] excluded).
std::vector<json> stream(const ServerProcess& s, const std::string& path, json body) {
  body["stream"] = true;
  auto r = s.client().Post(path, body.dump(), "application/json");
  std::vector<json> out;
  if (!r) return out;
  std::string b = r->body;
  for (size_t e; (e = b.find("\n\n")) != std::string::npos; b.erase(0, e + 2)) {
    std::string ev = b.substr(0, e);
    if (ev != "data: [DONE]") out.push_back(json::parse(ev.substr(6), nullptr, false));
  }
  return out;
}

// A copy of bamba-tiny-e2e whose chat template is tests/data/tools/templates/<name>.jinja.
std::string model_with_template(const std::string& name) {
  namespace fs = std::filesystem;
  const std::string dir = test::make_temp_dir("tmpl-model");
  for (const char* f : {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json"})
    fs::create_symlink(e2e() + "/" + f, dir + "/" + f);
  json cfg = json::parse(std::ifstream(e2e() + "/tokenizer_config.json"));
  std::ifstream t(std::string(BAMBA_SOURCE_DIR) + "/tests/data/tools/templates/" + name + ".jinja");
  cfg["chat_template"] = std::string(std::istreambuf_iterator<char>(t), {});
  std::ofstream(dir + "/tokenizer_config.json") << cfg.dump(2);
  return dir;
}

const std::string kArgs = "-q --device cpu --max-model-len 1024 --max-n 8";

class SamplingApi : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { server_ = new ServerProcess("--model '" + e2e() + "' " + kArgs); }
  static void TearDownTestSuite() {
    delete server_;
    server_ = nullptr;
  }
  void SetUp() override { ASSERT_TRUE(server_->ready()) << server_->log(); }
  const ServerProcess& s() const { return *server_; }
  Reply complete(json body) {
    if (!body.contains("prompt")) body["prompt"] = "The weather today";
    return post(s(), "/v1/completions", body);
  }
  static ServerProcess* server_;
};
ServerProcess* SamplingApi::server_ = nullptr;

std::vector<std::string> token_strings(const json& choice) { return choice["logprobs"]["tokens"]; }

TEST_F(SamplingApi, LogitBiasForcesAToken) {
  // Token 1 is `"` in the Llama-3 vocabulary: +100 makes it the argmax everywhere.
  Reply r = complete({{"max_tokens", 6}, {"temperature", 0}, {"ignore_eos", true}, {"logit_bias", {{"1", 100}}}});
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.body["choices"][0]["text"], "\"\"\"\"\"\"");
  // -100 on the greedy choice changes the first token.
  Reply g = complete({{"max_tokens", 1}, {"temperature", 0}, {"logprobs", 0}});
  Reply bias = complete({{"max_tokens", 1}, {"temperature", 0}, {"logprobs", 0},
                         {"logit_bias", {{std::to_string(post(s(), "/tokenize", json{{"prompt", g.body["choices"][0]["text"]}, {"add_special_tokens", false}}).body["tokens"][0].get<int>()), -100}}}});
  EXPECT_NE(bias.body["choices"][0]["text"], g.body["choices"][0]["text"]);
}

TEST_F(SamplingApi, AllowedTokenIds) {
  // Only `"` (1) and `#` (2): the sampled text is made of them alone, and both come up.
  Reply r = complete({{"max_tokens", 30}, {"temperature", 1}, {"seed", 1}, {"ignore_eos", true}, {"allowed_token_ids", {1, 2}}});
  ASSERT_EQ(r.status, 200) << r.body;
  const std::string t = r.body["choices"][0]["text"];
  EXPECT_EQ(t.size(), 30u);
  EXPECT_EQ(t.find_first_not_of("\"#"), std::string::npos) << t;
  EXPECT_NE(t.find('"'), std::string::npos);
  EXPECT_NE(t.find('#'), std::string::npos);
  // With a constraint as well: both hold.
  r = complete({{"max_tokens", 30}, {"temperature", 1}, {"seed", 1}, {"allowed_token_ids", {1, 2, 16, 17}},
                {"guided_regex", "#+(1|2)"}});
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_TRUE(std::regex_match(r.body["choices"][0]["text"].get<std::string>(), std::regex("#+(1|2)"))) << r.body;
}

TEST_F(SamplingApi, RepetitionPenaltyKeepsEveryTokenNew) {
  // A huge repetition penalty over prompt + output: greedy never repeats a token nor takes one of the prompt's.
  json body = {{"max_tokens", 40}, {"temperature", 0}, {"ignore_eos", true}, {"logprobs", 0}, {"echo", true},
               {"repetition_penalty", 100}};
  Reply r = complete(body);
  ASSERT_EQ(r.status, 200) << r.body;
  std::vector<std::string> toks = token_strings(r.body["choices"][0]);
  const size_t P = toks.size() - 40;
  std::set<std::string> seen(toks.begin(), toks.begin() + long(P));
  for (size_t i = P; i < toks.size(); ++i) EXPECT_TRUE(seen.insert(toks[i]).second) << "token " << i << " repeats: " << toks[i];
}

TEST_F(SamplingApi, FrequencyPenaltyWearsABiasDown) {
  // `"` (token 1) at +100 is drawn every time; a frequency penalty of 2 per occurrence cancels the bias after
  // about 50 of them, and other tokens come in. A presence penalty of 2 (once) does not.
  auto quotes = [&](json extra) {
    json body = {{"max_tokens", 70}, {"temperature", 0}, {"ignore_eos", true}, {"logit_bias", {{"1", 100}}}};
    body.update(extra);
    Reply r = complete(body);
    EXPECT_EQ(r.status, 200) << r.body;
    const std::string t = r.body["choices"][0]["text"];
    return std::count(t.begin(), t.end(), '"');
  };
  EXPECT_EQ(quotes(json::object()), 70);
  EXPECT_EQ(quotes({{"presence_penalty", 2}}), 70);
  const auto n = quotes({{"frequency_penalty", 2}});
  EXPECT_GE(n, 45);
  EXPECT_LE(n, 56);
}

TEST_F(SamplingApi, MinPOneSamplesTheArgmax) {
  json greedy = {{"max_tokens", 24}, {"temperature", 0}, {"ignore_eos", true}};
  json minp = {{"max_tokens", 24}, {"temperature", 1.5}, {"min_p", 1}, {"ignore_eos", true}, {"seed", 3}};
  EXPECT_EQ(complete(minp).body["choices"][0]["text"], complete(greedy).body["choices"][0]["text"]);
  minp["min_p"] = 0.5;  // still a restriction: a valid request
  EXPECT_EQ(complete(minp).status, 200);
}

TEST_F(SamplingApi, SeedsAndNChoices) {
  json body = {{"max_tokens", 12}, {"temperature", 1}, {"n", 4}, {"ignore_eos", true}, {"seed", 42}};
  Reply a = complete(body), b = complete(body);
  ASSERT_EQ(a.status, 200) << a.body;
  std::set<std::string> texts;
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(a.body["choices"][i]["text"], b.body["choices"][i]["text"]);  // same seed, same output
    texts.insert(a.body["choices"][i]["text"].get<std::string>());
  }
  EXPECT_EQ(texts.size(), 4u);  // the choices draw independently
  body["seed"] = 43;
  EXPECT_NE(complete(body).body["choices"][0]["text"], a.body["choices"][0]["text"]);
  body.erase("seed");  // no seed: every request draws anew
  EXPECT_NE(complete(body).body["choices"][0]["text"], complete(body).body["choices"][0]["text"]);
}

TEST_F(SamplingApi, StopTokenIdsAndTopLogprobs) {
  Reply g = complete({{"max_tokens", 8}, {"temperature", 0}, {"ignore_eos", true}, {"logprobs", 3}});
  ASSERT_EQ(g.status, 200) << g.body;
  const json& lp = g.body["choices"][0]["logprobs"];
  ASSERT_EQ(lp["tokens"].size(), 8u);
  for (size_t i = 0; i < 8; ++i) {
    EXPECT_GE(lp["top_logprobs"][i].size(), 3u);  // the top 3 and the chosen one
    EXPECT_LE(lp["top_logprobs"][i].size(), 4u);
    EXPECT_LE(lp["token_logprobs"][i].get<double>(), 0.0);
  }
  // Stopping at the id of the third token: two tokens come out, finish "stop".
  const std::string third = lp["tokens"][2];
  const int id = post(s(), "/tokenize", json{{"prompt", third}, {"add_special_tokens", false}}).body["tokens"][0];
  Reply st = complete({{"max_tokens", 8}, {"temperature", 0}, {"stop_token_ids", {id}}});
  EXPECT_EQ(st.body["choices"][0]["finish_reason"], "stop");
  EXPECT_LE(st.body["usage"]["completion_tokens"].get<int>(), 3);
}

// The JSON texts a schema accepts (the subset the test schemas use).
bool fits(const json& v, const json& s) {
  if (s.contains("enum")) return std::find(s["enum"].begin(), s["enum"].end(), v) != s["enum"].end();
  const std::string t = s["type"];
  if (t == "string") return v.is_string() && v.get<std::string>().size() <= s.value("maxLength", 1000u) * 4;
  if (t == "integer") return v.is_number_integer();
  if (t == "number") return v.is_number();
  if (t == "boolean") return v.is_boolean();
  if (t == "array") {
    if (!v.is_array() || v.size() > s.value("maxItems", 1000u)) return false;
    for (auto& x : v)
      if (!fits(x, s["items"])) return false;
    return true;
  }
  if (!v.is_object()) return false;
  for (auto it = v.begin(); it != v.end(); ++it)
    if (!s["properties"].contains(it.key()) || !fits(*it, s["properties"][it.key()])) return false;
  for (auto& r : s.value("required", json::array()))
    if (!v.contains(r.get<std::string>())) return false;
  return true;
}

const json kSchema = json::parse(R"({"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 5}, "age": {"type": "integer"}, "ok": {"type": "boolean"},
    "size": {"enum": ["S", "M", "L"]}, "scores": {"type": "array", "items": {"type": "number"}, "maxItems": 3}},
    "required": ["name", "ok", "size"]})");

TEST_F(SamplingApi, JsonSchemaOutputsAlwaysParseAndValidate) {
  json body = {{"max_tokens", 400}, {"temperature", 1}, {"n", 8}, {"seed", 1},
               {"response_format", {{"type", "json_schema"}, {"json_schema", {{"name", "p"}, {"schema", kSchema}}}}}};
  Reply r = complete(body);
  ASSERT_EQ(r.status, 200) << r.body;
  ASSERT_EQ(r.body["choices"].size(), 8u);
  for (const json& c : r.body["choices"]) {
    EXPECT_EQ(c["finish_reason"], "stop") << c;
    json v = json::parse(c["text"].get<std::string>(), nullptr, false);
    ASSERT_FALSE(v.is_discarded()) << c["text"];
    EXPECT_TRUE(fits(v, kSchema)) << c["text"];
  }
  // Without the constraint the same request is noise.
  body.erase("response_format");
  body["max_tokens"] = 20;
  const Reply noise = complete(body);  // (a range-for over a temporary's member would read it after it is freed)
  for (const json& c : noise.body["choices"]) EXPECT_TRUE(json::parse(c["text"].get<std::string>(), nullptr, false).is_discarded());
  // vLLM's spellings of the same constraint, and streaming.
  for (json alt : {json{{"guided_json", kSchema}}, json{{"structured_outputs", {{"json", kSchema}}}}}) {
    alt["max_tokens"] = 400;
    alt["temperature"] = 1;
    alt["seed"] = 2;
    alt["prompt"] = "x";
    std::string text;
    for (const json& e : stream(s(), "/v1/completions", alt)) text += e["choices"][0]["text"].get<std::string>();
    json v = json::parse(text, nullptr, false);
    ASSERT_FALSE(v.is_discarded()) << text;
    EXPECT_TRUE(fits(v, kSchema)) << text;
  }
}

TEST_F(SamplingApi, RegexChoiceAndJsonObject) {
  Reply r = complete({{"max_tokens", 50}, {"temperature", 1}, {"n", 6}, {"guided_regex", "[a-c]{3}-\\d{2}(x|yz)?"}});
  ASSERT_EQ(r.status, 200) << r.body;
  for (const json& c : r.body["choices"])
    EXPECT_TRUE(std::regex_match(c["text"].get<std::string>(), std::regex("[a-c]{3}-\\d{2}(x|yz)?"))) << c["text"];
  r = complete({{"max_tokens", 50}, {"temperature", 1}, {"n", 6}, {"guided_choice", {"yes", "no", "maybe not"}}});
  for (const json& c : r.body["choices"]) {
    const std::string t = c["text"];
    EXPECT_TRUE(t == "yes" || t == "no" || t == "maybe not") << t;
    EXPECT_EQ(c["finish_reason"], "stop");
  }
  // json_object: any object. Keys are free strings, which the random model rarely closes: an output cut by
  // max_tokens must still be the start of a JSON object.
  r = complete({{"max_tokens", 60}, {"temperature", 1}, {"n", 6}, {"response_format", {{"type", "json_object"}}}});
  ASSERT_EQ(r.status, 200) << r.body;
  for (const json& c : r.body["choices"]) {
    const std::string t = c["text"];
    ASSERT_FALSE(t.empty());
    EXPECT_EQ(t[0], '{') << t;
    try {
      json v = json::parse(t);
      EXPECT_TRUE(v.is_object()) << t;
      EXPECT_EQ(c["finish_reason"], "stop");
    } catch (const json::parse_error& e) {
      EXPECT_EQ(c["finish_reason"], "length") << t;
      // The start of an object: the parser ran out of text (e.byte = one past its end) before anything was wrong.
      // Matching the error's words missed cuts inside an escape ("...\" ends in "forbidden character after
      // backslash", "\u12" in "must be followed by 4 hex digits") and would pass an error inside the text.
      EXPECT_EQ(e.byte, t.size() + 1) << t << ": " << e.what();
    }
  }
}

TEST_F(SamplingApi, UnsupportedValuesAre400NamingTheField) {
  auto param = [&](json body) {
    Reply r = complete(body);
    EXPECT_EQ(r.status, 400) << body << " -> " << r.body;
    return r.body["error"]["param"].is_string() ? r.body["error"]["param"].get<std::string>() + ": " +
                                                      r.body["error"]["message"].get<std::string>()
                                                : std::string();
  };
  EXPECT_EQ(param({{"presence_penalty", 3}}).rfind("presence_penalty", 0), 0u);
  EXPECT_EQ(param({{"frequency_penalty", "a"}}).rfind("frequency_penalty", 0), 0u);
  EXPECT_EQ(param({{"repetition_penalty", 0}}).rfind("repetition_penalty", 0), 0u);
  EXPECT_EQ(param({{"min_p", 1.5}}).rfind("min_p", 0), 0u);
  EXPECT_EQ(param({{"logit_bias", {{"x1", 1}}}}).rfind("logit_bias", 0), 0u);
  EXPECT_EQ(param({{"logit_bias", {{"1", 101}}}}).rfind("logit_bias", 0), 0u);
  EXPECT_EQ(param({{"logit_bias", {{"999999999", 1}}}}).rfind("logit_bias", 0), 0u);
  std::string p = param(json::parse(R"({"response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "string", "pattern": "a"}}}})"));
  EXPECT_EQ(p.rfind("response_format", 0), 0u);
  EXPECT_NE(p.find("'pattern'"), std::string::npos) << p;
  EXPECT_EQ(param({{"response_format", {{"type", "xml"}}}}).rfind("response_format", 0), 0u);
  EXPECT_EQ(param({{"guided_grammar", "root ::= \"a\""}}).rfind("guided_grammar", 0), 0u);
  p = param({{"guided_regex", "(a)\\1"}});
  EXPECT_NE(p.find("backreference"), std::string::npos) << p;
  EXPECT_EQ(param({{"guided_regex", "a"}, {"guided_choice", {"a"}}}).rfind("guided_choice", 0), 0u);
  EXPECT_EQ(param({{"guided_regex", "a"}, {"ignore_eos", true}}).rfind("ignore_eos", 0), 0u);
  EXPECT_EQ(param({{"structured_outputs", {{"grammar", "x"}}}}).rfind("structured_outputs", 0), 0u);
  EXPECT_EQ(param({{"allowed_token_ids", {999999999}}}).rfind("allowed_token_ids", 0), 0u);
  for (const char* k : {"min_tokens", "best_of", "use_beam_search", "length_penalty", "bad_words", "prompt_logprobs",
                        "truncate_prompt_tokens", "return_tokens_as_token_ids"}) {
    json v = std::string(k) == "use_beam_search" || std::string(k) == "return_tokens_as_token_ids" ? json(true)
             : std::string(k) == "bad_words" ? json::array({"x"}) : json(3);
    EXPECT_EQ(param({{k, v}}).rfind(k, 0), 0u) << k;
  }
}

TEST_F(SamplingApi, ChatTopLogprobsShape) {
  const std::string dir = model_with_template("qwen25");
  ServerProcess chat("--model '" + dir + "' " + kArgs);
  ASSERT_TRUE(chat.ready()) << chat.log();
  Reply r = post(chat, "/v1/chat/completions",
                 json{{"messages", {{{"role", "user"}, {"content", "hi"}}}}, {"max_tokens", 5}, {"temperature", 0},
                      {"logprobs", true}, {"top_logprobs", 2}, {"ignore_eos", true}});
  ASSERT_EQ(r.status, 200) << r.body;
  const json& content = r.body["choices"][0]["logprobs"]["content"];
  ASSERT_EQ(content.size(), 5u);
  for (const json& t : content) {
    EXPECT_TRUE(t["token"].is_string() && t["logprob"].is_number() && t["bytes"].is_array());
    ASSERT_EQ(t["top_logprobs"].size(), 2u);
    EXPECT_GE(t["top_logprobs"][0]["logprob"].get<double>(), t["top_logprobs"][1]["logprob"].get<double>());
    EXPECT_GE(t["top_logprobs"][0]["logprob"].get<double>(), t["logprob"].get<double>());  // greedy: the best
  }
  // response_format on chat: the message content is the JSON.
  r = post(chat, "/v1/chat/completions",
           json{{"messages", {{{"role", "user"}, {"content", "hi"}}}}, {"max_tokens", 300}, {"temperature", 1}, {"seed", 4},
                {"response_format", {{"type", "json_schema"}, {"json_schema", {{"name", "p"}, {"schema", kSchema}}}}}});
  ASSERT_EQ(r.status, 200) << r.body;
  json v = json::parse(r.body["choices"][0]["message"]["content"].get<std::string>(), nullptr, false);
  EXPECT_TRUE(!v.is_discarded() && fits(v, kSchema)) << r.body;
  std::filesystem::remove_all(dir);
}

// tool_choice "required" and named functions: whatever the random model prefers, the output is a call of an
// offered function whose arguments fit its parameters, parsed into tool_calls, in each template's format.
TEST(SamplingApiTools, RequiredAndNamedToolChoiceAlwaysParse) {
  const json tools = json::parse(R"([
    {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object",
      "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]}, "days": {"type": "integer"}}, "required": ["city"]}}},
    {"type": "function", "function": {"name": "set_alarm", "parameters": {"type": "object",
      "properties": {"hour": {"type": "integer"}, "loud": {"type": "boolean"}}, "required": ["hour", "loud"]}}}])");
  for (const char* tmpl : {"qwen25", "llama31", "granite30", "mistral_nemo"}) {
    SCOPED_TRACE(tmpl);
    const std::string dir = model_with_template(tmpl);
    ServerProcess s("--model '" + dir + "' " + kArgs);
    ASSERT_TRUE(s.ready()) << s.log();
    json body = {{"messages", {{{"role", "user"}, {"content", "Weather in Paris?"}}}}, {"tools", tools},
                 {"max_tokens", 300}, {"temperature", 1}, {"n", 4}, {"seed", 5}, {"tool_choice", "required"},
                 {"parallel_tool_calls", false}};
    auto check = [&](const json& r, const std::string& only) {
      for (const json& c : r["choices"]) {
        EXPECT_EQ(c["finish_reason"], "tool_calls") << c;
        ASSERT_GE(c["message"]["tool_calls"].size(), 1u) << c;
        for (const json& call : c["message"]["tool_calls"]) {
          const std::string name = call["function"]["name"];
          json args = json::parse(call["function"]["arguments"].get<std::string>(), nullptr, false);
          ASSERT_TRUE(args.is_object()) << call;
          if (!only.empty()) {
            EXPECT_EQ(name, only);
          }
          const json& params = name == "get_weather" ? tools[0]["function"]["parameters"] : tools[1]["function"]["parameters"];
          EXPECT_TRUE(fits(args, params)) << call;
        }
      }
    };
    Reply r = post(s, "/v1/chat/completions", body);
    ASSERT_EQ(r.status, 200) << r.body;
    check(r.body, "");
    body["tool_choice"] = {{"type", "function"}, {"function", {{"name", "set_alarm"}}}};
    r = post(s, "/v1/chat/completions", body);
    ASSERT_EQ(r.status, 200) << r.body;
    check(r.body, "set_alarm");
    // Streaming: the deltas add up to a valid call.
    body["n"] = 1;
    std::string args;
    std::string finish;
    for (const json& e : stream(s, "/v1/chat/completions", body)) {
      for (const json& t : e["choices"][0]["delta"].value("tool_calls", json::array())) args += t["function"]["arguments"].get<std::string>();
      if (e["choices"][0]["finish_reason"].is_string()) finish = e["choices"][0]["finish_reason"];
    }
    EXPECT_EQ(finish, "tool_calls");
    EXPECT_TRUE(fits(json::parse(args, nullptr, false), tools[1]["function"]["parameters"])) << args;
    std::filesystem::remove_all(dir);
  }
}

// A request that leaves the sampling fields out gets the model's generation_config.json defaults (as vLLM's
// `--generation-config auto`): here top_k 1, so every seed gives the greedy text; with `--generation-config vllm`
// OpenAI's defaults (temperature 1, no top-k) sample, and seeds differ.
TEST(ServeGenerationConfig, RequestsWithoutSamplingFieldsUseTheModelsDefaults) {
  namespace fs = std::filesystem;
  const std::string dir = test::make_temp_dir("gencfg-model");
  for (const char* f : {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"})
    fs::create_symlink(e2e() + "/" + f, dir + "/" + f);
  std::ofstream(dir + "/generation_config.json") << json{{"do_sample", true}, {"top_k", 1}, {"eos_token_id", 128001}}.dump();
  auto texts = [](const ServerProcess& s) {
    std::vector<std::string> out;
    for (json body : {json{{"temperature", 0}}, json{{"seed", 1}}, json{{"seed", 2}}}) {
      body["prompt"] = "The weather today";
      body["max_tokens"] = 12;
      body["ignore_eos"] = true;
      Reply r = post(s, "/v1/completions", body);
      EXPECT_EQ(r.status, 200) << r.body;
      out.push_back(r.status == 200 ? r.body["choices"][0]["text"].get<std::string>() : "");
    }
    return out;
  };
  {
    ServerProcess s("--model '" + dir + "' " + kArgs);
    ASSERT_TRUE(s.ready()) << s.log();
    const auto t = texts(s);
    EXPECT_EQ(t[1], t[0]);
    EXPECT_EQ(t[2], t[0]);
  }
  {
    ServerProcess s("--model '" + dir + "' " + kArgs + " --generation-config vllm");
    ASSERT_TRUE(s.ready()) << s.log();
    const auto t = texts(s);
    EXPECT_NE(t[1], t[0]);  // 12 tokens sampled at temperature 1 from 128k random logits: equal only by accident
    EXPECT_NE(t[2], t[1]);
  }
}

}  // namespace
}  // namespace bamba
