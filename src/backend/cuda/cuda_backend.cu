// The CUDA backend: device memory, weight upload, the device copy of each StepBatch, dense matmuls through
// cuBLAS, dispatch of every op to its kernel family (one .cu file each), and CUDA graphs for decode steps.
// The compute dtype (given at construction: BF16 or F32, docs/numerics.md) is that of the 2-D weights, the
// activations, the residual stream and the KV pages; every op turns it into its kernels' element type in one
// place (dispatch_dtype). fp32 accumulation everywhere (F32 matmuls: cuBLAS SGEMM, no TF32), fp32 small
// parameters (1-D checkpoint tensors: norms, biases, A_log, D, dt_bias) and fp32 Mamba state; logits fp32.
#include <cublas_v2.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <map>
#include <set>
#include <tuple>
#include <type_traits>
#include <unordered_map>
#include <vector>

#include "backend/backend.h"
#include "backend/cuda/attention_decode.cuh"
#include "backend/cuda/gemv_mma.cuh"
#include "backend/cuda/fp8.cuh"
#include "backend/cuda/kernels.cuh"
#include "core/hash_uniform.h"

namespace bamba {
namespace cuda {
namespace {

#define CUBLAS_CHECK(expr)                                                                       \
  do {                                                                                           \
    cublasStatus_t st_ = (expr);                                                                 \
    if (st_ != CUBLAS_STATUS_SUCCESS)                                                            \
      ::bamba::fail("cuBLAS error at ", __FILE__, ":", __LINE__, ": ", #expr, ": ",              \
                    cublasGetStatusString(st_));                                                 \
  } while (0)

double mib(size_t b) { return double(b) / (1024.0 * 1024.0); }

template <typename T> constexpr DType dtype_of = std::is_same_v<T, float> ? DType::F32 : DType::BF16;
cudaDataType_t cuda_type(DType t) { return t == DType::F32 ? CUDA_R_32F : CUDA_R_16BF; }

// An activation or 2-D weight of the compute type T.
template <typename T>
T* act(Tensor t, const char* what) {
  if (t.device != Device::CUDA || t.dtype != dtype_of<T>)
    fail("cuda backend: ", what, " must be a CUDA ", dtype_name(dtype_of<T>), " tensor, got ", dtype_name(t.dtype),
         " on ", t.device == Device::CUDA ? "cuda" : "cpu");
  return t.ptr<T>();
}
float* f32(Tensor t, const char* what) {
  if (t.device != Device::CUDA || t.dtype != DType::F32) fail("cuda backend: ", what, " must be a CUDA F32 tensor");
  return t.ptr<float>();
}
PView pv(Tensor t, const char* what) {
  if (!t) return {};
  if (t.device != Device::CUDA || (t.dtype != DType::F32 && t.dtype != DType::BF16))
    fail("cuda backend: ", what, " must be a CUDA F32 or BF16 tensor");
  return {t.data, t.dtype == DType::BF16};
}

class CudaBackend final : public Backend {
 public:
  CudaBackend(int device, DType compute) : device_(device), dtype_(compute) {
    if (compute != DType::BF16 && compute != DType::F32)
      fail("cuda backend: compute dtype must be bf16 or fp32, not ", dtype_name(compute));
    CUDA_CHECK(cudaSetDevice(device));
    CUDA_CHECK(cudaGetDeviceProperties(&prop_, device));
    CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    CUBLAS_CHECK(cublasCreate(&cublas_));
    CUBLAS_CHECK(cublasSetStream(cublas_, stream_));
    // A fixed workspace, so that cuBLAS allocates nothing while a decode step is being recorded into a graph.
    cublas_ws_bytes_ = 64u << 20;
    CUDA_CHECK(cudaMalloc(&cublas_ws_, cublas_ws_bytes_));
    CUBLAS_CHECK(cublasSetWorkspace(cublas_, cublas_ws_, cublas_ws_bytes_));
    for (auto& e : stage_done_) CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    CUDA_CHECK(cudaEventCreateWithFlags(&meta_done_, cudaEventDisableTiming));
    const char* g = std::getenv("BAMBA_CUDA_GRAPHS");
    graphs_enabled_ = !(g && std::string(g) == "0");
    const char* gm = std::getenv("BAMBA_CUDA_GEMV_ROWS");  // decode rows up to which gemv.cu beats cuBLAS
    gemv_max_rows_ = gm ? std::atoi(gm) : kMaxGemvRows;
    // Rows from which a bf16 matmul takes the tensor-core GEMV (gemv_mma.cu) instead of gemv.cu's warp per row
    // (1: every decode step; 9: never), and the steps of N..8 rows for which the model folds norm / SwiGLU /
    // residual add into the decode GEMVs (9: never). Defaults as measured (bench/NOTES.md "decode2", H100):
    // the tensor-core GEMV is faster at every M (decode8 600 -> 960 tok/s, tg128 139.5 -> 140.2), the fused ops
    // slower at every M (tg128 125.4, decode8 869), so they are off until they win.
    const char* mr = std::getenv("BAMBA_CUDA_GEMV_MMA_ROWS");
    gemv_mma_rows_ = mr ? std::atoi(mr) : 1;
    // Rows from which an FP8 matmul of at most 8 rows takes the same tensor-core GEMV over E4M3 weights
    // (gemv_mma_fp8) instead of fp8_gemv.cu's warp per row (1: every decode step; 9: never). From 2: on an H100
    // (bench/NOTES.md v30) the warp per row is faster at one row (tg128 226.7 vs 216.6 tok/s), the tensor-core
    // kernel from two (decode4 543 → 802, decode8 599 → 1,485).
    const char* fr = std::getenv("BAMBA_CUDA_FP8_MMA_ROWS");
    fp8_mma_rows_ = fr ? std::atoi(fr) : 2;
    // The W8A8 prefill GEMM's fast accumulation (fp8.cuh): bf16 compute's default (0: promoted); the fp32 compute
    // dtype, the accurate mode, always promotes (its GEMM is within ~1e-4 of the CPU; fast accumulation moved the
    // bf16 GEMM's error by ~1e-3 on an H100, bench/NOTES.md v36).
    const char* fa = std::getenv("BAMBA_CUDA_FP8_FAST_ACCUM");
    fp8_gemm_.fast_accum = compute == DType::BF16 && !(fa && fa[0] == '0');
    const char* fu = std::getenv("BAMBA_CUDA_FUSE_ROWS");  // fused decode ops for steps of N..8 rows (9: never)
    fuse_rows_ = fu ? std::atoi(fu) : 9;
    // Whether swiglu_matmul_residual folds SwiGLU into down_proj's x load (1) or runs the SwiGLU kernel first and
    // folds only the residual add (the default): folded, each of down_proj's N / 16 blocks evaluates silu on all of
    // gate_up, the suspected cost of the fused path (bench/NOTES.md "decode2"; not yet measured apart).
    const char* fs = std::getenv("BAMBA_CUDA_FUSE_SWIGLU");
    fuse_swiglu_ = fs && fs[0] == '1';
    // Whether matmul_swiglu does SwiGLU in the gate_up GEMV's epilogue (the default) or runs the SwiGLU kernel
    // after the GEMV (0), for timing one against the other in one binary.
    const char* sp = std::getenv("BAMBA_CUDA_SWIGLU_PAIRS");
    swiglu_pairs_ = !(sp && sp[0] == '0');
    // Whether the SSD decode step loads the state before its pdl_wait where that is safe (ssd_step.cu); 0: after.
    const char* se = std::getenv("BAMBA_CUDA_SSD_EARLY_STATE");
    ssd_early_state_ = !(se && se[0] == '0');
    // Whether an FP8 matmul_swiglu of one row below BAMBA_CUDA_FP8_MMA_ROWS takes fp8_gemv.cu's row pairs (gate and
    // up rows in one warp, SwiGLU in its epilogue: the same bits) instead of the GEMV and the SwiGLU kernel (0).
    // Measured on an H100 (bench/NOTES.md v44): FP8 tg128 +0.6 %.
    const char* rp = std::getenv("BAMBA_CUDA_FP8_ROW_PAIRS");
    fp8_row_pairs_ = !(rp && rp[0] == '0');
    // Whether an FP8 GEMV of one row whose grid is one wave or less splits each row between two warps (fp8_gemv.cu's
    // split kernel: more loads in flight, up to what the SMs hold; other sums); BAMBA_CUDA_FP8_ROW_SPLIT=2, off
    // until measured (v44).
    const char* rs = std::getenv("BAMBA_CUDA_FP8_ROW_SPLIT");
    fp8_row_split_ = rs && rs[0] == '2';
    // MB of a decode GEMV's bf16 weight asked of L2 during the small kernels before it, at one row (prefetch_weight,
    // l2_prefetch.cu), spread over the weight's rows, each row's first bytes; 0: none. Measured on an H100 (NOTES
    // v44): tg128 +0.5 / +0.8 / +0.6 % at 16 / 24 / 32 MB; decode4 −0.1 to −0.4 % and FP8 weights no gain (decode4
    // −1.5 to −2.6 %), hence one row of bf16 weights only.
    const char* wp = std::getenv("BAMBA_CUDA_WINDOW_PREFETCH_MB");
    window_prefetch_bytes_ = int64_t((wp ? std::atof(wp) : 24.0) * 1048576.0);
    // The default at most half of L2 (H100 / H200: 50 MB), so that on a smaller card it does not evict its own lines.
    if (!wp) window_prefetch_bytes_ = std::min(window_prefetch_bytes_, int64_t(prop_.l2CacheSize) / 2);
    // Tokens per chunk of the bf16 tensor-core SSD scan (ssd_chunked.cu). 256 (Bamba's chunk_size) halves the
    // chunk-state traffic of 128 (P·N values per head and chunk, written, carried and read back) for ~20 % more
    // products at P = 64, N = 128 (bench/NOTES.md has both measured).
    const char* sq = std::getenv("BAMBA_SSD_CHUNK");
    ssd_chunk_ = sq ? std::atoi(sq) : 256;
    if (ssd_chunk_ < 64 || ssd_chunk_ > 256 || ssd_chunk_ % 64) fail("BAMBA_SSD_CHUNK must be 64, 128, 192 or 256");
  }
  ~CudaBackend() override {
    cudaStreamSynchronize(stream_);
    for (auto& [k, e] : graphs_) cudaGraphExecDestroy(e);
    for (auto& [p, n] : allocs_) cudaFree(p);
    for (auto& [k, p] : inv_freq_) cudaFree(p);
    for (void* p : std::initializer_list<void*>{meta_dev_, scratch_, tscratch_, tints_, stage_dev_[0], stage_dev_[1],
                                                cublas_ws_, sample_dev_, proc_dev_, decode_part_})
      cudaFree(p);
    for (void* p : std::initializer_list<void*>{meta_host_, stage_host_[0], stage_host_[1], sample_host_, proc_host_}) cudaFreeHost(p);
    for (auto& e : stage_done_) cudaEventDestroy(e);
    cudaEventDestroy(meta_done_);
    if (proc_done_) cudaEventDestroy(proc_done_);
    cudaFree(fp8_scratch_);
    if (fp8_gemm_.lt) cublasLtDestroy(fp8_gemm_.lt);
    cublasDestroy(cublas_);
    cudaStreamDestroy(stream_);
  }

