#include "server/http_server.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <httplib.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstdlib>

#include <chrono>
#include <random>
#include <thread>

#include "server/metrics.h"

namespace bamba {

using namespace std::chrono_literals;

namespace {

void send_error(httplib::Response& res, int status, const std::string& message, const std::string& param = {}) {
  res.status = status;
  res.set_content(dump(error_body(status, message, param)), "application/json");
}

// Counts a generation request as in flight for as long as it lives.
struct InFlight {
  explicit InFlight(std::atomic<int32_t>& n) : n_(n) { n_.fetch_add(1); }
  ~InFlight() { n_.fetch_sub(1); }
  InFlight(const InFlight&) = delete;
  InFlight& operator=(const InFlight&) = delete;
  std::atomic<int32_t>& n_;
};

// A streaming response: everything its content provider needs after the handler has returned.
struct Stream {
  Stream(Job j, const ServingContext& ctx, std::string id, int64_t created, std::atomic<int32_t>& in_flight)
      : job(std::move(j)), builder(job, ctx, std::move(id), created), guard(in_flight) {}
  Job job;
  ResponseBuilder builder;
  InFlight guard;
  std::shared_ptr<Channel> channel = std::make_shared<Channel>();
  std::vector<std::shared_ptr<Request>> requests;
  bool finished = false;
  void cancel() {
    for (auto& r : requests) r->cancel();
  }
};

std::string sse(const json& j) { return "data: " + dump(j) + "\n\n"; }

// The `session` field of a completion request (docs/serving.md): kept apart from the OpenAI fields.
std::string session_field(const json& body, const Job& job) {
  auto it = body.find("session");
  if (it == body.end() || it->is_null()) return {};
  if (!it->is_string()) throw ApiError(400, "'session' must be a string", "session");
  if (job.num_sequences() != 1)
    throw ApiError(400, "a session holds one sequence: 'n' must be 1 and the prompt a single one", "session");
  return it->get<std::string>();
}

// An engine session call: 404 for a session that does not exist, 400 for other bad input.
template <class F>
void session_call(httplib::Response& res, F f) {
  try {
    f();
  } catch (const Error& e) {
    const std::string m = e.what();
    send_error(res, m.rfind("no session", 0) == 0 ? 404 : 400, m);
  }
}

// The address and port of one end of a socket, as httplib writes them in a Request.
bool endpoint(int fd, bool peer, std::string& addr, int& port) {
  sockaddr_storage ss{};
  socklen_t len = sizeof(ss);
  if ((peer ? ::getpeername(fd, reinterpret_cast<sockaddr*>(&ss), &len) : ::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len)) != 0)
    return false;
  char buf[INET6_ADDRSTRLEN] = {};
  if (ss.ss_family == AF_INET) {
    auto* a = reinterpret_cast<sockaddr_in*>(&ss);
    ::inet_ntop(AF_INET, &a->sin_addr, buf, sizeof(buf));
    port = ntohs(a->sin_port);
  } else if (ss.ss_family == AF_INET6) {
    auto* a = reinterpret_cast<sockaddr_in6*>(&ss);
    ::inet_ntop(AF_INET6, &a->sin6_addr, buf, sizeof(buf));
    port = ntohs(a->sin6_port);
  } else {
    return false;
  }
  addr = buf;
  return true;
}

// The socket of the connection a handler serves, found by its two ends: httplib 0.11 does not give it to
// handlers, and a client that goes away while nothing is being written to it (a non-streaming request, a stream
// still in its prefill) must free its sequences too, not only one whose next write fails.
class PeerWatch {
 public:
  explicit PeerWatch(const httplib::Request& req) {
    DIR* d = ::opendir("/proc/self/fd");
    if (!d) return;
    while (dirent* e = ::readdir(d)) {
      char* end = nullptr;
      const long fd = std::strtol(e->d_name, &end, 10);
      if (end == e->d_name || *end) continue;
      std::string addr;
      int port = 0;
      if (endpoint(int(fd), true, addr, port) && port == req.remote_port && addr == req.remote_addr &&
          endpoint(int(fd), false, addr, port) && port == req.local_port) {
        fd_ = int(fd);
        break;
      }
    }
    ::closedir(d);
  }
  // The client closed its end (or reset it). Peeks without consuming: a pipelined next request is not a close.
  bool gone() const {
    if (fd_ < 0) return false;
    char c;
    const ssize_t r = ::recv(fd_, &c, 1, MSG_PEEK | MSG_DONTWAIT);
    return r == 0 || (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
  }

 private:
  int fd_ = -1;
};

}  // namespace

HttpServer::HttpServer(Engine& engine, ServingContext ctx, HttpOptions opt)
    : engine_(engine),
      ctx_(std::move(ctx)),
      opt_(std::move(opt)),
      svr_(std::make_unique<httplib::Server>()),
      created_(std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count()) {
  // One thread per connection being served: a streaming request holds its thread until the last token.
  const size_t threads = size_t(opt_.max_concurrent) + 16;
  svr_->new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  svr_->set_payload_max_length(opt_.max_body_bytes);
  svr_->set_tcp_nodelay(true);  // small SSE chunks go out at once
  svr_->set_socket_options([this](socket_t fd) {
    httplib::default_socket_options(fd);
    listen_fd_ = fd;
  });
  routes();
}

HttpServer::~HttpServer() = default;

int HttpServer::bind() {
  int port = opt_.port;
  if (port == 0) port = svr_->bind_to_any_port(opt_.host);
  else if (!svr_->bind_to_port(opt_.host, port)) port = -1;
  BAMBA_CHECK(port > 0, "cannot listen on ", opt_.host, ":", opt_.port, " (in use, or not an address of this host)");
  // httplib listens with a backlog of 5: a burst of clients connecting at once overflows it and their
  // connections fail. Listening again on the bound socket raises the backlog.
  if (listen_fd_ >= 0) ::listen(listen_fd_, SOMAXCONN);
  return port;
}

void HttpServer::serve(const std::atomic<bool>& stop) {
  std::thread listener([this] { svr_->listen_after_bind(); });
  while (!stop.load() && engine_.alive()) std::this_thread::sleep_for(50ms);
  draining_ = true;  // new requests: 503; running ones finish
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(opt_.drain_seconds);
  while (in_flight_.load() > 0 && std::chrono::steady_clock::now() < deadline) std::this_thread::sleep_for(20ms);
  svr_->stop();
  listener.join();
}

bool HttpServer::authorized(const httplib::Request& req) const {
  return opt_.api_key.empty() || req.get_header_value("Authorization") == "Bearer " + opt_.api_key;
}

void HttpServer::routes() {
  httplib::Server& s = *svr_;
  s.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
    if (req.path.rfind("/v1/", 0) == 0 && !authorized(req)) {
      send_error(res, 401, "invalid or missing API key (Authorization: Bearer ...)");
      return httplib::Server::HandlerResponse::Handled;
    }
    return httplib::Server::HandlerResponse::Unhandled;
  });
  // httplib's own 4xx (unknown route, body too large, bad HTTP) get a JSON body too.
  s.set_error_handler([](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return;
    std::string msg = res.status == 404   ? "no route " + req.method + " " + req.path
                      : res.status == 413 ? "the request body is too large"
                                          : "bad request";
    send_error(res, res.status, msg);
  });
  s.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
    std::string msg = "internal error";
    try {
      std::rethrow_exception(ep);
    } catch (const std::exception& e) {
      msg = e.what();
    } catch (...) {
    }
    send_error(res, 500, msg);
  });

  s.Get("/health", [this](const httplib::Request&, httplib::Response& res) {
    res.status = engine_.alive() && !draining_ ? 200 : 503;
  });
  s.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
    res.set_content(prometheus_text(engine_.stats(), ctx_.model_name), "text/plain; version=0.0.4");
  });
  s.Get("/v1/models", [this](const httplib::Request&, httplib::Response& res) {
    res.set_content(dump(models(ctx_, created_)), "application/json");
  });
  auto json_route = [this](json (*fn)(const json&, const ServingContext&)) {
    return [this, fn](const httplib::Request& req, httplib::Response& res) {
      json body = json::parse(req.body, nullptr, false);
      if (body.is_discarded()) return send_error(res, 400, "the request body is not valid JSON");
      try {
        res.set_content(dump(fn(body, ctx_)), "application/json");
      } catch (const ApiError& e) {
        send_error(res, e.status, e.what(), e.param);
      } catch (const Error& e) {
        send_error(res, 400, e.what());
      }
    };
  };
  s.Post("/tokenize", json_route(&tokenize));
  s.Post("/detokenize", json_route(&detokenize));
  s.Get("/tokenizer_info", [this](const httplib::Request&, httplib::Response& res) {
    res.set_content(dump(tokenizer_info(ctx_)), "application/json");
  });
  // Sessions (docs/serving.md).
  const std::string sid = "([A-Za-z0-9._-]+)";
  s.Get("/v1/sessions", [this](const httplib::Request&, httplib::Response& res) {
    session_call(res, [&] {
      json data = json::array();
      for (const SessionInfo& i : engine_.sessions())
        data.push_back({{"id", i.id}, {"object", "session"}, {"tokens", i.tokens}, {"cached_tokens", i.cached}});
      res.set_content(dump({{"object", "list"}, {"data", data}}), "application/json");
    });
  });
  s.Post("/v1/sessions/" + sid + "/fork", [this](const httplib::Request& req, httplib::Response& res) {
    json body = json::parse(req.body, nullptr, false);
    if (!body.is_object() || !body.contains("id") || !body["id"].is_string())
      return send_error(res, 400, "the body must be {\"id\": \"<new session id>\"}", "id");
    session_call(res, [&] {
      engine_.fork_session(req.matches[1], body["id"].get<std::string>());
      res.set_content(dump({{"id", body["id"]}, {"object", "session"}, {"forked_from", std::string(req.matches[1])}}),
                      "application/json");
    });
  });
  s.Delete("/v1/sessions/" + sid, [this](const httplib::Request& req, httplib::Response& res) {
    session_call(res, [&] {
      if (!engine_.delete_session(req.matches[1])) fail("no session \"", std::string(req.matches[1]), "\"");
      res.set_content(dump({{"id", std::string(req.matches[1])}, {"object", "session"}, {"deleted", true}}),
                      "application/json");
    });
  });
  s.Get("/v1/sessions/" + sid + "/state", [this](const httplib::Request& req, httplib::Response& res) {
    session_call(res, [&] { res.set_content(engine_.save_session(req.matches[1]), "application/octet-stream"); });
  });
  s.Put("/v1/sessions/" + sid + "/state", [this](const httplib::Request& req, httplib::Response& res) {
    session_call(res, [&] {
      engine_.load_session(req.matches[1], req.body);
      res.set_content(dump({{"id", std::string(req.matches[1])}, {"object", "session"}}), "application/json");
    });
  });
  s.Post("/v1/completions", [this](const httplib::Request& q, httplib::Response& r) { generate(q, r, false); });
  s.Post("/v1/chat/completions", [this](const httplib::Request& q, httplib::Response& r) { generate(q, r, true); });
}

