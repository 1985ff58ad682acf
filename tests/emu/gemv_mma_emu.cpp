// The tensor-core GEMV of decode (src/backend/cuda/gemv_mma.cu) run on the CPU by tests/emu/run.sh (see there), for
// bf16 and for FP8 (E4M3) weights, against a float64 product of the same rounded numbers: M = 1..8 (the ring of
// k-blocks 2-4 deep, 8 or 16 warps a block), N not a multiple of the 16-row blocks, K not a multiple of the k-blocks
// (64 bf16, 128 FP8) and shorter than one, strided x and W, bias, per-row and 128/256-block scales, fp32 / bf16 /
// residual stores; and the bf16 kernel's folded RMSNorm and SwiGLU x loads. First the E4M3 -> bf16x2 widening for all
// 65,536 byte pairs against core/dtype's e4m3_to_f32.
#include "backend/cuda/kernels.cuh"
#include "backend/cuda/mma.cuh"
#include "gemv_mma_kernels_emu.inc"
#include "core/dtype.h"
#include <cstdio>
#include <functional>
#include <random>
using namespace bamba::cuda;

static double rel(const std::vector<double>& a, const std::vector<double>& r) {
  double n = 0, d = 0;
  for (size_t i = 0; i < a.size(); ++i) { n += (a[i] - r[i]) * (a[i] - r[i]); d += r[i] * r[i]; }
  return std::sqrt(n / std::max(d, 1e-30));
}
static float rb(float v) { return __bfloat162float(__float2bfloat16_rn(v)); }

// y = x Wᵀ (+ bias) with the weights as the kernel sees them (w(n, k) already scaled), in float64.
static std::vector<double> reference(int M, int N, int K, const std::vector<float>& x, int ldx,
                                     const std::function<double(int, int)>& w, const std::vector<float>& bias) {
  std::vector<double> y(size_t(M) * N);
  for (int m = 0; m < M; ++m)
    for (int n = 0; n < N; ++n) {
      double s = bias.empty() ? 0.0 : bias[size_t(n)];
      for (int k = 0; k < K; ++k) s += double(x[size_t(m) * ldx + k]) * w(n, k);
      y[size_t(m) * N + n] = s;
    }
  return y;
}

