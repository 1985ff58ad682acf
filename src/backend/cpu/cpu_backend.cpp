// The CPU backend: fp32 everywhere, OpenBLAS for matmuls, plain loops for the rest. It is the readable oracle
// the GPU kernels are tested against, so every op is written in the sequential form of docs/bamba-model.md,
// not in a faster but different order (e.g. the SSD recurrence is stepped token by token, not chunked).
#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <unordered_map>
#include <vector>

#include "backend/backend.h"
#include "backend/cpu/grad_kernels.h"
#include "backend/cpu/invariant_gemm.h"
#include "core/error.h"
#include "core/fp8.h"
#include "core/hash_uniform.h"

namespace bamba {
namespace {

inline float silu(float x) { return x / (1.f + std::exp(-x)); }
// The exact GELU (torch's default approximate="none").
inline float gelu(float x) { return 0.5f * x * (1.f + std::erf(x * 0.70710678118654752f)); }
// torch.nn.functional.softplus with beta 1, threshold 20.
inline float softplus(float x) { return x > 20.f ? x : std::log1p(std::exp(x)); }

inline const float* row(Tensor t, int64_t r) { return t.ptr<float>() + r * t.ld; }
inline float* row_mut(Tensor t, int64_t r) { return t.ptr<float>() + r * t.ld; }

grad::Mat<float> mat(Tensor t) {  // a 2-D view (or an empty one) for the training kernels
  if (!t) return {};
  return {t.ptr<float>(), t.rows(), t.ndim >= 2 ? t.shape[1] : 1, t.ld};
}
float* vec(Tensor t) { return t ? t.ptr<float>() : nullptr; }

void check_f32(Tensor t, const char* what) {
  if (t && (t.dtype != DType::F32 || t.device != Device::CPU))
    fail("cpu backend: ", what, " must be a CPU F32 tensor");
}

class CpuBackend final : public Backend {
 public:
  ~CpuBackend() override {
    for (auto& [p, n] : allocs_) std::free(p);
  }
  Device device() const override { return Device::CPU; }
  std::string name() const override { return "cpu (fp32, OpenBLAS)"; }
  DType weight_dtype() const override { return DType::F32; }
  DType activation_dtype() const override { return DType::F32; }

  Tensor alloc(DType dtype, std::initializer_list<int64_t> shape) override {
    Tensor t(nullptr, dtype, Device::CPU, shape);
    size_t n = std::max<size_t>(t.nbytes(), 1);
    size_t rounded = (n + 63) / 64 * 64;
    void* p = std::aligned_alloc(64, rounded);
    if (!p) fail("out of host memory allocating ", n, " bytes for a ", t.shape_str(), " tensor");
    std::memset(p, 0, rounded);
    allocs_[p] = rounded;
    t.data = p;
    return t;
  }
  void release(Tensor t) override {
    auto it = allocs_.find(t.data);
    if (it != allocs_.end()) {
      std::free(it->first);
      allocs_.erase(it);
    }
  }

  Tensor load_weight(std::span<const TensorInfo* const> parts, std::initializer_list<int64_t> shape) override {
    if (!parts.empty() && parts[0]->dtype == DType::F8_E4M3) {  // FP8 bytes as they are
      Tensor t = alloc(DType::F8_E4M3, shape);
      auto* dst = t.ptr<unsigned char>();
      for (const TensorInfo* p : parts) {
        if (p->dtype != DType::F8_E4M3) fail("cpu backend: ", p->name, " mixes ", dtype_name(p->dtype), " into an F8_E4M3 weight");
        std::memcpy(dst, p->data, p->nbytes);
        dst += p->nbytes;
      }
      return t;
    }
    Tensor t = alloc(DType::F32, shape);
    float* dst = t.ptr<float>();
    for (const TensorInfo* p : parts) {
      convert_to_f32(p->data, p->dtype, size_t(p->numel()), dst);
      dst += p->numel();
    }
    return t;
  }
  void fill_uniform(Tensor t, uint64_t seed, float lo, float hi) override {
    check_f32(t, "fill_uniform target");
    float* p = t.ptr<float>();
    for (int64_t i = 0; i < t.numel(); ++i) p[i] = hash_uniform(seed, uint64_t(i), lo, hi);
  }
  void fill(Tensor t, float v) override {
    check_f32(t, "fill target");
    std::fill_n(t.ptr<float>(), t.numel(), v);
  }
  void to_host_f32(Tensor src, float* dst) override {
    check_f32(src, "to_host_f32 source");
    for (int64_t r = 0; r < src.rows(); ++r) std::memcpy(dst + r * src.inner(), row(src, r), size_t(src.inner()) * 4);
  }
  void from_host_f32(Tensor dst, const float* src) override {
    check_f32(dst, "from_host_f32 target");
    for (int64_t r = 0; r < dst.rows(); ++r) std::memcpy(row_mut(dst, r), src + r * dst.inner(), size_t(dst.inner()) * 4);
  }
  void zero_state_slot(std::span<const Tensor> state, int32_t slot) override {
    for (const Tensor& t : state) std::memset(row_mut(t, slot), 0, size_t(t.inner()) * dtype_size(t.dtype));
  }

