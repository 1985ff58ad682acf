// Token shards: tokenized documents in one flat little-endian file, read in place with mmap (docs/data.md).
//
//   offset 0   header, 64 bytes:
//              char[8] magic "BAMBATOK" | u32 version (1) | u32 header bytes (64) | u32 vocab size
//              | u32 separator id (0xFFFFFFFF: none) | u64 token count | u64 document count
//              | u32 flags (version 2; 0 in version 1) | 20 zero bytes
//   offset 64  tokens: u32[token count]; then zero bytes up to a multiple of 8
//   then       document index: u64[document count + 1], token offsets; document i is tokens [index[i], index[i+1]),
//              index[0] = 0 and index[document count] = token count
//   then       version 2 with flag 1 (label mask) only: u8[token count], 1 = the token is a training target (SFT:
//              the assistant's tokens), 0 = it is context only; then zero bytes up to a multiple of 8
//
// A shard without a mask is written as version 1, byte for byte what earlier writers made, so older readers keep
// reading pretraining shards; a reader of version 2 reads both.
// With a separator, every document starts with it, so that a stream of documents (within a shard or across shards)
// has exactly one separator between any two of them. Documents are never split across shards.
#pragma once
#include <cstdint>
#include <cstdio>
#include <span>
#include <string>
#include <vector>

#include "core/mapped_file.h"

namespace bamba {

inline constexpr char kTokenShardMagic[8] = {'B', 'A', 'M', 'B', 'A', 'T', 'O', 'K'};
inline constexpr uint32_t kTokenShardVersion = 1;      // shards without a label mask
inline constexpr uint32_t kTokenShardVersionMask = 2;  // shards with one (flags & kShardFlagLabelMask)
inline constexpr uint32_t kShardFlagLabelMask = 1;
inline constexpr uint32_t kNoSeparator = 0xFFFFFFFFu;

struct TokenShardHeader {
  char magic[8];
  uint32_t version;
  uint32_t header_bytes;
  uint32_t vocab_size;
  uint32_t separator;
  uint64_t n_tokens;
  uint64_t n_documents;
  uint32_t flags;  // version 2: kShardFlagLabelMask
  uint8_t reserved[20];
};
static_assert(sizeof(TokenShardHeader) == 64);

// Writes one shard to "<path>.tmp" and renames it into place in finish(); a writer destroyed before that removes
// its temporary file, so a failed run never leaves a shard that looks complete.
class TokenShardWriter {
 public:
  // label_mask: the shard carries a per-token label mask (version 2); add_document then needs one per document.
  TokenShardWriter(std::string path, uint32_t vocab_size, uint32_t separator, bool label_mask = false);
  ~TokenShardWriter();
  TokenShardWriter(const TokenShardWriter&) = delete;
  TokenShardWriter& operator=(const TokenShardWriter&) = delete;

  // Appends one document: the separator (if any), then `tokens`. Error on an id outside [0, vocab size).
  // `mask` (label-mask shards only, one 0/1 per token of `tokens`): which tokens are targets; the separator is not.
  void add_document(std::span<const int32_t> tokens, std::span<const uint8_t> mask = {});
  void finish();

  uint64_t n_tokens() const { return offsets_.back(); }
  uint64_t n_documents() const { return offsets_.size() - 1; }
  const std::string& path() const { return path_; }

 private:
  void write(const void* data, size_t bytes);

  std::string path_, tmp_;
  std::FILE* fp_ = nullptr;
  TokenShardHeader header_{};
  std::vector<uint64_t> offsets_{0};
  std::vector<uint32_t> buffer_;
  std::vector<uint8_t> mask_;  // the whole shard's label mask (written after the index), label-mask shards only
};

// A shard opened for reading. The constructor checks the header, the file size and the document index; every
// error names the file and the byte position.
class TokenShard {
 public:
  explicit TokenShard(const std::string& path);

  uint32_t vocab_size() const { return header_.vocab_size; }
  uint32_t separator() const { return header_.separator; }  // kNoSeparator: none
  uint64_t n_tokens() const { return header_.n_tokens; }
  uint64_t n_documents() const { return header_.n_documents; }
  const std::string& path() const { return file_.path(); }

  std::span<const uint32_t> tokens() const { return {tokens_, size_t(header_.n_tokens)}; }
  std::span<const uint32_t> document(uint64_t i) const;  // Error if i is out of range
  uint64_t document_start(uint64_t i) const { return index_[i]; }  // i <= n_documents(), unchecked
  // The label mask (version 2): 1 = the token is a target. Empty for a shard without one (every token is).
  bool has_label_mask() const { return mask_ != nullptr; }
  std::span<const uint8_t> label_mask() const { return {mask_, mask_ ? size_t(header_.n_tokens) : 0}; }
  // Reads every token: each must be below the vocab size, and each document must start with the separator.
  void check_tokens() const;

 private:
  MappedFile file_;
  TokenShardHeader header_{};
  const uint32_t* tokens_ = nullptr;
  const uint64_t* index_ = nullptr;
  const uint8_t* mask_ = nullptr;
  uint64_t index_offset_ = 0;
};

}  // namespace bamba
