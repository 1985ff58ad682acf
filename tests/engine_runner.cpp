#include "engine_runner.h"

#include <gtest/gtest.h>

#include <memory>

namespace bamba::test {

std::vector<EngineResult> run_all(Engine& e, const std::vector<RequestParams>& ps, bool errors_fail,
                                  std::chrono::seconds timeout) {
  auto ch = std::make_shared<Channel>();
  for (size_t i = 0; i < ps.size(); ++i) e.submit(ps[i], ch, int32_t(i));
  std::vector<EngineResult> res(ps.size());
  for (size_t done = 0; done < ps.size();) {
    auto o = ch->pop(timeout);
    if (!o) {
      ADD_FAILURE() << "timed out";
      break;
    }
    EngineResult& r = res[size_t(o->index)];
    EXPECT_EQ(r.finish, FinishReason::None) << "output after the last one";
    if (errors_fail) {
      EXPECT_TRUE(o->error.empty()) << o->error;
    }
    r.tokens.insert(r.tokens.end(), o->tokens.begin(), o->tokens.end());
    r.logprobs.insert(r.logprobs.end(), o->logprobs.begin(), o->logprobs.end());
    if (!o->prompt_logprobs.empty()) r.prompt_logprobs = o->prompt_logprobs;
    r.text += o->text;
    if (!o->error.empty()) r.error = o->error;
    if (o->finish != FinishReason::None) {
      r.finish = o->finish;
      ++done;
    }
  }
  return res;
}

}  // namespace bamba::test
