// FP8 (E4M3) weights on the CPU: the format's conversions against a hand table (subnormals, ties, saturation,
// NaN), the per-row quantization, the CPU matmul twin against its definition, --quantization fp8's choice of
// layers, FP8 checkpoints written here in each published layout (compressed-tensors channel / tensor / block,
// FBGEMM FP8, DeepSeek-style fp8 block and tensor) loaded and run against the same weights dequantized into an
// fp32 checkpoint, the errors of inconsistent configs, the accuracy against the fp32 fixtures, and FP8 weights
// split for tensor parallelism (thread ranks) against the same weights on one device.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "backend/backend.h"
#include "backend/thread_communicator.h"
#include "core/dtype.h"
#include "core/error.h"
#include "core/fp8.h"
#include "core/mapped_file.h"
#include "io/checkpoint.h"
#include "io/safetensors.h"
#include "model/hybrid.h"
#include "model/quantization.h"
#include "model/tensor_parallel.h"
#include "model/weights.h"
#include "fixture_runner.h"
#include "test_util.h"

namespace bamba {
namespace {

uint32_t bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

TEST(Fp8, DecodesTheHandTable) {
  const std::pair<uint8_t, float> table[] = {
      {0x00, 0.f},           {0x01, 0.001953125f},  // 2^-9, the smallest subnormal
      {0x07, 7.f / 512},     {0x08, 0.015625f},     // the largest subnormal, the smallest normal 2^-6
      {0x38, 1.f},           {0x39, 1.125f},        {0x3c, 1.5f}, {0x40, 2.f}, {0x30, 0.5f},
      {0x7e, 448.f},         {0x77, 240.f},         {0xb8, -1.f}, {0xfe, -448.f}, {0x81, -0.001953125f},
  };
  for (auto [b, v] : table) EXPECT_EQ(bits(e4m3_to_f32(b)), bits(v)) << int(b);
  EXPECT_EQ(bits(e4m3_to_f32(0x80)), bits(-0.f));
  EXPECT_TRUE(std::isnan(e4m3_to_f32(0x7f)));
  EXPECT_TRUE(std::isnan(e4m3_to_f32(0xff)));
  // 0x78..0x7e are normal (E4M3FN has no infinities): 256, 288, ..., 448
  EXPECT_EQ(e4m3_to_f32(0x78), 256.f);
  EXPECT_EQ(e4m3_to_f32(0x7d), 416.f);
}

TEST(Fp8, EncodesRoundingToNearestEvenAndSaturating) {
  const std::pair<float, uint8_t> table[] = {
      {1.f, 0x38},          {-1.f, 0xb8},         {448.f, 0x7e},        {449.f, 0x7e},       {1e6f, 0x7e},
      {-1e6f, 0xfe},        {INFINITY, 0x7e},     {-INFINITY, 0xfe},    {1.0625f, 0x38},  // tie: 1.0 (even) not 1.125
      {1.1875f, 0x3a},  // tie between 1.125 and 1.25: the even 1.25
      {1.06f, 0x38},        {1.07f, 0x39},        // either side of the midpoint 1.0625
      {0.0009765625f, 0x00},  // 2^-10: tie between 0 and 2^-9, 0 is even
      {0.0029296875f, 0x02},  // 3·2^-10: tie between 1 and 2 (·2^-9), 2 is even
      {0.0009765626f, 0x01},  // just above the tie
      {1e-9f, 0x00},        {-1e-9f, 0x80},
      {0.0146484375f, 0x08},  // 7.5·2^-9: tie between the largest subnormal (7) and the smallest normal (8)
      {0.f, 0x00},          {-0.f, 0x80},         {432.f, 0x7e},   // 432 = between 416 and 448: tie → 448 (even)
      {424.f, 0x7d},
  };
  for (auto [v, b] : table) EXPECT_EQ(int(f32_to_e4m3(v)), int(b)) << v;
  EXPECT_EQ(f32_to_e4m3(NAN) & 0x7f, 0x7f);
}

TEST(Fp8, EveryCodeRoundTrips) {
  for (int b = 0; b < 256; ++b) {
    if ((b & 0x7f) == 0x7f) continue;  // NaN
    EXPECT_EQ(int(f32_to_e4m3(e4m3_to_f32(uint8_t(b)))), b);
  }
  // and every f32 rounds to a neighbour: |x - e4m3(x)| <= half the gap around x (normals: 2^-4 relative)
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> d(-440.f, 440.f);
  for (int i = 0; i < 10000; ++i) {
    const float x = d(rng) * (i % 2 ? 1.f : 1e-3f);
    const float r = e4m3_to_f32(f32_to_e4m3(x));
    EXPECT_LE(std::fabs(r - x), std::max(std::fabs(x) / 16.f, 0.0009765625f) * 1.0001f) << x;
  }
}

TEST(Fp8, QuantizeRowRoundTrip) {
  std::mt19937 rng(3);
  std::normal_distribution<float> d(0.f, 0.02f);
  std::vector<float> x(301);
  for (auto& v : x) v = d(rng);
  x[17] = -0.25f;  // the largest magnitude
  std::vector<uint8_t> q(x.size());
  const float s = quantize_row_e4m3(x.data(), int64_t(x.size()), q.data());
  EXPECT_EQ(s, 0.25f / 448.f);
  EXPECT_EQ(int(q[17]), 0xfe);  // maps onto -448
  double err = 0, ref = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    const float back = e4m3_to_f32(q[i]) * s;
    EXPECT_LE(std::fabs(back - x[i]), std::max(std::fabs(x[i]) / 16.f, s * 0.0009765625f) * 1.0001f);
    err += double(back - x[i]) * (back - x[i]);
    ref += double(x[i]) * x[i];
  }
  EXPECT_LT(std::sqrt(err / ref), 0.04);  // e4m3: ~2.2 % for normally distributed values
  std::vector<float> zero(5, 0.f);
  EXPECT_EQ(quantize_row_e4m3(zero.data(), 5, q.data()), 1.f);
  EXPECT_EQ(q[0], 0);
}

// An FP8 weight [N, K] with per-row (B = 0) or B×B block scales, made on the host, and its dequantized values.
struct HostFp8 {
  std::vector<uint8_t> q;
  std::vector<float> scale, deq;
};
HostFp8 make_fp8(const std::vector<float>& w, int64_t N, int64_t K, int64_t B) {
  HostFp8 h;
  h.q.resize(size_t(N * K));
  h.deq.resize(size_t(N * K));
  if (B == 0) {
    for (int64_t n = 0; n < N; ++n) h.scale.push_back(quantize_row_e4m3(&w[size_t(n * K)], K, &h.q[size_t(n * K)]));
  } else {
    const int64_t nb = (N + B - 1) / B, kb = (K + B - 1) / B;
    h.scale.assign(size_t(nb * kb), 0.f);
    for (int64_t i = 0; i < nb; ++i)
      for (int64_t j = 0; j < kb; ++j) {
        float amax = 0;
        for (int64_t n = i * B; n < std::min(N, (i + 1) * B); ++n)
          for (int64_t k = j * B; k < std::min(K, (j + 1) * B); ++k) amax = std::fmax(amax, std::fabs(w[size_t(n * K + k)]));
        h.scale[size_t(i * kb + j)] = fp8_scale_for(amax);
      }
    for (int64_t n = 0; n < N; ++n)
      for (int64_t k = 0; k < K; ++k)
        h.q[size_t(n * K + k)] = f32_to_e4m3(w[size_t(n * K + k)] / h.scale[size_t((n / B) * kb + k / B)]);
  }
  const int64_t kb = B ? (K + B - 1) / B : 0;
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = 0; k < K; ++k)
      h.deq[size_t(n * K + k)] = e4m3_to_f32(h.q[size_t(n * K + k)]) * (B ? h.scale[size_t((n / B) * kb + k / B)] : h.scale[size_t(n)]);
  return h;
}

