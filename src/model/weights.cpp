#include "model/weights.h"

#include <cmath>
#include <set>

#include "core/error.h"

namespace bamba {
namespace {

// How generated (dummy) weights are drawn: uniform in [lo, hi).
struct Init {
  float lo, hi;
};
Init linear_init(int64_t fan_in) {
  float a = std::sqrt(3.f / float(fan_in));  // unit-variance outputs for unit-variance inputs
  return {-a, a};
}

struct WeightSpec {
  Tensor* field;
  std::vector<std::string> hf_names;  // concatenated along dim 0
  std::vector<std::vector<int64_t>> part_shapes;
  std::vector<int64_t> shape;  // of the fused tensor
  Init init;
  bool optional = false;  // e.g. biases: present iff the config says so (checked separately)
};

// The one HF-name -> field table.
std::vector<WeightSpec> weight_table(const ModelConfig& c, ModelWeights& w) {
  const int64_t H = c.hidden_size, F = c.intermediate_size, V = c.vocab_size, I = c.mamba_inner, CD = c.conv_dim(),
                E = c.in_proj_dim(), nh = c.mamba_n_heads, K = c.mamba_d_conv, dh = c.head_dim,
                nq = c.num_attention_heads, nkv = c.num_key_value_heads;
  const Init norm_init{0.8f, 1.2f};
  std::vector<WeightSpec> t;
  auto one = [&](Tensor* f, std::string name, std::vector<int64_t> shape, Init init) {
    t.push_back({f, {std::move(name)}, {shape}, shape, init});
  };
  w.layers.resize(size_t(c.num_hidden_layers));
  one(&w.embed_tokens, "model.embed_tokens.weight", {V, H}, {-1.f, 1.f});
  one(&w.final_layernorm, "model.final_layernorm.weight", {H}, norm_init);
  if (!c.tie_word_embeddings) one(&w.lm_head, "lm_head.weight", {V, H}, linear_init(H));
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    LayerWeights& L = w.layers[size_t(i)];
    const std::string p = "model.layers." + std::to_string(i) + ".";
    one(&L.input_layernorm, p + "input_layernorm.weight", {H}, norm_init);
    one(&L.pre_ff_layernorm, p + "pre_ff_layernorm.weight", {H}, norm_init);
    t.push_back({&L.gate_up_proj,
                 {p + "feed_forward.gate_proj.weight", p + "feed_forward.up_proj.weight"},
                 {{F, H}, {F, H}},
                 {2 * F, H},
                 linear_init(H)});
    one(&L.down_proj, p + "feed_forward.down_proj.weight", {H, F}, linear_init(F));
    if (c.layer_kinds[size_t(i)] == LayerKind::Mamba) {
      MambaWeights& m = L.mamba;
      const std::string q = p + "mamba.";
      one(&m.in_proj, q + "in_proj.weight", {E, H}, linear_init(H));
      t.push_back({&m.conv1d_weight, {q + "conv1d.weight"}, {{CD, 1, K}}, {CD, K}, {-0.5f, 0.5f}});
      one(&m.dt_bias, q + "dt_bias", {nh}, {-4.f, -2.f});
      one(&m.A_log, q + "A_log", {nh}, {0.f, 2.7f});
      one(&m.D, q + "D", {nh}, {0.5f, 1.5f});
      one(&m.norm, q + "norm.weight", {I}, norm_init);
      one(&m.out_proj, q + "out_proj.weight", {H, I}, linear_init(I));
      if (c.mamba_conv_bias) one(&m.conv1d_bias, q + "conv1d.bias", {CD}, {-0.2f, 0.2f});
      if (c.mamba_proj_bias) {
        one(&m.in_proj_bias, q + "in_proj.bias", {E}, {-0.1f, 0.1f});
        one(&m.out_proj_bias, q + "out_proj.bias", {H}, {-0.1f, 0.1f});
      }
    } else {
      AttentionWeights& a = L.attn;
      const std::string q = p + "self_attn.";
      t.push_back({&a.qkv_proj,
                   {q + "q_proj.weight", q + "k_proj.weight", q + "v_proj.weight"},
                   {{nq * dh, H}, {nkv * dh, H}, {nkv * dh, H}},
                   {(nq + 2 * nkv) * dh, H},
                   linear_init(H)});
      one(&a.o_proj, q + "o_proj.weight", {H, nq * dh}, linear_init(nq * dh));
    }
  }
  return t;
}

std::string shape_str(const std::vector<int64_t>& s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + "]";
}

Tensor alloc_shaped(Backend& be, DType t, const std::vector<int64_t>& s) {
  switch (s.size()) {
    case 1: return be.alloc(t, {s[0]});
    case 2: return be.alloc(t, {s[0], s[1]});
    default: fail("internal: weight of rank ", s.size());
  }
}

Tensor load_shaped(Backend& be, std::span<const TensorInfo* const> parts, const std::vector<int64_t>& s) {
  switch (s.size()) {
    case 1: return be.load_weight(parts, {s[0]});
    case 2: return be.load_weight(parts, {s[0], s[1]});
    default: fail("internal: weight of rank ", s.size());
  }
}

// Checkpoint tensors that carry no weights and that loaders conventionally skip.
bool ignorable(const std::string& name) {
  return name.size() >= 19 && name.compare(name.size() - 19, 19, "rotary_emb.inv_freq") == 0;
}

}  // namespace

