#include "data/token_shard.h"

#include <unistd.h>

#include <bit>
#include <cerrno>
#include <cstring>

#include "core/error.h"

namespace bamba {

static_assert(std::endian::native == std::endian::little, "token shards are little-endian and read in place");

static constexpr uint64_t kHeaderBytes = sizeof(TokenShardHeader);

// Where the document index starts for `n_tokens` tokens (the token array padded to 8 bytes).
static uint64_t index_offset(uint64_t n_tokens) { return kHeaderBytes + (n_tokens * 4 + 7) / 8 * 8; }
static uint64_t pad8(uint64_t bytes) { return (bytes + 7) / 8 * 8; }

TokenShardWriter::TokenShardWriter(std::string path, uint32_t vocab_size, uint32_t separator, bool label_mask)
    : path_(std::move(path)), tmp_(path_ + ".tmp") {
  if (vocab_size == 0 || vocab_size == kNoSeparator) fail(path_, ": vocab size ", vocab_size, " is out of range");
  if (separator != kNoSeparator && separator >= vocab_size)
    fail(path_, ": separator id ", separator, " is not below the vocab size ", vocab_size);
  std::memcpy(header_.magic, kTokenShardMagic, sizeof header_.magic);
  header_.version = label_mask ? kTokenShardVersionMask : kTokenShardVersion;
  header_.flags = label_mask ? kShardFlagLabelMask : 0;
  header_.header_bytes = uint32_t(kHeaderBytes);
  header_.vocab_size = vocab_size;
  header_.separator = separator;
  fp_ = std::fopen(tmp_.c_str(), "wb");
  if (!fp_) fail(tmp_, ": cannot create (", std::strerror(errno), ")");
  write(&header_, sizeof header_);  // rewritten with the counts in finish()
}

TokenShardWriter::~TokenShardWriter() {
  if (fp_) {
    std::fclose(fp_);
    std::remove(tmp_.c_str());
  }
}

void TokenShardWriter::write(const void* data, size_t bytes) {
  if (bytes && std::fwrite(data, 1, bytes, fp_) != bytes) fail(tmp_, ": write failed (", std::strerror(errno), ")");
}

void TokenShardWriter::add_document(std::span<const int32_t> tokens, std::span<const uint8_t> mask) {
  const bool masked = header_.flags & kShardFlagLabelMask;
  if (!masked && !mask.empty())
    fail(path_, ": document ", n_documents(), ": a label mask was given to a shard without one");
  if (masked && mask.size() != tokens.size())
    fail(path_, ": document ", n_documents(), ": ", mask.size(), " label-mask entries for ", tokens.size(),
         " tokens (a label-mask shard needs one per token)");
  buffer_.clear();
  if (header_.separator != kNoSeparator) {
    buffer_.push_back(header_.separator);
    if (masked) mask_.push_back(0);
  }
  for (uint8_t m : mask) mask_.push_back(m != 0);
  for (int32_t t : tokens) {
    if (t < 0 || uint32_t(t) >= header_.vocab_size)
      fail(path_, ": document ", n_documents(), ": token id ", t, " is not below the vocab size ", header_.vocab_size);
    buffer_.push_back(uint32_t(t));
  }
  write(buffer_.data(), buffer_.size() * 4);
  offsets_.push_back(offsets_.back() + buffer_.size());
}

void TokenShardWriter::finish() {
  header_.n_tokens = n_tokens();
  header_.n_documents = n_documents();
  const uint64_t pad = index_offset(header_.n_tokens) - kHeaderBytes - header_.n_tokens * 4;
  const char zeros[8] = {};
  write(zeros, pad);
  write(offsets_.data(), offsets_.size() * 8);
  if (header_.flags & kShardFlagLabelMask) {
    write(mask_.data(), mask_.size());
    write(zeros, pad8(mask_.size()) - mask_.size());
  }
  if (std::fseek(fp_, 0, SEEK_SET) != 0) fail(tmp_, ": seek failed (", std::strerror(errno), ")");
  write(&header_, sizeof header_);
  if (std::fflush(fp_) != 0 || ::fsync(::fileno(fp_)) != 0) fail(tmp_, ": write failed (", std::strerror(errno), ")");
  int rc = std::fclose(fp_);
  fp_ = nullptr;
  if (rc != 0) {
    std::remove(tmp_.c_str());
    fail(tmp_, ": write failed (", std::strerror(errno), ")");
  }
  if (std::rename(tmp_.c_str(), path_.c_str()) != 0) {
    int e = errno;
    std::remove(tmp_.c_str());
    fail(path_, ": cannot rename ", tmp_, " into place (", std::strerror(e), ")");
  }
}

TokenShard::TokenShard(const std::string& path) : file_(path) {
  const uint64_t size = file_.size();
  if (size < kHeaderBytes)
    fail(path, ": truncated at byte ", size, " (a token shard starts with a ", kHeaderBytes, "-byte header)");
  std::memcpy(&header_, file_.data(), sizeof header_);
  if (std::memcmp(header_.magic, kTokenShardMagic, sizeof header_.magic) != 0)
    fail(path, ": byte 0: not a token shard (expected the magic \"BAMBATOK\")");
  if (header_.version != kTokenShardVersion && header_.version != kTokenShardVersionMask)
    fail(path, ": byte 8: version ", header_.version, " is not supported (expected ", kTokenShardVersion, " or ",
         kTokenShardVersionMask, ")");
  const uint32_t flags = header_.version == kTokenShardVersion ? 0 : header_.flags;
  if (header_.version == kTokenShardVersion && header_.flags != 0)
    fail(path, ": byte 40: flags ", header_.flags, " in a version 1 shard (expected 0)");
  if (flags & ~kShardFlagLabelMask) fail(path, ": byte 40: unknown flags ", flags);
  if (header_.version == kTokenShardVersionMask && !(flags & kShardFlagLabelMask))
    fail(path, ": byte 40: flags ", flags, " in a version 2 shard (version 2 is for shards with a label mask, flag 1)");
  if (header_.header_bytes != kHeaderBytes)
    fail(path, ": byte 12: header size ", header_.header_bytes, " (expected ", kHeaderBytes, ")");
  if (header_.vocab_size == 0 || header_.vocab_size == kNoSeparator)
    fail(path, ": byte 16: vocab size ", header_.vocab_size, " is out of range");
  if (header_.separator != kNoSeparator && header_.separator >= header_.vocab_size)
    fail(path, ": byte 20: separator id ", header_.separator, " is not below the vocab size ", header_.vocab_size);
  // Counts beyond what any file can hold would overflow the size computation below.
  if (header_.n_tokens > size || header_.n_documents > size)
    fail(path, ": byte 24: ", header_.n_tokens, " tokens and ", header_.n_documents, " documents cannot fit in ", size,
         " bytes (truncated, or a corrupt header)");
  index_offset_ = index_offset(header_.n_tokens);
  const uint64_t mask_offset = index_offset_ + (header_.n_documents + 1) * 8;
  const uint64_t expected = mask_offset + (flags & kShardFlagLabelMask ? pad8(header_.n_tokens) : 0);
  if (size < expected)
    fail(path, ": truncated at byte ", size, " (the header says ", header_.n_tokens, " tokens and ",
         header_.n_documents, " documents: expected ", expected, " bytes)");
  if (size > expected)
    fail(path, ": ", size - expected, " unexpected bytes at byte ", expected, " (the header says ", header_.n_tokens,
         " tokens and ", header_.n_documents, " documents: expected ", expected, " bytes)");
  tokens_ = reinterpret_cast<const uint32_t*>(file_.data() + kHeaderBytes);
  index_ = reinterpret_cast<const uint64_t*>(file_.data() + index_offset_);
  if (flags & kShardFlagLabelMask) mask_ = reinterpret_cast<const uint8_t*>(file_.data() + mask_offset);
  for (uint64_t i = 0; i <= header_.n_documents; ++i) {
    const uint64_t want_min = i == 0 ? 0 : index_[i - 1];
    const bool ok = i == 0 ? index_[0] == 0 : index_[i] >= want_min && index_[i] <= header_.n_tokens;
    if (!ok || (i == header_.n_documents && index_[i] != header_.n_tokens))
      fail(path, ": byte ", index_offset_ + i * 8, ": document index entry ", i, " is ", index_[i], " (expected ",
           i == 0                       ? "0"
           : i == header_.n_documents ? cat("the token count ", header_.n_tokens)
                                        : cat("a token offset from ", want_min, " to ", header_.n_tokens),
           ")");
  }
}

std::span<const uint32_t> TokenShard::document(uint64_t i) const {
  if (i >= header_.n_documents) fail(path(), ": document ", i, " is out of range (", header_.n_documents, " documents)");
  return {tokens_ + index_[i], size_t(index_[i + 1] - index_[i])};
}

void TokenShard::check_tokens() const {
  for (uint64_t i = 0; i < header_.n_tokens; ++i)
    if (tokens_[i] >= header_.vocab_size)
      fail(path(), ": byte ", kHeaderBytes + i * 4, ": token ", i, " is ", tokens_[i], " (expected an id below the vocab size ",
           header_.vocab_size, ")");
  for (uint64_t i = 0; mask_ && i < header_.n_tokens; ++i)
    if (mask_[i] > 1)
      fail(path(), ": byte ", index_offset_ + (header_.n_documents + 1) * 8 + i, ": label mask of token ", i, " is ",
           int(mask_[i]), " (expected 0 or 1)");
  if (header_.separator == kNoSeparator) return;
  for (uint64_t d = 0; d < header_.n_documents; ++d)
    if (index_[d] == index_[d + 1] || tokens_[index_[d]] != header_.separator)
      fail(path(), ": byte ", kHeaderBytes + index_[d] * 4, ": document ", d, " does not start with the separator ",
           header_.separator);
}

}  // namespace bamba
