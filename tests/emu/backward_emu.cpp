// The one-pass kernels of src/backend/cuda/backward.cu — conv1d + SiLU backward and the RMSNorm backward with rows
// in registers — run on the CPU by tests/emu/run.sh (see there), against the CPU twins grad::conv1d_silu_backward
// and grad::(gated_)rmsnorm_backward in double. Also the split forms beside them, and each fused kernel twice for
// the same bits. Not part of the build: a check for machines without a GPU.
#include <type_traits>

#include "backend/cuda/kernels.cuh"
#include "backward_kernels_emu.inc"
#include "backend/cpu/grad_kernels.h"
#include <cstdio>
#include <cstring>
#include <random>
using namespace bamba;
using namespace bamba::cuda;

static double rel(const std::vector<float>& a, const std::vector<double>& r) {
  double n = 0, d = 0;
  for (size_t i = 0; i < a.size(); ++i) { n += (a[i] - r[i]) * (a[i] - r[i]); d += r[i] * r[i]; }
  return std::sqrt(n / std::max(d, 1e-30));
}
static float rb(float v) { return __bfloat162float(__float2bfloat16_rn(v)); }
static std::mt19937 rng(11);
static float U(float lo, float hi) { return std::uniform_real_distribution<float>(lo, hi)(rng); }
// column_finish_kernel's sum, as the launcher runs it after the fused kernels
static void finish(const std::vector<float>& part, int64_t chunks, int64_t ldp, int64_t N, float* out) {
  for (int64_t n = 0; n < N; ++n) {
    float acc = 0.f;
    for (int64_t c = 0; c < chunks; ++c) acc += part[size_t(c * ldp + n)];
    out[n] += acc;
  }
}
static int bad = 0;
// within 1e-2 of the float64 twin for bf16 outputs (their rounding is ~2e-3), 1e-5 for fp32
template <typename T>
static void check(const char* what, const std::string& where, double e) {
  std::printf("  %s%s: relative L2 %.2e\n", what, where.c_str(), e);
  bad += !(e < (std::is_same_v<T, float> ? 1e-5 : 1e-2));
}

