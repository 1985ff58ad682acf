// The SSD backward in the chunked matrix form (Mamba-2's "state space duality", transposed): the plain C++
// statement of what the CUDA tensor-core backward (backend/cuda/ssd_backward_chunked.cu) computes, kernel by
// kernel, tested against the reverse recurrence grad::ssd_backward (grad_kernels.h). Not used by the CPU backend.
//
// Per sequence and head, tokens split into chunks of Q. Inside a chunk (local index i, length L ≤ Q), with
// Δ_i, cum_i = A Σ_{j ≤ i} Δ_j (chunk-local, ≤ 0), L[k][i] = exp(cum_k − cum_i) for k ≥ i (else 0),
// S_in the state entering the chunk and dS_out the gradient of the state leaving it:
//   forward carry      S_in(c+1)  = exp(cum_end) S_in(c) + Σ_i exp(cum_end − cum_i) Δ_i x_i B_iᵀ
//   backward carry     dS_in(c)   = exp(cum_end) dS_out(c) + Σ_k exp(cum_k) dy_k C_kᵀ,  dS_out(c) = dS_in(c+1)
//   CB[k][i] = C_k·B_i (per group),  DX[k][i] = dy_k·x_i (per head)
//   dx_i  = D dy_i + Δ_i sB_i,   sB_i = Σ_k L[k][i] CB[k][i] dy_k + exp(cum_end − cum_i) dS_out B_i
//   dB_i  = Δ_i (Σ_k L[k][i] DX[k][i] C_k + exp(cum_end − cum_i) dS_outᵀ x_i)        (summed over the group)
//   dC_k  = exp(cum_k) S_inᵀ dy_k + Σ_i L[k][i] DX[k][i] Δ_i B_i                      (summed over the group)
// The decay's gradient: every exp(cum_j − cum_m) factor (j after m) gives +w to dcum_j and −w to dcum_m, and
// dΔ_i collects A Σ_{j ≥ i} dcum_j =: A R_i. Written out, R_i sums only the terms whose decay crosses token i:
//   R_i = Σ_{k ≥ i} u_k + E + Σ_{m < i} V_m + Σ_{j ≥ i} Σ_{m < i} W[j][m]
//   u_k = C_k · (exp(cum_k) S_inᵀ dy_k)                   (y through S_in)
//   E   = exp(cum_end) ⟨dS_out, S_in⟩                       (S_in carried through the whole chunk)
//   V_m = Δ_m x_m · (exp(cum_end − cum_m) dS_out B_m)       (token m's input carried out of the chunk)
//   W[j][m] = L[j][m] CB[j][m] DX[j][m] Δ_m                 (inside the chunk)
// — no difference of large sums, so nothing cancels (the Triton backward's "stable" ddA form). Then
//   dΔ_i = x_i·sB_i + A R_i,   d(A_log) += Δ_i A R_i,   dD += dy_i·x_i,
// and dΔ goes through the clamp and softplus as in the recurrence.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <span>
#include <vector>

#include "backend/cpu/grad_kernels.h"

