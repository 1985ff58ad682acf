// EngineStats: what the engine counts for /metrics (vLLM's metric set): gauges of the moment, counters since
// start, and latency histograms with fixed buckets.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace bamba {

struct Histogram {
  std::vector<double> bounds;  // upper bounds of the buckets; +Inf is implicit
  std::vector<uint64_t> counts = std::vector<uint64_t>(bounds.size() + 1, 0);
  double sum = 0;
  uint64_t count = 0;

  void observe(double v) {
    size_t i = 0;
    while (i < bounds.size() && v > bounds[i]) ++i;
    ++counts[i];
    sum += v;
    ++count;
  }
};

inline std::vector<double> latency_buckets() {
  return {0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0};
}

struct EngineStats {
  // gauges
  int32_t num_running = 0, num_waiting = 0;
  double kv_cache_usage = 0, state_slots_usage = 0;  // fractions in [0, 1]
  int32_t free_slots = 0, free_blocks = 0;           // for leak checks
  // counters
  uint64_t prompt_tokens = 0, generation_tokens = 0, preemptions = 0, steps = 0;
  std::map<std::string, uint64_t> finished;  // by finish reason
  // prefix cache (engine/prefix_cache.h): prompt tokens looked up when sequences start, and of those restored
  uint64_t prefix_cache_queries = 0, prefix_cache_hits = 0;
  uint64_t prefix_cache_evicted_pages = 0, prefix_cache_evicted_snapshots = 0;
  int32_t prefix_cache_pages = 0, prefix_cache_snapshots = 0;  // gauges: what it holds
  uint64_t forks = 0;
  int32_t sessions = 0;       // kept sessions (gauge)
  uint64_t session_hits = 0;  // prompt tokens not computed because a session's state held them  // n > 1 choices that forked another's prefill
  // speculative decoding: verification steps of one sequence with drafts, the tokens drafted and, of those, accepted
  uint64_t spec_drafts = 0, spec_draft_tokens = 0, spec_accepted_tokens = 0;
  // histograms (seconds)
  Histogram ttft{latency_buckets()}, itl{latency_buckets()}, e2e{latency_buckets()}, queue{latency_buckets()};
};

}  // namespace bamba
