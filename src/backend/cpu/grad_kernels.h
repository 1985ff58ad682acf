// The training kernels of the CPU backend: each op's forward (in the form a training step runs it: whole
// sequences from a zero or given state, no cache) and its backward, templated on the scalar so that the same
// code runs in fp32 in the backend and in float64 in the finite-difference tests (tests/backward_test.cpp).
// Plain loops in a fixed order: the result never depends on threads. Conventions: activation gradients are
// written (=), parameter gradients are accumulated (+=) so micro-batches add up. Math: docs/bamba-model.md §3.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <span>
#include <type_traits>
#include <vector>

namespace bamba::grad {

// A 2-D strided view: row r starts at p + r * ld.
template <typename T>
struct Mat {
  T* p = nullptr;
  int64_t rows = 0, cols = 0, ld = 0;
  Mat() = default;
  Mat(T* p_, int64_t rows_, int64_t cols_, int64_t ld_) : p(p_), rows(rows_), cols(cols_), ld(ld_) {}
  template <typename U>  // Mat<float> -> Mat<const float>
    requires(std::is_same_v<const U, T> && !std::is_same_v<U, T>)
  Mat(const Mat<U>& o) : p(o.p), rows(o.rows), cols(o.cols), ld(o.ld) {}
  T* operator[](int64_t r) const { return p + r * ld; }
  explicit operator bool() const { return p != nullptr; }
  Mat cols_slice(int64_t b, int64_t e) const { return {p + b, rows, e - b, ld}; }
};

template <typename T> inline T sigmoid(T x) { return T(1) / (T(1) + std::exp(-x)); }
template <typename T> inline T silu(T x) { return x / (T(1) + std::exp(-x)); }
template <typename T> inline T silu_grad(T x) {  // d silu / dx = σ(x)(1 + x(1 − σ(x)))
  const T s = sigmoid(x);
  return s * (T(1) + x * (T(1) - s));
}
// torch softplus (beta 1, threshold 20) and its derivative
template <typename T> inline T softplus(T x) { return x > T(20) ? x : std::log1p(std::exp(x)); }
template <typename T> inline T softplus_grad(T x) { return x > T(20) ? T(1) : sigmoid(x); }

// ---- embedding: out[t] = table[tokens[t]]; the padding_idx row gets no gradient (nn.Embedding), -1 = none
template <typename T>
void embed_backward(Mat<T> dtable, Mat<const T> dout, std::span<const int32_t> tokens, int32_t padding_idx) {
  for (int64_t t = 0; t < dout.rows; ++t) {
    if (tokens[size_t(t)] == padding_idx) continue;
    T* d = dtable[tokens[size_t(t)]];
    for (int64_t j = 0; j < dout.cols; ++j) d[j] += dout[t][j];
  }
}

// ---- y = x Wᵀ + b (naive; the backend uses BLAS for fp32)
template <typename T>
void matmul(Mat<T> y, Mat<const T> x, Mat<const T> W, const T* bias) {
  for (int64_t m = 0; m < x.rows; ++m)
    for (int64_t n = 0; n < W.rows; ++n) {
      T acc = bias ? bias[n] : T(0);
      for (int64_t k = 0; k < x.cols; ++k) acc += x[m][k] * W[n][k];
      y[m][n] = acc;
    }
}
// dx = dy W; dW += dyᵀ x; dbias += Σ_m dy[m] (each optional)
template <typename T>
void matmul_backward(Mat<T> dx, Mat<T> dW, T* dbias, Mat<const T> dy, Mat<const T> x, Mat<const T> W) {
  const int64_t M = dy.rows, N = dy.cols, K = x.cols;
  if (dx)
    for (int64_t m = 0; m < M; ++m)
      for (int64_t k = 0; k < K; ++k) {
        T acc = 0;
        for (int64_t n = 0; n < N; ++n) acc += dy[m][n] * W[n][k];
        dx[m][k] = acc;
      }
  if (dW)
    for (int64_t n = 0; n < N; ++n)
      for (int64_t k = 0; k < K; ++k) {
        T acc = 0;
        for (int64_t m = 0; m < M; ++m) acc += dy[m][n] * x[m][k];
        dW[n][k] += acc;
      }
  if (dbias)
    for (int64_t n = 0; n < N; ++n) {
      T acc = 0;
      for (int64_t m = 0; m < M; ++m) acc += dy[m][n];
      dbias[n] += acc;
    }
}

// ---- RMSNorm: out = w ⊙ x·r, r = 1/sqrt(mean(x²) + eps), over rows of n
template <typename T>
T rms_rstd(const T* x, int64_t n, T eps) {
  double ss = 0;  // as the forward op (cpu_backend.cpp): a double sum of squares
  for (int64_t j = 0; j < n; ++j) ss += double(x[j]) * double(x[j]);
  return T(1) / std::sqrt(T(ss / double(n)) + eps);
}
template <typename T>
void rmsnorm_row(T* out, const T* x, const T* w, int64_t n, T eps) {
  const T r = rms_rstd(x, n, eps);
  for (int64_t j = 0; j < n; ++j) out[j] = w[j] * (x[j] * r);
}
// dx (= or += with accumulate) and dw += for one row. dx_j = r·g_j − x_j·r³·mean(g·x), g = dout ⊙ w.
template <typename T>
void rmsnorm_row_backward(T* dx, T* dw, const T* dout, const T* x, const T* w, int64_t n, T eps, bool accumulate) {
  const T r = rms_rstd(x, n, eps);
  T gx = 0;
  for (int64_t j = 0; j < n; ++j) gx += dout[j] * w[j] * x[j];
  const T c = gx * r * r * r / T(n);
  for (int64_t j = 0; j < n; ++j) {
    const T v = r * dout[j] * w[j] - x[j] * c;
    dx[j] = accumulate ? dx[j] + v : v;
    if (dw) dw[j] += dout[j] * x[j] * r;
  }
}
template <typename T>
void rmsnorm(Mat<T> out, Mat<const T> x, const T* w, T eps) {
  for (int64_t t = 0; t < x.rows; ++t) rmsnorm_row(out[t], x[t], w, x.cols, eps);
}
template <typename T>
void rmsnorm_backward(Mat<T> dx, T* dw, Mat<const T> dout, Mat<const T> x, const T* w, T eps, bool accumulate) {
  for (int64_t t = 0; t < x.rows; ++t) rmsnorm_row_backward(dx[t], dw, dout[t], x[t], w, x.cols, eps, accumulate);
}

// ---- Nemotron-H's MLP activation: out = relu(x)²
template <typename T>
void relu2(Mat<T> out, Mat<const T> x) {
  for (int64_t t = 0; t < out.rows; ++t)
    for (int64_t j = 0; j < out.cols; ++j) out[t][j] = x[t][j] > T(0) ? x[t][j] * x[t][j] : T(0);
}
template <typename T>
void relu2_backward(Mat<T> dx, Mat<const T> dout, Mat<const T> x) {
  for (int64_t t = 0; t < dout.rows; ++t)
    for (int64_t j = 0; j < dout.cols; ++j) dx[t][j] = x[t][j] > T(0) ? dout[t][j] * T(2) * x[t][j] : T(0);
}

// ---- GeGLU (Zamba2's MLP): out = gelu(gate) ⊙ up, gate_up = gate | up, the exact GELU x·Φ(x)
template <typename T> inline T gelu(T x) { return T(0.5) * x * (T(1) + std::erf(x / std::sqrt(T(2)))); }
template <typename T> inline T gelu_grad(T x) {  // Φ(x) + x·φ(x)
  const T pi = T(3.14159265358979323846);
  return T(0.5) * (T(1) + std::erf(x / std::sqrt(T(2)))) + x * std::exp(T(-0.5) * x * x) / std::sqrt(T(2) * pi);
}
template <typename T>
void geglu(Mat<T> out, Mat<const T> gate_up) {
  const int64_t F = out.cols;
  for (int64_t t = 0; t < out.rows; ++t)
    for (int64_t j = 0; j < F; ++j) out[t][j] = gelu(gate_up[t][j]) * gate_up[t][F + j];
}
template <typename T>
void geglu_backward(Mat<T> dgate_up, Mat<const T> dout, Mat<const T> gate_up) {
  const int64_t F = dout.cols;
  for (int64_t t = 0; t < dout.rows; ++t)
    for (int64_t j = 0; j < F; ++j) {
      const T g = gate_up[t][j], u = gate_up[t][F + j];
      dgate_up[t][j] = dout[t][j] * u * gelu_grad(g);
      dgate_up[t][F + j] = dout[t][j] * gelu(g);
    }
}

// ---- mixture of experts (docs/family.md §1, §2). The routing's choice of experts is piecewise constant: no
// gradient flows through it (as in PyTorch, where topk's indices carry none); the weights of the chosen experts
// are differentiable functions of their router logits.
// Routing weights from the logits of the chosen experts: softmax over the k (GraniteMoeHybrid), or the sigmoid
// scores, renormalised (norm_topk_prob) and × routed_scaling (Nemotron-H; the correction bias only chooses).
struct MoeRouteDims {
  bool softmax;  // else sigmoid
  bool norm_topk_prob;
  double routed_scaling;
};
template <typename T>
void moe_route_weights(Mat<T> weights, Mat<const T> logits, Mat<const int32_t> experts, const MoeRouteDims& d) {
  const int64_t k = experts.cols;
  for (int64_t t = 0; t < logits.rows; ++t) {
    const T* x = logits[t];
    const int32_t* idx = experts[t];
    T* w = weights[t];
    T sum = 0;
    if (d.softmax) {
      T m = x[idx[0]];
      for (int64_t j = 1; j < k; ++j) m = std::max(m, x[idx[j]]);
      for (int64_t j = 0; j < k; ++j) sum += (w[j] = std::exp(x[idx[j]] - m));
      for (int64_t j = 0; j < k; ++j) w[j] /= sum;
      continue;
    }
    for (int64_t j = 0; j < k; ++j) sum += (w[j] = sigmoid(x[idx[j]]));
    for (int64_t j = 0; j < k; ++j) w[j] = (d.norm_topk_prob ? w[j] / (sum + T(1e-20)) : w[j]) * T(d.routed_scaling);
  }
}
// The routing forward: experts [T, k] (=), each token's k largest, largest first, the lower index first among equals
// (the CUDA router's rule, tests/emu/moe_emu.cpp), chosen on the logits (softmax) or on σ(logits) + bias (sigmoid:
// the correction bias only chooses); with topk_group < n_group only the experts of the topk_group groups whose two
// best sum highest are candidates (DeepSeek-V3's grouped routing; the lower group first among equals; experts of a
// dropped group, or past the last whole group, are never chosen, not even over -inf). Then weights [T, k] (=) as
// moe_route_weights gives them. bias [E] or null.
template <typename T>
void moe_route(Mat<int32_t> experts, Mat<T> weights, Mat<const T> logits, const T* bias, int64_t n_group,
               int64_t topk_group, const MoeRouteDims& d) {
  const int64_t E = logits.cols, k = experts.cols, per = E / n_group;
  const bool grouped = !d.softmax && topk_group < n_group;
  std::vector<T> choose(static_cast<size_t>(E));
  std::vector<int32_t> order;
  std::vector<std::pair<T, int64_t>> groups;
  for (int64_t t = 0; t < logits.rows; ++t) {
    const T* x = logits[t];
    for (int64_t e = 0; e < E; ++e) choose[size_t(e)] = d.softmax ? x[e] : sigmoid(x[e]) + (bias ? bias[e] : T(0));
    order.clear();
    if (grouped) {
      groups.clear();
      for (int64_t g = 0; g < n_group; ++g) {
        std::vector<T> v(choose.begin() + g * per, choose.begin() + (g + 1) * per);
        std::partial_sort(v.begin(), v.begin() + std::min<int64_t>(2, per), v.end(), std::greater<T>());
        groups.push_back({v[0] + (per > 1 ? v[1] : T(0)), g});
      }
      std::stable_sort(groups.begin(), groups.end(), [](auto& a, auto& b) { return a.first > b.first; });
      for (int64_t r = 0; r < topk_group; ++r)
        for (int64_t e = 0; e < per; ++e) order.push_back(int32_t(groups[size_t(r)].second * per + e));
    } else {
      for (int64_t e = 0; e < E; ++e) order.push_back(int32_t(e));
    }
    std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](int32_t a, int32_t b) {
      return choose[size_t(a)] > choose[size_t(b)] || (choose[size_t(a)] == choose[size_t(b)] && a < b);
    });
    std::copy_n(order.begin(), k, experts[t]);
  }
  moe_route_weights<T>(weights, logits, experts, d);
}
// dlogits [T, E] (=, zero outside the chosen experts) from dweights [T, k].
//   softmax: w = softmax(x_sel), dx_j = w_j (dw_j − Σ_i w_i dw_i)
//   sigmoid: w_j = c·s_j / (S + ε), S = Σ s: ds_m = c (dw_m / (S + ε) − Σ_j dw_j s_j / (S + ε)²); dx = ds·s(1 − s)
template <typename T>
void moe_route_backward(Mat<T> dlogits, Mat<const T> dweights, Mat<const T> logits, Mat<const int32_t> experts,
                        const MoeRouteDims& d) {
  const int64_t k = experts.cols;
  std::vector<T> w(static_cast<size_t>(k)), s(static_cast<size_t>(k));
  for (int64_t t = 0; t < logits.rows; ++t) {
    const T* x = logits[t];
    const int32_t* idx = experts[t];
    const T* dw = dweights[t];
    T* dx = dlogits[t];
    std::fill_n(dx, dlogits.cols, T(0));
    if (d.softmax) {
      moe_route_weights<T>({w.data(), 1, k, k}, {x, 1, logits.cols, logits.cols}, {idx, 1, k, k}, d);
      T wdw = 0;
      for (int64_t j = 0; j < k; ++j) wdw += w[size_t(j)] * dw[j];
      for (int64_t j = 0; j < k; ++j) dx[idx[j]] = w[size_t(j)] * (dw[j] - wdw);
      continue;
    }
    T S = 0, sdw = 0;
    for (int64_t j = 0; j < k; ++j) S += (s[size_t(j)] = sigmoid(x[idx[j]])), sdw += dw[j] * s[size_t(j)];
    const T c = T(d.routed_scaling), den = S + T(1e-20);
    for (int64_t j = 0; j < k; ++j) {
      const T ds = d.norm_topk_prob ? c * (dw[j] / den - sdw / (den * den)) : c * dw[j];
      dx[idx[j]] = ds * s[size_t(j)] * (T(1) - s[size_t(j)]);
    }
  }
}
// The routed experts: out[t] = Σ_j weights[t, j] · down[e] · act(up[e] · x[t]), e = experts[t, j]; up [E, U, H]
// (SwiGLU: U = 2F, gate rows first; relu²: U = F), down [E, H, F], both contiguous.
template <typename T>
void moe_expert_row(T* u, T* a, const T* x, const T* up_e, int64_t U, int64_t H, int64_t F, bool swiglu_act) {
  for (int64_t r = 0; r < U; ++r) {
    T acc = 0;
    for (int64_t c = 0; c < H; ++c) acc += up_e[r * H + c] * x[c];
    u[r] = acc;
  }
  for (int64_t f = 0; f < F; ++f) {
    const T v = std::max(u[f], T(0));
    a[f] = swiglu_act ? silu(u[f]) * u[F + f] : v * v;
  }
}
template <typename T>
void moe_experts(Mat<T> out, Mat<const T> x, const T* up, const T* down, Mat<const int32_t> experts,
                 Mat<const T> weights, int64_t U, int64_t F, bool swiglu_act) {
  const int64_t H = x.cols, k = experts.cols;
  std::vector<T> u(static_cast<size_t>(U)), a(static_cast<size_t>(F));
  for (int64_t t = 0; t < x.rows; ++t) {
    std::fill_n(out[t], H, T(0));
    for (int64_t j = 0; j < k; ++j) {
      const int64_t e = experts[t][j];
      moe_expert_row(u.data(), a.data(), x[t], up + e * U * H, U, H, F, swiglu_act);
      const T* down_e = down + e * H * F;
      for (int64_t h = 0; h < H; ++h) {
        T acc = 0;
        for (int64_t f = 0; f < F; ++f) acc += down_e[h * F + f] * a[size_t(f)];
        out[t][h] += weights[t][j] * acc;
      }
    }
  }
}
// Recomputes each (token, slot)'s up projection. dx [T, H] (=), dup [E, U, H] and ddown [E, H, F] (+=),
// dweights [T, k] (=: the gradient w.r.t. the routing weight, ⟨dout[t], expert_e(x[t])⟩).
template <typename T>
void moe_experts_backward(Mat<T> dx, T* dup, T* ddown, Mat<T> dweights, Mat<const T> dout, Mat<const T> x,
                          const T* up, const T* down, Mat<const int32_t> experts, Mat<const T> weights, int64_t U,
                          int64_t F, bool swiglu_act) {
  const int64_t H = x.cols, k = experts.cols;
  std::vector<T> u(static_cast<size_t>(U)), a(static_cast<size_t>(F)), g(static_cast<size_t>(F)),
      du(static_cast<size_t>(U));
  for (int64_t t = 0; t < x.rows; ++t) {
    std::fill_n(dx[t], H, T(0));
    for (int64_t j = 0; j < k; ++j) {
      const int64_t e = experts[t][j];
      const T* up_e = up + e * U * H;
      const T* down_e = down + e * H * F;
      const T w = weights[t][j];
      moe_expert_row(u.data(), a.data(), x[t], up_e, U, H, F, swiglu_act);
      // g = down_eᵀ · dout[t]: the gradient w.r.t. the activation, before the routing weight
      std::fill(g.begin(), g.end(), T(0));
      for (int64_t h = 0; h < H; ++h) {
        const T dh = dout[t][h];
        for (int64_t f = 0; f < F; ++f) g[size_t(f)] += down_e[h * F + f] * dh;
      }
      T dw = 0;
      for (int64_t f = 0; f < F; ++f) dw += a[size_t(f)] * g[size_t(f)];
      dweights[t][j] = dw;
      T* ddown_e = ddown + e * H * F;
      for (int64_t h = 0; h < H; ++h)
        for (int64_t f = 0; f < F; ++f) ddown_e[h * F + f] += w * dout[t][h] * a[size_t(f)];
      for (int64_t f = 0; f < F; ++f) {  // the activation's backward on da = w·g
        const T da = w * g[size_t(f)];
        if (swiglu_act) {
          du[size_t(f)] = da * u[size_t(F + f)] * silu_grad(u[size_t(f)]);
          du[size_t(F + f)] = da * silu(u[size_t(f)]);
        } else {
          du[size_t(f)] = u[size_t(f)] > T(0) ? da * T(2) * u[size_t(f)] : T(0);
        }
      }
      T* dup_e = dup + e * U * H;
      for (int64_t r = 0; r < U; ++r) {
        const T d = du[size_t(r)];
        for (int64_t c = 0; c < H; ++c) {
          dx[t][c] += d * up_e[r * H + c];
          dup_e[r * H + c] += d * x[t][c];
        }
      }
    }
  }
}

