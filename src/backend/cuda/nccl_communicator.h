// NcclCommunicator: the Communicator over NCCL, one GPU per rank (CUDA builds only).
//
// Two ways to form a group, one per use:
//   - several processes (data-parallel training across nodes; torchrun, srun, mpirun): every process is one rank
//     (launch_env). Rank 0 makes the NCCL unique id and hands it over a plain TCP socket on
//     MASTER_ADDR:MASTER_PORT to the others, which connect to it; then ncclCommInitRankConfig. No other side
//     channel: what the launchers already provide is enough.
//   - one process, several GPUs (tensor-parallel inference on one node): ncclCommInitAll over the devices, one
//     worker thread per GPU. Inference keeps one scheduler and one cache bookkeeping for all ranks, and a step's
//     batch (host data) is then simply shared memory instead of being broadcast to other processes every step.
//
// Never a hang forever: the communicators are non-blocking (NCCL's config.blocking = 0), and a watchdog thread
// per communicator watches the collectives in flight; one that has not finished after the timeout
// (BAMBA_NCCL_TIMEOUT seconds, default 600), or an asynchronous NCCL error (a peer's connection dropped), makes
// it call ncclCommAbort, which ends this rank's pending kernels; the next collective or synchronize then throws an
// Error that says which rank gave up and why. abort() does the same at once (a rank that caught an exception).
#pragma once
#include <memory>
#include <vector>

#include "backend/communicator.h"

namespace bamba {

std::unique_ptr<Communicator> make_nccl_communicator(const LaunchEnv& env, int device, void* stream);
// One communicator per entry of `devices` (CUDA device ids), queued on streams[i] (cudaStream_t of device i).
std::vector<std::unique_ptr<Communicator>> make_nccl_communicators(const std::vector<int>& devices,
                                                                   const std::vector<void*>& streams);

}  // namespace bamba
