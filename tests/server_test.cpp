// `bamba serve` over HTTP on 127.0.0.1 with the bamba-tiny-e2e fixture (real Llama-3 tokenizer): completions
// equal `bamba generate`, lm-eval scoring equals the log-softmax of `bamba logits`, streaming arrives token by
// token, 256 concurrent streams complete, every kind of bad request gets its 4xx and leaves the server healthy,
// the API key guards /v1, SIGTERM drains, and the chat route renders the model's template.
#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <filesystem>
#include <fstream>

#include "engine/engine.h"
#include "io/safetensors.h"
#include "server/openai_api.h"
#include "server_util.h"

namespace bamba {
namespace {

using json = nlohmann::json;
using test::ServerProcess;
using Clock = std::chrono::steady_clock;

const std::string kArgs = "-q --device cpu --max-model-len 256 --max-body-mib 1 --max-n 8";

std::string e2e() { return test::model_dir("bamba-tiny-e2e"); }

struct Reply {
  int status = 0;
  json body;
};

Reply post(const ServerProcess& s, const std::string& path, const std::string& body,
           const httplib::Headers& h = {}) {
  auto r = s.client().Post(path, h, body, "application/json");
  if (!r) return {};
  return {r->status, json::parse(r->body, nullptr, false)};
}
Reply post(const ServerProcess& s, const std::string& path, const json& body) { return post(s, path, body.dump()); }

struct Streamed {
  int status = 0;
  std::vector<json> events;  // parsed data: payloads, [DONE] excluded
  bool done = false;         // saw data: [DONE]
  std::vector<double> seen;  // seconds from the start at which each event arrived
};

// progress (if given) counts the events as they arrive.
Streamed stream(const ServerProcess& s, const std::string& path, const json& body, std::atomic<int>* progress = nullptr) {
  Streamed out;
  httplib::Client c = s.client();
  httplib::Request req;
  req.method = "POST";
  req.path = path;
  req.body = body.dump();
  req.set_header("Content-Type", "application/json");
  std::string buf;
  const auto t0 = Clock::now();
  req.content_receiver = [&](const char* d, size_t n, uint64_t, uint64_t) {
    buf.append(d, n);
    for (size_t e; (e = buf.find("\n\n")) != std::string::npos; buf.erase(0, e + 2)) {
      std::string ev = buf.substr(0, e);
      EXPECT_EQ(ev.rfind("data: ", 0), 0u) << ev;
      if (ev == "data: [DONE]") out.done = true;
      else out.events.push_back(json::parse(ev.substr(6), nullptr, false));
      out.seen.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
      if (progress) ++*progress;
    }
    return true;
  };
  auto r = c.send(req);
  out.status = r ? r->status : -int(r.error());
  return out;
}

class Server : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    server_ = new ServerProcess("--model '" + e2e() + "' " + kArgs);
  }
  static void TearDownTestSuite() {
    delete server_;
    server_ = nullptr;
  }
  void SetUp() override { ASSERT_TRUE(server_->ready()) << server_->log(); }
  const ServerProcess& s() const { return *server_; }
  // Health, a normal request, and nothing left running or holding cache pages.
  void expect_healthy() const {
    auto h = s().client().Get("/health");
    ASSERT_TRUE(h);
    EXPECT_EQ(h->status, 200);
    Reply r = post(s(), "/v1/completions", json{{"prompt", "Hello"}, {"max_tokens", 3}, {"ignore_eos", true}});
    EXPECT_EQ(r.status, 200) << r.body;
    EXPECT_EQ(r.body["usage"]["completion_tokens"], 3);
    std::string m;
    for (int i = 0; i < 100; ++i) {
      m = s().client().Get("/metrics")->body;
      if (m.find("bamba:num_requests_running{model_name=\"" + e2e() + "\"} 0") != std::string::npos &&
          m.find("bamba:kv_cache_usage_perc{model_name=\"" + e2e() + "\"} 0\n") != std::string::npos)
        break;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    EXPECT_NE(m.find("bamba:num_requests_running{model_name=\"" + e2e() + "\"} 0"), std::string::npos) << m;
    EXPECT_NE(m.find("bamba:kv_cache_usage_perc{model_name=\"" + e2e() + "\"} 0\n"), std::string::npos) << m;
    EXPECT_NE(m.find("bamba:state_slots_usage_perc{model_name=\"" + e2e() + "\"} 0\n"), std::string::npos) << m;
  }
  static ServerProcess* server_;
};
ServerProcess* Server::server_ = nullptr;

TEST_F(Server, GreedyCompletionEqualsBambaGenerate) {
  const std::string prompt = "The capital of France is";
  Reply r = post(s(), "/v1/completions", json{{"prompt", prompt}, {"max_tokens", 12}, {"temperature", 0}, {"ignore_eos", true}});
  ASSERT_EQ(r.status, 200) << r.body;
  auto g = test::run_bamba("generate -q --device cpu --model '" + e2e() + "' --prompt '" + prompt +
                           "' --max-tokens 12 --ignore-eos");
  ASSERT_EQ(g.exit_code, 0) << g.err;
  EXPECT_EQ(prompt + r.body["choices"][0]["text"].get<std::string>() + "\n", g.out);
  EXPECT_EQ(r.body["object"], "text_completion");
  EXPECT_EQ(r.body["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(r.body["usage"]["completion_tokens"], 12);
  EXPECT_EQ(r.body["usage"]["prompt_tokens"], 6);  // BOS + 5
  EXPECT_EQ(r.body["usage"]["total_tokens"], 18);
}

TEST_F(Server, LmEvalLoglikelihoodEqualsLogSoftmaxOfBambaLogits) {
  std::vector<int32_t> ids = {128000, 791, 6864, 315, 9822, 374, 12366, 13, 578, 6864, 315, 9635, 374};
  std::string list, tmp = test::make_temp_dir("score");
  for (int32_t id : ids) list += (list.empty() ? "" : ",") + std::to_string(id);
  auto g = test::run_bamba("logits -q --device cpu --model '" + e2e() + "' --ids " + list + " --out '" + tmp + "/l.safetensors'");
  ASSERT_EQ(g.exit_code, 0) << g.err;
  SafetensorsFile f(tmp + "/l.safetensors");
  const TensorInfo* t = f.find("logits");
  ASSERT_NE(t, nullptr);
  const int64_t V = t->shape[1];
  std::vector<float> logits(size_t(t->numel()));
  convert_to_f32(t->data, t->dtype, logits.size(), logits.data());
  std::filesystem::remove_all(tmp);
  auto expected = [&](size_t j) {  // log p(ids[j] | ids[<j])
    const float* row = logits.data() + (j - 1) * size_t(V);
    double mx = *std::max_element(row, row + V), sum = 0;
    for (int64_t v = 0; v < V; ++v) sum += std::exp(double(row[v]) - mx);
    return double(row[ids[j]]) - mx - std::log(sum);
  };
  // Today's lm-eval, and older versions (max_tokens 0, logprobs 10); two prompts in one request.
  for (auto [max_tokens, k] : {std::pair{1, 1}, {0, 10}}) {
    json body = {{"prompt", {ids, std::vector<int32_t>(ids.begin(), ids.begin() + 5)}}, {"max_tokens", max_tokens},
                 {"logprobs", k}, {"echo", true}, {"temperature", 0}, {"seed", 1234}};
    Reply r = post(s(), "/v1/completions", body);
    ASSERT_EQ(r.status, 200) << r.body;
    ASSERT_EQ(r.body["choices"].size(), 2u);
    for (int c = 0; c < 2; ++c) {
      const json& ch = r.body["choices"][size_t(c)];
      EXPECT_EQ(ch["index"], c);
      const json& lp = ch["logprobs"]["token_logprobs"];
      const size_t n = c == 0 ? ids.size() : 5;
      ASSERT_EQ(lp.size(), n + size_t(max_tokens));
      EXPECT_TRUE(lp[0].is_null());
      EXPECT_TRUE(ch["logprobs"]["top_logprobs"][0].is_null());
      for (size_t j = 1; j < n; ++j) EXPECT_NEAR(lp[j].get<double>(), expected(j), 1e-4) << "token " << j;
      EXPECT_EQ(ch["logprobs"]["tokens"][1], "The");
      const json& top = ch["logprobs"]["top_logprobs"][1];
      EXPECT_GE(top.size(), size_t(std::min(k, 10)));
      EXPECT_TRUE(top.contains("The"));  // the chosen token is listed with the top k
      EXPECT_EQ(ch["text"].get<std::string>().rfind("<|begin_of_text|>The capital", 0), 0u);
    }
  }
}

TEST_F(Server, BatchedPromptsNSeedAndStop) {
  json body = {{"prompt", {"Hello", "One two three"}}, {"n", 2}, {"max_tokens", 8}, {"temperature", 0.9},
               {"top_p", 0.95}, {"top_k", 40}, {"seed", 7}, {"ignore_eos", true}};
  Reply a = post(s(), "/v1/completions", body), b = post(s(), "/v1/completions", body);
  ASSERT_EQ(a.status, 200) << a.body;
  ASSERT_EQ(a.body["choices"].size(), 4u);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(a.body["choices"][size_t(i)]["index"], i);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(a.body["choices"][size_t(i)]["text"], b.body["choices"][size_t(i)]["text"]);
  EXPECT_EQ(a.body["usage"]["completion_tokens"], 32);
  // A stop string cuts the text before it and finishes with "stop".
  Reply g = post(s(), "/v1/completions", json{{"prompt", "Hello"}, {"max_tokens", 12}, {"temperature", 0}, {"ignore_eos", true}});
  std::string full = g.body["choices"][0]["text"];
  ASSERT_GT(full.size(), 6u);
  std::string stop = full.substr(3, 3);
  Reply st = post(s(), "/v1/completions", json{{"prompt", "Hello"}, {"max_tokens", 12}, {"temperature", 0}, {"stop", stop}});
  EXPECT_EQ(st.body["choices"][0]["text"], full.substr(0, full.find(stop)));
  EXPECT_EQ(st.body["choices"][0]["finish_reason"], "stop");
}

TEST_F(Server, StreamingArrivesTokenByToken) {
  json body = {{"prompt", "Once upon a time"}, {"max_tokens", 48}, {"temperature", 0}, {"ignore_eos", true},
               {"stream", true}, {"stream_options", {{"include_usage", true}}}};
  Streamed st = stream(s(), "/v1/completions", body);
  ASSERT_EQ(st.status, 200);
  EXPECT_TRUE(st.done);
  ASSERT_EQ(st.events.size(), 49u);  // one chunk per token, then usage
  std::string text;
  for (size_t i = 0; i < 48; ++i) {
    EXPECT_EQ(st.events[i]["object"], "text_completion");
    text += st.events[i]["choices"][0]["text"].get<std::string>();
    EXPECT_EQ(st.events[i]["choices"][0]["finish_reason"], i == 47 ? json("length") : json());
  }
  EXPECT_TRUE(st.events[48]["choices"].empty());
  EXPECT_EQ(st.events[48]["usage"]["completion_tokens"], 48);
  Reply whole = post(s(), "/v1/completions", json{{"prompt", "Once upon a time"}, {"max_tokens", 48}, {"temperature", 0}, {"ignore_eos", true}});
  EXPECT_EQ(text, whole.body["choices"][0]["text"]);
  // Chunks arrive spread over the generation, not in one burst at the end.
  const double first = st.seen.front(), last = st.seen.back();
  int distinct = 1;
  for (size_t i = 1; i < st.seen.size(); ++i) distinct += st.seen[i] > st.seen[i - 1];
  EXPECT_GT(distinct, 10) << "chunks came in " << distinct << " bursts";
  EXPECT_LT(first, last);
}

TEST_F(Server, Concurrent256StreamsAllComplete) {
  std::vector<std::thread> threads;
  std::atomic<int> ok{0};
  std::vector<std::string> errors(256);
  for (int i = 0; i < 256; ++i)
    threads.emplace_back([&, i] {
      const int max_tokens = 1 + i % 5;
      json body = {{"prompt", std::string(size_t(1 + i % 13), 'a') + " b"}, {"max_tokens", max_tokens},
                   {"ignore_eos", true}, {"stream", true}, {"stream_options", {{"include_usage", true}}}};
      Streamed st = stream(s(), "/v1/completions", body);
      int chunks = 0;
      for (auto& e : st.events) chunks += !e["choices"].empty();
      if (st.status == 200 && st.done && chunks == max_tokens && st.events.back()["usage"]["completion_tokens"] == max_tokens)
        ++ok;
      else
        errors[size_t(i)] = "status " + std::to_string(st.status) + ", " + std::to_string(chunks) + " chunks" +
                            (st.events.empty() ? "" : ", " + st.events.back().dump());
    });
  for (auto& t : threads) t.join();
  std::string why;
  for (auto& e : errors)
    if (!e.empty()) why += e + "; ";
  EXPECT_EQ(ok.load(), 256) << why;
  expect_healthy();
}

TEST_F(Server, BadRequestsGetTheir4xxAndLeaveItHealthy) {
  auto code = [&](const std::string& path, const std::string& body) { return post(s(), path, body).status; };
  auto err = [&](const std::string& body) { return post(s(), "/v1/completions", body); };
  EXPECT_EQ(code("/v1/completions", "{\"prompt\": \"hi\", "), 400);  // malformed JSON
  EXPECT_EQ(code("/v1/completions", "[1, 2]"), 400);                 // not an object
  EXPECT_EQ(code("/v1/completions", R"({"prompt": "hi", "max_tokens": "ten"})"), 400);
  EXPECT_EQ(code("/v1/completions", R"({"prompt": 5})"), 400);
  EXPECT_EQ(code("/v1/completions", R"({"prompt": "hi", "temperature": "hot"})"), 400);
  EXPECT_EQ(code("/v1/completions", R"({"prompt": "hi", "stream": 1})"), 400);
  EXPECT_EQ(code("/v1/completions", R"({"prompt": "hi", "top_p": 0})"), 400);
  EXPECT_EQ(code("/v1/completions", R"({"prompt": "hi", "stop": [1]})"), 400);
  EXPECT_EQ(code("/v1/completions", R"({"max_tokens": 3})"), 400);                       // no prompt
  EXPECT_EQ(code("/v1/completions", R"({"prompt": [1, 99999999]})"), 400);                 // id out of range
  EXPECT_EQ(code("/v1/completions", R"({"prompt": [-1]})"), 400);
  EXPECT_EQ(code("/v1/completions", R"({"prompt": "hi", "n": 9})"), 400);                 // over --max-n
  EXPECT_EQ(code("/v1/completions", R"({"prompt": "hi", "n": 0})"), 400);
  EXPECT_EQ(code("/v1/completions", R"({"prompt": "hi", "max_tokens": 100000})"), 400);   // over max-model-len
  EXPECT_EQ(code("/v1/completions", R"({"prompt": "hi", "max_tokens": -1})"), 400);
  EXPECT_EQ(code("/v1/completions", R"({"prompt": "hi", "logprobs": 50})"), 400);
  EXPECT_EQ(code("/v1/completions", R"({"prompt": "hi", "frequency_penalty": 2.5})"), 400);  // out of range
  EXPECT_EQ(code("/v1/completions", R"({"prompt": "hi", "model": "gpt-4"})"), 404);          // unknown model
  EXPECT_EQ(code("/v1/nothing", "{}"), 404);                                                 // unknown route
  EXPECT_EQ(s().client().Get("/nothing")->status, 404);
  // Prompt over the context length (256): 300 words.
  std::string longp;
  for (int i = 0; i < 300; ++i) longp += " word";
  Reply lp = err(json{{"prompt", longp}}.dump());
  EXPECT_EQ(lp.status, 400);
  EXPECT_NE(lp.body["error"]["message"].get<std::string>().find("maximum context length is 256"), std::string::npos) << lp.body;
  EXPECT_EQ(lp.body["error"]["code"], 400);
  EXPECT_EQ(lp.body["error"]["type"], "BadRequestError");
  // Oversized body (--max-body-mib 1).
  auto big = s().client().Post("/v1/completions", "{\"prompt\": \"" + std::string(2u << 20, 'a') + "\"}", "application/json");
  if (big) {  // (the server may also just close the connection)
    EXPECT_EQ(big->status, 413);
  }
  // Chat without a chat template.
  Reply chat = post(s(), "/v1/chat/completions", json{{"messages", {{{"role", "user"}, {"content", "hi"}}}}});
  EXPECT_EQ(chat.status, 400);
  EXPECT_NE(chat.body["error"]["message"].get<std::string>().find("chat template"), std::string::npos);
  // A client that disconnects mid-stream: the server frees its sequence.
  {
    httplib::Client c = s().client();
    httplib::Request req;
    req.method = "POST";
    req.path = "/v1/completions";
    req.body = json{{"prompt", "Hi"}, {"max_tokens", 200}, {"ignore_eos", true}, {"stream", true}}.dump();
    req.set_header("Content-Type", "application/json");
    int chunks = 0;
    req.content_receiver = [&](const char*, size_t, uint64_t, uint64_t) { return ++chunks < 3; };  // hang up
    c.send(req);
    EXPECT_GE(chunks, 3);
  }
  expect_healthy();
  auto m = s().client().Get("/metrics")->body;
  EXPECT_NE(m.find("finished_reason=\"abort\""), std::string::npos) << m;
}

TEST_F(Server, ModelsTokenizeAndMetrics) {
  auto models = json::parse(s().client().Get("/v1/models")->body);
  EXPECT_EQ(models["object"], "list");
  EXPECT_EQ(models["data"][0]["id"], e2e());
  EXPECT_EQ(models["data"][0]["max_model_len"], 256);
  Reply t = post(s(), "/tokenize", json{{"prompt", "Hello world"}});
  ASSERT_EQ(t.status, 200) << t.body;
  EXPECT_EQ(t.body["tokens"], json({128000, 9906, 1917}));
  EXPECT_EQ(t.body["count"], 3);
  Reply d = post(s(), "/detokenize", json{{"tokens", {9906, 1917}}});
  EXPECT_EQ(d.body["prompt"], "Hello world");
  EXPECT_EQ(post(s(), "/detokenize", json{{"tokens", "x"}}).status, 400);
  auto info = json::parse(s().client().Get("/tokenizer_info")->body);
  EXPECT_EQ(info["vocab_size"], 128256);
  EXPECT_EQ(info["eos_token"], "<|end_of_text|>");
  std::string m = s().client().Get("/metrics")->body;
  for (const char* name : {"num_requests_running", "num_requests_waiting", "kv_cache_usage_perc",
                           "state_slots_usage_perc", "prompt_tokens_total", "generation_tokens_total",
                           "request_success_total", "num_preemptions_total", "time_to_first_token_seconds_bucket",
                           "inter_token_latency_seconds_count", "e2e_request_latency_seconds_sum",
                           "request_queue_time_seconds_bucket"})
    EXPECT_NE(m.find(std::string("bamba:") + name), std::string::npos) << name;
}

TEST_F(Server, Curl) {
  if (std::system("command -v curl >/dev/null 2>&1") != 0) GTEST_SKIP() << "curl is not installed";
  std::string tmp = test::make_temp_dir("curl");
  std::string cmd = "curl -sS -N " + s().url() + "/v1/completions -H 'Content-Type: application/json' -d "
                    "'{\"prompt\": \"Hello\", \"max_tokens\": 5, \"stream\": true, \"ignore_eos\": true}' > " + tmp + "/out";
  ASSERT_EQ(std::system(cmd.c_str()), 0);
  std::ifstream f(tmp + "/out");
  std::string line, last;
  int data = 0;
  while (std::getline(f, line))
    if (line.rfind("data: ", 0) == 0) {
      ++data;
      last = line;
    }
  EXPECT_EQ(data, 6);
  EXPECT_EQ(last, "data: [DONE]");
  std::filesystem::remove_all(tmp);
}

// A copy of bamba-tiny-e2e (big files symlinked) whose tokenizer_config.json has Llama-3's chat template.
std::string llama3_chat_model() {
  namespace fs = std::filesystem;
  const std::string dir = test::make_temp_dir("chat-model");
  for (const char* f : {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json"})
    fs::create_symlink(e2e() + "/" + f, dir + "/" + f);
  json cfg = json::parse(std::ifstream(e2e() + "/tokenizer_config.json"));
  cfg["chat_template"] =
      "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
      "message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 "
      "%}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ "
      "'<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}";
  std::ofstream(dir + "/tokenizer_config.json") << cfg.dump(2);
  return dir;
}

TEST(ServerProcessTest, ChatUsesTheModelsTemplate) {
  const std::string dir = llama3_chat_model();
  ServerProcess s("--model '" + dir + "' " + kArgs);
  ASSERT_TRUE(s.ready()) << s.log();
  json messages = {{{"role", "system"}, {"content", "Be brief."}}, {{"role", "user"}, {"content", " Hi there "}}};
  Reply chat = post(s, "/v1/chat/completions",
                    json{{"messages", messages}, {"max_tokens", 8}, {"temperature", 0}, {"ignore_eos", true}});
  ASSERT_EQ(chat.status, 200) << chat.body;
  EXPECT_EQ(chat.body["object"], "chat.completion");
  EXPECT_EQ(chat.body["choices"][0]["message"]["role"], "assistant");
  // The same as a completion of the rendered prompt.
  const std::string rendered =
      "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|><|start_header_id|>user"
      "<|end_header_id|>\n\nHi there<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n";
  Reply plain = post(s, "/v1/completions", json{{"prompt", rendered}, {"max_tokens", 8},
                                                {"temperature", 0}, {"ignore_eos", true}, {"add_special_tokens", false}});
  ASSERT_EQ(plain.status, 200) << plain.body;
  EXPECT_EQ(chat.body["choices"][0]["message"]["content"], plain.body["choices"][0]["text"]);
  EXPECT_EQ(chat.body["usage"]["prompt_tokens"], plain.body["usage"]["prompt_tokens"]);
  Streamed st = stream(s, "/v1/chat/completions",
                       json{{"messages", messages}, {"max_tokens", 8}, {"temperature", 0}, {"ignore_eos", true}, {"stream", true}});
  ASSERT_TRUE(st.done);
  EXPECT_EQ(st.events[0]["choices"][0]["delta"]["role"], "assistant");
  std::string text;
  for (auto& e : st.events) text += e["choices"][0]["delta"].value("content", "");
  EXPECT_EQ(text, plain.body["choices"][0]["text"]);
  EXPECT_EQ(st.events.back()["choices"][0]["finish_reason"], "length");
  std::filesystem::remove_all(dir);
}

// A copy of bamba-tiny-e2e with Qwen 2.5's chat template (tests/data/tools), which teaches the Hermes tool-call
// format: `--tool-call-parser auto` picks hermes.
std::string qwen_tools_model() {
  namespace fs = std::filesystem;
  const std::string dir = test::make_temp_dir("tools-model");
  for (const char* f : {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json"})
    fs::create_symlink(e2e() + "/" + f, dir + "/" + f);
  json cfg = json::parse(std::ifstream(e2e() + "/tokenizer_config.json"));
  std::ifstream t(std::string(BAMBA_SOURCE_DIR) + "/tests/data/tools/templates/qwen25.jinja");
  cfg["chat_template"] = std::string(std::istreambuf_iterator<char>(t), {});
  std::ofstream(dir + "/tokenizer_config.json") << cfg.dump(2);
  return dir;
}

// Prompts with tool schemas are longer than kArgs' context.
const std::string kToolArgs = "-q --device cpu --max-model-len 1024 --max-body-mib 1 --max-n 8";

// The random-weight model writes no tool call by itself; tool_choice naming a function without parameters
// forces the whole call, and one with parameters forces the opening, whose continuation is checked.
TEST(ServerProcessTest, ToolCalls) {
  const std::string dir = qwen_tools_model();
  ServerProcess s("--model '" + dir + "' " + kToolArgs);
  ASSERT_TRUE(s.ready()) << s.log();
  EXPECT_NE(s.log().find("tool calls: hermes"), std::string::npos) << s.log();
  const json tools = json::parse(R"([
    {"type": "function", "function": {"name": "get_time", "description": "The time now", "parameters": {"type": "object", "properties": {}}}},
    {"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city",
     "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}])");
  json messages = {{{"role", "user"}, {"content", "What time is it?"}}};
  json body = {{"messages", messages}, {"tools", tools}, {"max_tokens", 16}, {"temperature", 0},
               {"tool_choice", {{"type", "function"}, {"function", {{"name", "get_time"}}}}}};
  Reply r = post(s, "/v1/chat/completions", body);
  ASSERT_EQ(r.status, 200) << r.body;
  const json& ch = r.body["choices"][0];
  EXPECT_EQ(ch["finish_reason"], "tool_calls");
  EXPECT_TRUE(ch["message"]["content"].is_null());
  ASSERT_EQ(ch["message"]["tool_calls"].size(), 1u);
  EXPECT_EQ(ch["message"]["tool_calls"][0]["function"]["name"], "get_time");
  EXPECT_EQ(ch["message"]["tool_calls"][0]["function"]["arguments"], "{}");
  EXPECT_EQ(r.body["usage"]["completion_tokens"], 0);

  body["stream"] = true;
  Streamed st = stream(s, "/v1/chat/completions", body);
  ASSERT_TRUE(st.done);
  std::string name, args;
  for (auto& e : st.events)
    for (auto& t : e["choices"][0]["delta"].value("tool_calls", json::array())) {
      if (t.contains("id")) name = t["function"]["name"];
      args += t["function"]["arguments"].get<std::string>();
    }
  EXPECT_EQ(name, "get_time");
  EXPECT_EQ(args, "{}");
  EXPECT_EQ(st.events.back()["choices"][0]["finish_reason"], "tool_calls");

  // The prompt the model sees: /tokenize with tools gives the tokens of transformers' render of the same request
  // (tests/data/tools/expected.json) followed by the forced call.
  json expected = json::parse(std::ifstream(std::string(BAMBA_SOURCE_DIR) + "/tests/data/tools/expected.json"));
  // (ordered_json: the request goes out with its keys in the file's order, which the template prints)
  auto cases = nlohmann::ordered_json::parse(std::ifstream(std::string(BAMBA_SOURCE_DIR) + "/tests/data/tools/cases.json"));
  nlohmann::ordered_json ask;
  for (auto& c : cases)
    if (c["name"] == "qwen25_ask") ask = c["request"];
  Reply tk = post(s, "/tokenize", ask.dump());
  Reply want = post(s, "/tokenize", json{{"prompt", expected["prompts"]["qwen25_ask"]}, {"add_special_tokens", false}});
  ASSERT_EQ(tk.status, 200) << tk.body;
  EXPECT_EQ(tk.body["tokens"], want.body["tokens"]);

  // A forced call of a function with parameters is constrained to its schema; the city is a free string, which
  // the random model does not close within 16 tokens: the cut call comes back as it is, finish "length".
  body["stream"] = false;
  body["tool_choice"]["function"]["name"] = "get_weather";
  Reply cut = post(s, "/v1/chat/completions", body);
  EXPECT_EQ(cut.status, 200) << cut.body;
  EXPECT_EQ(cut.body["choices"][0]["finish_reason"], "length") << cut.body;
  EXPECT_EQ(cut.body["choices"][0]["message"]["content"].get<std::string>().rfind("<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {", 0), 0u)
      << cut.body;

  // The tool result goes back through the template; the answer is plain text.
  messages.push_back(ch["message"]);
  messages.push_back({{"role", "tool"}, {"tool_call_id", ch["message"]["tool_calls"][0]["id"]}, {"content", "12:00"}});
  Reply fin = post(s, "/v1/chat/completions", json{{"messages", messages}, {"tools", tools}, {"max_tokens", 4},
                                                     {"temperature", 0}, {"ignore_eos", true}});
  ASSERT_EQ(fin.status, 200) << fin.body;
  EXPECT_TRUE(fin.body["choices"][0]["message"]["content"].is_string());

  // 400s naming the field.
  Reply e1 = post(s, "/v1/chat/completions", json{{"messages", messages}, {"tools", "x"}});
  EXPECT_EQ(e1.status, 400);
  EXPECT_EQ(e1.body["error"]["param"], "tools");
  Reply e2 = post(s, "/v1/chat/completions", json{{"messages", messages}, {"tools", tools}, {"tool_choice", "any"}});
  EXPECT_EQ(e2.status, 400);
  EXPECT_EQ(e2.body["error"]["param"], "tool_choice");
  std::filesystem::remove_all(dir);
}

TEST(ServerProcessTest, ToolsWithATemplateWithoutToolsAre400) {
  const std::string dir = llama3_chat_model();
  ServerProcess s("--model '" + dir + "' " + kArgs);
  ASSERT_TRUE(s.ready()) << s.log();
  Reply r = post(s, "/v1/chat/completions",
                 json::parse(R"({"messages": [{"role": "user", "content": "hi"}],
                                 "tools": [{"type": "function", "function": {"name": "f"}}]})"));
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(r.body["error"]["param"], "tools");
  std::filesystem::remove_all(dir);
}

// The official openai npm client against a live server (tests/js).
TEST(ServerProcessTest, OpenAiNpmClient) {
  if (std::system("command -v node >/dev/null 2>&1") != 0) GTEST_SKIP() << "node is not installed (scripts/setup.sh installs it)";
  const std::string js = std::string(BAMBA_SOURCE_DIR) + "/tests/js";
  ASSERT_TRUE(std::filesystem::exists(js + "/node_modules/openai")) << "run `npm ci` in " << js << " (scripts/setup.sh does)";
  ServerProcess s("--model '" + e2e() + "' " + kArgs);
  ASSERT_TRUE(s.ready()) << s.log();
  std::string env = "BAMBA_URL=" + s.url();
  const std::string chat_dir = llama3_chat_model();
  auto chat = std::make_unique<ServerProcess>("--model '" + chat_dir + "' " + kArgs);
  ASSERT_TRUE(chat->ready()) << chat->log();
  env += " BAMBA_CHAT_URL=" + chat->url();
  const std::string tools_dir = qwen_tools_model();
  auto tools = std::make_unique<ServerProcess>("--model '" + tools_dir + "' " + kToolArgs);
  ASSERT_TRUE(tools->ready()) << tools->log();
  env += " BAMBA_TOOLS_URL=" + tools->url();
  const std::string out = test::make_temp_dir("js") + "/out";
  int rc = std::system(("cd '" + js + "' && " + env + " node --test openai_client.test.mjs >'" + out + "' 2>&1").c_str());
  std::ifstream f(out);
  std::stringstream ss;
  ss << f.rdbuf();
  EXPECT_EQ(rc, 0) << ss.str();
  EXPECT_NE(ss.str().find("# fail 0"), std::string::npos) << ss.str();
  EXPECT_NE(ss.str().find("# skipped 0"), std::string::npos) << ss.str();
  std::filesystem::remove_all(chat_dir);
  std::filesystem::remove_all(tools_dir);
}

TEST(ServerProcessTest, ApiKeyGuardsV1) {
  ServerProcess s("--model '" + e2e() + "' " + kArgs + " --api-key sekret");
  ASSERT_TRUE(s.ready()) << s.log();
  const std::string body = R"({"prompt": "hi", "max_tokens": 2})";
  EXPECT_EQ(post(s, "/v1/completions", body).status, 401);
  EXPECT_EQ(post(s, "/v1/completions", body, {{"Authorization", "Bearer wrong"}}).status, 401);
  EXPECT_EQ(post(s, "/v1/completions", body, {{"Authorization", "Bearer sekret"}}).status, 200);
  EXPECT_EQ(s.client().Get("/v1/models")->status, 401);
  EXPECT_EQ(s.client().Get("/health")->status, 200);
}

TEST(ServerProcessTest, DefaultsToLoopbackAndSigtermDrains) {
  ServerProcess s("--model '" + e2e() + "' " + kArgs);
  ASSERT_TRUE(s.ready()) << s.log();
  EXPECT_NE(s.log().find("http://127.0.0.1:"), std::string::npos);
  Streamed st;
  std::atomic<int> progress{0};
  std::thread client([&] {
    st = stream(s, "/v1/completions", json{{"prompt", "Hi"}, {"max_tokens", 100}, {"ignore_eos", true}, {"stream", true}},
                &progress);
  });
  while (progress.load() == 0) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  s.signal(SIGTERM);
  EXPECT_LT(progress.load(), 100);
  EXPECT_EQ(s.wait(), 0) << s.log();  // exits cleanly...
  client.join();
  EXPECT_TRUE(st.done);  // ...after the running request finished
  EXPECT_EQ(st.events.size(), 100u);
}

}  // namespace
}  // namespace bamba