// ---- the ungated Mamba output (Falcon-H1 without mamba_rms_norm): out = y ⊙ silu(z)
template <typename T>
void silu_gate(Mat<T> out, Mat<const T> y, Mat<const T> z) {
  for (int64_t t = 0; t < out.rows; ++t)
    for (int64_t j = 0; j < out.cols; ++j) out[t][j] = y[t][j] * silu(z[t][j]);
}
template <typename T>
void silu_gate_backward(Mat<T> dy, Mat<T> dz, Mat<const T> dout, Mat<const T> y, Mat<const T> z) {
  for (int64_t t = 0; t < dout.rows; ++t)
    for (int64_t j = 0; j < dout.cols; ++j) {
      dy[t][j] = dout[t][j] * silu(z[t][j]);
      dz[t][j] = dout[t][j] * y[t][j] * silu_grad(z[t][j]);
    }
}

// ---- SwiGLU: out = silu(gate) ⊙ up, gate_up = gate | up
template <typename T>
void swiglu(Mat<T> out, Mat<const T> gate_up) {
  const int64_t F = out.cols;
  for (int64_t t = 0; t < out.rows; ++t)
    for (int64_t j = 0; j < F; ++j) out[t][j] = silu(gate_up[t][j]) * gate_up[t][F + j];
}
template <typename T>
void swiglu_backward(Mat<T> dgate_up, Mat<const T> dout, Mat<const T> gate_up) {
  const int64_t F = dout.cols;
  for (int64_t t = 0; t < dout.rows; ++t)
    for (int64_t j = 0; j < F; ++j) {
      const T g = gate_up[t][j], u = gate_up[t][F + j];
      dgate_up[t][j] = dout[t][j] * u * silu_grad(g);
      dgate_up[t][F + j] = dout[t][j] * silu(g);
    }
}

