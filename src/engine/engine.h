// Engine: continuous batching. A thread runs the step loop: admit submitted requests, drop cancelled ones, ask
// the Scheduler for the next batch (decodes + prompt chunks), run one forward over it, sample every row in one
// call, detokenize (TextStream) and push each request's new tokens to its Channel. Requests free their state
// slot and KV pages the step they finish, are cancelled or fail.
#pragma once
#include <condition_variable>
#include <functional>
#include <future>
#include <string>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <thread>
#include <unordered_map>
#include <vector>

#include "engine/engine_stats.h"
#include "engine/logits_processors.h"
#include "model/hybrid_cache.h"
#include "engine/request.h"
#include "engine/scheduler.h"
#include "engine/text_stream.h"
#include "model/hybrid.h"
#include "tokenizer/tokenizer.h"

namespace bamba {

class Drafter;

// How a sequence's state goes back to the last accepted token after a verification step (docs/serving.md).
enum class SpecRollback : uint8_t {
  Recompute,    // snapshot the state before the step; on a rejection restore it and re-feed the accepted tokens
                // (in the sequence's next step, without drafts, batched with everything else)
  PerPosition,  // the step keeps the state after every draft position (StepBatch::state_after); one copy
};

struct EngineOptions {
  int32_t max_model_len = 8192;  // prompt + generated tokens per sequence
  SchedulerConfig sched;
  CacheSizes cache;              // n_slots >= sched.max_num_seqs; n_blocks hold at least one max_model_len sequence
  std::vector<int32_t> eos;      // end-of-text ids (ignored with RequestParams::ignore_eos)
  int32_t max_logprobs = 20;     // most top logprobs a request may ask for
  bool fork_choices = true;      // n > 1 choices of one prompt (submitted together) fork one prefill
  int32_t max_sessions = 0;      // kept sequence states (RequestParams::session); their slots are extra
  // Speculative decoding (null drafter: off): each decoding sequence gets up to num_speculative_tokens drafts,
  // verified in its next step. The rollback's state slots come from the pool's spare slots (CacheSizes::n_slots
  // beyond the sequences, snapshots and sessions; speculative_slots() of them): a sequence that finds none
  // that step decodes without drafts. Requests with RequestParams::speculative false or a grammar do not draft.
  Drafter* drafter = nullptr;
  int32_t num_speculative_tokens = 4;
  SpecRollback spec_rollback = SpecRollback::Recompute;
  int32_t speculative_max_seqs = 0;  // sequences that may verify drafts in one step (their rollback slots); 0: any
};

// A kept conversation: its tokens and its cache state (tokens[0, cache.len) computed).
struct SessionInfo {
  std::string id;
  int32_t tokens = 0, cached = 0;
};

class Engine {
 public:
  // State slots the rollback needs for max_num_seqs speculating sequences: one snapshot each (recompute) or
  // one per draft position (per-position).
  static int32_t speculative_slots(int32_t max_num_seqs, int32_t num_tokens, SpecRollback r) {
    return max_num_seqs * (r == SpecRollback::Recompute ? 1 : num_tokens);
  }
  // The KV pages that fit `cache_bytes` after the state slots of max_num_seqs sequences; at least enough pages
  // for one sequence of max_model_len. num_blocks > 0 sets the number of pages directly (tests force
  // preemption with it). extra_slots: state slots beyond max_num_seqs, for the prefix cache's snapshots
  // (SchedulerConfig::prefix_snapshots) and the sessions (max_sessions), paid from cache_bytes first.
  // kv_dtype: what the pages hold (the backend's activation dtype).
  static CacheSizes cache_sizes(const ModelConfig& cfg, int32_t max_num_seqs, int32_t max_model_len,
                                double cache_bytes, int32_t num_blocks = 0, int32_t extra_slots = 0,
                                DType kv_dtype = DType::F32);

