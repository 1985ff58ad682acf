// The fixture of the CUDA op tests (cuda_ops_test.cpp, cuda_fp8_test.cpp): a CPU backend, the fp32 twin, beside
// a CUDA backend of the test's compute dtype (the parameter), random inputs rounded to that dtype so that both
// backends see the same numbers, and a visible skip, saying why, where there is no GPU.
#pragma once
#include <gtest/gtest.h>

#include <memory>
#include <random>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "core/dtype.h"

namespace bamba::test {

class CudaTwinTest : public ::testing::TestWithParam<DType> {
 protected:
  explicit CudaTwinTest(std::string what, uint32_t seed) : what_(std::move(what)), rng_(seed) {}
  void SetUp() override {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA GPU: the " << what_ << " need one (this build "
#ifdef BAMBA_HAVE_CUDA
                                                  "has CUDA support)";
#else
                                                  "was built without CUDA)";
#endif
    cpu_ = make_cpu_backend();
    gpu_ = make_backend("cuda", GetParam());
  }
  // n values uniform in [lo, hi), rounded to bf16 when gpu_t is BF16 (and round is set).
  std::vector<float> random(size_t n, float lo, float hi, DType gpu_t, bool round = true) {
    std::uniform_real_distribution<float> d(lo, hi);
    std::vector<float> v(n);
    for (auto& x : v) {
      x = d(rng_);
      if (round && gpu_t == DType::BF16) x = bf16_to_f32(f32_to_bf16(x));
    }
    return v;
  }

  std::string what_;  // "CUDA op tests": the skip message's subject
  std::mt19937 rng_;
  std::unique_ptr<Backend> cpu_, gpu_;
};

}  // namespace bamba::test
