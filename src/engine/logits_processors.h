// The per-request side of logits processing: what a request's penalties, logit_bias and min_p turn into for one
// logits row (LogitsRow + sparse LogitEdits, backend.h), from the tokens it has seen. The grammar mask of
// structured output is added by the engine (it needs the eos ids).
#pragma once
#include <cstdint>
#include <unordered_map>
#include <vector>

#include "backend/backend.h"
#include "engine/request.h"

namespace bamba {

// The tokens the penalties look at: the distinct prompt tokens (kept only when the repetition penalty is on) and
// how often each token was generated.
struct TokenHistory {
  explicit TokenHistory(const RequestParams& p);
  void add(int32_t token) { ++out_counts[token]; }
  std::vector<int32_t> prompt_set;
  std::unordered_map<int32_t, int32_t> out_counts;
};

// Whether the request asks for any processing of its logits (min_p only counts when sampling).
bool needs_logits_processing(const RequestParams& p);

// The row's processing (mask_offset left at -1); its edits are appended to `edits`, one per distinct token.
LogitsRow logits_row(const RequestParams& p, const TokenHistory& h, int32_t row, std::vector<LogitEdit>& edits);

}  // namespace bamba