  // tok may be null: outputs then carry token ids and no text (stop strings unsupported).
  Engine(const HybridModel& model, const Tokenizer* tok, EngineOptions opt);
  ~Engine();  // aborts what is still running and joins the thread
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Checks the parameters (Error with a user-facing message) and queues the request; its outputs arrive on
  // `ch` tagged with `index`.
  std::shared_ptr<Request> submit(RequestParams p, std::shared_ptr<Channel> ch, int32_t index = 0);
  // Several requests at once (indices 0, 1, ...), all checked first: the engine sees them in one step, so the
  // choices of one prompt (n > 1) fork one prefill (EngineOptions::fork_choices).
  std::vector<std::shared_ptr<Request>> submit_all(std::vector<RequestParams> ps, std::shared_ptr<Channel> ch);
  void validate(const RequestParams& p) const;  // what submit checks, without submitting

  // Sessions (docs/serving.md): run on the engine thread between steps; Error with a user-facing message.
  std::vector<SessionInfo> sessions();
  void fork_session(const std::string& src, const std::string& dst);  // dst: pages shared, state copied
  bool delete_session(const std::string& id);                          // false if there is none
  std::string save_session(const std::string& id);                     // model/state_file.h bytes
  void load_session(const std::string& id, const std::string& bytes);  // replaces one of that id

  EngineStats stats() const;
  bool alive() const;  // false once the step loop has died
  const EngineOptions& options() const { return opt_; }
  const HybridCache& cache() const { return cache_; }

 private:
  struct Live;  // engine-thread state of one request
  struct Session {
    SeqCache cache;
    std::vector<int32_t> tokens;
    uint64_t used = 0;
  };
  // Runs f on the engine thread (between steps) and returns its result or rethrows its exception.
  template <class F>
  auto on_engine_thread(F f) -> decltype(f());
  void keep_session(const std::string& id, Session s);  // evicts the least recently used beyond max_sessions
  void drop_session(const std::string& id);
  Session& session(const std::string& id);  // Error if there is none
  void loop();
  void step();
  void update_gauges();
  void finish(Live& l, FinishReason why, RequestOutput out);
  // Appends a drawn token to l's sequence and output (text, logprobs from host row `row` when asked, stop
  // conditions, grammar): the reason the request ends with it, None if it goes on (Abort: out.error says why).
  FinishReason emit(Live& l, Sequence& s, int32_t tok, const float* row, RequestOutput& out);
  bool speculates(const Live& l) const;  // whether the request drafts (server option, request, constraints)
  void propose_drafts();                 // Sequence::draft of every decoding sequence that speculates
  TokenLogprob logprob(const float* row, int32_t id, int32_t top_k) const;
  // Appends l's processing of logits row `row` (penalties, bias, min_p, grammar mask); an error message when its
  // grammar allows no token.
  // history: the tokens the penalties look at, l's own when null (a draft row: l's plus the drafts before it).
  std::string add_processing(Live& l, int32_t row, LogitsProcessing& proc, const TokenHistory* history = nullptr);

  const HybridModel& model_;
  const Tokenizer* tok_;
  EngineOptions opt_;
  HybridCache cache_;
  Workspace ws_;
  Scheduler sched_;
  std::vector<float> host_logits_;  // [R, V]

  mutable std::mutex mu_;  // guards inbox_, stop_, stats_, alive_
  std::condition_variable cv_;
  std::vector<std::shared_ptr<Request>> inbox_;
  bool stop_ = false, alive_ = true;
  EngineStats stats_;

  std::vector<std::function<void()>> tasks_;  // guarded by mu_: on_engine_thread's work
  std::unordered_map<int64_t, std::unique_ptr<Live>> live_;  // engine thread only
  std::unordered_map<std::string, Session> sessions_;        // engine thread only
  uint64_t session_clock_ = 0;
  int32_t idle_pages_ = 0;  // the prefix cache's idle pages, counted at most every 100 ms (update_gauges)
  std::chrono::steady_clock::time_point idle_counted_{};
  int64_t next_id_ = 0;
  std::thread thread_;
};

}  // namespace bamba
