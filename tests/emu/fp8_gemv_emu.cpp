// fp8_gemv.cu's warp-per-row W8A16 kernels (src/backend/cuda/fp8_gemv.cu) run on the CPU by tests/emu/run.sh (see
// there), against a float64 product of the same E4M3 weights and bf16 activations: 1-8 rows with 4 loads in flight
// a lane, one row also with 8 (the same bits as 4: each lane's chunks in the same order), per-row and 16/128-block
// scales, N not a multiple of a block's 8 warps, K from one chunk to a ragged 4,112; and the SwiGLU row pairs at one
// row (gate and up rows in one warp) bit for bit against the one-row kernel's bf16 gate_up followed by
// elementwise.cu's formula; and the one-row kernel with each row split between two warps (fp32 and bf16 out).
#include <cuda_fp8.h>

#include "fp8_gemv_kernels_emu.inc"
#include "core/dtype.h"
#include <cstdio>
#include <random>
using namespace bamba::cuda;

static double rel(const std::vector<double>& a, const std::vector<double>& r) {
  double n = 0, d = 0;
  for (size_t i = 0; i < a.size(); ++i) { n += (a[i] - r[i]) * (a[i] - r[i]); d += r[i] * r[i]; }
  return std::sqrt(n / std::max(d, 1e-30));
}