ModelWeights load_weights(const ModelConfig& cfg, const Checkpoint& ckpt, Backend& be, const LoadProgress& progress) {
  ModelWeights w;
  auto table = weight_table(cfg, w);
  size_t total = 0, done = 0;
  for (auto& spec : table)
    for (auto& n : spec.hf_names)
      if (auto* t = ckpt.find(n)) total += t->nbytes;
  std::set<std::string> used;
  for (auto& spec : table) {
    std::vector<const TensorInfo*> parts;
    for (size_t k = 0; k < spec.hf_names.size(); ++k) {
      const std::string& name = spec.hf_names[k];
      const TensorInfo* t = ckpt.find(name);
      if (!t) fail(ckpt.dir(), ": missing tensor \"", name, "\" (expected ", shape_str(spec.part_shapes[k]), ")");
      if (t->dtype != DType::F32 && t->dtype != DType::BF16 && t->dtype != DType::F16)
        fail(t->file, ": tensor \"", name, "\" has dtype ", dtype_name(t->dtype), ", expected F32, BF16 or F16");
      if (t->shape != spec.part_shapes[k])
        fail(t->file, ": tensor \"", name, "\" has shape ", t->shape_str(), ", expected ",
             shape_str(spec.part_shapes[k]), " from ", cfg.source);
      parts.push_back(t);
      used.insert(name);
      done += t->nbytes;
    }
    *spec.field = load_shaped(be, parts, spec.shape);
    if (progress) progress(done, total);
  }
  if (cfg.tie_word_embeddings) {
    w.lm_head = w.embed_tokens;
    used.insert("lm_head.weight");  // HF ties after loading, so a stored copy is ignored
  }
  for (auto& name : ckpt.names())
    if (!used.count(name) && !ignorable(name)) {
      const TensorInfo& t = ckpt.get(name);
      std::string hint = name.find(".mamba.") != std::string::npos || name.find(".self_attn.") != std::string::npos
                             ? " (does config.json's attn_layer_indices / layer_types match the checkpoint?)"
                         : name.find("bias") != std::string::npos ? " (does config.json's mamba_conv_bias / mamba_proj_bias match?)"
                                                                   : "";
      fail(t.file, ": unexpected tensor \"", name, "\" for a ", cfg.model_type, " model", hint);
    }
  return w;
}

ModelWeights dummy_weights(const ModelConfig& cfg, Backend& be, uint64_t seed) {
  ModelWeights w;
  auto table = weight_table(cfg, w);
  uint64_t k = 0;
  for (auto& spec : table) {
    *spec.field = alloc_shaped(be, be.weight_dtype(), spec.shape);
    be.fill_uniform(*spec.field, seed * 1000003ull + k++, spec.init.lo, spec.init.hi);
  }
  if (cfg.tie_word_embeddings) w.lm_head = w.embed_tokens;
  return w;
}

}  // namespace bamba

namespace bamba {

std::vector<NamedTensor> hf_tensors(const ModelConfig& cfg, const ModelWeights& w) {
  ModelWeights layout = w;  // the table points at fields of its argument; we read them back from a copy
  std::vector<NamedTensor> out;
  for (auto& spec : weight_table(cfg, layout)) {
    const Tensor fused = *spec.field;
    int64_t row = 0;
    for (size_t k = 0; k < spec.hf_names.size(); ++k) {
      const int64_t n = spec.part_shapes[k][0];
      out.push_back({spec.hf_names[k], spec.part_shapes[k], spec.hf_names.size() > 1 ? fused.slice_rows(row, row + n) : fused});
      row += n;
    }
  }
  return out;
}

ModelWeights zeros_like_weights(const ModelConfig& cfg, Backend& be) {
  ModelWeights w;
  for (auto& spec : weight_table(cfg, w)) *spec.field = alloc_shaped(be, DType::F32, spec.shape);
  if (cfg.tie_word_embeddings) w.lm_head = w.embed_tokens;
  return w;
}

void release_weights(const ModelConfig& cfg, ModelWeights& w, Backend& be) {
  for (auto& spec : weight_table(cfg, w)) be.release(*spec.field);
  w = ModelWeights{};
}

}  // namespace bamba
