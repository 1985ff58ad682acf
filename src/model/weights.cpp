#include "model/weights.h"

#include <cmath>
#include <set>

#include "core/error.h"
#include "model/quantization.h"

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
  bool linear = false;    // a projection that may be FP8 (model/quantization.h); lm_head too
};

// Tensor names per model type: Bamba's layout with different spellings (docs/family.md, "State dict").
struct Names {
  std::string embed, final_norm, layers;  // layers: the prefix of "<i>.<...>"
  std::string norm1, norm2;               // before the mixer / before the MLP (one-block layers: both "norm")
  std::string mamba, attn, mlp;           // module prefixes inside a layer
  std::string gate, up, down;             // dense MLP projections inside `mlp`
};

Names names_of(Family f) {
  switch (f) {
    case Family::Bamba:
    case Family::FalconH1:
      return {"model.embed_tokens.weight", "model.final_layernorm.weight", "model.layers.", "input_layernorm",
              "pre_ff_layernorm", "mamba.", "self_attn.", "feed_forward.", "gate_proj", "up_proj", "down_proj"};
    case Family::GraniteMoeHybrid:  // gate | up fused on disk as shared_mlp.input_linear
      return {"model.embed_tokens.weight", "model.norm.weight", "model.layers.", "input_layernorm",
              "post_attention_layernorm", "mamba.", "self_attn.", "shared_mlp.", "", "input_linear", "output_linear"};
    case Family::NemotronH:  // transformers 5.17 saves the hub layout (backbone., per-expert tensors)
      return {"backbone.embeddings.weight", "backbone.norm_f.weight", "backbone.layers.", "norm", "norm", "mixer.", "mixer.",
              "mixer.", "", "up_proj", "down_proj"};
    case Family::Mamba2:
      return {"backbone.embeddings.weight", "backbone.norm_f.weight", "backbone.layers.", "norm", "norm", "mixer.", "", "",
              "", "", ""};
    case Family::Zamba2:
      return {"model.embed_tokens.weight", "model.final_layernorm.weight", "model.layers.", "input_layernorm", "",
              "mamba.", "self_attn.", "feed_forward.", "", "gate_up_proj", "down_proj"};
    case Family::Llama:
      return {"model.embed_tokens.weight", "model.norm.weight", "model.layers.", "input_layernorm",
              "post_attention_layernorm", "", "self_attn.", "mlp.", "gate_proj", "up_proj", "down_proj"};
  }
  fail("internal: unknown model family");
}

