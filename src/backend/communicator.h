// Communicator: the collectives several ranks (GPUs, or threads standing in for them) use to act as one model:
// tensor-parallel inference (model/tensor_parallel.h: an all-reduce after each mixer and each MLP, an all-gather
// of the vocabulary-split logits) and data-parallel training (train/data_parallel.h: gradients summed, optimizer
// shards gathered). Two implementations:
//   - ThreadCommunicator (backend/thread_communicator.h): N ranks = N threads of one process over host memory;
//     the CPU twin, on which every use of a communicator is tested;
//   - NcclCommunicator (backend/cuda/nccl_communicator.h): one GPU per rank over NCCL.
//
// Every rank calls the same collectives in the same order with the same element counts (the usual contract of
// MPI and NCCL). Buffers live where the rank's backend keeps its tensors (host memory for the threads, device
// memory for NCCL). A rank that fails calls abort(): every other rank's pending or next collective then throws
// an Error naming the failed rank, instead of waiting forever; a rank that never arrives is caught by a timeout.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/tensor.h"

namespace bamba {

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual std::string name() const = 0;  // "threads" or "nccl", for messages

  // data[i] = Σ over ranks of data[i], in place, `count` elements of `dtype` (F32, BF16 or F64). Every rank gets
  // the same bits. The thread communicator adds in rank order (((x0 + x1) + x2) + ...), so a run is
  // reproducible; NCCL picks its own (fixed for a given topology and size) order.
  virtual void all_reduce_sum(void* data, size_t count, DType dtype) = 0;
  // out = in of rank 0 | in of rank 1 | ... (rank-major, size() · count elements); in and out must not overlap.
  virtual void all_gather(void* out, const void* in, size_t count, DType dtype) = 0;
  // data of `root` copied into every rank's data.
  virtual void broadcast(void* data, size_t count, DType dtype, int root) = 0;
  virtual void barrier() = 0;
  // Collectives issued between group_start and group_end may be fused into one launch (NCCL groups: a bucket of
  // gradients); their buffers must not be touched until group_end. The thread communicator runs them one by one.
  virtual void group_start() {}
  virtual void group_end() {}
  // This rank gives up (an exception it cannot recover from): the others' collectives throw instead of waiting.
  virtual void abort(const std::string& why) = 0;

  // out [rows, size() · cols] = every rank's in [rows, cols] side by side: rank r's in is columns
  // [r · cols, (r + 1) · cols) of out. Both may be row-strided 2-D views (Tensor::ld), of the same dtype. The
  // vocabulary-split logits and the inputs of a gated norm whose groups span ranks are gathered this way.
  virtual void all_gather_cols(Tensor out, Tensor in) = 0;

  // Small host-side sums (losses, token counts) in double, whatever the device: v[i] = Σ over ranks of v[i].
  virtual void all_reduce_host(std::span<double> v) = 0;

  // Tensor forms of the above (contiguous tensors only; the Error names the collective).
  void all_reduce_sum(Tensor t);
  void all_gather(Tensor out, Tensor in);  // out holds size() × in.numel() elements
  void broadcast(Tensor t, int root);
};

class Backend;
// One communicator per backend for a group inside this process (tensor parallelism): threads over host memory
// when the backends are CPU ones, NCCL (ncclCommInitAll) when they are GPUs, cuda_devices[r] being backend r's.
std::vector<std::unique_ptr<Communicator>> make_group_communicators(const std::vector<Backend*>& backends,
                                                                    const std::vector<int>& cuda_devices);

// The world size and this process's rank from torchrun-style variables (RANK, WORLD_SIZE, LOCAL_RANK,
// MASTER_ADDR, MASTER_PORT), falling back to what srun (SLURM_PROCID, SLURM_STEP_NUM_TASKS, SLURM_LOCALID: the
// step's tasks, not the allocation's, so a batch script run outside srun is one rank) and Open MPI
// (OMPI_COMM_WORLD_RANK, OMPI_COMM_WORLD_SIZE, OMPI_COMM_WORLD_LOCAL_RANK) set. No variable: one rank of one.
struct LaunchEnv {
  int rank = 0, world_size = 1, local_rank = 0;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  bool launched = false;  // a launcher's variables were found
};
// Error naming the variable when one is malformed or inconsistent (RANK >= WORLD_SIZE, ...).
LaunchEnv launch_env();

// The communicator for this process as the launcher started it (launch_env): NCCL over the GPU `local_rank`
// in a CUDA build. Error when the environment asks for several ranks and the build has no NCCL. `device` is the
// CUDA device the rank uses and `stream` its backend's stream (cudaStream_t), or null for the default stream.
std::unique_ptr<Communicator> make_launch_communicator(const LaunchEnv& env, int device, void* stream);

}  // namespace bamba
