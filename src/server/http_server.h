// HttpServer: the OpenAI-compatible routes over cpp-httplib, in front of an Engine. Streaming responses are
// SSE through a chunked content provider that writes each engine output as it arrives; a failed write
// (disconnected client) cancels the request's sequences. Stopping drains: new requests get 503 while the
// running ones finish.
#pragma once
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

#include "engine/engine.h"
#include "server/openai_api.h"

namespace httplib {
class Server;
struct Request;
struct Response;
}  // namespace httplib

namespace bamba {

struct HttpOptions {
  std::string host = "127.0.0.1";
  int port = 8000;  // 0: any free port
  std::string api_key;  // non-empty: every /v1 route needs "Authorization: Bearer <key>"
  size_t max_body_bytes = 32u << 20;
  int32_t max_concurrent = 512;  // generation requests in flight; more get 429
  double drain_seconds = 600;    // the most a stop waits for running requests
};

class HttpServer {
 public:
  HttpServer(Engine& engine, ServingContext ctx, HttpOptions opt);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  int bind();  // binds host:port (Error if it cannot); returns the port
  // Serves until `stop` becomes true, then drains: no new requests, running ones finish (up to drain_seconds).
  void serve(const std::atomic<bool>& stop);

 private:
  void routes();
  void generate(const httplib::Request& req, httplib::Response& res, bool chat);
  bool authorized(const httplib::Request& req) const;

  Engine& engine_;
  ServingContext ctx_;
  HttpOptions opt_;
  std::unique_ptr<httplib::Server> svr_;
  std::atomic<int32_t> in_flight_{0};
  std::atomic<bool> draining_{false};
  std::atomic<uint64_t> next_id_{0};
  int listen_fd_ = -1;
  const int64_t created_;
};

}  // namespace bamba
