// HybridCache: the per-sequence state of a hybrid model, in two pools sized once at start-up.
// - State slots (Mamba layers): per slot and Mamba layer a conv window [K-1, CD] and an SSM state [nh, P, N],
//   fixed size whatever the sequence length; the conv window is fp32, the SSM state fp32 by default or bf16
//   (CacheSizes::ssm_state_dtype: halves the state traffic of big decode batches; CUDA backend only).
// - KV pages (attention layers): fixed-size blocks of block_size tokens, [n_blocks, block_size, nkv, dh] per
//   layer; a sequence owns a list of blocks (its row of StepBatch::block_table).
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "backend/backend.h"
#include "model/config.h"

namespace bamba {

struct CacheSizes {
  int32_t n_slots = 1;
  int32_t n_blocks = 0;
  int32_t block_size = 16;
  DType ssm_state_dtype = DType::F32;  // F32 or BF16 (the CPU backend's ssd needs F32)
};

// What one sequence holds in the cache.
struct SeqCache {
  int32_t slot = -1;
  std::vector<int32_t> blocks;
  int32_t len = 0;  // tokens whose state is in the cache
};

// A number no other HybridCache or Workspace of this process has had (their `uid`s): addresses are reused.
uint64_t next_buffer_uid();

class HybridCache {
 public:
  HybridCache(const ModelConfig& cfg, Backend& be, CacheSizes sizes);
  ~HybridCache();
  HybridCache(const HybridCache&) = delete;
  HybridCache& operator=(const HybridCache&) = delete;

  // Sizes that hold `n_seqs` sequences of up to `max_len` tokens each.
  static CacheSizes sizes_for(const ModelConfig& cfg, int32_t n_seqs, int32_t max_len, int32_t block_size = 16);
  static size_t bytes_per_slot(const ModelConfig& cfg, DType ssm_state_dtype = DType::F32);
  // The KV pages hold the backend's activation dtype (bf16 on the GPU by default); F32 counts the largest case.
  static size_t bytes_per_block(const ModelConfig& cfg, int32_t block_size, DType kv_dtype = DType::F32);

  const CacheSizes& sizes() const { return sizes_; }
  uint64_t uid() const { return uid_; }  // unique in the process, unlike its address (CUDA graph keys)
  Backend& backend() const { return be_; }
  Tensor conv_state(int64_t mamba_index) const { return conv_[size_t(mamba_index)]; }  // [n_slots, K-1, CD]
  Tensor ssm_state(int64_t mamba_index) const { return ssm_[size_t(mamba_index)]; }    // [n_slots, nh, P, N]
  Tensor k_pages(int64_t attn_index) const { return k_[size_t(attn_index)]; }          // [n_blocks, bs, nkv, dh]
  Tensor v_pages(int64_t attn_index) const { return v_[size_t(attn_index)]; }

  // Gives seq a state slot (if it has none; with_state false: none, for a step that keeps no state, StepBatch's
  // slot -1) and enough pages for new_len tokens. False (and nothing changed) if the pools cannot; the caller
  // then preempts or waits.
  bool reserve(SeqCache& seq, int32_t new_len, bool with_state = true);
  void release(SeqCache& seq);  // returns its slot and pages at once (a shared page when its last holder goes)
  // dst (empty) becomes a copy of src's cached state: a new slot with src's conv window and SSM state copied,
  // src's full KV pages shared (never written again: new tokens go to later rows) and its partly filled last page
  // copied. O(state size), independent of the sequence length. False (nothing changed) if the pools cannot.
  bool fork(const SeqCache& src, SeqCache& dst);
  // Rolls the KV side of seq back to len tokens (rows past a length are never read): the pages past the one that
  // holds row len - 1 go back to the pool. The Mamba state is the caller's (copy_state from a snapshot).
  void truncate(SeqCache& seq, int32_t len);
  // Pieces for the prefix cache (engine/prefix_cache.h), which holds pages and state snapshots of its own:
  // a page is freed when its last holder (sequence or prefix cache) lets go of it.
  void retain_block(int32_t block) { ++block_refs_[size_t(block)]; }
  void release_block(int32_t block);
  int32_t block_refs(int32_t block) const { return block_refs_[size_t(block)]; }
  int32_t take_slot();  // a free state slot, or -1
  void give_slot(int32_t slot) { free_slots_.push_back(slot); }
  // The Mamba state (conv window + SSM state) of slot src copied into slot dst: a snapshot to roll a sequence back
  // to (speculative decoding, prefix-cache snapshots). KV pages need none: rows past a sequence's length are never read.
  void copy_state(int32_t src_slot, int32_t dst_slot);
  int32_t free_slots() const { return int32_t(free_slots_.size()); }
  int32_t free_blocks() const { return int32_t(free_blocks_.size()); }
  int32_t blocks_for(int32_t len) const { return (len + sizes_.block_size - 1) / sizes_.block_size; }
  bool has_attention() const { return !k_.empty(); }
  // Tensor parallelism in one process (model/tensor_parallel.h): the other ranks' caches, with the same sizes. They
  // follow this one: its slots and pages are the ones used, and copy_state and fork copy in them too.
  std::vector<std::unique_ptr<HybridCache>>& mirrors() { return mirrors_; }
  const std::vector<std::unique_ptr<HybridCache>>& mirrors() const { return mirrors_; }

 private:
  Backend& be_;
  CacheSizes sizes_;
  uint64_t uid_;
  std::vector<Tensor> conv_, ssm_, k_, v_;
  std::vector<int32_t> free_slots_, free_blocks_;  // stacks; lowest ids handed out first
  std::vector<int32_t> block_refs_;                // holders of each page (fork shares full pages)
  std::vector<std::unique_ptr<HybridCache>> mirrors_;
  void copy_page(int32_t src, int32_t dst);  // KV page src -> dst in every attention layer, here and in the mirrors
};

}  // namespace bamba
