// The FP8 weight kernels alone (backend/cuda/fp8_gemv.cu, gemv_mma.cu's FP8 variant, fp8_gemm.cu), without the
// rest of the engine: a check against the host definition (core/fp8.h) on odd sizes, then their speed on
// Bamba-9B's projection shapes beside the bf16 kernels (gemv.cu and gemv_mma.cu for decode, cuBLAS for prefill).
// It builds from a few files, so it runs on a GPU machine that lacks the engine's other dependencies
// (bench/NOTES.md, sections fp8 and fp8mma):
//   nvcc -O3 -std=c++20 -arch=sm_90 --expt-relaxed-constexpr -Isrc bench/fp8_kernels.cu src/backend/cuda/fp8_gemv.cu \
//        src/backend/cuda/fp8_gemm.cu src/backend/cuda/gemv.cu src/backend/cuda/gemv_mma.cu \
//        src/backend/cuda/elementwise.cu src/core/dtype.cpp -lcublasLt -lcublas -o fp8_kernels
#include <cublas_v2.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <random>
#include <vector>

#include "backend/cuda/fp8.cuh"
#include "backend/cuda/gemv_mma.cuh"
#include "backend/cuda/kernels.cuh"
#include "core/fp8.h"

using namespace bamba;
using namespace bamba::cuda;

namespace {

template <typename T>
T* upload(const std::vector<T>& v) {
  T* p = nullptr;
  CUDA_CHECK(cudaMalloc(&p, std::max<size_t>(v.size(), 1) * sizeof(T)));
  CUDA_CHECK(cudaMemcpy(p, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice));
  return p;
}
std::vector<bf16> to_bf16(const std::vector<float>& v) {
  std::vector<bf16> b(v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    const uint16_t h = f32_to_bf16(v[i]);
    std::memcpy(&b[i], &h, 2);
  }
  return b;
}

Fp8Gemm g_gemm;
uint8_t* g_scratch = nullptr;

// What CudaBackend::matmul_fp8 runs (kept in step with it): GEMV for M <= 8 (bf16: the tensor-core one where it
// takes the shape) or block scales, else the per-token quantization and the FP8 GEMM, or the rounded activations
// through the GEMV.
template <typename T>
void fp8_matmul(float* y, const T* x, int64_t ldx, const uint8_t* W, const float* s, int B, int M, int N, int K) {
  if (M > kMaxGemvRows && B == 0) {
    const int64_t ldq = (K + 15) / 16 * 16;
    uint8_t* xq = g_scratch;
    float* xs = reinterpret_cast<float*>(xq + size_t(M) * ldq);
    quantize_rows_fp8<T>(0, xq, ldq, xs, x, ldx, M, K);
    if (fp8_gemm(g_gemm, 0, y, true, N, xq, ldq, xs, W, K, s, M, N, K)) return;
    T* xr = reinterpret_cast<T*>(g_scratch);
    fake_quantize_rows_fp8<T>(0, xr, x, ldx, M, K);
    fp8_gemv<T>(0, y, true, N, xr, K, W, K, s, 0, PView{}, M, N, K);
    return;
  }
  if constexpr (std::is_same_v<T, bf16>)
    if (M <= kMaxGemvRows && gemv_mma_fp8(0, y, true, N, x, ldx, W, K, s, B, PView{}, M, N, K)) return;
  fp8_gemv<T>(0, y, true, N, x, ldx, W, K, s, B, PView{}, M, N, K);
}

template <typename T>
double check(int M, int N, int K, int B, std::mt19937& rng) {
  std::uniform_real_distribution<float> d(-1.f, 1.f);
  std::vector<float> w(size_t(N) * K), x(size_t(M) * K);
  for (auto& v : w) v = d(rng);
  for (auto& v : x) {
    v = 2 * d(rng);
    if (std::is_same_v<T, bf16>) v = bf16_to_f32(f32_to_bf16(v));
  }
  std::vector<uint8_t> q(w.size());
  std::vector<float> s, deq(w.size());
  const int kb = B ? (K + B - 1) / B : 0;
  if (B == 0) {
    for (int n = 0; n < N; ++n) s.push_back(quantize_row_e4m3(&w[size_t(n) * K], K, &q[size_t(n) * K]));
  } else {
    for (int i = 0; i < ((N + B - 1) / B) * kb; ++i) s.push_back(0.001f + 0.01f * std::fabs(d(rng)));
    for (size_t i = 0; i < w.size(); ++i) q[i] = f32_to_e4m3(w[i] * 300.f);
  }
  for (int n = 0; n < N; ++n)
    for (int k = 0; k < K; ++k)
      deq[size_t(n) * K + k] = e4m3_to_f32(q[size_t(n) * K + k]) * (B ? s[size_t((n / B) * kb + k / B)] : s[size_t(n)]);
  std::vector<float> xr = x;  // the definition (backend.h matmul): W8A8 above 8 rows with per-channel scales
  if (M > kMaxGemvRows && B == 0)
    for (int m = 0; m < M; ++m) {
      std::vector<uint8_t> qq(static_cast<size_t>(K));
      const float sc = quantize_row_e4m3(&x[size_t(m) * K], K, qq.data());
      for (int k = 0; k < K; ++k) xr[size_t(m) * K + k] = e4m3_to_f32(qq[size_t(k)]) * sc;
    }
  double err = 0, ref = 0;
  std::vector<float> yh(size_t(M) * N);
  {
    uint8_t* Wd = upload(q);
    float* sd = upload(s);
    float* yd = nullptr;
    CUDA_CHECK(cudaMalloc(&yd, yh.size() * 4));
    T* xd;
    if constexpr (std::is_same_v<T, bf16>) xd = upload(to_bf16(x));
    else xd = upload(x);
    fp8_matmul<T>(yd, xd, K, Wd, sd, B, M, N, K);
    CUDA_CHECK(cudaMemcpy(yh.data(), yd, yh.size() * 4, cudaMemcpyDeviceToHost));
    cudaFree(Wd), cudaFree(sd), cudaFree(yd), cudaFree(xd);
  }
  for (int m = 0; m < M; ++m)
    for (int n = 0; n < N; ++n) {
      double r = 0;
      for (int k = 0; k < K; ++k) r += double(xr[size_t(m) * K + k]) * deq[size_t(n) * K + k];
      err += (yh[size_t(m) * N + n] - r) * (yh[size_t(m) * N + n] - r);
      ref += r * r;
    }
  return std::sqrt(err / ref);
}

float time_ms(const std::function<void()>& f, int reps) {
  cudaEvent_t a, b;
  cudaEventCreate(&a), cudaEventCreate(&b);
  f();
  cudaEventRecord(a);
  for (int i = 0; i < reps; ++i) f();
  cudaEventRecord(b);
  cudaEventSynchronize(b);
  float ms = 0;
  cudaEventElapsedTime(&ms, a, b);
  return ms / reps;
}

}  // namespace

