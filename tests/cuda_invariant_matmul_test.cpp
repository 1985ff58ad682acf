// The CUDA matmul of batch invariance (backend/cuda/invariant_matmul.cu, on under set_batch_invariant) against
// its CPU twin on odd sizes, for both GPU compute dtypes and both output types (activations, fp32 logits), with a
// bias and strided rows; and the property it exists for: a row's bits do not change with the rows beside it
// (M = 1 .. 9, the old GEMV range, and M up to 300, several tiles). Skips itself, visibly, without a GPU.
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <random>

#include "backend/backend.h"
#include "core/dtype.h"
#include "test_util.h"

namespace bamba {
namespace {

class CudaInvariantMatmul : public ::testing::TestWithParam<DType> {
 protected:
  void SetUp() override {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA GPU: the CUDA invariant-matmul tests need one";
    cpu_ = make_cpu_backend();
    gpu_ = make_backend("cuda", GetParam());
    gpu_->set_batch_invariant(256);
  }
  // Random values, rounded to the GPU dtype, on both backends.
  std::pair<Tensor, Tensor> make(DType t, std::initializer_list<int64_t> shape) {
    Tensor c = cpu_->alloc(DType::F32, shape), g = gpu_->alloc(t, shape);
    std::vector<float> v(static_cast<size_t>(c.numel()));
    std::uniform_real_distribution<float> d(-1.f, 1.f);
    for (float& x : v) x = t == DType::BF16 ? bf16_to_f32(f32_to_bf16(d(rng_))) : d(rng_);
    cpu_->from_host_f32(c, v.data());
    gpu_->from_host_f32(g, v.data());
    return {c, g};
  }
  std::vector<float> host(Backend& be, Tensor t) {
    std::vector<float> v(static_cast<size_t>(t.rows() * t.shape[1]));
    for (int64_t r = 0; r < t.rows(); ++r) {  // row by row: t may be a strided view
      std::vector<float> row(static_cast<size_t>(t.shape[1]));
      be.to_host_f32(t.slice_rows(r, r + 1), row.data());
      std::copy(row.begin(), row.end(), v.begin() + r * t.shape[1]);
    }
    return v;
  }
  std::unique_ptr<Backend> cpu_, gpu_;
  std::mt19937 rng_{11};
};

TEST_P(CudaInvariantMatmul, MatchesTheCpuAndRowsDoNotDependOnM) {
  const DType t = GetParam();
  // K >= 1024 splits K over four warp groups; N > 8192 takes 64-column tiles. x is a strided view (row stride K + 8: 16-byte loads where K % 8 == 0;
  // K + 3: the element-wise loads).
  for (auto [M, N, K] : {std::tuple{67, 37, 131}, {1, 300, 64}, {130, 257, 1000}, {5, 9, 24}, {300, 129, 72},
                         {70, 200, 2000}, {3, 64, 4104}, {9, 65, 1027}, {2, 8200, 64}, {5, 9000, 1100}}) {
    for (bool f32_out : {false, true}) {
      if (t == DType::F32 && !f32_out) continue;  // fp32 compute: the activations are fp32 already
      const DType yt = f32_out ? DType::F32 : t;
      auto [xc, xg] = make(t, {M, K + (K % 8 ? 3 : 8)});  // strided rows: x is a column slice
      auto [wc, wg] = make(t, {N, K});
      auto [bc, bg] = make(DType::F32, {N});
      Tensor x_c = xc.slice_cols(0, K), x_g = xg.slice_cols(0, K);
      Tensor yc = cpu_->alloc(DType::F32, {M, N}), yg = gpu_->alloc(yt, {M, N});
      cpu_->matmul(yc, x_c, wc, bc);
      gpu_->matmul(yg, x_g, wg, bg);
      const std::vector<float> got = host(*gpu_, yg), want = host(*cpu_, yc);
      const double tol = t == DType::BF16 && !f32_out ? test::kTolBf16 : 1e-5;
      EXPECT_LE(test::rel_l2(got, want), tol) << M << "x" << N << "x" << K << (f32_out ? " fp32 out" : "");
      // The same rows in smaller batches: the first m rows for m = 1 .. 9, then every 7th row alone.
      for (int64_t m = 1; m <= std::min<int64_t>(M, 9); ++m) {
        Tensor ys = gpu_->alloc(yt, {m, N});
        gpu_->matmul(ys, x_g.slice_rows(0, m), wg, bg);
        const std::vector<float> part = host(*gpu_, ys);
        for (int64_t i = 0; i < m * N; ++i)
          ASSERT_EQ(std::bit_cast<uint32_t>(part[size_t(i)]), std::bit_cast<uint32_t>(got[size_t(i)]))
              << M << "x" << N << "x" << K << ": row " << i / N << " col " << i % N << " with M = " << m;
        gpu_->release(ys);
      }
      for (int64_t r = 0; r < M; r += 7) {
        Tensor ys = gpu_->alloc(yt, {1, N});
        gpu_->matmul(ys, x_g.slice_rows(r, r + 1), wg, bg);
        const std::vector<float> part = host(*gpu_, ys);
        for (int64_t j = 0; j < N; ++j)
          ASSERT_EQ(std::bit_cast<uint32_t>(part[size_t(j)]), std::bit_cast<uint32_t>(got[size_t(r * N + j)]))
              << M << "x" << N << "x" << K << ": row " << r << " alone, col " << j;
        gpu_->release(ys);
      }
      for (Tensor g : {xg, wg, bg, yg}) gpu_->release(g);
      for (Tensor c : {xc, wc, bc, yc}) cpu_->release(c);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Dtypes, CudaInvariantMatmul, ::testing::Values(DType::BF16, DType::F32),
                         [](const auto& info) { return info.param == DType::BF16 ? "bf16" : "fp32"; });

}  // namespace
}  // namespace bamba