  void copy_slice(Tensor t, int64_t src, int64_t dst) override {
    const size_t row_bytes = size_t(t.ld) * dtype_size(t.dtype);
    std::memcpy(static_cast<char*>(t.data) + size_t(dst) * row_bytes, static_cast<const char*>(t.data) + size_t(src) * row_bytes,
                size_t(t.inner()) * dtype_size(t.dtype));
  }

  void set_batch(const StepBatch& b) override { b_ = &b; }
  // Every op but the matmul already computes a sequence alone, in token order; the matmul changes kernels.
  void set_batch_invariant(int32_t max_chunk) override { invariant_ = max_chunk > 0; }

  // y = x · Wᵀ (row-major, W [N, K]): OpenBLAS, or the batch-invariant kernel.
  void gemm_nt(const float* x, int64_t ldx, const float* W, int64_t ldw, float* y, int64_t ldy, int64_t M, int64_t N,
               int64_t K) const {
    if (invariant_) return cpu::invariant_gemm_nt(x, ldx, W, ldw, y, ldy, M, N, K);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(M), int(N), int(K), 1.f, x, int(ldx), W, int(ldw), 0.f,
                y, int(ldy));
  }

  void embed(Tensor out, Tensor table) override {
    for (int64_t t = 0; t < out.rows(); ++t)
      std::memcpy(row_mut(out, t), row(table, b_->tokens[size_t(t)]), size_t(out.shape[1]) * 4);
  }

  // The FP8 twin: W's rows dequantized exactly (q · scale, in fp32) a panel at a time, and x, for M > 8 rows with
  // per-channel scales outside batch-invariant mode, rounded per row to e4m3 and back first (what the GPU's W8A8
  // GEMM computes).
  void matmul_fp8(Tensor y, Tensor x, Tensor W) {
    const int64_t M = x.rows(), K = x.shape[1], N = W.rows();
    if (!W.scale) fail("cpu matmul: F8_E4M3 weight ", W.shape_str(), " without scales");
    std::vector<float> xq;  // [M, K] the activations as the FP8 GEMM sees them
    const float* xp = x.ptr<float>();
    int64_t ldx = x.ld;
    if (M > 8 && !invariant_ && W.scale_block == 0) {
      xq.resize(size_t(M * K));
      std::vector<uint8_t> q(static_cast<size_t>(K));
      for (int64_t m = 0; m < M; ++m) {
        const float s = quantize_row_e4m3(row(x, m), K, q.data());
        for (int64_t k = 0; k < K; ++k) xq[size_t(m * K + k)] = e4m3_to_f32(q[size_t(k)]) * s;
      }
      xp = xq.data();
      ldx = K;
    }
    constexpr int64_t kPanel = 256;  // rows of W dequantized at a time
    std::vector<float> panel(size_t(std::min(N, kPanel) * K));
    const int64_t B = W.scale_block, kb = W.scale_cols();
    for (int64_t n0 = 0; n0 < N; n0 += kPanel) {
      const int64_t rows = std::min(kPanel, N - n0);
      for (int64_t n = n0; n < n0 + rows; ++n) {
        const uint8_t* q = W.ptr<uint8_t>() + n * W.ld;
        float* dst = panel.data() + (n - n0) * K;
        for (int64_t k = 0; k < K; ++k)
          dst[k] = e4m3_to_f32(q[k]) * (B ? W.scale[(n / B) * kb + k / B] : W.scale[n]);
      }
      gemm_nt(xp, ldx, panel.data(), K, y.ptr<float>() + n0, y.ld, M, rows, K);
    }
  }

  void quantize_fp8(Tensor q, Tensor scale, Tensor w) override {
    check_f32(w, "quantize_fp8 input");
    check_f32(scale, "quantize_fp8 scale");
    if (q.dtype != DType::F8_E4M3 || q.rows() != w.rows() || q.shape[1] != w.shape[1] || scale.numel() != w.rows())
      fail("cpu quantize_fp8: q ", q.shape_str(), " ", dtype_name(q.dtype), ", scale ", scale.shape_str(), " for w ", w.shape_str());
    for (int64_t n = 0; n < w.rows(); ++n)
      scale.ptr<float>()[n] = quantize_row_e4m3(row(w, n), w.shape[1], q.ptr<uint8_t>() + n * q.ld);
  }

