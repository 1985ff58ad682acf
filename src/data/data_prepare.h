// prepare_token_shards: text and JSONL files -> token shards (token_shard.h) with a manifest, for training.
// Documents are read in order and tokenized in batches over threads; each is written with the separator token in
// front of it, and a shard is closed once it holds shard_tokens tokens (documents are never split).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace bamba {

class Tokenizer;
struct ChatTemplate;

struct PrepareOptions {
  std::vector<std::string> inputs;  // files and folders (data/document_reader.h)
  std::string format = "auto";      // auto | text | jsonl
  std::string field = "text";       // the JSONL field holding a document
  std::string out_dir;
  std::string separator = "<|begin_of_text|>";  // a token of the tokenizer; empty: none
  uint64_t shard_tokens = uint64_t(1) << 28;     // 1 GiB of tokens per shard
  int threads = 0;                               // 0: all cores
  bool force = false;                            // replace the shards of an earlier run in out_dir
  bool progress = true;
  // SFT: every JSONL line is a conversation {"messages": [...], "tools": [...]?}, rendered with the chat template
  // and written with a label mask on the assistant's tokens (data/chat_example.h; version 2 shards).
  const ChatTemplate* chat = nullptr;
};

struct PrepareSummary {
  uint64_t documents = 0, empty_skipped = 0;
  uint64_t tokens = 0;            // everything written, separators included
  uint64_t text_tokens = 0;       // the documents' own tokens
  uint64_t text_bytes = 0;        // UTF-8 bytes of the documents
  uint64_t target_tokens = 0;     // chat: the assistant's tokens (label mask 1)
  uint64_t assistant_turns = 0;   // chat
  std::vector<std::string> shards;  // paths written
  double seconds = 0;
};

PrepareSummary prepare_token_shards(const Tokenizer& tokenizer, const PrepareOptions& options);

}  // namespace bamba
