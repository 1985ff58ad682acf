// TensorParallelPeers: ranks 1..N-1 of a one-process tensor-parallel group (model/tensor_parallel.h), each a
// worker thread with its own backend and shard model, and every rank's communicator. Rank 0's HybridModel::forward
// hands each step to them and runs its own shard alongside; the step returns when all ranks are done, with the
// first failure rethrown (a failing rank aborts the communicators, so the others' collectives throw instead of
// waiting for it).
#pragma once
#include <condition_variable>
#include <exception>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "backend/communicator.h"
#include "model/hybrid.h"

namespace bamba {

class TensorParallelPeers {
 public:
  struct Peer {
    int index = 0;  // rank - 1: its place in the mirrors of the leader's cache and workspace
    std::unique_ptr<Backend> be;
    std::unique_ptr<HybridModel> model;
    std::thread thread;
    std::exception_ptr error;
  };

  explicit TensorParallelPeers(std::vector<std::unique_ptr<Communicator>> comms);
  ~TensorParallelPeers();
  Communicator* comm(int rank) const { return comms_[size_t(rank)].get(); }
  int size() const { return int(comms_.size()); }
  void start();
  // The step on every rank: rank 0 (`leader`) on this thread with cache and ws, the others on theirs with the
  // mirrors. Returns the leader's logits.
  Tensor forward(const HybridModel& leader, const StepBatch& b, HybridCache& cache, Workspace& ws,
                 const ActivationHook& hook);

  std::vector<std::unique_ptr<Peer>> peers_;

 private:
  struct Job {
    const StepBatch* batch = nullptr;
    HybridCache* cache = nullptr;
    Workspace* ws = nullptr;
    bool hook = false;  // the leader runs with an activation hook: the others run the same (unfused) ops
  };
  void work(Peer& p);

  std::vector<std::unique_ptr<Communicator>> comms_;
  std::mutex mu_;
  std::condition_variable cv_;
  Job current_;
  uint64_t job_ = 0;
  int done_ = 0;
  bool stop_ = false;
};

}  // namespace bamba