TEST(Fp8, CpuMatmulMatchesItsDefinition) {
  auto be = make_cpu_backend();
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> d(-1.f, 1.f);
  const int64_t N = 37, K = 45;
  std::vector<float> w(static_cast<size_t>(N * K));
  for (auto& v : w) v = d(rng);
  for (int64_t B : {0, 16}) {
    const HostFp8 h = make_fp8(w, N, K, B);
    Tensor W = be->alloc(DType::F8_E4M3, {N, K});
    std::memcpy(W.data, h.q.data(), h.q.size());
    Tensor S = B ? be->alloc(DType::F32, {(N + B - 1) / B, (K + B - 1) / B}) : be->alloc(DType::F32, {N});
    be->from_host_f32(S, h.scale.data());
    W.scale = S.ptr<float>();
    W.scale_block = int32_t(B);
    Tensor bias = be->alloc(DType::F32, {N});
    std::vector<float> bv(static_cast<size_t>(N));
    for (auto& v : bv) v = d(rng);
    be->from_host_f32(bias, bv.data());
    for (int64_t M : {1, 3, 8, 13}) {
      Tensor x = be->alloc(DType::F32, {M, K}), y = be->alloc(DType::F32, {M, N});
      std::vector<float> xv(static_cast<size_t>(M * K)), yv(size_t(M * N));
      for (auto& v : xv) v = d(rng);
      be->from_host_f32(x, xv.data());
      be->matmul(y, x, W, bias);
      be->to_host_f32(y, yv.data());
      // The definition: above 8 rows with per-channel scales x is quantized per row first (W8A8), else used as it
      // is (W8A16).
      std::vector<float> xr = xv;
      if (M > 8 && B == 0)
        for (int64_t m = 0; m < M; ++m) {
          std::vector<uint8_t> q(static_cast<size_t>(K));
          const float s = quantize_row_e4m3(&xv[size_t(m * K)], K, q.data());
          for (int64_t k = 0; k < K; ++k) xr[size_t(m * K + k)] = e4m3_to_f32(q[size_t(k)]) * s;
        }
      for (int64_t m = 0; m < M; ++m)
        for (int64_t n = 0; n < N; ++n) {
          double ref = bv[size_t(n)];
          for (int64_t k = 0; k < K; ++k) ref += double(xr[size_t(m * K + k)]) * h.deq[size_t(n * K + k)];
          EXPECT_NEAR(yv[size_t(m * N + n)], ref, 1e-4) << "B " << B << " M " << M << " m " << m << " n " << n;
        }
      // Batch-invariant mode keeps W8A16 for every M.
      if (M > 8) {
        be->set_batch_invariant(64);
        be->matmul(y, x, W, {});
        be->to_host_f32(y, yv.data());
        for (int64_t n = 0; n < N; ++n) {
          double ref = 0;
          for (int64_t k = 0; k < K; ++k) ref += double(xv[size_t(K + k)]) * h.deq[size_t(n * K + k)];
          EXPECT_NEAR(yv[size_t(N + n)], ref, 1e-4);
        }
        be->set_batch_invariant(0);
      }
    }
  }
}

