// StepBatch state slot -1 (a fresh sequence whose state after the step is not kept: the training step's
// sequences, step_batch.h): conv1d_silu and ssd give the same outputs, bit for bit, as with a slot of its own, write
// no slot, and leave the slotted sequences beside them unchanged — on the CPU and on the GPU (every path of the
// CUDA scan: one kernel a sequence, the chunked forms, the decode step). The GPU cases skip without one.
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "core/error.h"
#include "test_util.h"

namespace bamba {
namespace {

using test::host;

struct Case {
  std::string name;
  std::vector<int32_t> lens, pasts;
};

Tensor filled(Backend& be, DType t, std::initializer_list<int64_t> shape, std::mt19937& rng) {
  Tensor x = be.alloc(t, shape);
  std::vector<float> v(size_t(x.numel()));
  std::uniform_real_distribution<float> d(-1.f, 1.f);
  for (float& e : v) e = d(rng);
  be.from_host_f32(x, v.data());
  return x;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// Runs `cs`'s step twice on `be`: every sequence with a slot (fresh ones in slots 4.. of their own), then the
// fresh ones with slot -1. Same outputs; the continuing sequences' slots end the same; slots 4.. untouched.
void check_no_slot(Backend& be, DType act, const Case& cs) {
  const int nh = 4, P = 64, G = 1, N = 128, I = nh * P, CD = I + 2 * G * N, K = 4, n_slots = 8;
  const MambaOpsConfig c{nh, P, G, N, K, 256, 0.f, INFINITY};
  std::mt19937 rng(5);
  StepBatch with, without;
  for (size_t s = 0; s < cs.lens.size(); ++s) {
    const std::vector<int32_t> toks(size_t(cs.lens[s]), 1);
    const bool fresh = cs.pasts[s] == 0;
    with.add(toks, cs.pasts[s], fresh ? int32_t(4 + s) : int32_t(s), {});
    without.add(toks, cs.pasts[s], fresh ? -1 : int32_t(s), {});
  }
  const int64_t T = with.n_tokens();
  Tensor xBC = filled(be, act, {T, CD}, rng), dt = filled(be, act, {T, nh}, rng);
  Tensor w = filled(be, act, {CD, K}, rng), bias = filled(be, DType::F32, {CD}, rng);
  Tensor A_log = filled(be, DType::F32, {nh}, rng), D = filled(be, DType::F32, {nh}, rng);
  Tensor dt_bias = filled(be, DType::F32, {nh}, rng);
  Tensor conv0 = filled(be, DType::F32, {n_slots, K - 1, CD}, rng), ssm0 = filled(be, DType::F32, {n_slots, nh, P, N}, rng);
  const std::vector<float> conv_start = host(be, conv0), ssm_start = host(be, ssm0);
  struct Out { std::vector<float> conv_out, y, conv_state, ssm_state; };
  auto run = [&](const StepBatch& b) {
    Tensor conv_out = be.alloc(act, {T, CD}), y = be.alloc(act, {T, I});
    be.from_host_f32(conv0, conv_start.data());
    be.from_host_f32(ssm0, ssm_start.data());
    be.set_batch(b);
    be.conv1d_silu(conv_out, xBC, w, bias, conv0);
    be.ssd(y, conv_out, dt, A_log, D, dt_bias, ssm0, c);
    Out o{host(be, conv_out), host(be, y), host(be, conv0), host(be, ssm0)};
    be.release(conv_out), be.release(y);
    return o;
  };
  const Out a = run(with), b = run(without);
  EXPECT_TRUE(same_bits(a.conv_out, b.conv_out)) << cs.name << ": conv1d output";
  EXPECT_TRUE(same_bits(a.y, b.y)) << cs.name << ": ssd output";
  const size_t conv_slot = size_t((K - 1) * CD), ssm_slot = size_t(nh * P * N);
  for (int32_t s = 0; s < n_slots; ++s) {
    // slots 0..3: the continuing sequences' (the same in both runs) or unused; 4..: the fresh ones' in `with` only
    auto slot_of = [](const std::vector<float>& v, size_t n, int32_t k) {
      return std::vector<float>(v.begin() + ptrdiff_t(n * size_t(k)), v.begin() + ptrdiff_t(n * size_t(k + 1)));
    };
    const std::vector<float>& want_conv = s >= 4 ? conv_start : a.conv_state;
    const std::vector<float>& want_ssm = s >= 4 ? ssm_start : a.ssm_state;
    EXPECT_TRUE(same_bits(slot_of(b.conv_state, conv_slot, s), slot_of(want_conv, conv_slot, s)))
        << cs.name << ": conv state slot " << s;
    EXPECT_TRUE(same_bits(slot_of(b.ssm_state, ssm_slot, s), slot_of(want_ssm, ssm_slot, s)))
        << cs.name << ": ssm state slot " << s;
  }
  for (Tensor t : {xBC, dt, w, bias, A_log, D, dt_bias, conv0, ssm0}) be.release(t);
}

const std::vector<Case>& cases() {
  static const std::vector<Case> c = {
      {"prompts", {1, 200, 777, 300}, {0, 5, 0, 0}},      // one inside a chunk, several across chunk boundaries
      {"packed documents", {7, 22, 2, 13}, {0, 0, 0, 0}},  // a training step: every sequence fresh
      {"decode", {1, 1, 1, 1}, {0, 9, 0, 3}},              // one token each: the decode kernels
  };
  return c;
}

TEST(NoStateSlot, CpuKeepsNothingAndChangesNothing) {
  auto be = make_cpu_backend();
  for (const Case& cs : cases()) check_no_slot(*be, DType::F32, cs);
}

TEST(NoStateSlot, CudaKeepsNothingAndChangesNothing) {
  if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA GPU: the CUDA state-slot test needs one";
  for (DType act : {DType::BF16, DType::F32})
    for (const char* path : {"", "0", "3", "5"}) {  // the CUDA scan's forms (cuda_ssd_test.cpp)
      test::ScopedEnv env("BAMBA_SSD_PATH", *path ? path : nullptr);
      auto be = make_backend("cuda", act);
      for (Case cs : cases()) {
        cs.name += std::string(act == DType::BF16 ? ", bf16" : ", fp32") + ", path '" + path + "'";
        check_no_slot(*be, act, cs);
      }
    }
}

TEST(NoStateSlot, ContinuingNeedsASlot) {
  StepBatch b;
  const std::vector<int32_t> toks(3, 1);
  b.add(toks, 0, -1, {});
  EXPECT_THROW(b.add(toks, 4, -1, {}), Error);
}

}  // namespace
}  // namespace bamba