// ---- causal depthwise conv + SiLU over each sequence [seq_start[s], seq_start[s+1]) from zero padding.
// v[t,c] = bias[c] + Σ_k w[c,k]·x[t−(K−1)+k, c];  out = silu(v).  weight [CD, K]
template <typename T>
T conv_pre(Mat<const T> x, Mat<const T> w, const T* bias, int64_t t0, int64_t t, int64_t c) {
  const int64_t K = w.cols;
  T acc = bias ? bias[c] : T(0);
  for (int64_t k = 0; k < K; ++k) {
    const int64_t src = t - (K - 1) + k;
    if (src >= t0) acc += w[c][k] * x[src][c];
  }
  return acc;
}
template <typename T>
void conv1d_silu(Mat<T> out, Mat<const T> x, Mat<const T> w, const T* bias, std::span<const int32_t> seq_start) {
  for (size_t s = 0; s + 1 < seq_start.size(); ++s)
    for (int64_t t = seq_start[s]; t < seq_start[s + 1]; ++t)
      for (int64_t c = 0; c < x.cols; ++c) out[t][c] = silu(conv_pre(x, w, bias, seq_start[s], t, c));
}
template <typename T>
void conv1d_silu_backward(Mat<T> dx, Mat<T> dw, T* dbias, Mat<const T> dout, Mat<const T> x, Mat<const T> w,
                          const T* bias, std::span<const int32_t> seq_start) {
  const int64_t CD = x.cols, K = w.cols;
  for (size_t s = 0; s + 1 < seq_start.size(); ++s) {
    const int64_t t0 = seq_start[s], t1 = seq_start[s + 1];
    for (int64_t t = t0; t < t1; ++t) std::fill_n(dx[t], CD, T(0));
    for (int64_t t = t0; t < t1; ++t)
      for (int64_t c = 0; c < CD; ++c) {
        const T g = dout[t][c] * silu_grad(conv_pre(x, w, bias, t0, t, c));
        if (dbias) dbias[c] += g;
        for (int64_t k = 0; k < K; ++k) {
          const int64_t src = t - (K - 1) + k;
          if (src < t0) continue;
          dw[c][k] += g * x[src][c];
          dx[src][c] += g * w[c][k];
        }
      }
  }
}

