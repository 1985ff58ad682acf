#include "train/mixture_source.h"

#include <algorithm>
#include <filesystem>

#include "core/error.h"

namespace bamba {
namespace fs = std::filesystem;

MixtureSource::MixtureSource(const std::vector<DatasetSpec>& datasets, int64_t vocab_size) {
  BAMBA_CHECK(!datasets.empty(), "data: no datasets");
  for (const DatasetSpec& d : datasets) {
    BAMBA_CHECK(d.weight > 0, "data: dataset ", d.name, ": weight must be > 0");
    Stream s;
    s.d = d;
    std::vector<std::string> files;
    if (fs::is_directory(d.path)) {
      for (const auto& e : fs::directory_iterator(d.path))
        if (e.is_regular_file() && e.path().extension() == ".bin") files.push_back(e.path().string());
      std::sort(files.begin(), files.end());
    } else {
      files.push_back(d.path);
    }
    BAMBA_CHECK(!files.empty(), "data: dataset ", d.name, ": no *.bin token shards in ", d.path);
    for (const std::string& f : files) {
      auto shard = std::make_unique<TokenShard>(f);
      BAMBA_CHECK(int64_t(shard->vocab_size()) <= vocab_size, "data: dataset ", d.name, ": ", f, " has vocab size ",
                  shard->vocab_size(), ", more than the model's ", vocab_size);
      s.total += shard->n_tokens();
      s.shards.push_back(std::move(shard));
    }
    BAMBA_CHECK(s.total > 0, "data: dataset ", d.name, ": its shards hold no tokens");
    weight_sum_ += d.weight;
    streams_.push_back(std::move(s));
  }
}

void MixtureSource::read(Stream& s, int32_t* out, int64_t n) {
  for (int64_t i = 0; i < n;) {
    uint64_t pos = s.position, base = 0;
    size_t k = 0;
    while (pos >= base + s.shards[k]->n_tokens()) base += s.shards[k]->n_tokens(), ++k;
    const auto toks = s.shards[k]->tokens();
    const int64_t take = std::min<int64_t>(n - i, int64_t(base + toks.size() - pos));
    for (int64_t j = 0; j < take; ++j) out[i + j] = int32_t(toks[size_t(pos - base) + size_t(j)]);
    i += take;
    s.position += uint64_t(take);
    if (s.position == s.total) s.position = 0, ++s.epoch;
  }
}

TokenBatch MixtureSource::next(int64_t rows, int64_t seq_len) {
  TokenBatch b;
  b.rows = rows, b.cols = seq_len;
  b.tokens.resize(size_t(rows * seq_len));
  for (int64_t r = 0; r < rows; ++r) {
    int64_t total = 0;
    for (const Stream& s : streams_) total += s.drawn;
    size_t pick = 0;
    double best = -1e300;
    for (size_t i = 0; i < streams_.size(); ++i) {
      const double deficit = streams_[i].d.weight / weight_sum_ * double(total + seq_len) - double(streams_[i].drawn);
      if (deficit > best) best = deficit, pick = i;
    }
    read(streams_[pick], b.tokens.data() + r * seq_len, seq_len);
    streams_[pick].drawn += seq_len;
  }
  b.labels = b.tokens;  // pretraining: every next token is scored (HF shifts the labels inside the loss)
  return b;
}

nlohmann::json MixtureSource::state() const {
  nlohmann::json j = nlohmann::json::array();
  for (const Stream& s : streams_)
    j.push_back({{"name", s.d.name}, {"position", s.position}, {"drawn", s.drawn}, {"epoch", s.epoch}});
  return j;
}

void MixtureSource::restore(const nlohmann::json& j) {
  BAMBA_CHECK(j.is_array() && j.size() == streams_.size(), "resume: the data position lists ", j.size(),
              " datasets, the config ", streams_.size());
  for (size_t i = 0; i < streams_.size(); ++i) {
    Stream& s = streams_[i];
    BAMBA_CHECK(j[i].value("name", "") == s.d.name, "resume: dataset ", i, " was '", j[i].value("name", ""),
                "', the config names '", s.d.name, "'");
    s.position = j[i].at("position").get<uint64_t>();
    BAMBA_CHECK(s.position < s.total, "resume: dataset ", s.d.name, ": position ", s.position, " is past its ",
                s.total, " tokens (the shards changed)");
    s.drawn = j[i].at("drawn").get<int64_t>();
    s.epoch = j[i].at("epoch").get<int64_t>();
  }
}

std::vector<std::pair<std::string, int64_t>> MixtureSource::drawn() const {
  std::vector<std::pair<std::string, int64_t>> out;
  for (const Stream& s : streams_) out.push_back({s.d.name, s.drawn});
  return out;
}

}  // namespace bamba