TEST(Fp8, QuantizationAtLoadTakesTheLinearLayersOnly) {
  auto be = make_cpu_backend();
  ModelConfig cfg = dummy_config();
  cfg.tie_word_embeddings = false;
  ModelWeights w = dummy_weights(cfg, *be, 3);
  std::vector<float> before(size_t(w.layers[0].mamba.in_proj.numel()));
  be->to_host_f32(w.layers[0].mamba.in_proj, before.data());
  quantize_weights_fp8(cfg, w, *be);
  EXPECT_TRUE(has_fp8_weights(cfg, w));
  for (int64_t i = 0; i < cfg.num_hidden_layers; ++i) {
    const LayerWeights& L = w.layers[size_t(i)];
    if (L.mamba.in_proj) {
      EXPECT_EQ(L.mamba.in_proj.dtype, DType::F8_E4M3);
      EXPECT_EQ(L.mamba.out_proj.dtype, DType::F8_E4M3);
      EXPECT_EQ(L.mamba.conv1d_weight.dtype, DType::F32);
      EXPECT_EQ(L.mamba.A_log.dtype, DType::F32);
    }
    if (L.attn.qkv_proj) {
      EXPECT_EQ(L.attn.qkv_proj.dtype, DType::F8_E4M3);
    }
    if (L.gate_up_proj) {
      EXPECT_EQ(L.down_proj.dtype, DType::F8_E4M3);
    }
    EXPECT_EQ(L.input_layernorm.dtype, DType::F32);
  }
  EXPECT_EQ(w.embed_tokens.dtype, DType::F32);
  EXPECT_EQ(w.lm_head.dtype, DType::F32);  // like vLLM: lm_head stays unquantized unless asked
  const Tensor& q = w.layers[0].mamba.in_proj;
  const HostFp8 h = make_fp8(before, q.shape[0], q.shape[1], 0);
  EXPECT_EQ(std::memcmp(q.data, h.q.data(), h.q.size()), 0);
  for (int64_t n = 0; n < q.shape[0]; ++n) EXPECT_EQ(q.scale[n], h.scale[size_t(n)]);
  release_weights(cfg, w, *be);
}

TEST(Fp8, IgnoreListsMatchLikeTheirLoaders) {
  Fp8Format f;
  f.ignore = {"lm_head", "re:.*mamba\\.in_proj", "layers.3.feed_forward.down_proj"};
  EXPECT_TRUE(f.ignored("lm_head"));
  EXPECT_TRUE(f.ignored("model.layers.0.mamba.in_proj"));
  EXPECT_FALSE(f.ignored("model.layers.0.mamba.out_proj"));
  EXPECT_TRUE(f.ignored("model.layers.3.feed_forward.down_proj"));
  EXPECT_FALSE(f.ignored("model.layers.13.feed_forward.down_proj"));
  Fp8Format g;
  g.ignore = {"mamba"};
  g.ignore_by_substring = true;
  EXPECT_TRUE(g.ignored("model.layers.0.mamba.in_proj"));
  EXPECT_FALSE(g.ignored("model.layers.1.self_attn.q_proj"));
}