  void matmul(Tensor y, Tensor x, Tensor W, Tensor bias) override {
    check_f32(y, "matmul output");
    check_f32(x, "matmul input");
    if (W.dtype == DType::F8_E4M3 && x.rows() > 0) {
      matmul_fp8(y, x, W);
      if (bias)
        for (int64_t m = 0; m < x.rows(); ++m)
          for (int64_t n = 0; n < W.rows(); ++n) row_mut(y, m)[n] += bias.ptr<float>()[n];
      return;
    }
    check_f32(W, "matmul weight");
    const int M = int(x.rows()), K = int(x.shape[1]), N = int(W.rows());
    if (M == 0) return;
    gemm_nt(x.ptr<float>(), x.ld, W.ptr<float>(), W.ld, y.ptr<float>(), y.ld, M, N, K);
    if (bias)
      for (int m = 0; m < M; ++m)
        for (int n = 0; n < N; ++n) row_mut(y, m)[n] += bias.ptr<float>()[n];
  }

  static void rmsnorm_row(float* out, const float* x, const float* w, int64_t n, float eps) {
    double ss = 0;  // HF accumulates in fp32; a double sum only removes our rounding, not theirs
    for (int64_t j = 0; j < n; ++j) ss += double(x[j]) * x[j];
    float r = 1.f / std::sqrt(float(ss / double(n)) + eps);
    for (int64_t j = 0; j < n; ++j) out[j] = w[j] * (x[j] * r);
  }
  void rmsnorm(Tensor out, Tensor x, Tensor w, float eps) override {
    for (int64_t t = 0; t < x.rows(); ++t) rmsnorm_row(row_mut(out, t), row(x, t), w.ptr<float>(), x.shape[1], eps);
  }
  void add_rmsnorm(Tensor h, Tensor x, Tensor out, Tensor w, float eps) override {
    add(h, x);
    rmsnorm(out, h, w, eps);
  }
  void add(Tensor h, Tensor x) override {
    // as strict as the CUDA twin: an empty h would make this a silent no-op here and an error on the GPU
    BAMBA_CHECK(h && x && h.rows() == x.rows() && h.shape[1] == x.shape[1], "cpu backend: add: h [", h.rows(), ", ",
                h ? h.shape[1] : 0, "] and x [", x.rows(), ", ", x ? x.shape[1] : 0,
                "] must be the same non-empty shape");
    for (int64_t t = 0; t < h.rows(); ++t) {
      float* hr = row_mut(h, t);
      const float* xr = row(x, t);
      for (int64_t j = 0; j < h.shape[1]; ++j) hr[j] += xr[j];
    }
  }

  void conv1d_silu(Tensor out, Tensor xBC, Tensor weight, Tensor bias, Tensor conv_state) override {
    const int64_t CD = xBC.shape[1], K = weight.shape[1], W = K - 1;
    std::vector<float> window;  // [W + n, CD]: cached inputs, then this step's inputs
    for (int32_t s = 0; s < b_->n_seqs(); ++s) {
      const int32_t t0 = b_->seq_start[size_t(s)], n = b_->seq_len(s);
      const int32_t slot = b_->state_slot[size_t(s)];  // -1: a fresh sequence whose window is not kept
      window.assign(size_t((W + n) * CD), 0.f);
      if (b_->past_len[size_t(s)] > 0) std::memcpy(window.data(), row(conv_state, slot), size_t(W * CD) * 4);
      for (int32_t i = 0; i < n; ++i) std::memcpy(&window[size_t((W + i) * CD)], row(xBC, t0 + i), size_t(CD) * 4);
      for (int32_t i = 0; i < n; ++i) {
        float* o = row_mut(out, t0 + i);
        for (int64_t c = 0; c < CD; ++c) {
          float acc = bias ? bias.ptr<float>()[c] : 0.f;
          for (int64_t k = 0; k < K; ++k) acc += row(weight, c)[k] * window[size_t((i + k) * CD + c)];
          o[c] = silu(acc);
        }
      }
      for (int32_t i = 0; i < n; ++i)  // per-position states (speculative decoding): the window after token i
        if (const int32_t keep = b_->state_after_slot(t0 + i); keep >= 0)
          std::memcpy(row_mut(conv_state, keep), &window[size_t((i + 1) * CD)], size_t(W * CD) * 4);
      if (slot >= 0) std::memcpy(row_mut(conv_state, slot), &window[size_t(n * CD)], size_t(W * CD) * 4);  // last K-1
    }
  }