int main() {
  CUDA_CHECK(cudaMalloc(&g_scratch, size_t(1) << 30));
  if (cublasLtCreate(&g_gemm.lt) != CUBLAS_STATUS_SUCCESS) return 1;
  g_gemm.workspace_bytes = 64u << 20;
  CUDA_CHECK(cudaMalloc(&g_gemm.workspace, g_gemm.workspace_bytes));
  std::mt19937 rng(1);
  int bad = 0;
  double worst = 0;
  // N = 37 leaves y's rows off 16 bytes (the rounded-activation GEMV path above 8 rows); N = 40 takes cuBLASLt's.
  for (int N : {37, 40})
    for (int B : {0, 16, 128})
      for (int K : {80, 45, 4112})
        for (int M : {1, 2, 5, 8, 13, 67, 300}) {
          if (B && K == 45) continue;
          const double eb = check<bf16>(M, N, K, B, rng), ef = check<float>(M, N, K, B, rng);
          worst = std::max(worst, std::max(eb, ef));
          if (eb > 1e-2 || ef > 1e-3) {  // fp32: Hopper's FP8 MMA accumulates with fewer bits than fp32
            ++bad;
            std::printf("MISMATCH N %d B %d K %d M %d: bf16 rel L2 %.3g, fp32 %.3g\n", N, B, K, M, eb, ef);
          }
        }
  // The quantization: bit for bit against the host.
  {
    const int N = 29, K = 333;
    std::vector<float> w(size_t(N) * K);
    std::uniform_real_distribution<float> d(-0.3f, 0.3f);
    for (auto& v : w) v = d(rng);
    for (int k = 0; k < K; ++k) w[size_t(3) * K + k] = 0.f;
    float* wd = upload(w);
    uint8_t* qd = nullptr;
    float* sd = nullptr;
    CUDA_CHECK(cudaMalloc(&qd, w.size()));
    CUDA_CHECK(cudaMalloc(&sd, N * 4));
    quantize_rows_fp8<float>(0, qd, K, sd, wd, K, N, K);
    std::vector<uint8_t> qg(w.size()), qh(w.size());
    std::vector<float> sg(N);
    CUDA_CHECK(cudaMemcpy(qg.data(), qd, qg.size(), cudaMemcpyDeviceToHost));
    CUDA_CHECK(cudaMemcpy(sg.data(), sd, N * 4, cudaMemcpyDeviceToHost));
    int diff = 0;
    for (int n = 0; n < N; ++n) diff += quantize_row_e4m3(&w[size_t(n) * K], K, &qh[size_t(n) * K]) != sg[size_t(n)];
    for (size_t i = 0; i < qh.size(); ++i) diff += qh[i] != qg[i];
    std::printf("quantize_rows_fp8 vs host: %d differences\n", diff);
    bad += diff != 0;
  }
  std::printf("correctness: %s (worst rel L2 %.3g; GEMM mode %d: 1 = outer-vector scales in cuBLASLt, 0 = unit "
              "scales + rescale, -1 = not reached)\n", bad ? "FAILED" : "ok", worst, g_gemm.mode);

  // Speed on Bamba-9B's projections (H 4096; Mamba in_proj 16768 x 4096, out_proj 4096 x 8192; MLP gate|up
  // 28672 x 4096, down 4096 x 14336; attention q|k|v 6144 x 4096, o_proj 4096 x 4096). 29 Mamba + 3 attention
  // layers, an MLP in each. Weights cycle through copies so that no launch finds its matrix in L2.
  struct Shape { const char* name; int N, K, per_step; };
  const Shape shapes[] = {{"in_proj", 16768, 4096, 29}, {"out_proj", 4096, 8192, 29}, {"gate_up", 28672, 4096, 32},
                          {"down", 4096, 14336, 32},    {"qkv", 6144, 4096, 3},       {"o_proj", 4096, 4096, 3}};
  cublasHandle_t cublas;
  cublasCreate(&cublas);
  cublasSetWorkspace(cublas, g_gemm.workspace, g_gemm.workspace_bytes);
  double step_bf16 = 0, step_fp8 = 0, pp_bf16 = 0, pp_fp8 = 0;
  const int dec_rows[4] = {1, 2, 4, 8};
  double dec[4][3] = {};  // per step at M rows: bf16 tensor-core GEMV, FP8 warp per row, FP8 tensor-core GEMV
  double step_fp8_bytes = 0;
  bool mma_ok = true;
  const int Mp = 8192;
  bf16* xb = nullptr;
  bf16* yb = nullptr;
  CUDA_CHECK(cudaMalloc(&xb, size_t(Mp) * 14336 * 2));
  CUDA_CHECK(cudaMalloc(&yb, size_t(Mp) * 28672 * 2));
  CUDA_CHECK(cudaMemset(xb, 0x3c, size_t(Mp) * 14336 * 2));  // ~0.01
  std::printf("\n| shape | decode bf16 GEMV µs | decode FP8 GEMV µs | FP8 GB/s | prefill 8192 bf16 cuBLAS ms | prefill FP8 "
              "(quantize + GEMM) ms | FP8 TFLOP/s |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: |\n");
  for (const Shape& sh : shapes) {
    const size_t n = size_t(sh.N) * sh.K;
    constexpr int kCopies = 4;
    std::vector<bf16*> wb(kCopies);
    std::vector<uint8_t*> wq(kCopies);
    float* ws = nullptr;
    for (int c = 0; c < kCopies; ++c) {
      CUDA_CHECK(cudaMalloc(&wb[c], n * 2));
      CUDA_CHECK(cudaMalloc(&wq[c], n));
      fill_uniform(0, wb[c], DType::BF16, int64_t(n), 7 + c, -0.02f, 0.02f);
    }
    CUDA_CHECK(cudaMalloc(&ws, size_t(sh.N) * 4));
    for (int c = 0; c < kCopies; ++c) quantize_rows_fp8<bf16>(0, wq[c], sh.K, ws, wb[c], sh.K, sh.N, sh.K);
    int c = 0;
    const float t_bf16 = time_ms([&] { gemv<bf16>(0, yb, false, sh.N, xb, sh.K, wb[c++ % kCopies], sh.K, PView{}, 1, sh.N, sh.K); }, 40);
    const float t_fp8 = time_ms([&] { fp8_gemv<bf16>(0, yb, false, sh.N, xb, sh.K, wq[c++ % kCopies], sh.K, ws, 0, PView{}, 1, sh.N, sh.K); }, 40);
    const float alpha = 1.f, beta = 0.f;
    const float p_bf16 = time_ms([&] {
      cublasGemmEx(cublas, CUBLAS_OP_T, CUBLAS_OP_N, sh.N, Mp, sh.K, &alpha, wb[c++ % kCopies], CUDA_R_16BF, sh.K, xb,
                   CUDA_R_16BF, sh.K, &beta, yb, CUDA_R_16BF, sh.N, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    }, 5);
    const int64_t ldq = sh.K;
    uint8_t* xq = g_scratch;
    float* xs = reinterpret_cast<float*>(g_scratch + size_t(Mp) * ldq);
    bool ok = true;
    const float p_fp8 = time_ms([&] {
      quantize_rows_fp8<bf16>(0, xq, ldq, xs, xb, sh.K, Mp, sh.K);
      ok &= fp8_gemm(g_gemm, 0, yb, false, sh.N, xq, ldq, xs, wq[c++ % kCopies], sh.K, ws, Mp, sh.N, sh.K);
    }, 5);
    CUDA_CHECK(cudaDeviceSynchronize());
    std::printf("| %s %dx%d | %.1f | %.1f | %.0f | %.3f | %.3f%s | %.0f |\n", sh.name, sh.N, sh.K, t_bf16 * 1e3, t_fp8 * 1e3,
                double(n) / (t_fp8 * 1e-3) / 1e9, p_bf16, p_fp8, ok ? "" : " (GEMM refused)",
                2.0 * Mp * double(n) / (p_fp8 * 1e-3) / 1e12);
    step_bf16 += t_bf16 * sh.per_step, step_fp8 += t_fp8 * sh.per_step;
    step_fp8_bytes += double(n) * sh.per_step;
    for (int i = 0; i < 4; ++i) {
      const int M = dec_rows[i];
      dec[i][0] += sh.per_step * time_ms([&] {
        gemv_mma(0, yb, false, false, sh.N, GemvX::Plain, xb, sh.K, PView{}, 0.f, wb[c++ % kCopies], sh.K, PView{}, M,
                 sh.N, sh.K);
      }, 40);
      dec[i][1] += sh.per_step * time_ms([&] {
        fp8_gemv<bf16>(0, yb, false, sh.N, xb, sh.K, wq[c++ % kCopies], sh.K, ws, 0, PView{}, M, sh.N, sh.K);
      }, 40);
      dec[i][2] += sh.per_step * time_ms([&] {
        mma_ok &= gemv_mma_fp8(0, yb, false, sh.N, xb, sh.K, wq[c++ % kCopies], sh.K, ws, 0, PView{}, M, sh.N, sh.K);
      }, 40);
    }
    pp_bf16 += p_bf16 * sh.per_step, pp_fp8 += p_fp8 * sh.per_step;
    for (int k = 0; k < kCopies; ++k) cudaFree(wb[k]), cudaFree(wq[k]);
    cudaFree(ws);
  }
  std::printf("\nper decode step, the projections of 32 layers: bf16 GEMV %.3f ms, FP8 GEMV %.3f ms (saves %.3f ms)\n",
              step_bf16, step_fp8, step_bf16 - step_fp8);
  std::printf("per 8192-token prefill, the same projections: bf16 cuBLAS %.1f ms, FP8 %.1f ms (saves %.1f ms)\n", pp_bf16,
              pp_fp8, pp_bf16 - pp_fp8);
  std::printf("\nper decode step of M rows, the same projections (ms; the FP8 tensor-core GEMV's weight GB/s):\n"
              "| M | bf16 tensor-core GEMV | FP8 warp per row | FP8 tensor-core GEMV | its GB/s |\n"
              "| ---: | ---: | ---: | ---: | ---: |\n");
  for (int i = 0; i < 4; ++i)
    std::printf("| %d | %.3f | %.3f | %.3f | %.0f |\n", dec_rows[i], dec[i][0], dec[i][1], dec[i][2],
                step_fp8_bytes / (dec[i][2] * 1e-3) / 1e9);
  if (!mma_ok) std::printf("(gemv_mma_fp8 refused a shape: its column is not what it says)\n");
  std::printf("GEMM mode after the timings: %d\n", g_gemm.mode);
  return bad ? 1 : 0;
}
