// `bamba serve` over HTTP (bamba-tiny-e2e): clients that go away free their sequences (a real socket closed
// mid-stream and while waiting for a non-streaming answer); the prefix cache answers as without it and counts its
// hits in /metrics; --no-prefix-cache turns it off; n > 1 choices fork one prefill; sessions continue, fork,
// save, load and delete through /v1/sessions and answer as the whole conversation sent without a session.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cstring>
#include <regex>

#include "server_util.h"

namespace bamba {
namespace {

using json = nlohmann::json;
using test::ServerProcess;
using Clock = std::chrono::steady_clock;

std::string e2e() { return test::model_dir("bamba-tiny-e2e"); }

// The value of a metric line `bamba:<name>{model_name="...",<labels>} v` (labels: "" or ",key=\"v\"").
double metric(const ServerProcess& s, const std::string& name, const std::string& labels = "") {
  auto r = s.client().Get("/metrics");
  if (!r) return -1;
  const std::string key = "bamba:" + name + "{model_name=\"" + e2e() + "\"" + labels + "} ";
  const size_t at = r->body.find(key);
  if (at == std::string::npos) return -2;
  return std::stod(r->body.substr(at + key.size()));
}

// Waits (up to `seconds`) for a metric to reach a value; returns the seconds it took, or -1.
double wait_for(const ServerProcess& s, const std::string& name, double value, double seconds,
                const std::string& labels = "") {
  const auto t0 = Clock::now();
  while (std::chrono::duration<double>(Clock::now() - t0).count() < seconds) {
    if (metric(s, name, labels) == value) return std::chrono::duration<double>(Clock::now() - t0).count();
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return -1;
}

// A plain TCP client: sends one HTTP request and can read some of the answer, then hangs up.
class RawClient {
 public:
  RawClient(int port, const json& body) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(uint16_t(port));
    ::inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    EXPECT_EQ(::connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
    const std::string b = body.dump();
    const std::string req = "POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                            "Content-Length: " + std::to_string(b.size()) + "\r\n\r\n" + b;
    EXPECT_EQ(::send(fd_, req.data(), req.size(), 0), ssize_t(req.size()));
  }
  ~RawClient() { hang_up(); }
  // Reads until `what` has arrived (or 30 s).
  bool read_until(const std::string& what) {
    timeval tv{30, 0};
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    char buf[4096];
    while (got_.find(what) == std::string::npos) {
      const ssize_t n = ::recv(fd_, buf, sizeof(buf), 0);
      if (n <= 0) return false;
      got_.append(buf, size_t(n));
    }
    return true;
  }
  void hang_up() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  int fd_ = -1;
  std::string got_;
};

class ServerPrefix : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    server_ = new ServerProcess("--model '" + e2e() + "' -q --device cpu --max-model-len 4096 --max-num-seqs 8 --max-sessions 4");
  }
  static void TearDownTestSuite() {
    delete server_;
    server_ = nullptr;
  }
  void SetUp() override { ASSERT_TRUE(server_->ready()) << server_->log(); }
  const ServerProcess& s() const { return *server_; }
  static ServerProcess* server_;
};
ServerProcess* ServerPrefix::server_ = nullptr;

// A request that would run for seconds: 4000 tokens.
json long_request(bool stream) {
  return {{"prompt", "Once upon a time"}, {"max_tokens", 4000}, {"ignore_eos", true}, {"stream", stream}};
}

TEST_F(ServerPrefix, AStreamingClientThatHangsUpIsFreedAtOnce) {
  const double aborted = std::max(metric(s(), "request_success_total", ",finished_reason=\"abort\""), 0.0);
  RawClient c(s().port(), long_request(true));
  ASSERT_TRUE(c.read_until("data: "));                         // tokens are flowing
  ASSERT_GE(wait_for(s(), "num_requests_running", 1, 10), 0);  // (the gauges follow the step)
  c.hang_up();
  const double took = wait_for(s(), "request_success_total", aborted + 1, 5, ",finished_reason=\"abort\"");
  EXPECT_GE(took, 0) << "not aborted 5 s after the client left";
  EXPECT_LT(took, 1.0);
  EXPECT_GE(wait_for(s(), "num_requests_running", 0, 5), 0);
  EXPECT_GE(wait_for(s(), "kv_cache_usage_perc", 0, 5), 0);
  EXPECT_EQ(metric(s(), "state_slots_usage_perc"), 0);
  // Nothing is generated for it any more.
  const double gen = metric(s(), "generation_tokens_total");
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  EXPECT_EQ(metric(s(), "generation_tokens_total"), gen);
}

TEST_F(ServerPrefix, ANonStreamingClientThatHangsUpIsFreedAtOnce) {
  const double aborted = std::max(metric(s(), "request_success_total", ",finished_reason=\"abort\""), 0.0);
  RawClient c(s().port(), long_request(false));
  ASSERT_GE(wait_for(s(), "num_requests_running", 1, 10), 0);  // it runs; the client waits for the whole answer
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  c.hang_up();
  const double took = wait_for(s(), "request_success_total", aborted + 1, 5, ",finished_reason=\"abort\"");
  EXPECT_GE(took, 0) << "not aborted 5 s after the client left";
  EXPECT_LT(took, 1.0);
  EXPECT_GE(wait_for(s(), "num_requests_running", 0, 5), 0);
  EXPECT_GE(wait_for(s(), "kv_cache_usage_perc", 0, 5), 0);
}

TEST_F(ServerPrefix, RepeatedPromptsHitTheCacheAndAnswerAsWithout) {
  // A shared "system prompt" of a few hundred tokens and short questions after it.
  std::string sys = "You are a helpful assistant. ";
  for (int i = 0; i < 30; ++i) sys += "Rule " + std::to_string(i) + ": answer briefly and kindly. ";
  ServerProcess off("--model '" + e2e() + "' -q --device cpu --max-model-len 4096 --no-prefix-cache");
  ASSERT_TRUE(off.ready()) << off.log();
  const double hits0 = metric(s(), "prefix_cache_hits_total");
  for (int q = 0; q < 4; ++q) {
    json body = {{"prompt", sys + "Question " + std::to_string(q) + ": what is " + std::to_string(q) + " + 1?"},
                 {"max_tokens", 12}, {"temperature", 0}, {"logprobs", 2}};
    auto a = s().client().Post("/v1/completions", body.dump(), "application/json");
    auto b = off.client().Post("/v1/completions", body.dump(), "application/json");
    ASSERT_TRUE(a && b);
    ASSERT_EQ(a->status, 200) << a->body;
    json ja = json::parse(a->body), jb = json::parse(b->body);
    EXPECT_EQ(ja["choices"][0]["text"], jb["choices"][0]["text"]) << "question " << q;
    EXPECT_EQ(ja["choices"][0]["logprobs"]["tokens"], jb["choices"][0]["logprobs"]["tokens"]);
    const auto& la = ja["choices"][0]["logprobs"]["token_logprobs"];
    const auto& lb = jb["choices"][0]["logprobs"]["token_logprobs"];
    for (size_t k = 0; k < la.size(); ++k) EXPECT_NEAR(la[k].get<double>(), lb[k].get<double>(), 2e-4);
  }
  // The first question is a miss, the second snapshots where the prompts part, the rest hit there.
  EXPECT_GT(metric(s(), "prefix_cache_hits_total"), hits0 + 200);
  EXPECT_GT(metric(s(), "prefix_cache_hit_rate"), 0);
  EXPECT_GT(metric(s(), "prefix_cache_snapshots"), 0);
  EXPECT_EQ(metric(off, "prefix_cache_hits_total"), 0);
  EXPECT_EQ(metric(off, "prefix_cache_pages"), 0);
  EXPECT_NE(off.log().find("prefix cache: off"), std::string::npos) << off.log();
}

TEST_F(ServerPrefix, ChoicesForkOnePrefill) {
  const double forks = metric(s(), "forked_sequences_total");
  json body = {{"prompt", "The capital of France is a city that"}, {"max_tokens", 6}, {"n", 4}, {"seed", 3}};
  auto r = s().client().Post("/v1/completions", body.dump(), "application/json");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  EXPECT_EQ(json::parse(r->body)["choices"].size(), 4u);
  EXPECT_EQ(metric(s(), "forked_sequences_total"), forks + 3);
}

TEST_F(ServerPrefix, SessionsContinueForkSaveLoadAndDelete) {
  auto post = [&](const json& body) {
    auto r = s().client().Post("/v1/completions", body.dump(), "application/json");
    EXPECT_TRUE(r);
    return r ? std::make_pair(r->status, json::parse(r->body, nullptr, false)) : std::make_pair(0, json());
  };
  auto ids_of = [&](const std::string& text) {
    auto r = s().client().Post("/tokenize", json{{"prompt", text}}.dump(), "application/json");
    return json::parse(r->body)["tokens"].get<std::vector<int32_t>>();
  };
  // Turn 1 in session "conv", then turn 2 = turn 1's tokens + its output + more, in the session and without.
  auto p1 = ids_of("The weather today is");
  auto [st1, r1] = post({{"prompt", p1}, {"max_tokens", 6}, {"temperature", 0}, {"ignore_eos", true},
                         {"session", "conv"}});
  ASSERT_EQ(st1, 200) << r1;
  auto sessions = json::parse(s().client().Get("/v1/sessions")->body);
  ASSERT_EQ(sessions["data"].size(), 1u) << sessions;
  EXPECT_EQ(sessions["data"][0]["id"], "conv");
  const int tokens = sessions["data"][0]["tokens"].get<int>();
  EXPECT_EQ(tokens, int(p1.size()) + 6);
  // The session's tokens come back in its saved state (after the header): rebuild the conversation from them.
  auto state = s().client().Get("/v1/sessions/conv/state");
  ASSERT_TRUE(state);
  ASSERT_EQ(state->status, 200);
  std::vector<int32_t> conv(static_cast<size_t>(tokens));
  // magic, version, model type ("bamba": length + 5 bytes), shape, counts, then the tokens
  std::memcpy(conv.data(), state->body.data() + 8 + 4 + 4 + 5 + 13 * 4 + 8, conv.size() * 4);
  EXPECT_TRUE(std::equal(p1.begin(), p1.end(), conv.begin()));
  auto more = ids_of(" and tomorrow");
  std::vector<int32_t> next = conv;
  next.insert(next.end(), more.begin(), more.end());
  const json turn = {{"prompt", next}, {"max_tokens", 6}, {"temperature", 0}, {"ignore_eos", true}};
  auto [st_plain, plain] = post(turn);
  ASSERT_EQ(st_plain, 200) << plain;
  // Fork first (the branch continues like the trunk), then continue the trunk.
  auto f = s().client().Post("/v1/sessions/conv/fork", json{{"id", "branch"}}.dump(), "application/json");
  ASSERT_TRUE(f);
  EXPECT_EQ(f->status, 200) << f->body;
  const double hits = metric(s(), "session_hits_total");
  json in_session = turn;
  in_session["session"] = "conv";
  auto [st2, r2] = post(in_session);
  ASSERT_EQ(st2, 200) << r2;
  EXPECT_EQ(r2["choices"][0]["text"], plain["choices"][0]["text"]);
  EXPECT_EQ(metric(s(), "session_hits_total"), hits + tokens - 1);
  in_session["session"] = "branch";
  auto [st3, r3] = post(in_session);
  EXPECT_EQ(r3["choices"][0]["text"], plain["choices"][0]["text"]);
  // Load the saved turn-1 state under a new id: the same continuation.
  auto put = s().client().Put("/v1/sessions/loaded/state", state->body, "application/octet-stream");
  ASSERT_TRUE(put);
  EXPECT_EQ(put->status, 200) << put->body;
  in_session["session"] = "loaded";
  auto [st4, r4] = post(in_session);
  EXPECT_EQ(r4["choices"][0]["text"], plain["choices"][0]["text"]);
  // Delete; errors.
  auto d = s().client().Delete("/v1/sessions/branch");
  ASSERT_TRUE(d);
  EXPECT_EQ(d->status, 200);
  EXPECT_EQ(s().client().Delete("/v1/sessions/branch")->status, 404);
  EXPECT_EQ(s().client().Get("/v1/sessions/branch/state")->status, 404);
  EXPECT_EQ(s().client().Put("/v1/sessions/x/state", "garbage", "application/octet-stream")->status, 400);
  EXPECT_EQ(post({{"prompt", "hi"}, {"session", 5}}).first, 400);
  EXPECT_EQ(post({{"prompt", "hi"}, {"session", "a b"}}).first, 400);
  EXPECT_EQ(post({{"prompt", "hi"}, {"session", "s"}, {"n", 2}}).first, 400);
  for (const char* id : {"conv", "loaded", "s"}) s().client().Delete(std::string("/v1/sessions/") + id);
}

}  // namespace
}  // namespace bamba
