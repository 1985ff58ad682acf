#include "model/state_file.h"

#include <cstring>
#include <fstream>
#include <sstream>

#include "core/error.h"

namespace bamba {

namespace {

constexpr char kMagic[8] = {'B', 'A', 'M', 'B', 'A', 'S', 'T', '1'};
constexpr uint32_t kVersion = 1;
const char* const kShapeNames[13] = {"layers",     "hidden size",   "vocab size",      "Mamba layers", "attention layers",
                                     "conv dim",   "d_conv",        "Mamba heads",     "Mamba head dim", "d_state",
                                     "KV heads",   "head dim",      "attention layer mask"};

std::vector<uint32_t> shape_of(const ModelConfig& c) {
  uint32_t mask = 0;
  for (size_t i = 0; i < c.layer_kinds.size() && i < 32; ++i)
    if (c.layer_kinds[i] == LayerKind::Attention) mask |= 1u << i;
  return {uint32_t(c.num_hidden_layers), uint32_t(c.hidden_size),    uint32_t(c.vocab_size),
          uint32_t(c.n_mamba_layers()),  uint32_t(c.n_attention_layers()), uint32_t(c.conv_dim()),
          uint32_t(c.mamba_d_conv),      uint32_t(c.mamba_n_heads),  uint32_t(c.mamba_d_head),
          uint32_t(c.mamba_d_state),     uint32_t(c.num_key_value_heads), uint32_t(c.head_dim), mask};
}

uint64_t fnv1a(std::string_view b) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : b) h = (h ^ c) * 0x100000001b3ull;
  return h;
}

template <class T>
void put(std::string& out, const T* p, size_t n) {
  out.append(reinterpret_cast<const char*>(p), n * sizeof(T));
}

// Reads the bytes in order, failing with the name of the field that is cut short.
class Reader {
 public:
  Reader(std::string_view b, const std::string& what) : b_(b), what_(what) {}
  template <class T>
  void get(T* p, size_t n, const char* field) {
    BAMBA_CHECK(b_.size() - at_ >= n * sizeof(T), what_, ": the state is cut short (in ", field, " at byte ", at_, ")");
    std::memcpy(p, b_.data() + at_, n * sizeof(T));
    at_ += n * sizeof(T);
  }
  size_t at() const { return at_; }

 private:
  std::string_view b_;
  const std::string& what_;
  size_t at_ = 0;
};

}  // namespace

std::string encode_state(const ModelConfig& cfg, HybridCache& cache, const SeqCache& seq,
                         std::span<const int32_t> tokens) {
  BAMBA_CHECK(seq.slot >= 0 && seq.len >= 0 && size_t(seq.len) <= tokens.size(), "encode_state: no state to save");
  BAMBA_CHECK(cfg.tp_size == 1, "saving a sequence's state is not supported with tensor parallelism yet");
  Backend& be = cache.backend();
  std::string out;
  out.append(kMagic, 8);
  put(out, &kVersion, 1);
  const uint32_t type_len = uint32_t(cfg.model_type.size());
  put(out, &type_len, 1);
  out += cfg.model_type;
  const auto shape = shape_of(cfg);
  put(out, shape.data(), shape.size());
  const uint32_t counts[2] = {uint32_t(tokens.size()), uint32_t(seq.len)};
  put(out, counts, 2);
  put(out, tokens.data(), tokens.size());
  std::vector<float> host;
  for (int64_t i = 0; i < cfg.n_mamba_layers(); ++i)
    for (Tensor t : {cache.conv_state(i), cache.ssm_state(i)}) {
      Tensor s = t.slice_rows(seq.slot, seq.slot + 1);  // [1, K-1, CD] / [1, nh, P, N]
      host.resize(size_t(s.numel()));
      be.to_host_f32(s, host.data());
      put(out, host.data(), host.size());
    }
  const int32_t bs = cache.sizes().block_size;
  for (int64_t i = 0; i < cfg.n_attention_layers(); ++i)
    for (Tensor pages : {cache.k_pages(i), cache.v_pages(i)}) {
      const size_t row = size_t(pages.inner() / bs);  // nkv * dh
      for (int32_t b = 0; b * bs < seq.len; ++b) {
        Tensor page = pages.slice_rows(seq.blocks[size_t(b)], seq.blocks[size_t(b)] + 1);  // [1, bs, nkv, dh]
        host.resize(size_t(page.numel()));
        be.to_host_f32(page, host.data());
        put(out, host.data(), row * size_t(std::min(bs, seq.len - b * bs)));
      }
    }
  const uint64_t sum = fnv1a(out);
  put(out, &sum, 1);
  return out;
}