// ---- FP8 checkpoints written from a fixture model

bool is_linear(const std::string& name) {
  for (const char* p : {"in_proj.weight", "out_proj.weight", "q_proj.weight", "k_proj.weight", "v_proj.weight",
                        "o_proj.weight", "gate_proj.weight", "up_proj.weight", "down_proj.weight", "lm_head.weight"})
    if (name.size() >= std::strlen(p) && name.compare(name.size() - std::strlen(p), std::strlen(p), p) == 0) return true;
  return false;
}

struct Layout {
  std::string name;
  nlohmann::json quantization_config;
  std::string scale_name;  // weight_scale / weight_scale_inv
  int64_t block;           // 0: per channel (or per tensor)
  bool per_tensor;
  std::vector<int64_t> tensor_scale_shape;  // per tensor: [1] or [] (a scalar)
  bool quantize_lm_head;
};

std::vector<Layout> layouts() {
  auto ct = [](const char* strategy, nlohmann::json extra, bool lm_head) {
    nlohmann::json w = {{"num_bits", 8}, {"type", "float"}, {"symmetric", true}, {"dynamic", false}, {"strategy", strategy}};
    if (extra.is_object()) w.update(extra);
    nlohmann::json q = {{"quant_method", "compressed-tensors"},
                        {"format", "float-quantized"},
                        {"quantization_status", "compressed"},
                        {"config_groups",
                         {{"group_0",
                           {{"targets", {"Linear"}},
                            {"weights", w},
                            {"input_activations",
                             {{"num_bits", 8}, {"type", "float"}, {"dynamic", true}, {"strategy", "token"}, {"symmetric", true}}}}}}},
                        {"ignore", lm_head ? nlohmann::json::array() : nlohmann::json{"lm_head"}}};
    return q;
  };
  return {
      {"ct-channel", ct("channel", {}, true), "weight_scale", 0, false, {}, true},
      {"ct-tensor", ct("tensor", {}, false), "weight_scale", 0, true, {1}, false},
      {"ct-block", ct("block", {{"block_structure", {32, 32}}}, false), "weight_scale", 32, false, {}, false},
      {"fbgemm", {{"quant_method", "fbgemm_fp8"}, {"activation_scale_ub", 1200.0}, {"modules_to_not_convert", {"lm_head"}}},
       "weight_scale", 0, false, {}, false},
      {"fp8-block", {{"quant_method", "fp8"}, {"fmt", "e4m3"}, {"activation_scheme", "dynamic"}, {"weight_block_size", {32, 32}}},
       "weight_scale_inv", 32, false, {}, true},
      {"fp8-tensor", {{"quant_method", "fp8"}, {"fmt", "e4m3"}, {"activation_scheme", "static"}, {"modules_to_not_convert", {"lm_head"}}},
       "weight_scale", 0, true, {}, false},
  };
}

