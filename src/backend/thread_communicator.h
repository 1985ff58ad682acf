// ThreadCommunicator: N ranks as N threads of one process, exchanging host memory directly. It is the CPU twin of
// the NCCL communicator: tensor-parallel inference and data-parallel training run and are tested with it on
// machines without GPUs (and `--tensor-parallel-size N` / `bamba train --nproc N` use it on the CPU backend).
//
// Deterministic: an all-reduce adds the ranks' values in rank order, element by element, and writes the one sum
// into every rank's buffer, so every rank holds the same bits and a run repeats exactly. Each collective is a
// rendezvous (publish the buffer pointers, wait for all, work, wait for all again); a rank that aborts, or a wait
// longer than the timeout, makes every rank's collective throw.
#pragma once
#include <chrono>
#include <memory>
#include <vector>

#include "backend/communicator.h"

namespace bamba {

struct ThreadGroup;  // the state the ranks share

// The N communicators of one group; give element r to the thread that runs rank r.
std::vector<std::unique_ptr<Communicator>> make_thread_communicators(
    int n, std::chrono::milliseconds timeout = std::chrono::minutes(10));

}  // namespace bamba