  Device device() const override { return Device::CUDA; }
  std::string name() const override {
    return std::string("cuda (") + prop_.name + ", " + (dtype_ == DType::F32 ? "fp32" : "bf16") + ")";
  }
  DType weight_dtype() const override { return dtype_; }
  DType activation_dtype() const override { return dtype_; }
  void synchronize() override { CUDA_CHECK(cudaStreamSynchronize(stream_)); }
  void bind_thread() override { CUDA_CHECK(cudaSetDevice(device_)); }
  void* native_stream() override { return stream_; }

  // ---- memory
  void* dev_malloc(size_t n, const std::string& what) {
    void* p = nullptr;
    cudaError_t e = cudaMalloc(&p, std::max<size_t>(n, 1));
    if (e == cudaErrorMemoryAllocation) {
      cudaGetLastError();
      size_t free_b = 0, total_b = 0;
      cudaMemGetInfo(&free_b, &total_b);
      fail("out of GPU memory on ", prop_.name, ": ", what, " needs ", mib(n), " MiB, ", mib(free_b), " MiB free of ",
           mib(total_b), " MiB");
    }
    CUDA_CHECK(e);
    held_bytes_ += n;
    peak_bytes_ = std::max(peak_bytes_, held_bytes_);
    dev_sizes_[p] = n;
    return p;
  }
  void dev_free(void* p) {  // for what dev_malloc gave
    if (!p) return;
    auto it = dev_sizes_.find(p);
    if (it != dev_sizes_.end()) {
      held_bytes_ -= it->second;
      dev_sizes_.erase(it);
    }
    cudaFree(p);
  }
  int64_t peak_memory_bytes() const override { return int64_t(peak_bytes_); }
  Tensor alloc(DType dtype, std::initializer_list<int64_t> shape) override {
    Tensor t(nullptr, dtype, Device::CUDA, shape);
    const size_t n = t.nbytes();
    t.data = dev_malloc(n, "a " + t.shape_str() + " " + std::string(dtype_name(dtype)) + " tensor");
    CUDA_CHECK(cudaMemsetAsync(t.data, 0, std::max<size_t>(n, 1), stream_));
    allocs_[t.data] = n;
    return t;
  }
  void release(Tensor t) override {
    auto it = allocs_.find(t.data);
    if (it == allocs_.end()) return;
    CUDA_CHECK(cudaStreamSynchronize(stream_));
    dev_free(it->first);
    allocs_.erase(it);
    // A recorded decode step may point into the freed buffer, and a later workspace or cache may sit at the same
    // host address (the graphs' key): the recordings go (releases come only when an engine is torn down).
    drop_graphs();
  }
  void drop_graphs() {
    for (auto& [k, e] : graphs_) cudaGraphExecDestroy(e);
    graphs_.clear();
    seen_.clear();
  }

  // Weights stream from the mmap'd file through two pinned staging buffers (double-buffered with events), so the
  // host never holds a second copy: bf16 goes straight into place, F32/F16 are converted by a kernel.
  Tensor load_weight(std::span<const TensorInfo* const> parts, std::initializer_list<int64_t> shape) override {
    // FP8 weights (model/quantization.h) arrive as E4M3 bytes and stay so.
    const DType dst_t = !parts.empty() && parts[0]->dtype == DType::F8_E4M3 ? DType::F8_E4M3
                        : shape.size() == 1                                  ? DType::F32
                                                                             : dtype_;
    Tensor t = alloc(dst_t, shape);
    ensure_staging();
    char* dst = static_cast<char*>(t.data);
    for (const TensorInfo* p : parts) {
      const size_t esz = dtype_size(p->dtype);
      const size_t step = kStageBytes / esz * esz;
      for (size_t off = 0; off < p->nbytes; off += step) {
        const size_t n = std::min(step, p->nbytes - off);
        const int k = stage_next_++ & 1;
        CUDA_CHECK(cudaEventSynchronize(stage_done_[k]));  // buffer k's last copy/convert has finished
        std::memcpy(stage_host_[k], p->data + off, n);
        if (p->dtype == dst_t) {
          CUDA_CHECK(cudaMemcpyAsync(dst, stage_host_[k], n, cudaMemcpyHostToDevice, stream_));
        } else {
          CUDA_CHECK(cudaMemcpyAsync(stage_dev_[k], stage_host_[k], n, cudaMemcpyHostToDevice, stream_));
          convert(stream_, dst, dst_t, stage_dev_[k], p->dtype, int64_t(n / esz));
        }
        CUDA_CHECK(cudaEventRecord(stage_done_[k], stream_));
        dst += n / esz * dtype_size(dst_t);
      }
    }
    return t;
  }
  void fill_uniform(Tensor t, uint64_t seed, float lo, float hi) override {
    cuda::fill_uniform(stream_, t.data, t.dtype, t.numel(), seed, lo, hi);
  }
  void fill(Tensor t, float value) override { fill_value(stream_, t.data, t.dtype, t.numel(), value); }
  void to_host_f32(Tensor src, float* dst) override {
    const size_t esz = dtype_size(src.dtype), row = size_t(src.inner());
    std::vector<unsigned char> raw(size_t(src.numel()) * esz);
    CUDA_CHECK(cudaMemcpy2DAsync(raw.data(), row * esz, src.data, size_t(src.ld) * esz, row * esz, size_t(src.rows()),
                                 cudaMemcpyDeviceToHost, stream_));
    CUDA_CHECK(cudaStreamSynchronize(stream_));
    convert_to_f32(raw.data(), src.dtype, size_t(src.numel()), dst);
  }
  void from_host_f32(Tensor dst, const float* src) override {
    const size_t esz = dtype_size(dst.dtype), row = size_t(dst.inner());
    std::vector<unsigned char> raw(size_t(dst.numel()) * esz);
    convert_from_f32(src, size_t(dst.numel()), dst.dtype, raw.data());
    CUDA_CHECK(cudaMemcpy2DAsync(dst.data, size_t(dst.ld) * esz, raw.data(), row * esz, row * esz, size_t(dst.rows()),
                                 cudaMemcpyHostToDevice, stream_));
    CUDA_CHECK(cudaStreamSynchronize(stream_));
  }
  void zero_state_slot(std::span<const Tensor> state, int32_t slot) override {
    for (const Tensor& t : state)
      CUDA_CHECK(cudaMemsetAsync(static_cast<char*>(t.data) + size_t(slot) * size_t(t.ld) * dtype_size(t.dtype), 0,
                                 size_t(t.inner()) * dtype_size(t.dtype), stream_));
  }

  void copy_slice(Tensor t, int64_t src, int64_t dst) override {
    const size_t row_bytes = size_t(t.ld) * dtype_size(t.dtype);
    auto* base = static_cast<char*>(t.data);
    CUDA_CHECK(cudaMemcpyAsync(base + size_t(dst) * row_bytes, base + size_t(src) * row_bytes,
                               size_t(t.inner()) * dtype_size(t.dtype), cudaMemcpyDeviceToDevice, stream_));
  }

  // ---- the step
  void set_batch(const StepBatch& b) override;
  // Batch invariance: matmuls through invariant_matmul.cu; the SSD chunk fixed; and the prompt kernels chosen as
  // if every step's longest sequence had max_chunk tokens (the scheduler keeps one-token parts in steps of their
  // own, and no part longer), so the SSD path, its fused carry and the attention kernel do not follow the batch.
  void set_batch_invariant(int32_t max_chunk) override {
    if (std::max(max_chunk, 0) != invariant_chunk_) drop_graphs();  // they were recorded with the other kernels
    invariant_chunk_ = std::max(max_chunk, 0);
  }
  void run_step(uint64_t key, const std::function<void()>& ops) override;

  // ---- ops
  // Every op below: dispatch_dtype turns the compute dtype into the kernels' element type T.
  template <typename F>
  void typed(F&& f) { dispatch_dtype(dtype_, std::forward<F>(f)); }

