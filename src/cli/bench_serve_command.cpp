// bamba bench-serve: load against a running server, like vLLM's serving benchmark: N streamed completions of
// random token-id prompts of a given length, a given number of output tokens (ignore_eos), at most C at a time;
// reports throughput, time to first token, inter-token latency and end-to-end latency (mean, p50, p90, p99).
// Workloads (--workload) for the prefix cache: `shared-prefix` puts one random system prompt of --prefix-len
// tokens before every prompt; `multi-turn` runs conversations of --turns requests, each turn's prompt being the
// previous prompt + a reply of --output-len tokens (random ids standing for the assistant's answer as a client
// sends it back) + --input-len new tokens. The server's prefix-cache hit rate over the run is read from
// /metrics. `repeat` (speculative decoding's best case: output that copies its context, as in "repeat this code")
// makes each prompt one random phrase of --prefix-len tokens repeated up to --input-len tokens; a model continues
// the pattern, which prompt lookup drafts. The server's draft acceptance over the run is read from /metrics too,
// and so is what the server did with the load: the most requests it ran at once and kept waiting (polled every
// 50 ms), and its preemptions. --max-duration caps a run: no request starts after it, and requests
// still streaming then are cut (counted apart, their tokens so far counted).
#include <httplib.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>

#include "cli/commands.h"
#include "core/error.h"