// Writes `src`'s checkpoint into fp8_dir in layout `L` (the linear weights quantized) and into deq_dir with those
// weights dequantized (fp32): the reference the FP8 model must match. expected.* are linked for FixtureRunner.
void write_fp8_checkpoint(const std::string& src, const Layout& L, const std::string& fp8_dir, const std::string& deq_dir,
                          bool static_input_scale) {
  Checkpoint ck(src);
  struct Owned {
    std::string name;
    DType dt;
    std::vector<int64_t> shape;
    std::vector<unsigned char> bytes;
  };
  std::vector<Owned> fp8, deq;
  for (const std::string& name : ck.names()) {
    const TensorInfo& t = ck.get(name);
    std::vector<float> v(size_t(t.numel()));
    convert_to_f32(t.data, t.dtype, v.size(), v.data());
    auto f32 = [&](const std::vector<float>& x) {
      std::vector<unsigned char> b(x.size() * 4);
      std::memcpy(b.data(), x.data(), b.size());
      return b;
    };
    const bool lm = name == "lm_head.weight";
    if (!is_linear(name) || (lm && !L.quantize_lm_head)) {
      fp8.push_back({name, DType::F32, t.shape, f32(v)});
      deq.push_back({name, DType::F32, t.shape, f32(v)});
      continue;
    }
    const int64_t N = t.shape[0], K = t.shape[1];
    HostFp8 h;
    if (L.per_tensor) {
      float amax = 0;
      for (float x : v) amax = std::fmax(amax, std::fabs(x));
      const float s = fp8_scale_for(amax);
      h.scale = {s};
      for (float x : v) h.q.push_back(f32_to_e4m3(x / s)), h.deq.push_back(e4m3_to_f32(h.q.back()) * s);
    } else {
      h = make_fp8(v, N, K, L.block);
    }
    const std::string module = name.substr(0, name.size() - 7);
    fp8.push_back({name, DType::F8_E4M3, t.shape, h.q});
    const std::vector<int64_t> sshape = L.per_tensor ? L.tensor_scale_shape
                                        : L.block    ? std::vector<int64_t>{(N + L.block - 1) / L.block, (K + L.block - 1) / L.block}
                                                     : std::vector<int64_t>{N, 1};
    fp8.push_back({module + "." + L.scale_name, DType::F32, sshape, f32(h.scale)});
    if (static_input_scale) fp8.push_back({module + ".input_scale", DType::F32, {1}, f32({0.01f})});
    deq.push_back({name, DType::F32, t.shape, f32(h.deq)});
  }
  for (auto [dir, list] : {std::pair{fp8_dir, &fp8}, std::pair{deq_dir, &deq}}) {
    std::filesystem::create_directories(dir);
    std::vector<TensorData> td;
    for (auto& o : *list) td.push_back({o.name, o.dt, o.shape, o.bytes.data()});
    write_safetensors(dir + "/model.safetensors", td);
    nlohmann::json cfg = nlohmann::json::parse(read_text_file(src + "/config.json"));
    if (dir == fp8_dir) cfg["quantization_config"] = L.quantization_config;
    std::ofstream(dir + "/config.json") << cfg.dump(2);
    for (const char* f : {"expected.safetensors", "expected.json"})
      std::filesystem::create_symlink(src + "/" + f, dir + "/" + f);
  }
}

class Fp8Checkpoint : public ::testing::TestWithParam<Layout> {};

TEST_P(Fp8Checkpoint, LoadsAndRunsLikeItsDequantizedWeights) {
  const Layout& L = GetParam();
  const std::string src = test::model_dir("bamba-tiny-a"), tmp = test::make_temp_dir("fp8-" + L.name);
  write_fp8_checkpoint(src, L, tmp + "/fp8", tmp + "/deq", L.name == "fp8-tensor");
  {
    test::FixtureRunner q(tmp + "/fp8", make_cpu_backend(), false), r(tmp + "/deq", make_cpu_backend(), false);
    const ModelWeights& w = q.model->weights();
    EXPECT_EQ(w.layers[0].mamba.in_proj.dtype, DType::F8_E4M3);
    EXPECT_EQ(w.layers[1].attn.qkv_proj.dtype, DType::F8_E4M3);
    EXPECT_EQ(w.layers[0].gate_up_proj.dtype, DType::F8_E4M3);
    EXPECT_EQ(w.layers[0].mamba.in_proj.scale_block, int32_t(L.block));
    EXPECT_EQ(w.lm_head.dtype, L.quantize_lm_head ? DType::F8_E4M3 : DType::F32);
    const std::vector<int32_t>* longest = &q.seqs[0].ids;
    for (auto& s : q.seqs)
      if (s.ids.size() > longest->size()) longest = &s.ids;
    const std::vector<int32_t>& ids = *longest;
    const int32_t T = int32_t(ids.size());
    ASSERT_GT(T, 8) << "the W8A8 path needs a sequence of more than 8 tokens";
    // One token per step (W8A16): the same products as the dequantized fp32 weights.
    std::vector<int32_t> one_by_one;
    for (int32_t t = 1; t <= T; ++t) one_by_one.push_back(t);
    const double e_decode = test::rel_l2(q.run_pieces(ids, one_by_one), r.run_pieces(ids, one_by_one));
    EXPECT_LT(e_decode, 1e-5) << L.name;
    // The whole prompt at once (W8A8: the activations rounded to e4m3 too).
    const double e_prefill = test::rel_l2(q.run_pieces(ids, {T}), r.run_pieces(ids, {T}));
    EXPECT_LT(e_prefill, 0.1) << L.name;
    if (L.block == 0) EXPECT_GT(e_prefill, 1e-4) << L.name << ": per-channel weights run W8A8 above 8 rows";
    else EXPECT_LT(e_prefill, 1e-5) << L.name << ": block-scaled weights stay W8A16";
    std::printf("[ fp8 %s ] decode vs dequantized: %.2e, prefill (W8A8) vs dequantized: %.4f\n", L.name.c_str(), e_decode,
                e_prefill);
  }
  std::filesystem::remove_all(tmp);
}

INSTANTIATE_TEST_SUITE_P(Layouts, Fp8Checkpoint, ::testing::ValuesIn(layouts()),
                         [](const auto& info) {
                           std::string s = info.param.name;
                           for (char& c : s)
                             if (c == '-') c = '_';
                           return s;
                         });