// activations T (bf16 or fp32); channels CD with x at row stride ldx (≥ CD), K taps.
template <typename T, int K, int E>
static void conv_case(int CD, int ldx, const std::vector<int>& lens) {
  std::vector<int32_t> ss = {0}, seq_of;
  for (size_t s = 0; s < lens.size(); ++s) {
    for (int t = 0; t < lens[s]; ++t) seq_of.push_back(int32_t(s));
    ss.push_back(ss.back() + lens[s]);
  }
  const int T_ = ss.back();
  std::vector<float> x(size_t(T_) * CD), dout(size_t(T_) * CD), w(size_t(CD) * K), bias(CD);
  for (auto& v : x) v = rb(U(-2, 2));
  for (auto& v : dout) v = rb(U(-1, 1));
  for (auto& v : w) v = rb(U(-0.5f, 0.5f));
  for (auto& v : bias) v = U(-0.2f, 0.2f);
  std::vector<T> xb(size_t(T_) * ldx, from_f<T>(NAN)), db(size_t(T_) * CD);
  std::vector<bf16> wb(w.size());  // the weight as a bf16 PView (generated weights' form)
  for (int t = 0; t < T_; ++t)
    for (int c = 0; c < CD; ++c) xb[size_t(t) * ldx + c] = from_f<T>(x[size_t(t) * CD + c]);
  for (size_t i = 0; i < dout.size(); ++i) db[i] = from_f<T>(dout[i]);
  for (size_t i = 0; i < w.size(); ++i) wb[i] = __float2bfloat16_rn(w[i]);
  // reference in double
  std::vector<double> xd(x.begin(), x.end()), dd(dout.begin(), dout.end()), wd(w.begin(), w.end()),
      bd(bias.begin(), bias.end()), rdx(x.size()), rdw(w.size(), 0.0), rdb(CD, 0.0);
  grad::conv1d_silu_backward<double>({rdx.data(), T_, CD, CD}, {rdw.data(), CD, K, K}, rdb.data(), {dd.data(), T_, CD, CD},
                                     {xd.data(), T_, CD, CD}, {wd.data(), CD, K, K}, bd.data(), ss);
  DevBatch b{};
  b.seq_of = seq_of.data(), b.seq_start = ss.data(), b.T = T_, b.S = int(lens.size());
  const PView wv{wb.data(), 1}, bv{bias.data(), 0};
  const std::string where = std::string(std::is_same_v<T, float> ? " (fp32" : " (bf16") + " conv K " +
                            std::to_string(K) + ", E " + std::to_string(E) + ", CD " + std::to_string(CD) + ", T " +
                            std::to_string(T_) + ")";
  std::vector<float> first[3];
  for (int rep = 0; rep < 2; ++rep) {
    const int64_t chunks = conv_fused_chunks(T_), ldp = int64_t(CD) * (K + 1);
    std::vector<float> part(size_t(chunks * ldp), NAN), gdw(w.size(), 0.f), gdb(CD, 0.f);
    std::vector<T> dxb(size_t(T_) * CD, from_f<T>(NAN));
    emu::launch({ceil_div(CD, kConvLanes * E), unsigned(chunks)}, {kConvLanes, kConvRunsPerBlock}, 0, [&] {
      conv_backward_fused_kernel<T, K, E>(dxb.data(), CD, part.data(), db.data(), CD, xb.data(), ldx, wv, bv, CD, b);
    });
    finish(part, chunks, ldp, int64_t(CD) * K, gdw.data());
    finish(std::vector<float>(part.begin() + int64_t(CD) * K, part.end()), chunks, ldp, CD, gdb.data());
    std::vector<float> gdx(dxb.size());
    for (size_t i = 0; i < dxb.size(); ++i) gdx[i] = to_f(dxb[i]);
    if (rep == 0) {
      check<T>("dx", where, rel(gdx, rdx));
      check<T>("dweight", where, rel(gdw, rdw));
      check<T>("dbias", where, rel(gdb, rdb));
      first[0] = gdx, first[1] = gdw, first[2] = gdb;
    } else {
      const bool same = first[0] == gdx && first[1] == gdw && first[2] == gdb;
      std::printf("  twice%s: %s\n", where.c_str(), same ? "bit-identical" : "DIFFER");
      bad += !same;
    }
  }
}

