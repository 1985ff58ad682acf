// The mixture-of-experts kernels of src/backend/cuda/moe.cu run on the CPU by tests/emu/run.sh (see there):
// 1. route_kernel (a warp per token) against the CPU twin's rule — the k largest, largest first, the lowest index
//    among equals; DeepSeek-V3's grouped sigmoid routing keeps the experts of the topk_group groups whose two best
//    scores sum highest — on scores with ties everywhere, -inf rows, E not a multiple of the warp (nor of n_group),
//    4 tokens a block with a last block part empty; the weights within 1e-6.
// 2. sort_kernel, grouped_mma_kernel (the tensor-core tiles: 16 × 64 as decode takes them and 64 × 128 as prompts
//    do; SwiGLU and relu² fused into the up GEMM) and combine_kernel, as moe_experts launches them, against a
//    float64 sum over the same bf16 numbers (act and down rows rounded to bf16 where the kernels store bf16).
#include "backend/cuda/kernels.cuh"
#include "backend/cuda/mma.cuh"
#include "moe_kernels_emu.inc"
#include "backend/cpu/grad_kernels.h"
#include <cstdio>
#include <numeric>
#include <random>
using namespace bamba::cuda;

// moe_experts' two tile shapes (row tile, column tile, warps along each)
struct Decode { static constexpr int bm = 16, bn = 64, wm = 1, wn = 4; };
struct Prompt { static constexpr int bm = 64, bn = 128, wm = 2, wn = 2; };

static float rb(float v) { return __bfloat162float(__float2bfloat16_rn(v)); }

// The CPU twin's routing (grad::moe_route, which CpuBackend::moe_route runs): experts, weights [T, k].
static void route_reference(const MoeRouteArgs& a, std::vector<int>& ex, std::vector<float>& w) {
  ex.assign(size_t(a.T) * a.k, -1);
  w.assign(size_t(a.T) * a.k, 0.f);
  std::vector<float> bias(size_t(a.E));
  for (int e = 0; e < a.E; ++e) bias[size_t(e)] = a.bias.p ? ld_param(a.bias, e) : 0.f;
  const bamba::grad::MoeRouteDims d{!a.sigmoid_group, a.norm_topk_prob != 0, a.routed_scaling};
  bamba::grad::moe_route<float>({ex.data(), a.T, a.k, a.k}, {w.data(), a.T, a.k, a.k}, {a.logits, a.T, a.E, a.ldl},
                                bias.data(), a.n_group, a.topk_group, d);
}

