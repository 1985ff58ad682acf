#include "backend/communicator.h"

#include <cstdlib>

#include "backend/backend.h"
#include "backend/thread_communicator.h"
#include "core/error.h"

#ifdef BAMBA_HAVE_CUDA
#include "backend/cuda/nccl_communicator.h"
#endif

namespace bamba {

namespace {
void check_contiguous(const Tensor& t, const char* what) {
  BAMBA_CHECK(t && t.contiguous(), what, ": the tensor must be contiguous (got ", t.shape_str(), " with row stride ",
              t.ld, ")");
}
}  // namespace

void Communicator::all_reduce_sum(Tensor t) {
  check_contiguous(t, "all_reduce_sum");
  all_reduce_sum(t.data, size_t(t.numel()), t.dtype);
}

void Communicator::all_gather(Tensor out, Tensor in) {
  check_contiguous(in, "all_gather");
  check_contiguous(out, "all_gather");
  BAMBA_CHECK(out.dtype == in.dtype && out.numel() == in.numel() * size(), "all_gather: output ", out.shape_str(),
              " does not hold ", size(), " × ", in.shape_str());
  all_gather(out.data, in.data, size_t(in.numel()), in.dtype);
}

void Communicator::broadcast(Tensor t, int root) {
  check_contiguous(t, "broadcast");
  broadcast(t.data, size_t(t.numel()), t.dtype, root);
}

namespace {
// The first of `names` that is set, parsed as an integer in [lo, hi]; `fallback` when none is.
int env_int(std::initializer_list<const char*> names, int fallback, int lo, int hi, const char** which) {
  for (const char* n : names) {
    const char* v = std::getenv(n);
    if (!v || !*v) continue;
    char* end = nullptr;
    const long x = std::strtol(v, &end, 10);
    if (*end != '\0' || x < lo || x > hi) fail("environment variable ", n, "=\"", v, "\": expected an integer in [", lo, ", ", hi, "]");
    if (which) *which = n;
    return int(x);
  }
  return fallback;
}
}  // namespace

LaunchEnv launch_env() {
  LaunchEnv e;
  const char* size_var = nullptr;
  const char* rank_var = nullptr;
  e.world_size = env_int({"WORLD_SIZE", "SLURM_STEP_NUM_TASKS", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE"}, 1, 1, 1 << 20, &size_var);
  e.rank = env_int({"RANK", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK", "PMI_RANK"}, 0, 0, 1 << 20, &rank_var);
  e.local_rank = env_int({"LOCAL_RANK", "SLURM_LOCALID", "OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID"}, 0, 0, 1 << 16, nullptr);
  e.launched = size_var != nullptr;
  if (e.rank >= e.world_size)
    fail("environment: rank ", e.rank, " (", rank_var ? rank_var : "RANK", ") is not below the world size ",
         e.world_size, " (", size_var ? size_var : "WORLD_SIZE", ")");
  if (const char* a = std::getenv("MASTER_ADDR"); a && *a) e.master_addr = a;
  e.master_port = env_int({"MASTER_PORT"}, 29500, 1, 65535, nullptr);
  return e;
}

std::vector<std::unique_ptr<Communicator>> make_group_communicators(const std::vector<Backend*>& backends,
                                                                    const std::vector<int>& cuda_devices) {
  BAMBA_CHECK(!backends.empty(), "a group needs at least one rank");
  const Device d = backends[0]->device();
  for (Backend* b : backends) BAMBA_CHECK(b->device() == d, "the ranks of a group must all be CPU or all GPU backends");
  if (d == Device::CPU) return make_thread_communicators(int(backends.size()));
#ifdef BAMBA_HAVE_CUDA
  BAMBA_CHECK(cuda_devices.size() == backends.size(), "internal: one CUDA device per rank");
  std::vector<void*> streams;
  for (Backend* b : backends) streams.push_back(b->native_stream());
  return make_nccl_communicators(cuda_devices, streams);
#else
  fail("internal: GPU backends in a build without CUDA");
#endif
}

std::unique_ptr<Communicator> make_launch_communicator(const LaunchEnv& env, int device, void* stream) {
#ifdef BAMBA_HAVE_CUDA
  return make_nccl_communicator(env, device, stream);
#else
  (void)device, (void)stream;
  fail("WORLD_SIZE=", env.world_size, ": several processes talk over NCCL, and this bamba was built without CUDA "
       "(on the CPU, run the ranks as threads of one process: --nproc / --tensor-parallel-size)");
#endif
}

}  // namespace bamba