// Bad FP8 checkpoints: each error names what is wrong.
TEST(Fp8, InconsistentCheckpointsAreClearErrors) {
  const std::string src = test::model_dir("bamba-tiny-a"), tmp = test::make_temp_dir("fp8-bad");
  const Layout good = layouts()[0];
  write_fp8_checkpoint(src, good, tmp + "/fp8", tmp + "/deq", false);
  auto be = make_cpu_backend();
  auto load_with = [&](const nlohmann::json& q) {
    nlohmann::json cfg = nlohmann::json::parse(read_text_file(tmp + "/fp8/config.json"));
    if (q.is_null()) cfg.erase("quantization_config");
    else cfg["quantization_config"] = q;
    std::ofstream(tmp + "/fp8/config.json") << cfg.dump(2);
    HybridModel m = load_model(tmp + "/fp8", *be);
  };
  auto expect_error = [&](const nlohmann::json& q, const std::vector<std::string>& parts) {
    try {
      load_with(q);
      ADD_FAILURE() << "no error for " << q.dump();
    } catch (const Error& e) {
      for (auto& p : parts) EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what() << " lacks " << p;
    }
  };
  nlohmann::json q = good.quantization_config;
  expect_error(nullptr, {"lm_head.weight", "is F8_E4M3", "no quantization_config"});
  expect_error({{"quant_method", "awq"}}, {"quant_method", "awq"});
  expect_error({{"quant_method", "fp8"}, {"fmt", "e5m2"}}, {"fmt", "e5m2"});
  expect_error({{"quant_method", "fp8"}, {"weight_block_size", {128, 64}}}, {"weight_block_size"});
  nlohmann::json int8 = q;
  int8["config_groups"]["group_0"]["weights"]["type"] = "int";
  expect_error(int8, {"config_groups.group_0.weights", "int"});
  nlohmann::json strat = q;
  strat["config_groups"]["group_0"]["weights"]["strategy"] = "group";
  expect_error(strat, {"strategy", "group"});
  nlohmann::json block = q;
  block["config_groups"]["group_0"]["weights"]["strategy"] = "block";
  expect_error(block, {"block_structure"});
  nlohmann::json blk32 = block;
  blk32["config_groups"]["group_0"]["weights"]["block_structure"] = {32, 32};
  expect_error(blk32, {"weight_scale", "has shape [", "blocks"});  // per-channel scales under a block config
  nlohmann::json ign = q;
  ign["ignore"] = {"re:.*mamba\\.in_proj"};
  expect_error(ign, {"model.layers.0.mamba.in_proj", "unquantized"});
  nlohmann::json kv = q;
  kv["kv_cache_scheme"] = {{"num_bits", 8}, {"type", "float"}};
  expect_error(kv, {"kv_cache_scheme"});
  expect_error({{"quant_method", "fbgemm_fp8"}, {"activation_scale_ub", "big"}}, {"activation_scale_ub"});
  // The config is right again, but a scale tensor is gone.
  {
    Checkpoint ck(tmp + "/fp8");
    std::vector<TensorData> td;
    for (auto& n : ck.names()) {
      const TensorInfo& t = ck.get(n);
      if (n != "model.layers.2.mamba.out_proj.weight_scale") td.push_back({n, t.dtype, t.shape, t.data});
    }
    write_safetensors(tmp + "/fp8/model2.safetensors", td);
  }
  std::filesystem::rename(tmp + "/fp8/model2.safetensors", tmp + "/fp8/model.safetensors");
  expect_error(q, {"missing tensor", "model.layers.2.mamba.out_proj.weight_scale"});
  std::filesystem::remove_all(tmp);
}