  void embed(Tensor out, Tensor table) override {
    typed([&]<typename T>() {
      cuda::embed(stream_, act<T>(out, "embed out"), out.ld, act<T>(table, "embedding table"), table.ld, out.shape[1], db_);
    });
  }
  void matmul(Tensor y, Tensor x, Tensor W, Tensor bias) override {
    const int M = int(x.rows()), K = int(x.shape[1]), N = int(W.rows());
    if (M == 0) return;
    if (W.shape[1] != K || y.shape[1] != N) fail("cuda matmul: shapes ", y.shape_str(), " = ", x.shape_str(), " x ", W.shape_str(), "^T");
    const bool y_f32 = y.dtype == DType::F32;
    if (y_f32) f32(y, "matmul output");
    else if (y.dtype != dtype_) fail("cuda matmul: output must be F32 or the compute dtype");
    if (W.dtype == DType::F8_E4M3) return matmul_fp8(y, x, W, bias);
    bool done = false;
    typed([&]<typename T>() {
      if (invariant_chunk_ > 0) {  // batch invariance: one kernel, one reduction order, whatever M is
        if (W.dtype != dtype_ || x.dtype != dtype_) fail("cuda matmul: x and W must be of the compute dtype");
        invariant_matmul(stream_, y.data, y_f32, y.ld, act<T>(x, "matmul input"), x.ld, act<T>(W, "matmul weight"),
                         W.ld, M, N, K);
        if (bias) add_bias(stream_, y.data, y_f32, y.ld, pv(bias, "matmul bias"), M, N);
        done = true;
      } else if (M <= gemv_max_rows_) {
        if constexpr (std::is_same_v<T, bf16>)
          if (M >= gemv_mma_rows_)
            done = gemv_mma(stream_, y.data, y_f32, GemvY::Set, y.ld, GemvX::Plain, act<T>(x, "matmul input"), x.ld, {}, 0.f,
                            act<T>(W, "matmul weight"), W.ld, pv(bias, "matmul bias"), M, N, K);
        if (!done)
          done = gemv(stream_, y.data, y_f32, y.ld, act<T>(x, "matmul input"), x.ld, act<T>(W, "matmul weight"), W.ld,
                      pv(bias, "matmul bias"), M, N, K);
      }
    });
    if (done) return;
    const float alpha = 1.f, beta = 0.f;
    // Row-major y[M,N] = x[M,K] W[N,K]^T is column-major y^T[N,M] = W^T... as cuBLAS sees it: op(A)=Wᵀ (A is W
    // read column-major, i.e. [K,N] with lda = W.ld), B = x read column-major [K,M]. For F32 this is SGEMM:
    // CUBLAS_COMPUTE_32F never uses TF32 (that would be CUBLAS_COMPUTE_32F_FAST_TF32).
    if (W.dtype != dtype_ || x.dtype != dtype_) fail("cuda matmul: x and W must be of the compute dtype");
    CUBLAS_CHECK(cublasGemmEx(cublas_, CUBLAS_OP_T, CUBLAS_OP_N, N, M, K, &alpha, W.data, cuda_type(dtype_),
                              int(W.ld), x.data, cuda_type(dtype_), int(x.ld), &beta, y.data, cuda_type(y.dtype),
                              int(y.ld), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    if (bias) add_bias(stream_, y.data, y_f32, y.ld, pv(bias, "matmul bias"), M, N);
  }
  // ---- fused decode ops (gemv_mma.cu): one kernel where the shapes suit it, else the composed default
  bool fuse_decode(int64_t rows) const override {
    return dtype_ == DType::BF16 && invariant_chunk_ == 0 && rows >= std::max(fuse_rows_, 1) && rows <= gemv_max_rows_;
  }
  // The fused kernel for y (= or +=) op(x) · Wᵀ; false when it does not take these tensors. (Called whenever the
  // op is: fuse_decode is the model's policy, not the op's.)
  bool fused_gemv(Tensor y, bool residual, GemvX mode, Tensor x, Tensor norm_w, float eps, Tensor W, Tensor bias) {
    const int M = int(x.rows()), N = int(W.rows()), K = int(W.shape[1]);
    if (dtype_ != DType::BF16 || invariant_chunk_ > 0 || M > gemv_max_rows_ || W.dtype != DType::BF16 || x.dtype != DType::BF16 || y.rows() != M || y.shape[1] != N ||
        (y.dtype != DType::BF16 && (residual || y.dtype != DType::F32)))
      return false;
    return gemv_mma(stream_, y.data, y.dtype == DType::F32, residual ? GemvY::Add : GemvY::Set, y.ld, mode, static_cast<const bf16*>(x.data),
                    x.ld, norm_w ? pv(norm_w, "norm weight") : PView{}, eps, static_cast<const bf16*>(W.data), W.ld,
                    pv(bias, "matmul bias"), M, N, K);
  }
  void rmsnorm_matmul(Tensor y, Tensor x, Tensor norm_w, float eps, Tensor W, Tensor bias, Tensor scratch) override {
    if (x.shape[1] != W.shape[1] || !fused_gemv(y, false, GemvX::RmsNorm, x, norm_w, eps, W, bias))
      Backend::rmsnorm_matmul(y, x, norm_w, eps, W, bias, scratch);
  }
  void swiglu_matmul_residual(Tensor h, Tensor gate_up, Tensor W, Tensor bias, Tensor act, Tensor out) override {
    if (!fuse_swiglu_ || gate_up.shape[1] != 2 * W.shape[1] ||
        !fused_gemv(h, true, GemvX::SwiGlu, gate_up, {}, 0.f, W, bias))
      Backend::swiglu_matmul_residual(h, gate_up, W, bias, act, out);  // swiglu, then this->matmul_residual
  }
  // Decode's gate_up GEMV with SwiGLU in its epilogue (gemv_mma.cu, GemvY::SwiGlu: the same bits as the matmul and
  // the SwiGLU kernel, one launch and no [M, 2F] round trip) where the GEMV would be the tensor-core one anyway;
  // FP8 at one row: fp8_gemv.cu's warp per row over gate and up rows together (BAMBA_CUDA_FP8_ROW_PAIRS=0: not).
  void matmul_swiglu(Tensor act, Tensor x, Tensor W, Tensor bias, Tensor gate_up) override {
    const int M = int(x.rows()), K = int(x.shape[1]), N = int(W.rows());
    bool done = false;
    if (swiglu_pairs_ && M >= 1 && M <= gemv_max_rows_ && invariant_chunk_ == 0 && dtype_ == DType::BF16 &&
        x.dtype == DType::BF16 && act.dtype == DType::BF16 && W.shape[1] == K && act.rows() == M &&
        2 * act.shape[1] == N) {
      const PView b = bias ? pv(bias, "matmul bias") : PView{};
      const auto* xp = static_cast<const bf16*>(x.data);
      if (W.dtype == DType::BF16 && M >= gemv_mma_rows_)
        done = gemv_mma(stream_, act.data, false, GemvY::SwiGlu, act.ld, GemvX::Plain, xp, x.ld, {}, 0.f,
                        static_cast<const bf16*>(W.data), W.ld, b, M, N, K);
      else if (W.dtype == DType::F8_E4M3 && W.scale && W.device == Device::CUDA && M >= fp8_mma_rows_)
        done = gemv_mma_fp8(stream_, act.data, false, GemvY::SwiGlu, act.ld, xp, x.ld, W.ptr<uint8_t>(), W.ld,
                            W.scale, W.scale_block, b, M, N, K);
      else if (W.dtype == DType::F8_E4M3 && W.scale && W.device == Device::CUDA && M == 1 && fp8_row_pairs_ &&
               W.scale_block == 0)
        done = cuda::fp8_gemv_swiglu(stream_, static_cast<bf16*>(act.data), xp, W.ptr<uint8_t>(), W.ld, W.scale, b,
                                     N, K);
    }
    if (!done) Backend::matmul_swiglu(act, x, W, bias, gate_up);
  }
  void matmul_residual(Tensor h, Tensor x, Tensor W, Tensor bias, Tensor scratch) override {
    if (x.shape[1] != W.shape[1] || !fused_gemv(h, true, GemvX::Plain, x, {}, 0.f, W, bias))
      Backend::matmul_residual(h, x, W, bias, scratch);
  }
  // FP8 weights (fp8.cuh): W8A16 for decode (up to 8 rows: gemv_mma.cu's tensor-core GEMV where it takes the shape,
  // else fp8_gemv.cu's warp per row), for batch-invariant mode (whose rows must not depend on M) and for block
  // scales at every M (fp8_gemv.cu); otherwise the activations quantized per token into fp8_scratch_ and the W8A8
  // GEMM.
  void matmul_fp8(Tensor y, Tensor x, Tensor W, Tensor bias) {
    const int M = int(x.rows()), K = int(x.shape[1]), N = int(W.rows());
    const bool y_f32 = y.dtype == DType::F32;
    if (!W.scale || W.device != Device::CUDA) fail("cuda matmul: F8_E4M3 weight ", W.shape_str(), " without CUDA scales");
    const auto* wq = W.ptr<uint8_t>();
    typed([&]<typename T>() {
      const T* xp = act<T>(x, "matmul input");
      if (M > kMaxGemvRows && invariant_chunk_ == 0 && W.scale_block == 0) {
        const int64_t ldq = (K + 15) / 16 * 16;
        uint8_t* xq = fp8_scratch(size_t(M) * size_t(ldq) + size_t(M) * 4);
        float* xs = reinterpret_cast<float*>(xq + size_t(M) * size_t(ldq));
        quantize_rows_fp8<T>(stream_, xq, ldq, xs, xp, x.ld, M, K);
        if (!fp8_gemm_.lt) {
          CUBLAS_CHECK(cublasLtCreate(&fp8_gemm_.lt));
          fp8_gemm_.workspace = cublas_ws_;  // the same stream: cuBLAS and cuBLASLt never run at once
          fp8_gemm_.workspace_bytes = cublas_ws_bytes_;
        }
        if (fp8_gemm(fp8_gemm_, stream_, y.data, y_f32, y.ld, xq, ldq, xs, wq, W.ld, W.scale, M, N, K)) {
          if (bias) add_bias(stream_, y.data, y_f32, y.ld, pv(bias, "matmul bias"), M, N);
          return;
        }
        // A shape cuBLASLt's FP8 GEMM does not take (K not a multiple of 16, ...): the same W8A8 arithmetic with
        // the rounded activations through the GEMV kernel.
        T* xr = reinterpret_cast<T*>(fp8_scratch(size_t(M) * size_t(K) * sizeof(T)));
        fake_quantize_rows_fp8<T>(stream_, xr, xp, x.ld, M, K);
        fp8_gemv<T>(stream_, y.data, y_f32, y.ld, xr, K, wq, W.ld, W.scale, 0, pv(bias, "matmul bias"), M, N, K);
        return;
      }
      // Decode: the tensor-core GEMV where it takes the shape (not in batch-invariant mode, whose rows must come
      // out the same whatever M is: fp8_gemv's, one kernel for every M).
      if constexpr (std::is_same_v<T, bf16>)
        if (M >= fp8_mma_rows_ && M <= kMaxGemvRows && invariant_chunk_ == 0 &&
            gemv_mma_fp8(stream_, y.data, y_f32, GemvY::Set, y.ld, xp, x.ld, wq, W.ld, W.scale, W.scale_block,
                         pv(bias, "matmul bias"), M, N, K))
          return;
      fp8_gemv<T>(stream_, y.data, y_f32, y.ld, xp, x.ld, wq, W.ld, W.scale, W.scale_block, pv(bias, "matmul bias"), M, N,
                  K, fp8_row_split_ && invariant_chunk_ == 0);
    });
  }
  // Grow-only: the quantized activations of a W8A8 GEMM, then their scales. A decode step of more than 8
  // sequences is recorded into a graph, but only on its second run (run_step), after the first has grown this;
  // a graph recorded before a growth would point at the freed buffer, so growing drops the recordings.
  uint8_t* fp8_scratch(size_t bytes) {
    if (bytes > fp8_scratch_bytes_) {
      if (capturing_) fail("cuda backend: FP8 scratch grows while a decode step is being recorded");
      CUDA_CHECK(cudaStreamSynchronize(stream_));
      drop_graphs();
      dev_free(fp8_scratch_);
      fp8_scratch_ = static_cast<uint8_t*>(dev_malloc(bytes, "the FP8 activation scratch"));
      fp8_scratch_bytes_ = bytes;
    }
    return fp8_scratch_;
  }
  void quantize_fp8(Tensor q, Tensor scale, Tensor w) override {
    if (q.dtype != DType::F8_E4M3 || q.rows() != w.rows() || q.shape[1] != w.shape[1] || scale.numel() != w.rows())
      fail("cuda quantize_fp8: q ", q.shape_str(), " ", dtype_name(q.dtype), ", scale ", scale.shape_str(), " for w ", w.shape_str());
    dispatch_dtype(w.dtype, [&]<typename T>() {
      quantize_rows_fp8<T>(stream_, q.ptr<uint8_t>(), q.ld, f32(scale, "quantize_fp8 scale"), act<T>(w, "quantize_fp8 input"),
                           w.ld, w.rows(), w.shape[1]);
    });
  }
  void rmsnorm(Tensor out, Tensor x, Tensor w, float eps) override {
    typed([&]<typename T>() {
      cuda::rmsnorm<T>(stream_, act<T>(out, "rmsnorm out"), out.ld, act<T>(x, "rmsnorm x"), x.ld, nullptr, 0,
                       pv(w, "norm weight"), x.rows(), x.shape[1], eps);
    });
  }
  void add_rmsnorm(Tensor h, Tensor x, Tensor out, Tensor w, float eps) override {
    typed([&]<typename T>() {
      cuda::rmsnorm<T>(stream_, act<T>(out, "rmsnorm out"), out.ld, act<T>(h, "residual"), h.ld, act<T>(x, "rmsnorm x"),
                       x.ld, pv(w, "norm weight"), h.rows(), h.shape[1], eps);
    });
  }
  void add(Tensor h, Tensor x) override {
    typed([&]<typename T>() {
      add_inplace<T>(stream_, act<T>(h, "add h"), h.ld, act<T>(x, "add x"), x.ld, h.rows(), h.shape[1]);
    });
  }
  void conv1d_silu(Tensor out, Tensor xBC, Tensor weight, Tensor bias, Tensor conv_state) override {
    typed([&]<typename T>() {
      cuda::conv1d_silu<T>(stream_, act<T>(out, "conv out"), out.ld, act<T>(xBC, "conv in"), xBC.ld,
                           pv(weight, "conv weight"), pv(bias, "conv bias"), f32(conv_state, "conv state"),
                           xBC.shape[1], weight.shape[1], db_, max_seq_len_);
    });
    conv_just_launched_ = true;
  }
  void ssd(Tensor y, Tensor xBC, Tensor dt, Tensor A_log, Tensor D, Tensor dt_bias, Tensor ssm_state,
           const MambaOpsConfig& c) override {
    for (const Tensor* t : {&y, &xBC, &dt})
      if (t->dtype != dtype_) fail("cuda ssd: y, xBC and dt must be of the compute dtype");
    SsdArgs a{y.data, y.ld, xBC.data, xBC.ld, dt.data, dt.ld, pv(A_log, "A_log"),
              pv(D, "D"), pv(dt_bias, "dt_bias"), ssm_state.data, int(c.n_heads), int(c.d_head),
              int(c.n_groups), int(c.d_state), int(c.chunk_size), c.time_step_min, c.time_step_max};
    const size_t need = ssd_scratch_floats(a, db_, max_seq_len_, dtype_ == DType::BF16);
    if (need > scratch_floats_) {
      if (capturing_) fail("internal: ssd scratch grows during graph capture");
      CUDA_CHECK(cudaStreamSynchronize(stream_));
      dev_free(scratch_);
      scratch_ = static_cast<float*>(dev_malloc(need * 4, "the SSD chunk-state scratch"));
      scratch_floats_ = need;
    }
    if (ssm_state.device != Device::CUDA) fail("cuda ssd: the SSM state must be on the GPU");
    // Two element types: the activations' and the SSM state's (F32, or BF16: HybridCache's state option).
    typed([&]<typename T>() {
      dispatch_dtype(ssm_state.dtype, [&]<typename ST>() {
        cuda::ssd_keep_states<T, ST>(stream_, a, db_);  // (reads the slot's state before ssd rewrites it)
        // The decode step may read the state before its pdl_wait when the kernel just before it is the conv's
        // (ssd_step.cu): not when it follows another op's kernel, which might be a step writing this state.
        const bool early = ssd_early_state_ && conv_just_launched_;  // (cleared below: a second ssd may not)
        if (!cuda::ssd_step<T, ST>(stream_, a, db_, early))
          cuda::ssd<T, ST>(stream_, a, db_, max_seq_len_, scratch_, scratch_floats_);
      });
    });
    conv_just_launched_ = false;
  }
  void prefetch_weight(Tensor W, int64_t rows) override {
    if (window_prefetch_bytes_ <= 0 || rows != 1 || W.dtype != DType::BF16 || W.ndim != 2 ||
        W.device != Device::CUDA || W.rows() == 0)
      return;
    const int64_t esz = int64_t(dtype_size(W.dtype)), row_bytes = W.shape[1] * esz;
    const int64_t bytes = std::min(row_bytes, window_prefetch_bytes_ / W.rows()) / 16 * 16;
    cuda::l2_prefetch_rows(stream_, W.data, W.ld * esz, W.rows(), bytes);
  }
  void gated_rmsnorm(Tensor out, Tensor y, Tensor z, Tensor w, int64_t group_size, float eps) override {
    typed([&]<typename T>() {
      cuda::gated_rmsnorm<T>(stream_, act<T>(out, "gated norm out"), out.ld, act<T>(y, "gated norm y"), y.ld,
                             act<T>(z, "gate z"), z.ld, pv(w, "gated norm weight"), y.rows(), y.shape[1], group_size, eps);
    });
  }
  void attention(Tensor out, Tensor qkv, Tensor k_pages, Tensor v_pages, const AttentionOpsConfig& c) override {
    for (const Tensor* t : {&out, &qkv, &k_pages, &v_pages})
      if (t->dtype != dtype_) fail("cuda attention: out, qkv and the KV pages must be of the compute dtype");
    AttnArgs a{out.data, out.ld, qkv.data, qkv.ld, k_pages.data, v_pages.data,
               inv_freq(c), int(c.n_heads), int(c.n_kv_heads), int(c.head_dim), int(c.rotary_dim),
               int(c.block_size), c.scale};
    // Decode steps split over the keys (flash-decoding) unless under batch invariance, which keeps the kernel
    // its bits were fixed with; the split follows the step's longest context, which is part of the graph key.
    // BAMBA_DECODE_SPLIT=0 keeps the CUDA-core kernel (to compare the two on one binary).
    static const bool split_on = [] {
      const char* e = std::getenv("BAMBA_DECODE_SPLIT");
      return !(e && e[0] == '0');
    }();
    DecodeSplit split;
    if (decode_ && invariant_chunk_ == 0 && split_on) {
      split = decode_split_plan(dtype_ == DType::BF16, a.nq, a.nkv, a.dh, db_.S, decode_ctx_cap_);
      const size_t need = decode_split_floats(split, db_.T, a.nq, a.dh);
      if (need > decode_part_floats_) {
        if (capturing_) fail("internal: the decode attention scratch grows during graph capture");
        CUDA_CHECK(cudaStreamSynchronize(stream_));
        dev_free(decode_part_);
        decode_part_ = static_cast<float*>(dev_malloc(need * 4, "the split decode attention scratch"));
        decode_part_floats_ = need;
        drop_graphs();  // they point at the old scratch
      }
      split.partials = decode_part_;
    }
    typed([&]<typename T>() {
      rope_and_cache<T>(stream_, a, db_);
      if (split.splits > 0) cuda::attention_decode_split<T>(stream_, a, db_, split);
      else cuda::attention<T>(stream_, a, db_, max_seq_len_);
    });
  }
  void swiglu(Tensor out, Tensor gate_up) override {
    typed([&]<typename T>() {
      cuda::swiglu<T>(stream_, act<T>(out, "swiglu out"), out.ld, act<T>(gate_up, "gate_up"), gate_up.ld, out.rows(),
                      out.shape[1]);
    });
  }
  // ---- ops of the relatives
  // By x's own dtype: activations, or the fp32 logits (logits_scaling, lm_head_multiplier).
  void scale(Tensor x, float s) override {
    if (x.device != Device::CUDA) fail("cuda scale: x must be a CUDA tensor");
    dispatch_dtype(x.dtype, [&]<typename T>() { cuda::scale<T>(stream_, x.ptr<T>(), x.ld, x.rows(), x.shape[1], s); });
  }
  void copy(Tensor dst, Tensor src) override {
    typed([&]<typename T>() {
      copy2d<T>(stream_, act<T>(dst, "copy dst"), dst.ld, act<T>(src, "copy src"), src.ld, dst.rows(), dst.shape[1]);
    });
  }
  void relu2(Tensor out, Tensor x) override {
    typed([&]<typename T>() {
      cuda::relu2<T>(stream_, act<T>(out, "relu2 out"), out.ld, act<T>(x, "relu2 x"), x.ld, out.rows(), out.shape[1]);
    });
  }
  void geglu(Tensor out, Tensor gate_up) override {
    typed([&]<typename T>() {
      cuda::geglu<T>(stream_, act<T>(out, "geglu out"), out.ld, act<T>(gate_up, "gate_up"), gate_up.ld, out.rows(),
                     out.shape[1]);
    });
  }
  void silu_gate(Tensor out, Tensor y, Tensor z) override {
    typed([&]<typename T>() {
      cuda::silu_gate<T>(stream_, act<T>(out, "silu_gate out"), out.ld, act<T>(y, "silu_gate y"), y.ld,
                         act<T>(z, "silu_gate z"), z.ld, out.rows(), out.shape[1]);
    });
  }
  void moe_route(Tensor experts, Tensor weights, Tensor logits, Tensor bias, const MoeOpsConfig& c) override {
    if (experts.dtype != DType::I32 || experts.device != Device::CUDA) fail("cuda moe_route: experts must be CUDA I32");
    MoeRouteArgs a{f32(logits, "router logits"), logits.ld, pv(bias, "router bias"),
                   experts.ptr<int32_t>(), experts.ld, f32(weights, "router weights"), weights.ld,
                   int(logits.rows()), int(c.n_experts), int(c.top_k), c.routing == MoeRouting::SigmoidGroup,
                   int(c.n_group), int(c.topk_group), int(c.norm_topk_prob), c.routed_scaling};
    cuda::moe_route(stream_, a);
  }
  void moe_experts(Tensor out, Tensor x, Tensor up, Tensor down, Tensor experts, Tensor weights, ExpertAct act_kind,
                   const MoeScratch& sc) override {
    const int64_t n_tok = x.rows(), k = experts.shape[1], E = up.shape[0];
    if (sc.index.dtype != DType::I32 || sc.index.numel() < 2 * n_tok * k + 2 * E + 2 || sc.up.rows() < n_tok * k)
      fail("cuda moe_experts: scratch too small for ", n_tok, " tokens of ", k, " experts");
    if (!up.contiguous() || !down.contiguous()) fail("cuda moe_experts: expert weights must be contiguous");
    typed([&]<typename T>() {
      MoeExpertsArgs a{act<T>(out, "moe out"), out.ld, act<T>(x, "moe x"), x.ld, act<T>(up, "experts up"),
                       act<T>(down, "experts down"), experts.ptr<int32_t>(), experts.ld, f32(weights, "moe weights"),
                       weights.ld, sc.index.ptr<int32_t>(), act<T>(sc.up, "moe up rows"), sc.up.ld,
                       act<T>(sc.act, "moe act rows"), sc.act.ld, act<T>(sc.down, "moe down rows"), sc.down.ld,
                       int(n_tok), int(x.shape[1]), int(E), int(k), int(up.shape[1]), int(down.shape[2]),
                       act_kind == ExpertAct::Relu2};
      cuda::moe_experts<T>(stream_, a);
    });
  }
  // ---- backward (training): the kernels of backward.cu, ssd_backward.cu, attention_backward.cu and
  // cross_entropy.cu; cuBLAS for every matmul (fp32 accumulation; parameter gradients accumulate in fp32 with
  // beta = 1). Activation gradients are of the compute dtype, parameter gradients F32.
  void embed_backward(Tensor dtable, Tensor dout, int32_t padding_idx) override;
  void matmul_backward(Tensor dx, Tensor dW, Tensor dbias, Tensor dy, Tensor x, Tensor W) override;
  void rmsnorm_backward(Tensor dx, Tensor dw, Tensor dout, Tensor x, Tensor w, float eps) override {
    norm_backward(dx, dw, dout, x, w, eps, false);
  }
  void add_rmsnorm_backward(Tensor dh, Tensor dw, Tensor dout, Tensor h, Tensor w, float eps) override {
    norm_backward(dh, dw, dout, h, w, eps, true);
  }
  void conv1d_silu_backward(Tensor dxBC, Tensor dweight, Tensor dbias, Tensor dout, Tensor xBC, Tensor weight,
                            Tensor bias) override;
  void ssd_backward(Tensor dxBC, Tensor ddt, Tensor dA_log, Tensor dD, Tensor ddt_bias, Tensor dstate0, Tensor dy,
                    Tensor xBC, Tensor dt, Tensor A_log, Tensor D, Tensor dt_bias, Tensor state0,
                    const MambaOpsConfig& c) override;
  void gated_rmsnorm_backward(Tensor dy, Tensor dz, Tensor dw, Tensor dout, Tensor y, Tensor z, Tensor w,
                              int64_t group_size, float eps) override;
  void attention_backward(Tensor dqkv, Tensor dout, Tensor qkv, const AttentionOpsConfig& c) override;
  void relu2_backward(Tensor dx, Tensor dout, Tensor x) override {
    typed([&]<typename T>() {
      cuda::relu2_backward<T>(stream_, act<T>(dx, "relu2 dx"), dx.ld, act<T>(dout, "relu2 dout"), dout.ld,
                              act<T>(x, "relu2 x"), x.ld, dout.rows(), dout.shape[1]);
    });
  }
  void silu_gate_backward(Tensor dy, Tensor dz, Tensor dout, Tensor y, Tensor z) override {
    typed([&]<typename T>() {
      cuda::silu_gate_backward<T>(stream_, act<T>(dy, "silu_gate dy"), dy.ld, act<T>(dz, "silu_gate dz"), dz.ld,
                                  act<T>(dout, "silu_gate dout"), dout.ld, act<T>(y, "silu_gate y"), y.ld,
                                  act<T>(z, "silu_gate z"), z.ld, dout.rows(), dout.shape[1]);
    });
  }
  void swiglu_backward(Tensor dgate_up, Tensor dout, Tensor gate_up) override {
    typed([&]<typename T>() {
      cuda::swiglu_backward<T>(stream_, act<T>(dgate_up, "swiglu dgate_up"), dgate_up.ld, act<T>(dout, "swiglu dout"),
                               dout.ld, act<T>(gate_up, "gate_up"), gate_up.ld, dout.rows(), dout.shape[1]);
    });
  }
  void geglu_backward(Tensor dgate_up, Tensor dout, Tensor gate_up) override {
    typed([&]<typename T>() {
      cuda::geglu_backward<T>(stream_, act<T>(dgate_up, "geglu dgate_up"), dgate_up.ld, act<T>(dout, "geglu dout"),
                              dout.ld, act<T>(gate_up, "gate_up"), gate_up.ld, dout.rows(), dout.shape[1]);
    });
  }
  void moe_route_backward(Tensor dlogits, Tensor dweights, Tensor logits, Tensor experts, const MoeOpsConfig& c) override {
    if (experts.dtype != DType::I32 || experts.device != Device::CUDA) fail("cuda moe_route_backward: experts must be CUDA I32");
    typed([&]<typename T>() {
      MoeRouteBackwardArgs a{act<T>(dlogits, "router logits gradient"), dlogits.ld, f32(dweights, "routing weights gradient"),
                             dweights.ld, f32(logits, "router logits"), logits.ld, experts.ptr<int32_t>(), experts.ld,
                             int(logits.rows()), int(c.n_experts), int(c.top_k), c.routing == MoeRouting::SigmoidGroup,
                             int(c.norm_topk_prob), c.routed_scaling};
      cuda::moe_route_backward<T>(stream_, a);
    });
  }
  void moe_experts_backward(Tensor dx, Tensor dup, Tensor ddown, Tensor dweights, Tensor dout, Tensor x, Tensor up,
                            Tensor down, Tensor experts, Tensor weights, ExpertAct act_kind,
                            const MoeScratch& sc) override {
    const int64_t n_tok = x.rows(), k = experts.shape[1], E = up.shape[0];
    if (sc.index.dtype != DType::I32 || sc.index.numel() < 2 * n_tok * k + 2 * E + 2 || sc.up.rows() < n_tok * k ||
        !sc.d_up || sc.d_up.rows() < n_tok * k || !sc.d_act || sc.d_act.rows() < n_tok * k)
      fail("cuda moe_experts_backward: scratch too small for ", n_tok, " tokens of ", k, " experts");
    if (!up.contiguous() || !down.contiguous() || !dup.contiguous() || !ddown.contiguous())
      fail("cuda moe_experts_backward: expert weights and their gradients must be contiguous");
    typed([&]<typename T>() {
      MoeExpertsBackwardArgs a{act<T>(dx, "moe dx"), dx.ld, f32(dup, "experts up gradient"),
                               f32(ddown, "experts down gradient"), f32(dweights, "routing weights gradient"),
                               dweights.ld, act<T>(dout, "moe dout"), dout.ld, act<T>(x, "moe x"), x.ld,
                               act<T>(up, "experts up"), act<T>(down, "experts down"), experts.ptr<int32_t>(),
                               experts.ld, f32(weights, "moe weights"), weights.ld, sc.index.ptr<int32_t>(),
                               act<T>(sc.up, "moe up rows"), sc.up.ld, act<T>(sc.act, "moe act rows"), sc.act.ld,
                               act<T>(sc.down, "moe down rows"), sc.down.ld, act<T>(sc.d_up, "moe d_up rows"),
                               sc.d_up.ld, act<T>(sc.d_act, "moe d_act rows"), sc.d_act.ld, int(n_tok),
                               int(x.shape[1]), int(E), int(k), int(up.shape[1]), int(down.shape[2]),
                               act_kind == ExpertAct::Relu2};
      cuda::moe_experts_backward<T>(stream_, a);
    });
  }
  double lm_head_cross_entropy(Tensor dx, Tensor dW, Tensor x, Tensor W, std::span<const int32_t> targets,
                               double ce_scale, double z_scale, int64_t chunk_rows) override;

  // The master's buffers: (w, null) for an fp32 master, (the bf16 weight, its low halves) for a split one.
  static std::pair<void*, uint16_t*> master_of(const Tensor& w, const Tensor& w_lo, const Tensor& model_copy,
                                               const char* op) {
    if (!w_lo) return {f32(w, "master weight"), nullptr};
    if (w.device != Device::CUDA || w.dtype != DType::BF16 || w_lo.device != Device::CUDA ||
        w_lo.dtype != DType::I16 || w_lo.numel() != w.numel() || model_copy)
      fail("cuda ", op, ": a split master is a CUDA BF16 weight and as many I16 low halves, with no copy");
    return {w.data, static_cast<uint16_t*>(w_lo.data)};
  }
  void adamw_update(Tensor w, Tensor g, Tensor m, Tensor v, const AdamWUpdate& u, Tensor model_copy,
                    Tensor w_lo) override {
    const int64_t n = w.numel();
    if (g.numel() != n || m.numel() != n || v.numel() != n || (model_copy && model_copy.numel() != n))
      fail("cuda adamw_update: buffers of different sizes");
    if (m.dtype != v.dtype || (m.dtype != DType::F32 && m.dtype != DType::BF16)) fail("cuda adamw_update: moments");
    const auto [wp, lo] = master_of(w, w_lo, model_copy, "adamw_update");
    const AdamWArgs a{u.step_size, u.bc2_sqrt, u.eps, u.one_minus_b1, u.b2, u.one_minus_b2, u.decay, u.grad_scale, u.key};
    cuda::adamw_step(stream_, wp, lo, f32(g, "gradient"), m.data, v.data, m.dtype == DType::BF16, n, a,
                     model_copy ? model_copy.data : nullptr, model_copy ? model_copy.dtype : DType::F32);
  }
  double sum_squares(Tensor g) override {
    const int64_t n = g.numel();
    if (n == 0) return 0;
    const int nb = cuda::blocks_for_sum_sq(n);
    double* part = reinterpret_cast<double*>(train_scratch(size_t(nb) * 2));
    cuda::sum_sq_partials(stream_, f32(g, "gradient"), n, part);
    std::vector<double> h(static_cast<size_t>(nb));
    CUDA_CHECK(cudaMemcpyAsync(h.data(), part, size_t(nb) * 8, cudaMemcpyDeviceToHost, stream_));
    CUDA_CHECK(cudaStreamSynchronize(stream_));
    double s = 0;
    for (double x : h) s += x;
    return s;
  }
  void scale_gradient(Tensor g, float c) override { cuda::scale_inplace(stream_, f32(g, "gradient"), g.numel(), c); }
  void adamw_update_many(std::span<const AdamWTensor> ts, const AdamWUpdate& u) override {
    if (ts.empty()) return;
    const char* e = std::getenv("BAMBA_ADAMW");  // "loop": one launch per tensor, as before (for comparisons)
    if (e && *e && std::strcmp(e, "loop") != 0 && std::strcmp(e, "many") != 0)
      fail("BAMBA_ADAMW must be \"loop\" or \"many\", not \"", e, "\"");
    if (e && std::strcmp(e, "loop") == 0) return Backend::adamw_update_many(ts, u);
    const bool bf16m = ts[0].m.dtype == DType::BF16;
    std::vector<cuda::AdamWTensorArgs> table;
    int64_t blocks = 0;
    for (const AdamWTensor& t : ts) {
      const int64_t n = t.w.numel();
      if (t.g.numel() != n || t.m.numel() != n || t.v.numel() != n || (t.model_copy && t.model_copy.numel() != n))
        fail("cuda adamw_update_many: buffers of different sizes");
      if (t.m.dtype != t.v.dtype || (t.m.dtype != DType::F32 && t.m.dtype != DType::BF16) ||
          (t.m.dtype == DType::BF16) != bf16m)
        fail("cuda adamw_update_many: moments must all be F32 or all BF16");
      if (n == 0) continue;
      const auto [wp, lo] = master_of(t.w, t.w_lo, t.model_copy, "adamw_update_many");
      table.push_back({wp, lo, f32(t.g, "gradient"), t.m.data, t.v.data,
                       t.model_copy ? t.model_copy.data : nullptr, n, blocks, t.key, t.decay,
                       t.model_copy && t.model_copy.dtype == DType::BF16 ? 1 : 0});
      blocks += cuda::adamw_many_blocks(n);
    }
    if (table.empty()) return;
    auto* dev_table = reinterpret_cast<cuda::AdamWTensorArgs*>(
        train_scratch((table.size() * sizeof(cuda::AdamWTensorArgs) + 3) / 4));
    CUDA_CHECK(cudaMemcpyAsync(dev_table, table.data(), table.size() * sizeof(cuda::AdamWTensorArgs),
                               cudaMemcpyHostToDevice, stream_));
    const AdamWArgs a{u.step_size, u.bc2_sqrt, u.eps, u.one_minus_b1, u.b2, u.one_minus_b2, 1.f, u.grad_scale, 0};
    // (a copy from pageable memory has taken the host table's bytes when it returns, so `table` may go)
    cuda::adamw_step_many(stream_, dev_table, int(table.size()), blocks, bf16m, a);
  }
  double sum_squares_many(std::span<const Tensor> gs) override {
    const char* e = std::getenv("BAMBA_ADAMW");
    if (e && std::strcmp(e, "loop") == 0) return Backend::sum_squares_many(gs);
    std::vector<cuda::SumSqTensorArgs> table;
    int64_t blocks = 0;
    for (const Tensor& g : gs) {
      const int64_t n = g.numel();
      if (n == 0) continue;
      const int nb = cuda::blocks_for_sum_sq(n);
      table.push_back({f32(g, "gradient"), n, blocks, nb});
      blocks += nb;
    }
    if (table.empty()) return 0;
    const size_t table_bytes = (table.size() * sizeof(cuda::SumSqTensorArgs) + 15) / 16 * 16;
    char* base = reinterpret_cast<char*>(train_scratch((table_bytes + size_t(blocks) * 8 + 3) / 4));
    auto* dev_table = reinterpret_cast<cuda::SumSqTensorArgs*>(base);
    double* part = reinterpret_cast<double*>(base + table_bytes);
    CUDA_CHECK(cudaMemcpyAsync(dev_table, table.data(), table.size() * sizeof(cuda::SumSqTensorArgs),
                               cudaMemcpyHostToDevice, stream_));
    cuda::sum_sq_many_partials(stream_, dev_table, int(table.size()), blocks, part);
    std::vector<double> h(static_cast<size_t>(blocks));
    CUDA_CHECK(cudaMemcpyAsync(h.data(), part, size_t(blocks) * 8, cudaMemcpyDeviceToHost, stream_));
    CUDA_CHECK(cudaStreamSynchronize(stream_));
    double total = 0;  // per tensor in block order, then tensors in order: sum_squares' bits, added as before
    for (const cuda::SumSqTensorArgs& t : table) {
      double s = 0;
      for (int b = 0; b < t.blocks; ++b) s += h[size_t(t.first_block + b)];
      total += s;
    }
    return total;
  }

  void gather_logit_rows(Tensor out, Tensor x) override {
    typed([&]<typename T>() {
      gather_rows<T>(stream_, act<T>(out, "gather out"), out.ld, act<T>(x, "gather in"), x.ld, x.shape[1], db_);
    });
  }
  void sample(Tensor logits, std::span<const SamplingParams> params, int32_t* out_tokens) override;
  void process_logits(Tensor logits, const LogitsProcessing& p) override;
  void token_logprobs(Tensor logits, std::span<const int32_t> rows, std::span<const int32_t> targets, float* logprob,
                      int32_t* greedy) override;

 private:
  static constexpr size_t kStageBytes = 32u << 20;
  void ensure_staging() {
    if (stage_host_[0]) return;
    for (int k = 0; k < 2; ++k) {
      CUDA_CHECK(cudaMallocHost(&stage_host_[k], kStageBytes));
      stage_dev_[k] = dev_malloc(kStageBytes, "the weight staging buffer");
      CUDA_CHECK(cudaEventRecord(stage_done_[k], stream_));
    }
  }
  const float* inv_freq(const AttentionOpsConfig& c) {
    auto key = std::make_tuple(c.rotary_dim, c.rope_theta, int(c.inv_freq_dtype), c.rope_factor, c.rope_low_freq_factor,
                               c.rope_high_freq_factor, c.rope_original_max_position);
    auto it = inv_freq_.find(key);
    if (it != inv_freq_.end()) return it->second;
    if (capturing_) fail("internal: RoPE table built during graph capture");
    std::vector<float> f = rope_inv_freq(c);
    float* d = static_cast<float*>(dev_malloc(f.size() * 4 + 4, "the RoPE table"));
    CUDA_CHECK(cudaMemcpy(d, f.data(), f.size() * 4, cudaMemcpyHostToDevice));
    inv_freq_[key] = d;
    return d;
  }

  void norm_backward(Tensor dx, Tensor dw, Tensor dout, Tensor x, Tensor w, float eps, bool accumulate);
  void check_training_batch(const char* op) const;
  float* train_scratch(size_t floats);       // grow-only device scratch of the backward ops
  int32_t* train_ints(size_t n);             // grow-only device int32 buffer (index lists, targets)
  void gemm(bool ta, bool tb, int m, int n, int k, const void* A, cudaDataType_t at, int lda, const void* B,
            cudaDataType_t bt, int ldb, float beta, void* C, cudaDataType_t ct, int ldc);

  int device_;
  DType dtype_;  // the compute dtype: 2-D weights, activations, KV pages
  cudaDeviceProp prop_{};
  cudaStream_t stream_ = nullptr;
  cublasHandle_t cublas_ = nullptr;
  void* cublas_ws_ = nullptr;
  size_t cublas_ws_bytes_ = 0;
  Fp8Gemm fp8_gemm_;  // FP8 weights' prefill GEMM (cuBLASLt, created at the first one)
  uint8_t* fp8_scratch_ = nullptr;
  size_t fp8_scratch_bytes_ = 0;
  std::unordered_map<void*, size_t> allocs_;
  // weight staging
  void* stage_host_[2] = {nullptr, nullptr};
  void* stage_dev_[2] = {nullptr, nullptr};
  cudaEvent_t stage_done_[2] = {};
  unsigned stage_next_ = 0;
  // the batch
  int32_t* meta_host_ = nullptr;  // pinned
  int32_t* meta_dev_ = nullptr;
  size_t meta_cap_ = 0;           // int32 elements of both
  cudaEvent_t meta_done_ = nullptr;
  DevBatch db_{};
  int max_seq_len_ = 0;  // the longest sequence of the step (batch invariance: at least invariant_chunk_ in prompts)
  bool decode_ = false;
  int32_t invariant_chunk_ = 0;  // set_batch_invariant
  float* scratch_ = nullptr;
  size_t scratch_floats_ = 0;
  int decode_ctx_cap_ = 64;         // decode steps: the longest sequence's keys rounded up to a power of two (>= 64)
  float* decode_part_ = nullptr;    // the split decode attention's partials
  size_t decode_part_floats_ = 0;
  std::map<std::tuple<int64_t, float, int, float, float, float, int64_t>, float*> inv_freq_;
  size_t held_bytes_ = 0, peak_bytes_ = 0;  // through dev_malloc (tensors, scratch); not cuBLAS's own
  std::unordered_map<void*, size_t> dev_sizes_;
  const StepBatch* host_batch_ = nullptr;  // the batch last given to set_batch (the backward ops read it)
  float* tscratch_ = nullptr;
  size_t tscratch_floats_ = 0;
  int32_t* tints_ = nullptr;
  size_t tints_n_ = 0;
  // graphs
  bool graphs_enabled_ = true, capturing_ = false;
  int gemv_max_rows_ = kMaxGemvRows;
  int gemv_mma_rows_ = 1;
  int64_t window_prefetch_bytes_ = 0;  // BAMBA_CUDA_WINDOW_PREFETCH_MB
  bool fp8_row_pairs_ = false;          // BAMBA_CUDA_FP8_ROW_PAIRS
  bool fp8_row_split_ = false;          // BAMBA_CUDA_FP8_ROW_SPLIT
  int fp8_mma_rows_ = 2;
  int fuse_rows_ = 9;
  bool fuse_swiglu_ = false;
  bool ssd_early_state_ = true;
  bool conv_just_launched_ = false;  // the last op was conv1d_silu (ssd's early state reads: see there)
  bool swiglu_pairs_ = true;
  int ssd_chunk_ = 256;
  // (engine key, T, S, R, log2 of decode_ctx_cap_ where the decode attention's split follows it)
  std::map<std::tuple<uint64_t, int, int, int, int>, cudaGraphExec_t> graphs_;
  std::set<std::tuple<uint64_t, int, int, int, int>> seen_;
  // sampling
  void grow_sample_buffers(size_t bytes);
  DevSampling* sample_host_ = nullptr;
  void* sample_dev_ = nullptr;
  size_t sample_cap_ = 0;
  void* proc_host_ = nullptr;  // process_logits' pinned staging and device buffers
  void* proc_dev_ = nullptr;
  size_t proc_cap_ = 0;
  cudaEvent_t proc_done_ = nullptr;
};

// Packs the batch into one int32 array (so one copy uploads it) in an order whose offsets depend only on
// (T, S, R) for decode steps, which is what lets a recorded graph be replayed with new contents.
void CudaBackend::set_batch(const StepBatch& b) {
  const int T = b.n_tokens(), S = b.n_seqs(), R = int(b.logit_rows.size());
  max_seq_len_ = b.max_seq_len();
  const bool keeps = b.keeps_states();
  decode_ = T == S && !keeps;
  host_batch_ = &b;
  if (decode_) {
    int longest = 1;
    for (int s = 0; s < S; ++s) longest = std::max(longest, b.past_len[size_t(s)] + 1);
    decode_ctx_cap_ = 64;
    while (decode_ctx_cap_ < longest) decode_ctx_cap_ *= 2;
  }
  if (invariant_chunk_ > 0 && !decode_) max_seq_len_ = std::max(max_seq_len_, int(invariant_chunk_));
  // Prefill chunk for the SSD scan: fixed for the bf16 tensor-core form; by batch size for ssd.cu's recurrence
  // (fixed too under batch invariance).
  const int Q = dtype_ == DType::BF16 ? ssd_chunk_ : invariant_chunk_ > 0 ? 64 : T >= 8192 ? 256 : T >= 2048 ? 128 : 64;
  std::vector<int32_t> cseq, cbeg, cfirst;
  for (int s = 0; s < S; ++s) {
    cfirst.push_back(int32_t(cseq.size()));
    for (int t = b.seq_start[size_t(s)]; t < b.seq_start[size_t(s) + 1]; t += Q) {
      cseq.push_back(s);
      cbeg.push_back(t);
    }
  }
  cfirst.push_back(int32_t(cseq.size()));
  const int nc = int(cseq.size());
  const size_t n = size_t(3 * T + 3 * S + 1 + R + 1 + (S + 1) + 2 * nc + (keeps ? T : 0)) + b.block_table.size();
  if (n > meta_cap_) {
    if (capturing_) fail("internal: batch buffer grows during graph capture");
    CUDA_CHECK(cudaStreamSynchronize(stream_));
    dev_free(meta_dev_);
    cudaFreeHost(meta_host_);
    meta_cap_ = std::max<size_t>(n * 2, 4096);
    meta_dev_ = static_cast<int32_t*>(dev_malloc(meta_cap_ * 4, "the step batch"));
    CUDA_CHECK(cudaMallocHost(&meta_host_, meta_cap_ * 4));
    for (auto& [k, e] : graphs_) cudaGraphExecDestroy(e);  // they point into the old buffer
    graphs_.clear();
  } else {
    CUDA_CHECK(cudaEventSynchronize(meta_done_));  // the previous upload has left the pinned buffer
  }
  int32_t* h = meta_host_;
  size_t o = 0;
  auto put = [&](const int32_t* src, size_t cnt) {
    const int32_t* dev = meta_dev_ + o;
    std::memcpy(h + o, src, cnt * 4);
    o += cnt;
    return dev;
  };
  std::vector<int32_t> seq_of(size_t(T), 0);
  for (int s = 0; s < S; ++s)
    for (int t = b.seq_start[size_t(s)]; t < b.seq_start[size_t(s) + 1]; ++t) seq_of[size_t(t)] = s;
  db_.tokens = put(b.tokens.data(), size_t(T));
  db_.positions = put(b.positions.data(), size_t(T));
  db_.seq_of = put(seq_of.data(), size_t(T));
  db_.seq_start = put(b.seq_start.data(), size_t(S + 1));
  db_.past_len = put(b.past_len.data(), size_t(S));
  db_.slot = put(b.state_slot.data(), size_t(S));
  db_.logit_rows = put(b.logit_rows.data(), size_t(R));
  db_.max_blocks = put(&b.max_blocks, 1);
  db_.chunk_first = put(cfirst.data(), size_t(S + 1));
  db_.chunk_seq = put(cseq.data(), size_t(nc));
  db_.chunk_begin = put(cbeg.data(), size_t(nc));
  db_.block_table = put(b.block_table.data(), b.block_table.size());
  db_.state_after = keeps ? put(b.state_after.data(), size_t(T)) : nullptr;  // (last: decode offsets unchanged)
  db_.T = T;
  db_.S = S;
  db_.R = R;
  db_.n_chunks = nc;
  db_.chunk_q = Q;
  CUDA_CHECK(cudaMemcpyAsync(meta_dev_, meta_host_, o * 4, cudaMemcpyHostToDevice, stream_));
  CUDA_CHECK(cudaEventRecord(meta_done_, stream_));
}

// Decode steps (one token per sequence) are recorded into a CUDA graph the second time a (key, T, S, R) shape
// is seen (the first run is eager, so that lazily built tables exist), and replayed afterwards: a 9B decode
// step is ~1,000 small launches, whose launch cost would otherwise be a large share of the 4.5 ms floor.
void CudaBackend::run_step(uint64_t key, const std::function<void()>& ops) {
  if (!graphs_enabled_ || !decode_) return ops();
  int cap_log2 = 0;  // graphs recorded with one split layout serve the steps whose contexts fit it
  if (dtype_ == DType::BF16 && invariant_chunk_ == 0)
    while ((64 << cap_log2) < decode_ctx_cap_) ++cap_log2;
  auto k = std::make_tuple(key, db_.T, db_.S, db_.R, cap_log2);
  auto it = graphs_.find(k);
  if (it == graphs_.end()) {
    if (seen_.insert(k).second) return ops();
    cudaGraph_t g = nullptr;
    CUDA_CHECK(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
    capturing_ = true;
    try {
      ops();
    } catch (...) {
      capturing_ = false;
      cudaStreamEndCapture(stream_, &g);
      if (g) cudaGraphDestroy(g);
      throw;
    }
    capturing_ = false;
    CUDA_CHECK(cudaStreamEndCapture(stream_, &g));
    cudaGraphExec_t exec = nullptr;
    CUDA_CHECK(cudaGraphInstantiate(&exec, g, 0));
    cudaGraphDestroy(g);
    it = graphs_.emplace(k, exec).first;
  }
  CUDA_CHECK(cudaGraphLaunch(it->second, stream_));
}

void CudaBackend::sample(Tensor logits, std::span<const SamplingParams> params, int32_t* out_tokens) {
  const int64_t R = logits.rows(), V = logits.shape[1];
  f32(logits, "sample logits");
  grow_sample_buffers(size_t(R) * (sizeof(DevSampling) + 4));
  for (int64_t r = 0; r < R; ++r) {
    const SamplingParams& p = params[size_t(r)];
    sample_host_[r] = {p.temperature, p.top_k, p.top_p, hash_uniform(p.seed, 0, 0.f, 1.f)};
  }
  auto* dp = static_cast<DevSampling*>(sample_dev_);
  auto* dout = reinterpret_cast<int32_t*>(dp + R);
  CUDA_CHECK(cudaMemcpyAsync(dp, sample_host_, size_t(R) * sizeof(DevSampling), cudaMemcpyHostToDevice, stream_));
  cuda::sample(stream_, logits.ptr<float>(), logits.ld, R, V, dp, dout);
  CUDA_CHECK(cudaMemcpyAsync(out_tokens, dout, size_t(R) * 4, cudaMemcpyDeviceToHost, stream_));
  CUDA_CHECK(cudaStreamSynchronize(stream_));
}

// The rows, edits and masks go up in one copy through buffers of their own; one kernel processes every row.
void CudaBackend::process_logits(Tensor logits, const LogitsProcessing& p) {
  const int64_t n = int64_t(p.rows.size()), V = logits.shape[1];
  f32(logits, "process_logits logits");
  if (n == 0) return;
  const size_t rows_b = size_t(n) * sizeof(cuda::DevLogitsRow), edits_b = p.edits.size() * sizeof(cuda::DevLogitEdit),
               masks_b = p.masks.size() * 4;
  const size_t bytes = rows_b + edits_b + masks_b;
  if (!proc_done_) CUDA_CHECK(cudaEventCreateWithFlags(&proc_done_, cudaEventDisableTiming));
  CUDA_CHECK(cudaEventSynchronize(proc_done_));  // the previous call's copy has read the staging buffer
  if (bytes > proc_cap_) {
    cudaFree(proc_dev_);
    cudaFreeHost(proc_host_);
    proc_cap_ = std::max<size_t>(bytes * 2, 1u << 16);
    proc_dev_ = dev_malloc(proc_cap_, "the logits processing buffers");
    CUDA_CHECK(cudaMallocHost(&proc_host_, proc_cap_));
  }
  auto* h = static_cast<char*>(proc_host_);
  auto* hr = reinterpret_cast<cuda::DevLogitsRow*>(h);
  for (int64_t i = 0; i < n; ++i) {
    const LogitsRow& r = p.rows[size_t(i)];
    BAMBA_CHECK(r.row >= 0 && r.row < logits.rows(), "process_logits: row ", r.row, " out of range");
    hr[i] = {r.row, r.repetition_penalty, r.min_p_shift, r.edit_begin, r.edit_count, 0, r.mask_offset};
  }
  auto* he = reinterpret_cast<cuda::DevLogitEdit*>(h + rows_b);
  for (size_t i = 0; i < p.edits.size(); ++i) {
    const LogitEdit& e = p.edits[i];
    BAMBA_CHECK(e.id >= 0 && e.id < V, "process_logits: token ", e.id, " out of range");
    he[i] = {e.id, e.repeat, e.bias, e.sub};
  }
  std::memcpy(h + rows_b + edits_b, p.masks.data(), masks_b);
  char* d = static_cast<char*>(proc_dev_);
  CUDA_CHECK(cudaMemcpyAsync(d, h, bytes, cudaMemcpyHostToDevice, stream_));
  CUDA_CHECK(cudaEventRecord(proc_done_, stream_));
  cuda::process_logits(stream_, logits.ptr<float>(), logits.ld, V, n, reinterpret_cast<const cuda::DevLogitsRow*>(d),
                       reinterpret_cast<const cuda::DevLogitEdit*>(d + rows_b),
                       reinterpret_cast<const uint32_t*>(d + rows_b + edits_b));
  // No synchronization: the buffers are this op's own (proc_done_ guards the staging one).
}

// The pinned host buffer and device buffer that sampling and scoring move their small per-row data through.
void CudaBackend::grow_sample_buffers(size_t bytes) {
  if (bytes <= sample_cap_) return;
  CUDA_CHECK(cudaStreamSynchronize(stream_));
  dev_free(sample_dev_);
  cudaFreeHost(sample_host_);
  sample_cap_ = std::max<size_t>(bytes * 2, 4096);
  sample_dev_ = dev_malloc(sample_cap_, "the sampling and scoring buffers");
  CUDA_CHECK(cudaMallocHost(&sample_host_, sample_cap_));
}

// One block per (row, target) pair; the pairs' inputs and outputs travel in one pinned buffer each way.
void CudaBackend::token_logprobs(Tensor logits, std::span<const int32_t> rows, std::span<const int32_t> targets,
                                 float* logprob, int32_t* greedy) {
  const int64_t n = int64_t(rows.size()), V = logits.shape[1];
  f32(logits, "token_logprobs logits");
  if (n == 0) return;
  for (int64_t i = 0; i < n; ++i)
    BAMBA_CHECK(rows[size_t(i)] >= 0 && rows[size_t(i)] < logits.rows() && targets[size_t(i)] >= 0 &&
                    targets[size_t(i)] < V,
                "token_logprobs: row or target out of range");
  grow_sample_buffers(size_t(n) * 16);  // rows, targets in; logprob, greedy out
  auto* h = reinterpret_cast<int32_t*>(sample_host_);
  std::memcpy(h, rows.data(), size_t(n) * 4);
  std::memcpy(h + n, targets.data(), size_t(n) * 4);
  auto* d = static_cast<int32_t*>(sample_dev_);
  CUDA_CHECK(cudaMemcpyAsync(d, h, size_t(n) * 8, cudaMemcpyHostToDevice, stream_));
  cuda::token_logprobs(stream_, logits.ptr<float>(), logits.ld, V, n, d, d + n, reinterpret_cast<float*>(d + 2 * n),
                       d + 3 * n);
  CUDA_CHECK(cudaMemcpyAsync(h + 2 * n, d + 2 * n, size_t(n) * 8, cudaMemcpyDeviceToHost, stream_));
  CUDA_CHECK(cudaStreamSynchronize(stream_));
  std::memcpy(logprob, h + 2 * n, size_t(n) * 4);
  std::memcpy(greedy, h + 3 * n, size_t(n) * 4);
}

// ---- training
void CudaBackend::check_training_batch(const char* op) const {
  if (!host_batch_) fail(op, "_backward: no batch was set");
  for (int32_t s = 0; s < host_batch_->n_seqs(); ++s)
    if (host_batch_->past_len[size_t(s)] != 0)
      fail(op, "_backward: sequence ", s, " continues from a cache (past_len ", host_batch_->past_len[size_t(s)],
           "); training runs whole sequences from a zero state");
}

float* CudaBackend::train_scratch(size_t floats) {
  if (floats > tscratch_floats_) {
    CUDA_CHECK(cudaStreamSynchronize(stream_));
    dev_free(tscratch_);
    tscratch_ = nullptr;
    tscratch_floats_ = 0;
    tscratch_ = static_cast<float*>(dev_malloc(floats * 4, "the backward ops' scratch"));
    tscratch_floats_ = floats;
  }
  return tscratch_;
}

int32_t* CudaBackend::train_ints(size_t n) {
  if (n > tints_n_) {
    CUDA_CHECK(cudaStreamSynchronize(stream_));
    dev_free(tints_);
    tints_ = nullptr;
    tints_n_ = 0;
    tints_ = static_cast<int32_t*>(dev_malloc(n * 4, "the backward ops' index buffer"));
    tints_n_ = n;
  }
  return tints_;
}

// Row-major C[m', n'] (+)= op(..) written as cuBLAS's column-major call: callers pass column-major m, n, k.
void CudaBackend::gemm(bool ta, bool tb, int m, int n, int k, const void* A, cudaDataType_t at, int lda, const void* B,
                       cudaDataType_t bt, int ldb, float beta, void* C, cudaDataType_t ct, int ldc) {
  const float alpha = 1.f;
  CUBLAS_CHECK(cublasGemmEx(cublas_, ta ? CUBLAS_OP_T : CUBLAS_OP_N, tb ? CUBLAS_OP_T : CUBLAS_OP_N, m, n, k, &alpha, A,
                            at, lda, B, bt, ldb, &beta, C, ct, ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

// The batch's rows grouped by token on the host (tokens ascending, rows ascending within a token), so each
// table row is summed by one thread in row order.
void CudaBackend::embed_backward(Tensor dtable, Tensor dout, int32_t padding_idx) {
  if (!host_batch_) fail("embed_backward: no batch was set");
  const std::vector<int32_t>& tok = host_batch_->tokens;
  const int64_t T = dout.rows(), H = dout.shape[1];
  std::vector<int32_t> order;
  for (int32_t t = 0; t < int32_t(T); ++t)
    if (tok[size_t(t)] != padding_idx) order.push_back(t);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return tok[size_t(a)] < tok[size_t(b)]; });
  std::vector<int32_t> uniq, start;
  for (size_t i = 0; i < order.size(); ++i)
    if (i == 0 || tok[size_t(order[i])] != tok[size_t(order[i - 1])]) {
      uniq.push_back(tok[size_t(order[i])]);
      start.push_back(int32_t(i));
    }
  start.push_back(int32_t(order.size()));
  if (uniq.empty()) return;
  std::vector<int32_t> packed = uniq;
  packed.insert(packed.end(), start.begin(), start.end());
  packed.insert(packed.end(), order.begin(), order.end());
  int32_t* d = train_ints(packed.size());
  CUDA_CHECK(cudaMemcpyAsync(d, packed.data(), packed.size() * 4, cudaMemcpyHostToDevice, stream_));
  CUDA_CHECK(cudaStreamSynchronize(stream_));  // `packed` is pageable and dies here
  typed([&]<typename T>() {
    cuda::embed_backward<T>(stream_, f32(dtable, "embedding gradient"), dtable.ld, act<T>(dout, "embed dout"), dout.ld,
                            H, d, d + uniq.size(), d + uniq.size() + start.size(), int(uniq.size()));
  });
}

void CudaBackend::matmul_backward(Tensor dx, Tensor dW, Tensor dbias, Tensor dy, Tensor x, Tensor W) {
  const int M = int(dy.rows()), N = int(dy.shape[1]), K = int(x.shape[1]);
  if (M == 0) return;
  for (const Tensor* t : {&dy, &x, &W})
    if (t->dtype != dtype_ || t->device != Device::CUDA) fail("cuda matmul_backward: dy, x and W must be of the compute dtype");
  if (W.rows() != N || W.shape[1] != K || x.rows() != M) fail("cuda matmul_backward: shapes");
  const cudaDataType_t ty = cuda_type(dtype_);
  // dx [M, K] = dy [M, N] · W [N, K]: column-major dxᵀ [K, M] = Wᵀ [K, N] · dyᵀ [N, M]
  if (dx) {
    if (dx.dtype != dtype_) fail("cuda matmul_backward: dx must be of the compute dtype");
    gemm(false, false, K, M, N, W.data, ty, int(W.ld), dy.data, ty, int(dy.ld), 0.f, dx.data, ty, int(dx.ld));
  }
  // dW [N, K] += dyᵀ · x: column-major dWᵀ [K, N] += xᵀ [K, M] · dy [M, N]
  if (dW) gemm(false, true, K, N, M, x.data, ty, int(x.ld), dy.data, ty, int(dy.ld), 1.f, f32(dW, "weight gradient"),
               CUDA_R_32F, int(dW.ld));
  if (dbias) {
    float* part = train_scratch(cuda::column_sum_scratch_floats(M, N));
    typed([&]<typename T>() {
      cuda::column_sum<T>(stream_, f32(dbias, "bias gradient"), act<T>(dy, "matmul dy"), dy.ld, M, N, part);
    });
  }
}

void CudaBackend::norm_backward(Tensor dx, Tensor dw, Tensor dout, Tensor x, Tensor w, float eps, bool accumulate) {
  const int64_t M = x.rows(), H = x.shape[1];
  float* scratch = train_scratch(cuda::rmsnorm_backward_scratch_floats(M, H));
  typed([&]<typename T>() {
    cuda::rmsnorm_backward<T>(stream_, act<T>(dx, "rmsnorm dx"), dx.ld, dw ? f32(dw, "norm weight gradient") : nullptr,
                              act<T>(dout, "rmsnorm dout"), dout.ld, act<T>(x, "rmsnorm x"), x.ld, pv(w, "norm weight"),
                              M, H, eps, accumulate, scratch);
  });
}

void CudaBackend::gated_rmsnorm_backward(Tensor dy, Tensor dz, Tensor dw, Tensor dout, Tensor y, Tensor z, Tensor w,
                                         int64_t group_size, float eps) {
  const int64_t M = y.rows(), I = y.shape[1];
  float* scratch = train_scratch(cuda::gated_rmsnorm_backward_scratch_floats(M, I, group_size));
  typed([&]<typename T>() {
    cuda::gated_rmsnorm_backward<T>(stream_, act<T>(dy, "gated norm dy"), dy.ld, act<T>(dz, "gated norm dz"), dz.ld,
                                    dw ? f32(dw, "gated norm weight gradient") : nullptr, act<T>(dout, "gated norm dout"),
                                    dout.ld, act<T>(y, "gated norm y"), y.ld, act<T>(z, "gated norm z"), z.ld,
                                    pv(w, "gated norm weight"), M, I, group_size, eps, scratch);
  });
}

void CudaBackend::conv1d_silu_backward(Tensor dxBC, Tensor dweight, Tensor dbias, Tensor dout, Tensor xBC,
                                       Tensor weight, Tensor bias) {
  check_training_batch("conv1d_silu");
  const int64_t CD = xBC.shape[1], K = weight.shape[1];
  if (!weight.contiguous() || (dweight && !dweight.contiguous()))
    fail("cuda conv1d_silu_backward: the weight and its gradient must be contiguous [CD, K]");
  float* scratch = train_scratch(cuda::conv1d_silu_backward_scratch_floats(db_.T, CD, K));
  typed([&]<typename T>() {
    cuda::conv1d_silu_backward<T>(stream_, act<T>(dxBC, "conv dxBC"), dxBC.ld,
                                  dweight ? f32(dweight, "conv weight gradient") : nullptr,
                                  dbias ? f32(dbias, "conv bias gradient") : nullptr, act<T>(dout, "conv dout"), dout.ld,
                                  act<T>(xBC, "conv in"), xBC.ld, pv(weight, "conv weight"), pv(bias, "conv bias"), CD, K,
                                  db_, scratch);
  });
}

void CudaBackend::ssd_backward(Tensor dxBC, Tensor ddt, Tensor dA_log, Tensor dD, Tensor ddt_bias, Tensor dstate0,
                               Tensor dy, Tensor xBC, Tensor dt, Tensor A_log, Tensor D, Tensor dt_bias, Tensor state0,
                               const MambaOpsConfig& c) {
  check_training_batch("ssd");
  for (const Tensor* t : {&dxBC, &ddt, &dy, &xBC, &dt})
    if (t->dtype != dtype_ || t->device != Device::CUDA) fail("cuda ssd_backward: activations must be of the compute dtype");
  SsdBwdArgs a{dxBC.data, dxBC.ld, ddt.data, ddt.ld, f32(dA_log, "dA_log"), f32(dD, "dD"), f32(ddt_bias, "ddt_bias"),
               dstate0 ? f32(dstate0, "dstate0") : nullptr, dy.data, dy.ld, xBC.data, xBC.ld, dt.data, dt.ld,
               pv(A_log, "A_log"), pv(D, "D"), pv(dt_bias, "dt_bias"), state0 ? f32(state0, "state0") : nullptr,
               int(c.n_heads), int(c.d_head), int(c.n_groups), int(c.d_state), c.time_step_min, c.time_step_max};
  float* scratch = train_scratch(cuda::ssd_backward_scratch_floats(a, db_, max_seq_len_, dtype_ == DType::BF16));
  typed([&]<typename T>() { cuda::ssd_backward<T>(stream_, a, db_, max_seq_len_, scratch); });
}

void CudaBackend::attention_backward(Tensor dqkv, Tensor dout, Tensor qkv, const AttentionOpsConfig& c) {
  check_training_batch("attention");
  AttnArgs a{nullptr, 0, qkv.data, qkv.ld, nullptr, nullptr, inv_freq(c), int(c.n_heads), int(c.n_kv_heads),
             int(c.head_dim), int(c.rotary_dim), int(c.block_size), c.scale};
  float* scratch = train_scratch(cuda::attention_backward_scratch_floats(a, db_));
  typed([&]<typename T>() {
    act<T>(qkv, "attention qkv");
    cuda::attention_backward<T>(stream_, act<T>(dqkv, "attention dqkv"), dqkv.ld, act<T>(dout, "attention dout"),
                                dout.ld, a, db_, scratch);
  });
}

// Chunks of rows: logits [n, V] fp32 = x · Wᵀ (cuBLAS), the row kernel turns them into the loss and dlogits (T;
// in place when T is fp32), then dx rows = dlogits · W and dW += dlogitsᵀ · x. Memory: one chunk of logits.
double CudaBackend::lm_head_cross_entropy(Tensor dx, Tensor dW, Tensor x, Tensor W, std::span<const int32_t> targets,
                                          double ce_scale, double z_scale, int64_t chunk_rows) {
  const int64_t Tn = x.rows(), V = W.rows(), H = W.shape[1];
  BAMBA_CHECK(int64_t(targets.size()) == Tn, "lm_head_cross_entropy: ", targets.size(), " targets for ", Tn, " rows");
  for (int32_t t : targets)
    BAMBA_CHECK(t == -100 || (t >= 0 && t < V), "label ", t, " is out of range for vocab_size ", V, " (or -100)");
  if (x.dtype != dtype_ || W.dtype != dtype_) fail("cuda lm_head_cross_entropy: x and W must be of the compute dtype");
  if (Tn == 0) return 0;
  if (const char* e = std::getenv("BAMBA_CE_CHUNK_ROWS"); e && *e) {  // for comparisons of the chunk size
    chunk_rows = std::atoll(e);
    if (chunk_rows <= 0) fail("BAMBA_CE_CHUNK_ROWS must be a positive number of rows, not \"", e, "\"");
  }
  const int64_t chunk = std::max<int64_t>(1, std::min(chunk_rows, Tn));
  const bool f32c = dtype_ == DType::F32;
  const size_t logit_floats = size_t(chunk * V), dlog_floats = f32c ? 0 : size_t(chunk * V + 1) / 2;
  float* scratch = train_scratch(logit_floats + dlog_floats + size_t(Tn));
  float* logits = scratch;
  void* dlog = f32c ? static_cast<void*>(logits) : static_cast<void*>(scratch + logit_floats);
  float* loss_rows = scratch + logit_floats + dlog_floats;
  int32_t* tg = train_ints(size_t(Tn));
  CUDA_CHECK(cudaMemcpyAsync(tg, targets.data(), size_t(Tn) * 4, cudaMemcpyHostToDevice, stream_));
  const cudaDataType_t ty = cuda_type(dtype_);
  const size_t esz = dtype_size(dtype_);
  for (int64_t r0 = 0; r0 < Tn; r0 += chunk) {
    const int n = int(std::min(chunk, Tn - r0));
    const void* xr = static_cast<const char*>(x.data) + size_t(r0 * x.ld) * esz;
    // logits [n, V] = x[r0:] · Wᵀ: column-major logitsᵀ [V, n] = W [V, H]... as W read column-major ᵀ
    gemm(true, false, int(V), n, int(H), W.data, ty, int(W.ld), xr, ty, int(x.ld), 0.f, logits, CUDA_R_32F, int(V));
    typed([&]<typename T>() {
      cuda::cross_entropy_rows<T>(stream_, logits, static_cast<T*>(dlog), n, V, tg + r0, float(ce_scale), float(z_scale),
                                  loss_rows + r0);
    });
    if (dx) {  // dx [n, H] = dlog [n, V] · W [V, H]
      void* dxr = static_cast<char*>(dx.data) + size_t(r0 * dx.ld) * esz;
      gemm(false, false, int(H), n, int(V), W.data, ty, int(W.ld), dlog, ty, int(V), 0.f, dxr, ty, int(dx.ld));
    }
    if (dW)  // dW [V, H] += dlogᵀ · x[r0:]: column-major dWᵀ [H, V] += xᵀ [H, n] · dlog [n, V]
      gemm(false, true, int(H), int(V), n, xr, ty, int(x.ld), dlog, ty, int(V), 1.f, f32(dW, "lm_head gradient"),
           CUDA_R_32F, int(dW.ld));
  }
  std::vector<float> rows(static_cast<size_t>(Tn));
  CUDA_CHECK(cudaMemcpyAsync(rows.data(), loss_rows, size_t(Tn) * 4, cudaMemcpyDeviceToHost, stream_));
  CUDA_CHECK(cudaStreamSynchronize(stream_));
  double loss = 0;
  for (float v : rows) loss += double(v);
  return loss;
}

}  // namespace
}  // namespace cuda

int cuda_runtime_device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return n;
}

GpuInfo cuda_runtime_device_info(int index) {
  cudaDeviceProp p{};
  if (cudaGetDeviceProperties(&p, index) != cudaSuccess) {
    cudaGetLastError();
    return {};
  }
  return {p.name, int64_t(p.totalGlobalMem)};
}

std::unique_ptr<Backend> make_cuda_backend(int device_index, DType compute) {
  return std::make_unique<cuda::CudaBackend>(device_index, compute);
}

}  // namespace bamba
