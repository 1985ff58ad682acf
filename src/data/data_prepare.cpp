#include "data/data_prepare.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <thread>

#include "core/error.h"
#include "core/progress.h"
#include "data/chat_example.h"
#include "data/document_reader.h"
#include "data/token_shard.h"
#include "tokenizer/tokenizer.h"

namespace bamba {

namespace fs = std::filesystem;

namespace {

constexpr size_t kBatchBytes = size_t(8) << 20;  // text per tokenizing round: big enough to keep threads busy

std::string shard_name(size_t i) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "shard-%05zu.bin", i);
  return buf;
}

// Out_dir must not hold the output of another run, which a reader could mix with this one's.
void prepare_out_dir(const PrepareOptions& o) {
  if (o.out_dir.empty()) fail("no output folder given");
  fs::create_directories(o.out_dir);
  std::vector<fs::path> old;
  for (const auto& e : fs::directory_iterator(o.out_dir)) {
    std::string name = e.path().filename().string();
    if (name == "manifest.json" || (name.starts_with("shard-") && name.ends_with(".bin"))) old.push_back(e.path());
  }
  if (old.empty()) return;
  if (!o.force)
    fail(o.out_dir, ": already holds token shards (", old.front().filename().string(),
         ", ...); give --force to replace them");
  for (const fs::path& p : old) fs::remove(p);
}

// Encodes docs[i] into ids[i] on `threads` threads, a document at a time from a shared counter. Chat documents
// (o.chat) are conversations: rendered, tokenized and masked into ids[i] and masks[i].
void encode_batch(const Tokenizer& tok, const PrepareOptions& o, const std::string& drop_prefix,
                  const std::vector<std::string>& docs, const std::vector<std::string>& where,
                  std::vector<std::vector<int32_t>>& ids, std::vector<std::vector<uint8_t>>& masks,
                  std::vector<int>& turns, int threads) {
  ids.resize(docs.size());
  masks.resize(docs.size());
  turns.assign(docs.size(), 0);
  std::atomic<size_t> next{0};
  std::vector<std::exception_ptr> errors(static_cast<size_t>(threads));
  auto work = [&](size_t t) {
    try {
      for (size_t i; (i = next.fetch_add(1)) < docs.size();) {
        if (!o.chat) {
          ids[i] = tok.encode(docs[i], /*add_special=*/false);
          continue;
        }
        ChatTokens c = tokenize_chat(*o.chat, tok, nlohmann::ordered_json::parse(docs[i]), where[i], drop_prefix);
        ids[i] = std::move(c.tokens);
        masks[i] = std::move(c.mask);
        turns[i] = c.assistant_turns;
      }
    } catch (...) {
      errors[t] = std::current_exception();
    }
  };
  std::vector<std::thread> pool;
  for (int t = 1; t < threads; ++t) pool.emplace_back(work, size_t(t));
  work(0);
  for (auto& th : pool) th.join();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
}

void write_manifest(const PrepareOptions& o, const Tokenizer& tok, uint32_t separator, const PrepareSummary& s,
                    const std::vector<std::pair<uint64_t, uint64_t>>& shard_counts) {
  using ojson = nlohmann::ordered_json;
  ojson shards = ojson::array();
  for (size_t i = 0; i < s.shards.size(); ++i)
    shards.push_back({{"file", fs::path(s.shards[i]).filename().string()},
                      {"documents", shard_counts[i].first},
                      {"tokens", shard_counts[i].second}});
  ojson m = {{"format", "bamba token shards"},
             {"version", o.chat ? kTokenShardVersionMask : kTokenShardVersion},
             {"label_mask", o.chat != nullptr},
             {"vocab_size", tok.vocab_size()},
             {"separator", separator == kNoSeparator ? ojson(nullptr) : ojson{{"token", o.separator}, {"id", separator}}},
             {"documents", s.documents},
             {"tokens", s.tokens},
             {"text_bytes", s.text_bytes},
             {"target_tokens", o.chat ? ojson(s.target_tokens) : ojson(nullptr)},
             {"chat_template", o.chat ? ojson(o.chat->label()) : ojson(nullptr)},
             {"inputs", o.inputs},
             {"shards", std::move(shards)}};
  const std::string path = (fs::path(o.out_dir) / "manifest.json").string(), tmp = path + ".tmp";
  {
    std::ofstream f(tmp);
    f << m.dump(2) << "\n";
    if (!f.flush()) fail(tmp, ": write failed");
  }
  fs::rename(tmp, path);
}

}  // namespace