// Accuracy of --quantization fp8 on the fixtures: logits of the whole reference sequences (W8A8 prefill) and one
// token at a time (W8A16 decode) against the fp32 model, as relative L2 (docs/quantization.md quotes these); then
// with lm_head in FP8 too (--fp8-lm-head; a tied lm_head is the embedding table and stays), against the fp32 model
// and against lm_head unquantized, which isolates what quantizing it adds.
TEST(Fp8, AccuracyOnTheFixtures) {
  for (const std::string& name : test::kFixtureModels) {
    const std::string dir = test::model_dir(name);
    test::FixtureRunner r(dir, make_cpu_backend(), false), q(dir, make_cpu_backend(), false),
        ql(dir, make_cpu_backend(), false);
    for (auto [runner, lm_head] : {std::pair{&q, false}, std::pair{&ql, true}}) {
      ModelWeights w = runner->model->weights();
      quantize_weights_fp8(runner->model->config(), w, *runner->be, lm_head);
      runner->model = std::make_unique<HybridModel>(runner->model->config(), std::move(w), *runner->be);
    }
    const bool tied = r.model->config().tie_word_embeddings;
    EXPECT_EQ(ql.model->weights().lm_head.dtype, tied ? DType::F32 : DType::F8_E4M3) << name;
    double worst_p = 0, worst_d = 0, worst_lp = 0, worst_ld = 0, head_p = 0, head_d = 0;
    for (auto& s : r.seqs) {
      const int32_t T = int32_t(s.ids.size());
      std::vector<int32_t> steps;
      for (int32_t t = 1; t <= T; ++t) steps.push_back(t);
      const std::vector<float> rp = r.run_pieces(s.ids, {T}), rd = r.run_pieces(s.ids, steps);
      const std::vector<float> qp = q.run_pieces(s.ids, {T}), qd = q.run_pieces(s.ids, steps);
      const std::vector<float> lp = ql.run_pieces(s.ids, {T}), ld = ql.run_pieces(s.ids, steps);
      worst_p = std::max(worst_p, test::rel_l2(qp, rp));
      worst_d = std::max(worst_d, test::rel_l2(qd, rd));
      worst_lp = std::max(worst_lp, test::rel_l2(lp, rp));
      worst_ld = std::max(worst_ld, test::rel_l2(ld, rd));
      head_p = std::max(head_p, test::rel_l2(lp, qp));
      head_d = std::max(head_d, test::rel_l2(ld, qd));
    }
    std::printf("[ fp8 accuracy %s ] logits rel L2 vs fp32, worst sequence: prefill (W8A8) %.4f, decode (W8A16) %.4f; "
                "lm_head too: %.4f, %.4f (vs lm_head unquantized: %.4f, %.4f)%s\n",
                name.c_str(), worst_p, worst_d, worst_lp, worst_ld, head_p, head_d, tied ? " [tied: unchanged]" : "");
    // The fixtures are randomly initialised: their logits sit near zero, so relative errors come out large (bf16
    // on the GPU is ~1e-2 on them; docs/numerics.md). Broken scales give ~1; these bounds are 1.5× what was measured.
    EXPECT_LT(worst_p, 0.45) << name;
    EXPECT_LT(worst_d, 0.3) << name;
    EXPECT_LT(worst_lp, 0.45) << name;
    EXPECT_LT(worst_ld, 0.3) << name;
    if (tied) EXPECT_EQ(head_p + head_d, 0.0) << name;
    else EXPECT_GT(head_d, 0.0) << name << ": quantizing lm_head changed nothing";
  }
}

// ---- FP8 with tensor parallelism

// r's model split over n thread ranks (its whole weights, FP8 ones included, are the source), with a cache and a
// workspace for rank 0's shard.
void split_runner(test::FixtureRunner& r, int n) {
  std::vector<std::unique_ptr<Backend>> others;
  for (int k = 1; k < n; ++k) others.push_back(make_cpu_backend());
  r.ws.reset();
  r.cache.reset();
  auto tp = make_tensor_parallel_model(r.model->config(), r.model->weights(), *r.be, *r.be, std::move(others),
                                       make_thread_communicators(n));
  r.model = std::move(tp);
  int32_t max_len = 0, total = 0;
  for (auto& e : r.seqs) max_len = std::max(max_len, int32_t(e.ids.size()) + 16), total += int32_t(e.ids.size());
  const ModelConfig& c = r.model->config();
  r.cache = std::make_unique<HybridCache>(c, *r.be, HybridCache::sizes_for(c, int32_t(r.seqs.size()), max_len, 8));
  r.ws = std::make_unique<Workspace>(c, *r.be, total, total);
}

// Worst relative L2 of a split FP8 model's logits against the same FP8 weights on one device, over the fixture's
// sequences: one token per step (W8A16) and whole prompts (W8A8 for per-channel weights).
std::pair<double, double> split_vs_one(test::FixtureRunner& one, test::FixtureRunner& split) {
  double d = 0, p = 0;
  for (auto& s : one.seqs) {
    const int32_t T = int32_t(s.ids.size());
    std::vector<int32_t> steps;
    for (int32_t t = 1; t <= T; ++t) steps.push_back(t);
    d = std::max(d, test::rel_l2(split.run_pieces(s.ids, steps), one.run_pieces(s.ids, steps)));
    p = std::max(p, test::rel_l2(split.run_pieces(s.ids, {T}), one.run_pieces(s.ids, {T})));
  }
  return {d, p};
}