int main() {
  int bad = 0;
  std::mt19937 rng(11);
  auto U = [&](float lo, float hi) { return std::uniform_real_distribution<float>(lo, hi)(rng); };

  // ---- 1. routing
  struct RouteCase { int T, E, k, sigmoid_group, n_group, topk_group; bool ties; };
  for (const RouteCase& rc : {RouteCase{6, 7, 3, 0, 1, 1, true}, RouteCase{9, 64, 6, 0, 1, 1, false},
                              RouteCase{5, 100, 8, 0, 1, 1, true}, RouteCase{7, 100, 6, 1, 4, 2, true},
                              RouteCase{3, 64, 6, 1, 8, 3, false}, RouteCase{4, 40, 4, 1, 1, 1, true},
                              RouteCase{5, 30, 4, 1, 4, 2, false}}) {
    const int ld = rc.E + 3;
    std::vector<float> logits(size_t(rc.T) * ld, NAN), bias(size_t(rc.E));
    for (int t = 0; t < rc.T; ++t)
      for (int e = 0; e < rc.E; ++e)
        logits[size_t(t) * ld + e] = rc.ties ? float(int(rng() % 5) - 2) : U(-3, 3);
    if (rc.T > 2)
      for (int e = 0; e < rc.E; ++e) logits[size_t(2) * ld + e] = -INFINITY;  // a row of -inf: the lowest indices
    for (auto& v : bias) v = rc.ties ? 0.f : U(-0.3f, 0.3f);
    std::vector<int32_t> ex(size_t(rc.T) * rc.k, -7);
    std::vector<float> w(size_t(rc.T) * rc.k, NAN);
    MoeRouteArgs a{logits.data(), ld, PView{bias.data(), 0}, ex.data(), rc.k, w.data(), rc.k,
                   rc.T, rc.E, rc.k, rc.sigmoid_group, rc.n_group, rc.topk_group, 1, 2.5f};
    const size_t smem = kRouteWarps * route_smem_per_warp(rc.E);
    emu::launch(dim3{ceil_div(rc.T, kRouteWarps)}, dim3{32 * kRouteWarps}, smem, [&] { route_kernel(a); });
    std::vector<int> ex_ref;
    std::vector<float> w_ref;
    route_reference(a, ex_ref, w_ref);
    int wrong_e = 0, wrong_w = 0;
    for (size_t i = 0; i < ex.size(); ++i) {
      wrong_e += ex[i] != ex_ref[i];
      const bool both_nan = std::isnan(w[i]) && std::isnan(w_ref[i]);  // softmax over a row of -inf
      wrong_w += !both_nan && !(std::fabs(w[i] - w_ref[i]) <= 1e-6f * (1 + std::fabs(w_ref[i])));
    }
    const bool ok = wrong_e == 0 && wrong_w == 0;
    bad += !ok;
    std::printf("route T %d E %d k %d %s groups %d/%d%s: experts %d wrong, weights %d wrong%s\n", rc.T, rc.E, rc.k,
                rc.sigmoid_group ? "sigmoid" : "softmax", rc.topk_group, rc.n_group, rc.ties ? " ties" : "", wrong_e,
                wrong_w, ok ? "" : "  FAIL");
  }

  // ---- 2. the expert MLPs: sort, up (+ activation), down, combine
  struct ExpCase { int T, E, k, H, F, act; bool decode_tiles; };
  for (const ExpCase& xc : {ExpCase{5, 8, 2, 64, 40, 0, true}, ExpCase{7, 6, 3, 48, 24, 1, true},
                            ExpCase{40, 4, 2, 72, 56, 0, false}, ExpCase{33, 3, 2, 40, 16, 1, false}}) {
    const int T = xc.T, E = xc.E, k = xc.k, H = xc.H, F = xc.F, Uw = xc.act == 0 ? 2 * F : F, Tk = T * k;
    std::vector<bf16> x(size_t(T) * H), up(size_t(E) * Uw * H), down(size_t(E) * H * F);
    for (auto& v : x) v = __float2bfloat16_rn(U(-1, 1));
    for (auto& v : up) v = __float2bfloat16_rn(U(-0.3f, 0.3f));
    for (auto& v : down) v = __float2bfloat16_rn(U(-0.3f, 0.3f));
    std::vector<int32_t> experts(static_cast<size_t>(Tk));
    std::vector<float> weights(static_cast<size_t>(Tk));
    for (int t = 0; t < T; ++t) {  // k distinct experts a token, expert E-1 never (an empty group)
      std::vector<int> perm(size_t(E - 1));
      std::iota(perm.begin(), perm.end(), 0);
      std::shuffle(perm.begin(), perm.end(), rng);
      for (int j = 0; j < k; ++j) experts[size_t(t) * k + j] = perm[size_t(j)], weights[size_t(t) * k + j] = U(0.1f, 1);
    }
    std::vector<int32_t> index(size_t(2 * Tk + 2 * E + 2));
    SortOut o{index.data(), index.data() + Tk, index.data() + 2 * Tk, index.data() + 2 * Tk + E + 1};
    const int bm = xc.decode_tiles ? 16 : 64;
    emu::launch(dim3{1}, dim3{unsigned(std::max(32, (E + 31) / 32 * 32))}, 0,
                [&] { sort_kernel(experts.data(), k, T, k, E, bm, o); });
    std::vector<bf16> act(size_t(Tk) * F), rows(size_t(Tk) * H), out(size_t(T) * H);
    const unsigned tiles = unsigned(Tk / bm + E);
    auto up_gemm = [&](auto tile) {
      constexpr int BM = decltype(tile)::bm, BN = decltype(tile)::bn, WM = decltype(tile)::wm, WN = decltype(tile)::wn;
      if (xc.act == 0)
        emu::launch(dim3{tiles, ceil_div(F, BN / 2)}, dim3{kMmaThreads}, 0, [&] {
          grouped_mma_kernel<BM, BN, WM, WN, 3, kSwiGLU>(act.data(), F, x.data(), H, up.data(), Uw, H, F, E, o, k);
        });
      else
        emu::launch(dim3{tiles, ceil_div(F, BN)}, dim3{kMmaThreads}, 0, [&] {
          grouped_mma_kernel<BM, BN, WM, WN, 3, kRelu2>(act.data(), F, x.data(), H, up.data(), Uw, H, F, E, o, k);
        });
      emu::launch(dim3{tiles, ceil_div(H, BN)}, dim3{kMmaThreads}, 0, [&] {
        grouped_mma_kernel<BM, BN, WM, WN, 3, kStore>(rows.data(), H, act.data(), F, down.data(), H, F, F, E, o, 0);
      });
    };
    if (xc.decode_tiles) up_gemm(Decode{});
    else up_gemm(Prompt{});
    emu::launch(dim3{unsigned(T)}, dim3{256}, 0, [&] {
      combine_kernel<bf16>(out.data(), H, rows.data(), H, weights.data(), k, o.inv, k, H);
    });
    // float64 reference over the same bf16 numbers, rounding act and the down rows to bf16 as the kernels store them
    std::vector<double> got, want;
    for (int t = 0; t < T; ++t) {
      std::vector<double> acc(size_t(H), 0.0);
      for (int j = 0; j < k; ++j) {
        const int e = experts[size_t(t) * k + j];
        std::vector<float> a(static_cast<size_t>(F));
        for (int f = 0; f < F; ++f) {
          auto dot = [&](int row) {
            double s = 0;
            for (int h = 0; h < H; ++h)
              s += double(to_f(x[size_t(t) * H + h])) * to_f(up[(size_t(e) * Uw + row) * H + h]);
            return s;
          };
          const double g = dot(f);
          a[size_t(f)] = xc.act == 0 ? rb(float(g / (1 + std::exp(-g)) * dot(F + f)))
                                     : rb(float(std::max(g, 0.0) * std::max(g, 0.0)));
        }
        for (int h = 0; h < H; ++h) {
          double s = 0;
          for (int f = 0; f < F; ++f) s += double(a[size_t(f)]) * to_f(down[(size_t(e) * H + h) * F + f]);
          acc[size_t(h)] += double(weights[size_t(t) * k + j]) * rb(float(s));
        }
      }
      for (int h = 0; h < H; ++h) got.push_back(to_f(out[size_t(t) * H + h])), want.push_back(acc[size_t(h)]);
    }
    double n = 0, d = 0;
    for (size_t i = 0; i < got.size(); ++i) n += (got[i] - want[i]) * (got[i] - want[i]), d += want[i] * want[i];
    const double e = std::sqrt(n / std::max(d, 1e-30));
    const bool ok = e < 1e-2;  // a few bf16 roundings of act / rows that land on the other neighbour
    bad += !ok;
    std::printf("experts T %d E %d k %d H %d F %d %s, %s tiles: rel %.2e%s\n", T, E, k, H, F,
                xc.act == 0 ? "SwiGLU" : "relu²", xc.decode_tiles ? "16x64" : "64x128", e, ok ? "" : "  FAIL");
  }
  std::printf(bad ? "FAIL %d\n" : "all routing choices equal, experts within 1e-2\n", bad);
  return bad ? 1 : 0;
}
