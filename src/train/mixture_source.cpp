#include "train/mixture_source.h"

#include <algorithm>
#include <filesystem>

#include "core/error.h"

namespace bamba {
namespace fs = std::filesystem;

namespace {

uint64_t fnv1a(const std::string& s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : s) h = (h ^ c) * 0x100000001b3ull;
  return h;
}

}  // namespace

MixtureSource::MixtureSource(const std::vector<DatasetSpec>& datasets, int64_t vocab_size, MixtureOptions options)
    : opt_(options) {
  BAMBA_CHECK(!datasets.empty(), "data: no datasets");
  BAMBA_CHECK(opt_.world >= 1 && opt_.rank >= 0 && opt_.rank < opt_.world, "data: rank ", opt_.rank, " of ",
              opt_.world, " ranks is out of range");
  for (const DatasetSpec& d : datasets) {
    BAMBA_CHECK(d.weight > 0, "data: dataset ", d.name, ": weight must be > 0");
    Stream s;
    s.d = d;
    s.name_hash = fnv1a(d.name);
    std::vector<std::string> files;
    if (fs::is_directory(d.path)) {
      for (const auto& e : fs::directory_iterator(d.path))
        if (e.is_regular_file() && e.path().extension() == ".bin") files.push_back(e.path().string());
      std::sort(files.begin(), files.end());
    } else {
      files.push_back(d.path);
    }
    BAMBA_CHECK(!files.empty(), "data: dataset ", d.name, ": no *.bin token shards in ", d.path);
    s.doc_base.push_back(0);
    for (const std::string& f : files) {
      auto shard = std::make_unique<TokenShard>(f);
      BAMBA_CHECK(int64_t(shard->vocab_size()) <= vocab_size, "data: dataset ", d.name, ": ", f, " has vocab size ",
                  shard->vocab_size(), ", more than the model's ", vocab_size);
      s.n_tokens += shard->n_tokens();
      s.n_docs += shard->n_documents();
      s.doc_base.push_back(s.n_docs);
      s.shards.push_back(std::move(shard));
    }
    BAMBA_CHECK(s.n_tokens > 0, "data: dataset ", d.name, ": its shards hold no tokens");
    start_epoch(s);
    weight_sum_ += d.weight;
    streams_.push_back(std::move(s));
  }
}

// The order of an epoch depends on (seed, dataset name, epoch) only, so it is rebuilt from the saved position.
void MixtureSource::start_epoch(Stream& s) const {
  if (opt_.shuffle)
    s.order = DocPermutation(s.n_docs, splitmix64(opt_.seed ^ s.name_hash) ^ splitmix64(uint64_t(s.epoch)));
}

std::span<const uint32_t> MixtureSource::current_document(const Stream& s, const uint8_t** mask) const {
  const uint64_t doc = opt_.shuffle ? s.order(s.ordinal) : s.ordinal;
  const size_t k = size_t(std::upper_bound(s.doc_base.begin(), s.doc_base.end(), doc) - s.doc_base.begin()) - 1;
  const TokenShard& shard = *s.shards[k];
  const uint64_t local = doc - s.doc_base[k];
  *mask = shard.has_label_mask() ? shard.label_mask().data() + shard.document_start(local) : nullptr;
  return shard.document(local);
}

void MixtureSource::read(Stream& s, int32_t* tokens, int32_t* labels, std::vector<int32_t>* doc_starts, int32_t base,
                         int64_t n) {
  for (int64_t i = 0; i < n;) {
    const uint8_t* mask = nullptr;
    const std::span<const uint32_t> doc = current_document(s, &mask);
    if (s.offset == 0 && !doc.empty() && doc_starts) doc_starts->push_back(base + int32_t(i));
    const int64_t take = std::min<int64_t>(n - i, int64_t(doc.size() - s.offset));
    if (tokens)
      for (int64_t j = 0; j < take; ++j) {
        const size_t at = size_t(s.offset) + size_t(j);
        tokens[i + j] = int32_t(doc[at]);
        labels[i + j] = mask && !mask[at] ? -100 : int32_t(doc[at]);
      }
    i += take;
    s.offset += uint64_t(take);
    if (s.offset == doc.size()) next_document(s);  // an empty one is passed over: the dataset has tokens
  }
}

void MixtureSource::next_document(Stream& s) const {
  s.offset = 0;
  if (++s.ordinal == s.n_docs) {
    s.ordinal = 0;
    ++s.epoch;
    start_epoch(s);
  }
}

int64_t MixtureSource::read_whole(Stream& s, int32_t* tokens, int32_t* labels, std::vector<int32_t>* doc_starts,
                                  int32_t base, int64_t n) {
  int64_t i = 0;
  while (i < n) {
    const uint8_t* mask = nullptr;
    const int64_t left = int64_t(current_document(s, &mask).size() - s.offset);
    if (left == 0) {
      next_document(s);
      continue;
    }
    // A document that starts here but does not fit the rest of this row moves to the next row, unless it could
    // not fit in any row (or the row is still empty): then it is split as in per-document packing.
    if (s.offset == 0 && left > n - i && left <= n && i > 0) break;
    const int64_t take = std::min(left, n - i);
    read(s, tokens ? tokens + i : nullptr, labels ? labels + i : nullptr, doc_starts, base + int32_t(i), take);
    i += take;
  }
  return i;
}

