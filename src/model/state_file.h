// A sequence's cache state as bytes: its tokens, the Mamba state (conv window + SSM state per Mamba layer) and the
// KV rows (per attention layer) of the tokens it has seen. `bamba generate --save-state/--load-state` and the
// server's sessions (docs/serving.md) write and read it. Restoring it and continuing is the same computation as
// never having stopped: the state is the whole of what the model remembers.
//
// Format (little-endian; docs/serving.md):
//   "BAMBAST1"                                  8 bytes magic
//   u32 version (1)
//   u32 length + bytes: the model_type ("bamba", "mamba2", ...)
//   u32 x 13 model shape: layers, hidden, vocab, mamba layers, attention layers, conv dim, d_conv, mamba heads,
//            mamba head dim, d_state, kv heads, head dim, and a bit mask of the attention layers (first 32)
//   u32 n_tokens, u32 len                       tokens; the state covers tokens[0, len) (len <= n_tokens: the
//                                               rest are fed first when the sequence continues)
//   i32 tokens[n_tokens]
//   per Mamba layer: f32 conv window [K-1, CD], f32 SSM state [nh, P, N]
//   per attention layer: f32 K rows [len, nkv, dh], f32 V rows [len, nkv, dh]
//   u64 checksum (FNV-1a of every byte before it)
#pragma once
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "model/config.h"
#include "model/hybrid_cache.h"

namespace bamba {

// The bytes of seq's state (seq.len tokens cached) with its tokens (tokens.size() >= seq.len).
std::string encode_state(const ModelConfig& cfg, HybridCache& cache, const SeqCache& seq,
                         std::span<const int32_t> tokens);
// Reads bytes written by encode_state into seq (holding nothing: it gets a slot and pages) and returns the
// tokens. Error naming `what` (a file name, a session) and the field if the bytes are not a state of this
// model's shape, are cut short or corrupted, or the cache has no room (nothing changed then).
std::vector<int32_t> decode_state(std::string_view bytes, const std::string& what, const ModelConfig& cfg,
                                  HybridCache& cache, SeqCache& seq);

void save_state_file(const std::string& path, const ModelConfig& cfg, HybridCache& cache, const SeqCache& seq,
                     std::span<const int32_t> tokens);
std::vector<int32_t> load_state_file(const std::string& path, const ModelConfig& cfg, HybridCache& cache,
                                     SeqCache& seq);

}  // namespace bamba
