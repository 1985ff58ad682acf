#include "backend/step_batch.h"

#include <algorithm>

#include "core/error.h"

namespace bamba {

int32_t StepBatch::max_seq_len() const {
  int32_t m = 0;
  for (int32_t s = 0; s < n_seqs(); ++s) m = std::max(m, seq_len(s));
  return m;
}

void StepBatch::add(std::span<const int32_t> new_tokens, int32_t past, int32_t slot,
                    std::span<const int32_t> blocks, bool all_logits) {
  const int32_t t0 = n_tokens(), n = int32_t(new_tokens.size());
  add_tokens(new_tokens, past, slot, blocks);
  for (int32_t i = all_logits ? 0 : n - 1; i < n; ++i) logit_rows.push_back(t0 + i);
}

void StepBatch::add_tokens(std::span<const int32_t> new_tokens, int32_t past, int32_t slot,
                           std::span<const int32_t> blocks) {
  BAMBA_CHECK(slot >= 0 || past == 0, "step batch: a sequence with ", past,
              " tokens in the cache needs its state slot (slot -1 is only for fresh sequences)");
  if (seq_start.empty()) seq_start.push_back(0);
  for (size_t i = 0; i < new_tokens.size(); ++i) {
    tokens.push_back(new_tokens[i]);
    positions.push_back(past + int32_t(i));
  }
  seq_start.push_back(n_tokens());
  if (!state_after.empty()) state_after.resize(size_t(n_tokens()), -1);
  past_len.push_back(past);
  state_slot.push_back(slot);
  // Re-pad the table if this sequence needs more columns than the others.
  int32_t nb = int32_t(blocks.size());
  if (nb > max_blocks) {
    std::vector<int32_t> t(size_t(n_seqs()) * size_t(nb), -1);
    for (int32_t s = 0; s + 1 < n_seqs(); ++s)
      std::copy_n(block_table.begin() + s * max_blocks, max_blocks, t.begin() + s * nb);
    block_table.swap(t);
    max_blocks = nb;
  } else {
    block_table.resize(size_t(n_seqs()) * size_t(max_blocks), -1);
  }
  std::copy(blocks.begin(), blocks.end(), block_table.begin() + (n_seqs() - 1) * max_blocks);
}

void StepBatch::keep_state_after(int32_t t, int32_t slot) {
  state_after.resize(size_t(n_tokens()), -1);
  state_after[size_t(t)] = slot;
}

bool StepBatch::keeps_states() const {
  return std::any_of(state_after.begin(), state_after.end(), [](int32_t s) { return s >= 0; });
}

void StepBatch::clear() { *this = StepBatch{}; }

}  // namespace bamba