// ---- SSD recurrence (docs/bamba-model.md §3.2 steps 5-8), per sequence from state0 (null = zeros).
// xBC [T, I + 2GN] post-conv (x | B | C), dt [T, nh] raw, y [T, I], states [S][nh, P, N].
struct SsdDims {
  int64_t nh, P, G, N, chunk;
  double dt_min, dt_max;
};
template <typename T>
struct SsdStep {  // Δ and its derivative w.r.t. the raw dt (0 where the clamp is active)
  T delta, ddelta_du;
};
template <typename T>
SsdStep<T> ssd_delta(T u, const SsdDims& d) {
  const T sp = softplus(u);
  const T lo = T(d.dt_min), hi = T(d.dt_max);
  if (sp < lo) return {lo, T(0)};
  if (sp > hi) return {hi, T(0)};
  return {sp, softplus_grad(u)};  // torch.clamp passes the gradient where lo <= x <= hi
}
template <typename T>
void ssd(Mat<T> y, Mat<const T> xBC, Mat<const T> dt, const T* A_log, const T* D, const T* dt_bias, const T* state0,
         T* state_out, std::span<const int32_t> seq_start, const SsdDims& d) {
  const int64_t nh = d.nh, P = d.P, N = d.N, I = nh * P, hpg = nh / d.G;
  std::vector<T> S(size_t(P * N));
  for (size_t s = 0; s + 1 < seq_start.size(); ++s)
    for (int64_t h = 0; h < nh; ++h) {
      const int64_t g = h / hpg;
      const T A = -std::exp(A_log[h]);
      if (state0) std::copy_n(state0 + (int64_t(s) * nh + h) * P * N, P * N, S.begin());
      else std::fill(S.begin(), S.end(), T(0));
      for (int64_t t = seq_start[s]; t < seq_start[s + 1]; ++t) {
        const T* x = xBC[t] + h * P;
        const T* B = xBC[t] + I + g * N;
        const T* C = xBC[t] + I + d.G * N + g * N;
        const T delta = ssd_delta(dt[t][h] + dt_bias[h], d).delta, a = std::exp(delta * A);
        for (int64_t p = 0; p < P; ++p) {
          T acc = 0;
          for (int64_t n = 0; n < N; ++n) {
            T& v = S[size_t(p * N + n)];
            v = a * v + delta * x[p] * B[n];
            acc += C[n] * v;
          }
          y[t][h * P + p] = acc + D[h] * x[p];
        }
      }
      if (state_out) std::copy(S.begin(), S.end(), state_out + (int64_t(s) * nh + h) * P * N);
    }
}
// Backward, reverse in time. States are kept only at chunk starts (d.chunk tokens apart) and recomputed
// inside each chunk, so memory is O(T/Q + Q) states per head; the chunk size changes no result bit.
// dxBC [T, I + 2GN] and ddt [T, nh] are written; dA_log, dD, ddt_bias (+=); dstate0 (=, optional).
template <typename T>
void ssd_backward(Mat<T> dxBC, Mat<T> ddt, T* dA_log, T* dD, T* ddt_bias, T* dstate0, Mat<const T> dy,
                  Mat<const T> xBC, Mat<const T> dt, const T* A_log, const T* D, const T* dt_bias, const T* state0,
                  std::span<const int32_t> seq_start, const SsdDims& d) {
  const int64_t nh = d.nh, P = d.P, N = d.N, G = d.G, I = nh * P, hpg = nh / G, PN = P * N, Q = std::max<int64_t>(d.chunk, 1);
  for (int64_t t = 0; t < dxBC.rows; ++t) std::fill_n(dxBC[t], dxBC.cols, T(0));
  std::vector<T> ck, buf, dS(static_cast<size_t>(PN));
  for (size_t s = 0; s + 1 < seq_start.size(); ++s) {
    const int64_t t0 = seq_start[s], t1 = seq_start[s + 1], nc = (t1 - t0 + Q - 1) / Q;
    for (int64_t h = 0; h < nh; ++h) {
      const int64_t g = h / hpg;
      const T A = -std::exp(A_log[h]);
      auto step = [&](int64_t t, const T* prev, T* next) {  // next = a·prev + Δ x⊗B
        const T* x = xBC[t] + h * P;
        const T* B = xBC[t] + I + g * N;
        const T delta = ssd_delta(dt[t][h] + dt_bias[h], d).delta, a = std::exp(delta * A);
        for (int64_t p = 0; p < P; ++p)
          for (int64_t n = 0; n < N; ++n) next[p * N + n] = a * prev[p * N + n] + delta * x[p] * B[n];
      };
      // forward: the state entering each chunk
      ck.assign(size_t((nc + 1) * PN), T(0));
      if (state0) std::copy_n(state0 + (int64_t(s) * nh + h) * PN, PN, ck.begin());
      buf.assign(size_t((Q + 1) * PN), T(0));
      for (int64_t c = 0; c < nc; ++c) {
        std::copy_n(&ck[size_t(c * PN)], PN, buf.begin());
        const int64_t e = std::min(t1, t0 + (c + 1) * Q);
        for (int64_t t = t0 + c * Q, i = 0; t < e; ++t, ++i) step(t, &buf[size_t(i * PN)], &buf[size_t((i + 1) * PN)]);
        std::copy_n(&buf[size_t((e - t0 - c * Q) * PN)], PN, &ck[size_t((c + 1) * PN)]);
      }
      // backward
      std::fill(dS.begin(), dS.end(), T(0));
      T dA = 0, dDh = 0, ddb = 0;
      for (int64_t c = nc - 1; c >= 0; --c) {
        const int64_t b = t0 + c * Q, e = std::min(t1, b + Q);
        std::copy_n(&ck[size_t(c * PN)], PN, buf.begin());  // buf[i] = state before token b+i
        for (int64_t t = b, i = 0; t < e; ++t, ++i) step(t, &buf[size_t(i * PN)], &buf[size_t((i + 1) * PN)]);
        for (int64_t t = e - 1; t >= b; --t) {
          const int64_t i = t - b;
          const T* Sprev = &buf[size_t(i * PN)];
          const T* Scur = &buf[size_t((i + 1) * PN)];
          const T* x = xBC[t] + h * P;
          const T* B = xBC[t] + I + g * N;
          const T* C = xBC[t] + I + G * N + g * N;
          T* dx = dxBC[t] + h * P;
          T* dB = dxBC[t] + I + g * N;
          T* dC = dxBC[t] + I + G * N + g * N;
          const T* gy = dy[t] + h * P;
          const SsdStep<T> st = ssd_delta(dt[t][h] + dt_bias[h], d);
          const T delta = st.delta, a = std::exp(delta * A);
          // y = S_t C + D x
          for (int64_t p = 0; p < P; ++p) {
            dDh += gy[p] * x[p];
            dx[p] += D[h] * gy[p];
            for (int64_t n = 0; n < N; ++n) {
              dS[size_t(p * N + n)] += gy[p] * C[n];
              dC[n] += gy[p] * Scur[p * N + n];
            }
          }
          // S_t = a S_{t-1} + Δ x ⊗ B
          T ddelta = 0, da = 0;
          for (int64_t p = 0; p < P; ++p) {
            T sB = 0;
            for (int64_t n = 0; n < N; ++n) {
              const T gS = dS[size_t(p * N + n)];
              sB += gS * B[n];
              dB[n] += gS * delta * x[p];
              da += gS * Sprev[p * N + n];
            }
            ddelta += sB * x[p];
            dx[p] += delta * sB;
          }
          for (T& v : dS) v *= a;
          // a = exp(Δ A), A = −exp(A_log)
          ddelta += da * a * A;
          dA += da * a * delta * A;
          const T du = ddelta * st.ddelta_du;
          ddt[t][h] = du;
          ddb += du;
        }
      }
      dA_log[h] += dA;
      dD[h] += dDh;
      ddt_bias[h] += ddb;
      if (dstate0) std::copy(dS.begin(), dS.end(), dstate0 + (int64_t(s) * nh + h) * PN);
    }
  }
}

