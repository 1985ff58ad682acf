// Every op's backward against central finite differences of its forward, in float64 (the kernels of
// backend/cpu/grad_kernels.h instantiated for double), with odd sizes; and the fp32 CPU backend's *_backward
// against those double kernels, so the wiring (BLAS calls, strides, batch metadata) is covered too.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <functional>
#include <vector>

#include "backend/backend.h"
#include "backend/cpu/grad_kernels.h"
#include "core/hash_uniform.h"

using namespace bamba;
using grad::Mat;
using Vec = std::vector<double>;

namespace {

Vec rnd(size_t n, uint64_t seed, double lo = -1, double hi = 1) {
  Vec v(n);
  for (size_t i = 0; i < n; ++i) v[i] = double(hash_uniform(seed, i, float(lo), float(hi)));
  return v;
}
Mat<double> M(Vec& v, int64_t rows, int64_t cols) { return {v.data(), rows, cols, cols}; }
Mat<const double> C(const Vec& v, int64_t rows, int64_t cols) { return {v.data(), rows, cols, cols}; }
double dot(const Vec& a, const Vec& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

// Central differences of loss() w.r.t. every element of x against `analytic`.
void fd_check(const char* what, Vec& x, const std::function<double()>& loss, const Vec& analytic, double tol = 2e-6) {
  ASSERT_EQ(x.size(), analytic.size()) << what;
  const double h = 1e-6;
  double worst = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    const double keep = x[i];
    x[i] = keep + h;
    const double lp = loss();
    x[i] = keep - h;
    const double lm = loss();
    x[i] = keep;
    const double num = (lp - lm) / (2 * h);
    worst = std::max(worst, std::abs(num - analytic[i]) / (1 + std::abs(num)));
    EXPECT_NEAR(analytic[i], num, tol * (1 + std::abs(num))) << what << " element " << i;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1e", worst);
  ::testing::Test::RecordProperty(what, buf);  // the worst relative error, in the --gtest_output report
}

}  // namespace

TEST(Backward, Embedding) {
  const int64_t V = 7, H = 5;
  const std::vector<int32_t> tok = {3, 0, 3, 6, 2, 3};
  const int64_t T = int64_t(tok.size());
  Vec table = rnd(size_t(V * H), 1), R = rnd(size_t(T * H), 2);
  auto loss = [&] {
    double s = 0;
    for (int64_t t = 0; t < T; ++t)
      for (int64_t j = 0; j < H; ++j) s += table[size_t(tok[size_t(t)] * H + j)] * R[size_t(t * H + j)];
    return s;
  };
  Vec g(table.size(), 0.0);
  grad::embed_backward<double>(M(g, V, H), C(R, T, H), tok, -1);
  fd_check("dtable", table, loss, g);
  // padding_idx 3: its row gets nothing, the others the same
  Vec gp(table.size(), 0.0);
  grad::embed_backward<double>(M(gp, V, H), C(R, T, H), tok, 3);
  for (int64_t v = 0; v < V; ++v)
    for (int64_t j = 0; j < H; ++j) EXPECT_EQ(gp[size_t(v * H + j)], v == 3 ? 0.0 : g[size_t(v * H + j)]);
}

TEST(Backward, MatmulWithBias) {
  const int64_t Mr = 5, K = 7, N = 3;
  Vec x = rnd(size_t(Mr * K), 1), W = rnd(size_t(N * K), 2), b = rnd(size_t(N), 3), R = rnd(size_t(Mr * N), 4);
  auto loss = [&] {
    Vec y(size_t(Mr * N));
    grad::matmul<double>(M(y, Mr, N), C(x, Mr, K), C(W, N, K), b.data());
    return dot(y, R);
  };
  Vec dx(x.size()), dW(W.size(), 0.0), db(b.size(), 0.0);
  grad::matmul_backward<double>(M(dx, Mr, K), M(dW, N, K), db.data(), C(R, Mr, N), C(x, Mr, K), C(W, N, K));
  fd_check("dx", x, loss, dx);
  fd_check("dW", W, loss, dW);
  fd_check("dbias", b, loss, db);
}

TEST(Backward, RmsNormAndResidualAdd) {
  const int64_t Mr = 5, H = 9;
  const double eps = 1e-5;
  Vec x = rnd(size_t(Mr * H), 1), w = rnd(size_t(H), 2, 0.5, 1.5), R = rnd(size_t(Mr * H), 3);
  auto loss = [&] {
    Vec y(x.size());
    grad::rmsnorm<double>(M(y, Mr, H), C(x, Mr, H), w.data(), eps);
    return dot(y, R);
  };
  Vec dx(x.size()), dw(w.size(), 0.0);
  grad::rmsnorm_backward<double>(M(dx, Mr, H), dw.data(), C(R, Mr, H), C(x, Mr, H), w.data(), eps, false);
  fd_check("dx", x, loss, dx);
  fd_check("dw", w, loss, dw);
  // add_rmsnorm: the residual gradient already there is kept and the norm's input gradient added to it
  Vec dh = rnd(x.size(), 4), dh0 = dh, dw2(w.size(), 0.0);
  grad::rmsnorm_backward<double>(M(dh, Mr, H), dw2.data(), C(R, Mr, H), C(x, Mr, H), w.data(), eps, true);
  for (size_t i = 0; i < dh.size(); ++i) EXPECT_NEAR(dh[i], dh0[i] + dx[i], 1e-12);
}

TEST(Backward, SwiGLU) {
  const int64_t T = 5, F = 7;
  Vec gu = rnd(size_t(T * 2 * F), 1, -3, 3), R = rnd(size_t(T * F), 2);
  auto loss = [&] {
    Vec y(size_t(T * F));
    grad::swiglu<double>(M(y, T, F), C(gu, T, 2 * F));
    return dot(y, R);
  };
  Vec d(gu.size());
  grad::swiglu_backward<double>(M(d, T, 2 * F), C(R, T, F), C(gu, T, 2 * F));
  fd_check("dgate_up", gu, loss, d);
}

TEST(Backward, Relu2) {
  const int64_t T = 5, N = 9;
  Vec x = rnd(size_t(T * N), 1, -2, 2), R = rnd(size_t(T * N), 2);
  auto loss = [&] {
    Vec out(size_t(T * N));
    grad::relu2<double>(M(out, T, N), C(x, T, N));
    return dot(out, R);
  };
  Vec dx(x.size());
  grad::relu2_backward<double>(M(dx, T, N), C(R, T, N), C(x, T, N));
  fd_check("dx", x, loss, dx);
}

TEST(Backward, SiluGate) {
  const int64_t T = 5, N = 9;
  Vec y = rnd(size_t(T * N), 1), z = rnd(size_t(T * N), 2, -3, 3), R = rnd(size_t(T * N), 3);
  auto loss = [&] {
    Vec out(size_t(T * N));
    grad::silu_gate<double>(M(out, T, N), C(y, T, N), C(z, T, N));
    return dot(out, R);
  };
  Vec dy(y.size()), dz(z.size());
  grad::silu_gate_backward<double>(M(dy, T, N), M(dz, T, N), C(R, T, N), C(y, T, N), C(z, T, N));
  fd_check("dy", y, loss, dy);
  fd_check("dz", z, loss, dz);
}

TEST(Backward, CausalConv1dSilu) {
  const int64_t CD = 5, K = 4;
  const std::vector<int32_t> seqs = {0, 4, 11, 13};  // the last sequence is shorter than the kernel
  const int64_t T = 13;
  Vec x = rnd(size_t(T * CD), 1), w = rnd(size_t(CD * K), 2), b = rnd(size_t(CD), 3), R = rnd(size_t(T * CD), 4);
  auto loss = [&] {
    Vec y(x.size());
    grad::conv1d_silu<double>(M(y, T, CD), C(x, T, CD), C(w, CD, K), b.data(), seqs);
    return dot(y, R);
  };
  Vec dx(x.size()), dw(w.size(), 0.0), db(b.size(), 0.0);
  grad::conv1d_silu_backward<double>(M(dx, T, CD), M(dw, CD, K), db.data(), C(R, T, CD), C(x, T, CD), C(w, CD, K),
                                     b.data(), seqs);
  fd_check("dx", x, loss, dx);
  fd_check("dweight", w, loss, dw);
  fd_check("dbias", b, loss, db);
}

namespace {
struct SsdCase {
  grad::SsdDims d;
  std::vector<int32_t> seqs;
  int64_t T, W;
  Vec xBC, dt, A_log, D, dt_bias, state0, R;
  SsdCase(double lo, double hi, int64_t chunk) {
    d = {4, 3, 2, 5, chunk, lo, hi};  // nh 4, P 3, G 2, N 5
    seqs = {0, 7, 13};
    T = 13;
    W = d.nh * d.P + 2 * d.G * d.N;
    xBC = rnd(size_t(T * W), 1);
    dt = rnd(size_t(T * d.nh), 2, -3, 1);
    A_log = rnd(size_t(d.nh), 3, -1, 1);
    D = rnd(size_t(d.nh), 4, 0.5, 1.5);
    dt_bias = rnd(size_t(d.nh), 5, -1, 0.5);
    state0 = rnd(size_t(2 * d.nh * d.P * d.N), 6);
    R = rnd(size_t(T * d.nh * d.P), 7);
  }
  double loss() {
    Vec y(size_t(T * d.nh * d.P));
    grad::ssd<double>(M(y, T, d.nh * d.P), C(xBC, T, W), C(dt, T, d.nh), A_log.data(), D.data(), dt_bias.data(),
                      state0.data(), nullptr, seqs, d);
    return dot(y, R);
  }
  struct Grads {
    Vec dxBC, ddt, dA_log, dD, ddt_bias, dstate0;
  };
  Grads backward() {
    Grads g{Vec(xBC.size()), Vec(dt.size()), Vec(A_log.size(), 0.0), Vec(D.size(), 0.0), Vec(dt_bias.size(), 0.0),
            Vec(state0.size())};
    grad::ssd_backward<double>(M(g.dxBC, T, W), M(g.ddt, T, d.nh), g.dA_log.data(), g.dD.data(), g.ddt_bias.data(),
                               g.dstate0.data(), C(R, T, d.nh * d.P), C(xBC, T, W), C(dt, T, d.nh), A_log.data(),
                               D.data(), dt_bias.data(), state0.data(), seqs, d);
    return g;
  }
};
}  // namespace

TEST(Backward, SsdRecurrence) {
  for (auto [lo, hi] : {std::pair{0.0, double(INFINITY)}, std::pair{0.15, 0.6}}) {  // second: the dt clamp bites
    SsdCase c(lo, hi, 3);
    auto g = c.backward();
    auto loss = [&] { return c.loss(); };
    SCOPED_TRACE("time_step_limit " + std::to_string(lo) + ", " + std::to_string(hi));
    fd_check("dxBC", c.xBC, loss, g.dxBC);
    fd_check("ddt", c.dt, loss, g.ddt);
    fd_check("dA_log", c.A_log, loss, g.dA_log);
    fd_check("dD", c.D, loss, g.dD);
    fd_check("ddt_bias", c.dt_bias, loss, g.ddt_bias);
    fd_check("dstate0", c.state0, loss, g.dstate0);
    if (lo > 0) {  // the clamp must actually zero some dt gradients, or this case tests nothing new
      int zeros = 0;
      for (double v : g.ddt) zeros += v == 0.0;
      EXPECT_GT(zeros, 0);
      EXPECT_LT(zeros, int(g.ddt.size()));
    }
  }
}

TEST(Backward, SsdChunkingChangesNothing) {
  SsdCase a(0.0, INFINITY, 1), b(0.0, INFINITY, 4), c(0.0, INFINITY, 100);
  auto ga = a.backward(), gb = b.backward(), gc = c.backward();
  EXPECT_EQ(ga.dxBC, gb.dxBC);
  EXPECT_EQ(ga.dxBC, gc.dxBC);
  EXPECT_EQ(ga.ddt, gc.ddt);
  EXPECT_EQ(ga.dA_log, gb.dA_log);
  EXPECT_EQ(ga.dstate0, gc.dstate0);
}

TEST(Backward, GatedRmsNorm) {
  const int64_t T = 5, I = 12;
  const double eps = 1e-6;
  for (int64_t group : {int64_t(12), int64_t(4)}) {
    Vec y = rnd(size_t(T * I), 1), z = rnd(size_t(T * I), 2, -2, 2), w = rnd(size_t(I), 3, 0.5, 1.5),
        R = rnd(size_t(T * I), 4);
    auto loss = [&] {
      Vec o(y.size());
      grad::gated_rmsnorm<double>(M(o, T, I), C(y, T, I), C(z, T, I), w.data(), group, eps);
      return dot(o, R);
    };
    Vec dy(y.size()), dz(z.size()), dw(w.size(), 0.0);
    grad::gated_rmsnorm_backward<double>(M(dy, T, I), M(dz, T, I), dw.data(), C(R, T, I), C(y, T, I), C(z, T, I),
                                         w.data(), group, eps);
    SCOPED_TRACE("group " + std::to_string(group));
    fd_check("dy", y, loss, dy);
    fd_check("dz", z, loss, dz);
    fd_check("dw", w, loss, dw);
  }
}

TEST(Backward, AttentionPartialRopeGqa) {
  const grad::AttnDims d{4, 2, 6, 4, 1.0 / std::sqrt(6.0)};  // nq 4, nkv 2, dh 6, rotary 4 of 6
  const int64_t Wd = (d.nq + 2 * d.nkv) * d.dh, O = d.nq * d.dh;
  const std::vector<int32_t> seqs = {0, 5, 12};
  const int64_t T = 12;
  std::vector<int32_t> pos;
  for (size_t s = 0; s + 1 < seqs.size(); ++s)
    for (int32_t t = seqs[s]; t < seqs[s + 1]; ++t) pos.push_back(t - seqs[s]);
  const std::vector<float> inv_freq = {1.f, 0.01f};
  Vec qkv = rnd(size_t(T * Wd), 1, -1.5, 1.5), R = rnd(size_t(T * O), 2);
  auto loss = [&] {
    Vec q = qkv, o(size_t(T * O));
    grad::attention<double>(M(o, T, O), M(q, T, Wd), inv_freq.data(), pos, seqs, d);
    return dot(o, R);
  };
  Vec rotated = qkv, o(size_t(T * O)), dq(qkv.size());
  grad::attention<double>(M(o, T, O), M(rotated, T, Wd), inv_freq.data(), pos, seqs, d);
  grad::attention_backward<double>(M(dq, T, Wd), C(R, T, O), C(rotated, T, Wd), inv_freq.data(), pos, seqs, d);
  fd_check("dqkv", qkv, loss, dq);
}

TEST(Backward, LmHeadCrossEntropyChunked) {
  const int64_t T = 7, H = 5, V = 11;
  const std::vector<int32_t> tgt = {3, -100, 10, 0, 3, -100, 7};
  const double ce = 1.0 / 5, z = 1e-2 / 7;
  Vec x = rnd(size_t(T * H), 1, -2, 2), W = rnd(size_t(V * H), 2);
  auto loss = [&] {
    return grad::lm_head_cross_entropy<double>({}, {}, C(x, T, H), C(W, V, H), tgt, ce, z, 3);
  };
  // by hand: the same loss from whole [T, V] logits
  Vec logits(size_t(T * V));
  grad::matmul<double>(M(logits, T, V), C(x, T, H), C(W, V, H), nullptr);
  double want = 0;
  for (int64_t t = 0; t < T; ++t) {
    double s = 0;
    for (int64_t v = 0; v < V; ++v) s += std::exp(logits[size_t(t * V + v)]);
    const double lse = std::log(s);
    if (tgt[size_t(t)] >= 0) want += ce * (lse - logits[size_t(t * V + tgt[size_t(t)])]);
    want += z * lse * lse;
  }
  EXPECT_NEAR(loss(), want, 1e-12);
  Vec dx(x.size()), dW(W.size(), 0.0);
  grad::lm_head_cross_entropy<double>(M(dx, T, H), M(dW, V, H), C(x, T, H), C(W, V, H), tgt, ce, z, 3);
  fd_check("dx", x, loss, dx);
  fd_check("dW", W, loss, dW);
}

TEST(Backward, GeGLU) {
  const int64_t T = 5, F = 7;
  Vec gu = rnd(size_t(T * 2 * F), 1, -3, 3), R = rnd(size_t(T * F), 2);
  auto loss = [&] {
    Vec y(size_t(T * F));
    grad::geglu<double>(M(y, T, F), C(gu, T, 2 * F));
    return dot(y, R);
  };
  Vec d(gu.size());
  grad::geglu_backward<double>(M(d, T, 2 * F), C(R, T, F), C(gu, T, 2 * F));
  fd_check("dgate_up", gu, loss, d);
}

namespace {
// T tokens' k distinct experts of E, a fixed choice (the routing's choice has no gradient).
std::vector<int32_t> fixed_experts(int64_t T, int64_t k, int64_t E, uint64_t seed) {
  std::vector<int32_t> ex;
  for (int64_t t = 0; t < T; ++t) {
    const int64_t first = int64_t(splitmix64(seed + uint64_t(t)) % uint64_t(E));
    for (int64_t j = 0; j < k; ++j) ex.push_back(int32_t((first + j * 2) % E));  // E odd: distinct
  }
  return ex;
}
}  // namespace

TEST(Backward, MoeRoutingWeights) {
  const int64_t T = 6, E = 7, k = 3;
  const std::vector<int32_t> ex = fixed_experts(T, k, E, 5);
  const Mat<const int32_t> X{ex.data(), T, k, k};
  for (const grad::MoeRouteDims d : {grad::MoeRouteDims{true, true, 1.0}, grad::MoeRouteDims{false, true, 2.5},
                                     grad::MoeRouteDims{false, false, 1.5}}) {
    Vec x = rnd(size_t(T * E), 1, -3, 3), R = rnd(size_t(T * k), 2);
    auto loss = [&] {
      Vec w(size_t(T * k));
      grad::moe_route_weights<double>(M(w, T, k), C(x, T, E), X, d);
      return dot(w, R);
    };
    Vec dx(x.size());
    grad::moe_route_backward<double>(M(dx, T, E), C(R, T, k), C(x, T, E), X, d);
    fd_check(d.softmax ? "dlogits softmax" : d.norm_topk_prob ? "dlogits sigmoid" : "dlogits sigmoid unnormalised",
             x, loss, dx);
  }
}

TEST(Backward, MoeExperts) {
  const int64_t T = 5, E = 3, k = 2, H = 7, F = 5;
  const std::vector<int32_t> ex = fixed_experts(T, k, E, 9);
  const Mat<const int32_t> X{ex.data(), T, k, k};
  for (const bool swiglu : {true, false}) {
    const int64_t U = swiglu ? 2 * F : F;
    Vec x = rnd(size_t(T * H), 1, -1, 1), up = rnd(size_t(E * U * H), 2, -1, 1), down = rnd(size_t(E * H * F), 3),
        w = rnd(size_t(T * k), 4, 0.1, 1), R = rnd(size_t(T * H), 5);
    auto loss = [&] {
      Vec out(size_t(T * H));
      grad::moe_experts<double>(M(out, T, H), C(x, T, H), up.data(), down.data(), X, C(w, T, k), U, F, swiglu);
      return dot(out, R);
    };
    Vec dx(x.size()), dup(up.size(), 0.0), ddown(down.size(), 0.0), dw(w.size());
    grad::moe_experts_backward<double>(M(dx, T, H), dup.data(), ddown.data(), M(dw, T, k), C(R, T, H), C(x, T, H),
                                       up.data(), down.data(), X, C(w, T, k), U, F, swiglu);
    fd_check(swiglu ? "moe dx swiglu" : "moe dx relu2", x, loss, dx);
    fd_check("moe dup", up, loss, dup);
    fd_check("moe ddown", down, loss, ddown);
    fd_check("moe dweights", w, loss, dw);
  }
}

// ---- the fp32 backend ops against the double kernels
namespace {
std::vector<float> to_f(const Vec& v) { return std::vector<float>(v.begin(), v.end()); }
void expect_close_f(const std::vector<float>& got, const Vec& want, double tol, const char* what) {
  ASSERT_EQ(got.size(), want.size());
  double scale = 0;
  for (double w : want) scale = std::max(scale, std::abs(w));
  for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], want[i], tol * (1 + scale)) << what << " " << i;
}
}  // namespace