int main() {
  int bad = 0;
  std::mt19937 rng(11);
  auto U = [&](float lo, float hi) { return std::uniform_real_distribution<float>(lo, hi)(rng); };
  struct Case { int N, K, B; };
  const std::vector<Case> cases = {{37, 208, 0}, {21, 16, 0}, {45, 4112, 0}, {50, 32 * 16 * 8 + 48, 0},
                                   {29, 208, 16}, {45, 1040, 128}};
  for (const Case& cs : cases)
    for (int M = 1; M <= 8; ++M) {
      const int N = cs.N, K = cs.K, ldx = K + 8, ldw = K + 16, ldy = N + 3;
      std::vector<bf16> xb(size_t(M) * ldx);
      std::vector<float> xf(xb.size()), bias(static_cast<size_t>(N));
      for (size_t i = 0; i < xb.size(); ++i) xb[i] = __float2bfloat16_rn(U(-2, 2)), xf[i] = __bfloat162float(xb[i]);
      for (auto& v : bias) v = U(-0.5f, 0.5f);
      std::vector<uint8_t> wq(size_t(N) * ldw);
      for (auto& v : wq) v = bamba::f32_to_e4m3(U(-1, 1) * (U(0, 1) < 0.1f ? 0.01f : 300.f));  // some subnormals
      const int kb = cs.B ? (K + cs.B - 1) / cs.B : 1;
      std::vector<float> scale(cs.B ? size_t((N + cs.B - 1) / cs.B) * kb : size_t(N));
      for (auto& v : scale) v = U(0.001f, 0.01f);
      std::vector<double> ref(size_t(M) * N);
      for (int m = 0; m < M; ++m)
        for (int n = 0; n < N; ++n) {
          double s = 0;
          for (int k = 0; k < K; ++k) {
            const double sc = cs.B ? scale[size_t(n / cs.B) * kb + k / cs.B] : scale[size_t(n)];
            s += double(xf[size_t(m) * ldx + k]) * bamba::e4m3_to_f32(wq[size_t(n) * ldw + k]) * sc;
          }
          ref[size_t(m) * N + n] = s + bias[size_t(n)];
        }
      PView pb{bias.data(), 0};
      std::vector<float> got[2];
      for (int u = 0; u < (M == 1 ? 2 : 1); ++u) {  // 4 loads in flight a lane, then (one row) 8
        got[u].assign(size_t(M) * ldy, NAN);
        const dim3 grid{unsigned((N + kRowWarps - 1) / kRowWarps)}, block{unsigned(kRowWarps * 32)};
        auto run = [&]<int R, int UN>() {
          emu::launch(grid, block, 0, [&] {
            fp8_gemv_kernel<bf16, R, UN>(got[u].data(), 1, ldy, xb.data(), ldx, wq.data(), ldw, scale.data(), cs.B,
                                         kb, pb, N, K, M % 2);
          });
        };
        switch (M) {
          case 1: u ? run.template operator()<1, 8>() : run.template operator()<1, 4>(); break;
          case 2: run.template operator()<2, 4>(); break;
          case 3: run.template operator()<3, 4>(); break;
          case 4: run.template operator()<4, 4>(); break;
          case 5: run.template operator()<5, 4>(); break;
          case 6: run.template operator()<6, 4>(); break;
          case 7: run.template operator()<7, 4>(); break;
          default: run.template operator()<8, 4>(); break;
        }
        std::vector<double> g;
        int untouched = 0;
        for (int m = 0; m < M; ++m) {
          for (int n = 0; n < N; ++n) g.push_back(got[u][size_t(m) * ldy + n]);
          for (int n = N; n < ldy; ++n) untouched += !std::isnan(got[u][size_t(m) * ldy + n]);
        }
        const double e = rel(g, ref);
        const bool ok = e < 1e-5 && untouched == 0;
        bad += !ok;
        if (!ok || M == 1 || M == 8)
          std::printf("fp8 warp per row N %d K %d B %d M %d unroll %d: rel %.2e%s%s\n", N, K, cs.B, M, u ? 8 : 4, e,
                      untouched ? " (wrote past N)" : "", ok ? "" : "  FAIL");
      }
      if (M == 1) {
        const bool same = std::memcmp(got[0].data(), got[1].data(), got[0].size() * sizeof(float)) == 0;
        bad += !same;
        if (!same) std::printf("fp8 warp per row N %d K %d B %d: unroll 8 differs from 4  FAIL\n", N, K, cs.B);
        // One row split between two warps (4 rows a block), fp32 then bf16 out.
        for (int y_f32 = 1; y_f32 >= 0; --y_f32) {
          std::vector<float> yf(size_t(N) + 5, NAN);
          std::vector<bf16> yb(size_t(N) + 5, __float2bfloat16_rn(-7.f));
          emu::launch(dim3{unsigned((N + kRowWarps / 2 - 1) / (kRowWarps / 2))}, dim3{unsigned(kRowWarps * 32)}, 0, [&] {
            fp8_gemv_split_kernel<bf16, 4>(y_f32 ? static_cast<void*>(yf.data()) : static_cast<void*>(yb.data()),
                                           y_f32, xb.data(), wq.data(), ldw, scale.data(), cs.B, kb, pb, N, K, 1);
          });
          std::vector<double> g;
          int past = 0;
          for (int n = 0; n < N; ++n) g.push_back(y_f32 ? yf[size_t(n)] : __bfloat162float(yb[size_t(n)]));
          for (int n = N; n < N + 5; ++n) past += y_f32 ? !std::isnan(yf[size_t(n)]) : __bfloat162float(yb[size_t(n)]) != -7.f;
          const double e = rel(g, ref), tol = y_f32 ? 1e-5 : 4e-3;  // bf16 out: its rounding
          const bool ok = e < tol && past == 0;
          bad += !ok;
          std::printf("fp8 row split in two warps N %d K %d B %d, %s out: rel %.2e%s%s\n", N, K, cs.B,
                      y_f32 ? "fp32" : "bf16", e, past ? " (wrote past N)" : "", ok ? "" : "  FAIL");
        }
      }
    }
  // SwiGLU pairs at one row (per-row scales): W = gate | up, F outputs.
  for (int F : {37, 8, 21})
    for (int K : {208, 16, 4112})
      for (int un : {4, 8}) {
        const int N = 2 * F, ldw = K + 16;
        std::vector<bf16> xb(static_cast<size_t>(K));
        for (auto& v : xb) v = __float2bfloat16_rn(U(-2, 2));
        std::vector<uint8_t> wq(size_t(N) * ldw);
        for (auto& v : wq) v = bamba::f32_to_e4m3(U(-1, 1) * 300.f);
        std::vector<float> scale(static_cast<size_t>(N)), bias(static_cast<size_t>(N));
        for (auto& v : scale) v = U(0.001f, 0.01f);
        for (auto& v : bias) v = U(-0.5f, 0.5f);
        PView pb{bias.data(), 0};
        const dim3 block{unsigned(kRowWarps * 32)};
        std::vector<bf16> gu(static_cast<size_t>(N)), act(size_t(F) + 5, __float2bfloat16_rn(-7.f));
        emu::launch(dim3{unsigned((N + kRowWarps - 1) / kRowWarps)}, block, 0, [&] {
          fp8_gemv_kernel<bf16, 1, 4>(gu.data(), 0, N, xb.data(), K, wq.data(), ldw, scale.data(), 0, 1, pb, N, K, 1);
        });
        emu::launch(dim3{unsigned((F + kRowWarps - 1) / kRowWarps)}, block, 0, [&] {
          if (un == 8) fp8_gemv_pairs_kernel<8>(act.data(), xb.data(), wq.data(), ldw, scale.data(), pb, F, K, 0);
          else fp8_gemv_pairs_kernel<4>(act.data(), xb.data(), wq.data(), ldw, scale.data(), pb, F, K, 1);
        });
        int differ = 0, untouched = 0;
        for (int f = 0; f < F; ++f) {
          const bf16 want = from_f<bf16>(silu_f(to_f(gu[size_t(f)])) * to_f(gu[size_t(F + f)]));
          differ += act[size_t(f)].b != want.b;
        }
        for (int f = F; f < F + 5; ++f) untouched += __bfloat162float(act[size_t(f)]) != -7.f;
        const bool ok = differ == 0 && untouched == 0;
        bad += !ok;
        std::printf("fp8 swiglu pairs F %d K %d unroll %d: %d of %d outputs differ from the GEMV + swiglu%s%s\n", F, K,
                    un, differ, F, untouched ? " (wrote past F)" : "", ok ? "" : "  FAIL");
      }
  std::printf(bad ? "FAIL %d\n" : "all within 1e-5 of float64; unroll 8 = 4 and pairs = GEMV + swiglu bit for bit\n", bad);
  return bad ? 1 : 0;
}
