// bamba bench-matrix: hybrid vs transformer on one engine (issue 13). For each preset model, the same load at
// every (streams, context) cell, measured two ways:
//   - decode at depth: `bamba bench --tests decodeS@C,...` — the cache filled without prefill (a synthetic cache),
//     so the 32k-token and 256-stream cells take seconds, not the minutes their prefill would;
//   - through the server: `bamba serve --preset` and `bamba bench-serve` (S requests of C prompt token ids and a
//     fixed number of output tokens, all at once, capped in time), for the cells whose prompts total at most
//     --serve-max-tokens (prefill time).
// Each measurement is a child process of this binary, one GPU user at a time, so a cell that runs out of memory or
// time ends that child and is reported, not the matrix. Writes matrix.json, matrix.md and matrix.svg to --out.
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <httplib.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "cli/bench_matrix_report.h"
#include "cli/commands.h"
#include "core/error.h"
#include "core/mapped_file.h"
#include "model/presets.h"

namespace bamba::cli {

namespace {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

struct MatrixOptions {
  std::string models = "bamba-9b,llama-3.1-8b", streams = "1,16,64,256", contexts = "1024,8192,32768";
  std::string device = "auto", out = "matrix", modes = "depth,serve";
  int32_t output_len = 32, depth_steps = 16, max_batched_tokens = 8192;
  long long serve_max_tokens = 524288;
  double cell_cap = 30, cache_gib = 50, start_timeout = 180, depth_timeout = 180;
  double max_total = 450;  // seconds for the whole matrix: later cells are skipped, saying so
};

// The whole run's deadline (--max-total): what is left of it, for the children's own limits.
struct Budget {
  Clock::time_point end;
  double left() const { return std::chrono::duration<double>(end - Clock::now()).count(); }
};

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> v;
  std::stringstream ss(s);
  for (std::string t; std::getline(ss, t, ',');)
    if (!t.empty()) v.push_back(t);
  return v;
}

std::vector<int> split_ints(const std::string& s, const char* what) {
  std::vector<int> v;
  for (const auto& t : split(s)) {
    size_t used = 0;
    int x = 0;
    try {
      x = std::stoi(t, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != t.size() || x < 1) fail("bench-matrix: ", what, ": \"", t, "\" is not a positive integer");
    v.push_back(x);
  }
  if (v.empty()) fail("bench-matrix: ", what, " is empty");
  return v;
}

std::string self_exe() { return std::filesystem::read_symlink("/proc/self/exe").string(); }

// Starts this binary with args, stdout and stderr appended to log.
pid_t spawn(const std::vector<std::string>& args, const std::string& log) {
  static const std::string exe = self_exe();
  std::vector<std::string> all = {exe};
  all.insert(all.end(), args.begin(), args.end());
  {
    std::ofstream l(log, std::ios::app);
    l << "$";
    for (auto& a : all) l << " " << a;
    l << "\n";
  }
  std::vector<char*> argv;
  for (auto& a : all) argv.push_back(a.data());
  argv.push_back(nullptr);
  std::fflush(nullptr);
  const pid_t pid = fork();
  if (pid < 0) fail("bench-matrix: fork failed");
  if (pid == 0) {
    const int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd >= 0) {
      dup2(fd, 1);
      dup2(fd, 2);
    }
    execv(exe.c_str(), argv.data());
    _exit(127);
  }
  return pid;
}

// The child's exit status; -1 when it ran past timeout_s (then SIGTERM, and SIGKILL 10 s later).
int wait_for(pid_t pid, double timeout_s) {
  const auto t0 = Clock::now();
  bool termed = false;
  for (;;) {
    int st = 0;
    const pid_t w = waitpid(pid, &st, WNOHANG);
    if (w == pid) {
      if (termed) return -1;
      return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + (WIFSIGNALED(st) ? WTERMSIG(st) : 0);
    }
    const double t = std::chrono::duration<double>(Clock::now() - t0).count();
    if (!termed && t > timeout_s) {
      kill(pid, SIGTERM);
      termed = true;
    } else if (termed && t > timeout_s + 10) {
      kill(pid, SIGKILL);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

std::string tail_of(const std::string& path, size_t n = 600) {
  std::string s = file_exists(path) ? read_text_file(path) : "";
  return s.size() > n ? "..." + s.substr(s.size() - n) : s;
}

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// Decode at depth for every cell of one model, in one `bamba bench` child.
void run_depth(const MatrixOptions& o, const Budget& budget, const std::string& model, const std::vector<int>& streams,
               const std::vector<int>& contexts, MatrixReport& rep) {
  if (budget.left() < 5) {
    for (auto& cell : rep.cells)
      if (cell.model == model) cell.depth.note = "out of time (--max-total)";
    return;
  }
  std::string tests;
  for (int c : contexts)
    for (int s : streams) tests += (tests.empty() ? "" : ",") + std::string("decode") + std::to_string(s) + "@" + std::to_string(c);
  const std::string js = o.out + "/depth-" + model + ".json", log = o.out + "/logs/depth-" + model + ".log";
  std::filesystem::remove(js);
  std::fprintf(stderr, "bench-matrix: %s: decode at depth (synthetic cache), %zu cells\n", model.c_str(),
               streams.size() * contexts.size());
  const auto t0 = Clock::now();
  const int rc = wait_for(spawn({"bench", "--preset", model, "--device", o.device, "--reps", "1", "--steps",
                                 std::to_string(o.depth_steps), "--cache-memory", std::to_string(o.cache_gib),
                                 "--tests", tests, "--json", js},
                                log),
                          std::min(o.depth_timeout, budget.left()));
  std::fprintf(stderr, "bench-matrix: %s: depth bench done in %.1f s (exit %d)\n", model.c_str(), seconds_since(t0), rc);
  std::string why = rc == -1 ? "the bench ran past its time limit (--depth-timeout, --max-total)"
                             : "the bench failed (exit " + std::to_string(rc) + "): " + tail_of(log, 300);
  json j;
  if (rc == 0 && file_exists(js)) j = json::parse(read_text_file(js), nullptr, false);
  for (auto& cell : rep.cells) {
    if (cell.model != model) continue;
    const std::string name = "decode" + std::to_string(cell.streams) + "@" + std::to_string(cell.context);
    cell.depth.note = why;
    if (!j.is_object()) continue;
    for (auto& row : j["rows"])
      if (row.value("test", "") == name) {
        cell.depth.note = row.value("note", "");
        cell.depth.seqs_run = row.value("n_seqs", 0);
        cell.depth.ran = cell.depth.seqs_run > 0 && row.value("mean", 0.0) > 0;
        cell.depth.tok_s = row.value("mean", 0.0);
        cell.depth.step_ms_p50 = row.value("step_ms_p50", 0.0);
        cell.depth.step_ms_p99 = row.value("step_ms_p99", 0.0);
      }
  }
}

// The port a `bamba serve --port 0` child printed in its log, or 0 while it has not.
int served_port(const std::string& log) {
  const std::string s = file_exists(log) ? read_text_file(log) : "";
  const size_t at = s.find(" on http://");
  if (at == std::string::npos) return 0;
  const size_t colon = s.find(':', at + 11);
  return colon == std::string::npos ? 0 : std::atoi(s.c_str() + colon + 1);
}

ServeResult read_serve(const std::string& js, int rc, const std::string& log) {
  ServeResult v;
  if (rc != 0 || !file_exists(js)) {
    v.skipped = rc == -1 ? "bench-serve ran past its time limit" : "bench-serve failed (exit " + std::to_string(rc) + ")";
    v.first_error = tail_of(log, 300);
    return v;
  }
  json j = json::parse(read_text_file(js), nullptr, false);
  if (!j.is_object()) {
    v.skipped = js + " is not JSON";
    return v;
  }
  auto num = [&](const char* k, double d) { return j.contains(k) && j[k].is_number() ? j[k].get<double>() : d; };
  v.ran = true;
  v.completed = int(num("completed", 0));
  v.cut = int(num("cut", 0));
  v.cut_before_first_token = int(num("cut_before_first_token", 0));
  v.failed = int(num("failed", 0));
  v.duration_s = num("duration", 0);
  v.out_tok_s = num("output_throughput", 0);
  v.ttft_p50_ms = num("p50_ttft_ms", 0);
  v.ttft_p99_ms = num("p99_ttft_ms", 0);
  v.itl_p50_ms = num("p50_itl_ms", 0);
  v.itl_p99_ms = num("p99_itl_ms", 0);
  v.max_running = num("max_running", -1);
  v.max_waiting = num("max_waiting", -1);
  v.preemptions = num("preemptions", -1);
  if (v.failed > 0) {
    // bench-serve prints the first failure on stderr ("bamba: first failure: ...").
    const std::string l = file_exists(log) ? read_text_file(log) : "";
    const size_t at = l.rfind("first failure: ");
    if (at != std::string::npos) v.first_error = l.substr(at + 15, l.find('\n', at) - at - 15);
  }
  return v;
}

// One server for every serving cell of a model.
void run_serve(const MatrixOptions& o, const Budget& budget, const std::string& model, const std::vector<int>& streams,
               const std::vector<int>& contexts, MatrixReport& rep) {
  auto cells_of = [&](auto&& f) {
    for (auto& c : rep.cells)
      if (c.model == model) f(c);
  };
  bool any = false;
  cells_of([&](MatrixCell& c) {
    if ((long long)c.streams * c.context > o.serve_max_tokens)
      c.serve.skipped = "prefill of " + std::to_string((long long)c.streams * c.context) + " tokens is over --serve-max-tokens";
    else any = true;
  });
  if (!any) return;
  const int max_s = *std::max_element(streams.begin(), streams.end());
  const int max_c = *std::max_element(contexts.begin(), contexts.end());
  const std::string log = o.out + "/logs/serve-" + model + ".log";
  std::filesystem::remove(log);
  std::fprintf(stderr, "bench-matrix: %s: starting bamba serve\n", model.c_str());
  const auto t0 = Clock::now();
  const pid_t server = spawn({"serve", "--preset", model, "--device", o.device, "--port", "0", "--cache-memory",
                              std::to_string(o.cache_gib), "--max-model-len", std::to_string(max_c + o.output_len + 16),
                              "--max-num-seqs", std::to_string(max_s), "--max-num-batched-tokens",
                              std::to_string(std::max(o.max_batched_tokens, max_s)), "--max-concurrent-requests",
                              std::to_string(max_s + 64), "--no-prefix-cache"},
                             log);
  int port = 0;
  std::string fail_why;
  while (!port) {
    int st = 0;
    if (waitpid(server, &st, WNOHANG) == server) {
      fail_why = "the server exited at start: " + tail_of(log, 300);
      break;
    }
    if (seconds_since(t0) > std::min(o.start_timeout, budget.left())) {
      fail_why = "the server did not start in " + std::to_string(int(seconds_since(t0))) + " s";
      kill(server, SIGKILL);
      waitpid(server, nullptr, 0);
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    port = served_port(log);
  }
  if (!port) {
    std::fprintf(stderr, "bench-matrix: %s: %s\n", model.c_str(), fail_why.c_str());
    cells_of([&](MatrixCell& c) {
      if (c.serve.skipped.empty()) c.serve.skipped = fail_why;
    });
    return;
  }
  std::fprintf(stderr, "bench-matrix: %s: serving on port %d after %.1f s\n", model.c_str(), port, seconds_since(t0));
  const std::string p = std::to_string(port);
  // Warm-up: first-call costs (library handles, kernel selection) stay out of the first cell.
  wait_for(spawn({"bench-serve", "--port", p, "-n", "4", "-c", "4", "--input-len", "64", "--output-len", "4"},
                 o.out + "/logs/serve-" + model + "-warmup.log"),
           120);
  for (int c : contexts)
    for (int s : streams) {
      MatrixCell* cell = nullptr;
      cells_of([&](MatrixCell& x) {
        if (x.streams == s && x.context == c) cell = &x;
      });
      if (!cell || !cell->serve.skipped.empty()) continue;
      const double cap = std::min(o.cell_cap, budget.left() - 15);  // 15 s for the server to stop and the report
      if (cap < 1) {
        cell->serve.skipped = "out of time (--max-total)";
        continue;
      }
      const std::string tag = model + "-" + std::to_string(s) + "x" + std::to_string(c);
      const std::string js = o.out + "/serve-" + tag + ".json", clog = o.out + "/logs/bench-serve-" + tag + ".log";
      std::filesystem::remove(js);
      const auto c0 = Clock::now();
      const int rc = wait_for(spawn({"bench-serve", "--port", p, "-n", std::to_string(s), "-c", std::to_string(s),
                                     "--input-len", std::to_string(c), "--output-len", std::to_string(o.output_len),
                                     "--max-duration", std::to_string(cap), "--seed", std::to_string(s * 7 + c),
                                     "--json", js},
                                    clog),
                              cap + 30);
      cell->serve = read_serve(js, rc, clog);
      std::fprintf(stderr, "bench-matrix: %s %d × %d: %.1f s, %.1f out tok/s, %d done, %d cut\n", model.c_str(), s, c,
                   seconds_since(c0), cell->serve.out_tok_s, cell->serve.completed, cell->serve.cut);
      // Cut requests are freed by the server at its next step; let it drain before the next cell.
      std::this_thread::sleep_for(std::chrono::milliseconds(cell->serve.cut > 0 ? 1000 : 100));
    }
  kill(server, SIGTERM);
  if (wait_for(server, 30) != 0) std::fprintf(stderr, "bench-matrix: %s: the server did not stop cleanly\n", model.c_str());
}

void run(const MatrixOptions& o) {
  const auto models = split(o.models);
  const auto streams = split_ints(o.streams, "--streams");
  const auto contexts = split_ints(o.contexts, "--contexts");
  const auto modes = split(o.modes);
  for (size_t i = 0; i < models.size(); ++i) {
    preset_config(models[i]);  // an unknown name fails before anything runs
    if (std::count(models.begin(), models.begin() + long(i), models[i]))
      fail("bench-matrix: --models names ", models[i], " twice");
  }
  for (auto& m : modes)
    if (m != "depth" && m != "serve") fail("bench-matrix: --modes: unknown mode \"", m, "\" (depth, serve)");
  if (models.empty()) fail("bench-matrix: --models is empty");
  std::filesystem::create_directories(o.out + "/logs");

  MatrixReport rep;
  rep.device = o.device;
  rep.cache_gib = o.cache_gib;
  rep.cell_cap_s = o.cell_cap;
  rep.output_len = o.output_len;
  rep.depth_steps = o.depth_steps;
  rep.serve_max_tokens = o.serve_max_tokens;
  rep.models = models;
  rep.streams = streams;
  rep.contexts = contexts;
  for (auto& m : models)
    for (int c : contexts)
      for (int s : streams) {
        MatrixCell cell{m, s, c, {}, {}};
        cell.serve.skipped = "not asked (--modes)";
        cell.depth.note = "not asked (--modes)";
        rep.cells.push_back(cell);
      }
  const bool depth = std::count(modes.begin(), modes.end(), "depth") > 0;
  const bool serve = std::count(modes.begin(), modes.end(), "serve") > 0;
  const auto t0 = Clock::now();
  const Budget budget{t0 + std::chrono::milliseconds(int64_t(o.max_total * 1e3))};
  // Decode at depth first, for every model: it is quick and covers every cell (the chart's solid lines).
  if (depth)
    for (auto& m : models) run_depth(o, budget, m, streams, contexts, rep);
  if (serve)
    for (auto& m : models) {
      for (auto& c : rep.cells)
        if (c.model == m) c.serve.skipped.clear();
      run_serve(o, budget, m, streams, contexts, rep);
    }
  // The device as the children saw it (the bench prints its backend).
  for (auto& m : models) {
    const std::string js = o.out + "/depth-" + m + ".json";
    if (!file_exists(js)) continue;
    json j = json::parse(read_text_file(js), nullptr, false);
    if (j.is_object() && j.contains("backend")) {
      rep.device = j["backend"].get<std::string>();
      break;
    }
  }
  auto write = [&](const std::string& name, const std::string& text) {
    std::ofstream f(o.out + "/" + name);
    if (!f) fail("bench-matrix: cannot write ", o.out, "/", name);
    f << text;
  };
  const std::string md = matrix_markdown(rep);
  write("matrix.json", matrix_json(rep) + "\n");
  write("matrix.md", md);
  write("matrix.svg", matrix_svg(rep));
  std::cout << md;
  std::fprintf(stderr, "bench-matrix: done in %.1f s; %s/matrix.{md,svg,json}, children's logs in %s/logs\n",
               seconds_since(t0), o.out.c_str(), o.out.c_str());
}

}  // namespace

void register_bench_matrix(CLI::App& app) {
  auto o = std::make_shared<MatrixOptions>();
  CLI::App* cmd = app.add_subcommand(
      "bench-matrix", "Hybrid vs transformer on one engine: throughput and latency per model × streams × context "
                      "(decode at depth and through the server), as a markdown table and an SVG chart");
  cmd->add_option("--models", o->models, "Comma-separated presets")->capture_default_str();
  cmd->add_option("--streams", o->streams, "Concurrent streams (requests sent at once)")->capture_default_str();
  cmd->add_option("--contexts", o->contexts, "Context lengths (prompt tokens)")->capture_default_str();
  cmd->add_option("--device", o->device, "cpu, cuda or auto")->capture_default_str();
  cmd->add_option("--modes", o->modes,
                  "depth (bamba bench decodeS@C over a synthetic cache), serve (bamba serve + bench-serve), or both")
      ->capture_default_str();
  cmd->add_option("--output-len", o->output_len, "Output tokens per served request")->capture_default_str()->check(CLI::Range(2, 1 << 20));
  cmd->add_option("--depth-steps", o->depth_steps, "Decode steps timed per depth cell")->capture_default_str()->check(CLI::Range(1, 100000));
  cmd->add_option("--serve-max-tokens", o->serve_max_tokens,
                  "Serve only cells whose prompts total at most this many tokens (the rest: depth only)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--cell-cap", o->cell_cap, "Seconds per served cell (bench-serve --max-duration)")->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--cache-memory", o->cache_gib, "GiB of state slots + KV pages per model (server and depth bench)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--max-num-batched-tokens", o->max_batched_tokens, "The server's tokens per step")->capture_default_str()->check(CLI::Range(1, 1 << 20));
  cmd->add_option("--start-timeout", o->start_timeout, "Seconds a server may take to start")->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--depth-timeout", o->depth_timeout, "Seconds the depth bench of one model may take")->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--max-total", o->max_total, "Seconds for the whole matrix; cells left when it is spent are "
                                                "reported as not run")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--out,-o", o->out, "Folder for matrix.{md,svg,json}, the cells' JSON and logs/")->capture_default_str();
  cmd->callback([o] { run(*o); });
}

}  // namespace bamba::cli