// ---- gated RMSNorm: out = rmsnorm_groups(y ⊙ silu(z)) ⊙ w
template <typename T>
void gated_rmsnorm(Mat<T> out, Mat<const T> y, Mat<const T> z, const T* w, int64_t group, T eps) {
  std::vector<T> g(static_cast<size_t>(y.cols));
  for (int64_t t = 0; t < y.rows; ++t) {
    for (int64_t j = 0; j < y.cols; ++j) g[size_t(j)] = y[t][j] * silu(z[t][j]);
    for (int64_t a = 0; a < y.cols; a += group) rmsnorm_row(out[t] + a, &g[size_t(a)], w + a, group, eps);
  }
}
template <typename T>
void gated_rmsnorm_backward(Mat<T> dy, Mat<T> dz, T* dw, Mat<const T> dout, Mat<const T> y, Mat<const T> z,
                            const T* w, int64_t group, T eps) {
  const int64_t I = y.cols;
  std::vector<T> g(static_cast<size_t>(I)), dg(static_cast<size_t>(I));
  for (int64_t t = 0; t < y.rows; ++t) {
    for (int64_t j = 0; j < I; ++j) g[size_t(j)] = y[t][j] * silu(z[t][j]);
    for (int64_t a = 0; a < I; a += group)
      rmsnorm_row_backward(&dg[size_t(a)], dw ? dw + a : nullptr, dout[t] + a, &g[size_t(a)], w + a, group, eps, false);
    for (int64_t j = 0; j < I; ++j) {
      const T zz = z[t][j];
      dy[t][j] = dg[size_t(j)] * silu(zz);
      dz[t][j] = dg[size_t(j)] * y[t][j] * silu_grad(zz);
    }
  }
}

