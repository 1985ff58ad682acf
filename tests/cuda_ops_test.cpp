// Every CUDA op against its CPU twin (the fp32 oracle) on random inputs with odd sizes: T = 1, lengths that are
// not multiples of the scan chunk, many sequences of different lengths continuing from cached state, n_groups > 1,
// strided rows, paged KV in shuffled blocks; each for both GPU compute dtypes (bf16, fp32). Inputs are rounded to
// the GPU dtype first so both backends see the same
// numbers; the tolerances are the ones in docs/numerics.md. Skips itself, visibly, without a GPU.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <random>

#include "backend/backend.h"
#include "core/dtype.h"
#include "core/error.h"
#include "cuda_twin_test.h"
#include "test_util.h"

namespace bamba {
namespace {

using test::host;
using test::kTolBf16;
using test::kTolF32;
using test::kTolF32State;
using test::rel_l2;

struct Pair {
  Tensor cpu, gpu;
};

class CudaOps : public test::CudaTwinTest {
 protected:
  CudaOps() : CudaTwinTest("CUDA op tests", 1234) {}

  // Random values in [lo, hi), rounded to bf16 when the GPU tensor is bf16, uploaded to both backends.
  Pair make(DType gpu_t, std::initializer_list<int64_t> shape, float lo, float hi, bool round = true) {
    Pair p{cpu_->alloc(DType::F32, shape), gpu_->alloc(gpu_t, shape)};
    const std::vector<float> v = random(static_cast<size_t>(p.cpu.numel()), lo, hi, gpu_t, round);
    cpu_->from_host_f32(p.cpu, v.data());
    gpu_->from_host_f32(p.gpu, v.data());
    return p;
  }
  Pair zeros(DType gpu_t, std::initializer_list<int64_t> shape) {
    return {cpu_->alloc(DType::F32, shape), gpu_->alloc(gpu_t, shape)};
  }
  void expect_close(const Pair& p, double tol, const std::string& what) {
    auto a = host(*gpu_, p.gpu), r = host(*cpu_, p.cpu);
    const double e = rel_l2(a, r);
    EXPECT_LE(e, tol) << what << " (relative L2 error " << e << ")";
  }
  // y = x Wᵀ + bias on both backends, compared at the compute dtype's tolerance (y may be F32: logits).
  void expect_matmul_close(const Pair& y, const Pair& x, const Pair& W, const Pair& bias, const std::string& what) {
    cpu_->matmul(y.cpu, x.cpu, W.cpu, bias.cpu);
    gpu_->matmul(y.gpu, x.gpu, W.gpu, bias.gpu);
    expect_close(y, tol(), what);
  }
  // moe_route on both backends from the same logits [T, E]: the experts each chose, as ints.
  struct Routed {
    Pair experts, weights;  // [T, k] I32, F32
    std::vector<int32_t> cpu_experts, gpu_experts;
  };
  Routed route_both(const Pair& logits, const Pair& bias, const MoeOpsConfig& c) {
    const int64_t T = logits.cpu.rows(), k = c.top_k;
    Routed r{{cpu_->alloc(DType::I32, {T, k}), gpu_->alloc(DType::I32, {T, k})}, zeros(DType::F32, {T, k}), {}, {}};
    cpu_->moe_route(r.experts.cpu, r.weights.cpu, logits.cpu, bias.cpu, c);
    gpu_->moe_route(r.experts.gpu, r.weights.gpu, logits.gpu, bias.gpu, c);
    r.cpu_experts.resize(size_t(T * k));
    r.gpu_experts.resize(size_t(T * k));
    std::memcpy(r.cpu_experts.data(), r.experts.cpu.data, r.cpu_experts.size() * 4);
    // I32 through to_host_f32 would convert; read the raw ints through a byte-exact F32 view instead.
    Tensor raw = r.experts.gpu;
    raw.dtype = DType::F32;
    std::vector<float> tmp(r.gpu_experts.size());
    gpu_->to_host_f32(raw, tmp.data());
    std::memcpy(r.gpu_experts.data(), tmp.data(), r.gpu_experts.size() * 4);
    return r;
  }
  static Pair cols(const Pair& p, int64_t a, int64_t b) { return {p.cpu.slice_cols(a, b), p.gpu.slice_cols(a, b)}; }
  static Pair rows(const Pair& p, int64_t a, int64_t b) { return {p.cpu.slice_rows(a, b), p.gpu.slice_rows(a, b)}; }

  // A batch of sequences with new-token counts `lens`, cached lengths `pasts`, the given slots, and KV pages of
  // `bs` tokens taken in a shuffled order from a pool.
  StepBatch batch(const std::vector<int32_t>& lens, const std::vector<int32_t>& pasts, const std::vector<int32_t>& slots,
                  int32_t bs, int32_t n_blocks, int32_t vocab, bool all_logits = true) {
    std::vector<int32_t> pool(static_cast<size_t>(n_blocks));
    std::iota(pool.begin(), pool.end(), 0);
    std::shuffle(pool.begin(), pool.end(), rng_);
    size_t next = 0;
    StepBatch b;
    for (size_t s = 0; s < lens.size(); ++s) {
      std::vector<int32_t> toks(static_cast<size_t>(lens[s]));
      for (auto& t : toks) t = int32_t(rng_() % uint32_t(vocab));
      std::vector<int32_t> blocks;
      for (int32_t k = 0; k < (pasts[s] + lens[s] + bs - 1) / bs; ++k) blocks.push_back(pool.at(next++));
      b.add(toks, pasts[s], slots[s], blocks, all_logits);
    }
    return b;
  }
  void set_batch(const StepBatch& b) {
    cpu_->set_batch(b);
    gpu_->set_batch(b);
  }

