#include "engine/logits_processors.h"

#include <algorithm>
#include <cmath>

namespace bamba {

TokenHistory::TokenHistory(const RequestParams& p) {
  if (p.repetition_penalty == 1.f) return;
  prompt_set = p.prompt;
  std::sort(prompt_set.begin(), prompt_set.end());
  prompt_set.erase(std::unique(prompt_set.begin(), prompt_set.end()), prompt_set.end());
}

bool needs_logits_processing(const RequestParams& p) {
  return p.presence_penalty != 0.f || p.frequency_penalty != 0.f || p.repetition_penalty != 1.f ||
         (p.min_p > 0.f && p.sampling.temperature > 0.f) || !p.logit_bias.empty() || p.grammar ||
         !p.allowed_token_ids.empty();
}

LogitsRow logits_row(const RequestParams& p, const TokenHistory& h, int32_t row, std::vector<LogitEdit>& edits) {
  LogitsRow r;
  r.row = row;
  r.repetition_penalty = p.repetition_penalty;
  // p_j >= min_p * p_max  <=>  x_j / T - x_max / T >= ln(min_p)  <=>  x_j >= x_max + T ln(min_p)
  if (p.min_p > 0.f && p.sampling.temperature > 0.f) r.min_p_shift = p.sampling.temperature * std::log(p.min_p);
  r.edit_begin = int32_t(edits.size());
  std::unordered_map<int32_t, size_t> at;  // token -> its edit
  auto edit = [&](int32_t id) -> LogitEdit& {
    auto [it, fresh] = at.try_emplace(id, edits.size());
    if (fresh) edits.push_back({id, 0, 0.f, 0.f});
    return edits[it->second];
  };
  for (auto& [id, b] : p.logit_bias) edit(id).bias += b;
  if (p.repetition_penalty != 1.f) {
    for (int32_t id : h.prompt_set) edit(id).repeat = 1;
    for (auto& [id, n] : h.out_counts) edit(id).repeat = 1;
  }
  if (p.presence_penalty != 0.f || p.frequency_penalty != 0.f)
    for (auto& [id, n] : h.out_counts) edit(id).sub = p.frequency_penalty * float(n) + p.presence_penalty;
  r.edit_count = int32_t(edits.size()) - r.edit_begin;
  return r;
}

}  // namespace bamba