std::vector<int32_t> decode_state(std::string_view bytes, const std::string& what, const ModelConfig& cfg,
                                  HybridCache& cache, SeqCache& seq) {
  BAMBA_CHECK(seq.slot < 0 && seq.blocks.empty(), "decode_state: the sequence must hold nothing");
  BAMBA_CHECK(cfg.tp_size == 1, "loading a sequence's state is not supported with tensor parallelism yet");
  Reader r(bytes, what);
  char magic[8];
  r.get(magic, 8, "the magic");
  BAMBA_CHECK(std::memcmp(magic, kMagic, 8) == 0, what, ": not a bamba state file (no BAMBAST1 magic)");
  uint32_t version = 0;
  r.get(&version, 1, "the version");
  BAMBA_CHECK(version == kVersion, what, ": state format version ", version, " (this bamba reads ", kVersion, ")");
  uint32_t type_len = 0;
  r.get(&type_len, 1, "the model type");
  BAMBA_CHECK(type_len <= 256, what, ": the model type's length (", type_len, ") is not plausible");
  std::string type(type_len, '\0');
  r.get(type.data(), type_len, "the model type");
  BAMBA_CHECK(type == cfg.model_type, what, ": saved from a \"", type, "\" model, this one is \"", cfg.model_type, "\"");
  const auto want = shape_of(cfg);
  std::vector<uint32_t> got(want.size());
  r.get(got.data(), got.size(), "the model shape");
  for (size_t i = 0; i < want.size(); ++i)
    BAMBA_CHECK(got[i] == want[i], what, ": saved from another model: its ", kShapeNames[i], " is ", got[i],
                ", this model's is ", want[i]);
  uint32_t counts[2];
  r.get(counts, 2, "the token counts");
  const uint32_t n = counts[0], len = counts[1];
  BAMBA_CHECK(len <= n, what, ": the state covers ", len, " tokens of ", n);
  BAMBA_CHECK(bytes.size() >= r.at() + 8 && n <= (bytes.size() - r.at()) / 4, what, ": the state is cut short (",
              n, " tokens announced)");
  uint64_t stored = 0;
  std::memcpy(&stored, bytes.data() + bytes.size() - 8, 8);
  BAMBA_CHECK(fnv1a(bytes.substr(0, bytes.size() - 8)) == stored, what,
              ": the checksum does not match (the state is corrupted or cut short)");
  std::vector<int32_t> tokens(n);
  r.get(tokens.data(), n, "the tokens");
  for (size_t i = 0; i < n; ++i)
    BAMBA_CHECK(tokens[i] >= 0 && tokens[i] < cfg.vocab_size, what, ": token ", i, " is ", tokens[i],
                ", out of the vocabulary [0, ", cfg.vocab_size, ")");
  BAMBA_CHECK(cache.reserve(seq, int32_t(len)), what, ": no room in the cache for a state of ", len, " tokens");
  try {
    Backend& be = cache.backend();
    std::vector<float> host;
    for (int64_t i = 0; i < cfg.n_mamba_layers(); ++i)
      for (Tensor t : {cache.conv_state(i), cache.ssm_state(i)}) {
        Tensor s = t.slice_rows(seq.slot, seq.slot + 1);
        host.resize(size_t(s.numel()));
        r.get(host.data(), host.size(), "the Mamba states");
        be.from_host_f32(s, host.data());
      }
    const int32_t bs = cache.sizes().block_size;
    for (int64_t i = 0; i < cfg.n_attention_layers(); ++i)
      for (Tensor pages : {cache.k_pages(i), cache.v_pages(i)}) {
        const size_t row = size_t(pages.inner() / bs);
        for (int32_t b = 0; b * bs < int32_t(len); ++b) {
          Tensor page = pages.slice_rows(seq.blocks[size_t(b)], seq.blocks[size_t(b)] + 1);
          host.assign(size_t(page.numel()), 0.f);
          r.get(host.data(), row * size_t(std::min(bs, int32_t(len) - b * bs)), "the KV rows");
          be.from_host_f32(page, host.data());
        }
      }
    BAMBA_CHECK(r.at() + 8 == bytes.size(), what, ": ", bytes.size() - 8 - r.at(), " bytes after the KV rows");
  } catch (...) {
    cache.release(seq);
    throw;
  }
  seq.len = int32_t(len);
  return tokens;
}

void save_state_file(const std::string& path, const ModelConfig& cfg, HybridCache& cache, const SeqCache& seq,
                     std::span<const int32_t> tokens) {
  const std::string bytes = encode_state(cfg, cache, seq, tokens);
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  BAMBA_CHECK(f, "cannot write the state file ", path);
  f.write(bytes.data(), std::streamsize(bytes.size()));
  f.close();
  BAMBA_CHECK(f, "cannot write the state file ", path, " (disk full?)");
}

std::vector<int32_t> load_state_file(const std::string& path, const ModelConfig& cfg, HybridCache& cache,
                                     SeqCache& seq) {
  std::ifstream f(path, std::ios::binary);
  BAMBA_CHECK(f, "cannot open the state file ", path);
  std::stringstream ss;
  ss << f.rdbuf();
  const std::string bytes = ss.str();
  return decode_state(bytes, path, cfg, cache, seq);
}

}  // namespace bamba
