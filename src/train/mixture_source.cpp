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
    : MixtureSource(std::vector<MixturePhase>{{"", 0, datasets}}, vocab_size, options) {}

MixtureSource::MixtureSource(const std::vector<MixturePhase>& phases, int64_t vocab_size, MixtureOptions options)
    : opt_(options) {
  BAMBA_CHECK(!phases.empty(), "data: no phases");
  BAMBA_CHECK(opt_.world >= 1 && opt_.rank >= 0 && opt_.rank < opt_.world, "data: rank ", opt_.rank, " of ",
              opt_.world, " ranks is out of range");
  phased_ = !(phases.size() == 1 && phases[0].name.empty());
  for (const MixturePhase& mp : phases) {
    const std::string in = mp.name.empty() ? "" : cat(" (phase ", mp.name, ")");
    BAMBA_CHECK(!mp.data.empty(), "data", in, ": no datasets");
    BAMBA_CHECK(mp.tokens >= 0, "data", in, ": length ", mp.tokens, " tokens");
    Phase ph;
    ph.name = mp.name;
    ph.tokens = mp.tokens;
    for (const DatasetSpec& d : mp.data) {
      BAMBA_CHECK(d.weight > 0, "data", in, ": dataset ", d.name, ": weight must be > 0");
      size_t k = 0;
      while (k < streams_.size() && streams_[k].d.name != d.name) ++k;
      if (k < streams_.size()) {  // shared with an earlier phase: the same stream, so the same files
        BAMBA_CHECK(streams_[k].d.path == d.path, "data", in, ": dataset ", d.name, " is ", d.path,
                    " here and ", streams_[k].d.path, " in an earlier phase");
        BAMBA_CHECK(std::find(ph.stream.begin(), ph.stream.end(), k) == ph.stream.end(), "data", in, ": dataset ",
                    d.name, " is listed twice");
      } else {
        streams_.push_back(open_stream(d, vocab_size));
      }
      ph.stream.push_back(k);
      ph.weight.push_back(d.weight);
      ph.weight_sum += d.weight;
      ph.drawn.push_back(0);
    }
    phases_.push_back(std::move(ph));
  }
}

MixtureSource::Stream MixtureSource::open_stream(const DatasetSpec& d, int64_t vocab_size) const {
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
  return s;
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
    // The phase moves on once its tokens are drawn (the last one never ends); within it, the dataset most
    // behind its share of the phase's tokens gives the row (ties: the first listed).
    while (phases_[phase_].tokens > 0 && phases_[phase_].total >= phases_[phase_].tokens && phase_ + 1 < phases_.size())
      ++phase_;
    Phase& ph = phases_[phase_];
    size_t in_phase = 0;
    double best = -1e300;
    for (size_t i = 0; i < ph.stream.size(); ++i) {
      const double deficit = ph.weight[i] / ph.weight_sum * double(ph.total + seq_len) - double(ph.drawn[i]);
      if (deficit > best) best = deficit, in_phase = i;
    }
    const size_t pick = ph.stream[in_phase];
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
    ph.drawn[in_phase] += seq_len;
    ph.total += seq_len;
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
  nlohmann::json j = {{"version", 2}, {"seed", opt_.seed}, {"shuffle", opt_.shuffle}, {"datasets", std::move(ds)}};
  if (phased_) {  // the current phase and the deficit rule's counts of every phase
    nlohmann::json ps = nlohmann::json::array();
    for (const Phase& ph : phases_) {
      nlohmann::json drawn = nlohmann::json::object();
      for (size_t i = 0; i < ph.stream.size(); ++i) drawn[streams_[ph.stream[i]].d.name] = ph.drawn[i];
      ps.push_back({{"name", ph.name}, {"drawn", std::move(drawn)}});
    }
    j["phase"] = phases_[phase_].name;
    j["phases"] = std::move(ps);
  }
  return j;
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
  restore_phases(j);
}

void MixtureSource::restore_phases(const nlohmann::json& j) {
  if (!phased_) {
    BAMBA_CHECK(!j.contains("phases"), "resume: the checkpoint's data position is from a run with phases, the "
                                       "config has one data list");
    Phase& ph = phases_[0];  // the one phase has drawn everything
    ph.total = 0;
    for (size_t i = 0; i < ph.stream.size(); ++i) ph.total += ph.drawn[i] = streams_[ph.stream[i]].drawn;
    phase_ = 0;
    return;
  }
  const nlohmann::json& ps = j.contains("phases") ? j.at("phases") : nlohmann::json();
  BAMBA_CHECK(ps.is_array(), "resume: the checkpoint's data position has no phases (a run with one data list), "
                             "the config has ", phases_.size());
  BAMBA_CHECK(ps.size() == phases_.size(), "resume: the data position lists ", ps.size(), " phases, the config ",
              phases_.size());
  const std::string current = j.value("phase", "");
  phase_ = phases_.size();
  for (size_t p = 0; p < phases_.size(); ++p) {
    Phase& ph = phases_[p];
    BAMBA_CHECK(ps[p].value("name", "") == ph.name, "resume: phase ", p, " was '", ps[p].value("name", ""),
                "', the config names '", ph.name, "'");
    const nlohmann::json& drawn = ps[p].at("drawn");
    ph.total = 0;
    for (size_t i = 0; i < ph.stream.size(); ++i) {
      const std::string& name = streams_[ph.stream[i]].d.name;
      BAMBA_CHECK(drawn.contains(name), "resume: phase ", ph.name, " had no dataset ", name,
                  " (the phase's mixture changed)");
      ph.drawn[i] = drawn.at(name).get<int64_t>();
      BAMBA_CHECK(ph.drawn[i] >= 0 && ph.drawn[i] <= streams_[ph.stream[i]].drawn, "resume: phase ", ph.name,
                  ": dataset ", name, " drew ", ph.drawn[i], " tokens, more than its ", streams_[ph.stream[i]].drawn,
                  " over the run");
      ph.total += ph.drawn[i];
    }
    BAMBA_CHECK(drawn.size() == ph.stream.size(), "resume: phase ", ph.name, " had ", drawn.size(),
                " datasets, the config lists ", ph.stream.size());
    if (ph.name == current) phase_ = p;
  }
  BAMBA_CHECK(phase_ < phases_.size(), "resume: the checkpoint is in phase '", current,
              "', which the config does not have");
}

std::vector<std::pair<std::string, std::vector<std::pair<std::string, int64_t>>>> MixtureSource::drawn_per_phase()
    const {
  std::vector<std::pair<std::string, std::vector<std::pair<std::string, int64_t>>>> out;
  for (const Phase& ph : phases_) {
    std::vector<std::pair<std::string, int64_t>> d;
    for (size_t i = 0; i < ph.stream.size(); ++i) d.push_back({streams_[ph.stream[i]].d.name, ph.drawn[i]});
    out.push_back({ph.name, std::move(d)});
  }
  return out;
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