namespace bamba::cli {

namespace {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

struct BenchOptions {
  std::string host = "127.0.0.1", model, api_key, json_out;
  int port = 8000;
  int32_t num_prompts = 100, input_len = 128, output_len = 64, concurrency = 8;
  uint32_t seed = 0;
  std::string workload = "random";
  int32_t prefix_len = 512, turns = 4;
  double max_duration = 0;  // seconds; 0 = no cap
};

struct Sample {
  bool ok = false;
  std::string error;
  double ttft = 0, e2e = 0;
  int64_t prompt_tokens = 0;
  int32_t turn = 0;  // multi-turn: 0 for a conversation's first request
  std::vector<double> itl;  // gaps between chunks that carry tokens
  int64_t output_tokens = 0;
  int64_t server_prompt_tokens = -1;  // usage.prompt_tokens as the server counted the prompt
  int64_t events = 0;  // SSE events with choices (tokens seen, for a request cut before its usage arrived)
  bool cut = false;    // still running at --max-duration
};

// One streamed request; times every SSE event that carries text.
Sample run_one(const BenchOptions& o, const std::vector<int32_t>& prompt, Clock::time_point deadline) {
  Sample s;
  httplib::Client cli(o.host, o.port);
  const bool capped = o.max_duration > 0;
  const double left = capped ? std::chrono::duration<double>(deadline - Clock::now()).count() : 600.0;
  if (left <= 0) {
    s.cut = true;
    return s;
  }
  const double wait = std::min(left + 0.05, 600.0);
  cli.set_read_timeout(time_t(wait), long((wait - std::floor(wait)) * 1e6));
  json body = {{"prompt", prompt}, {"max_tokens", o.output_len}, {"ignore_eos", true}, {"stream", true},
               {"temperature", 0}, {"stream_options", {{"include_usage", true}}}};
  if (!o.model.empty()) body["model"] = o.model;
  httplib::Request req;
  req.method = "POST";
  req.path = "/v1/completions";
  req.body = body.dump();
  req.set_header("Content-Type", "application/json");
  if (!o.api_key.empty()) req.set_header("Authorization", "Bearer " + o.api_key);
  const auto t0 = Clock::now();
  auto last = t0;
  bool first = true;
  std::string buf;
  req.content_receiver = [&](const char* data, size_t len, uint64_t, uint64_t) {
    buf.append(data, len);
    for (size_t end; (end = buf.find("\n\n")) != std::string::npos; buf.erase(0, end + 2)) {
      std::string ev = buf.substr(0, end);
      if (ev.rfind("data: ", 0) != 0 || ev == "data: [DONE]") continue;
      json j = json::parse(ev.substr(6), nullptr, false);
      if (j.is_discarded()) continue;
      if (j.contains("error")) s.error = j["error"].value("message", "error");
      if (j.contains("usage") && j["usage"].is_object()) {
        s.output_tokens = j["usage"].value("completion_tokens", int64_t(0));
        s.server_prompt_tokens = j["usage"].value("prompt_tokens", int64_t(-1));
      }
      if (!j.contains("choices") || j["choices"].empty()) continue;
      const auto now = Clock::now();
      ++s.events;
      if (first) s.ttft = std::chrono::duration<double>(now - t0).count();
      else s.itl.push_back(std::chrono::duration<double>(now - last).count());
      first = false;
      last = now;
    }
    if (capped && Clock::now() >= deadline) {  // hang up: the server frees the sequence at its next step
      s.cut = true;
      return false;
    }
    return true;
  };
  auto res = cli.send(req);
  s.e2e = std::chrono::duration<double>(Clock::now() - t0).count();
  if (capped && Clock::now() >= deadline && (!res || s.cut)) {
    s.cut = true;
    s.output_tokens = s.events;
    return s;
  }
  if (!res) s.error = "connection failed: " + httplib::to_string(res.error());
  else if (res->status != 200) s.error = "HTTP " + std::to_string(res->status) + ": " + res->body;
  s.ok = s.error.empty() && !first;
  return s;
}

// Values of the server's /metrics (Prometheus text, one label set per name); -1 for a name it lacks or when
// nothing answers.
std::vector<double> metrics(const BenchOptions& o, const std::vector<std::string>& names) {
  httplib::Client cli(o.host, o.port);
  cli.set_read_timeout(5, 0);
  auto r = cli.Get("/metrics");
  std::vector<double> v(names.size(), -1.0);
  if (!r || r->status != 200) return v;
  for (size_t i = 0; i < names.size(); ++i) {
    const size_t at = r->body.find("\n" + names[i] + "{");
    if (at == std::string::npos) continue;
    const size_t sp = r->body.find("} ", at);
    if (sp != std::string::npos) v[i] = std::atof(r->body.c_str() + sp + 2);
  }
  return v;
}
const std::vector<std::string> kCounters = {"bamba:prefix_cache_queries_total", "bamba:prefix_cache_hits_total",
                                            "bamba:spec_decode_num_draft_tokens_total",
                                            "bamba:spec_decode_num_accepted_tokens_total"};

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const double at = p / 100.0 * double(v.size() - 1);
  const size_t lo = size_t(at);
  const double f = at - double(lo);
  return lo + 1 < v.size() ? v[lo] * (1 - f) + v[lo + 1] * f : v[lo];
}

double mean(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return v.empty() ? 0 : s / double(v.size());
}

void run(const BenchOptions& o) {
  // The vocabulary size bounds the random prompt ids.
  httplib::Client probe(o.host, o.port);
  auto info = probe.Get("/tokenizer_info");
  BAMBA_CHECK(info && info->status == 200, "no bamba server answers on ", o.host, ":", o.port, " (GET /tokenizer_info)");
  json ti = json::parse(info->body, nullptr, false);
  const int64_t vocab = ti.is_object() ? ti.value("vocab_size", int64_t(0)) : 0;
  BAMBA_CHECK(vocab > 0, "the server did not report vocab_size in /tokenizer_info");

  // Conversations: lists of prompts run one after the other (one prompt each but in multi-turn).
  std::mt19937 rng(o.seed);
  auto random_ids = [&](int32_t n) {
    std::vector<int32_t> p(static_cast<size_t>(n));
    for (auto& t : p) t = int32_t(rng() % uint32_t(std::min<int64_t>(vocab, 1 << 30)));
    return p;
  };
  const std::vector<int32_t> system = o.workload == "shared-prefix" ? random_ids(o.prefix_len) : std::vector<int32_t>{};
  std::vector<std::vector<std::vector<int32_t>>> convs;
  const int32_t per = o.workload == "multi-turn" ? o.turns : 1;
  for (int32_t made = 0; made < o.num_prompts;) {
    std::vector<std::vector<int32_t>> c;
    std::vector<int32_t> p = system;
    for (int32_t t = 0; t < per && made < o.num_prompts; ++t, ++made) {
      if (t > 0) {
        auto reply = random_ids(o.output_len);
        p.insert(p.end(), reply.begin(), reply.end());
      }
      auto msg = random_ids(o.workload == "repeat" ? std::min(o.prefix_len, o.input_len) : o.input_len);
      if (o.workload == "repeat")  // the phrase again and again, up to input_len tokens
        for (size_t i = msg.size(); i < size_t(o.input_len); ++i) msg.push_back(msg[i % size_t(o.prefix_len)]);
      p.insert(p.end(), msg.begin(), msg.end());
      c.push_back(p);
    }
    convs.push_back(std::move(c));
  }
  const auto before = metrics(o, kCounters);
  const double preempt_before = metrics(o, {"bamba:num_preemptions_total"})[0];
  std::vector<std::vector<Sample>> by_conv(convs.size());
  std::atomic<size_t> next{0};
  const auto t0 = Clock::now();
  const auto deadline = t0 + std::chrono::microseconds(int64_t(o.max_duration * 1e6));
  // What the server does with the load: the most requests running / waiting at once, polled.
  std::atomic<bool> done{false};
  double max_running = -1, max_waiting = -1;
  std::thread poller([&] {
    do {  // at least one sample, even when the load is over before this thread first runs
      auto v = metrics(o, {"bamba:num_requests_running", "bamba:num_requests_waiting"});
      max_running = std::max(max_running, v[0]);
      max_waiting = std::max(max_waiting, v[1]);
      for (int k = 0; k < 5 && !done; ++k) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    } while (!done);
  });
  std::vector<std::thread> workers;
  for (int32_t w = 0; w < std::min<int32_t>(o.concurrency, int32_t(convs.size())); ++w)
    workers.emplace_back([&] {
      for (size_t i; (i = next++) < convs.size();)
        for (size_t t = 0; t < convs[i].size(); ++t) {
          by_conv[i].push_back(run_one(o, convs[i][t], deadline));
          by_conv[i].back().prompt_tokens = int64_t(convs[i][t].size());
          by_conv[i].back().turn = int32_t(t);
        }
    });
  for (auto& t : workers) t.join();
  const double dur = std::chrono::duration<double>(Clock::now() - t0).count();
  done = true;
  poller.join();
  const auto after = metrics(o, kCounters);
  const double preempt_after = metrics(o, {"bamba:num_preemptions_total"})[0];
  const double preemptions = preempt_before >= 0 && preempt_after >= 0 ? preempt_after - preempt_before : -1;
  std::vector<Sample> samples;
  for (auto& c : by_conv) samples.insert(samples.end(), c.begin(), c.end());

  std::vector<double> ttft, itl, e2e, tpot, ttft_first, ttft_later;
  int64_t ok = 0, out_tokens = 0, in_tokens = 0, cut = 0, not_started = 0, server_in_tokens = 0;
  std::string first_error;
  for (const Sample& s : samples) {
    if (s.cut) {  // the time cap: its tokens so far count, its latencies too (TTFT only if it had a first token)
      ++cut;
      out_tokens += s.output_tokens;
      if (s.events == 0) ++not_started;
      if (s.events > 0) ttft.push_back(s.ttft);
      itl.insert(itl.end(), s.itl.begin(), s.itl.end());
      continue;
    }
    if (!s.ok) {
      if (first_error.empty()) first_error = s.error;
      continue;
    }
    ++ok;
    out_tokens += s.output_tokens;
    in_tokens += s.prompt_tokens;
    server_in_tokens = server_in_tokens < 0 || s.server_prompt_tokens < 0 ? -1 : server_in_tokens + s.server_prompt_tokens;
    ttft.push_back(s.ttft);
    (s.turn == 0 ? ttft_first : ttft_later).push_back(s.ttft);
    e2e.push_back(s.e2e);
    itl.insert(itl.end(), s.itl.begin(), s.itl.end());
    if (s.output_tokens > 1) tpot.push_back((s.e2e - s.ttft) / double(s.output_tokens - 1));
  }
  const double queries = after[0] - before[0], hits = after[1] - before[1];
  const double hit_rate = before[0] >= 0 && after[0] >= 0 && queries > 0 ? hits / queries : -1;
  const double drafted = after[2] - before[2], accepted = after[3] - before[3];
  const double acceptance = before[2] >= 0 && drafted > 0 ? accepted / drafted : -1;
  std::printf("============ Serving Benchmark Result ============\n");
  std::printf("%-40s %d\n", "Successful requests:", int(ok));
  std::printf("%-40s %d\n", "Failed requests:", int(samples.size() - size_t(ok) - size_t(cut)));
  if (o.max_duration > 0)
    std::printf("%-40s %d (%d before their first token)\n", "Cut at --max-duration:", int(cut), int(not_started));
  if (max_running >= 0) {
    std::printf("%-40s %.0f\n", "Most requests running at once (server):", max_running);
    std::printf("%-40s %.0f\n", "Most requests waiting at once (server):", max_waiting);
  }
  if (preemptions >= 0) std::printf("%-40s %.0f\n", "Preemptions (server):", preemptions);
  std::printf("%-40s %d\n", "Maximum request concurrency:", o.concurrency);
  std::printf("%-40s %.2f\n", "Benchmark duration (s):", dur);
  std::printf("%-40s %lld\n", "Total input tokens:", (long long)in_tokens);
  std::printf("%-40s %lld\n", "Total generated tokens:", (long long)out_tokens);
  std::printf("%-40s %.2f\n", "Request throughput (req/s):", ok / dur);
  std::printf("%-40s %.2f\n", "Output token throughput (tok/s):", out_tokens / dur);
  std::printf("%-40s %.2f\n", "Total token throughput (tok/s):", (in_tokens + out_tokens) / dur);
  std::printf("%-40s %s\n", "Workload:", o.workload.c_str());
  if (hit_rate >= 0) std::printf("%-40s %.2f%% (%.0f of %.0f prompt tokens)\n", "Prefix cache hit rate:", hit_rate * 100, hits, queries);
  else if (after[0] < 0) std::printf("%-40s %s\n", "Prefix cache hit rate:", "n/a (no prefix-cache counters in /metrics)");
  else std::printf("%-40s %s\n", "Prefix cache hit rate:", "n/a (nothing looked up: is the prefix cache off?)");
  if (acceptance >= 0)
    std::printf("%-40s %.2f%% (%.0f of %.0f draft tokens; %.2f accepted per output token)\n", "Draft acceptance rate:",
                acceptance * 100, accepted, drafted, out_tokens ? accepted / double(out_tokens) : 0.0);
  if (o.workload == "multi-turn") {
    std::printf("%-40s %.2f\n", "Mean TTFT, first turns (ms):", mean(ttft_first) * 1e3);
    std::printf("%-40s %.2f\n", "Mean TTFT, later turns (ms):", mean(ttft_later) * 1e3);
  }
  auto block = [](const char* title, const char* name, const std::vector<double>& v) {
    std::printf("%s\n", title);
    std::printf("Mean %-35s %.2f\n", (std::string(name) + " (ms):").c_str(), mean(v) * 1e3);
    for (double p : {50.0, 90.0, 99.0})
      std::printf("P%-4.0f%-35s %.2f\n", p, (std::string(name) + " (ms):").c_str(), percentile(v, p) * 1e3);
  };
  block("---------------Time to First Token----------------", "TTFT", ttft);
  block("-----Time per Output Token (excl. 1st token)------", "TPOT", tpot);
  block("---------------Inter-token Latency----------------", "ITL", itl);
  block("----------------End-to-end Latency----------------", "E2EL", e2e);
  std::printf("==================================================\n");
  if (!first_error.empty()) std::fprintf(stderr, "bamba: first failure: %s\n", first_error.c_str());
  if (!o.json_out.empty()) {
    json j = {{"completed", ok}, {"failed", int64_t(samples.size()) - ok - cut}, {"duration", dur},
              {"cut", cut}, {"cut_before_first_token", not_started}, {"max_duration", o.max_duration},
              {"num_prompts", o.num_prompts}, {"concurrency", o.concurrency}, {"input_len", o.input_len},
              {"output_len", o.output_len},
              {"max_running", max_running >= 0 ? json(max_running) : json()},
              {"max_waiting", max_waiting >= 0 ? json(max_waiting) : json()},
              {"preemptions", preemptions >= 0 ? json(preemptions) : json()},
              {"total_input_tokens", in_tokens}, {"total_output_tokens", out_tokens},
              {"server_prompt_tokens", server_in_tokens >= 0 ? json(server_in_tokens) : json()},
              {"request_throughput", ok / dur}, {"output_throughput", out_tokens / dur}, {"workload", o.workload},
              {"prefix_cache_hit_rate", hit_rate >= 0 ? json(hit_rate) : json()},
              {"draft_acceptance_rate", acceptance >= 0 ? json(acceptance) : json()},
              {"draft_tokens", drafted >= 0 ? json(drafted) : json()},
              {"accepted_draft_tokens", accepted >= 0 ? json(accepted) : json()},
              {"mean_ttft_first_turn_ms", mean(ttft_first) * 1e3}, {"mean_ttft_later_turns_ms", mean(ttft_later) * 1e3}};
    for (auto [name, v] : {std::pair{"ttft", &ttft}, {"tpot", &tpot}, {"itl", &itl}, {"e2el", &e2e}}) {
      j[std::string("mean_") + name + "_ms"] = mean(*v) * 1e3;
      for (int p : {50, 90, 99}) j["p" + std::to_string(p) + "_" + name + "_ms"] = percentile(*v, p) * 1e3;
    }
    FILE* f = std::fopen(o.json_out.c_str(), "w");
    BAMBA_CHECK(f, "cannot write ", o.json_out);
    std::string text = j.dump(2) + "\n";
    std::fwrite(text.data(), 1, text.size(), f);
    std::fclose(f);
  }
  BAMBA_CHECK(ok > 0 || cut > 0, "every request failed");
}

}  // namespace