// ---- causal attention with partial NeoX RoPE and GQA over each sequence (no cache).
// qkv [T, (nq + 2 nkv) dh] is rotated in place by the forward (as Backend::attention does); the backward takes
// the rotated qkv and returns the gradient w.r.t. the unrotated one. out [T, nq dh].
struct AttnDims {
  int64_t nq, nkv, dh, R;
  double scale;
};
template <typename T>
void rope_rotate(T* v, const float* inv_freq, int64_t half, float pos, bool inverse) {
  for (int64_t j = 0; j < half; ++j) {
    const float ang = pos * inv_freq[j];  // fp32 angle, as HF
    const T co = T(std::cos(ang)), si = inverse ? -T(std::sin(ang)) : T(std::sin(ang));
    const T x0 = v[j], x1 = v[j + half];
    v[j] = x0 * co - x1 * si;
    v[j + half] = x1 * co + x0 * si;
  }
}
// p[u - t0] = exp(scale·q·k_u − max) over the keys u = t0..t of KV head kh; returns their sum. The softmax row
// before its division: the forward and the backward (which recomputes it rather than keeping [T, T]) share it.
template <typename T, typename Rows>
T causal_scores(std::vector<T>& p, const T* q, const Rows& qkv, int64_t t0, int64_t t, int64_t kh, const AttnDims& d) {
  const int64_t dh = d.dh;
  p.assign(size_t(t - t0 + 1), T(0));
  T mx = -std::numeric_limits<T>::infinity();
  for (int64_t u = t0; u <= t; ++u) {
    const T* k = qkv[u] + (d.nq + kh) * dh;
    T dot = 0;
    for (int64_t e = 0; e < dh; ++e) dot += q[e] * k[e];
    p[size_t(u - t0)] = dot * T(d.scale);
    mx = std::max(mx, p[size_t(u - t0)]);
  }
  T sum = 0;
  for (T& v : p) sum += (v = std::exp(v - mx));
  return sum;
}
template <typename T>
void attention(Mat<T> out, Mat<T> qkv, const float* inv_freq, std::span<const int32_t> positions,
               std::span<const int32_t> seq_start, const AttnDims& d) {
  const int64_t nq = d.nq, nkv = d.nkv, dh = d.dh, rep = nq / nkv;
  for (int64_t t = 0; t < qkv.rows; ++t)
    for (int64_t h = 0; h < nq + nkv; ++h) rope_rotate(qkv[t] + h * dh, inv_freq, d.R / 2, float(positions[size_t(t)]), false);
  std::vector<T> p;
  for (size_t s = 0; s + 1 < seq_start.size(); ++s) {
    const int64_t t0 = seq_start[s], t1 = seq_start[s + 1];
    for (int64_t t = t0; t < t1; ++t)
      for (int64_t h = 0; h < nq; ++h) {
        const int64_t kh = h / rep;
        const T sum = causal_scores(p, qkv[t] + h * dh, qkv, t0, t, kh, d);
        T* o = out[t] + h * dh;
        std::fill_n(o, dh, T(0));
        for (int64_t u = t0; u <= t; ++u) {
          const T* v = qkv[u] + (nq + nkv + kh) * dh;
          const T wgt = p[size_t(u - t0)] / sum;
          for (int64_t e = 0; e < dh; ++e) o[e] += wgt * v[e];
        }
      }
  }
}
// Recomputes each softmax row (no [T, T] kept): dS = P ⊙ (dP − Σ P dP), dP = dO·V.
template <typename T>
void attention_backward(Mat<T> dqkv, Mat<const T> dout, Mat<const T> qkv, const float* inv_freq,
                        std::span<const int32_t> positions, std::span<const int32_t> seq_start, const AttnDims& d) {
  const int64_t nq = d.nq, nkv = d.nkv, dh = d.dh, rep = nq / nkv;
  for (int64_t t = 0; t < dqkv.rows; ++t) std::fill_n(dqkv[t], (nq + 2 * nkv) * dh, T(0));
  std::vector<T> p, dp;
  for (size_t s = 0; s + 1 < seq_start.size(); ++s) {
    const int64_t t0 = seq_start[s], t1 = seq_start[s + 1];
    for (int64_t t = t0; t < t1; ++t)
      for (int64_t h = 0; h < nq; ++h) {
        const T* q = qkv[t] + h * dh;
        const T* go = dout[t] + h * dh;
        const int64_t kh = h / rep;
        dp.assign(size_t(t - t0 + 1), T(0));
        const T sum = causal_scores(p, q, qkv, t0, t, kh, d);
        T pdp = 0;
        for (int64_t u = t0; u <= t; ++u) {
          T& pu = p[size_t(u - t0)];
          pu /= sum;
          const T* v = qkv[u] + (nq + nkv + kh) * dh;
          T dot = 0;
          for (int64_t e = 0; e < dh; ++e) dot += go[e] * v[e];
          dp[size_t(u - t0)] = dot;
          pdp += pu * dot;
        }
        T* dq = dqkv[t] + h * dh;
        for (int64_t u = t0; u <= t; ++u) {
          const T pu = p[size_t(u - t0)];
          const T ds = pu * (dp[size_t(u - t0)] - pdp) * T(d.scale);
          const T* k = qkv[u] + (nq + kh) * dh;
          T* dk = dqkv[u] + (nq + kh) * dh;
          T* dv = dqkv[u] + (nq + nkv + kh) * dh;
          for (int64_t e = 0; e < dh; ++e) {
            dq[e] += ds * k[e];
            dk[e] += ds * q[e];
            dv[e] += pu * go[e];
          }
        }
      }
  }
  // RoPE is a rotation: the gradient w.r.t. its input is the gradient rotated back
  for (int64_t t = 0; t < dqkv.rows; ++t)
    for (int64_t h = 0; h < nq + nkv; ++h) rope_rotate(dqkv[t] + h * dh, inv_freq, d.R / 2, float(positions[size_t(t)]), true);
}