  void ssd(Tensor y, Tensor xBC, Tensor dt, Tensor A_log, Tensor D, Tensor dt_bias, Tensor ssm_state,
           const MambaOpsConfig& c) override {
    const int64_t nh = c.n_heads, P = c.d_head, G = c.n_groups, N = c.d_state, I = nh * P;
    const int64_t heads_per_group = nh / G;
    std::vector<float> scratch;  // [nh, P, N] the running state of a sequence with no slot (-1: not kept)
    for (int32_t s = 0; s < b_->n_seqs(); ++s) {
      const int32_t t0 = b_->seq_start[size_t(s)], n = b_->seq_len(s), slot = b_->state_slot[size_t(s)];
      if (slot < 0) scratch.resize(size_t(nh * P * N));
      float* state_all = slot >= 0 ? row_mut(ssm_state, slot) : scratch.data();  // [nh, P, N]
      if (b_->past_len[size_t(s)] == 0) std::fill_n(state_all, nh * P * N, 0.f);
      for (int64_t h = 0; h < nh; ++h) {
        const int64_t g = h / heads_per_group;
        const float A = -std::exp(A_log.ptr<float>()[h]);
        float* S = state_all + h * P * N;  // [P, N]
        for (int32_t i = 0; i < n; ++i) {
          const float* u = row(xBC, t0 + i);
          const float* x = u + h * P;             // [P]
          const float* B = u + I + g * N;         // [N]
          const float* C = u + I + G * N + g * N; // [N]
          float delta = softplus(row(dt, t0 + i)[h] + dt_bias.ptr<float>()[h]);
          delta = std::min(std::max(delta, c.time_step_min), c.time_step_max);
          const float dA = std::exp(delta * A);
          float* yr = row_mut(y, t0 + i) + h * P;
          for (int64_t p = 0; p < P; ++p) {
            float* Sp = S + p * N;
            const float dx = delta * x[p];
            float acc = 0.f;
            for (int64_t k = 0; k < N; ++k) {
              Sp[k] = dA * Sp[k] + dx * B[k];
              acc += C[k] * Sp[k];
            }
            yr[p] = acc + D.ptr<float>()[h] * x[p];
          }
          if (const int32_t keep = b_->state_after_slot(t0 + i); keep >= 0)  // per-position state
            std::copy_n(S, P * N, row_mut(ssm_state, keep) + h * P * N);
        }
      }
    }
  }

  void gated_rmsnorm(Tensor out, Tensor y, Tensor z, Tensor w, int64_t group_size, float eps) override {
    const int64_t I = y.shape[1];
    std::vector<float> g(static_cast<size_t>(I));
    for (int64_t t = 0; t < y.rows(); ++t) {
      for (int64_t j = 0; j < I; ++j) g[size_t(j)] = row(y, t)[j] * silu(row(z, t)[j]);
      for (int64_t a = 0; a < I; a += group_size)
        rmsnorm_row(row_mut(out, t) + a, &g[size_t(a)], w.ptr<float>() + a, group_size, eps);
    }
  }

  void attention(Tensor out, Tensor qkv, Tensor k_pages, Tensor v_pages, const AttentionOpsConfig& c) override {
    const int64_t nq = c.n_heads, nkv = c.n_kv_heads, dh = c.head_dim, R = c.rotary_dim, bs = c.block_size;
    const int64_t half = R / 2, rep = nq / nkv;
    std::vector<float> inv_freq = rope_inv_freq(c);
    auto rope = [&](float* v, float pos) {
      for (int64_t j = 0; j < half; ++j) {
        const float a = pos * inv_freq[size_t(j)], co = std::cos(a), si = std::sin(a);
        const float x0 = v[j], x1 = v[j + half];
        v[j] = x0 * co - x1 * si;
        v[j + half] = x1 * co + x0 * si;
      }
    };
    auto kv_row = [&](Tensor pages, int32_t s, int64_t pos) {  // -> [nkv, dh] of cache row pos of sequence s
      int32_t block = b_->block_table[size_t(s * b_->max_blocks + pos / bs)];
      return pages.ptr<float>() + (int64_t(block) * bs + pos % bs) * nkv * dh;
    };
    std::vector<float> scores;
    for (int32_t s = 0; s < b_->n_seqs(); ++s) {
      const int32_t t0 = b_->seq_start[size_t(s)], n = b_->seq_len(s), past = b_->past_len[size_t(s)];
      for (int32_t i = 0; i < n; ++i) {
        float* q = row_mut(qkv, t0 + i);
        const float pos = float(b_->positions[size_t(t0 + i)]);
        for (int64_t h = 0; h < nq + nkv; ++h) rope(q + h * dh, pos);  // q heads, then k heads
        std::memcpy(kv_row(k_pages, s, past + i), q + nq * dh, size_t(nkv * dh) * 4);
        std::memcpy(kv_row(v_pages, s, past + i), q + (nq + nkv) * dh, size_t(nkv * dh) * 4);
      }
      for (int32_t i = 0; i < n; ++i) {
        const int64_t len = past + i + 1;
        scores.resize(size_t(len));
        for (int64_t h = 0; h < nq; ++h) {
          const float* q = row(qkv, t0 + i) + h * dh;
          const int64_t kh = h / rep;
          float mx = -INFINITY;
          for (int64_t p = 0; p < len; ++p) {
            const float* k = kv_row(k_pages, s, p) + kh * dh;
            float d = 0.f;
            for (int64_t e = 0; e < dh; ++e) d += q[e] * k[e];
            scores[size_t(p)] = d * c.scale;
            mx = std::max(mx, scores[size_t(p)]);
          }
          float sum = 0.f;
          for (auto& x : scores) sum += (x = std::exp(x - mx));
          float* o = row_mut(out, t0 + i) + h * dh;
          std::fill_n(o, dh, 0.f);
          for (int64_t p = 0; p < len; ++p) {
            const float* v = kv_row(v_pages, s, p) + kh * dh;
            const float wgt = scores[size_t(p)] / sum;
            for (int64_t e = 0; e < dh; ++e) o[e] += wgt * v[e];
          }
        }
      }
    }
  }

