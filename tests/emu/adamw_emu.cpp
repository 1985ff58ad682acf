// The one-launch AdamW kernel of src/backend/cuda/adamw.cu run on the CPU by tests/emu/run.sh (see there): against
// its CPU twin, the host loop of train/adamw.cpp, for fp32 masters with a bf16 copy (fp32 and bf16 moments, decay on
// and off, tensors around the 8,192-element chunk), and the memory mode's split masters (core/bf16_split.h) against
// the fp32 ones — the same master bits, and the weight the model reads the copy's bf16 but at exact ties.
// Not part of the build: a check for machines without a GPU.
#include "backend/cuda/kernels.cuh"
#include "adamw_args_emu.inc"
#include "adamw_kernels_emu.inc"

#include <cstdio>
#include <random>

#include "core/bf16_split.h"
#include "train/adamw.h"
using namespace bamba;
using namespace bamba::cuda;

namespace {

uint32_t bits(float x) { return f32_bits(x); }

// One launch of adamw_many_kernel over `t` (first_block filled in here), as adamw_step_many launches it.
void run_many(std::vector<AdamWTensorArgs> t, bool bf16m, const AdamWArgs& a) {
  int64_t blocks = 0;
  for (auto& x : t) x.first_block = blocks, blocks += (x.n + kAdamWChunk - 1) / kAdamWChunk;
  emu::launch({unsigned(blocks)}, {unsigned(kAdamWThreads)}, 0, [&] {
    if (bf16m) adamw_many_kernel<true>(t.data(), int(t.size()), a);
    else adamw_many_kernel<false>(t.data(), int(t.size()), a);
  });
}

}  // namespace

int main() {
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> d(-1, 1);
  const std::vector<size_t> sizes = {1, 300, 8193};
  int bad = 0;
  for (bool bf16m : {false, true}) {
    const size_t n_t = sizes.size();
    // the host twin's parameters, and the kernel's: fp32 masters + bf16 copies (A), split masters (B)
    std::vector<std::vector<float>> hw(n_t), hg(n_t), aw(n_t);
    std::vector<std::vector<uint16_t>> acopy(n_t), bhi(n_t), blo(n_t);
    std::vector<std::vector<unsigned char>> am(n_t), av(n_t), bm(n_t), bv(n_t);  // moments: fp32 or bf16, raw
    auto moment = [&](const std::vector<unsigned char>& m, size_t j) {  // as fp32 (exact for bf16)
      if (!bf16m) return f32_from_bits(uint32_t(m[4 * j]) | uint32_t(m[4 * j + 1]) << 8 |
                                       uint32_t(m[4 * j + 2]) << 16 | uint32_t(m[4 * j + 3]) << 24);
      return bf16_to_f32(uint16_t(m[2 * j] | m[2 * j + 1] << 8));
    };
    std::vector<ParamRef> host;
    for (size_t i = 0; i < n_t; ++i) {
      const size_t n = sizes[i];
      hw[i].resize(n), hg[i].resize(n), acopy[i].resize(n), bhi[i].resize(n), blo[i].resize(n);
      for (auto& x : hw[i]) x = d(rng);
      for (auto& x : hg[i]) x = d(rng) * 0.1f;
      aw[i] = hw[i];
      for (size_t j = 0; j < n; ++j) bf16_split(hw[i][j], bhi[i][j], blo[i][j]);
      for (auto* m : {&am[i], &av[i], &bm[i], &bv[i]}) m->assign(n * 4, 0);
      ParamRef p;
      p.name = "p" + std::to_string(i), p.value = hw[i].data(), p.grad = hg[i].data(), p.size = n;
      p.shape = {int64_t(n)}, p.decay = i % 2 == 0;
      host.push_back(p);
    }
    AdamWOptions o;
    o.bf16_moments = bf16m, o.seed = 9;
    AdamW twin(host, o);
    for (int step = 1; step <= 3; ++step) {
      // the scalars, keys and decay factors that AdamW::step hands a device
      const double lr = 1e-2;
      const AdamWUpdate u = adamw_scalars(o, step, lr, 0.5f);
      const AdamWArgs a{u.step_size, u.bc2_sqrt, u.eps, u.one_minus_b1, u.b2, u.one_minus_b2, 1.f, u.grad_scale, 0};
      std::vector<AdamWTensorArgs> ta, tb;
      for (size_t i = 0; i < n_t; ++i) {
        const uint64_t key = adamw_rounding_key(o, step, i);
        const float decay = adamw_decay_factor(o, lr, host[i].decay);
        ta.push_back({aw[i].data(), nullptr, hg[i].data(), am[i].data(), av[i].data(), acopy[i].data(),
                      int64_t(sizes[i]), 0, key, decay, 1});
        tb.push_back({bhi[i].data(), blo[i].data(), hg[i].data(), bm[i].data(), bv[i].data(), nullptr,
                      int64_t(sizes[i]), 0, key, decay, 0});
      }
      run_many(ta, bf16m, a);
      run_many(tb, bf16m, a);
      twin.step(host, lr, 0.5f);
    }
    size_t ties = 0, diff_twin = 0, total = 0;
    for (size_t i = 0; i < n_t; ++i)
      for (size_t j = 0; j < sizes[i]; ++j, ++total) {
        // A against the twin: the kernel's arithmetic is the host loop's, operation for operation
        diff_twin += bits(aw[i][j]) != bits(hw[i][j]);
        const uint16_t rne = f32_to_bf16(aw[i][j]);
        if (acopy[i][j] != rne) ++bad, std::printf("  copy of %zu[%zu] is not the master rounded\n", i, j);
        // B against A: the same master, the same moments
        const float joined = bf16_join(bhi[i][j], blo[i][j]);
        if (bits(joined) != bits(aw[i][j]) || bits(moment(bm[i], j)) != bits(moment(am[i], j)) ||
            bits(moment(bv[i], j)) != bits(moment(av[i], j))) {
          if (bad++ < 5) std::printf("  split master %zu[%zu]: 0x%08x vs 0x%08x\n", i, j, bits(joined), bits(aw[i][j]));
        }
        const bool tie = (bits(aw[i][j]) & 0xffffu) == 0x8000u;
        ties += tie;
        if (!tie && bhi[i][j] != rne) ++bad, std::printf("  split weight %zu[%zu] is not the copy\n", i, j);
      }
    // the moments against the twin's (bf16: the same stochastic rounding bits)
    for (size_t i = 0; i < n_t; ++i) {
      const std::vector<float> m = twin.exp_avg(i), v = twin.exp_avg_sq(i);
      for (size_t j = 0; j < sizes[i]; ++j) {
        if (bits(moment(am[i], j)) != bits(m[j]) || bits(moment(av[i], j)) != bits(v[j])) {
          if (bad++ < 5) std::printf("  moments of %zu[%zu] differ from the host loop's\n", i, j);
        }
      }
    }
    if (diff_twin) ++bad;
    std::printf("  %s moments: %zu weights, %zu differ from the host loop's bits; split masters equal, %zu ties\n",
                bf16m ? "bf16" : "fp32", total, diff_twin, ties);
  }
  std::printf(bad ? "FAIL %d\n" : "AdamW kernel = host loop bit for bit; split masters = fp32 masters\n", bad);
  return bad != 0;
}
