#include "backend/backend.h"

#include "core/error.h"

namespace bamba {

void check_sampling(const SamplingParams& p) {
  BAMBA_CHECK(p.temperature >= 0 && p.temperature < 1e30f, "temperature must be >= 0 (got ", p.temperature, ")");
  BAMBA_CHECK(p.top_p > 0 && p.top_p <= 1, "top_p must be in (0, 1] (got ", p.top_p, ")");
  BAMBA_CHECK(p.top_k >= 0, "top_k must be >= 0 (got ", p.top_k, ")");
}

int cuda_device_count() {
#ifdef BAMBA_HAVE_CUDA
  return cuda_runtime_device_count();
#else
  return 0;
#endif
}

GpuInfo cuda_device_info(int index) {
#ifdef BAMBA_HAVE_CUDA
  if (index >= 0 && index < cuda_device_count()) return cuda_runtime_device_info(index);
#endif
  return {};
}

DType compute_dtype(const std::string& dtype, DType checkpoint) {
  if (dtype == "bf16") return DType::BF16;
  if (dtype == "fp32") return DType::F32;
  if (dtype == "auto") return checkpoint == DType::F32 ? DType::F32 : DType::BF16;
  fail("--dtype \"", dtype, "\" is not one of auto, bf16, fp32");
}

std::unique_ptr<Backend> make_backend(const std::string& device, DType compute) {
  if (device == "cpu") return make_cpu_backend();
  if (device == "auto") {
#ifdef BAMBA_HAVE_CUDA
    if (cuda_device_count() > 0) return make_cuda_backend(0, compute);
#endif
    return make_cpu_backend();
  }
  if (device == "cuda") {
#ifdef BAMBA_HAVE_CUDA
    if (cuda_device_count() == 0) fail("--device cuda: no CUDA GPU is visible");
    return make_cuda_backend(0, compute);
#else
    fail("--device cuda: this bamba was built without CUDA (configure with nvcc present and BAMBA_CUDA=AUTO or ON)");
#endif
  }
  fail("--device \"", device, "\" is not one of cpu, cuda, auto");
}

std::unique_ptr<Backend> make_rank_backend(const std::string& device, int index, DType compute) {
  if (index == 0) return make_backend(device, compute);
  const bool gpu = device == "cuda" || (device == "auto" && cuda_device_count() > 0);
  if (!gpu) return make_backend(device, compute);
#ifdef BAMBA_HAVE_CUDA
  if (index >= cuda_device_count())
    fail("rank ", index, " needs GPU ", index, ", but only ", cuda_device_count(), " CUDA GPU(s) are visible");
  return make_cuda_backend(index, compute);
#else
  fail("--device cuda: this bamba was built without CUDA");
#endif
}

}  // namespace bamba

namespace bamba {
void backward_not_implemented(const char* op, const std::string& backend) {
  fail(op, "_backward: not implemented on ", backend);
}
}  // namespace bamba

namespace bamba {
void Backend::set_batch_invariant(int32_t max_chunk) {
  if (max_chunk > 0) fail("--deterministic (batch-invariant kernels) is not implemented on ", name());
}
}  // namespace bamba

namespace bamba {
void Backend::rmsnorm_matmul(Tensor y, Tensor x, Tensor norm_w, float eps, Tensor W, Tensor bias, Tensor scratch) {
  rmsnorm(scratch, x, norm_w, eps);
  matmul(y, scratch, W, bias);
}
void Backend::swiglu_matmul_residual(Tensor h, Tensor gate_up, Tensor W, Tensor bias, Tensor act, Tensor out) {
  swiglu(act, gate_up);
  matmul_residual(h, act, W, bias, out);
}
void Backend::matmul_swiglu(Tensor act, Tensor x, Tensor W, Tensor bias, Tensor gate_up) {
  matmul(gate_up, x, W, bias);
  swiglu(act, gate_up);
}
void Backend::matmul_residual(Tensor h, Tensor x, Tensor W, Tensor bias, Tensor scratch) {
  matmul(scratch, x, W, bias);
  add(h, scratch);
}
}  // namespace bamba
