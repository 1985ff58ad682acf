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

std::unique_ptr<Backend> make_backend(const std::string& device) {
  if (device == "cpu") return make_cpu_backend();
  if (device == "auto") {
#ifdef BAMBA_HAVE_CUDA
    if (cuda_device_count() > 0) return make_cuda_backend();
#endif
    return make_cpu_backend();
  }
  if (device == "cuda") {
#ifdef BAMBA_HAVE_CUDA
    if (cuda_device_count() == 0) fail("--device cuda: no CUDA GPU is visible");
    return make_cuda_backend();
#else
    fail("--device cuda: this bamba was built without CUDA (configure with nvcc present and BAMBA_CUDA=AUTO or ON)");
#endif
  }
  fail("--device \"", device, "\" is not one of cpu, cuda, auto");
}

}  // namespace bamba