int main() {
  int bad = 0;
  // The widening, exhaustively: the bit moves of e4m3x2_to_bf16x2 (the cvt and the multiply are the stand-ins').
  for (uint8_t b = 0;; ++b) {
    const float f = bamba::e4m3_to_f32(b);
    if ((b & 0x7f) != 0x7f) {
      // the stand-in cvt, decoded as f16 by hand: sign, 5-bit exponent (bias 15), 10-bit mantissa
      const uint16_t v = emu_e4m3_to_f16(b);
      const int e = (v >> 10) & 31;
      const double mag = e ? std::ldexp(1.0 + (v & 1023) / 1024.0, e - 15) : std::ldexp((v & 1023) / 1024.0, -14);
      if ((v & 0x8000 ? -mag : mag) != f) { std::printf("cvt stand-in wrong at %#x\n", b); ++bad; }
    }
    if (b == 255) break;
  }
  int wrong = 0;
  for (uint32_t two = 0; two < 65536; ++two) {
    const uint32_t r = e4m3x2_to_bf16x2(two);
    const float lo = __uint_as_float(r << 16), hi = __uint_as_float(r & 0xffff0000u);
    const float wlo = bamba::e4m3_to_f32(uint8_t(two)), whi = bamba::e4m3_to_f32(uint8_t(two >> 8));
    auto same = [](float a, float b) { return std::isnan(b) ? true : (a == b && std::signbit(a) == std::signbit(b)); };
    wrong += !same(lo, wlo) || !same(hi, whi);  // NaN (0x7f, 0xff) never comes from the quantizer: not checked
  }
  std::printf("e4m3x2 -> bf16x2: %d of 65536 pairs wrong\n", wrong);
  bad += wrong != 0;

  std::mt19937 rng(7);
  auto U = [&](float lo, float hi) { return std::uniform_real_distribution<float>(lo, hi)(rng); };
  struct Case { bool fp8; int N, K, B; };  // B: FP8 block scale (0: per row)
  const std::vector<Case> cases = {{false, 37, 200, 0}, {false, 16, 8, 0},   {false, 70, 1096, 0},
                                   {true, 37, 208, 0},  {true, 21, 16, 0},   {true, 50, 1040, 0},
                                   {true, 37, 400, 128}, {true, 45, 1040, 256}, {true, 16, 128, 128},
                                   // more k-blocks than 4 rounds of the 8 warps: the deepest ring wraps
                                   {false, 19, 2568, 0}, {true, 17, 4240, 0}};
  for (const Case& cs : cases)
    for (int M = 1; M <= 8; ++M) {
      const int N = cs.N, K = cs.K, ldx = K + 8, ldw = K + 16;  // strided rows
      std::vector<float> xf(size_t(M) * ldx), bias(static_cast<size_t>(N));
      for (auto& v : xf) v = rb(U(-2, 2));
      for (auto& v : bias) v = U(-0.5f, 0.5f);
      std::vector<bf16> xb(xf.size());
      for (size_t i = 0; i < xf.size(); ++i) xb[i] = __float2bfloat16_rn(xf[i]);
      std::vector<bf16> wb;
      std::vector<uint8_t> wq;
      std::vector<float> scale;
      std::function<double(int, int)> w;
      if (!cs.fp8) {
        wb.resize(size_t(N) * ldw);
        for (auto& v : wb) v = __float2bfloat16_rn(U(-1, 1));
        w = [&](int n, int k) { return double(__bfloat162float(wb[size_t(n) * ldw + k])); };
      } else {
        wq.resize(size_t(N) * ldw);
        for (auto& v : wq) v = bamba::f32_to_e4m3(U(-1, 1) * (U(0, 1) < 0.1f ? 0.01f : 300.f));  // some subnormals
        const int kbs = cs.B ? (K + cs.B - 1) / cs.B : 0;
        scale.resize(cs.B ? size_t((N + cs.B - 1) / cs.B) * kbs : size_t(N));
        for (auto& v : scale) v = U(0.001f, 0.01f);
        w = [&, kbs](int n, int k) {
          const double s = cs.B ? scale[size_t(n / cs.B) * kbs + k / cs.B] : scale[size_t(n)];
          return double(bamba::e4m3_to_f32(wq[size_t(n) * ldw + k])) * s;
        };
      }
      const std::vector<double> ref = reference(M, N, K, xf, ldx, w, bias);
      PView pb{bias.data(), 0};
      for (int store = 0; store < 3; ++store) {  // 0: fp32 y, 1: bf16 y, 2: bf16 y += (bf16 weights only)
        if (store == 2 && cs.fp8) continue;
        const int ldy = N + 3;
        std::vector<float> yf(size_t(M) * ldy, NAN);
        std::vector<bf16> yb(size_t(M) * ldy);
        std::vector<float> y0(size_t(M) * ldy);
        for (size_t i = 0; i < yb.size(); ++i) y0[i] = rb(U(-1, 1)), yb[i] = __float2bfloat16_rn(y0[i]);
        void* y = store == 0 ? static_cast<void*>(yf.data()) : static_cast<void*>(yb.data());
        Args a{};
        a.y = y; a.ldy = ldy; a.y_f32 = store == 0; a.residual = store == 2;
        a.x = xb.data(); a.ldx = ldx;
        a.W = cs.fp8 ? static_cast<const void*>(wq.data()) : static_cast<const void*>(wb.data()); a.ldw = ldw;
        a.scale = cs.fp8 ? scale.data() : nullptr; a.scale_block = cs.B; a.scale_ld = cs.B ? (K + cs.B - 1) / cs.B : 0;
        a.bias = pb; a.M = M; a.N = N; a.K = K; a.prefetch = M % 2;
        const dim3 grid{unsigned((N + 15) / 16)}, block{256};
        // the ring of k-blocks in flight, 2-4 deep, and 8 or 16 warps a block, by M (they change when loads are
        // issued and which warp sums which k-blocks)
        const int depth = 2 + M % 3, warps = M >= 5 ? 16 : 8;
        auto kernel = [&]<class WF, int NW>(WF, std::integral_constant<int, NW>) {
          const dim3 b{unsigned(32 * NW)};
          if (depth == 3) emu::launch(grid, b, 0, [&] { gemv_mma_kernel<GemvX::Plain, WF, 3, NW>(a); });
          else if (depth == 4) emu::launch(grid, b, 0, [&] { gemv_mma_kernel<GemvX::Plain, WF, 4, NW>(a); });
          else emu::launch(grid, b, 0, [&] { gemv_mma_kernel<GemvX::Plain, WF, 2, NW>(a); });
        };
        using W8 = std::integral_constant<int, 8>;
        using W16 = std::integral_constant<int, 16>;
        if (cs.fp8) warps == 16 ? kernel(E4m3W{}, W16{}) : kernel(E4m3W{}, W8{});
        else warps == 16 ? kernel(Bf16W{}, W16{}) : kernel(Bf16W{}, W8{});
        std::vector<double> got, want;
        int untouched = 0;  // the padding of y's rows must stay as it was
        for (int m = 0; m < M; ++m) {
          for (int n = 0; n < N; ++n) {
            const size_t i = size_t(m) * ldy + n;
            got.push_back(store == 0 ? yf[i] : __bfloat162float(yb[i]));
            want.push_back(ref[size_t(m) * N + n] + (store == 2 ? y0[i] : 0.0));
          }
          for (int n = N; n < ldy; ++n) {
            const size_t i = size_t(m) * ldy + n;
            untouched += store == 0 ? !std::isnan(yf[i]) : __bfloat162float(yb[i]) != y0[i];
          }
        }
        const double e = rel(got, want), tol = store == 0 ? 1e-5 : 8e-3;
        const bool ok = e < tol && untouched == 0;
        bad += !ok;
        if (!ok || M == 8)
          std::printf("%s N %d K %d B %d M %d depth %d warps %d y %s: rel %.2e%s%s\n", cs.fp8 ? "fp8 " : "bf16", N, K,
                      cs.B, M, depth, warps,
                      store == 0 ? "f32" : store == 1 ? "bf16" : "bf16+=", e, untouched ? " (wrote past N)" : "",
                      ok ? "" : "  FAIL");
      }
    }
  // The bf16 kernel's folded x loads: RMSNorm (x · w rounded to bf16, the row's rsqrt on the sums) and SwiGLU
  // (bf16(silu(gate) · up) from gate_up = gate | up), fp32 y.
  for (GemvX mode : {GemvX::RmsNorm, GemvX::SwiGlu})
    for (int M : {1, 3, 8}) {
      const int N = 37, K = 328, ldx = mode == GemvX::SwiGlu ? 2 * K + 8 : K + 8, ldw = K + 8;
      std::vector<float> xf(size_t(M) * ldx), nw(static_cast<size_t>(K));
      for (auto& v : xf) v = rb(U(-2, 2));
      for (auto& v : nw) v = rb(U(0.5f, 1.5f));
      std::vector<bf16> xb(xf.size()), nwb(nw.size()), wb(size_t(N) * ldw);
      for (size_t i = 0; i < xf.size(); ++i) xb[i] = __float2bfloat16_rn(xf[i]);
      for (size_t i = 0; i < nw.size(); ++i) nwb[i] = __float2bfloat16_rn(nw[i]);
      for (auto& v : wb) v = __float2bfloat16_rn(U(-1, 1));
      const float eps = 1e-5f;
      std::vector<float> xin(size_t(M) * K), r(size_t(M), 1.f);  // the matmul's input as the kernel forms it
      for (int m = 0; m < M; ++m) {
        double ss = 0;
        for (int k = 0; k < K; ++k) {
          const float g = xf[size_t(m) * ldx + k];
          if (mode == GemvX::RmsNorm) {
            ss += double(g) * g;
            xin[size_t(m) * K + k] = rb(g * nw[size_t(k)]);
          } else {
            xin[size_t(m) * K + k] = rb(g / (1.f + std::exp(-g)) * xf[size_t(m) * ldx + K + k]);
          }
        }
        if (mode == GemvX::RmsNorm) r[size_t(m)] = float(1.0 / std::sqrt(ss / K + eps));
      }
      std::vector<double> ref = reference(M, N, K, xin, K, [&](int n, int k) {
        return double(__bfloat162float(wb[size_t(n) * ldw + k]));
      }, {});
      for (int m = 0; m < M; ++m)
        for (int n = 0; n < N; ++n) ref[size_t(m) * N + n] *= r[size_t(m)];
      std::vector<float> yf(size_t(M) * N);
      Args a{};
      a.y = yf.data(); a.ldy = N; a.y_f32 = 1; a.x = xb.data(); a.ldx = ldx; a.W = wb.data(); a.ldw = ldw;
      a.norm_w = PView{nwb.data(), 1}; a.eps = eps; a.M = M; a.N = N; a.K = K; a.prefetch = 1;
      const dim3 grid{unsigned((N + 15) / 16)}, block{256};
      if (mode == GemvX::RmsNorm) emu::launch(grid, block, 0, [&] { gemv_mma_norm_kernel(a); });
      else emu::launch(grid, block, 0, [&] { gemv_mma_kernel<GemvX::SwiGlu, Bf16W>(a); });
      const double e = rel(std::vector<double>(yf.begin(), yf.end()), ref);
      const bool ok = e < 1e-4;  // a silu or product rounded to the other bf16 neighbour moves a term by 2^-8
      bad += !ok;
      std::printf("bf16 %s N %d K %d M %d y f32: rel %.2e%s\n", mode == GemvX::RmsNorm ? "rmsnorm" : "swiglu", N, K,
                  M, e, ok ? "" : "  FAIL");
    }
  // SwiGLU pairs (GemvY::SwiGlu): y = silu(gate) · up from W = gate | up in the epilogue, bit for bit what the Set
  // store's bf16 gate_up gives through elementwise.cu's formula (the same sums, each half rounded first) — bf16
  // weights with plain and RMSNorm x, FP8 with per-row scales; F not a multiple of the 8 outputs a block holds,
  // bias, strided y whose padding must stay untouched.
  for (int variant = 0; variant < 3; ++variant)  // 0: bf16 plain, 1: bf16 RMSNorm x, 2: FP8 plain
    for (int M : {1, 3, 8}) {
      const bool fp8 = variant == 2;
      const GemvX mode = variant == 1 ? GemvX::RmsNorm : GemvX::Plain;
      const int F = 37, N = 2 * F, K = fp8 ? 208 : 200, ldx = K + 8, ldw = K + 16, ldy = F + 5;
      std::vector<bf16> xb(size_t(M) * ldx), wb, nwb(static_cast<size_t>(K));
      std::vector<uint8_t> wq;
      std::vector<float> scale(static_cast<size_t>(N)), bias(static_cast<size_t>(N));
      for (auto& v : xb) v = __float2bfloat16_rn(U(-2, 2));
      for (auto& v : nwb) v = __float2bfloat16_rn(U(0.5f, 1.5f));
      for (auto& v : bias) v = U(-0.5f, 0.5f);
      if (fp8) {
        wq.resize(size_t(N) * ldw);
        for (auto& v : wq) v = bamba::f32_to_e4m3(U(-1, 1) * 300.f);
        for (auto& v : scale) v = U(0.001f, 0.01f);
      } else {
        wb.resize(size_t(N) * ldw);
        for (auto& v : wb) v = __float2bfloat16_rn(U(-1, 1));
      }
      auto run = [&](bf16* y, int ldy_, bool pairs) {
        Args a{};
        a.y = y; a.ldy = ldy_; a.pairs = pairs; a.x = xb.data(); a.ldx = ldx;
        a.W = fp8 ? static_cast<const void*>(wq.data()) : static_cast<const void*>(wb.data()); a.ldw = ldw;
        a.scale = fp8 ? scale.data() : nullptr; a.bias = PView{bias.data(), 0};
        a.norm_w = PView{nwb.data(), 1}; a.eps = 1e-5f; a.M = M; a.N = N; a.K = K; a.prefetch = M % 2;
        const dim3 grid{unsigned(pairs ? (F + 7) / 8 : (N + 15) / 16)}, block{256};
        if (fp8) emu::launch(grid, block, 0, [&] { gemv_mma_kernel<GemvX::Plain, E4m3W>(a); });
        else if (mode == GemvX::RmsNorm) emu::launch(grid, block, 0, [&] { gemv_mma_norm_kernel(a); });
        else emu::launch(grid, block, 0, [&] { gemv_mma_kernel<GemvX::Plain, Bf16W>(a); });
      };
      std::vector<bf16> gu(size_t(M) * N), act(size_t(M) * ldy, __float2bfloat16_rn(-7.f));
      run(gu.data(), N, false);
      run(act.data(), ldy, true);
      int differ = 0, untouched = 0;
      for (int m = 0; m < M; ++m) {
        for (int n = 0; n < F; ++n) {
          const bf16 want = __float2bfloat16_rn(silu_f(__bfloat162float(gu[size_t(m) * N + n])) *
                                                __bfloat162float(gu[size_t(m) * N + F + n]));
          differ += act[size_t(m) * ldy + n].b != want.b;
        }
        for (int n = F; n < ldy; ++n) untouched += __bfloat162float(act[size_t(m) * ldy + n]) != -7.f;
      }
      const bool ok = differ == 0 && untouched == 0;
      bad += !ok;
      std::printf("swiglu pairs %s M %d F %d K %d: %d of %d outputs differ from Set + swiglu%s%s\n",
                  variant == 0 ? "bf16" : variant == 1 ? "bf16 rmsnorm" : "fp8", M, F, K, differ, M * F,
                  untouched ? " (wrote past F)" : "", ok ? "" : "  FAIL");
    }
  std::printf(bad ? "FAIL %d\n" : "all within 1e-5 (f32 y) / 8e-3 (bf16 y) / 1e-4 (folded x loads); pairs exact\n", bad);
  return bad ? 1 : 0;
}
