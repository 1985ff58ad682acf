// Running requests through the continuous-batching Engine in tests: submit them all on one channel, collect each
// one's outputs until it finishes. Shared by the engine, prefix-cache, speculative and batch-invariance suites.
#pragma once
#include <chrono>
#include <string>
#include <vector>

#include "engine/engine.h"

namespace bamba::test {

struct EngineResult {
  std::vector<int32_t> tokens;
  std::vector<TokenLogprob> logprobs, prompt_logprobs;
  std::string text;
  FinishReason finish = FinishReason::None;
  std::string error;  // the request's error output, if any
};

// Submits ps[i] with index i and waits for every request to finish (a test failure after `timeout` without
// output). Output after a request's last one is a failure; so is an error output when errors_fail.
std::vector<EngineResult> run_all(Engine& e, const std::vector<RequestParams>& ps, bool errors_fail = true,
                                  std::chrono::seconds timeout = std::chrono::seconds(300));

}  // namespace bamba::test