// ---- lm_head + cross-entropy (+ z-loss), rows in chunks of `chunk` so [T, V] logits never exist at once.
// loss = Σ_t ce_scale·(lse_t − logit_t[target_t]) [target ≠ −100] + z_scale·lse_t² (all rows). Returns the loss;
// writes dx (optional) and adds to dW (optional). The logits row chunk is computed by `chunk_logits(r0, r1, buf)`.
template <typename T, typename Logits, typename Back>
double cross_entropy_chunks(int64_t rows, int64_t V, std::span<const int32_t> targets, double ce_scale, double z_scale,
                            int64_t chunk, Logits&& chunk_logits, Back&& chunk_backward) {
  std::vector<T> buf;
  double loss = 0;
  chunk = std::max<int64_t>(chunk, 1);
  for (int64_t r0 = 0; r0 < rows; r0 += chunk) {
    const int64_t r1 = std::min(rows, r0 + chunk);
    buf.assign(size_t((r1 - r0) * V), T(0));
    chunk_logits(r0, r1, buf.data());  // [r1 − r0, V]
    for (int64_t r = r0; r < r1; ++r) {
      T* l = &buf[size_t((r - r0) * V)];
      const int32_t tgt = targets[size_t(r)];
      T mx = *std::max_element(l, l + V);
      double sum = 0;
      for (int64_t v = 0; v < V; ++v) sum += std::exp(double(l[v] - mx));
      const double lse = double(mx) + std::log(sum);
      const double ce = tgt >= 0 ? ce_scale : 0.0;
      if (tgt >= 0) loss += ce_scale * (lse - double(l[tgt]));
      loss += z_scale * lse * lse;
      // d/dlogit: ce·(softmax − onehot) + z·2·lse·softmax
      const double wsoft = ce + 2.0 * z_scale * lse;
      for (int64_t v = 0; v < V; ++v) l[v] = T(wsoft * std::exp(double(l[v]) - lse));
      if (tgt >= 0) l[tgt] -= T(ce);
    }
    chunk_backward(r0, r1, buf.data());
  }
  return loss;
}
template <typename T>
double lm_head_cross_entropy(Mat<T> dx, Mat<T> dW, Mat<const T> x, Mat<const T> W, std::span<const int32_t> targets,
                             double ce_scale, double z_scale, int64_t chunk) {
  const int64_t V = W.rows, H = W.cols;
  auto logits = [&](int64_t r0, int64_t r1, T* out) {
    matmul<T>({out, r1 - r0, V, V}, {x[r0], r1 - r0, H, x.ld}, W, nullptr);
  };
  auto back = [&](int64_t r0, int64_t r1, T* g) {
    Mat<const T> dl{g, r1 - r0, V, V};
    matmul_backward<T>(dx ? Mat<T>{dx[r0], r1 - r0, H, dx.ld} : Mat<T>{}, dW, nullptr, dl, {x[r0], r1 - r0, H, x.ld}, W);
  };
  return cross_entropy_chunks<T>(x.rows, V, targets, ce_scale, z_scale, chunk, logits, back);
}

}  // namespace bamba::grad
