// The cross-entropy rows kernel of src/backend/cuda/cross_entropy.cu (max and Σ exp in one pass) run on the CPU by
// tests/emu/run.sh (see there), against the loss and gradient in double: vocabularies below and above the block's
// 1,024 threads, an unscored row (-100), a row with −inf logits (masked tokens) among finite ones, large logits.
// Not part of the build: a check for machines without a GPU.
#include "backend/cuda/kernels.cuh"
#include "cross_entropy_kernels_emu.inc"
#include <cstdio>
#include <random>
using namespace bamba::cuda;

int main() {
  std::mt19937 rng(5);
  int bad = 0;
  for (int V : {1001, 5003}) {
    const int R = 4;
    const float ce_scale = 1.f / 31, z = 1e-3f;
    std::vector<float> l(size_t(R) * V);
    for (auto& x : l) x = std::uniform_real_distribution<float>(-8, 8)(rng);
    for (int v = 0; v < V; v += 3) l[size_t(2) * V + v] = -INFINITY;  // row 2: a third masked
    for (int v = 0; v < V; ++v) l[size_t(3) * V + v] += 60.f;           // row 3: far from 0
    const std::vector<int32_t> tgt = {7, -100, 11, int32_t(V - 1)};
    std::vector<float> dl(l.size(), NAN), loss(R, NAN);
    emu::launch({unsigned(R)}, {1024}, 0, [&] {
      cross_entropy_kernel<float>(l.data(), dl.data(), V, tgt.data(), ce_scale, z, loss.data());
    });
    double err_l = 0, err_g = 0, ref_g = 0;
    for (int r = 0; r < R; ++r) {
      const float* x = &l[size_t(r) * V];
      double mx = -INFINITY, s = 0;
      for (int v = 0; v < V; ++v) mx = std::max(mx, double(x[v]));
      for (int v = 0; v < V; ++v) s += std::exp(double(x[v]) - mx);
      const double lse = mx + std::log(s), ce = tgt[r] >= 0 ? ce_scale : 0.0;
      const double L = ce * (lse - (tgt[r] >= 0 ? x[tgt[r]] : 0.0)) + z * lse * lse;
      err_l = std::max(err_l, std::abs(loss[r] - L) / std::max(1e-30, std::abs(L)));
      for (int v = 0; v < V; ++v) {
        const double g = (ce + 2 * z * lse) * std::exp(double(x[v]) - lse) - (v == tgt[r] ? ce : 0.0);
        err_g += (dl[size_t(r) * V + v] - g) * (dl[size_t(r) * V + v] - g), ref_g += g * g;
      }
    }
    err_g = std::sqrt(err_g / ref_g);
    std::printf("  V %d: loss relative error %.2e, dlogits relative L2 %.2e\n", V, err_l, err_g);
    bad += !(err_l < 1e-5) + !(err_g < 1e-5);
  }
  std::printf(bad ? "FAIL %d\n" : "all within 1e-5\n", bad);
  return bad != 0;
}
