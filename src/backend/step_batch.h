// StepBatch: everything one forward step computes, for any mix of prefills, prefill chunks and decodes.
// Tokens of all sequences are flattened (varlen, no padding); sequence s owns rows [seq_start[s], seq_start[s+1]).
#pragma once
#include <cstdint>
#include <span>
#include <vector>

namespace bamba {

struct StepBatch {
  std::vector<int32_t> tokens;       // [T]
  std::vector<int32_t> positions;    // [T]   RoPE positions (past_len + i unless the caller says otherwise)
  std::vector<int32_t> seq_start;    // [S+1] cu_seqlens
  std::vector<int32_t> past_len;     // [S]   tokens already in the cache (0 = fresh: zero Mamba state)
  // [S] Mamba state slot; -1: none — the sequence starts from a zero state (past 0) and its state after the step
  // is not kept (training steps: every packed document would otherwise take a slot of state no one reads back).
  std::vector<int32_t> state_slot;
  std::vector<int32_t> block_table;  // [S, max_blocks] KV page ids, -1 past the end
  int32_t max_blocks = 0;
  std::vector<int32_t> logit_rows;   // rows of [0, T) whose logits are wanted, in output order
  // [T] or empty (= all -1): a state slot that receives the Mamba state (conv window + SSM state) as it is right
  // after token t, besides the sequence's own slot getting the state after its last token. Speculative decoding
  // keeps the state after every draft position this way, so a rejected draft rolls back by one slot copy.
  std::vector<int32_t> state_after;

  int32_t n_tokens() const { return int32_t(tokens.size()); }
  int32_t n_seqs() const { return int32_t(past_len.size()); }
  int32_t seq_len(int32_t s) const { return seq_start[size_t(s) + 1] - seq_start[size_t(s)]; }
  int32_t max_seq_len() const;  // longest new-token run of any sequence

  // Appends sequence s: new tokens, how many it already has in the cache, its state slot and KV pages.
  // all_logits: logits for every new token (scoring/echo) instead of only the last.
  void add(std::span<const int32_t> new_tokens, int32_t past, int32_t slot, std::span<const int32_t> blocks,
           bool all_logits = false);
  // The same with no logit rows: the caller appends the rows it wants (scoring picks arbitrary positions).
  void add_tokens(std::span<const int32_t> new_tokens, int32_t past, int32_t slot, std::span<const int32_t> blocks);
  // Token t's state goes to `slot` too (see state_after).
  void keep_state_after(int32_t t, int32_t slot);
  int32_t state_after_slot(int32_t t) const { return state_after.empty() ? -1 : state_after[size_t(t)]; }
  bool keeps_states() const;  // any state_after slot set
  void clear();
};

}  // namespace bamba