// The one HF-name -> field table.
std::vector<WeightSpec> weight_table(const ModelConfig& c, ModelWeights& w) {
  const int64_t H = c.hidden_size, F = c.intermediate_size, V = c.vocab_size, I = c.mamba_inner, CD = c.conv_dim(),
                E = c.in_proj_dim(), nh = c.mamba_n_heads, K = c.mamba_d_conv, dh = c.head_dim,
                nq = c.num_attention_heads, nkv = c.num_key_value_heads, Hin = c.attn_in_dim();
  const Names nm = names_of(c.family);
  const Init norm_init{0.8f, 1.2f};
  std::vector<WeightSpec> t;
  auto one = [&](Tensor* f, std::string name, std::vector<int64_t> shape, Init init) {
    t.push_back({f, {std::move(name)}, {shape}, shape, init});
  };
  auto mamba = [&](MambaWeights& m, const std::string& q) {
    one(&m.in_proj, q + "in_proj.weight", {E, H}, linear_init(H));
    t.back().linear = true;
    t.push_back({&m.conv1d_weight, {q + "conv1d.weight"}, {{CD, 1, K}}, {CD, K}, {-0.5f, 0.5f}});
    one(&m.dt_bias, q + "dt_bias", {nh}, {-4.f, -2.f});
    one(&m.A_log, q + "A_log", {nh}, {0.f, 2.7f});
    one(&m.D, q + "D", {nh}, {0.5f, 1.5f});
    if (c.mamba_gated_norm) one(&m.norm, q + "norm.weight", {I}, norm_init);
    one(&m.out_proj, q + "out_proj.weight", {H, I}, linear_init(I));
    t.back().linear = true;
    if (c.mamba_conv_bias) one(&m.conv1d_bias, q + "conv1d.bias", {CD}, {-0.2f, 0.2f});
    if (c.mamba_proj_bias) one(&m.in_proj_bias, q + "in_proj.bias", {E}, {-0.1f, 0.1f});
    if (c.mamba_out_proj_bias) one(&m.out_proj_bias, q + "out_proj.bias", {H}, {-0.1f, 0.1f});
  };
  auto attention = [&](AttentionWeights& a, const std::string& q) {
    t.push_back({&a.qkv_proj,
                 {q + "q_proj.weight", q + "k_proj.weight", q + "v_proj.weight"},
                 {{nq * dh, Hin}, {nkv * dh, Hin}, {nkv * dh, Hin}},
                 {(nq + 2 * nkv) * dh, Hin},
                 linear_init(Hin)});
    t.back().linear = true;
    one(&a.o_proj, q + "o_proj.weight", {H, nq * dh}, linear_init(nq * dh));
    t.back().linear = true;
  };
  // A SwiGLU MLP [2F, H] stored as gate_proj + up_proj, or already fused (gate rows first) under `up`.
  auto swiglu = [&](Tensor* gate_up, Tensor* down, const std::string& q, int64_t width) {
    if (nm.gate.empty())
      one(gate_up, q + nm.up + ".weight", {2 * width, H}, linear_init(H));
    else
      t.push_back({gate_up, {q + nm.gate + ".weight", q + nm.up + ".weight"}, {{width, H}, {width, H}}, {2 * width, H},
                   linear_init(H)});
    t.back().linear = true;
    one(down, q + nm.down + ".weight", {H, width}, linear_init(width));
    t.back().linear = true;
  };
  auto relu2 = [&](Tensor* up, Tensor* down, const std::string& q, int64_t width) {
    one(up, q + "up_proj.weight", {width, H}, linear_init(H));
    t.back().linear = true;
    one(down, q + "down_proj.weight", {H, width}, linear_init(width));
    t.back().linear = true;
  };

  w.layers.resize(size_t(c.num_hidden_layers));
  one(&w.embed_tokens, nm.embed, {V, H}, {-1.f, 1.f});
  one(&w.final_layernorm, nm.final_norm, {H}, norm_init);
  if (!c.tie_word_embeddings) {
    one(&w.lm_head, "lm_head.weight", {V, H}, linear_init(H));
    t.back().linear = true;
  }
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    LayerWeights& L = w.layers[size_t(i)];
    const std::string p = nm.layers + std::to_string(i) + ".";
    const LayerKind kind = c.layer_kinds[size_t(i)];
    const MlpKind mlp = c.mlp_kinds[size_t(i)];
    // The order is the table's (and Bamba's generated weights are seeded by position): norms, MLP, mixer.
    if (kind != LayerKind::None && kind != LayerKind::SharedAttention)
      one(&L.input_layernorm, p + nm.norm1 + ".weight", {H}, norm_init);
    if (mlp != MlpKind::None) one(&L.pre_ff_layernorm, p + nm.norm2 + ".weight", {H}, norm_init);
    if (mlp == MlpKind::SwiGLU) swiglu(&L.gate_up_proj, &L.down_proj, p + nm.mlp, F);
    if (mlp == MlpKind::Relu2) relu2(&L.gate_up_proj, &L.down_proj, p + nm.mlp, F);
    if (mlp == MlpKind::MoE) {
      const int64_t Ne = c.num_experts, Fe = c.moe_intermediate_size, S = c.shared_intermediate_size;
      MoeWeights& m = L.moe;
      if (c.moe_router == MoeRouter::SoftmaxTopK) {  // GraniteMoeHybrid: block_sparse_moe + shared_mlp
        const std::string q = p + "block_sparse_moe.";
        one(&m.router, q + "router.layer.weight", {Ne, H}, linear_init(H));
        one(&m.experts_up, q + "input_linear.weight", {Ne, 2 * Fe, H}, linear_init(H));
        one(&m.experts_down, q + "output_linear.weight", {Ne, H, Fe}, linear_init(Fe));
        if (S > 0) swiglu(&L.gate_up_proj, &L.down_proj, p + nm.mlp, S);
      } else {  // Nemotron-H: mixer.gate + mixer.experts + mixer.shared_experts
        const std::string q = p + "mixer.";
        one(&m.router, q + "gate.weight", {Ne, H}, linear_init(H));
        one(&m.router_bias, q + "gate.e_score_correction_bias", {Ne}, {-0.1f, 0.1f});
        // One tensor per expert on disk, stacked here into [E, Fe, H] / [E, H, Fe].
        WeightSpec up{&m.experts_up, {}, {}, {Ne, Fe, H}, linear_init(H)}, down{&m.experts_down, {}, {}, {Ne, H, Fe}, linear_init(Fe)};
        for (int64_t e = 0; e < Ne; ++e) {
          up.hf_names.push_back(q + "experts." + std::to_string(e) + ".up_proj.weight");
          up.part_shapes.push_back({Fe, H});
          down.hf_names.push_back(q + "experts." + std::to_string(e) + ".down_proj.weight");
          down.part_shapes.push_back({H, Fe});
        }
        t.push_back(std::move(up));
        t.push_back(std::move(down));
        if (S > 0) relu2(&L.gate_up_proj, &L.down_proj, q + "shared_experts.", S);
      }
    }
    if (kind == LayerKind::Mamba || kind == LayerKind::MambaAttention) mamba(L.mamba, p + nm.mamba);
    if (kind == LayerKind::Attention || kind == LayerKind::MambaAttention) attention(L.attn, p + nm.attn);
    if (kind == LayerKind::SharedAttention) {  // Zamba2 hybrid: its own Mamba layer lives under mamba_decoder
      one(&L.input_layernorm, p + "mamba_decoder.input_layernorm.weight", {H}, norm_init);
      mamba(L.mamba, p + "mamba_decoder.mamba.");
      one(&L.linear, p + "linear.weight", {H, H}, linear_init(H));
      t.back().linear = true;
    }
  }
  if (c.family == Family::Zamba2) {
    // Shared block b's tensors appear once, under the first hybrid layer that uses it; hybrid layer j (in layer
    // order) uses block j % num_mem_blocks and its adapters are that block's adapter lists' entry j.
    std::vector<int64_t> hybrid;
    for (int64_t i = 0; i < c.num_hidden_layers; ++i)
      if (c.layer_kinds[size_t(i)] == LayerKind::SharedAttention) hybrid.push_back(i);
    const int64_t nb = c.num_mem_blocks, r = c.adapter_rank;
    w.shared_blocks.resize(size_t(nb));
    auto block_prefix = [&](int64_t b) {
      return nm.layers + std::to_string(hybrid[size_t(b)]) + ".shared_transformer.";
    };
    for (int64_t b = 0; b < nb && b < int64_t(hybrid.size()); ++b) {
      SharedBlockWeights& s = w.shared_blocks[size_t(b)];
      const std::string q = block_prefix(b);
      one(&s.input_layernorm, q + "input_layernorm.weight", {2 * H}, norm_init);
      attention(s.attn, q + "self_attn.");
      one(&s.pre_ff_layernorm, q + "pre_ff_layernorm.weight", {H}, norm_init);
      one(&s.gate_up_proj, q + "feed_forward.gate_up_proj.weight", {2 * F, H}, linear_init(H));
      one(&s.down_proj, q + "feed_forward.down_proj.weight", {H, F}, linear_init(F));
    }
    for (size_t j = 0; j < hybrid.size(); ++j) {
      AdapterWeights& a = w.layers[size_t(hybrid[j])].adapters;
      const std::string q = block_prefix(int64_t(j) % nb), js = std::to_string(j);
      if (c.attention_adapters) {
        const std::string qa = q + "self_attn.linear_", n0 = "_adapter_list." + js + ".0.weight",
                          n1 = "_adapter_list." + js + ".1.weight";
        t.push_back({&a.qkv_down, {qa + "q" + n0, qa + "k" + n0, qa + "v" + n0}, {{r, Hin}, {r, Hin}, {r, Hin}},
                     {3 * r, Hin}, linear_init(Hin)});
        one(&a.q_up, qa + "q" + n1, {nq * dh, r}, linear_init(r));
        one(&a.k_up, qa + "k" + n1, {nkv * dh, r}, linear_init(r));
        one(&a.v_up, qa + "v" + n1, {nkv * dh, r}, linear_init(r));
      }
      const std::string qm = q + "feed_forward.gate_up_proj_adapter_list." + js;
      one(&a.mlp_down, qm + ".0.weight", {r, H}, linear_init(H));
      one(&a.mlp_up, qm + ".1.weight", {2 * F, r}, linear_init(r));
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
    case 3: return be.alloc(t, {s[0], s[1], s[2]});
    default: fail("internal: weight of rank ", s.size());
  }
}

