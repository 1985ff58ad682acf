// The chunked SSD backward kernels (src/backend/cuda/ssd_backward_chunked.cu) run on the CPU by tests/emu/run.sh
// (see there), against the CPU twin grad::ssd_backward. Not part of the build: a check for machines without a GPU.
#include "backend/cuda/kernels.cuh"
#include <mma.h>
#include "kernels_emu.inc"
#include "backend/cpu/grad_kernels.h"
#include <cstdio>
#include <cstring>
#include <random>
using namespace bamba;
using namespace bamba::cuda;

static double rel(const std::vector<float>& a, const std::vector<float>& r) {
  double n = 0, d = 0;
  for (size_t i = 0; i < a.size(); ++i) { n += double(a[i] - r[i]) * (a[i] - r[i]); d += double(r[i]) * r[i]; }
  return std::sqrt(n / std::max(d, 1e-30));
}
int main() {
  struct Case { int nh, P, G, N, q; std::vector<int> lens; bool state; float lo, hi; float al_lo, al_hi, db_lo, db_hi; };
  std::vector<Case> cases = {{4, 10, 2, 20, 256, {1, 37, 200, 5}, true, 0.05f, 0.5f, -1, 1, -1, 0.5f},
                             {2, 64, 1, 128, 64, {130, 64, 3}, true, 0.f, INFINITY, 0, 2.77f, -6.9f, -2.3f},
                             {3, 64, 1, 64, 128, {200}, false, 0.f, INFINITY, -1, 1, -1, 0.5f},
                             {2, 33, 1, 100, 64, {70, 129}, true, 0.f, INFINITY, -1, 1, -1, 0.5f},
                             // more than kCarryAhead pieces in one sequence: the carry's groups and a partial one
                             {1, 16, 1, 16, 64, {650, 70}, true, 0.f, INFINITY, -1, 1, -1, 0.5f}};
  int bad = 0;
  for (const Case& cs : cases) {
    const int nh = cs.nh, P = cs.P, G = cs.G, N = cs.N, I = nh * P, W = I + 2 * G * N, hpg = nh / G;
    const int ldx = P % 8 == 0 && N % 8 == 0 ? (W + 15) / 8 * 8 : W + 3;  // the 16-byte loads, or not
    std::vector<int32_t> ss = {0};
    for (int l : cs.lens) ss.push_back(ss.back() + l);
    const int T = ss.back(), S = int(cs.lens.size());
    std::vector<int32_t> cseq, cbeg, cfirst;
    for (int s = 0; s < S; ++s) {
      cfirst.push_back(int32_t(cseq.size()));
      for (int t = ss[s]; t < ss[s + 1]; t += cs.q) cseq.push_back(s), cbeg.push_back(t);
    }
    cfirst.push_back(int32_t(cseq.size()));
    std::mt19937 rng(7);
    auto U = [&](float lo, float hi) { return std::uniform_real_distribution<float>(lo, hi)(rng); };
    auto rb = [&](float v) { return __bfloat162float(__float2bfloat16_rn(v)); };
    std::vector<float> xf(size_t(T) * W), dtf(size_t(T) * nh), dyf(size_t(T) * I);
    for (auto& v : xf) v = rb(U(-1, 1));
    for (auto& v : dtf) v = rb(U(-3, 1));
    for (auto& v : dyf) v = rb(U(-1, 1));
    std::vector<float> A_log(nh), D(nh), dtb(nh), st0(size_t(S) * nh * P * N);
    for (auto& v : A_log) v = U(cs.al_lo, cs.al_hi);
    for (auto& v : D) v = U(0.5f, 1.5f);
    for (auto& v : dtb) v = U(cs.db_lo, cs.db_hi);
    for (auto& v : st0) v = U(-1, 1);
    std::vector<bf16> xb(size_t(T) * ldx), dtbf(size_t(T) * nh), dyb(size_t(T) * I), dxb(size_t(T) * W);
    for (int t = 0; t < T; ++t) for (int c = 0; c < W; ++c) xb[size_t(t) * ldx + c] = __float2bfloat16_rn(xf[size_t(t) * W + c]);
    for (size_t i = 0; i < dtf.size(); ++i) dtbf[i] = __float2bfloat16_rn(dtf[i]);
    for (size_t i = 0; i < dyf.size(); ++i) dyb[i] = __float2bfloat16_rn(dyf[i]);
    std::vector<float> ds0(st0.size(), 0.f);
    SsdBwdArgs a{dxb.data(), W, nullptr, nh, nullptr, nullptr, nullptr, ds0.data(), dyb.data(), I, xb.data(), ldx,
                 dtbf.data(), nh, {A_log.data(), 0}, {D.data(), 0}, {dtb.data(), 0}, cs.state ? st0.data() : nullptr,
                 nh, P, G, N, cs.lo, cs.hi};
    DevBatch b{};
    b.seq_start = ss.data(); b.chunk_seq = cseq.data(); b.chunk_begin = cbeg.data(); b.chunk_first = cfirst.data();
    b.T = T; b.S = S; b.n_chunks = int(cseq.size()); b.chunk_q = cs.q;
    if (!ssd_backward_chunked_takes(a, b)) { std::printf("not taken\n"); return 1; }
    const Layout l = layout(a, b);
    std::vector<float> scratch(ssd_backward_chunked_scratch_floats(a, b), NAN);
    std::vector<float> dBp(size_t(T) * nh * N, NAN), dCp(size_t(T) * nh * N, NAN), tok(size_t(T) * nh * 3, NAN);
    float* s0 = scratch.data();
    const Scratch sc = scratch_at(s0, l);
    const unsigned nq = unsigned(l.nq);
    emu::launch({ceil_div(int64_t(l.nq) * nh, 128)}, {128}, 0, [&] { delta_kernel(a, b, l.nq, sc); });
    emu::launch({nq, unsigned(nh)}, {256}, kStateSmem, [&] { chunk_state_kernel(a, b, sc); });
    {  // kernel 2's register form against its wmma form: the same states and state gradients
      std::vector<float> other = scratch;
      const Scratch so = scratch_at(other.data(), l);
      const size_t n = size_t(l.nq) * nh * P * N;
      std::fill(so.states, so.states + n, NAN), std::fill(so.dstates, so.dstates + n, NAN);
      emu::launch({nq, unsigned(nh)}, {unsigned(kRThreads)}, kRStateSmem, [&] { chunk_state_mma_kernel(a, b, so); });
      std::vector<float> x(sc.states, sc.states + n), y(so.states, so.states + n);
      x.insert(x.end(), sc.dstates, sc.dstates + n), y.insert(y.end(), so.dstates, so.dstates + n);
      const double e = rel(y, x);
      std::printf("chunk_state register form vs wmma form: relative L2 %.2e\n", e);
      bad += !(e < 1e-5);
    }
    // the grouped carry (kCarryAhead chunks' loads at a time) must give the serial walk's bits
    std::vector<float> scratch_serial = scratch, ds0_serial(ds0.size(), 0.f);
    float* s1 = scratch_serial.data();
    const Scratch sc1 = scratch_at(s1, l);
    SsdBwdArgs a1 = a;
    a1.dstate0 = ds0_serial.data();
    emu::launch({unsigned(l.splits), unsigned(nh), unsigned(S)}, {256}, 0, [&] { carry_kernel<1>(a1, b, sc1, l.splits); });
    emu::launch({unsigned(l.splits), unsigned(nh), unsigned(S)}, {256}, 0, [&] { carry_kernel<kCarryAhead>(a, b, sc, l.splits); });
    {
      auto same = [](const float* x, const float* y, size_t n) { return std::memcmp(x, y, n * sizeof(float)) == 0; };
      const bool ok = same(scratch.data(), scratch_serial.data(), scratch.size()) && same(ds0.data(), ds0_serial.data(), ds0.size());
      std::printf("carry grouped vs serial (%d pieces): %s\n", l.nq, ok ? "bit-identical" : "DIFFER");
      bad += !ok;
    }
    // kernel 4 in both forms: the register form (the default) and the wmma form, each finished and checked below
    std::vector<bf16> dxb_wmma = dxb;
    std::vector<float> dBp_w(dBp), dCp_w(dCp), tok_w(tok);
    SsdBwdArgs aw = a;
    aw.dxBC = dxb_wmma.data();
    emu::launch({nq, unsigned(nh)}, {unsigned(kGradThreads)}, kGradSmem, [&] { grad_kernel(aw, b, sc, l.splits, dBp_w.data(), dCp_w.data(), tok_w.data()); });
    emu::launch({nq, unsigned(nh)}, {unsigned(kRThreads)}, kRegSmem, [&] { grad_mma_kernel(a, b, sc, l.splits, dBp.data(), dCp.data(), tok.data()); });
    {  // the two forms differ only in the order of fp32 additions
      double worst = 0;
      const char* what = "";
      auto cmp = [&](const char* n, const std::vector<float>& x, const std::vector<float>& y) {
        const double e = rel(x, y);
        if (!(e <= worst)) worst = e, what = n;
      };
      std::vector<float> fx(dxb.size()), fy(dxb.size());
      for (size_t i = 0; i < dxb.size(); ++i) fx[i] = __bfloat162float(dxb[i]), fy[i] = __bfloat162float(dxb_wmma[i]);
      cmp("dx", fx, fy), cmp("dBp", dBp, dBp_w), cmp("dCp", dCp, dCp_w), cmp("tok", tok, tok_w);
      std::printf("register form vs wmma form: worst relative L2 %.2e (%s)\n", worst, what);
      bad += !(worst < 2e-3);
    }
    // finishing (as ssd_backward.cu's kernels)
    std::vector<float> got_dx(size_t(T) * I), got_dB(size_t(T) * G * N), got_dC(size_t(T) * G * N), got_ddt(size_t(T) * nh);
    std::vector<float> gA(nh, 0), gD(nh, 0), gdb(nh, 0);
    for (int t = 0; t < T; ++t) {
      for (int c = 0; c < I; ++c) got_dx[size_t(t) * I + c] = __bfloat162float(dxb[size_t(t) * W + c]);
      for (int h = 0; h < nh; ++h) {
        const float* o = &tok[(size_t(t) * nh + h) * 3];
        const float u = dtf[size_t(t) * nh + h] + dtb[h], sp = u > 20 ? u : std::log1p(std::exp(u));
        const float dd = (sp < cs.lo || sp > cs.hi) ? 0.f : (u > 20 ? 1.f : 1.f / (1.f + std::exp(-u)));
        const float du = __bfloat162float(__float2bfloat16_rn(o[0] * dd));
        got_ddt[size_t(t) * nh + h] = du;
        gA[h] += o[1]; gD[h] += o[2]; gdb[h] += o[0] * dd;
      }
      for (int g = 0; g < G; ++g) for (int n = 0; n < N; ++n) {
        float sb = 0, sc2 = 0;
        for (int h = g * hpg; h < (g + 1) * hpg; ++h) { sb += dBp[(size_t(t) * nh + h) * N + n]; sc2 += dCp[(size_t(t) * nh + h) * N + n]; }
        got_dB[(size_t(t) * G + g) * N + n] = sb; got_dC[(size_t(t) * G + g) * N + n] = sc2;
      }
    }
    // reference
    std::vector<float> rdx(size_t(T) * W), rddt(size_t(T) * nh), rA(nh, 0), rD(nh, 0), rdb(nh, 0), rs0(st0.size());
    grad::SsdDims d{nh, P, G, N, 16, cs.lo, cs.hi};
    grad::ssd_backward<float>({rdx.data(), T, W, W}, {rddt.data(), T, nh, nh}, rA.data(), rD.data(), rdb.data(), rs0.data(),
                              {dyf.data(), T, I, I}, {xf.data(), T, W, W}, {dtf.data(), T, nh, nh}, A_log.data(), D.data(),
                              dtb.data(), cs.state ? st0.data() : nullptr, ss, d);
    std::vector<float> r_dx(size_t(T) * I), r_dB(size_t(T) * G * N), r_dC(size_t(T) * G * N);
    for (int t = 0; t < T; ++t) {
      for (int c = 0; c < I; ++c) r_dx[size_t(t) * I + c] = rdx[size_t(t) * W + c];
      for (int c = 0; c < G * N; ++c) { r_dB[size_t(t) * G * N + c] = rdx[size_t(t) * W + I + c]; r_dC[size_t(t) * G * N + c] = rdx[size_t(t) * W + I + G * N + c]; }
    }
    struct R { const char* n; double e; } rs[] = {{"dx", rel(got_dx, r_dx)}, {"dB", rel(got_dB, r_dB)}, {"dC", rel(got_dC, r_dC)},
        {"ddt", rel(got_ddt, rddt)}, {"dA_log", rel(gA, rA)}, {"dD", rel(gD, rD)}, {"ddt_bias", rel(gdb, rdb)}, {"dstate0", rel(ds0, rs0)}};
    std::printf("case nh %d P %d G %d N %d q %d T %d:", nh, P, G, N, cs.q, T);
    for (auto& r : rs) { std::printf(" %s %.2e", r.n, r.e); bad += !(r.e < 3e-2); }
    std::printf("\n");
  }
  std::printf(bad ? "FAIL %d\n" : "all within 3e-2\n", bad);
  return bad != 0;
}
