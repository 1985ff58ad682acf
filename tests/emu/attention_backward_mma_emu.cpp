// The bf16 tile kernels of causal attention's backward (src/backend/cuda/attention_backward_mma.cu) run on the CPU
// by tests/emu/run.sh (see there), against the CPU twin grad::attention_backward on bf16-rounded inputs: both
// forms, the register one (mma.sync fragments, ldmatrix, cp.async; the default) and the wmma one (BAMBA_ATTN_BWD=wmma).
#include "backend/cuda/kernels.cuh"
#include <mma.h>
#include "attention_kernels_emu.inc"
#include "backend/cpu/grad_kernels.h"
#include <cstdio>
#include <random>
using namespace bamba;
using namespace bamba::cuda;

static double rel(const std::vector<float>& a, const std::vector<float>& r) {
  double n = 0, d = 0;
  for (size_t i = 0; i < a.size(); ++i) { n += double(a[i] - r[i]) * (a[i] - r[i]); d += double(r[i]) * r[i]; }
  return std::sqrt(n / std::max(d, 1e-30));
}
int main(int argc, char** argv) {
  const int forms = argc > 1 && std::string(argv[1]) == "mma" ? 1 : 2;  // "mma": the register form only
  struct Case { int nq, nkv, dh, rot, q; std::vector<int> lens; bool odd_ld = false; };  // odd_ld: no 16-byte rows
  const std::vector<Case> cases = {{4, 2, 40, 20, 256, {1, 70, 130}}, {2, 1, 128, 64, 64, {200, 64}},
                                   {3, 3, 64, 64, 128, {129}}, {4, 1, 128, 64, 128, {3, 190}},
                                   {2, 2, 24, 8, 64, {65, 1, 20}}, {4, 2, 40, 20, 128, {150, 5}, true}};
  int bad = 0;
  for (int form = 0; form < forms; ++form)
  for (const Case& cs : cases) {
    const int nq = cs.nq, nkv = cs.nkv, dh = cs.dh, W = (nq + 2 * nkv) * dh, O = nq * dh;
    const int ldq = dh % 8 == 0 && !cs.odd_ld ? W + 8 : W + 5;  // the 16-byte loads, or not
    std::vector<int32_t> ss = {0}, pos;
    for (int l : cs.lens) {
      for (int i = 0; i < l; ++i) pos.push_back(i);
      ss.push_back(ss.back() + l);
    }
    const int T = ss.back(), S = int(cs.lens.size());
    std::vector<int32_t> cseq, cbeg, cfirst;
    for (int s = 0; s < S; ++s) {
      cfirst.push_back(int32_t(cseq.size()));
      for (int t = ss[s]; t < ss[s + 1]; t += cs.q) cseq.push_back(s), cbeg.push_back(t);
    }
    cfirst.push_back(int32_t(cseq.size()));
    std::mt19937 rng(11);
    auto U = [&](float lo, float hi) { return std::uniform_real_distribution<float>(lo, hi)(rng); };
    auto rb = [&](float v) { return __bfloat162float(__float2bfloat16_rn(v)); };
    std::vector<float> qf(size_t(T) * W), gf(size_t(T) * O), inv(size_t(cs.rot / 2));
    for (auto& v : qf) v = rb(U(-1.5f, 1.5f));
    for (auto& v : gf) v = rb(U(-1, 1));
    for (int j = 0; j < cs.rot / 2; ++j) inv[size_t(j)] = std::pow(10000.f, -2.f * j / float(cs.rot));
    std::vector<bf16> qb(size_t(T) * ldq), gb(size_t(T) * O), db(size_t(T) * W);
    for (int t = 0; t < T; ++t) for (int c = 0; c < W; ++c) qb[size_t(t) * ldq + c] = __float2bfloat16_rn(qf[size_t(t) * W + c]);
    for (size_t i = 0; i < gf.size(); ++i) gb[i] = __float2bfloat16_rn(gf[i]);
    const float scale = 1.f / std::sqrt(float(dh));
    AttnArgs a{nullptr, 0, qb.data(), ldq, nullptr, nullptr, inv.data(), nq, nkv, dh, cs.rot, 16, scale};
    DevBatch b{};
    b.seq_start = ss.data(); b.positions = pos.data(); b.chunk_seq = cseq.data(); b.chunk_begin = cbeg.data();
    b.chunk_first = cfirst.data(); b.T = T; b.S = S; b.n_chunks = int(cseq.size()); b.chunk_q = cs.q;
    setenv("BAMBA_ATTN_BWD", "mma", 1);
    if (!attention_backward_mma_takes(a, b)) { std::printf("not taken\n"); return 1; }
    // the launcher's test for cp.async: every row whole 16-byte runs
    const bool async = reinterpret_cast<uintptr_t>(qb.data()) % 16 == 0 && reinterpret_cast<uintptr_t>(gb.data()) % 16 == 0 &&
                       ldq % 8 == 0 && O % 8 == 0 && dh % 8 == 0;
    const View v{qb.data(), gb.data(), ldq, O, nq, nkv, dh, (dh + 15) / 16 * 16, cs.rot, scale, inv.data(), async};
    const unsigned tiles = unsigned(b.n_chunks * (cs.q / kT));
    std::vector<float> stats(size_t(T) * nq * 2, NAN);
    if (form == 0) {  // the register form (mma.sync, ldmatrix, cp.async)
      emu::launch({unsigned(nq), tiles}, {unsigned(kFThreads)}, kFlashSmem, [&] { flash_stats_kernel(v, b, stats.data()); });
      emu::launch({unsigned(nq), tiles}, {unsigned(kFThreads)}, kFlashSmem,
                  [&] { flash_dq_kernel(v, b, stats.data(), db.data(), W); });
      emu::launch({unsigned(nkv), tiles}, {unsigned(kFThreads)}, kFlashDkvSmem,
                  [&] { flash_dkv_kernel(v, b, stats.data(), db.data(), W); });
    } else {  // the wmma form (BAMBA_ATTN_BWD=wmma)
      emu::launch({unsigned(nq), tiles}, {unsigned(kThreads)}, kStatsSmem, [&] { stats_kernel(v, b, stats.data()); });
      emu::launch({unsigned(nq), tiles}, {unsigned(kThreads)}, kDqSmem, [&] { dq_kernel(v, b, stats.data(), db.data(), W); });
      emu::launch({unsigned(nkv), tiles}, {unsigned(kThreads)}, kDkvSmem, [&] { dkv_kernel(v, b, stats.data(), db.data(), W); });
    }
    std::vector<float> ref(size_t(T) * W);
    grad::attention_backward<float>({ref.data(), T, W, W}, {gf.data(), T, O, O}, {qf.data(), T, W, W}, inv.data(), pos, ss,
                                    grad::AttnDims{nq, nkv, dh, cs.rot, scale});
    std::vector<float> got[3], want[3];
    const int bounds[4] = {0, nq * dh, (nq + nkv) * dh, W};
    for (int t = 0; t < T; ++t)
      for (int k = 0; k < 3; ++k)
        for (int c = bounds[k]; c < bounds[k + 1]; ++c) {
          got[k].push_back(__bfloat162float(db[size_t(t) * W + c]));
          want[k].push_back(ref[size_t(t) * W + c]);
        }
    std::printf("%s nq %d nkv %d dh %d rot %d q %d T %d%s:", form ? "wmma" : "mma ", nq, nkv, dh, cs.rot, cs.q, T,
                async ? " (cp.async)" : "");
    const char* names[] = {"dq", "dk", "dv"};
    for (int k = 0; k < 3; ++k) {
      const double e = rel(got[k], want[k]);
      std::printf(" %s %.2e", names[k], e);
      bad += !(e < 3e-2);
    }
    std::printf("\n");
  }
  std::printf(bad ? "FAIL %d\n" : "all within 3e-2\n", bad);
  return bad != 0;
}
