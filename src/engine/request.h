// Request: what a client asks the engine for (RequestParams), what the engine sends back (RequestOutput, in
// order, through a Channel) and the handle both sides share (cancel). One Request is one sequence: a server
// request with n choices or several prompts submits several Requests that share one Channel.
#pragma once
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "backend/backend.h"  // SamplingParams
#include "structured/token_grammar.h"

namespace bamba {

enum class FinishReason : uint8_t { None, Stop, Length, Abort };
inline const char* finish_reason_name(FinishReason r) {
  switch (r) {
    case FinishReason::Stop: return "stop";
    case FinishReason::Length: return "length";
    case FinishReason::Abort: return "abort";
    default: return "none";
  }
}

struct RequestParams {
  std::vector<int32_t> prompt;  // token ids, not empty
  int32_t max_tokens = 16;      // new tokens; 0 = only score the prompt
  // The draw for generated token i uses a seed derived from (sampling.seed, i), so a sequence recomputed after
  // preemption draws the same tokens.
  SamplingParams sampling;
  // Logits processing before the draw (Backend::process_logits, vLLM's semantics): penalties over the output
  // tokens (presence, frequency) and over prompt + output (repetition; 1 = off), min_p (0 = off; ignored when
  // greedy), logit_bias (distinct ids).
  float presence_penalty = 0.f, frequency_penalty = 0.f, repetition_penalty = 1.f, min_p = 0.f;
  std::vector<std::pair<int32_t, float>> logit_bias;
  std::vector<int32_t> allowed_token_ids;  // not empty: only these may be drawn (vLLM's allowed_token_ids)
  // Structured output: only tokens the grammar allows are drawn; an eos id only where the output is complete,
  // and the request stops (finish "stop") as soon as nothing but eos could follow. Null: unconstrained.
  std::shared_ptr<TokenGrammar> grammar;
  std::vector<std::string> stop;  // on the detokenized text; excluded from the output
  bool include_stop_str = false;
  std::vector<int32_t> stop_token_ids;
  bool ignore_eos = false;
  bool skip_special = true;
  int32_t logprobs = -1;         // per generated token: -1 none, else the chosen one + the top k
  int32_t prompt_logprobs = -1;  // per prompt token (echo / scoring): -1 none, else the chosen one + the top k
  // Non-empty: the sequence's state is kept under this id when the request finishes, and a request naming a
  // kept session whose prompt extends the session's tokens starts from its state (Engine sessions).
  std::string session;
  // false: decode without drafts even when the server speculates (--speculative)
  bool speculative = true;
};

struct TokenLogprob {
  int32_t id = 0;
  float logprob = 0;                           // NaN for the first prompt token (nothing predicts it)
  std::vector<std::pair<int32_t, float>> top;  // the k most likely, best first
};

// One message from the engine about one request; concatenating them gives the whole result.
struct RequestOutput {
  int32_t index = 0;                          // which request of the channel (choice / prompt)
  std::vector<TokenLogprob> prompt_logprobs;  // sent once, complete, before any token
  std::vector<int32_t> tokens;                // new tokens
  std::vector<TokenLogprob> logprobs;         // one per new token, when asked for
  std::string text;                           // new text (complete UTF-8, stop strings honoured)
  FinishReason finish = FinishReason::None;   // set on the last message
  std::string error;                          // with finish == Abort when the engine failed the request
  int32_t prompt_tokens = 0;
};

// A queue of outputs that one client thread waits on (several requests may push into it).
class Channel {
 public:
  void push(RequestOutput o) {
    {
      std::lock_guard lk(mu_);
      q_.push_back(std::move(o));
    }
    cv_.notify_one();
  }
  // The next output, or nothing after `timeout`.
  std::optional<RequestOutput> pop(std::chrono::milliseconds timeout) {
    std::unique_lock lk(mu_);
    if (!cv_.wait_for(lk, timeout, [&] { return !q_.empty(); })) return std::nullopt;
    RequestOutput o = std::move(q_.front());
    q_.pop_front();
    return o;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<RequestOutput> q_;
};

class Request {
 public:
  Request(RequestParams p, std::shared_ptr<Channel> ch, int32_t index)
      : params(std::move(p)), channel(std::move(ch)), index(index), arrival(std::chrono::steady_clock::now()) {}
  const RequestParams params;
  const std::shared_ptr<Channel> channel;
  const int32_t index;
  const std::chrono::steady_clock::time_point arrival;

  // From any thread: the engine frees the sequence at its next step and sends a last output (Abort).
  void cancel() { cancelled_.store(true, std::memory_order_relaxed); }
  bool cancelled() const { return cancelled_.load(std::memory_order_relaxed); }

 private:
  std::atomic<bool> cancelled_{false};
};

}  // namespace bamba