  void swiglu(Tensor out, Tensor gate_up) override {
    const int64_t F = out.shape[1];
    for (int64_t t = 0; t < out.rows(); ++t) {
      const float* g = row(gate_up, t);
      float* o = row_mut(out, t);
      for (int64_t j = 0; j < F; ++j) o[j] = silu(g[j]) * g[F + j];
    }
  }

  // ---- ops of the relatives
  void scale(Tensor x, float s) override {
    BAMBA_CHECK(x, "cpu backend: scale of an empty tensor");
    for (int64_t t = 0; t < x.rows(); ++t)
      for (int64_t j = 0; j < x.shape[1]; ++j) row_mut(x, t)[j] *= s;
  }
  void copy(Tensor dst, Tensor src) override {
    BAMBA_CHECK(dst && src && dst.rows() == src.rows() && dst.shape[1] == src.shape[1], "cpu backend: copy: dst [",
                dst.rows(), ", ", dst ? dst.shape[1] : 0, "] and src [", src.rows(), ", ", src ? src.shape[1] : 0,
                "] must be the same non-empty shape");
    for (int64_t t = 0; t < dst.rows(); ++t) std::memcpy(row_mut(dst, t), row(src, t), size_t(dst.shape[1]) * 4);
  }
  void relu2(Tensor out, Tensor x) override {
    for (int64_t t = 0; t < out.rows(); ++t)
      for (int64_t j = 0; j < out.shape[1]; ++j) {
        const float r = std::max(row(x, t)[j], 0.f);
        row_mut(out, t)[j] = r * r;
      }
  }
  void geglu(Tensor out, Tensor gate_up) override {
    const int64_t F = out.shape[1];
    for (int64_t t = 0; t < out.rows(); ++t) {
      const float* g = row(gate_up, t);
      for (int64_t j = 0; j < F; ++j) row_mut(out, t)[j] = gelu(g[j]) * g[F + j];
    }
  }
  void silu_gate(Tensor out, Tensor y, Tensor z) override {
    for (int64_t t = 0; t < out.rows(); ++t)
      for (int64_t j = 0; j < out.shape[1]; ++j) row_mut(out, t)[j] = row(y, t)[j] * silu(row(z, t)[j]);
  }

  void moe_route(Tensor experts, Tensor weights, Tensor logits, Tensor bias, const MoeOpsConfig& c) override {
    const grad::MoeRouteDims d{c.routing == MoeRouting::SoftmaxTopK, c.norm_topk_prob, c.routed_scaling};
    const grad::Mat<int32_t> ex{experts.ptr<int32_t>(), experts.rows(), c.top_k, experts.ld};
    grad::moe_route<float>(ex, mat(weights).cols_slice(0, c.top_k), mat(logits).cols_slice(0, c.n_experts), vec(bias),
                           c.n_group, c.topk_group, d);
  }

