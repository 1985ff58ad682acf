// The FP8 weight kernels (backend/cuda/fp8_*.cu, gemv_mma.cu) against the CPU twin on odd sizes, for both GPU
// compute dtypes: the W8A16 GEMVs (1-8 rows; the tensor-core GEMV and the warp-per-row vector and element-per-lane
// kernels; per-channel, 16×16 and 128/256 block scales), the W8A8 GEMM of longer inputs (cuBLASLt FP8; an
// unaligned K through the rounded-activation fallback), bias and strided rows, and the load-time quantization bit
// for bit. Then the fixture model quantized at load on both backends. Skips itself, visibly, without a GPU.
// (The tensor-core GEMV's indexing also runs without a GPU: tests/emu/run.sh.)
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>

#include "backend/backend.h"
#include "core/dtype.h"
#include "core/fp8.h"
#include "model/weights.h"
#include "fixture_runner.h"
#include "cuda_twin_test.h"
#include "test_util.h"

namespace bamba {
namespace {

class CudaFp8 : public test::CudaTwinTest {
 protected:
  CudaFp8() : CudaTwinTest("CUDA FP8 tests", 5) {}
  std::vector<float> random(size_t n, float lo, float hi) { return CudaTwinTest::random(n, lo, hi, GetParam()); }
  // The same FP8 weight (bytes and scales) on the CPU and on the fixture's GPU backend.
  std::pair<Tensor, Tensor> weight(int64_t N, int64_t K, int64_t B) {
    std::vector<Tensor> t = weights(N, K, B, {cpu_.get(), gpu_.get()});
    return {t[0], t[1]};
  }
  // ... on the backends given.
  std::vector<Tensor> weights(int64_t N, int64_t K, int64_t B, std::initializer_list<Backend*> backends) {
    std::vector<float> w = random(size_t(N * K), -1.f, 1.f);
    std::vector<uint8_t> q(static_cast<size_t>(N * K));
    std::vector<float> s;
    const int64_t kb = B ? (K + B - 1) / B : 0;
    if (B == 0) {
      for (int64_t n = 0; n < N; ++n) s.push_back(quantize_row_e4m3(&w[size_t(n * K)], K, &q[size_t(n * K)]));
    } else {
      s = random(size_t(((N + B - 1) / B) * kb), 0.001f, 0.01f);
      for (int64_t n = 0; n < N; ++n)
        for (int64_t k = 0; k < K; ++k) q[size_t(n * K + k)] = f32_to_e4m3(w[size_t(n * K + k)] * 300.f);
    }
    // Through load_weight, as a checkpoint's F8_E4M3 tensor comes.
    TensorInfo info;
    info.name = "w";
    info.dtype = DType::F8_E4M3;
    info.shape = {N, K};
    info.data = q.data();
    info.nbytes = q.size();
    const TensorInfo* parts[] = {&info};
    auto make = [&](Backend& be) {
      Tensor t = be.load_weight(parts, {N, K});
      Tensor sc = B ? be.alloc(DType::F32, {(N + B - 1) / B, kb}) : be.alloc(DType::F32, {N});
      be.from_host_f32(sc, s.data());
      t.scale = sc.ptr<float>();
      t.scale_block = int32_t(B);
      return t;
    };
    std::vector<Tensor> out;
    for (Backend* be : backends) out.push_back(make(*be));
    return out;
  }
};

TEST_P(CudaFp8, MatmulMatchesTheCpuTwin) {
  const DType dt = GetParam();
  // fp32 outputs: 1e-3, not kTolF32 — Hopper's FP8 MMA accumulates with fewer bits than fp32 (measured 1.1e-4
  // relative L2 at K = 4112, bench/NOTES.md section fp8).
  const double tol = dt == DType::BF16 ? test::kTolBf16 : 1e-3;
  for (int64_t B : {0, 16})
    for (int64_t K : {80, 45, 4096 + 16})
      for (int64_t M : {1, 2, 5, 8, 13, 67}) {
        if (B && K == 45) continue;  // block scales need K-blocks of 16 on the GPU's vector path; 45 runs per element
        const int64_t N = 37;
        auto [Wc, Wg] = weight(N, K, B);
        const std::vector<float> xv = random(size_t(M * (K + 3)), -2.f, 2.f), bv = random(size_t(N), -0.5f, 0.5f);
        // x strided: a column slice of a wider matrix
        Tensor xc = cpu_->alloc(DType::F32, {M, K + 3}), xg = gpu_->alloc(dt, {M, K + 3});
        cpu_->from_host_f32(xc, xv.data());
        gpu_->from_host_f32(xg, xv.data());
        Tensor bc = cpu_->alloc(DType::F32, {N}), bg = gpu_->alloc(DType::F32, {N});
        cpu_->from_host_f32(bc, bv.data());
        gpu_->from_host_f32(bg, bv.data());
        for (bool y32 : {false, true}) {
          Tensor yc = cpu_->alloc(DType::F32, {M, N}), yg = gpu_->alloc(y32 ? DType::F32 : dt, {M, N});
          cpu_->matmul(yc, xc.slice_cols(0, K), Wc, bc);
          gpu_->matmul(yg, xg.slice_cols(0, K), Wg, bg);
          std::vector<float> a(static_cast<size_t>(M * N)), r(size_t(M * N));
          gpu_->to_host_f32(yg, a.data());
          cpu_->to_host_f32(yc, r.data());
          const double e = test::rel_l2(a, r);
          EXPECT_LE(e, y32 && dt == DType::F32 ? tol : test::kTolBf16)
              << "B " << B << " K " << K << " M " << M << " y " << (y32 ? "f32" : "compute") << " rel L2 " << e;
        }
      }
}

// The W8A8 prefill GEMM with cuBLASLt's fast accumulation (the default) and without it (BAMBA_CUDA_FP8_FAST_ACCUM=0,
// read when a backend is made: the partial sums promoted into fp32). At the 9B's widths (K = 4,096 and 14,336) and
// prefill rows both stay within the bf16 bound of the CPU twin and give the same bits twice; errors and times are
// printed side by side.
TEST_P(CudaFp8, FastAccumulationGemm) {
  const DType dt = GetParam();
  if (dt != DType::BF16) GTEST_SKIP() << "the prefill's activations are bf16";
  std::unique_ptr<Backend> form[2];  // 0: promoted, 1: fast accumulation
  for (int f = 0; f < 2; ++f) {
    test::ScopedEnv env("BAMBA_CUDA_FP8_FAST_ACCUM", f ? "1" : "0");
    form[f] = make_backend("cuda", dt);
  }
  for (int64_t K : {4096, 14336}) {
    const int64_t M = 520, N = 4096;
    std::vector<Tensor> W = weights(N, K, 0, {cpu_.get(), form[0].get(), form[1].get()});
    const std::vector<float> xv = random(size_t(M * K), -2.f, 2.f);
    Tensor xc = cpu_->alloc(DType::F32, {M, K}), yc = cpu_->alloc(DType::F32, {M, N});
    cpu_->from_host_f32(xc, xv.data());
    cpu_->matmul(yc, xc, W[0], {});
    std::vector<float> ref(size_t(M * N)), out(size_t(M * N)), again(size_t(M * N));
    cpu_->to_host_f32(yc, ref.data());
    for (int f = 0; f < 2; ++f) {
      Backend& be = *form[f];
      Tensor x = be.alloc(dt, {M, K}), y = be.alloc(dt, {M, N});
      be.from_host_f32(x, xv.data());
      be.matmul(y, x, W[size_t(1 + f)], {});  // the first call makes the cuBLASLt handle: untimed (quantize + GEMM)
      be.to_host_f32(y, out.data());
      const auto t0 = std::chrono::steady_clock::now();
      for (int r = 0; r < 20; ++r) be.matmul(y, x, W[size_t(1 + f)], {});
      be.synchronize();
      const double us = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count() / 20;
      be.to_host_f32(y, again.data());
      const double e = test::rel_l2(out, ref);
      std::printf("fp8 GEMM M %lld N %lld K %lld, %s: rel L2 %.3g against the CPU, %.1f us (%.0f TFLOP/s)\n",
                  (long long)M, (long long)N, (long long)K, f ? "fast accumulation" : "fp32 promotion", e, us,
                  2.0 * double(M * N * K) / us * 1e-6);
      EXPECT_LE(e, test::kTolBf16) << "K " << K << (f ? " fast" : " promoted");
      EXPECT_EQ(std::memcmp(out.data(), again.data(), out.size() * 4), 0) << "K " << K;
    }
  }
}

// Decode (1-8 rows) through both W8A16 kernels: gemv_mma.cu's tensor-core GEMV over E4M3 weights (taken by bf16
// activations with K and ldw multiples of 16, 16-byte strides, per-row or 128-multiple block scales) and
// fp8_gemv.cu's warp per row (BAMBA_CUDA_FP8_MMA_ROWS=9 turns the first off; fp32 activations, odd K, odd strides
// and 16-blocks always take the second). Each against the CPU twin, and the two against each other: both multiply
// the exact e4m3 values with fp32 sums, so with fp32 outputs they agree to rounding.
TEST_P(CudaFp8, DecodeGemvBothKernels) {
  const DType dt = GetParam();
  std::unique_ptr<Backend> kern[2];  // 0: the tensor-core GEMV from 1 row; 1: warp per row only
  for (int i = 0; i < 2; ++i) {
    test::ScopedEnv env("BAMBA_CUDA_FP8_MMA_ROWS", i == 0 ? "1" : "9");
    kern[i] = make_backend("cuda", dt);
  }
  struct Shape { int64_t N, K, B, pad; };  // pad: x's row stride is K + pad
  const Shape shapes[] = {{37, 80, 0, 16},    {21, 16, 0, 8},     {50, 4096 + 16, 0, 16}, {16, 128, 128, 16},
                          {37, 400, 128, 16}, {45, 1040, 256, 8}, {37, 208, 16, 16},      {29, 45, 0, 16},
                          {37, 96, 0, 3}};
  for (const Shape& sh : shapes)
    for (int64_t M = 1; M <= 8; ++M) {
      const int64_t N = sh.N, K = sh.K, B = sh.B, ldx = K + sh.pad;
      const std::vector<Tensor> W = weights(N, K, B, {cpu_.get(), kern[0].get(), kern[1].get()});
      const std::vector<float> xv = random(size_t(M * ldx), -2.f, 2.f), bv = random(size_t(N), -0.5f, 0.5f);
      Tensor xc = cpu_->alloc(DType::F32, {M, ldx});
      cpu_->from_host_f32(xc, xv.data());
      Tensor bc = cpu_->alloc(DType::F32, {N});
      cpu_->from_host_f32(bc, bv.data());
      for (bool y32 : {false, true}) {
        Tensor yc = cpu_->alloc(DType::F32, {M, N});
        cpu_->matmul(yc, xc.slice_cols(0, K), W[0], bc);
        std::vector<float> r(static_cast<size_t>(M * N)), got[2];
        cpu_->to_host_f32(yc, r.data());
        for (int i = 0; i < 2; ++i) {
          Backend& g = *kern[i];
          Tensor xg = g.alloc(dt, {M, ldx}), bg = g.alloc(DType::F32, {N});
          g.from_host_f32(xg, xv.data());
          g.from_host_f32(bg, bv.data());
          Tensor yg = g.alloc(y32 ? DType::F32 : dt, {M, N});
          g.matmul(yg, xg.slice_cols(0, K), W[size_t(1 + i)], bg);
          got[i].resize(r.size());
          g.to_host_f32(yg, got[i].data());
          const double e = test::rel_l2(got[i], r);
          EXPECT_LE(e, y32 ? 1e-4 : test::kTolBf16)  // W8A16: exact products, fp32 sums; only y's rounding
              << (i ? "warp per row" : "tensor-core GEMV") << ": N " << N << " K " << K << " B " << B << " ldx "
              << ldx << " M " << M << " y " << (y32 ? "f32" : "compute") << " rel L2 " << e;
        }
        if (y32) {
          const double d = test::rel_l2(got[0], got[1]);
          EXPECT_LE(d, 1e-5) << "the two kernels differ: N " << N << " K " << K << " B " << B << " M " << M
                             << " rel L2 " << d;
          // ... but not bit for bit where the switch routes them apart (the sums' orders differ over 4112 k's): a
          // launcher that refused every shape would otherwise pass all of the above.
          if (dt == DType::BF16 && K == 4096 + 16) {
            EXPECT_NE(std::memcmp(got[0].data(), got[1].data(), got[0].size() * 4), 0)
                << "BAMBA_CUDA_FP8_MMA_ROWS=1 and =9 gave identical sums: is the tensor-core GEMV taken? M " << M;
          }
        }
      }
    }
}

// The FP8 tensor-core GEMV's ring of k-blocks in flight (BAMBA_CUDA_FP8_GEMV_DEPTH 2-4, read at each launch): the
// same bits at every depth, per-row and 128-block scales, from one row (BAMBA_CUDA_FP8_MMA_ROWS=1), K long enough
// that the deepest ring wraps (4096 + 16: 33 k-blocks of 128).
TEST_P(CudaFp8, GemvDepthsGiveTheSameBits) {
  const DType dt = GetParam();
  if (dt != DType::BF16) GTEST_SKIP() << "the tensor-core GEMV takes bf16 activations only";
  std::unique_ptr<Backend> g;
  {
    test::ScopedEnv env("BAMBA_CUDA_FP8_MMA_ROWS", "1");
    g = make_backend("cuda", dt);
  }
  struct Shape { int64_t N, K, B; };
  for (const Shape& sh : {Shape{50, 4096 + 16, 0}, Shape{37, 400, 128}, Shape{21, 16, 0}})
    for (int64_t M : {1, 4, 8}) {
      const std::string what = "N " + std::to_string(sh.N) + " K " + std::to_string(sh.K) + " B " +
                               std::to_string(sh.B) + " M " + std::to_string(M);
      const std::vector<Tensor> W = weights(sh.N, sh.K, sh.B, {g.get()});
      const std::vector<float> xv = random(size_t(M * sh.K), -2.f, 2.f), bv = random(size_t(sh.N), -0.5f, 0.5f);
      Tensor xg = g->alloc(dt, {M, sh.K}), bg = g->alloc(DType::F32, {sh.N});
      g->from_host_f32(xg, xv.data());
      g->from_host_f32(bg, bv.data());
      std::vector<float> got[3];
      for (int d = 2; d <= 4; ++d) {
        test::ScopedEnv env("BAMBA_CUDA_FP8_GEMV_DEPTH", std::to_string(d).c_str());
        Tensor yg = g->alloc(DType::F32, {M, sh.N});
        g->matmul(yg, xg, W[0], bg);
        got[d - 2].resize(size_t(M * sh.N));
        g->to_host_f32(yg, got[d - 2].data());
      }
      for (int d = 3; d <= 4; ++d) {
        EXPECT_EQ(0, std::memcmp(got[d - 2].data(), got[0].data(), got[0].size() * sizeof(float)))
            << "depth " << d << " differs from depth 2, " << what;
      }
    }
}

// fp8_gemv.cu's rows split between two warps at one row (BAMBA_CUDA_FP8_ROW_SPLIT=2, read when the backend is made;
// grids of one wave or less): the CPU twin's values, fp32 and bf16 out, K from one chunk a lane (the second warp
// idle) to out_proj's 8,192, per-row and 16/128-block scales; other sums than the one-warp kernel's (so some output
// differs at the long K: the split path ran; 2,048 rows are 256 one-warp blocks, a wave on any card of 52 SMs or
// more), and in batch-invariant mode the one-warp kernel's bits. The
// tensor-core GEMV off (BAMBA_CUDA_FP8_MMA_ROWS=9) so bf16 takes the warp-per-row kernels too.
TEST_P(CudaFp8, RowSplitAtOneRow) {
  const DType dt = GetParam();
  std::unique_ptr<Backend> one, split, invariant;
  {
    test::ScopedEnv mma("BAMBA_CUDA_FP8_MMA_ROWS", "9");
    one = make_backend("cuda", dt);
    test::ScopedEnv env("BAMBA_CUDA_FP8_ROW_SPLIT", "2");
    split = make_backend("cuda", dt);
    invariant = make_backend("cuda", dt);
    invariant->set_batch_invariant(256);
  }
  struct Shape { int64_t N, K, B; };
  for (const Shape& sh : {Shape{37, 4096 + 16, 0}, Shape{29, 208, 16}, Shape{45, 1040, 128}, Shape{21, 16, 0},
                          Shape{2048, 8192, 0}})
    for (DType yt : {DType::F32, dt}) {
      const std::string what = "N " + std::to_string(sh.N) + " K " + std::to_string(sh.K) + " B " +
                               std::to_string(sh.B) + " y " + std::string(dtype_name(yt));
      const std::vector<Tensor> W =
          weights(sh.N, sh.K, sh.B, {cpu_.get(), one.get(), split.get(), invariant.get()});
      const std::vector<float> xv = random(size_t(sh.K), -2.f, 2.f), bv = random(size_t(sh.N), -0.5f, 0.5f);
      Tensor xc = cpu_->alloc(DType::F32, {1, sh.K}), bc = cpu_->alloc(DType::F32, {sh.N});
      Tensor yc = cpu_->alloc(DType::F32, {1, sh.N});
      cpu_->from_host_f32(xc, xv.data());
      cpu_->from_host_f32(bc, bv.data());
      cpu_->matmul(yc, xc, W[0], bc);
      const std::vector<float> ref = test::host(*cpu_, yc);
      std::vector<float> got[3];
      Backend* bes[3] = {one.get(), split.get(), invariant.get()};
      for (int i = 0; i < 3; ++i) {
        Backend& g = *bes[i];
        Tensor xg = g.alloc(dt, {1, sh.K}), bg = g.alloc(DType::F32, {sh.N}), yg = g.alloc(yt, {1, sh.N});
        g.from_host_f32(xg, xv.data());
        g.from_host_f32(bg, bv.data());
        g.matmul(yg, xg, W[size_t(1 + i)], bg);
        got[i] = test::host(g, yg);
        const double e = test::rel_l2(got[i], ref);
        EXPECT_LE(e, yt == DType::F32 ? 1e-4 : test::kTolBf16) << "backend " << i << ", " << what << " rel L2 " << e;
      }
      EXPECT_EQ(0, std::memcmp(got[0].data(), got[2].data(), got[0].size() * sizeof(float)))
          << "batch-invariant mode split a row, " << what;
      if (sh.N == 2048 && yt == DType::F32) {
        EXPECT_NE(0, std::memcmp(got[0].data(), got[1].data(), got[0].size() * sizeof(float)))
            << "the same bits as one warp a row: the split kernel did not run? " << what;
      }
    }
}

// FP8 gate_up at one row through fp8_gemv.cu's row pairs (the default; BAMBA_CUDA_FP8_ROW_PAIRS=0, read when the
// backend is made, turns them off): the bits of the GEMV then the SwiGLU kernel on the same backend, the CPU twin's
// values, and the scratch untouched (the pairs kernel ran, not the composed ops). F not a multiple of a block's 8
// warps, K from one chunk a lane to a ragged 4,112; bias. Bf16 only (the fp32 compute dtype composes).
TEST_P(CudaFp8, RowPairsSwigluAtOneRow) {
  const DType dt = GetParam();
  if (dt != DType::BF16) GTEST_SKIP() << "matmul_swiglu's fused forms take bf16 activations only";
  std::unique_ptr<Backend> g = make_backend("cuda", dt);
  struct Shape { int64_t F, K; };
  for (const Shape& sh : {Shape{37, 208}, Shape{21, 16}, Shape{45, 4096 + 16}, Shape{8, 512}}) {
    const int64_t F = sh.F, N = 2 * F, K = sh.K;
    const std::string what = "F " + std::to_string(F) + " K " + std::to_string(K);
    const std::vector<Tensor> W = weights(N, K, 0, {cpu_.get(), g.get()});
    const std::vector<float> xv = random(size_t(K), -2.f, 2.f), bv = random(size_t(N), -0.5f, 0.5f);
    Tensor xc = cpu_->alloc(DType::F32, {1, K}), bc = cpu_->alloc(DType::F32, {N});
    cpu_->from_host_f32(xc, xv.data());
    cpu_->from_host_f32(bc, bv.data());
    Tensor ac = cpu_->alloc(DType::F32, {1, F}), guc = cpu_->alloc(DType::F32, {1, N});
    cpu_->matmul_swiglu(ac, xc, W[0], bc, guc);
    Tensor xg = g->alloc(dt, {1, K}), bg = g->alloc(DType::F32, {N});
    g->from_host_f32(xg, xv.data());
    g->from_host_f32(bg, bv.data());
    Tensor ag = g->alloc(dt, {1, F}), gug = g->alloc(dt, {1, N});
    g->fill(gug, 7.f);
    g->matmul_swiglu(ag, xg, W[1], bg, gug);
    const std::vector<float> got = test::host(*g, ag), want = test::host(*cpu_, ac), scratch = test::host(*g, gug);
    EXPECT_LE(test::rel_l2(got, want), test::kTolBf16) << what;
    EXPECT_TRUE(std::all_of(scratch.begin(), scratch.end(), [](float v) { return v == 7.f; }))
        << "the composed ops ran, not the row pairs, " << what;
    Tensor gu2 = g->alloc(dt, {1, N}), a2 = g->alloc(dt, {1, F});
    g->matmul(gu2, xg, W[1], bg);
    g->swiglu(a2, gu2);
    const std::vector<float> composed = test::host(*g, a2);
    EXPECT_EQ(0, std::memcmp(got.data(), composed.data(), got.size() * sizeof(float)))
        << "not the matmul and swiglu's bits, " << what;
  }
}

// act = swiglu(x · Wᵀ + bias) over FP8 weights: against the CPU twin; the same bits as the GPU's matmul and SwiGLU
// kernel; done in the tensor-core GEMV's epilogue (scratch untouched) for bf16 steps from BAMBA_CUDA_FP8_MMA_ROWS
// (default 2) to 8 rows with per-row scales, at one row by the row pairs, composed otherwise (block scales, 9 rows
// and more).
TEST_P(CudaFp8, MatmulSwigluInTheGemvEpilogue) {
  const DType dt = GetParam();
  struct Shape { int64_t F, K, B; };
  for (const Shape& sh : {Shape{37, 208, 0}, Shape{520, 4096, 0}, Shape{64, 256, 128}})
    for (int64_t M : {1, 2, 5, 8, 11}) {
      const int64_t F = sh.F, N = 2 * F, K = sh.K;
      const std::string what = "F " + std::to_string(F) + " K " + std::to_string(K) + " B " + std::to_string(sh.B) +
                               " M " + std::to_string(M);
      const std::pair<Tensor, Tensor> W = weight(N, K, sh.B);
      const std::vector<float> xv = random(size_t(M * K), -2.f, 2.f), bv = random(size_t(N), -0.5f, 0.5f);
      Tensor xc = cpu_->alloc(DType::F32, {M, K}), bc = cpu_->alloc(DType::F32, {N});
      cpu_->from_host_f32(xc, xv.data());
      cpu_->from_host_f32(bc, bv.data());
      Tensor ac = cpu_->alloc(DType::F32, {M, F}), guc = cpu_->alloc(DType::F32, {M, N});
      cpu_->matmul_swiglu(ac, xc, W.first, bc, guc);
      Tensor xg = gpu_->alloc(dt, {M, K}), bg = gpu_->alloc(DType::F32, {N});
      gpu_->from_host_f32(xg, xv.data());
      gpu_->from_host_f32(bg, bv.data());
      Tensor ag = gpu_->alloc(dt, {M, F}), gug = gpu_->alloc(dt, {M, N});
      gpu_->fill(gug, 7.f);
      gpu_->matmul_swiglu(ag, xg, W.second, bg, gug);
      const std::vector<float> got = test::host(*gpu_, ag), want = test::host(*cpu_, ac), scratch = test::host(*gpu_, gug);
      EXPECT_LE(test::rel_l2(got, want), test::kTolBf16) << what;
      const bool untouched = std::all_of(scratch.begin(), scratch.end(), [](float v) { return v == 7.f; });
      EXPECT_EQ(untouched, dt == DType::BF16 && sh.B == 0 && M <= 8) << "which path ran, " << what;
      Tensor gu2 = gpu_->alloc(dt, {M, N}), a2 = gpu_->alloc(dt, {M, F});
      gpu_->matmul(gu2, xg, W.second, bg);
      gpu_->swiglu(a2, gu2);
      const std::vector<float> composed = test::host(*gpu_, a2);
      EXPECT_EQ(0, std::memcmp(got.data(), composed.data(), got.size() * sizeof(float)))
          << "not the matmul and swiglu's bits, " << what;
    }
}

TEST_P(CudaFp8, QuantizationBitForBit) {
  const DType dt = GetParam();
  const int64_t N = 29, K = 333;
  std::vector<float> w = random(size_t(N * K), -0.3f, 0.3f);
  w[5] = 0.f;
  for (int64_t k = 0; k < K; ++k) w[size_t(3 * K + k)] = 0.f;  // an all-zero row: scale 1
  Tensor wc = cpu_->alloc(DType::F32, {N, K}), wg = gpu_->alloc(dt, {N, K});
  cpu_->from_host_f32(wc, w.data());
  gpu_->from_host_f32(wg, w.data());
  Tensor qc = cpu_->alloc(DType::F8_E4M3, {N, K}), qg = gpu_->alloc(DType::F8_E4M3, {N, K});
  Tensor sc = cpu_->alloc(DType::F32, {N}), sg = gpu_->alloc(DType::F32, {N});
  cpu_->quantize_fp8(qc, sc, wc);
  gpu_->quantize_fp8(qg, sg, wg);
  std::vector<float> a(static_cast<size_t>(N)), r(static_cast<size_t>(N));
  gpu_->to_host_f32(sg, a.data());
  cpu_->to_host_f32(sc, r.data());
  for (int64_t n = 0; n < N; ++n) EXPECT_EQ(a[size_t(n)], r[size_t(n)]) << n;
  std::vector<float> qa(static_cast<size_t>(N * K)), qr(static_cast<size_t>(N * K));
  gpu_->to_host_f32(qg, qa.data());  // F8_E4M3 -> f32 on the host: exact
  for (size_t i = 0; i < qr.size(); ++i) qr[i] = e4m3_to_f32(qc.ptr<uint8_t>()[i]);
  int diff = 0;
  for (size_t i = 0; i < qa.size(); ++i) diff += std::memcmp(&qa[i], &qr[i], 4) != 0;
  EXPECT_EQ(diff, 0);
}

INSTANTIATE_TEST_SUITE_P(Dtypes, CudaFp8, ::testing::Values(DType::BF16, DType::F32),
                         [](const auto& info) { return std::string(dtype_name(info.param)); });

// The fixture model quantized at load on the GPU against the same on the CPU (both FP8; the GPU's weights are
// quantized from bf16, so the two FP8 models differ by that rounding too).
// The fixture quantized at load on both backends, prefill then decode. In fp32 compute the GPU and the CPU twin
// quantize the same activations (per token) and differ only by the FP8 GEMM's accumulation — but Hopper's FP8
// tensor cores do not accumulate in full fp32, and this random model amplifies any difference: on an H100 the
// sequences whose prefill takes the W8A8 GEMM (> 8 tokens) came out at 0.036-0.038, those all W8A16 (GEMV,
// fp32 sums) at 5e-7 (bench/NOTES.md v30); 0.1 still catches a wrong scale or layout (~1). In bf16 the
// activations are rounded before their e4m3 quantization, which re-rolls that quantization's rounding — as large
// as FP8's own error on this random model (0.09-0.29 rel L2 against fp32, Fp8.AccuracyOnTheFixtures): the bound
// only catches a wrong scale or layout (rel L2 ~1). Measured on an H100: bf16 0.074 / 0.081.
TEST(CudaFp8Model, QuantizedFixtureMatchesTheCpu) {
  if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA GPU: the CUDA FP8 tests need one";
  const std::string dir = test::model_dir("bamba-tiny-a");
  for (auto [dtype, bound] : {std::pair{DType::F32, 0.1}, std::pair{DType::BF16, 0.2}}) {
    test::FixtureRunner c(dir, make_cpu_backend(), false), g(dir, make_backend("cuda", dtype), false);
    for (test::FixtureRunner* r : {&c, &g}) {
      ModelWeights w = r->model->weights();
      quantize_weights_fp8(r->model->config(), w, *r->be);
      r->model = std::make_unique<HybridModel>(r->model->config(), std::move(w), *r->be);
    }
    for (auto& s : c.seqs) {
      const int32_t T = int32_t(s.ids.size());
      std::vector<int32_t> cuts = test::prefill_then_decode_cuts(std::max(1, T / 2), T);  // no empty prefill
      const double e = test::rel_l2(g.run_pieces(s.ids, cuts), c.run_pieces(s.ids, cuts));
      EXPECT_LE(e, bound) << dtype_name(dtype) << " rel L2 " << e;
      std::printf("[ fp8 bamba-tiny-a, cuda %s vs cpu ] rel L2 %.4g\n", std::string(dtype_name(dtype)).c_str(), e);
    }
  }
}

}  // namespace
}  // namespace bamba
