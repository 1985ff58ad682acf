#include "model/hybrid_cache.h"

#include <algorithm>
#include <atomic>

#include "core/error.h"

namespace bamba {

uint64_t next_buffer_uid() {
  static std::atomic<uint64_t> next{1};
  return next++;
}

HybridCache::HybridCache(const ModelConfig& c, Backend& be, CacheSizes sizes)
    : be_(be), sizes_(sizes), uid_(next_buffer_uid()) {
  // n_slots 0: KV pages only, for steps whose sequences keep no state (the training step; StepBatch slot -1).
  BAMBA_CHECK(sizes.n_slots >= 0 && sizes.block_size >= 1 && sizes.n_blocks >= 0, "invalid cache sizes");
  BAMBA_CHECK(sizes.ssm_state_dtype == DType::F32 || sizes.ssm_state_dtype == DType::BF16,
              "the SSM state dtype must be fp32 or bf16");
  const int64_t CD = c.conv_dim(), W = c.mamba_d_conv - 1;
  for (int64_t i = 0; i < c.n_mamba_layers(); ++i) {
    conv_.push_back(be.alloc(DType::F32, {sizes.n_slots, W, CD}));
    ssm_.push_back(be.alloc(sizes.ssm_state_dtype, {sizes.n_slots, c.mamba_n_heads, c.mamba_d_head, c.mamba_d_state}));
  }
  for (int64_t i = 0; i < c.n_attention_layers(); ++i) {
    k_.push_back(be.alloc(be.activation_dtype(), {sizes.n_blocks, sizes.block_size, c.num_key_value_heads, c.head_dim}));
    v_.push_back(be.alloc(be.activation_dtype(), {sizes.n_blocks, sizes.block_size, c.num_key_value_heads, c.head_dim}));
  }
  for (int32_t i = sizes.n_slots - 1; i >= 0; --i) free_slots_.push_back(i);
  for (int32_t i = sizes.n_blocks - 1; i >= 0; --i) free_blocks_.push_back(i);
  block_refs_.assign(size_t(sizes.n_blocks), 0);
}

HybridCache::~HybridCache() {
  mirrors_.clear();
  for (auto* pool : {&conv_, &ssm_, &k_, &v_})
    for (Tensor& t : *pool) be_.release(t);
}

size_t HybridCache::bytes_per_slot(const ModelConfig& c, DType ssm_state_dtype) {
  return size_t(c.n_mamba_layers()) *
         (size_t((c.mamba_d_conv - 1) * c.conv_dim()) * 4 +
          size_t(c.mamba_n_heads * c.mamba_d_head * c.mamba_d_state) * dtype_size(ssm_state_dtype));
}

size_t HybridCache::bytes_per_block(const ModelConfig& c, int32_t block_size, DType kv_dtype) {
  return size_t(c.n_attention_layers()) * 2 * size_t(block_size * c.num_key_value_heads * c.head_dim) *
         dtype_size(kv_dtype);
}

CacheSizes HybridCache::sizes_for(const ModelConfig& c, int32_t n_seqs, int32_t max_len, int32_t block_size) {
  CacheSizes s;
  s.n_slots = n_seqs;
  s.block_size = block_size;
  s.n_blocks = c.n_attention_layers() ? n_seqs * ((max_len + block_size - 1) / block_size) : 0;
  return s;
}

bool HybridCache::reserve(SeqCache& seq, int32_t new_len, bool with_state) {
  const bool need_slot = with_state && seq.slot < 0;
  if (need_slot && free_slots_.empty()) return false;
  int32_t need_blocks = has_attention() ? blocks_for(new_len) - int32_t(seq.blocks.size()) : 0;
  if (need_blocks > int32_t(free_blocks_.size())) return false;
  if (need_slot) {
    seq.slot = free_slots_.back();
    free_slots_.pop_back();
  }
  for (int32_t i = 0; i < need_blocks; ++i) {
    seq.blocks.push_back(free_blocks_.back());
    block_refs_[size_t(free_blocks_.back())] = 1;
    free_blocks_.pop_back();
  }
  return true;
}

void HybridCache::release(SeqCache& seq) {
  if (seq.slot >= 0) free_slots_.push_back(seq.slot);
  for (auto it = seq.blocks.rbegin(); it != seq.blocks.rend(); ++it) release_block(*it);
  seq = SeqCache{};
}

void HybridCache::release_block(int32_t block) {
  BAMBA_CHECK(block_refs_[size_t(block)] > 0, "page ", block, " released more often than held");
  if (--block_refs_[size_t(block)] == 0) free_blocks_.push_back(block);
}

int32_t HybridCache::take_slot() {
  if (free_slots_.empty()) return -1;
  const int32_t s = free_slots_.back();
  free_slots_.pop_back();
  return s;
}

void HybridCache::copy_state(int32_t src_slot, int32_t dst_slot) {
  BAMBA_CHECK(src_slot >= 0 && src_slot < sizes_.n_slots && dst_slot >= 0 && dst_slot < sizes_.n_slots,
              "copy_state: slot out of range");
  for (size_t i = 0; i < conv_.size(); ++i) {
    be_.copy_slice(conv_[i], src_slot, dst_slot);  // [K-1, CD]
    be_.copy_slice(ssm_[i], src_slot, dst_slot);   // [nh, P, N]
  }
  for (auto& m : mirrors_) {  // each on its own device (a GPU backend's ops go to the current device's streams)
    m->be_.bind_thread();
    m->copy_state(src_slot, dst_slot);
  }
  if (!mirrors_.empty()) be_.bind_thread();
}

void HybridCache::copy_page(int32_t src, int32_t dst) {
  for (size_t i = 0; i < k_.size(); ++i) {
    be_.copy_slice(k_[i], src, dst);
    be_.copy_slice(v_[i], src, dst);
  }
  for (auto& m : mirrors_) {
    m->be_.bind_thread();
    m->copy_page(src, dst);
  }
  if (!mirrors_.empty()) be_.bind_thread();
}

void HybridCache::truncate(SeqCache& seq, int32_t len) {
  BAMBA_CHECK(len >= 0, "truncate: negative length ", len);
  const int32_t keep = has_attention() ? blocks_for(len) : 0;
  while (int32_t(seq.blocks.size()) > keep) {
    release_block(seq.blocks.back());
    seq.blocks.pop_back();
  }
  seq.len = std::min(seq.len, len);
}

bool HybridCache::fork(const SeqCache& src, SeqCache& dst) {
  BAMBA_CHECK(src.slot >= 0 && dst.slot < 0 && dst.blocks.empty(), "fork: the source must hold state, the target none");
  const int32_t bs = sizes_.block_size;
  const int32_t full = has_attention() ? src.len / bs : 0;
  const bool partial = has_attention() && src.len % bs != 0;
  if (free_slots_.empty() || (partial && free_blocks_.empty())) return false;
  dst.slot = take_slot();
  copy_state(src.slot, dst.slot);
  for (int32_t b = 0; b < full; ++b) {
    dst.blocks.push_back(src.blocks[size_t(b)]);
    ++block_refs_[size_t(src.blocks[size_t(b)])];
  }
  if (partial) {
    const int32_t page = free_blocks_.back();
    free_blocks_.pop_back();
    block_refs_[size_t(page)] = 1;
    copy_page(src.blocks[size_t(full)], page);
    dst.blocks.push_back(page);
  }
  dst.len = src.len;
  return true;
}

}  // namespace bamba