void register_bench_serve(CLI::App& app) {
  auto o = std::make_shared<BenchOptions>();
  CLI::App* cmd = app.add_subcommand("bench-serve", "Benchmark a running bamba (or OpenAI-compatible) server");
  cmd->add_option("--host", o->host, "Server address");
  cmd->add_option("--port", o->port, "Server port")->check(CLI::Range(1, 65535));
  cmd->add_option("--model", o->model, "Model name to send (default: none)");
  cmd->add_option("--api-key", o->api_key, "API key (Authorization: Bearer)");
  cmd->add_option("--num-prompts,-n", o->num_prompts, "Requests to send")->check(CLI::Range(1, 1000000));
  cmd->add_option("--input-len", o->input_len, "Prompt tokens per request")->check(CLI::Range(1, 1 << 20));
  cmd->add_option("--output-len", o->output_len, "Generated tokens per request")->check(CLI::Range(1, 1 << 20));
  cmd->add_option("--concurrency,-c", o->concurrency, "Requests in flight at once")->check(CLI::Range(1, 100000));
  cmd->add_option("--seed", o->seed, "Seed of the random prompts");
  cmd->add_option("--workload", o->workload,
                  "random (independent prompts), shared-prefix (one system prompt of --prefix-len tokens first), "
                  "multi-turn (conversations of --turns requests, each extending the last), repeat (a phrase of "
                  "--prefix-len tokens repeated to --input-len: output that copies its context, for speculative decoding)")
      ->check(CLI::IsMember({"random", "shared-prefix", "multi-turn", "repeat"}));
  cmd->add_option("--prefix-len", o->prefix_len, "shared-prefix: tokens of the shared system prompt; repeat: the phrase")
      ->check(CLI::Range(1, 1 << 20));
  cmd->add_option("--turns", o->turns, "multi-turn: requests per conversation")->check(CLI::Range(1, 1000));
  cmd->add_option("--max-duration", o->max_duration,
                  "Seconds the run may take (0: no cap): no request starts after it, those still streaming are cut")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--json", o->json_out, "Also write the results as JSON to this file");
  cmd->callback([o] { run(*o); });
}

}  // namespace bamba::cli