// activations T; M rows of I channels in groups of `group`; GATED: the gated norm (y, z at row stride ld), else the
// plain norm accumulating into dx.
template <typename T, bool GATED>
static void norm_case(int M, int I, int group, int ld) {
  std::vector<float> y(size_t(M) * I), z(size_t(M) * I), dout(size_t(M) * I), w(I), dx0(size_t(M) * I);
  for (auto& v : y) v = rb(U(-2, 2));
  for (auto& v : z) v = rb(U(-2, 2));
  for (auto& v : dout) v = rb(U(-1, 1));
  for (auto& v : dx0) v = rb(U(-1, 1));
  for (auto& v : w) v = U(0.8f, 1.2f);
  auto pack = [&](const std::vector<float>& v, int l) {
    std::vector<T> o(size_t(M) * l, from_f<T>(NAN));
    for (int r = 0; r < M; ++r)
      for (int j = 0; j < I; ++j) o[size_t(r) * l + j] = from_f<T>(v[size_t(r) * I + j]);
    return o;
  };
  const std::vector<T> yb = pack(y, ld), zb = pack(z, ld), db = pack(dout, I);
  std::vector<double> yd(y.begin(), y.end()), zd(z.begin(), z.end()), dd(dout.begin(), dout.end()),
      wd(w.begin(), w.end()), rdy(y.size()), rdz(y.size()), rdw(I, 0.0), rdx(dx0.begin(), dx0.end());
  if (GATED)
    grad::gated_rmsnorm_backward<double>({rdy.data(), M, I, I}, {rdz.data(), M, I, I}, rdw.data(), {dd.data(), M, I, I},
                                         {yd.data(), M, I, I}, {zd.data(), M, I, I}, wd.data(), group, 1e-5);
  else
    grad::rmsnorm_backward<double>({rdx.data(), M, I, I}, rdw.data(), {dd.data(), M, I, I}, {yd.data(), M, I, I},
                                   wd.data(), 1e-5, true);
  const std::string where = std::string(std::is_same_v<T, float> ? " (fp32" : " (bf16") + (GATED ? " gated" : " plain") + " norm, M " + std::to_string(M) + ", I " +
                            std::to_string(I) + ", group " + std::to_string(group) + ")";
  if (!norm_backward_fused_takes<T>(I, group, {yb.data(), zb.data()}, {ld, I})) {
    std::printf("  not taken%s\n", where.c_str());
    ++bad;
    return;
  }
  std::vector<float> first[3];
  for (int rep = 0; rep < 2; ++rep) {
    const int64_t chunks = norm_fused_chunks(M);
    std::vector<float> part(size_t(chunks * I), NAN), gdw(I, 0.f);
    std::vector<T> dyb = GATED ? pack(std::vector<float>(y.size(), NAN), I) : pack(dx0, I), dzb = pack(y, I);
    emu::launch({unsigned(chunks)}, {kNormThreads}, 0, [&] {
      norm_backward_fused_kernel<T, GATED>(dyb.data(), I, dzb.data(), I, part.data(), db.data(), I, yb.data(), ld,
                                              GATED ? zb.data() : nullptr, ld, PView{w.data(), 0}, M, I, group, 1e-5f,
                                              !GATED);
    });
    finish(part, chunks, I, I, gdw.data());
    std::vector<float> gdy(dyb.size()), gdz(dzb.size());
    for (size_t i = 0; i < dyb.size(); ++i) gdy[i] = to_f(dyb[i]), gdz[i] = to_f(dzb[i]);
    if (rep == 0) {
      check<T>(GATED ? "dy" : "dx (accumulated)", where, rel(gdy, GATED ? rdy : rdx));
      if (GATED) check<T>("dz", where, rel(gdz, rdz));
      check<T>("dw", where, rel(gdw, rdw));
      first[0] = gdy, first[1] = gdz, first[2] = gdw;
    } else {
      const bool same = first[0] == gdy && first[1] == gdz && first[2] == gdw;
      std::printf("  twice%s: %s\n", where.c_str(), same ? "bit-identical" : "DIFFER");
      bad += !same;
    }
  }
}

int main() {
  // sequences crossing the 32-row runs and the 256-row blocks, ending inside them, one of a single token
  const std::vector<int> lens = {1, 300, 37, 2, 33, 64};
  conv_case<bf16, 4, 4>(72, 76, lens);   // vector path, x strided and aligned; a block of 32 lanes with 18 live
  conv_case<bf16, 4, 1>(37, 40, lens);   // one channel a thread (odd channels)
  conv_case<bf16, 3, 4>(44, 44, {5, 260});
  conv_case<bf16, 2, 1>(9, 9, {3, 1, 40});
  conv_case<float, 4, 4>(72, 72, lens);  // fp32: 16-byte vectors
  norm_case<bf16, true>(37, 1024, 1024, 2056);  // one group; rows not a multiple of 16
  norm_case<bf16, true>(37, 1024, 256, 2056);   // four groups of one warp chunk each (32 lanes × 8 bf16)
  norm_case<bf16, true>(17, 1536, 768, 1536);   // two groups of three warp chunks; a row short of a block's 4 × 2048
  norm_case<bf16, false>(21, 512, 512, 520);
  norm_case<float, true>(19, 1024, 128, 1028);  // fp32: 4 floats a vector, warp chunks of 128, eight groups
  norm_case<float, false>(21, 4096, 4096, 4096);  // the widest fp32 row the registers hold
  std::printf(bad ? "FAIL %d\n" : "all within 1e-2 (bf16) / 1e-5 (fp32), bit-identical twice\n", bad);
  return bad != 0;
}