PrepareSummary prepare_token_shards(const Tokenizer& tok, const PrepareOptions& o) {
  const auto t0 = std::chrono::steady_clock::now();
  uint32_t separator = kNoSeparator;
  if (!o.separator.empty()) {
    auto id = tok.token_to_id(o.separator);
    if (!id) fail("separator \"", o.separator, "\" is not a token of the tokenizer");
    separator = uint32_t(*id);
  }
  if (o.shard_tokens == 0) fail("shard size must be at least one token");
  const int threads = o.threads > 0 ? o.threads : int(std::max(1u, std::thread::hardware_concurrency()));
  const std::vector<InputFile> files = list_input_files(o.inputs, o.format);
  prepare_out_dir(o);

  uint64_t total_bytes = 0;
  for (const InputFile& f : files) total_bytes += f.bytes;
  ProgressBar bar("tokenizing", total_bytes, o.progress);

  PrepareSummary s;
  std::vector<std::pair<uint64_t, uint64_t>> shard_counts;  // documents, tokens
  std::unique_ptr<TokenShardWriter> shard;
  auto close_shard = [&] {
    if (!shard) return;
    shard->finish();
    shard_counts.emplace_back(shard->n_documents(), shard->n_tokens());
    s.shards.push_back(shard->path());
    shard.reset();
  };

  std::vector<std::string> docs, where;
  std::vector<std::vector<int32_t>> ids;
  std::vector<std::vector<uint8_t>> masks;
  std::vector<int> turns;
  size_t batch_bytes = 0;
  uint64_t bytes_before = 0;  // of the files already finished
  // A template that starts with the BOS (bos_token) would double the separator in front of every conversation.
  const std::string drop_prefix = separator == kNoSeparator ? "" : o.separator;
  auto flush = [&] {
    encode_batch(tok, o, drop_prefix, docs, where, ids, masks, turns, threads);
    for (size_t i = 0; i < docs.size(); ++i) {
      if (!shard) {
        shard = std::make_unique<TokenShardWriter>((fs::path(o.out_dir) / shard_name(s.shards.size())).string(),
                                                   uint32_t(tok.vocab_size()), separator, o.chat != nullptr);
      }
      shard->add_document(ids[i], masks[i]);
      for (uint8_t m : masks[i]) s.target_tokens += m;
      s.assistant_turns += uint64_t(turns[i]);
      s.text_tokens += ids[i].size();
      s.tokens += ids[i].size() + (separator != kNoSeparator);
      if (shard->n_tokens() >= o.shard_tokens) close_shard();
    }
    docs.clear();
    where.clear();
    batch_bytes = 0;
  };

  std::string text;
  for (const InputFile& f : files) {
    if (o.chat && !f.jsonl)
      fail(f.path, ": chat data must be JSONL (one conversation per line, {\"messages\": [...]})");
    DocumentReader reader(f, o.chat ? "" : o.field, DocumentReader::TextUnit::file);
    while (reader.next(text)) {
      if (text.empty()) {
        ++s.empty_skipped;
        continue;
      }
      ++s.documents;
      s.text_bytes += text.size();
      batch_bytes += text.size();
      docs.push_back(std::move(text));
      if (o.chat) where.push_back(cat(f.path, " line ", reader.line()));
      text = std::string();
      if (batch_bytes >= kBatchBytes) {
        flush();
        bar.update(bytes_before + reader.bytes_read(), cat(s.documents, " documents"));
      }
    }
    bytes_before += f.bytes;
  }
  flush();
  close_shard();
  bar.finish();
  if (s.documents == 0) fail("no documents found in the ", files.size(), " input file(s) (all empty)");
  s.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  write_manifest(o, tok, separator, s, shard_counts);
  return s;
}

}  // namespace bamba