  // Expert by expert: gather its tokens, one GEMM up, the activation, one GEMM down, scatter-add × weight.
  void moe_experts(Tensor out, Tensor x, Tensor up, Tensor down, Tensor experts, Tensor weights, ExpertAct act,
                   const MoeScratch& sc) override {
    const int64_t T = x.rows(), H = x.shape[1], k = experts.shape[1], E = up.shape[0], U = up.shape[1],
                  F = down.shape[2];
    for (int64_t t = 0; t < T; ++t) std::fill_n(row_mut(out, t), H, 0.f);
    std::vector<int64_t> members;  // token * k + slot
    for (int64_t e = 0; e < E; ++e) {
      members.clear();
      for (int64_t t = 0; t < T; ++t)
        for (int64_t j = 0; j < k; ++j)
          if (experts.ptr<int32_t>()[t * experts.ld + j] == e) members.push_back(t * k + j);
      const int n = int(members.size());
      if (!n) continue;
      Tensor xs = sc.down.slice_rows(0, n);  // gathered inputs [n, H] (the down buffer is free until the GEMM)
      for (int i = 0; i < n; ++i) std::memcpy(row_mut(xs, i), row(x, members[size_t(i)] / k), size_t(H) * 4);
      Tensor u = sc.up.slice_rows(0, n), a = sc.act.slice_rows(0, n);
      gemm_nt(xs.ptr<float>(), xs.ld, up.ptr<float>() + e * U * H, H, u.ptr<float>(), u.ld, n, U, H);
      if (act == ExpertAct::SwiGLU) swiglu(a, u);
      else relu2(a, u);
      Tensor d = sc.down.slice_rows(0, n);
      gemm_nt(a.ptr<float>(), a.ld, down.ptr<float>() + e * H * F, F, d.ptr<float>(), d.ld, n, H, F);
      for (int i = 0; i < n; ++i) {
        const int64_t t = members[size_t(i)] / k, j = members[size_t(i)] % k;
        const float wgt = row(weights, t)[j];
        for (int64_t c = 0; c < H; ++c) row_mut(out, t)[c] += wgt * row(d, i)[c];
      }
    }
  }

  // ---- backward: the kernels of backend/cpu/grad_kernels.h in fp32; BLAS for the matmuls.
  void check_training_batch(const char* op) const {
    for (int32_t s = 0; s < b_->n_seqs(); ++s)
      if (b_->past_len[size_t(s)] != 0)
        fail(op, "_backward: sequence ", s, " continues from a cache (past_len ", b_->past_len[size_t(s)],
             "); training runs whole sequences from a zero state");
  }
  std::span<const int32_t> seqs() const { return b_->seq_start; }