// --quantization fp8 quantizes the whole model (per output channel) before the split: a row-split weight's shard
// keeps its rows' scales, a column-split one every row's scale, so one token at a time (W8A16) the ranks compute
// the one-device FP8 products (summed in another order). Whole prompts run W8A8, whose per-token activation scale
// a rank takes over its own slice of a row-parallel input: another rounding of the same size as FP8's own.
TEST(Fp8, TensorParallelPerChannelScalesGoWithTheirRows) {
  struct C {
    std::string model;
    int n;
  };
  std::vector<C> cases = {{"bamba-tiny-a", 2}, {"bamba-tiny-a", 4}};
  for (const std::string& m : test::kFamilyModels) cases.push_back({m, 2});  // every type splits at N = 2
  for (const C& k : cases) {
    const std::string dir = test::fixture_model_dir(k.model);
    if (dir.empty()) continue;
    test::FixtureRunner ref(dir, make_cpu_backend(), false), one(dir, make_cpu_backend(), false), split(dir, make_cpu_backend(), false);
    for (auto* r : {&one, &split}) {
      ModelWeights w = r->model->weights();
      quantize_weights_fp8(r->model->config(), w, *r->be);
      r->model = std::make_unique<HybridModel>(r->model->config(), std::move(w), *r->be);
    }
    split_runner(split, k.n);
    EXPECT_TRUE(has_fp8_weights(split.model->config(), split.model->weights())) << k.model;
    auto [d, p] = split_vs_one(one, split);
    double p1 = 0, pn = 0;  // whole prompts against fp32: one device, split
    for (auto& s : ref.seqs) {
      const int32_t T = int32_t(s.ids.size());
      const auto r32 = ref.run_pieces(s.ids, {T});
      p1 = std::max(p1, test::rel_l2(one.run_pieces(s.ids, {T}), r32));
      pn = std::max(pn, test::rel_l2(split.run_pieces(s.ids, {T}), r32));
    }
    std::printf("[ fp8 tp %s N=%d ] vs one device: decode %.2e, prefill %.4f; prefill vs fp32: one device %.4f, split %.4f\n",
                k.model.c_str(), k.n, d, p, p1, pn);
    EXPECT_LT(d, 1e-5) << k.model << " N=" << k.n;
    EXPECT_LT(pn, 1.25 * p1 + 1e-3) << k.model << " N=" << k.n << ": the split's W8A8 error is FP8's own size";
  }
}

// Block-scaled FP8 checkpoints (DeepSeek-style 16x16 blocks here) split by block: W8A16 at every size, so the split
// model computes the one-device products. A split that cuts a block is an error naming the layer and the block.
TEST(Fp8, TensorParallelBlockScalesSplitByBlock) {
  const std::string src = test::fixture_model_dir("llama3");
  if (src.empty()) GTEST_SKIP() << "fixture llama3 not found";
  const std::string tmp = test::make_temp_dir("fp8-tp-block");
  for (int64_t block : {16, 32}) {
    Layout L{"fp8-block", {{"quant_method", "fp8"}, {"fmt", "e4m3"}, {"activation_scheme", "dynamic"},
                           {"weight_block_size", {block, block}}},
             "weight_scale_inv", block, false, {}, true};
    const std::string d = tmp + "/b" + std::to_string(block);
    write_fp8_checkpoint(src, L, d + "/fp8", d + "/deq", false);
    test::FixtureRunner one(d + "/fp8", make_cpu_backend(), false), split(d + "/fp8", make_cpu_backend(), false);
    if (block == 32) {  // llama3 at N = 2: one KV head (16 rows of k_proj) per rank, half a block
      try {
        split_runner(split, 2);
        ADD_FAILURE() << "no error";
      } catch (const Error& e) {
        const std::string m = e.what();  // rank 1's k rows [80, 96) or rank 0's [64, 80), whichever is cut first
        EXPECT_NE(m.find("layer 0: rows ["), std::string::npos) << m;
        EXPECT_NE(m.find("of an FP8 weight [128, 64] with 32x32 block scales: the split cuts a block"), std::string::npos) << m;
      }
      continue;
    }
    split_runner(split, 2);
    EXPECT_EQ(split.model->weights().layers[0].attn.qkv_proj.scale_block, 16);
    EXPECT_EQ(split.model->weights().layers[0].attn.o_proj.dtype, DType::F8_E4M3);  // split by columns
    auto [dd, p] = split_vs_one(one, split);
    std::printf("[ fp8 tp llama3 16x16 blocks N=2 ] vs one device: decode %.2e, prefill %.2e\n", dd, p);
    EXPECT_LT(dd, 1e-5);
    EXPECT_LT(p, 1e-5);
  }
  std::filesystem::remove_all(tmp);
}

}  // namespace
}  // namespace bamba
