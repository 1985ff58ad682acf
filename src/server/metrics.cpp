#include "server/metrics.h"

#include <sstream>

namespace bamba {

namespace {

// Label values escape backslash, quote and newline.
std::string escape(const std::string& v) {
  std::string o;
  for (char c : v) {
    if (c == '\\' || c == '"') o += '\\';
    if (c == '\n') {
      o += "\\n";
      continue;
    }
    o += c;
  }
  return o;
}

class Writer {
 public:
  explicit Writer(const std::string& model) : label_("model_name=\"" + escape(model) + "\"") {}
  void gauge(const char* name, const char* help, double v) { one(name, help, "gauge", v); }
  void counter(const char* name, const char* help, double v) { one(name, help, "counter", v); }
  void counter_by(const char* name, const char* help, const char* key, const std::map<std::string, uint64_t>& v) {
    head(name, help, "counter");
    for (auto& [k, n] : v) os_ << "bamba:" << name << "{" << label_ << "," << key << "=\"" << escape(k) << "\"} " << n << "\n";
  }
  void histogram(const char* name, const char* help, const Histogram& h) {
    head(name, help, "histogram");
    uint64_t cum = 0;
    for (size_t i = 0; i <= h.bounds.size(); ++i) {
      cum += h.counts[i];
      os_ << "bamba:" << name << "_bucket{" << label_ << ",le=\"";
      if (i < h.bounds.size()) os_ << h.bounds[i];
      else os_ << "+Inf";
      os_ << "\"} " << cum << "\n";
    }
    os_ << "bamba:" << name << "_sum{" << label_ << "} " << h.sum << "\n";
    os_ << "bamba:" << name << "_count{" << label_ << "} " << h.count << "\n";
  }
  std::string str() const { return os_.str(); }

 private:
  void head(const char* name, const char* help, const char* type) {
    os_ << "# HELP bamba:" << name << " " << help << "\n# TYPE bamba:" << name << " " << type << "\n";
  }
  void one(const char* name, const char* help, const char* type, double v) {
    head(name, help, type);
    os_ << "bamba:" << name << "{" << label_ << "} " << v << "\n";
  }
  std::string label_;
  std::ostringstream os_;
};

}  // namespace

std::string prometheus_text(const EngineStats& s, const std::string& model_name) {
  Writer w(model_name);
  w.gauge("num_requests_running", "Requests in the running batch.", s.num_running);
  w.gauge("num_requests_waiting", "Requests waiting to be scheduled.", s.num_waiting);
  w.gauge("kv_cache_usage_perc", "Fraction of KV-cache pages in use (1 = 100%).", s.kv_cache_usage);
  w.gauge("state_slots_usage_perc", "Fraction of Mamba state slots in use (1 = 100%).", s.state_slots_usage);
  w.counter("prompt_tokens_total", "Prompt tokens processed.", double(s.prompt_tokens));
  w.counter("generation_tokens_total", "Tokens generated.", double(s.generation_tokens));
  w.counter_by("request_success_total", "Finished requests by finish reason.", "finished_reason", s.finished);
  w.counter("num_preemptions_total", "Sequences preempted (recomputed later).", double(s.preemptions));
  w.counter("prefix_cache_queries_total", "Prompt tokens looked up in the prefix cache when sequences start.",
            double(s.prefix_cache_queries));
  w.counter("prefix_cache_hits_total", "Prompt tokens restored from the prefix cache (not computed).",
            double(s.prefix_cache_hits));
  w.gauge("prefix_cache_hit_rate", "prefix_cache_hits_total / prefix_cache_queries_total (0 before any query).",
          s.prefix_cache_queries ? double(s.prefix_cache_hits) / double(s.prefix_cache_queries) : 0.0);
  w.gauge("prefix_cache_pages", "KV-cache pages the prefix cache holds.", s.prefix_cache_pages);
  w.gauge("prefix_cache_snapshots", "Mamba state snapshots the prefix cache holds.", s.prefix_cache_snapshots);
  w.counter_by("prefix_cache_evictions_total", "Prefix-cache entries evicted (least recently used first).", "kind",
               {{"page", s.prefix_cache_evicted_pages}, {"snapshot", s.prefix_cache_evicted_snapshots}});
  w.counter("forked_sequences_total", "Choices (n > 1) that forked the prefill of another instead of repeating it.",
            double(s.forks));
  w.gauge("num_sessions", "Kept sessions (sequence states held between requests).", s.sessions);
  w.counter("session_hits_total", "Prompt tokens restored from a session's state (not computed).",
            double(s.session_hits));
  w.counter("engine_steps_total", "Forward steps the engine ran (generated tokens per step: speculative decoding's gain).",
            double(s.steps));
  w.counter("spec_decode_num_drafts_total", "Verification steps of one sequence with draft tokens (--speculative).",
            double(s.spec_drafts));
  w.counter("spec_decode_num_draft_tokens_total", "Draft tokens proposed and verified.", double(s.spec_draft_tokens));
  w.counter("spec_decode_num_accepted_tokens_total", "Draft tokens the target model accepted.",
            double(s.spec_accepted_tokens));
  w.gauge("spec_decode_draft_acceptance_rate", "Accepted / drafted tokens since start (0 before any draft).",
          s.spec_draft_tokens ? double(s.spec_accepted_tokens) / double(s.spec_draft_tokens) : 0.0);
  w.histogram("time_to_first_token_seconds", "Time from arrival to the first token.", s.ttft);
  w.histogram("inter_token_latency_seconds", "Time between consecutive tokens of a request.", s.itl);
  w.histogram("e2e_request_latency_seconds", "Time from arrival to the end of a request.", s.e2e);
  w.histogram("request_queue_time_seconds", "Time from arrival to the first scheduled step.", s.queue);
  return w.str();
}

}  // namespace bamba