  // The GPU compute dtype (activations, 2-D weights, KV pages) and the tolerance of its outputs.
  DType act() const { return GetParam(); }
  double tol() const { return GetParam() == DType::F32 ? kTolF32 : kTolBf16; }

};

TEST_P(CudaOps, EmbedAndGather) {
  const int64_t V = 37, H = 70;
  StepBatch b = batch({1, 6, 4}, {0, 3, 0}, {0, 1, 2}, 4, 16, int32_t(V));
  b.logit_rows = {10, 0, 4};
  set_batch(b);
  Pair table = make(act(), {V, H}, -1, 1), out = zeros(act(), {11, H}), sel = zeros(act(), {3, H});
  cpu_->embed(out.cpu, table.cpu);
  gpu_->embed(out.gpu, table.gpu);
  expect_close(out, 0, "embed");
  cpu_->gather_logit_rows(sel.cpu, out.cpu);
  gpu_->gather_logit_rows(sel.gpu, out.gpu);
  expect_close(sel, 0, "gather_logit_rows");
}

TEST_P(CudaOps, MatmulStridedWithBiasAndF32Output) {
  // Aligned rows (the GEMV path for M <= 8) and misaligned ones (cuBLAS for every M).
  for (bool aligned : {true, false})
    for (int64_t M : {1, 3, 5, 8, 33}) {
      const int64_t K = 72, N = 50, off = aligned ? 8 : 4, width = aligned ? K + 16 : K + 9;
      Pair xw = make(act(), {M, width}, -1, 1), W = make(act(), {N, K}, -0.2f, 0.2f);
      Pair bias = make(DType::F32, {N}, -0.5f, 0.5f), y = zeros(act(), {M, N + 3}), y32 = zeros(DType::F32, {M, N});
      Pair x = cols(xw, off, off + K), yv = cols(y, 0, N);
      const std::string what = std::string(aligned ? "aligned" : "misaligned") + ", M=" + std::to_string(M);
      expect_matmul_close(yv, x, W, bias, "matmul bf16 out, " + what);
      expect_matmul_close(y32, x, W, {}, "matmul f32 out, " + what);
    }
}

// Long K, few output rows (the shape of down_proj in decode), with N not a multiple of the rows per GEMV block and
// K not a multiple of its chunk.
TEST_P(CudaOps, MatmulLongK) {
  for (int64_t M : {1, 5}) {
    const int64_t K = 4104, N = 37;
    Pair x = make(act(), {M, K}, -1, 1), W = make(act(), {N, K}, -0.2f, 0.2f), y = zeros(act(), {M, N});
    Pair bias = make(DType::F32, {N}, -0.5f, 0.5f);
    expect_matmul_close(y, x, W, bias, "long-K matmul, M=" + std::to_string(M));
  }
}

// The decode shapes of the GEMV kernels (gemv.cu): K of down_proj (14336), out_proj (8192) and the 4096-wide
// projections, 1-8 rows, N odd and large enough that a block streams several rows per warp group.
TEST_P(CudaOps, MatmulDecodeShapes) {
  struct Shape { int64_t K, N; };
  for (const Shape& sh : {Shape{14336, 2053}, Shape{8192, 1031}, Shape{4096, 3001}}) {
    Pair W = make(act(), {sh.N, sh.K}, -0.05f, 0.05f);
    Pair bias = make(DType::F32, {sh.N}, -0.5f, 0.5f);
    for (int64_t M : {1, 2, 3, 4, 8}) {
      Pair x = make(act(), {M, sh.K}, -1, 1), y = zeros(act(), {M, sh.N}), y32 = zeros(DType::F32, {M, sh.N});
      const std::string what = "K=" + std::to_string(sh.K) + ", N=" + std::to_string(sh.N) + ", M=" + std::to_string(M);
      expect_matmul_close(y, x, W, bias, "decode matmul, " + what);
      expect_matmul_close(y32, x, W, {}, "decode matmul f32 out, " + what);
    }
  }
}

// gemv_mma.cu's ring of k-blocks in flight (BAMBA_CUDA_GEMV_DEPTH 2-4, read at each launch) changes when weights
// are loaded, never the order they are summed in: every depth gives depth 2's bits. 16-warp blocks (the default for
// grids of ≤ 2 blocks an SM, as all of these; BAMBA_CUDA_GEMV_WIDE=0: 8) split K among twice the warps, so their
// sums are another order: close to the CPU's, and the same bits at every depth. K long enough that a warp's
// k-blocks go round the deepest ring several times (14336: 28 a warp), a partial last k-block, fewer k-blocks than
// warps; fp32 and bf16 stores.
TEST_P(CudaOps, GemvDepthsGiveTheSameBits) {
  if (GetParam() != DType::BF16) GTEST_SKIP() << "the tensor-core GEMV takes bf16 activations only";
  struct Shape { int64_t K, N; };
  for (const Shape& sh : {Shape{14336, 2053}, Shape{4104, 19}, Shape{136, 37}})
    for (int64_t M : {1, 3, 8})
      for (DType yt : {DType::F32, DType::BF16}) {
        const std::string what = "K=" + std::to_string(sh.K) + ", N=" + std::to_string(sh.N) + ", M=" +
                                 std::to_string(M) + ", y " + std::string(dtype_name(yt));
        Pair W = make(act(), {sh.N, sh.K}, -0.05f, 0.05f), bias = make(DType::F32, {sh.N}, -0.5f, 0.5f);
        Pair x = make(act(), {M, sh.K}, -1, 1);
        std::vector<float> got[6];  // depth 2-4, 8 warps a block; the same with 16
        for (int v = 0; v < 6; ++v) {
          test::ScopedEnv depth("BAMBA_CUDA_GEMV_DEPTH", std::to_string(2 + v % 3).c_str());
          test::ScopedEnv wide("BAMBA_CUDA_GEMV_WIDE", v < 3 ? "0" : "1");
          Pair y = zeros(yt, {M, sh.N});
          gpu_->matmul(y.gpu, x.gpu, W.gpu, bias.gpu);
          got[v] = test::host(*gpu_, y.gpu);
          if (v % 3 == 0) {
            cpu_->matmul(y.cpu, x.cpu, W.cpu, bias.cpu);
            expect_close(y, tol(), std::string(v ? "16" : "8") + " warps, depth 2, " + what);
          }
        }
        for (int v = 1; v < 6; ++v)
          if (v != 3) {
            EXPECT_EQ(0, std::memcmp(got[v].data(), got[v / 3 * 3].data(), got[0].size() * sizeof(float)))
                << "depth " << 2 + v % 3 << (v < 3 ? ", 8 warps" : ", 16 warps") << " differs from depth 2, " << what;
          }
      }
}

// The fused decode ops (gemv_mma.cu on bf16; the composed default otherwise) against the CPU's composition of the
// unfused ops: 1-8 rows, K with a partial last 64-wide k-block (136, 200, 4104) and Bamba's widths, N not a multiple
// of the kernel's 16 rows, strided x and h, bias or none, the norm weight in fp32 and in bf16 (checkpoint vs dummy).
TEST_P(CudaOps, FusedDecodeOps) {
  // A second backend whose swiglu_matmul_residual folds SwiGLU into the GEMV (BAMBA_CUDA_FUSE_SWIGLU=1, read when a
  // backend is made); it computes on gpu_'s tensors (same device, its own stream).
  std::unique_ptr<Backend> folded_swiglu;
  {
    test::ScopedEnv env("BAMBA_CUDA_FUSE_SWIGLU", "1");
    folded_swiglu = make_backend("cuda", GetParam());
  }
  struct Shape { int64_t K, N; };
  for (const Shape& sh : {Shape{136, 37}, Shape{4096, 1031}, Shape{200, 2053}, Shape{4104, 19}})
    for (int64_t M : {1, 2, 3, 5, 8}) {
      const int64_t K = sh.K, N = sh.N;
      const std::string what = "K=" + std::to_string(K) + ", N=" + std::to_string(N) + ", M=" + std::to_string(M);
      Pair W = make(act(), {N, K}, -0.05f, 0.05f), bias = make(DType::F32, {N}, -0.5f, 0.5f);
      // y = rmsnorm(x) * w · Wᵀ (+ bias); x a column block of a wider row
      Pair xw = make(act(), {M, K + 24}, -2, 2), x = cols(xw, 8, 8 + K), scratch = zeros(act(), {M, K});
      for (DType wt : {DType::F32, DType::BF16}) {
        Pair nw = make(wt, {K}, 0.8f, 1.2f), y = zeros(act(), {M, N});
        const Pair b = wt == DType::F32 ? bias : Pair{};
        cpu_->rmsnorm_matmul(y.cpu, x.cpu, nw.cpu, 1e-5f, W.cpu, b.cpu, scratch.cpu);
        gpu_->rmsnorm_matmul(y.gpu, x.gpu, nw.gpu, 1e-5f, W.gpu, b.gpu, scratch.gpu);
        expect_close(y, tol(), "rmsnorm_matmul, " + std::string(dtype_name(wt)) + " norm weight, " + what);
      }
      // h += x · Wᵀ (+ bias), h a column block of a wider row
      Pair hw = make(act(), {M, N + 5}, -1, 1), h = cols(hw, 0, N), out = zeros(act(), {M, N});
      cpu_->matmul_residual(h.cpu, x.cpu, W.cpu, bias.cpu, out.cpu);
      gpu_->matmul_residual(h.gpu, x.gpu, W.gpu, bias.gpu, out.gpu);
      expect_close(hw, tol(), "matmul_residual, " + what);
      // h += swiglu(gate_up) · Wᵀ: SwiGLU as its own kernel (the default), then folded into the x load
      Pair gate_up = make(act(), {M, 2 * K}, -3, 3), a = zeros(act(), {M, K});
      cpu_->swiglu_matmul_residual(h.cpu, gate_up.cpu, W.cpu, {}, a.cpu, out.cpu);
      gpu_->swiglu_matmul_residual(h.gpu, gate_up.gpu, W.gpu, {}, a.gpu, out.gpu);
      expect_close(hw, tol(), "swiglu_matmul_residual, " + what);
      cpu_->swiglu_matmul_residual(h.cpu, gate_up.cpu, W.cpu, {}, a.cpu, out.cpu);
      gpu_->synchronize();  // the two backends have a stream each
      folded_swiglu->swiglu_matmul_residual(h.gpu, gate_up.gpu, W.gpu, {}, a.gpu, out.gpu);
      folded_swiglu->synchronize();
      expect_close(hw, tol(), "swiglu_matmul_residual, SwiGLU folded, " + what);
    }
}

// act = swiglu(x · Wᵀ + bias): against the CPU twin; on the GPU the same bits as the matmul and the SwiGLU kernel
// (what the default composes); and for bf16 steps of ≤ 8 rows done in the GEMV's epilogue, so its [M, 2F] scratch
// is never written. act is a column block of a wider row; F not a multiple of 8 (a block's outputs); M past 8
// takes the composition (cuBLAS, then the kernel).
TEST_P(CudaOps, MatmulSwigluInTheGemvEpilogue) {
  struct Shape { int64_t K, F; };
  for (const Shape& sh : {Shape{136, 37}, Shape{4096, 1031}, Shape{200, 7}})
    for (int64_t M : {1, 2, 3, 5, 8, 9, 20})
      for (bool with_bias : {false, true}) {
        const int64_t K = sh.K, F = sh.F, N = 2 * F;
        const std::string what = "K=" + std::to_string(K) + ", F=" + std::to_string(F) + ", M=" + std::to_string(M) +
                                 (with_bias ? ", bias" : "");
        Pair W = make(act(), {N, K}, -0.05f, 0.05f), x = make(act(), {M, K}, -2, 2);
        Pair bias = with_bias ? make(DType::F32, {N}, -0.5f, 0.5f) : Pair{};
        Pair aw = zeros(act(), {M, F + 6}), a = cols(aw, 3, 3 + F), gu = zeros(act(), {M, N});
        gpu_->fill(gu.gpu, 7.f);  // a sentinel: the epilogue path leaves the scratch alone
        cpu_->matmul_swiglu(a.cpu, x.cpu, W.cpu, bias.cpu, gu.cpu);
        gpu_->matmul_swiglu(a.gpu, x.gpu, W.gpu, bias.gpu, gu.gpu);
        expect_close(aw, tol(), "matmul_swiglu, " + what);  // the padding too: still zero on both
        const std::vector<float> scratch = test::host(*gpu_, gu.gpu);
        const bool untouched = std::all_of(scratch.begin(), scratch.end(), [](float v) { return v == 7.f; });
        EXPECT_EQ(untouched, GetParam() == DType::BF16 && M <= 8) << "which path ran, " << what;
        Pair gu2 = zeros(act(), {M, N}), a2 = zeros(act(), {M, F});
        gpu_->matmul(gu2.gpu, x.gpu, W.gpu, bias.gpu);
        gpu_->swiglu(a2.gpu, gu2.gpu);
        const std::vector<float> fused = test::host(*gpu_, a.gpu), composed = test::host(*gpu_, a2.gpu);
        EXPECT_EQ(0, std::memcmp(fused.data(), composed.data(), fused.size() * sizeof(float)))
            << "not the matmul and swiglu's bits, " << what;
      }
}

// Row lengths and strides that take the scalar kernels (130, odd strides) and the 16-byte-vector ones (multiples
// of 8 elements, partly filled last vectors per thread: 136, 5000; Bamba's 4096).
TEST_P(CudaOps, RmsnormAndFusedResidualAdd) {
  for (int64_t H : {130, 136, 4096, 5000}) {
    const int64_t M = 7;
    const std::string hs = ", H=" + std::to_string(H);
    Pair x = make(act(), {M, H}, -2, 2), h = make(act(), {M, H}, -2, 2), w = make(DType::F32, {H}, 0.8f, 1.2f);
    Pair out = zeros(act(), {M, H});
    cpu_->rmsnorm(out.cpu, x.cpu, w.cpu, 1e-5f);
    gpu_->rmsnorm(out.gpu, x.gpu, w.gpu, 1e-5f);
    expect_close(out, tol(), "rmsnorm" + hs);
    cpu_->add_rmsnorm(h.cpu, x.cpu, out.cpu, w.cpu, 1e-6f);
    gpu_->add_rmsnorm(h.gpu, x.gpu, out.gpu, w.gpu, 1e-6f);
    expect_close(h, tol(), "add_rmsnorm residual" + hs);
    expect_close(out, tol(), "add_rmsnorm out" + hs);
    cpu_->add(h.cpu, x.cpu);
    gpu_->add(h.gpu, x.gpu);
    expect_close(h, tol(), "add" + hs);
  }
}

// A decode step's few long groups (8,192 and 16,384 at 1-9 rows) take 1024-thread blocks (norm.cu).
TEST_P(CudaOps, GatedRmsnormFullAndGrouped) {
  for (int64_t pad : {5, 0}) {  // z strided at an odd offset (scalar kernel), then aligned (vector kernel)
    for (int64_t I : {96, 2048, 8192, 16384}) {
      for (int64_t M : {9, 1}) {
        if (M == 1 && I < 8192) continue;
        Pair yz = make(act(), {M, 2 * I + pad}, -2, 2), w = make(DType::F32, {I}, 0.8f, 1.2f), out = zeros(act(), {M, I});
        Pair y = cols(yz, 0, I), z = cols(yz, I + pad, 2 * I + pad);
        for (int64_t group : {I, I / 2, I / 4}) {
          cpu_->gated_rmsnorm(out.cpu, y.cpu, z.cpu, w.cpu, group, 1e-5f);
          gpu_->gated_rmsnorm(out.gpu, y.gpu, z.gpu, w.gpu, group, 1e-5f);
          expect_close(out, tol(), "gated_rmsnorm I=" + std::to_string(I) + " group " + std::to_string(group) +
                                       " pad " + std::to_string(pad) + " M " + std::to_string(M));
        }
      }
    }
  }
}

TEST_P(CudaOps, Swiglu) {
  for (int64_t F : {77, 1032}) {
    const int64_t M = 9;
    Pair gu = make(act(), {M, 2 * F}, -3, 3), out = zeros(act(), {M, F});
    cpu_->swiglu(out.cpu, gu.cpu);
    gpu_->swiglu(out.gpu, gu.gpu);
    expect_close(out, tol(), "swiglu F=" + std::to_string(F));
  }
}

// The elementwise ops of Bamba's relatives on strided rows (docs/family.md).
TEST_P(CudaOps, FamilyElementwiseOps) {
  for (int64_t M : {1, 9}) {
    const int64_t F = 77;
    Pair x = make(act(), {M, F + 5}, -3, 3), gu = make(act(), {M, 2 * F}, -3, 3), z = make(act(), {M, F}, -3, 3);
    Pair xs = cols(x, 3, 3 + F), out = zeros(act(), {M, F});
    cpu_->relu2(out.cpu, xs.cpu);
    gpu_->relu2(out.gpu, xs.gpu);
    expect_close(out, tol(), "relu2");
    cpu_->geglu(out.cpu, gu.cpu);
    gpu_->geglu(out.gpu, gu.gpu);
    expect_close(out, tol(), "geglu");
    cpu_->silu_gate(out.cpu, xs.cpu, z.cpu);
    gpu_->silu_gate(out.gpu, xs.gpu, z.gpu);
    expect_close(out, tol(), "silu_gate");
    cpu_->copy(out.cpu, xs.cpu);
    gpu_->copy(out.gpu, xs.gpu);
    expect_close(out, tol(), "copy");
    cpu_->scale(xs.cpu, 0.35f);
    gpu_->scale(xs.gpu, 0.35f);
    expect_close(x, tol(), "scale of a column slice (the other columns untouched)");
    Pair logits = make(DType::F32, {M, 33}, -5, 5);  // fp32 whatever the compute dtype
    cpu_->scale(logits.cpu, 0.25f);
    gpu_->scale(logits.gpu, 0.25f);
    expect_close(logits, kTolF32, "scale of fp32 logits");
  }
}

// Routing (both routers) and the grouped expert GEMMs, against the CPU twin: T = 1 (decode), 7, and 150 tokens
// (more rows per expert than one 64-row tile); odd H, F; SwiGLU and relu² experts.
TEST_P(CudaOps, MoeRoutingAndGroupedExperts) {
  struct Case { int64_t T, E, k, H, F; MoeRouting routing; int64_t n_group, topk_group; ExpertAct act; };
  for (const Case& cs : {Case{1, 4, 2, 48, 40, MoeRouting::SoftmaxTopK, 1, 1, ExpertAct::SwiGLU},
                         Case{7, 8, 3, 40, 24, MoeRouting::SigmoidGroup, 4, 2, ExpertAct::Relu2},
                         Case{150, 6, 2, 72, 56, MoeRouting::SoftmaxTopK, 1, 1, ExpertAct::SwiGLU},
                         Case{150, 8, 2, 64, 33, MoeRouting::SigmoidGroup, 1, 1, ExpertAct::Relu2},
                         // bf16 tensor-core path: 64-row tiles, several per expert, K (136) not a multiple of the
                         // 32-wide k slice, 40 SwiGLU features in a 64-feature column tile
                         Case{300, 8, 3, 136, 40, MoeRouting::SoftmaxTopK, 1, 1, ExpertAct::SwiGLU},
                         // 16-row tiles (few rows per expert, as in decode), relu², experts left empty
                         Case{33, 64, 4, 64, 24, MoeRouting::SigmoidGroup, 4, 2, ExpertAct::Relu2}}) {
    const int64_t T = cs.T, E = cs.E, k = cs.k, H = cs.H, F = cs.F, U = cs.act == ExpertAct::SwiGLU ? 2 * F : F;
    const MoeOpsConfig c{E, k, cs.routing, cs.n_group, cs.topk_group, true, 2.5f};
    Pair logits = make(DType::F32, {T, E}, -3, 3), bias = make(DType::F32, {E}, -0.3f, 0.3f);
    const Routed rt = route_both(logits, bias, c);
    const Pair &experts = rt.experts, &weights = rt.weights;
    EXPECT_EQ(rt.gpu_experts, rt.cpu_experts) << "experts chosen, T=" << T;
    expect_close(weights, kTolF32, "routing weights, T=" + std::to_string(T));

    Pair x = make(act(), {T, H}, -1, 1), up = make(act(), {E, U, H}, -0.3f, 0.3f), down = make(act(), {E, H, F}, -0.3f, 0.3f);
    Pair out = zeros(act(), {T, H});
    auto scratch = [&](Backend& be) {
      return MoeScratch{be.alloc(be.activation_dtype(), {T * k, U}), be.alloc(be.activation_dtype(), {T * k, F}),
                        be.alloc(be.activation_dtype(), {T * k, H}), be.alloc(DType::I32, {2 * T * k + 2 * E + 2})};
    };
    MoeScratch sc_cpu = scratch(*cpu_), sc_gpu = scratch(*gpu_);
    // Both from the CPU's routing (the GPU's is checked equal above).
    gpu_->from_host_f32(weights.gpu, host(*cpu_, weights.cpu).data());
    cpu_->moe_experts(out.cpu, x.cpu, up.cpu, down.cpu, experts.cpu, weights.cpu, cs.act, sc_cpu);
    gpu_->moe_experts(out.gpu, x.gpu, up.gpu, down.gpu, experts.gpu, weights.gpu, cs.act, sc_gpu);
    expect_close(out, tol(), "moe_experts, T=" + std::to_string(T) + ", E=" + std::to_string(E));
  }
}

// The router's choice equals the CPU twin's where a parallel argmax could differ: many equal scores (the lowest
// index wins), all -inf, +inf, and expert counts that are not multiples of the warp (E = 7, 100, 1000), with groups.
// (NaN logits are left out: the twin's std::partial_sort has no defined order for them.)
TEST_P(CudaOps, MoeRoutingTiesInfAndOddExpertCounts) {
  struct Case { int64_t E, k; MoeRouting routing; int64_t n_group, topk_group; };
  for (const Case& cs : {Case{7, 3, MoeRouting::SoftmaxTopK, 1, 1}, Case{100, 8, MoeRouting::SoftmaxTopK, 1, 1},
                         Case{100, 6, MoeRouting::SigmoidGroup, 4, 2}, Case{1000, 8, MoeRouting::SigmoidGroup, 40, 3},
                         Case{64, 6, MoeRouting::SigmoidGroup, 1, 1}}) {
    const int64_t T = 9, E = cs.E, k = cs.k;
    std::vector<float> v(size_t(T * E));
    for (auto& x : v) x = float(int(rng_() % 5) - 2);  // five values: ties everywhere
    for (int64_t e = 0; e < E; ++e) v[size_t(3 * E + e)] = -INFINITY;  // token 3: all -inf
    v[size_t(4 * E + E - 1)] = INFINITY;               // token 4: +inf last
    Pair logits{cpu_->alloc(DType::F32, {T, E}), gpu_->alloc(DType::F32, {T, E})};
    cpu_->from_host_f32(logits.cpu, v.data());
    gpu_->from_host_f32(logits.gpu, v.data());
    Pair bias = make(DType::F32, {E}, -0.3f, 0.3f);
    const MoeOpsConfig c{E, k, cs.routing, cs.n_group, cs.topk_group, true, 2.5f};
    const Routed rt = route_both(logits, bias, c);
    EXPECT_EQ(rt.gpu_experts, rt.cpu_experts) << "experts chosen, E=" << E << ", k=" << k;
    const std::vector<float> wc = host(*cpu_, rt.weights.cpu), wg = host(*gpu_, rt.weights.gpu);
    for (size_t i = 0; i < wc.size(); ++i)
      if (std::isfinite(wc[i])) EXPECT_NEAR(wg[i], wc[i], 1e-6f * (1 + std::fabs(wc[i]))) << "weight " << i << ", E=" << E;
      else EXPECT_EQ(std::isnan(wg[i]), std::isnan(wc[i])) << "weight " << i << ", E=" << E;
  }
}

// Channel counts and strides for the scalar kernel (40 channels at an odd offset) and the 16-byte-vector one
// (48 aligned channels); runs of 8 tokens that cross sequence boundaries and continue from cached windows.
TEST_P(CudaOps, Conv1dPrefillDecodeAndContinuation) {
  struct Layout { int64_t CD, offset, extra, K; };
  for (const Layout& lay : {Layout{40, 3, 7, 4}, Layout{48, 8, 16, 4}, Layout{48, 8, 16, 6}}) {
  const int64_t CD = lay.CD, K = lay.K, n_slots = 6;
  Pair w = make(act(), {CD, K}, -0.5f, 0.5f), bias = make(DType::F32, {CD}, -0.2f, 0.2f);
  Pair state = make(DType::F32, {n_slots, K - 1, CD}, -1, 1);
  struct Case { std::vector<int32_t> lens, pasts, slots; };
  // The second and third cases are decode steps (one token per sequence: the one-kernel path), the third with a
  // fresh sequence among continuing ones.
  for (const Case& c : {Case{{1, 5, 17, 2}, {0, 4, 0, 9}, {4, 0, 2, 5}}, Case{{1, 1, 1}, {3, 1, 7}, {1, 3, 0}},
                        Case{{1, 1, 1}, {0, 5, 2}, {2, 5, 4}}, Case{{70}, {2}, {3}},
                        Case{{2, 1, 3, 9, 1}, {1, 0, 2, 0, 5}, {0, 1, 2, 3, 4}}}) {
    StepBatch b = batch(c.lens, c.pasts, c.slots, 4, 64, 10);
    set_batch(b);
    const int64_t T = b.n_tokens();
    const std::string what = ", T=" + std::to_string(T) + ", CD=" + std::to_string(CD) + ", K=" + std::to_string(K);
    Pair xw = make(act(), {T, CD + lay.extra}, -2, 2), out = zeros(act(), {T, CD});
    Pair x = cols(xw, lay.offset, lay.offset + CD);
    for (Pair bb : {bias, Pair{}}) {
      auto s0 = host(*cpu_, state.cpu);  // both runs start from the same state
      cpu_->conv1d_silu(out.cpu, x.cpu, w.cpu, bb.cpu, state.cpu);
      gpu_->conv1d_silu(out.gpu, x.gpu, w.gpu, bb.gpu, state.gpu);
      expect_close(out, tol(), "conv1d out" + what);
      expect_close(state, 1e-6, "conv1d state" + what);
      cpu_->from_host_f32(state.cpu, s0.data());
      gpu_->from_host_f32(state.gpu, s0.data());
    }
  }
  }
}

TEST_P(CudaOps, SsdScanAndDecodeStep) {
  // n_groups 2, odd head_dim, d_state not a multiple of 32; sequences longer than the GPU's scan chunk (64 for
  // these T) and not multiples of it, fresh and continuing; then a decode step over several slots.
  const int nh = 6, P = 10, G = 2, N = 20, I = nh * P, CD = I + 2 * G * N, n_slots = 7;
  MambaOpsConfig c{nh, P, G, N, 4, 16, 0.f, INFINITY};
  Pair A_log = make(DType::F32, {nh}, 0.f, 1.5f), D = make(DType::F32, {nh}, 0.5f, 1.5f);
  Pair dt_bias = make(DType::F32, {nh}, -1.f, 0.5f);
  // The SSM state in fp32, then in bf16 (HybridCache's option): rounded once per call, tolerance kTolBf16.
  for (DType state_t : {DType::F32, DType::BF16}) {
  Pair state = make(state_t, {n_slots, nh, P, N}, -1, 1);
  const double state_tol = state_t == DType::BF16 ? kTolBf16 : kTolF32State;
  const std::string sname = state_t == DType::BF16 ? " (bf16 state)" : "";
  struct Case { std::vector<int32_t> lens, pasts, slots; float dt_max; };
  for (const Case& k : {Case{{1, 37, 200, 5}, {0, 3, 0, 11}, {4, 0, 2, 6}, INFINITY},
                        Case{{1, 1, 1, 1, 1}, {3, 1, 7, 2, 9}, {1, 3, 0, 5, 6}, INFINITY},
                        Case{{130, 65, 64, 1}, {0, 5, 0, 0}, {2, 3, 5, 1}, 0.5f},
                        Case{{1}, {0}, {3}, INFINITY}}) {
    c.time_step_max = k.dt_max;
    StepBatch b = batch(k.lens, k.pasts, k.slots, 4, 256, 10);
    set_batch(b);
    const int64_t T = b.n_tokens();
    Pair in = make(act(), {T, CD + nh + 3}, -1, 1), y = zeros(act(), {T, I});
    Pair xBC = cols(in, 0, CD), dt = cols(in, CD + 3, CD + 3 + nh);
    cpu_->ssd(y.cpu, xBC.cpu, dt.cpu, A_log.cpu, D.cpu, dt_bias.cpu, state.cpu, c);
    gpu_->ssd(y.gpu, xBC.gpu, dt.gpu, A_log.gpu, D.gpu, dt_bias.gpu, state.gpu, c);
    expect_close(y, state_t == DType::BF16 ? kTolBf16 : tol(), "ssd y, T=" + std::to_string(T) + sname);
    expect_close(state, state_tol, "ssd state, T=" + std::to_string(T) + sname);
  }
  }
}

// Decode steps as the model runs them, conv then SSD step, where the step reads the state before its pdl_wait
// (the default after a conv: ssd_step.cu) — the state's writer, the step before, is then just two launches back,
// the closest that reading may be. Against the CPU twin after every step, and bit for bit against a backend that
// reads it after the wait (BAMBA_CUDA_SSD_EARLY_STATE=0). fp32 and bf16 state; a fresh sequence among three.
TEST_P(CudaOps, SsdDecodeStepsReadTheStateEarly) {
  std::unique_ptr<Backend> late;
  {
    test::ScopedEnv env("BAMBA_CUDA_SSD_EARLY_STATE", "0");
    late = make_backend("cuda", GetParam());
  }
  const int nh = 8, P = 24, G = 2, N = 64, I = nh * P, CD = I + 2 * G * N, K = 4, n_slots = 6;
  MambaOpsConfig c{nh, P, G, N, K, 16, 0.f, INFINITY};
  auto upload = [](Backend& be, DType t, std::initializer_list<int64_t> shape, const std::vector<float>& v) {
    Tensor x = be.alloc(t, shape);
    be.from_host_f32(x, v.data());
    return x;
  };
  for (DType state_t : {DType::F32, DType::BF16}) {
    Backend* bes[3] = {cpu_.get(), gpu_.get(), late.get()};
    auto dt_of = [&](int i, DType gpu_t) { return i == 0 ? DType::F32 : gpu_t; };
    const std::vector<float> A_log = random(nh, 0.f, 1.5f, DType::F32), D = random(nh, 0.5f, 1.5f, DType::F32),
                             dt_bias = random(nh, -1.f, 0.5f, DType::F32), w = random(size_t(CD) * K, -0.5f, 0.5f, act()),
                             conv0 = random(size_t(n_slots) * (K - 1) * CD, -1, 1, DType::F32),
                             ssm0 = random(size_t(n_slots) * nh * P * N, -1, 1, state_t);
    struct On { Tensor A_log, D, dt_bias, w, conv, ssm, x, xBC, dt, y; };
    std::vector<On> on;
    for (int i = 0; i < 3; ++i) {
      Backend& be = *bes[i];
      On o;
      o.A_log = upload(be, DType::F32, {nh}, A_log), o.D = upload(be, DType::F32, {nh}, D);
      o.dt_bias = upload(be, DType::F32, {nh}, dt_bias), o.w = upload(be, dt_of(i, act()), {CD, K}, w);
      o.conv = upload(be, DType::F32, {n_slots, K - 1, CD}, conv0);
      o.ssm = upload(be, dt_of(i, state_t), {n_slots, nh, P, N}, ssm0);
      on.push_back(o);
    }
    const std::vector<int32_t> slots = {2, 0, 5};
    for (int step = 0; step < 6; ++step) {
      const std::vector<int32_t> pasts = {7 + step, step == 0 ? 0 : 3 + step, 1 + step};  // sequence 1 fresh at step 0
      StepBatch b = batch({1, 1, 1}, pasts, slots, 4, 64, 10);
      const std::vector<float> x = random(size_t(3) * CD, -2, 2, act()), dt = random(size_t(3) * nh, -1, 1, act());
      std::vector<std::vector<float>> ys, states;
      for (int i = 0; i < 3; ++i) {
        Backend& be = *bes[i];
        On& o = on[size_t(i)];
        be.set_batch(b);
        Tensor xin = upload(be, dt_of(i, act()), {3, CD}, x), dtin = upload(be, dt_of(i, act()), {3, nh}, dt);
        Tensor xBC = be.alloc(dt_of(i, act()), {3, CD}), y = be.alloc(dt_of(i, act()), {3, I});
        be.conv1d_silu(xBC, xin, o.w, {}, o.conv);
        be.ssd(y, xBC, dtin, o.A_log, o.D, o.dt_bias, o.ssm, c);
        ys.push_back(host(be, y));
        states.push_back(host(be, o.ssm));
        for (Tensor t : {xin, dtin, xBC, y}) be.release(t);
      }
      const std::string what = "step " + std::to_string(step) + (state_t == DType::BF16 ? ", bf16 state" : "");
      EXPECT_LE(rel_l2(ys[1], ys[0]), state_t == DType::BF16 ? kTolBf16 : tol()) << "y, " << what;
      EXPECT_LE(rel_l2(states[1], states[0]), state_t == DType::BF16 ? kTolBf16 : kTolF32State) << "state, " << what;
      EXPECT_EQ(ys[1], ys[2]) << "y differs from the late read, " << what;
      EXPECT_EQ(states[1], states[2]) << "state differs from the late read, " << what;
    }
  }
}

// head_dim 40 takes the CUDA-core kernel; 64 and 128 (bf16) the tensor-core prefill kernel, whose 64-row query
// and key tiles are crossed here by prompts of 1..300 tokens after 0..100 cached ones (decode rows in the same
// batch included), with GQA groups of 2 and 4.
struct AttnCase {
  AttentionOpsConfig c;
  std::vector<std::vector<int32_t>> lens, pasts;
};
TEST_P(CudaOps, AttentionPagedGqaPartialRope) {
  const std::vector<AttnCase> cases = {
      {{6, 2, 40, 20, 4, 10000.f, 1.f / std::sqrt(40.f), DType::F32},
       {{1, 9, 30}, {1, 1, 1, 1}, {70}},
       {{5, 0, 13}, {0, 7, 22, 3}, {0}}},
      {{8, 2, 128, 64, 16, 10000.f, 1.f / std::sqrt(128.f), DType::F32},
       {{1, 150, 64, 300}, {200}, {65, 1, 127}},
       {{0, 37, 100, 0}, {0}, {64, 90, 1}}},
      {{4, 2, 64, 64, 16, 500000.f, 0.125f, DType::F32}, {{129, 3}, {1, 1}}, {{5, 60}, {40, 0}}},
      // Llama 3 frequency scaling (all three bands at head_dim 16, positions past original_max 64)
      {{4, 2, 16, 16, 16, 10000.f, 0.25f, DType::F32, 8.f, 1.f, 4.f, 64}, {{1, 70}, {33}}, {{0, 5}, {100}}},
      // NoPE (GraniteMoeHybrid, Nemotron-H) with head_dim 24 != H / nq and a scale that is not head_dim^-0.5
      {{4, 2, 24, 0, 16, 10000.f, 0.1f, DType::F32}, {{17, 1}, {40}}, {{0, 40}, {3}}},
  };
  for (const AttnCase& ac : cases) {
  const AttentionOpsConfig& c = ac.c;
  const int64_t nb = 96, qkv_w = (c.n_heads + 2 * c.n_kv_heads) * c.head_dim, o_w = c.n_heads * c.head_dim;
  Pair kp = make(act(), {nb, c.block_size, c.n_kv_heads, c.head_dim}, -1, 1);
  Pair vp = make(act(), {nb, c.block_size, c.n_kv_heads, c.head_dim}, -1, 1);
  struct Case { std::vector<int32_t> lens, pasts; };
  std::vector<Case> runs;
  for (size_t i = 0; i < ac.lens.size(); ++i) runs.push_back({ac.lens[i], ac.pasts[i]});
  for (const Case& k : runs) {
    std::vector<int32_t> slots(k.lens.size());
    std::iota(slots.begin(), slots.end(), 0);
    StepBatch b = batch(k.lens, k.pasts, slots, int32_t(c.block_size), int32_t(nb), 10);
    set_batch(b);
    const int64_t T = b.n_tokens();
    Pair qkvw = make(act(), {T, qkv_w + 6}, -2, 2), out = zeros(act(), {T, o_w});
    Pair qkv = cols(qkvw, 0, qkv_w);
    cpu_->attention(out.cpu, qkv.cpu, kp.cpu, vp.cpu, c);
    gpu_->attention(out.gpu, qkv.gpu, kp.gpu, vp.gpu, c);
    expect_close(qkv, tol(), "rope'd qkv, T=" + std::to_string(T));
    expect_close(kp, tol(), "k pages, T=" + std::to_string(T));
    expect_close(vp, tol(), "v pages, T=" + std::to_string(T));
    expect_close(out, tol(), "attention out, T=" + std::to_string(T) + ", head_dim " + std::to_string(c.head_dim));
  }
  }
}

// Decode steps (one token per sequence) over long contexts: bf16 with head_dim 64/128 takes the split-K kernel
// (splits of 256-512 keys here: sequences needing 1, 2, 3, 4 and 20 splits in one step, lengths on and one past a
// split boundary, GQA groups of 3, 8 and 16); fp32 the CUDA-core kernel over the same batches. The NoPE cases
// give both backends bitwise the same q and keys (RoPE'd q and k are rounded to bf16 on the GPU only, which with
// large queries makes the new token's own key differ by more than the kernel's error), with queries of scale 4:
// peaked softmaxes, so that a wrong max or a lost split shows; the RoPE case uses unit queries.
TEST_P(CudaOps, DecodeAttentionSplitOverKeys) {
  struct Case { AttentionOpsConfig c; std::vector<std::vector<int32_t>> pasts; float q_amp; };
  const std::vector<Case> cases = {
      {{12, 4, 128, 0, 16, 10000.f, 0.0078125f, DType::F32}, {{3000, 0, 777, 5000, 64, 255, 256}}, 4.f},
      {{8, 1, 64, 0, 32, 10000.f, 0.125f, DType::F32}, {{1500, 200}}, 4.f},
      {{16, 1, 128, 0, 16, 500000.f, 1.f / std::sqrt(128.f), DType::F32}, {{100}, {2047, 9, 600}}, 4.f},
      {{8, 2, 128, 64, 16, 500000.f, 0.25f, DType::F32}, {{1200, 33, 511}}, 1.f},
  };
  for (const Case& cs : cases) {
    const AttentionOpsConfig& c = cs.c;
    const int64_t nb = 640, qkv_w = (c.n_heads + 2 * c.n_kv_heads) * c.head_dim, o_w = c.n_heads * c.head_dim;
    Pair kp = make(act(), {nb, c.block_size, c.n_kv_heads, c.head_dim}, -1, 1);
    Pair vp = make(act(), {nb, c.block_size, c.n_kv_heads, c.head_dim}, -1, 1);
    for (const std::vector<int32_t>& pasts : cs.pasts) {
      std::vector<int32_t> slots(pasts.size()), lens(pasts.size(), 1);
      std::iota(slots.begin(), slots.end(), 0);
      StepBatch b = batch(lens, pasts, slots, int32_t(c.block_size), int32_t(nb), 10);
      set_batch(b);
      const int64_t T = b.n_tokens();
      Pair qkvw = make(act(), {T, qkv_w + 6}, -cs.q_amp, cs.q_amp), out = zeros(act(), {T, o_w});
      Pair qkv = cols(qkvw, 0, qkv_w);
      cpu_->attention(out.cpu, qkv.cpu, kp.cpu, vp.cpu, c);
      gpu_->attention(out.gpu, qkv.gpu, kp.gpu, vp.gpu, c);
      const std::string what = ", S=" + std::to_string(T) + ", head_dim " + std::to_string(c.head_dim) + ", longest " +
                               std::to_string(*std::max_element(pasts.begin(), pasts.end()) + 1);
      expect_close(kp, tol(), "k pages" + what);
      expect_close(out, tol(), "decode attention out" + what);
      // Per sequence too: a short sequence's error would vanish in the L2 of the long ones.
      auto g = host(*gpu_, out.gpu), r = host(*cpu_, out.cpu);
      double worst = 0;
      for (int64_t t = 0; t < T; ++t) {
        std::vector<float> gt(g.begin() + t * o_w, g.begin() + (t + 1) * o_w), rt(r.begin() + t * o_w, r.begin() + (t + 1) * o_w);
        const double e = rel_l2(gt, rt);
        worst = std::max(worst, e);
        EXPECT_LE(e, tol()) << "decode attention out of sequence " << t << what;
      }
      std::printf("  decode attention%s: worst sequence's relative L2 %.5f\n", what.c_str(), worst);
    }
  }
}

TEST_P(CudaOps, SampleGreedyExactOthersAgree) {
  const int64_t R = 48, V = 1001;
  Pair lg = make(DType::F32, {R, V}, -4, 4);
  std::vector<SamplingParams> ps(static_cast<size_t>(R));
  for (int64_t r = 0; r < R; ++r) {
    SamplingParams& p = ps[size_t(r)];
    p.seed = uint64_t(r) * 7919 + 1;
    switch (r % 6) {
      case 0: break;                                         // greedy
      case 1: p.temperature = 1.f; break;                    // full softmax
      case 2: p.temperature = 0.7f; p.top_k = 20; break;
      case 3: p.temperature = 1.3f; p.top_p = 0.9f; break;
      case 4: p.temperature = 1.f; p.top_k = 50; p.top_p = 0.5f; break;
      case 5: p.temperature = 0.5f; p.top_k = 1; break;      // greedy by top_k
    }
  }
  std::vector<int32_t> a(static_cast<size_t>(R)), r(static_cast<size_t>(R));
  gpu_->sample(lg.gpu, ps, a.data());
  cpu_->sample(lg.cpu, ps, r.data());
  auto logits = host(*cpu_, lg.cpu);
  int same = 0;
  for (int64_t i = 0; i < R; ++i) {
    ASSERT_GE(a[size_t(i)], 0);
    ASSERT_LT(a[size_t(i)], V);
    if (ps[size_t(i)].temperature <= 0.f || ps[size_t(i)].top_k == 1) {
      EXPECT_EQ(a[size_t(i)], r[size_t(i)]) << "greedy row " << i;
    }
    if (ps[size_t(i)].top_k > 1) {  // the pick is inside the top k
      const float* row = logits.data() + i * V;
      int64_t above = std::count_if(row, row + V, [&](float v) { return v > row[a[size_t(i)]]; });
      EXPECT_LT(above, ps[size_t(i)].top_k) << "row " << i;
    }
    same += a[size_t(i)] == r[size_t(i)];
  }
  EXPECT_GE(same, R - 2) << "GPU and CPU sampling disagree on too many rows";
}

// Scoring: log-softmax at given (row, target) pairs, rows repeated and strided, and the first argmax; then
// copy_slice of a state slot and a KV page (what HybridCache::fork does).
TEST_P(CudaOps, TokenLogprobsAndCopySlice) {
  const int64_t R = 13, V = 50257;
  Pair wide = make(DType::F32, {R, V + 5}, -6, 6);
  Pair lg = cols(wide, 2, 2 + V);  // strided rows
  std::vector<int32_t> rows = {0, 3, 3, 3, 12, 7, 0}, targets = {5, 0, 17, int32_t(V - 1), 42, 9, 5};
  std::vector<float> lg_gpu(rows.size()), lg_cpu(rows.size());
  std::vector<int32_t> am_gpu(rows.size()), am_cpu(rows.size());
  gpu_->token_logprobs(lg.gpu, rows, targets, lg_gpu.data(), am_gpu.data());
  cpu_->token_logprobs(lg.cpu, rows, targets, lg_cpu.data(), am_cpu.data());
  for (size_t i = 0; i < rows.size(); ++i) {
    EXPECT_NEAR(lg_gpu[i], lg_cpu[i], 1e-4 * (1 + std::abs(lg_cpu[i]))) << "pair " << i;
    EXPECT_EQ(am_gpu[i], am_cpu[i]) << "pair " << i;
  }
  EXPECT_THROW(gpu_->token_logprobs(lg.gpu, std::vector<int32_t>{int32_t(R)}, std::vector<int32_t>{0}, lg_gpu.data(),
                                    am_gpu.data()),
               Error);
  Pair state = make(DType::F32, {5, 3, 7, 11}, -1, 1);
  Pair pages = make(act(), {9, 16, 2, 33}, -1, 1);
  for (Backend* be : {cpu_.get(), gpu_.get()}) {
    be->copy_slice(be == cpu_.get() ? state.cpu : state.gpu, 1, 4);
    be->copy_slice(be == cpu_.get() ? pages.cpu : pages.gpu, 8, 0);
  }
  auto s = host(*gpu_, state.gpu), p = host(*gpu_, pages.gpu);
  const size_t sl = 3 * 7 * 11, pg = 16 * 2 * 33;
  EXPECT_TRUE(std::equal(s.begin() + 4 * sl, s.begin() + 5 * sl, s.begin() + sl));
  EXPECT_TRUE(std::equal(p.begin(), p.begin() + pg, p.begin() + 8 * pg));
  expect_close(state, 0, "copy_slice state");
  expect_close(pages, 0, "copy_slice pages");
}

// Asking for more than the card has is an Error with the numbers, and the backend stays usable afterwards.
TEST_P(CudaOps, OutOfMemoryIsAClearError) {
  std::string msg;
  try {
    gpu_->alloc(act(), {int64_t(1) << 40, 4});  // 4-8 TiB
  } catch (const Error& e) {
    msg = e.what();
  }
  for (const char* part : {"out of GPU memory", "needs", "MiB free of"})
    EXPECT_NE(msg.find(part), std::string::npos) << "message: " << msg;
  Pair x = make(act(), {3, 8}, -1, 1);
  expect_close(x, 0.0, "a tensor allocated after the failed one");
}

INSTANTIATE_TEST_SUITE_P(Dtypes, CudaOps, ::testing::Values(DType::BF16, DType::F32),
                         [](const auto& info) { return std::string(info.param == DType::F32 ? "fp32" : "bf16"); });

}  // namespace
}  // namespace bamba
