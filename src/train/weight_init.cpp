#include "train/weight_init.h"

#include <cmath>
#include <vector>

#include "core/hash_uniform.h"

namespace bamba {
namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

int64_t numel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

}  // namespace

ModelWeights init_weights(const ModelConfig& cfg, Backend& be, uint64_t seed) {
  ModelWeights w = dummy_weights(cfg, be, seed);  // allocates every tensor (tied like the config); refilled below
  const float sqrt3 = std::sqrt(3.f), std_linear = 0.02f;
  const float std_residual = std_linear / std::sqrt(2.f * float(cfg.num_hidden_layers));
  uint64_t k = 0;
  for (const NamedTensor& p : hf_tensors(cfg, w)) {
    const uint64_t s = splitmix64(seed ^ splitmix64(0x1417ull + k++));
    const std::string& n = p.name;
    auto uniform_std = [&](float std) { be.fill_uniform(p.t, s, -sqrt3 * std, sqrt3 * std); };
    auto host = [&](auto value_of) {  // small per-head tensors: computed here, uploaded
      std::vector<float> v(size_t(numel(p.shape)));
      for (size_t i = 0; i < v.size(); ++i) v[i] = value_of(hash_uniform(s, i, 0.f, 1.f));
      be.from_host_f32(p.t, v.data());
    };
    if (ends_with(n, "A_log")) host([](float u) { return std::log(1.f + 15.f * u); });
    else if (ends_with(n, ".D")) be.fill(p.t, 1.f);
    else if (ends_with(n, "dt_bias")) {
      host([](float u) {
        const float dt = std::max(std::exp(std::log(0.001f) + u * (std::log(0.1f) - std::log(0.001f))), 1e-4f);
        return dt + std::log(-std::expm1(-dt));  // softplus⁻¹(dt)
      });
    } else if (n.find("conv1d.") != std::string::npos) {
      const float bound = 1.f / std::sqrt(float(cfg.mamba_d_conv));
      be.fill_uniform(p.t, s, -bound, bound);
    } else if (p.shape.size() == 1 && n.find("norm") != std::string::npos) be.fill(p.t, 1.f);  // every family's norms (norm_f too)
    else if (ends_with(n, ".bias")) be.fill(p.t, 0.f);
    else if (ends_with(n, "out_proj.weight") || ends_with(n, "o_proj.weight") || ends_with(n, "down_proj.weight") ||
             ends_with(n, "output_linear.weight"))  // the projections into the residual stream (Granite's too)
      uniform_std(std_residual);
    else uniform_std(std_linear);
  }
  return w;
}

}  // namespace bamba
