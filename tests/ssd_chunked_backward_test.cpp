// The chunked matrix form of the SSD backward (backend/cpu/ssd_backward_chunked.h, the statement of what the CUDA
// tensor-core backward computes) against the reverse recurrence grad::ssd_backward, itself checked against finite
// differences (backward_test.cpp). float64 on both sides, so the two orders of summation agree to ~1e-12:
// any difference above that is a wrong term, not rounding. Odd sizes: several sequences (1 token, shorter than a
// chunk, exactly a chunk, many chunks with a ragged end), 2 groups of 3 heads, a given initial state, the dt clamp.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "backend/cpu/grad_kernels.h"
#include "backend/cpu/ssd_backward_chunked.h"

namespace bamba {
namespace {

using Vec = std::vector<double>;

Vec rnd(size_t n, uint32_t seed, double lo = -1, double hi = 1) {
  std::mt19937 g(seed);
  std::uniform_real_distribution<double> u(lo, hi);
  Vec v(n);
  for (double& x : v) x = u(g);
  return v;
}

double rel_l2(const Vec& a, const Vec& ref) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    num += (a[i] - ref[i]) * (a[i] - ref[i]);
    den += ref[i] * ref[i];
  }
  return std::sqrt(num / std::max(den, 1e-300));
}

struct Grads {
  Vec dxBC, ddt, dA_log, dD, ddt_bias, dstate0;
};

TEST(SsdChunkedBackward, MatchesTheRecurrence) {
  const std::vector<int32_t> seqs = {0, 1, 17, 33, 131, 140};  // lengths 1, 16, 16, 98, 9
  const int64_t T = seqs.back(), S = int64_t(seqs.size()) - 1;
  int cases = 0;
  for (int64_t chunk : {1, 5, 16, 64})
    for (auto [lo, hi] : {std::pair{0.0, double(INFINITY)}, std::pair{0.05, 0.5}})
      for (bool with_state : {false, true}) {
        const grad::SsdDims d{6, 5, 2, 7, chunk, lo, hi};  // nh 6, P 5, G 2, N 7
        const int64_t W = d.nh * d.P + 2 * d.G * d.N, I = d.nh * d.P, PN = d.P * d.N;
        const Vec xBC = rnd(size_t(T * W), 1), dt = rnd(size_t(T * d.nh), 2, -3, 1), A_log = rnd(size_t(d.nh), 3, -1, 1);
        const Vec D = rnd(size_t(d.nh), 4, 0.5, 1.5), dt_bias = rnd(size_t(d.nh), 5, -1, 0.5);
        const Vec state0 = rnd(size_t(S * d.nh * PN), 6), dy = rnd(size_t(T * I), 7);
        auto run = [&](bool chunked) {
          Grads g{Vec(xBC.size()), Vec(dt.size()), Vec(size_t(d.nh), 0.25), Vec(size_t(d.nh), 0.25),
                  Vec(size_t(d.nh), 0.25), Vec(state0.size())};  // parameter gradients accumulate onto 0.25
          auto f = chunked ? grad::ssd_backward_chunked<double> : grad::ssd_backward<double>;
          f({g.dxBC.data(), T, W, W}, {g.ddt.data(), T, d.nh, d.nh}, g.dA_log.data(), g.dD.data(), g.ddt_bias.data(),
            g.dstate0.data(), {dy.data(), T, I, I}, {xBC.data(), T, W, W}, {dt.data(), T, d.nh, d.nh}, A_log.data(),
            D.data(), dt_bias.data(), with_state ? state0.data() : nullptr, seqs, d);
          return g;
        };
        const Grads ref = run(false), got = run(true);
        SCOPED_TRACE("chunk " + std::to_string(chunk) + ", dt_max " + std::to_string(hi) +
                     (with_state ? ", state0" : ""));
        EXPECT_LT(rel_l2(got.dxBC, ref.dxBC), 1e-11) << "dxBC";
        EXPECT_LT(rel_l2(got.ddt, ref.ddt), 1e-11) << "ddt";
        EXPECT_LT(rel_l2(got.dA_log, ref.dA_log), 1e-11) << "dA_log";
        EXPECT_LT(rel_l2(got.dD, ref.dD), 1e-11) << "dD";
        EXPECT_LT(rel_l2(got.ddt_bias, ref.ddt_bias), 1e-11) << "ddt_bias";
        EXPECT_LT(rel_l2(got.dstate0, ref.dstate0), 1e-11) << "dstate0";
        ++cases;
      }
  EXPECT_EQ(cases, 16);
}

}  // namespace
}  // namespace bamba