TEST(BackendBackward, CpuOpsMatchTheFloat64Kernels) {
  auto be = make_cpu_backend();
  auto up = [&](const Vec& v, int64_t r, int64_t c) {
    Tensor t = be->alloc(DType::F32, {r, c});
    auto f = to_f(v);
    be->from_host_f32(t, f.data());
    return t;
  };
  auto down = [&](Tensor t) {
    std::vector<float> f(size_t(t.numel()));
    be->to_host_f32(t, f.data());
    return f;
  };
  // matmul (BLAS) with bias; inputs rounded to fp32 first so both sides see the same numbers
  {
    const int64_t Mr = 5, K = 7, N = 3;
    Vec x = rnd(size_t(Mr * K), 1), W = rnd(size_t(N * K), 2), dy = rnd(size_t(Mr * N), 4);
    Tensor tx = up(x, Mr, K), tW = up(W, N, K), tdy = up(dy, Mr, N), tdx = be->alloc(DType::F32, {Mr, K}),
           tdW = be->alloc(DType::F32, {N, K}), tdb = be->alloc(DType::F32, {1, N});
    be->matmul_backward(tdx, tdW, tdb, tdy, tx, tW);
    Vec dx(x.size()), dW(W.size(), 0.0), db(size_t(N), 0.0);
    grad::matmul_backward<double>(M(dx, Mr, K), M(dW, N, K), db.data(), C(dy, Mr, N), C(x, Mr, K), C(W, N, K));
    expect_close_f(down(tdx), dx, 1e-6, "dx");
    expect_close_f(down(tdW), dW, 1e-6, "dW");
    expect_close_f(down(tdb), db, 1e-6, "dbias");
  }
  // lm_head + cross-entropy (BLAS, chunked) against the double kernel with one chunk
  {
    const int64_t T = 7, H = 5, V = 11;
    const std::vector<int32_t> tgt = {3, -100, 10, 0, 3, -100, 7};
    Vec x = rnd(size_t(T * H), 1, -2, 2), W = rnd(size_t(V * H), 2);
    Tensor tx = up(x, T, H), tW = up(W, V, H), tdx = be->alloc(DType::F32, {T, H}), tdW = be->alloc(DType::F32, {V, H});
    const double l = be->lm_head_cross_entropy(tdx, tdW, tx, tW, tgt, 0.2, 1e-3, 2);
    Vec dx(x.size()), dW(W.size(), 0.0);
    const double want = grad::lm_head_cross_entropy<double>(M(dx, T, H), M(dW, V, H), C(x, T, H), C(W, V, H), tgt, 0.2, 1e-3, 100);
    EXPECT_NEAR(l, want, 1e-6 * (1 + std::abs(want)));
    expect_close_f(down(tdx), dx, 1e-6, "dx");
    expect_close_f(down(tdW), dW, 1e-6, "dW");
    EXPECT_THROW(be->lm_head_cross_entropy(tdx, tdW, tx, tW, std::vector<int32_t>{3, 1, 11, 0, 0, 0, 0}, 1, 0, 4),
                 std::exception);
  }
  // geglu
  {
    const int64_t T = 5, F = 7;
    Vec gu = rnd(size_t(T * 2 * F), 1, -3, 3), dy = rnd(size_t(T * F), 2);
    Tensor tgu = up(gu, T, 2 * F), tdy = up(dy, T, F), td = be->alloc(DType::F32, {T, 2 * F});
    be->geglu_backward(td, tdy, tgu);
    Vec d(gu.size());
    grad::geglu_backward<double>(M(d, T, 2 * F), C(dy, T, F), C(gu, T, 2 * F));
    expect_close_f(down(td), d, 1e-6, "dgate_up");
  }
  // MoE: the backend's routing (forward) chooses, its weights are the kernel's function of the chosen logits, and
  // the two backwards match the double kernels (Granite's softmax + SwiGLU, Nemotron-H's grouped sigmoid + relu²)
  for (const bool granite : {true, false}) {
    const int64_t T = 6, E = 8, k = 2, H = 9, F = 5, U = granite ? 2 * F : F;
    MoeOpsConfig c{E, k, granite ? MoeRouting::SoftmaxTopK : MoeRouting::SigmoidGroup, granite ? 1 : 4, granite ? 1 : 2,
                   true, granite ? 1.f : 2.5f};
    Vec lg = rnd(size_t(T * E), 1, -2, 2), bias = rnd(size_t(E), 2, -0.3, 0.3), x = rnd(size_t(T * H), 3),
        upw = rnd(size_t(E * U * H), 4), dnw = rnd(size_t(E * H * F), 5), dy = rnd(size_t(T * H), 6);
    Tensor tl = up(lg, T, E), tb = granite ? Tensor{} : up(bias, 1, E), tx = up(x, T, H);
    Tensor tup = be->alloc(DType::F32, {E, U, H}), tdn = be->alloc(DType::F32, {E, H, F});
    be->from_host_f32(tup, to_f(upw).data());
    be->from_host_f32(tdn, to_f(dnw).data());
    Tensor tex = be->alloc(DType::I32, {T, k}), tw = be->alloc(DType::F32, {T, k});
    be->moe_route(tex, tw, tl, tb, c);
    const std::vector<int32_t> ex(tex.ptr<int32_t>(), tex.ptr<int32_t>() + T * k);
    const Mat<const int32_t> X{ex.data(), T, k, k};
    const grad::MoeRouteDims d{granite, true, c.routed_scaling};
    Vec lgf(lg.size()), w(size_t(T * k));  // the logits as the backend holds them (fp32)
    for (size_t i = 0; i < lg.size(); ++i) lgf[i] = double(float(lg[i]));
    grad::moe_route_weights<double>(M(w, T, k), C(lgf, T, E), X, d);
    expect_close_f(down(tw), w, 1e-6, "routing weights");
    Tensor tdy = up(dy, T, H), tdx = be->alloc(DType::F32, {T, H}), tdw = be->alloc(DType::F32, {T, k});
    Tensor tdup = be->alloc(DType::F32, {E, U, H}), tddn = be->alloc(DType::F32, {E, H, F});
    const std::vector<float> zu(size_t(E * U * H), 0.f), zd(size_t(E * H * F), 0.f);
    be->from_host_f32(tdup, zu.data());
    be->from_host_f32(tddn, zd.data());
    be->moe_experts_backward(tdx, tdup, tddn, tdw, tdy, tx, tup, tdn, tex, tw, granite ? ExpertAct::SwiGLU : ExpertAct::Relu2, {});
    Vec wf(w.size());
    for (size_t i = 0; i < w.size(); ++i) wf[i] = double(down(tw)[i]);
    Vec dx(x.size()), dup(upw.size(), 0.0), ddn(dnw.size(), 0.0), dw(w.size());
    grad::moe_experts_backward<double>(M(dx, T, H), dup.data(), ddn.data(), M(dw, T, k), C(dy, T, H), C(x, T, H),
                                       upw.data(), dnw.data(), X, C(wf, T, k), U, F, granite);
    expect_close_f(down(tdx), dx, 1e-5, "moe dx");
    expect_close_f(down(tdup), dup, 1e-5, "moe dup");
    expect_close_f(down(tddn), ddn, 1e-5, "moe ddown");
    expect_close_f(down(tdw), dw, 1e-5, "moe dweights");
    Tensor tdl = be->alloc(DType::F32, {T, E});
    be->moe_route_backward(tdl, tdw, tl, tex, c);
    Vec dl(lg.size()), dwf(dw.size());
    for (size_t i = 0; i < dw.size(); ++i) dwf[i] = double(down(tdw)[i]);
    grad::moe_route_backward<double>(M(dl, T, E), C(dwf, T, k), C(lgf, T, E), X, d);
    expect_close_f(down(tdl), dl, 1e-5, "moe dlogits");
  }
}