namespace bamba::grad {

// Same contract as ssd_backward (grad_kernels.h); d.chunk is the chunk length Q here too.
template <typename T>
void ssd_backward_chunked(Mat<T> dxBC, Mat<T> ddt, T* dA_log, T* dD, T* ddt_bias, T* dstate0, Mat<const T> dy,
                          Mat<const T> xBC, Mat<const T> dt, const T* A_log, const T* D, const T* dt_bias,
                          const T* state0, std::span<const int32_t> seq_start, const SsdDims& d) {
  const int64_t nh = d.nh, P = d.P, N = d.N, G = d.G, I = nh * P, hpg = nh / G, PN = P * N;
  const int64_t Q = std::max<int64_t>(d.chunk, 1), Tn = dxBC.rows;
  for (int64_t t = 0; t < Tn; ++t) std::fill_n(dxBC[t], dxBC.cols, T(0));
  // per-head partials of dB and dC, summed over the group's heads in order at the end (as the GPU does)
  std::vector<T> dBp(size_t(Tn * nh * N), T(0)), dCp(size_t(Tn * nh * N), T(0));  // [T, nh, N]
  std::vector<T> delta(static_cast<size_t>(Tn)), cum(static_cast<size_t>(Tn));  // of one head
  std::vector<T> states, dstates;  // [nc, P, N]: S_in and dS_out of each chunk of one (sequence, head)
  std::vector<T> CB(static_cast<size_t>(Q * Q)), DX(static_cast<size_t>(Q * Q)), R(static_cast<size_t>(Q));  // C·Bᵀ, dy·xᵀ, dΔ of a chunk
  for (size_t s = 0; s + 1 < seq_start.size(); ++s) {
    const int64_t t0 = seq_start[s], t1 = seq_start[s + 1], nc = (t1 - t0 + Q - 1) / Q;
    for (int64_t h = 0; h < nh; ++h) {
      const int64_t g = h / hpg;
      const T A = -std::exp(A_log[h]);
      auto x = [&](int64_t t) { return xBC[t] + h * P; };          // [P]
      auto B = [&](int64_t t) { return xBC[t] + I + g * N; };      // [N]
      auto C = [&](int64_t t) { return xBC[t] + I + G * N + g * N; };
      auto gy = [&](int64_t t) { return dy[t] + h * P; };
      // 1. Δ and the chunk-local cumulative decay
      for (int64_t c = 0; c < nc; ++c) {
        T acc = 0;
        for (int64_t t = t0 + c * Q; t < std::min(t1, t0 + (c + 1) * Q); ++t) {
          delta[size_t(t)] = ssd_delta(dt[t][h] + dt_bias[h], d).delta;
          cum[size_t(t)] = acc += delta[size_t(t)] * A;
        }
      }
      // 2. chunk-local states: S_loc = Σ_i exp(cum_end − cum_i) Δ_i x_i B_iᵀ, dS_loc = Σ_k exp(cum_k) dy_k C_kᵀ
      states.assign(size_t(nc * PN), T(0));
      dstates.assign(size_t(nc * PN), T(0));
      std::vector<T> dec(static_cast<size_t>(nc));
      for (int64_t c = 0; c < nc; ++c) {
        const int64_t b = t0 + c * Q, e = std::min(t1, b + Q);
        dec[size_t(c)] = cum[size_t(e - 1)];
        T* Sl = &states[size_t(c * PN)];
        T* dSl = &dstates[size_t(c * PN)];
        for (int64_t t = b; t < e; ++t) {
          const T w = std::exp(dec[size_t(c)] - cum[size_t(t)]) * delta[size_t(t)], v = std::exp(cum[size_t(t)]);
          for (int64_t p = 0; p < P; ++p)
            for (int64_t n = 0; n < N; ++n) {
              Sl[p * N + n] += w * x(t)[p] * B(t)[n];
              dSl[p * N + n] += v * gy(t)[p] * C(t)[n];
            }
        }
      }
      // 3. the carries, in place: states[c] becomes S_in(c), dstates[c] becomes dS_out(c)
      {
        std::vector<T> v(size_t(PN), T(0));
        if (state0) std::copy_n(state0 + (int64_t(s) * nh + h) * PN, PN, v.begin());
        for (int64_t c = 0; c < nc; ++c)
          for (int64_t e = 0; e < PN; ++e) {
            const T loc = states[size_t(c * PN + e)];
            states[size_t(c * PN + e)] = v[size_t(e)];
            v[size_t(e)] = std::exp(dec[size_t(c)]) * v[size_t(e)] + loc;
          }
        std::fill(v.begin(), v.end(), T(0));
        for (int64_t c = nc - 1; c >= 0; --c)
          for (int64_t e = 0; e < PN; ++e) {
            const T loc = dstates[size_t(c * PN + e)];
            dstates[size_t(c * PN + e)] = v[size_t(e)];
            v[size_t(e)] = std::exp(dec[size_t(c)]) * v[size_t(e)] + loc;
          }
        if (dstate0) std::copy(v.begin(), v.end(), dstate0 + (int64_t(s) * nh + h) * PN);
      }
      // 4. each chunk's gradients
      T dA = 0, dDh = 0, ddb = 0;
      for (int64_t c = 0; c < nc; ++c) {
        const int64_t b = t0 + c * Q, L = std::min(t1, b + Q) - b;
        const T* Sin = &states[size_t(c * PN)];
        const T* dSo = &dstates[size_t(c * PN)];
        const T ce = dec[size_t(c)];
        auto Lm = [&](int64_t k, int64_t i) { return k >= i ? std::exp(cum[size_t(b + k)] - cum[size_t(b + i)]) : T(0); };
        for (int64_t k = 0; k < L; ++k)
          for (int64_t i = 0; i < L; ++i) {
            T cb = 0, dx = 0;
            for (int64_t n = 0; n < N; ++n) cb += C(b + k)[n] * B(b + i)[n];
            for (int64_t p = 0; p < P; ++p) dx += gy(b + k)[p] * x(b + i)[p];
            CB[size_t(k * Q + i)] = cb;
            DX[size_t(k * Q + i)] = dx;
          }
        T E = 0;
        for (int64_t e = 0; e < PN; ++e) E += dSo[e] * Sin[e];
        E *= std::exp(ce);
        std::vector<T> u(static_cast<size_t>(L)), V(static_cast<size_t>(L));
        for (int64_t i = 0; i < L; ++i) {
          const int64_t t = b + i;
          const T di = delta[size_t(t)], out = std::exp(ce - cum[size_t(t)]), in = std::exp(cum[size_t(t)]);
          // sB_i = Σ_k (CB∘L)[k][i] dy_k + out · dS_out B_i; V_i from the second part alone
          T Vi = 0, xsb = 0, dd = 0;
          for (int64_t p = 0; p < P; ++p) {
            T carry = 0, intra = 0;
            for (int64_t n = 0; n < N; ++n) carry += dSo[p * N + n] * B(t)[n];
            for (int64_t k = i; k < L; ++k) intra += CB[size_t(k * Q + i)] * Lm(k, i) * gy(b + k)[p];
            Vi += x(t)[p] * out * carry;
            const T sb = intra + out * carry;
            xsb += x(t)[p] * sb;
            dd += gy(t)[p] * x(t)[p];
            dxBC[t][h * P + p] = D[h] * gy(t)[p] + di * sb;
          }
          V[size_t(i)] = di * Vi;
          dDh += dd;
          // dB_i (this head's part) and dC_i
          T ui = 0;
          for (int64_t n = 0; n < N; ++n) {
            T db = 0, dc_in = 0, dc = 0;
            for (int64_t k = i; k < L; ++k) db += DX[size_t(k * Q + i)] * Lm(k, i) * C(b + k)[n];
            for (int64_t p = 0; p < P; ++p) {
              db += out * dSo[p * N + n] * x(t)[p];
              dc_in += Sin[p * N + n] * gy(t)[p];
            }
            dc_in *= in;
            ui += C(t)[n] * dc_in;
            for (int64_t m = 0; m <= i; ++m) dc += DX[size_t(i * Q + m)] * Lm(i, m) * delta[size_t(b + m)] * B(b + m)[n];
            dBp[size_t((t * nh + h) * N + n)] = di * db;
            dCp[size_t((t * nh + h) * N + n)] = dc_in + dc;
          }
          u[size_t(i)] = ui;
          R[size_t(i)] = xsb;  // the direct dΔ term, for now
        }
        // R_i: the terms whose decay crosses token i
        for (int64_t i = 0; i < L; ++i) {
          T r = E;
          for (int64_t k = i; k < L; ++k) r += u[size_t(k)];
          for (int64_t m = 0; m < i; ++m) r += V[size_t(m)];
          for (int64_t j = i; j < L; ++j)
            for (int64_t m = 0; m < i; ++m)
              r += Lm(j, m) * CB[size_t(j * Q + m)] * DX[size_t(j * Q + m)] * delta[size_t(b + m)];
          const int64_t t = b + i;
          const SsdStep<T> st = ssd_delta(dt[t][h] + dt_bias[h], d);
          const T ddelta = R[size_t(i)] + A * r;
          dA += st.delta * A * r;
          const T du = ddelta * st.ddelta_du;
          ddt[t][h] = du;
          ddb += du;
        }
      }
      dA_log[h] += dA;
      dD[h] += dDh;
      ddt_bias[h] += ddb;
    }
  }
  for (int64_t t = 0; t < Tn; ++t)
    for (int64_t g = 0; g < G; ++g)
      for (int64_t n = 0; n < N; ++n) {
        T sb = 0, sc = 0;
        for (int64_t h = g * hpg; h < (g + 1) * hpg; ++h) {
          sb += dBp[size_t((t * nh + h) * N + n)];
          sc += dCp[size_t((t * nh + h) * N + n)];
        }
        dxBC[t][I + g * N + n] = sb;
        dxBC[t][I + G * N + g * N + n] = sc;
      }
}

}  // namespace bamba::grad