TokenBatch MixtureSource::next(int64_t rows, int64_t seq_len) {
  TokenBatch b;
  b.rows = rows, b.cols = seq_len;
  b.tokens.resize(size_t(rows * seq_len));
  b.labels.resize(size_t(rows * seq_len));
  const bool whole = opt_.packing == Packing::WholeDocuments;
  const bool per_doc = opt_.packing == Packing::PerDocument || whole;
  std::vector<int32_t> doc_starts;
  for (int64_t g = 0; g < rows * opt_.world; ++g) {  // the global micro-batch's rows; ours are [rank·rows, +rows)
    int64_t total = 0;
    for (const Stream& s : streams_) total += s.drawn;
    size_t pick = 0;
    double best = -1e300;
    for (size_t i = 0; i < streams_.size(); ++i) {
      const double deficit = streams_[i].d.weight / weight_sum_ * double(total + seq_len) - double(streams_[i].drawn);
      if (deficit > best) best = deficit, pick = i;
    }
    const int64_t r = g - opt_.rank * rows;
    if (r >= 0 && r < rows) {
      const int32_t base = int32_t(r * seq_len);
      if (per_doc) b.seq_start.push_back(base);
      doc_starts.clear();
      int32_t* tok = b.tokens.data() + base;
      int32_t* lab = b.labels.data() + base;
      if (whole) {
        const int64_t used = read_whole(streams_[pick], tok, lab, &doc_starts, base, seq_len);
        if (used < seq_len) {  // padding: a sequence of its own, never scored
          const uint32_t sep = streams_[pick].shards.front()->separator();
          std::fill(tok + used, tok + seq_len, sep == kNoSeparator ? 0 : int32_t(sep));
          std::fill(lab + used, lab + seq_len, -100);
          doc_starts.push_back(base + int32_t(used));
        }
      } else {
        read(streams_[pick], tok, lab, per_doc ? &doc_starts : nullptr, base, seq_len);
      }
      for (int32_t t : doc_starts)
        if (t != base) b.seq_start.push_back(t);
    } else if (whole) {
      read_whole(streams_[pick], nullptr, nullptr, nullptr, 0, seq_len);
    } else {
      read(streams_[pick], nullptr, nullptr, nullptr, 0, seq_len);
    }
    streams_[pick].drawn += seq_len;
  }
  if (per_doc) b.seq_start.push_back(int32_t(rows * seq_len));
  return b;
}

nlohmann::json MixtureSource::state() const {
  nlohmann::json ds = nlohmann::json::array();
  for (const Stream& s : streams_)
    ds.push_back({{"name", s.d.name},
                  {"drawn", s.drawn},
                  {"epoch", s.epoch},
                  {"document", s.ordinal},
                  {"offset", s.offset}});
  return {{"version", 2}, {"seed", opt_.seed}, {"shuffle", opt_.shuffle}, {"datasets", std::move(ds)}};
}

void MixtureSource::restore(const nlohmann::json& j) {
  if (!j.is_object() || j.value("version", 0) != 2)
    fail("resume: the checkpoint's data position is from an older data loader (documents in file order, no "
         "version 2 state); it cannot be continued with the shuffled loader");
  BAMBA_CHECK(j.at("seed").get<uint64_t>() == opt_.seed && j.at("shuffle").get<bool>() == opt_.shuffle,
              "resume: the checkpoint's data order has seed ", j.at("seed").dump(), " and shuffle ",
              j.at("shuffle").dump(), ", the config seed ", opt_.seed, " and shuffle ", opt_.shuffle,
              " (the stream would differ)");
  const nlohmann::json& ds = j.at("datasets");
  BAMBA_CHECK(ds.is_array() && ds.size() == streams_.size(), "resume: the data position lists ", ds.size(),
              " datasets, the config ", streams_.size());
  for (size_t i = 0; i < streams_.size(); ++i) {
    Stream& s = streams_[i];
    BAMBA_CHECK(ds[i].value("name", "") == s.d.name, "resume: dataset ", i, " was '", ds[i].value("name", ""),
                "', the config names '", s.d.name, "'");
    s.epoch = ds[i].at("epoch").get<int64_t>();
    s.ordinal = ds[i].at("document").get<uint64_t>();
    s.offset = ds[i].at("offset").get<uint64_t>();
    s.drawn = ds[i].at("drawn").get<int64_t>();
    BAMBA_CHECK(s.epoch >= 0 && s.ordinal < s.n_docs, "resume: dataset ", s.d.name, ": document ", s.ordinal,
                " of epoch ", s.epoch, " is past its ", s.n_docs, " documents (the shards changed)");
    start_epoch(s);
    const uint8_t* mask = nullptr;
    const uint64_t len = current_document(s, &mask).size();
    BAMBA_CHECK(s.offset < len || (s.offset == 0 && len == 0), "resume: dataset ", s.d.name, ": offset ", s.offset,
                " is past the end of its document (", len, " tokens; the shards changed)");
  }
}

std::vector<std::pair<std::string, int64_t>> MixtureSource::drawn() const {
  std::vector<std::pair<std::string, int64_t>> out;
  for (const Stream& s : streams_) out.push_back({s.d.name, s.drawn});
  return out;
}

int64_t MixtureSource::total_tokens() const {
  int64_t n = 0;
  for (const Stream& s : streams_) n += int64_t(s.n_tokens);
  return n;
}

}  // namespace bamba
