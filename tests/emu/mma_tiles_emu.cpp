// mma_tiles.cuh's warp products (src/backend/cuda/mma_tiles.cuh) run on the CPU by tests/emu/run.sh (see there):
// warp_mma with A stored rows × k and k × rows, B stored n × k and k × n, and warp_mma_regs with the A operand made
// by to_a from accumulators, each against a float64 product of the same bf16 numbers. Four warps, each its 16 rows
// of a 64-row output; K and widths below the unrolled maxima (16..128), row strides padded as the kernels pad them.
#include "backend/cuda/kernels.cuh"
#include "backend/cuda/mma_tiles.cuh"
#include <cstdio>
#include <random>
using namespace bamba::cuda;

constexpr int kRows = 64, kMaxK = 128, kMaxW = 128, kLd = kMaxW + 8;

// This lane's accumulators (its 16-row warp's rows, W columns) into out [kRows, W].
template <int NB>
static void store_acc(std::vector<float>& out, int W, const float (&acc)[NB][4]) {
  const int lane = threadIdx.x % 32, r0 = 16 * (threadIdx.x / 32), g = lane / 4, qc = 2 * (lane % 4);
  for (int nb = 0; nb < W / 8; ++nb)
    for (int e = 0; e < 4; ++e) out[size_t(r0 + g + 8 * (e >> 1)) * W + 8 * nb + qc + (e & 1)] = acc[nb][e];
}

// Relative L2 of got [kRows, W] against Σ_k a(r, k) b(k, n) in float64.
template <typename FA, typename FB>
static double rel_to_product(const std::vector<float>& got, int W, int K, FA&& a, FB&& b) {
  double num = 0, den = 0;
  for (int r = 0; r < kRows; ++r)
    for (int n = 0; n < W; ++n) {
      double s = 0;
      for (int k = 0; k < K; ++k) s += double(a(r, k)) * b(k, n);
      num += (got[size_t(r) * W + n] - s) * (got[size_t(r) * W + n] - s), den += s * s;
    }
  return std::sqrt(num / den);
}

template <TileLayout LA, TileLayout LB>
static double run(int K, int W, std::mt19937& rng) {
  // A is [rows, K] as a matrix; stored rows × k (kRowsK) or k × rows (kKRows). B is [K, W]; stored n × k or k × n.
  std::vector<bf16> as(size_t(kMaxK + 64) * kLd), bs(size_t(kMaxK + 64) * kLd);
  std::uniform_real_distribution<float> u(-1, 1);
  for (auto& v : as) v = __float2bfloat16_rn(u(rng));
  for (auto& v : bs) v = __float2bfloat16_rn(u(rng));
  auto A = [&](int r, int k) { return __bfloat162float(LA == TileLayout::kRowsK ? as[r * kLd + k] : as[k * kLd + r]); };
  auto B = [&](int k, int n) { return __bfloat162float(LB == TileLayout::kNK ? bs[n * kLd + k] : bs[k * kLd + n]); };
  std::vector<float> got(size_t(kRows) * W, NAN);
  emu::launch({1}, {128}, 0, [&] {
    const int r0 = 16 * (threadIdx.x / 32);
    float acc[kMaxW / 8][4];
    zero(acc);
    const bf16* a = LA == TileLayout::kRowsK ? as.data() + r0 * kLd : as.data() + r0;
    warp_mma<LA, LB, kMaxK>(acc, a, kLd, bs.data(), kLd, K, W);
    store_acc(got, W, acc);
  });
  return rel_to_product(got, W, K, A, B);
}

// (X Y) Z with X Y's accumulators made into Z's A operand by to_a (rounded to bf16), K of the second product 64.
static double run_regs(int W, std::mt19937& rng) {
  std::vector<bf16> xs(size_t(kRows) * kLd), ys(size_t(kRows) * kLd), zs(size_t(kRows) * kLd);
  std::uniform_real_distribution<float> u(-1, 1);
  for (auto* t : {&xs, &ys, &zs})
    for (auto& v : *t) v = __float2bfloat16_rn(u(rng));
  std::vector<float> mid(size_t(kRows) * 64), got(size_t(kRows) * W, NAN);
  emu::launch({1}, {128}, 0, [&] {
    const int r0 = 16 * (threadIdx.x / 32);
    float m[8][4], acc[kMaxW / 8][4];
    zero(m), zero(acc);
    warp_mma<TileLayout::kRowsK, TileLayout::kNK, 64>(m, xs.data() + r0 * kLd, kLd, ys.data(), kLd, 48, 64);
    store_acc(mid, 64, m);
    uint32_t pa[4][4];
    to_a(pa, m);
    warp_mma_regs<TileLayout::kKN>(acc, pa, zs.data(), kLd, W);
    store_acc(got, W, acc);
  });
  for (float& v : mid) v = __bfloat162float(__float2bfloat16_rn(v));  // as to_a rounded them
  return rel_to_product(got, W, 64, [&](int r, int k) { return mid[size_t(r) * 64 + k]; },
                        [&](int k, int n) { return __bfloat162float(zs[k * kLd + n]); });
}

int main() {
  std::mt19937 rng(11);
  int bad = 0;
  using enum TileLayout;
  for (auto [K, W] : {std::pair{16, 16}, {48, 80}, {64, 64}, {128, 128}, {112, 32}}) {
    const double e[4] = {run<kRowsK, kNK>(K, W, rng), run<kRowsK, kKN>(K, W, rng), run<kKRows, kNK>(K, W, rng),
                         run<kKRows, kKN>(K, W, rng)};
    std::printf("K %3d width %3d: rows×k·n×k %.1e  rows×k·k×n %.1e  k×rows·n×k %.1e  k×rows·k×n %.1e\n", K, W, e[0],
                e[1], e[2], e[3]);
    for (double x : e) bad += !(x < 1e-6);
  }
  for (int W : {16, 64, 128}) {
    const double e = run_regs(W, rng);
    std::printf("to_a + warp_mma_regs, width %3d: %.1e\n", W, e);
    bad += !(e < 1e-6);
  }
  std::printf(bad ? "FAIL %d\n" : "all within 1e-6\n", bad);
  return bad != 0;
}