Tensor load_shaped(Backend& be, std::span<const TensorInfo* const> parts, const std::vector<int64_t>& s) {
  switch (s.size()) {
    case 1: return be.load_weight(parts, {s[0]});
    case 2: return be.load_weight(parts, {s[0], s[1]});
    case 3: return be.load_weight(parts, {s[0], s[1], s[2]});
    default: fail("internal: weight of rank ", s.size());
  }
}

// Checkpoint tensors that carry no weights and that loaders conventionally skip.
bool ignorable(const ModelConfig& c, const std::string& name) {
  // Nemotron-H's multi-token-prediction layers: transformers does not load them either.
  if (c.family == Family::NemotronH && name.rfind("mtp.", 0) == 0) return true;
  return name.size() >= 19 && name.compare(name.size() - 19, 19, "rotary_emb.inv_freq") == 0;
}

// Nemotron-H as transformers 5.x names its modules (a checkpoint saved without the hub conversion):
// "model." for "backbone.", and the experts already stacked (mixer.experts.up_proj [E, F, H]).
void nemotron_module_spelling(WeightSpec& spec) {
  for (auto& n : spec.hf_names)
    if (n.rfind("backbone.", 0) == 0) n = "model." + n.substr(9);
  const std::string& first = spec.hf_names[0];
  const size_t e = first.find(".experts.0.");
  if (e != std::string::npos) {
    spec.hf_names = {first.substr(0, e) + ".experts." + first.substr(e + 11, first.size() - e - 11 - 7)};  // - ".weight"
    spec.part_shapes = {spec.shape};
  }
}