  void embed_backward(Tensor dtable, Tensor dout, int32_t padding_idx) override {
    grad::embed_backward<float>(mat(dtable), mat(dout), b_->tokens, padding_idx);
  }
  void matmul_backward(Tensor dx, Tensor dW, Tensor dbias, Tensor dy, Tensor x, Tensor W) override {
    const int M = int(dy.rows()), N = int(dy.shape[1]), K = int(x.shape[1]);
    if (M == 0) return;
    if (dx)  // dx [M, K] = dy [M, N] · W [N, K]
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, K, N, 1.f, dy.ptr<float>(), int(dy.ld),
                  W.ptr<float>(), int(W.ld), 0.f, dx.ptr<float>(), int(dx.ld));
    if (dW)  // dW [N, K] += dyᵀ · x
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, N, K, M, 1.f, dy.ptr<float>(), int(dy.ld), x.ptr<float>(),
                  int(x.ld), 1.f, dW.ptr<float>(), int(dW.ld));
    if (dbias)
      for (int n = 0; n < N; ++n) {
        float acc = 0.f;
        for (int m = 0; m < M; ++m) acc += row(dy, m)[n];
        dbias.ptr<float>()[n] += acc;
      }
  }
  void rmsnorm_backward(Tensor dx, Tensor dw, Tensor dout, Tensor x, Tensor w, float eps) override {
    grad::rmsnorm_backward<float>(mat(dx), vec(dw), mat(dout), mat(x), w.ptr<float>(), eps, false);
  }
  void add_rmsnorm_backward(Tensor dh, Tensor dw, Tensor dout, Tensor h, Tensor w, float eps) override {
    grad::rmsnorm_backward<float>(mat(dh), vec(dw), mat(dout), mat(h), w.ptr<float>(), eps, true);
  }
  void conv1d_silu_backward(Tensor dxBC, Tensor dweight, Tensor dbias, Tensor dout, Tensor xBC, Tensor weight,
                            Tensor bias) override {
    check_training_batch("conv1d_silu");
    grad::conv1d_silu_backward<float>(mat(dxBC), mat(dweight), vec(dbias), mat(dout), mat(xBC), mat(weight), vec(bias),
                                      seqs());
  }
  void ssd_backward(Tensor dxBC, Tensor ddt, Tensor dA_log, Tensor dD, Tensor ddt_bias, Tensor dstate0, Tensor dy,
                    Tensor xBC, Tensor dt, Tensor A_log, Tensor D, Tensor dt_bias, Tensor state0,
                    const MambaOpsConfig& c) override {
    check_training_batch("ssd");
    const grad::SsdDims d{c.n_heads, c.d_head, c.n_groups, c.d_state, c.chunk_size, c.time_step_min, c.time_step_max};
    grad::ssd_backward<float>(mat(dxBC), mat(ddt), dA_log.ptr<float>(), dD.ptr<float>(), ddt_bias.ptr<float>(),
                              vec(dstate0), mat(dy), mat(xBC), mat(dt), A_log.ptr<float>(), D.ptr<float>(),
                              dt_bias.ptr<float>(), vec(state0), seqs(), d);
  }
  void gated_rmsnorm_backward(Tensor dy, Tensor dz, Tensor dw, Tensor dout, Tensor y, Tensor z, Tensor w,
                              int64_t group_size, float eps) override {
    grad::gated_rmsnorm_backward<float>(mat(dy), mat(dz), vec(dw), mat(dout), mat(y), mat(z), w.ptr<float>(),
                                        group_size, eps);
  }
  void attention_backward(Tensor dqkv, Tensor dout, Tensor qkv, const AttentionOpsConfig& c) override {
    check_training_batch("attention");
    const std::vector<float> inv_freq = rope_inv_freq(c);
    const grad::AttnDims d{c.n_heads, c.n_kv_heads, c.head_dim, c.rotary_dim, c.scale};
    grad::attention_backward<float>(mat(dqkv), mat(dout), mat(qkv), inv_freq.data(), b_->positions, seqs(), d);
  }
  void geglu_backward(Tensor dgate_up, Tensor dout, Tensor gate_up) override {
    grad::geglu_backward<float>(mat(dgate_up), mat(dout), mat(gate_up));
  }
  void moe_route_backward(Tensor dlogits, Tensor dweights, Tensor logits, Tensor experts, const MoeOpsConfig& c) override {
    const grad::MoeRouteDims d{c.routing == MoeRouting::SoftmaxTopK, c.norm_topk_prob, c.routed_scaling};
    const grad::Mat<const int32_t> ex{experts.ptr<int32_t>(), experts.rows(), experts.shape[1], experts.ld};
    grad::moe_route_backward<float>(mat(dlogits), mat(dweights), mat(logits), ex, d);
  }
  void moe_experts_backward(Tensor dx, Tensor dup, Tensor ddown, Tensor dweights, Tensor dout, Tensor x, Tensor up,
                            Tensor down, Tensor experts, Tensor weights, ExpertAct act, const MoeScratch&) override {
    const int64_t U = up.shape[1], F = down.shape[2];
    BAMBA_CHECK(up.contiguous() && down.contiguous() && dup.contiguous() && ddown.contiguous(),
                "cpu moe_experts_backward: expert weights and their gradients must be contiguous");
    const grad::Mat<const int32_t> ex{experts.ptr<int32_t>(), experts.rows(), experts.shape[1], experts.ld};
    grad::moe_experts_backward<float>(mat(dx), dup.ptr<float>(), ddown.ptr<float>(), mat(dweights), mat(dout), mat(x),
                                      up.ptr<float>(), down.ptr<float>(), ex, mat(weights), U, F,
                                      act == ExpertAct::SwiGLU);
  }
  void relu2_backward(Tensor dx, Tensor dout, Tensor x) override {
    grad::relu2_backward<float>(mat(dx), mat(dout), mat(x));
  }
  void silu_gate_backward(Tensor dy, Tensor dz, Tensor dout, Tensor y, Tensor z) override {
    grad::silu_gate_backward<float>(mat(dy), mat(dz), mat(dout), mat(y), mat(z));
  }
  void swiglu_backward(Tensor dgate_up, Tensor dout, Tensor gate_up) override {
    grad::swiglu_backward<float>(mat(dgate_up), mat(dout), mat(gate_up));
  }
  double lm_head_cross_entropy(Tensor dx, Tensor dW, Tensor x, Tensor W, std::span<const int32_t> targets,
                               double ce_scale, double z_scale, int64_t chunk_rows) override {
    const int64_t V = W.rows(), H = W.shape[1];
    BAMBA_CHECK(int64_t(targets.size()) == x.rows(), "lm_head_cross_entropy: ", targets.size(), " targets for ",
                x.rows(), " rows");
    for (int32_t t : targets)
      BAMBA_CHECK(t == -100 || (t >= 0 && t < V), "label ", t, " is out of range for vocab_size ", V, " (or -100)");
    auto logits = [&](int64_t r0, int64_t r1, float* out) {  // [r1 - r0, V] = x[r0:r1] · Wᵀ
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(r1 - r0), int(V), int(H), 1.f, row(x, r0), int(x.ld),
                  W.ptr<float>(), int(W.ld), 0.f, out, int(V));
    };
    auto back = [&](int64_t r0, int64_t r1, float* g) {  // g = dlogits [r1 - r0, V]
      if (dx)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(r1 - r0), int(H), int(V), 1.f, g, int(V),
                    W.ptr<float>(), int(W.ld), 0.f, row_mut(dx, r0), int(dx.ld));
      if (dW)
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, int(V), int(H), int(r1 - r0), 1.f, g, int(V), row(x, r0),
                    int(x.ld), 1.f, dW.ptr<float>(), int(dW.ld));
    };
    return grad::cross_entropy_chunks<float>(x.rows(), V, targets, ce_scale, z_scale, chunk_rows, logits, back);
  }

  void gather_logit_rows(Tensor out, Tensor x) override {
    for (size_t i = 0; i < b_->logit_rows.size(); ++i)
      std::memcpy(row_mut(out, int64_t(i)), row(x, b_->logit_rows[i]), size_t(x.shape[1]) * 4);
  }

  // The sequential definition of SamplingParams: sort to find the top-k and top-p thresholds (values; ties
  // at a threshold are kept), then walk the kept tokens in index order to the drawn cumulative mass.
  void token_logprobs(Tensor logits, std::span<const int32_t> rows, std::span<const int32_t> targets, float* logprob,
                      int32_t* greedy) override {
    check_f32(logits, "token_logprobs logits");
    const int64_t V = logits.shape[1];
    for (size_t i = 0; i < rows.size(); ++i) {
      BAMBA_CHECK(rows[i] >= 0 && rows[i] < logits.rows() && targets[i] >= 0 && targets[i] < V,
                  "token_logprobs: row or target out of range");
      const float* x = row(logits, rows[i]);
      const float m = *std::max_element(x, x + V);
      double s = 0;
      for (int64_t j = 0; j < V; ++j) s += std::exp(double(x[j]) - m);
      logprob[i] = float(double(x[targets[i]]) - m - std::log(s));
      greedy[i] = int32_t(std::max_element(x, x + V) - x);
    }
  }

  void process_logits(Tensor logits, const LogitsProcessing& p) override {
    check_f32(logits, "process_logits logits");
    const int64_t V = logits.shape[1];
    for (const LogitsRow& r : p.rows) {
      BAMBA_CHECK(r.row >= 0 && r.row < logits.rows(), "process_logits: row ", r.row, " out of range");
      process_logits_row(row_mut(logits, r.row), V, r, p.edits.data() + r.edit_begin,
                         r.mask_offset >= 0 ? p.masks.data() + r.mask_offset : nullptr);
    }
  }

  void sample(Tensor logits, std::span<const SamplingParams> params, int32_t* out_tokens) override {
    check_f32(logits, "sample logits");
    const int64_t V = logits.shape[1];
    std::vector<float> z(static_cast<size_t>(V)), sorted;
    for (int64_t r = 0; r < logits.rows(); ++r) {
      const SamplingParams& sp = params[size_t(r)];
      const float* x = row(logits, r);
      if (sp.temperature <= 0.f || sp.top_k == 1) {
        out_tokens[r] = int32_t(std::max_element(x, x + V) - x);
        continue;
      }
      for (int64_t j = 0; j < V; ++j) z[size_t(j)] = x[j] / sp.temperature;
      sorted = z;
      std::sort(sorted.begin(), sorted.end(), std::greater<float>());
      const float m = sorted[0];
      float thr = sp.top_k > 0 && sp.top_k < V ? sorted[size_t(sp.top_k - 1)] : sorted.back();
      if (sp.top_p < 1.f) {
        double total = 0;
        for (float v : sorted) if (v >= thr) total += std::exp(double(v) - m);
        double acc = 0;
        for (float v : sorted) {
          if (v < thr) break;
          acc += std::exp(double(v) - m);
          if (acc >= double(sp.top_p) * total) { thr = v; break; }
        }
      }
      double mass = 0;
      for (int64_t j = 0; j < V; ++j) if (z[size_t(j)] >= thr) mass += std::exp(double(z[size_t(j)]) - m);
      const double target = double(hash_uniform(sp.seed, 0, 0.f, 1.f)) * mass;
      double acc = 0;
      int32_t pick = -1;
      for (int64_t j = 0; j < V; ++j) {
        if (z[size_t(j)] < thr) continue;
        pick = int32_t(j);
        acc += std::exp(double(z[size_t(j)]) - m);
        if (acc > target) break;
      }
      out_tokens[r] = pick;
    }
  }

 private:
  std::unordered_map<void*, size_t> allocs_;
  const StepBatch* b_ = nullptr;
  bool invariant_ = false;  // set_batch_invariant
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend() { return std::make_unique<CpuBackend>(); }

}  // namespace bamba