void HttpServer::generate(const httplib::Request& req, httplib::Response& res, bool chat) {
  if (draining_ || !engine_.alive()) return send_error(res, 503, "the server is shutting down");
  auto guard = std::make_unique<InFlight>(in_flight_);
  if (in_flight_.load() > opt_.max_concurrent)
    return send_error(res, 429, cat("too many requests in flight (the limit is ", opt_.max_concurrent, ")"));
  json body = json::parse(req.body, nullptr, false);
  if (body.is_discarded()) return send_error(res, 400, "the request body is not valid JSON");
  Job job;
  std::vector<RequestParams> seqs;
  try {
    job = chat ? parse_chat(body, ctx_) : parse_completions(body, ctx_);
    const std::string session = session_field(body, job);
    std::random_device rd;
    for (int32_t i = 0; i < job.num_sequences(); ++i) {
      seqs.push_back(job.sequence(i, (uint64_t(rd()) << 32) ^ rd()));
      seqs.back().session = session;
      engine_.validate(seqs.back());  // all checked before any is submitted
    }
  } catch (const ApiError& e) {
    return send_error(res, e.status, e.what(), e.param);
  } catch (const Error& e) {
    return send_error(res, 400, e.what());
  }
  const std::string id = (chat ? "chatcmpl-" : "cmpl-") + std::to_string(created_) + "-" + std::to_string(next_id_++);
  const int64_t now = std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
  guard.reset();  // the Stream below counts from here
  auto st = std::make_shared<Stream>(std::move(job), ctx_, id, now, in_flight_);
  try {
    st->requests = engine_.submit_all(std::move(seqs), st->channel);  // at once: n > 1 choices fork one prefill
  } catch (const Error& e) {
    st->cancel();
    return send_error(res, 503, e.what());
  }

  auto peer = std::make_shared<PeerWatch>(req);
  if (!st->job.stream) {
    // The connection's thread waits here; the engine thread fills the channel.
    while (!st->builder.all_done()) {
      if (peer->gone()) {  // nobody to answer: free the sequences at the next step
        st->cancel();
        return;
      }
      if (auto o = st->channel->pop(50ms)) st->builder.add(*o);
      else if (!engine_.alive()) return send_error(res, 503, "the engine stopped");
    }
    if (!st->builder.error().empty()) return send_error(res, 500, st->builder.error());
    res.set_content(dump(st->builder.response()), "application/json");
    return;
  }
  res.set_header("Cache-Control", "no-cache");
  res.set_chunked_content_provider(
      "text/event-stream",
      [st, peer, this](size_t, httplib::DataSink& sink) {
        if (st->finished) return true;
        if (peer->gone()) {  // checked every 50 ms, not only when a write fails
          st->cancel();
          return false;
        }
        auto o = st->channel->pop(50ms);  // nothing yet: httplib calls again (and checks the socket)
        if (!o) return engine_.alive();
        std::string data;
        for (const json& chunk : st->builder.add(*o)) data += sse(chunk);
        if (st->builder.all_done()) {
          if (!st->builder.error().empty()) data += sse(error_body(500, st->builder.error()));
          if (st->job.include_usage) data += sse(st->builder.usage_chunk());
          data += "data: [DONE]\n\n";
          st->finished = true;
        }
        if (!data.empty() && !sink.write(data.data(), data.size())) return false;  // client gone
        if (st->finished) sink.done();
        return true;
      },
      [st](bool ok) {
        if (!ok) st->cancel();  // disconnected: free the sequences at the next step
      });
}

}  // namespace bamba