void attach_fp8_scales(Backend& be, Tensor& w, const std::vector<float>& scales, int32_t block) {
  w.scale_block = block;
  Tensor s = block ? be.alloc(DType::F32, {(w.shape[0] + block - 1) / block, (w.shape[1] + block - 1) / block})
                   : be.alloc(DType::F32, {w.shape[0]});
  if (size_t(s.numel()) != scales.size()) fail("internal: ", scales.size(), " FP8 scales for ", s.shape_str());
  be.from_host_f32(s, scales.data());
  w.scale = s.ptr<float>();
}

}  // namespace

ModelWeights load_weights(const ModelConfig& cfg, const Checkpoint& ckpt, Backend& be, const LoadProgress& progress) {
  ModelWeights w;
  auto table = weight_table(cfg, w);
  if (cfg.family == Family::NemotronH && !ckpt.find(table[0].hf_names[0]))
    for (auto& spec : table) nemotron_module_spelling(spec);
  // Mamba2 / Nemotron-H embeddings: older checkpoints say "embedding" (transformers' load hook renames it).
  if (std::string& e = table[0].hf_names[0]; !ckpt.find(e) && e.size() > 16 && e.compare(e.size() - 17, 17, "embeddings.weight") == 0) {
    std::string old = e.substr(0, e.size() - 17) + "embedding.weight";
    if (ckpt.find(old)) e = old;
  }
  size_t total = 0, done = 0;
  for (auto& spec : table)
    for (auto& n : spec.hf_names)
      if (auto* t = ckpt.find(n)) total += t->nbytes;
  std::set<std::string> used;
  const Fp8Format fp8 = read_fp8_format(ckpt.dir() + "/config.json");
  for (auto& spec : table) {
    std::vector<const TensorInfo*> parts;
    for (size_t k = 0; k < spec.hf_names.size(); ++k) {
      const std::string& name = spec.hf_names[k];
      const TensorInfo* t = ckpt.find(name);
      if (!t) fail(ckpt.dir(), ": missing tensor \"", name, "\" (expected ", shape_str(spec.part_shapes[k]), ")");
      if (t->dtype == DType::F8_E4M3) {
        const std::string module = name.substr(0, name.size() - 7);
        if (!spec.linear) fail(t->file, ": tensor \"", name, "\" is F8_E4M3, but only linear projections may be FP8");
        if (fp8.method == Fp8Method::None)
          fail(t->file, ": tensor \"", name, "\" is F8_E4M3, but ", fp8.source, " has no quantization_config");
        if (fp8.ignored(module))
          fail(t->file, ": tensor \"", name, "\" is F8_E4M3, but ", fp8.source, "'s quantization_config leaves module \"",
               module, "\" unquantized (ignore / modules_to_not_convert)");
        if (k > 0 && parts[0]->dtype != DType::F8_E4M3)
          fail(t->file, ": tensor \"", name, "\" is F8_E4M3, but \"", parts[0]->name, "\" (stacked with it) is not");
      } else if (t->dtype != DType::F32 && t->dtype != DType::BF16 && t->dtype != DType::F16) {
        fail(t->file, ": tensor \"", name, "\" has dtype ", dtype_name(t->dtype), ", expected F32, BF16 or F16",
             spec.linear ? " (or F8_E4M3 with scales)" : "");
      } else if (k > 0 && parts[0]->dtype == DType::F8_E4M3) {
        fail(t->file, ": tensor \"", name, "\" is ", dtype_name(t->dtype), ", but \"", parts[0]->name,
             "\" (stacked with it) is F8_E4M3");
      }
      if (t->shape != spec.part_shapes[k])
        fail(t->file, ": tensor \"", name, "\" has shape ", t->shape_str(), ", expected ",
             shape_str(spec.part_shapes[k]), " from ", cfg.source);
      parts.push_back(t);
      used.insert(name);
      done += t->nbytes;
    }
    *spec.field = load_shaped(be, parts, spec.shape);
    if (parts[0]->dtype == DType::F8_E4M3) {
      std::vector<std::string> scale_names;
      const std::vector<float> scales = read_fp8_scales(fp8, ckpt, parts, spec.shape[1], scale_names);
      used.insert(scale_names.begin(), scale_names.end());
      attach_fp8_scales(be, *spec.field, scales, int32_t(fp8.block));
    }
    if (progress) progress(done, total);
  }
  if (cfg.tie_word_embeddings) {
    w.lm_head = w.embed_tokens;
    used.insert("lm_head.weight");  // HF ties after loading, so a stored copy is ignored
  }
  for (auto& name : ckpt.names())
    if (!used.count(name) && !ignorable(cfg, name)) {
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
      // A part of the fused tensor's rank spans part_shape[0] rows of it; a part of lower rank (one expert of a
      // stack [E, F, H]) is one entry of dim 0.
      const bool entry = spec.part_shapes[k].size() < spec.shape.size();
      const int64_t n = entry ? 1 : spec.part_shapes[k][0];
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

void quantize_weights_fp8(const ModelConfig& cfg, ModelWeights& w, Backend& be, bool lm_head) {
  for (auto& spec : weight_table(cfg, w)) {
    Tensor& f = *spec.field;
    if (!spec.linear || f.dtype == DType::F8_E4M3 || (spec.field == &w.lm_head && !lm_head)) continue;
    Tensor q = be.alloc(DType::F8_E4M3, {f.shape[0], f.shape[1]}), s = be.alloc(DType::F32, {f.shape[0]});
    be.quantize_fp8(q, s, f);
    be.release(f);
    q.scale = s.ptr<float>();
    f = q;
  }
}

bool has_fp8_weights(const ModelConfig& cfg, const ModelWeights& w) {
  ModelWeights layout = w;
  for (auto& spec : weight_table(cfg, layout))
    if (spec.field->dtype == DType::F8_E4M3) return true;
  return false;
}

void release_weights(const ModelConfig& cfg, ModelWeights& w, Backend& be) {
  for (auto& spec : weight_table(cfg, w)) {
    if (spec.field->scale) be.release(spec.field->scales());
    be.release(*spec.field);
  }
  w = ModelWeights{};
}

}  // namespace bamba
